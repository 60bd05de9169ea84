"""Shapes, parameter counts and seeding of the expert models."""

from __future__ import annotations

import pytest
import torch

from probex_core.models import (
    MODEL_KINDS,
    N_STATS,
    QUANTILE_SAMPLE,
    LayerRows,
    MultiViewConfig,
    ProbeXConfig,
    TextHeadConfig,
    build_model,
    count_parameters,
    low_rank_factors,
    model_config,
    probe_responses,
    weight_statistics,
)

torch.set_num_threads(1)

SMALL = {
    "probex": {"r_U": 4, "r_V": 5, "r_T": 6},
    "probex-classes": {"rank": 2},
    "mvprobe": {"r": 3, "proj_dim": 4, "r_T": 6},
    "dense": {"bottleneck": 6},
    "statnn": {"hidden": 6},
}


@pytest.mark.parametrize("kind", MODEL_KINDS)
def test_shapes(kind: str) -> None:
    model = build_model(kind, 7, 9, 3, text_dim=5, **SMALL[kind])
    X = torch.randn(4, 7, 9)
    assert model(X).shape == (4, 3)
    # class probes are linear: their representation is the logit vector, as Dense's is
    assert model.encode(X).shape == (4, 3 if kind == "probex-classes" else 6)
    assert model.zero_shot_logits(X, torch.randn(11, 5)).shape == (4, 11)


def test_dense_without_bottleneck_encodes_to_logits() -> None:
    model = build_model("dense", 7, 9, 3)
    X = torch.randn(4, 7, 9)
    assert torch.equal(model.encode(X), model(X))
    assert count_parameters(model) == 7 * 9 * 3 + 3


def test_probex_parameter_count_matches_paper_formula() -> None:
    d_H, d_W, r_U, r_V, r_T, d_Y = 10, 12, 4, 5, 6, 3
    model = build_model("probex", d_H, d_W, d_Y, r_U=r_U, r_V=r_V, r_T=r_T)
    weights = d_W * r_U + d_H * r_V + r_U * r_V * r_T + r_T * d_Y
    biases = r_V + r_T + d_Y
    assert count_parameters(model) == weights + biases


def test_probex_equals_sum_of_per_probe_encoders() -> None:
    """The flattened linear map is the paper's Σ_l M_l relu(Vᵀ X u_l)."""
    model = build_model("probex", 6, 8, 2, r_U=3, r_V=4, r_T=5)
    X = torch.randn(2, 6, 8)
    M = model.M.weight.reshape(5, 3, 4)  # (r_T, r_U, r_V): flatten order is (probe, proj)
    total = model.M.bias.expand(2, 5).clone()
    for j in range(3):
        resp = torch.relu(model.V(X @ model.U[:, j]))  # (N, r_V)
        total = total + resp @ M[:, j, :].T
    assert torch.allclose(model.encode(X), total, atol=1e-5)


def test_class_probes_give_each_class_a_rank_r_map() -> None:
    """logit_c = Σ_j v_cjᵀ (X − X̄) u_cj + b_c, with probes and projections stored class-major;
    (d_H + d_W)·rank·d_Y + d_Y parameters."""
    d_H, d_W, C, r = 6, 8, 3, 2
    model = build_model("probex-classes", d_H, d_W, C, rank=r, seed=1)
    assert count_parameters(model) == (d_H + d_W) * r * C + C
    X = torch.randn(5, d_H, d_W)
    model.fit_stats(X)
    with torch.no_grad():
        model.bias.copy_(torch.randn(C))
    Xc = X - X.mean(0)
    U, V = model.U.T.reshape(C, r, d_W), model.V.reshape(C, r, d_H)
    maps = torch.einsum("crh,crw->chw", V, U)  # each class's rank-r map
    assert torch.linalg.matrix_rank(maps[0]) == r
    expected = torch.einsum("chw,nhw->nc", maps, Xc) + model.bias
    assert torch.allclose(model(X), expected, atol=1e-5)
    with pytest.raises(ValueError, match="rank >= 1"):
        build_model("probex-classes", d_H, d_W, C, rank=0)


