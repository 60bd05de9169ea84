"""Tree recovery (MoTHer) on synthetic forests with planted trees and lying cards."""

from __future__ import annotations

import json
from pathlib import Path

import duckdb
import numpy as np
import pytest
import torch
import yaml
from safetensors import safe_open

from bench.trees import ForestSpec, synthetic_edges, synthetic_forest
from probex_core.canon import assemble_layer, find_layers
from probex_core.trees import (
    TreeConfig,
    WeightRecord,
    architecture_signature,
    choose_recovery_layers,
    cluster_by_distance,
    pairwise_distances,
    recover_trees,
    score_recovery,
    trees_from_declared_edges_networkx,
    trees_from_declared_edges_sql,
    truth_from_manifest,
)

SPECS = [
    ForestSpec((4, 4)),  # two multi-level trees sharing one signature
    ForestSpec((4, 4)),
    ForestSpec((3,), layer_shapes=((32, 32), (32, 48))),  # a star of another architecture
    ForestSpec((5, 2), layer_shapes=((32, 32), (32, 48))),  # multi-level, like the zoo's mlp-b
]


@pytest.fixture(scope="module")
def forest():
    records, truth = synthetic_forest(SPECS, seed=0, documented=0.7, liars=2)
    return records, truth, recover_trees(records)


def test_signature_ignores_order_and_sees_shapes():
    a = {"fc1.weight": (4, 3), "head.weight": (2, 4)}
    assert architecture_signature(a) == architecture_signature(dict(reversed(a.items())))
    assert architecture_signature(a) != architecture_signature({**a, "fc1.weight": (5, 3)})
    # a head of another width (another label set) is still the same architecture
    assert architecture_signature(a) == architecture_signature({**a, "head.weight": (7, 4)})


def test_recovery_layers_skip_the_head_and_prefer_lora():
    full = {
        "fc1.weight": (128, 768),
        "fc2.weight": (64, 128),
        "head.weight": (10, 64),
        "fc1.bias": (128,),
    }
    assert choose_recovery_layers(full) == ["fc2", "fc1"]
    lora = {
        "base_model.model.fc1.lora_A.weight": (4, 768),
        "base_model.model.fc1.lora_B.weight": (128, 4),
        "base_model.model.head.weight": (1, 64),
    }
    assert choose_recovery_layers(lora) == ["fc1"]


def test_recovers_members_edges_and_roots(forest):
    records, truth, rec = forest
    scores = score_recovery(rec, truth)
    assert scores.ari == 1.0 and scores.purity == 1.0
    assert scores.n_recovered_trees == len(SPECS)
    assert scores.edge_accuracy >= 0.95
    assert scores.root_accuracy == 1.0
    depths = {m.depth for m in rec.models.values()}
    assert depths == {0, 1, 2}
    assert {t.size for t in rec.trees.values()} == {21, 4, 16}


def test_a_card_naming_the_wrong_base_is_flagged(forest):
    records, truth, rec = forest
    liars = {
        r.repo_id for r in records if r.declared_base and r.declared_base != truth[r.repo_id].parent
    }
    assert len(liars) == 2
    flagged = {d.repo_id: d for d in rec.disagreements}
    assert liars <= set(flagged)
    assert all(not flagged[x].declared_in_same_tree and flagged[x].declared_known for x in liars)
    # honest cards agree with the recovered edge almost always
    assert len(flagged) - len(liars) <= 1


def test_two_trees_of_one_signature_come_apart_and_one_tree_stays_one():
    records, _ = synthetic_forest([ForestSpec((5,)), ForestSpec((5,))], seed=3)
    layers = sorted(records[0].layers)
    labels = cluster_by_distance(pairwise_distances(records, layers), TreeConfig())
    assert len(set(labels)) == 2
    one = records[:6]
    assert len(set(cluster_by_distance(pairwise_distances(one, layers), TreeConfig()))) == 1
    two_roots = [records[0], records[6]]
    assert len(set(cluster_by_distance(pairwise_distances(two_roots, layers), TreeConfig()))) == 2


def test_kurtosis_direction_is_voted_by_declared_edges_or_read_from_the_root():
    records, truth = synthetic_forest([ForestSpec((3, 3))], seed=1)
    rec = recover_trees(records)
    assert list(rec.directions.values()) == ["raise"]
    (tree,) = rec.trees.values()
    assert tree.structure["declared_edges"] == len(records) - 1
    assert tree.structure["agreement"] == 1.0
    # no cards at all: the direction comes from the root's side of the kurtosis distribution,
    # and flipping the cue against the data must hurt
    bare = [WeightRecord(r.repo_id, r.signature, None, r.layers) for r in records]
    auto = recover_trees(bare)
    assert list(auto.directions.values()) == ["raise"]
    wrong = recover_trees(bare, TreeConfig(kurtosis_direction="lower"))
    assert score_recovery(wrong, truth).edge_accuracy < score_recovery(auto, truth).edge_accuracy


