"""Text encoders (offline MiniLM, open_clip wiring), spec parsing and the embedding cache."""

from __future__ import annotations

import pytest
import torch

from probex_core.text import (
    DEFAULT_TEMPLATE,
    CachedTextEncoder,
    EmbeddingCache,
    MiniLMEncoder,
    OpenClipEncoder,
    TextEncoder,
    class_prompt,
    get_text_encoder,
)


@pytest.fixture(scope="module")
def minilm() -> MiniLMEncoder:
    return MiniLMEncoder()


class CountingEncoder:
    """A deterministic fake encoder that counts the texts it was asked to encode."""

    name = "counting:v1"
    dim = 8

    def __init__(self) -> None:
        self.calls: list[list[str]] = []

    def encode(self, texts: list[str]) -> torch.Tensor:
        self.calls.append(list(texts))
        g = [torch.Generator().manual_seed(sum(map(ord, t))) for t in texts]
        x = torch.stack([torch.randn(self.dim, generator=gi) for gi in g])
        return torch.nn.functional.normalize(x, dim=-1)


def test_minilm_offline_normalised_and_sensible(minilm):
    assert isinstance(minilm, TextEncoder)
    e = minilm.encode(["red star", "a red star", "blue circle"])
    assert e.shape == (3, 384) and e.dtype == torch.float32
    assert torch.allclose(e.norm(dim=1), torch.ones(3), atol=1e-5)
    assert e[0] @ e[1] > e[0] @ e[2]
    assert minilm.encode([]).shape == (0, 384)


def test_class_prompt_template():
    assert class_prompt("red star") == "a photo of a red star"
    assert DEFAULT_TEMPLATE == "a photo of a {name}"
    assert class_prompt("red star", "weights that know {name}") == "weights that know red star"
    with pytest.raises(ValueError, match="placeholder"):
        class_prompt("x", "a photo")


def test_cache_never_reencodes_and_survives_reload(tmp_path):
    path = tmp_path / "cache" / "text.safetensors"
    enc = CountingEncoder()
    cache = EmbeddingCache(path)
    a = cache.encode(enc, ["a", "b", "a"])
    assert enc.calls == [["a", "b"]]  # deduplicated
    assert torch.equal(a[0], a[2])
    b = cache.encode(enc, ["b", "c"])
    assert enc.calls[-1] == ["c"]
    assert torch.equal(b[0], a[1])
    assert len(cache) == 3 and ("counting:v1", "c") in cache

    reloaded = EmbeddingCache(path)
    n_calls = len(enc.calls)
    c = reloaded.encode(enc, ["c", "a", "b"])
    assert len(enc.calls) == n_calls  # served from disk
    assert torch.equal(c, torch.stack([b[1], a[0], a[1]]))
    assert not list(path.parent.glob("*.tmp"))  # atomic write left nothing behind


def test_cache_is_keyed_by_encoder_and_merges_other_writers(tmp_path):
    path = tmp_path / "text.safetensors"
    enc = CountingEncoder()
    other = CountingEncoder()
    other.name = "counting:v2"
    first, second = EmbeddingCache(path), EmbeddingCache(path)
    first.encode(enc, ["x"])
    second.encode(other, ["x"])  # same text, another encoder: encoded again
    assert len(other.calls) == 1
    merged = EmbeddingCache(path)
    assert ("counting:v1", "x") in merged and ("counting:v2", "x") in merged


def test_cached_encoder_wraps(tmp_path, minilm):
    cached = CachedTextEncoder(minilm, EmbeddingCache(tmp_path / "c.safetensors"))
    assert cached.name == minilm.name and cached.dim == 384
    assert torch.allclose(cached.encode(["purple star"]), minilm.encode(["purple star"]), atol=1e-6)