@pytest.mark.parametrize("preprocess", ["none", "center", "l2"])
def test_mvprobe_preprocess(preprocess: str) -> None:
    model = build_model("mvprobe", 7, 9, 3, preprocess=preprocess, **SMALL["mvprobe"])
    assert torch.isfinite(model(torch.randn(2, 7, 9))).all()


def test_seeded_init() -> None:
    a = build_model("probex", 7, 9, 3, seed=1, **SMALL["probex"])
    b = build_model("probex", 7, 9, 3, seed=1, **SMALL["probex"])
    c = build_model("probex", 7, 9, 3, seed=2, **SMALL["probex"])
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))
    assert not torch.equal(a.U, c.U)
    assert a.config == {
        "kind": "probex",
        "d_H": 7,
        "d_W": 9,
        "n_classes": 3,
        "text_dim": None,
        **SMALL["probex"],
    }


def test_unknown_kind_and_missing_heads() -> None:
    with pytest.raises(ValueError, match="unknown model kind 'transformer'"):
        build_model("transformer", 3, 3, 2)
    with pytest.raises(RuntimeError, match="without text_dim"):
        build_model("probex", 3, 3, 2, **SMALL["probex"]).zero_shot_logits(
            torch.randn(1, 3, 3), torch.randn(2, 4)
        )
    with pytest.raises(RuntimeError, match="n_classes=0"):
        build_model("probex", 3, 3, 0, text_dim=4, **SMALL["probex"])(torch.randn(1, 3, 3))


@pytest.mark.parametrize("kind", MODEL_KINDS)
def test_typed_and_keyword_configs_build_the_same_model(kind: str) -> None:
    """A family's frozen config and its keyword form (what checkpoints store) are one model:
    same weights from one seed, same recorded config; the text head is built in its
    direction from the start."""
    family, head = model_config(kind, **SMALL[kind], zs_direction="weight_to_text")
    typed = build_model(family, 7, 9, 3, text_dim=5, seed=4, text_head=head)
    keyed = build_model(
        kind, 7, 9, 3, text_dim=5, seed=4, **SMALL[kind], zs_direction="weight_to_text"
    )
    assert typed.config == keyed.config
    assert typed.config["zs_direction"] == "weight_to_text"
    assert typed.zero_shot.proj.weight.shape == (5, typed.r_T)  # r_T → text space
    for (name, a), (_, b) in zip(
        typed.state_dict().items(), keyed.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), name
    kind_again = dict(typed.config)
    assert build_model(kind_again.pop("kind"), **kind_again, seed=4).config == typed.config


def test_settings_a_family_does_not_have_are_refused() -> None:
    with pytest.raises(ValueError, match="probex has no setting r; it takes r_T, r_U, r_V"):
        build_model("probex", 3, 3, 2, r=3)
    with pytest.raises(ValueError, match=r"settings \['r_U'\] given beside a probex config"):
        build_model(ProbeXConfig(), 3, 3, 2, r_U=3)
    with pytest.raises(ValueError, match="no setting zs_temperature"):
        build_model("probex", 3, 3, 2, text_dim=4, zs_temperature=3.0)
    with pytest.raises(ValueError, match="zero-shot head settings need text_dim"):
        build_model("dense", 3, 3, 2, zs_direction="weight_to_text")
    with pytest.raises(ValueError, match="unknown preprocess 'whiten'"):
        MultiViewConfig(preprocess="whiten")
    with pytest.raises(ValueError, match="unknown zero-shot direction 'both'"):
        TextHeadConfig(direction="both")


def test_weight_statistics_by_hand() -> None:
    X = torch.tensor([[[1.0, 2.0], [3.0, 4.0]]])
    f = weight_statistics(X)
    assert f.shape == (1, N_STATS)
    assert f[0, 0] == pytest.approx(2.5)  # mean
    assert f[0, 1] == pytest.approx(torch.tensor([1.0, 2, 3, 4]).std().item())
    assert f[0, 2] == pytest.approx(1.0) and f[0, 8] == pytest.approx(4.0)  # min, max
    assert f[0, 5] == pytest.approx(2.5)  # median