def test_adapters_join_the_full_model_they_adapt():
    g = torch.Generator().manual_seed(0)

    def full(seed: int) -> dict[str, torch.Tensor]:
        gen = torch.Generator().manual_seed(seed)
        return {"fc1": torch.randn(16, 32, generator=gen), "fc2": torch.randn(8, 16, generator=gen)}

    base, other = full(1), full(2)  # two full roots of one architecture: adapters must choose
    recs = [WeightRecord("o/base", "mlp", None, base), WeightRecord("o/other", "mlp", None, other)]
    u, _, vh = torch.linalg.svd(base["fc1"])
    for i in range(3):
        # a trained adapter amplifies directions already in its base W (LoRA §7)
        delta = u[:, :2] @ torch.diag(torch.rand(2, generator=g) + 1) @ vh[:2]
        delta = delta + 0.05 * torch.randn(16, 2, generator=g) @ torch.randn(2, 32, generator=g)
        declared = "o/other" if i == 0 else None  # a lying adapter_config
        recs.append(WeightRecord(f"o/ad{i}", "lora", declared, {"fc1": delta}, adapter=True))
    rec = recover_trees(recs)
    tid = rec.models["o/base"].tree_id
    assert rec.models["o/other"].tree_id != tid
    for i in range(3):
        assert rec.models[f"o/ad{i}"].parent == "o/base" and rec.models[f"o/ad{i}"].tree_id == tid
    assert rec.trees[tid].kind == "lora" and rec.trees[tid].size == 4
    assert [(d.repo_id, d.declared_in_same_tree) for d in rec.disagreements] == [("o/ad0", False)]


def test_sql_and_networkx_rebuilds_agree():
    idx, base = synthetic_edges(3000, seed=0, roots=20)
    names = [f"o/m{i}" for i in idx]
    edges = [(names[i], names[b] if b >= 0 else None) for i, b in zip(idx, base, strict=True)]
    edges += [("o/self", "o/self"), ("o/ext", "elsewhere/base"), ("o/c1", "o/c2"), ("o/c2", "o/c1")]
    con = duckdb.connect()
    con.execute("CREATE TABLE repos(repo_id VARCHAR, base_model VARCHAR)")
    con.executemany("INSERT INTO repos VALUES (?, ?)", edges)
    sql = {
        r: (root, depth)
        for r, root, depth in trees_from_declared_edges_sql(con, "repos").fetchall()
    }
    nx_out = trees_from_declared_edges_networkx(edges)
    assert sql == nx_out
    assert sql["o/self"] == ("o/self", 0) and sql["o/ext"] == ("o/ext", 0)
    assert sql["o/c1"] == (None, None)
    assert max(d for _, d in sql.values() if d is not None) > 5
    with pytest.raises(ValueError, match="not a plain table name"):
        trees_from_declared_edges_sql(con, "repos; DROP TABLE repos")


def test_scores_can_fail():
    records, truth = synthetic_forest([ForestSpec((3,)), ForestSpec((3,))], seed=2)
    rec = recover_trees(records)
    bad = {r: truth[r].__class__("t", None if r.endswith("root") else "x/y") for r in truth}
    s = score_recovery(rec, bad)
    assert s.ari < 1.0 and s.edge_accuracy == 0.0
    assert np.isclose(score_recovery(rec, truth).ari, 1.0)


def test_dense_edmonds_matches_networkx_on_random_graphs():
    import networkx as nx

    from probex_core.trees import min_arborescence

    rng = np.random.default_rng(0)
    for t in range(150):
        n = int(rng.integers(2, 12))
        c = rng.random((n, n)) * 10
        if t % 3 == 0:
            c = np.round(c)  # ties
        parent = min_arborescence(c)
        assert (parent < 0).sum() == 1
        for v in range(n):  # every node reaches the root: no cycles
            seen, x = set(), v
            while x >= 0:
                assert x not in seen
                seen.add(x)
                x = parent[x]
        g = nx.DiGraph()
        g.add_weighted_edges_from((i, j, c[i, j]) for i in range(n) for j in range(n) if i != j)
        best = sum(c[u, v] for u, v in nx.minimum_spanning_arborescence(g).edges())
        assert sum(c[p, i] for i, p in enumerate(parent) if p >= 0) == pytest.approx(best)


# ---- the tiny zoo -------------------------------------------------------------------------------


def _card_base(readme: Path) -> str | None:
    text = readme.read_text() if readme.exists() else ""
    if not text.startswith("---"):
        return None
    meta = yaml.safe_load(text.split("---", 2)[1]) or {}
    base = meta.get("base_model")
    return base[0] if isinstance(base, list) else base