def test_a_home_whose_texts_are_all_cached_never_loads_the_encoder(tmp_path, monkeypatch, minilm):
    """Loading MiniLM takes seconds: a step (a rebuild's experts, predict on a built home)
    whose texts were all encoded before must not pay it; a new text loads it, once."""
    from probex_core.catalog import Home
    from probex_core.pipeline import labels

    loads: list[str] = []
    monkeypatch.setattr(labels, "_loaded_encoder", lambda spec: loads.append(spec) or minilm)
    home = Home(tmp_path / "home")
    first = labels.text_encoder(home, "minilm").encode(["a red star", "a blue ring"])
    assert loads == ["minilm"]
    again = labels.text_encoder(home, "minilm")  # another step: a fresh cache object
    assert torch.equal(again.encode(["a blue ring"]), first[1:]) and loads == ["minilm"]
    assert torch.allclose(again.encode(["a green star"]), minilm.encode(["a green star"]))
    assert loads == ["minilm", "minilm"]


def test_a_deferred_encoder_that_loads_another_encoder_is_refused() -> None:
    from probex_core.text import DeferredEncoder

    deferred = DeferredEncoder("minilm:all-MiniLM-L6-v2", 384, CountingEncoder)
    with pytest.raises(ValueError, match=r"loaded counting:v1 \(width 8\), expected minilm"):
        deferred.encode(["x"])


@pytest.mark.parametrize(
    "spec",
    ["clip", "open_clip", "open_clip:ViT-B-32", "open_clip:ViT-B-32:", "open_clip::random"],
)
def test_bad_specs_are_rejected(spec):
    with pytest.raises(ValueError, match="spec"):
        get_text_encoder(spec)


def test_unknown_model_and_missing_weights_are_rejected(tmp_path):
    with pytest.raises(ValueError, match="unknown open_clip model"):
        get_text_encoder("open_clip:NoSuchNet:random", allow_random=True)
    with pytest.raises(FileNotFoundError, match="no such file"):
        get_text_encoder(f"open_clip:ViT-B-32:{tmp_path / 'missing.bin'}")


def test_random_open_clip_needs_the_flag():
    with pytest.raises(ValueError, match="allow_random"):
        get_text_encoder("open_clip:ViT-B-32:random")
    with pytest.raises(ValueError, match="allow_random"):
        OpenClipEncoder("ViT-B-32", None)


TINY_CLIP = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 64, "patch_size": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


@pytest.fixture(scope="module")
def tiny_clip_name(tmp_path_factory) -> str:
    """Register a tiny open_clip config so the weights-file path is tested in well under a second."""
    import json

    import open_clip

    d = tmp_path_factory.mktemp("open_clip_cfg")
    (d / "probex-tiny-clip.json").write_text(json.dumps(TINY_CLIP))
    open_clip.add_model_config(d)
    return "probex-tiny-clip"


def test_open_clip_vit_b32_width_and_wiring():
    enc = get_text_encoder("open_clip:ViT-B-32:random", allow_random=True)
    assert isinstance(enc, TextEncoder)
    assert enc.name == "open_clip:ViT-B-32:random-seed0" and enc.dim == 512
    e = enc.encode(["a red star", "a blue circle", "a green square"])
    assert e.shape == (3, 512) and e.dtype == torch.float32
    assert torch.allclose(e.norm(dim=1), torch.ones(3), atol=1e-5)
    assert not torch.allclose(e[0], e[1])


def test_open_clip_weights_file_round_trip(tmp_path, tiny_clip_name):
    import open_clip
    from safetensors.torch import save_file

    rand = get_text_encoder(f"open_clip:{tiny_clip_name}:random-seed3", allow_random=True)
    assert rand.name == f"open_clip:{tiny_clip_name}:random-seed3" and rand.dim == 32
    # the same seeded random weights, written to a file, load through the weights-file path
    with torch.random.fork_rng():
        torch.manual_seed(3)
        state = open_clip.create_model(tiny_clip_name, pretrained=None).state_dict()
    weights = tmp_path / "tiny.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(weights))
    from_file = get_text_encoder(f"open_clip:{tiny_clip_name}:{weights}")
    assert from_file.name.startswith(f"open_clip:{tiny_clip_name}:sha256-")
    texts = ["a red star", "a blue circle"]
    assert torch.allclose(from_file.encode(texts), rand.encode(texts), atol=1e-5)