def test_weight_statistics_of_a_large_layer_match_exact_ones() -> None:
    """Above QUANTILE_SAMPLE entries the inner quantiles come from a fixed sample; moments,
    extremes and norms stay exact."""
    X = torch.randn(3, 300, 400, generator=torch.Generator().manual_seed(0)) * 0.1 + 0.2
    assert X[0].numel() > QUANTILE_SAMPLE
    flat = X.flatten(1).double()
    f = weight_statistics(X).double()
    z = (flat - flat.mean(1, keepdim=True)) / flat.std(1, keepdim=True)
    q = torch.quantile(flat, torch.tensor([0.05, 0.25, 0.5, 0.75, 0.95]).double(), dim=1).T
    assert torch.allclose(f[:, 0], flat.mean(1), atol=1e-6)
    assert torch.allclose(f[:, 1], flat.std(1), rtol=1e-4)
    assert torch.allclose(f[:, 2], flat.amin(1)) and torch.allclose(f[:, 8], flat.amax(1))
    assert torch.allclose(f[:, 3:8], q, atol=0.04 * 0.1)  # standard error ~1 % of a std
    assert torch.allclose(f[:, 9], (z**3).mean(1), atol=0.01)  # skew
    assert torch.allclose(f[:, 10], (z**4).mean(1), rtol=0.01)  # kurtosis
    assert torch.equal(weight_statistics(X), weight_statistics(X))  # the sample is fixed


@pytest.mark.parametrize("r", [2, 16])
def test_probe_responses_gradients(r: int) -> None:
    X = torch.randn(3, 5, 7, dtype=torch.float64, requires_grad=True)
    U = torch.randn(7, r, dtype=torch.float64, requires_grad=True)
    assert torch.allclose(probe_responses(X, U), (X @ U).transpose(1, 2))
    assert torch.autograd.gradcheck(probe_responses, (X, U))
    # rows of a stack, read in place, repeated and out of order
    index = torch.tensor([2, 0, 2])
    rows = probe_responses(LayerRows(X, index), U)
    assert torch.allclose(rows, probe_responses(X[index], U))
    assert torch.autograd.gradcheck(lambda X, U: probe_responses(LayerRows(X, index), U), (X, U))


def test_low_rank_layers_are_factored_and_read_through_their_factors() -> None:
    g = torch.Generator().manual_seed(0)
    f64 = {"generator": g, "dtype": torch.float64}
    X = torch.randn(6, 40, 3, **f64) @ torch.randn(6, 3, 56, **f64)  # rank-3 "adapters"
    # (40 × 56: rank ≤ 5 = 40/8 is factored)
    P, Q = low_rank_factors(X)
    assert P.shape == (6, 40, 3) and Q.shape == (6, 3, 56)
    assert torch.allclose(P @ Q, X)
    U = torch.randn(56, 4, **f64, requires_grad=True)
    index = torch.tensor([5, 0, 5])
    fast = probe_responses(LayerRows(X, index, (P, Q)), U)
    assert torch.allclose(fast, probe_responses(X[index], U))
    assert torch.allclose(probe_responses(LayerRows(X, index, (2 * P, Q)), U), 2 * fast)  # read
    (gU,) = torch.autograd.grad(fast.square().sum(), U)
    (dense,) = torch.autograd.grad(probe_responses(X[index], U).square().sum(), U)
    assert torch.allclose(gU, dense)
    # a full-rank layer (the first, or any other) or too small a layer is left dense
    assert low_rank_factors(torch.randn(6, 40, 56, **f64)) is None
    X[4] += torch.randn(40, 56, **f64)
    assert low_rank_factors(X) is None
    assert low_rank_factors(torch.randn(2, 4, 1) @ torch.randn(2, 1, 6)) is None