def load_zoo_records(hub: Path, max_layers: int = 4) -> list[WeightRecord]:
    """Read every repo of a local hub the way the pipeline will: header, chosen layers only."""
    records = []
    for repo_dir in sorted(p for p in hub.glob("*/*") if p.is_dir()):
        repo_id = f"{repo_dir.parent.name}/{repo_dir.name}"
        adapter = (repo_dir / "adapter_model.safetensors").exists()
        path = repo_dir / ("adapter_model.safetensors" if adapter else "model.safetensors")
        scale, declared = 1.0, _card_base(repo_dir / "README.md")
        if adapter:
            cfg = json.loads((repo_dir / "adapter_config.json").read_text())
            scale = float(cfg.get("lora_alpha", cfg["r"])) / float(cfg["r"])
            declared = declared or cfg.get("base_model_name_or_path")
        with safe_open(str(path), framework="pt") as f:
            shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
            specs = find_layers(shapes)
            names = choose_recovery_layers(shapes, max_layers)
            layers = {
                n: assemble_layer(specs[n], {t: f.get_tensor(t) for t in specs[n].tensors}, scale)
                for n in names
            }
        records.append(
            WeightRecord(repo_id, architecture_signature(shapes), declared, layers, adapter)
        )
    return records


def test_tiny_zoo_trees_are_recovered_from_weights(zoo_recovery, tiny_zoo):
    records, manifest, rec = zoo_recovery
    truth = truth_from_manifest(tiny_zoo)
    scores = score_recovery(rec, truth)
    assert scores.n_models == len(manifest["models"])  # undocumented models included
    assert scores.ari == 1.0
    lora = [t for t in manifest["trees"] if t["kind"] == "lora"]
    for t in lora:
        assert rec.trees[rec.models[t["root_repo"]].tree_id].kind == "lora"


def test_tiny_zoo_lying_cards_are_flagged(zoo_recovery):
    records, manifest, rec = zoo_recovery
    liars = {m["repo_id"] for m in manifest["models"] if m.get("card_lies")}
    flagged = {d.repo_id for d in rec.disagreements}
    assert liars <= flagged
    # and few honest cards flagged: measured 1 of the 238 honest ones (a recovered edge one
    # level off in the multi-level tree); flagging everything would be 238
    assert len(flagged - liars) <= 3, sorted(flagged - liars)


def test_tiny_zoo_edges_and_roots_are_recovered(zoo_recovery, tiny_zoo):
    """Every tree's root, and nearly every edge. The tiny multi-level tree has 27 edges, and
    its zoo's weights depend on the CPU's vector kernels (same seed, same bytes on one machine
    only): measured 27 of 27 edges with torch on AVX2 kernels (ATEN_CPU_CAPABILITY=avx2) and
    25 of 27 on AVX-512 kernels, on one AVX-512 machine (the grandchildren of two level-1
    models hung under the root). Without drift removal
    (`TreeConfig.drift_ranks=(0,)`) 4 of 27 are wrong on the AVX-512 zoo."""
    _, manifest, rec = zoo_recovery
    scores = score_recovery(rec, truth_from_manifest(tiny_zoo))
    multi = [scores.per_tree[t["tree_id"]] for t in manifest["trees"] if t["multi_level"]]
    wrong = [round((1 - t.edge_accuracy) * (t.size - 1)) for t in multi]
    assert multi and max(wrong) <= 2, wrong
    assert scores.edge_accuracy >= 0.95
    assert scores.root_accuracy == 1.0


def test_an_adapters_svd_is_done_once_and_again_after_an_in_place_change(monkeypatch):
    """Recovery, the router's calibration and routing each align an adapter's ΔW with bases;
    its SVD is done once per tensor, and again if the tensor was changed in place."""
    from probex_core.trees import adapter_alignment

    svd, calls = torch.linalg.svd, []
    monkeypatch.setattr(torch.linalg, "svd", lambda *a, **k: calls.append(1) or svd(*a, **k))
    g = torch.Generator().manual_seed(0)
    delta = torch.randn(12, 3, generator=g) @ torch.randn(3, 10, generator=g)
    other = torch.randn(12, 2, generator=g) @ torch.randn(2, 10, generator=g)
    bases = torch.randn(4, 12, 10, generator=g)
    first = adapter_alignment(delta, bases)
    assert np.allclose(adapter_alignment(delta, bases[1:]), first[1:]) and len(calls) == 1
    expected = adapter_alignment(other.clone(), bases)
    delta.copy_(other)
    assert np.allclose(adapter_alignment(delta, bases), expected) and len(calls) == 3
    assert not np.allclose(expected, first)