def test_weight_to_text_head_embeds_models_in_the_text_space():
    import torch.nn.functional as F

    from probex_core.models import build_model as _build

    model = _build(
        "probex", 6, 5, 0, text_dim=7, r_U=3, r_V=4, r_T=8, zs_direction="weight_to_text"
    )
    X, T = torch.randn(4, 6, 5), torch.randn(3, 7)
    z = model.text_embedding(X)
    assert z.shape == (4, 7)
    torch.testing.assert_close(z.norm(dim=1), torch.ones(4))
    scale = model.zero_shot.log_scale.exp()
    torch.testing.assert_close(model.zero_shot_logits(X, T), scale * z @ F.normalize(T, dim=-1).T)
    paper = _build("probex", 6, 5, 0, text_dim=7, r_U=3, r_V=4, r_T=8)
    with pytest.raises(RuntimeError, match="weight_to_text"):
        paper.text_embedding(X)


def test_weight_to_text_head_round_trips(tmp_path):
    from probex_core.models import build_model as _build
    from probex_core.store import load_expert as _load
    from probex_core.store import save_expert as _save

    model = _build(
        "probex", 6, 5, 0, text_dim=7, r_U=3, r_V=4, r_T=8, zs_direction="weight_to_text"
    )
    _save(tmp_path / "m.safetensors", model)
    again, _ = _load(tmp_path / "m.safetensors")
    X = torch.randn(2, 6, 5)
    assert torch.equal(again.text_embedding(X), model.text_embedding(X))


def test_sane_tokens_are_row_chunks_with_their_positions_and_padding_marked() -> None:
    """Rows cut into chunks of `token` values in row order; the last chunk of a row is
    zero-padded and its padding marked invalid; the encodings name each token's row/chunk."""
    from probex_core.models.sane import tokenise

    X = torch.arange(2 * 3 * 5, dtype=torch.float32).reshape(2, 3, 5)
    tokens, rows, chunks, valid = tokenise(X, token=2)
    assert tokens.shape == (2, 9, 2)  # 3 rows × ⌈5/2⌉ chunks
    assert rows.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert chunks.tolist() == [0, 1, 2] * 3
    assert tokens[1, 4].tolist() == X[1, 1, 2:4].tolist()
    assert tokens[0, 2].tolist() == [X[0, 0, 4].item(), 0.0]
    assert valid[2].tolist() == [1.0, 0.0] and valid[:2].eq(1).all()
    back = tokens.reshape(2, 3, 6)[:, :, :5]
    assert torch.equal(back, X)


def test_sane_learns_to_rebuild_and_its_codes_carry_a_planted_class() -> None:
    """Trained on a planted signal (class k adds a fixed pattern to the weights), the learner's
    token codes are read by ridge well above chance (the same codes without the pattern are
    at chance: measured top-1 0.20 without it, 1.00 with it)."""
    from probex_core.models.sane import LayerSet, SaneConfig, embed, tokenise, train_sane
    from probex_core.ridge import fit_ridge
    from probex_core.train import TensorData, predict_proba

    gen = torch.Generator().manual_seed(0)
    N, K = 240, 4
    labels = torch.randint(0, K, (N,), generator=gen)
    patterns = torch.randn(K, 8, 24, generator=gen)
    X = torch.randn(N, 8, 24, generator=gen) + 0.7 * patterns[labels]
    Y = torch.nn.functional.one_hot(labels, K).float()
    tokens, rows, chunks, valid = tokenise(X, 16)

    def data(idx) -> LayerSet:
        return LayerSet(0, tokens[idx], rows, chunks, valid, Y[idx], torch.arange(K), True)

    train, val, test = data(slice(0, 160)), data(slice(160, 200)), data(slice(200, 240))
    cfg = SaneConfig(token=16, window=16, d_model=32, latent=8, epochs=15, val_every=15)
    res = train_sane([train], lambda m: 0.0, cfg, K, seed=0)
    assert res.best_epoch == 15
    emb = {n: embed(res.model, d)[2][:, None, :] for n, d in (("tr", train), ("va", val),
                                                              ("te", test))}  # fmt: skip
    probe = fit_ridge(TensorData(emb["tr"], train.Y), TensorData(emb["va"], val.Y), single=True)
    top1 = (predict_proba(probe.model, emb["te"]).argmax(1) == labels[200:]).float().mean()
    assert top1 > 0.6  # chance 0.25
