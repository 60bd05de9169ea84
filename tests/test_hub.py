"""Hub sources on disk: a local hub directory and a Hugging Face cache (with Model-J layouts).

Repos are built in tmp_path with safetensors.torch.save_file and huggingface_hub cards; bad
repos are built by hand to prove each one is rejected with its file and reason.
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import pytest
import torch
from huggingface_hub import ModelCard, ModelCardData
from safetensors.torch import save_file

from bench.modelj_fixture import cache_file
from probex_core.hub import (
    HFCacheSource,
    HubApiSource,
    LocalHubSource,
    RepoError,
    crawl_all,
    make_source,
    read_layer,
)

CLASSES = ["red circle", "blue square", "green star"]


def _card(path: Path, **data: object) -> None:
    card = ModelCard(f"---\n{ModelCardData(**data).to_yaml()}\n---\n\n# A model\n")
    card.save(path)


def make_full(
    repo: Path, seed: int = 0, documented: bool = True, base: str = "zoo/root"
) -> dict[str, torch.Tensor]:
    """A full-model repo in the zoo's layout; returns the tensors written."""
    g = torch.Generator().manual_seed(seed)
    tensors = {
        "fc1.weight": torch.randn(8, 4, generator=g),
        "fc1.bias": torch.randn(8, generator=g),
        "fc2.weight": torch.randn(3, 8, generator=g),
        "conv.weight": torch.randn(2, 3, 3, 3, generator=g).to(torch.float16),
    }
    repo.mkdir(parents=True, exist_ok=True)
    meta = {"format": "pt"}
    config: dict[str, object] = {"architectures": ["MLP"], "model_type": "mlp", "num_labels": 3}
    if documented:
        meta["training_classes"] = json.dumps(CLASSES)
        meta["hyperparameters"] = json.dumps({"lr": 0.001, "epochs": 3})
        config["id2label"] = dict(enumerate(CLASSES))
        _card(
            repo / "README.md",
            base_model=base,
            base_model_relation="finetune",
            license="mit",
            tags=["probex-zoo"],
            training_classes=CLASSES,
        )
    else:
        (repo / "README.md").write_text("# An undocumented model\n")
    save_file(tensors, str(repo / "model.safetensors"), metadata=meta)
    (repo / "config.json").write_text(json.dumps(config))
    return tensors


def make_lora(repo: Path, seed: int = 1, base: str | None = "zoo/root") -> dict[str, torch.Tensor]:
    """A PEFT LoRA adapter repo; returns the tensors written."""
    g = torch.Generator().manual_seed(seed)
    tensors = {
        "base_model.model.fc1.lora_A.weight": torch.randn(2, 4, generator=g),
        "base_model.model.fc1.lora_B.weight": torch.randn(8, 2, generator=g),
        "base_model.model.head.weight": torch.randn(3, 8, generator=g),
    }
    repo.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(repo / "adapter_model.safetensors"), metadata={"format": "pt"})
    (repo / "adapter_config.json").write_text(
        json.dumps(
            {
                "peft_type": "LORA",
                "r": 2,
                "lora_alpha": 4,
                "target_modules": ["fc1"],
                "base_model_name_or_path": base,
            }
        )
    )
    (repo / "README.md").write_text("An adapter without front matter.\n")
    return tensors


def raw_safetensors(
    path: Path, header: dict[str, object], data: bytes, length: int | None = None
) -> None:
    """Write a safetensors file by hand (to build malformed ones)."""
    body = json.dumps(header).encode()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(struct.pack("<Q", len(body) if length is None else length) + body + data)


class CountingFile:
    """A file wrapper that logs (offset, n_bytes) of every read."""

    def __init__(self, f, log: list[tuple[int, int]]) -> None:
        self.f, self.log = f, log

    def read(self, n: int = -1) -> bytes:
        pos = self.f.tell()
        data = self.f.read(n)
        self.log.append((pos, len(data)))
        return data

    def seek(self, *args: int) -> int:
        return self.f.seek(*args)

    def fileno(self) -> int:
        return self.f.fileno()

    def __enter__(self) -> CountingFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.f.close()


class CountingSource(LocalHubSource):
    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.reads: list[tuple[int, int]] = []

    def _open(self, path: Path):  # type: ignore[override]
        return CountingFile(open(path, "rb"), self.reads)


@pytest.fixture
def hub(tmp_path: Path) -> Path:
    root = tmp_path / "hub"
    make_full(root / "zoo" / "mlp-a", seed=0)
    make_full(root / "zoo" / "mlp-b", seed=2, documented=False)
    make_lora(root / "zoo" / "lora-a")
    return root


# --- local: crawling -----------------------------------------------------------------------


def test_local_lists_and_crawls_full_repo(hub: Path) -> None:
    src = LocalHubSource(hub)
    assert list(src.list_repos()) == ["zoo/lora-a", "zoo/mlp-a", "zoo/mlp-b"]
    r = src.crawl("zoo/mlp-a")
    assert (r.repo_id, r.source, r.kind, r.weights_file) == (
        "zoo/mlp-a",
        "local",
        "full",
        "model.safetensors",
    )
    assert r.files == ("README.md", "config.json", "model.safetensors")
    assert r.card["base_model"] == "zoo/root" and r.card["license"] == "mit"
    assert r.base_model == ("zoo/root",) and r.base_model_relation == "finetune"
    assert r.config["model_type"] == "mlp" and r.config["id2label"]["0"] == "red circle"
    assert r.metadata == {
        "format": "pt",
        "training_classes": CLASSES,
        "hyperparameters": {"lr": 0.001, "epochs": 3},
    }
    assert r.training_classes == tuple(CLASSES) and r.documented
    assert set(r.tensors) == {"fc1.weight", "fc1.bias", "fc2.weight", "conv.weight"}
    conv = r.tensors["conv.weight"]
    assert (conv.dtype, conv.shape, conv.file) == ("F16", (2, 3, 3, 3), "model.safetensors")
    assert conv.end - conv.start == 2 * 3 * 3 * 3 * 2
    size = (hub / "zoo/mlp-a/model.safetensors").stat().st_size
    assert max(t.end for t in r.tensors.values()) == size
    assert len(r.signature) == 40 and len(r.fingerprint) == 64
    assert r.location == "zoo/mlp-a" and r.split is None


def test_local_undocumented_and_lora(hub: Path) -> None:
    src = LocalHubSource(hub)
    u = src.crawl("zoo/mlp-b")
    assert u.card == {} and u.base_model == () and u.base_model_relation is None
    assert u.training_classes is None and not u.documented
    lora = src.crawl("zoo/lora-a")
    assert lora.kind == "lora" and lora.weights_file == "adapter_model.safetensors"
    assert lora.config["peft_type"] == "LORA"
    assert lora.base_model == ("zoo/root",) and lora.base_model_relation == "adapter"
    assert lora.card == {} and not lora.documented


def test_signature_and_fingerprint(hub: Path) -> None:
    src = LocalHubSource(hub)
    a, b, lora = (src.crawl(i) for i in ("zoo/mlp-a", "zoo/mlp-b", "zoo/lora-a"))
    assert a.signature == b.signature != lora.signature
    before = a.fingerprint
    assert src.crawl("zoo/mlp-a").fingerprint == before  # stable when nothing changed
    card = hub / "zoo/mlp-a/README.md"
    card.write_text(card.read_text().replace("license: mit", "license: apache-2.0"))
    after_card = src.crawl("zoo/mlp-a").fingerprint
    assert after_card != before
    (hub / "zoo/mlp-a/notes.txt").write_text("x")  # a new file changes the size list
    assert src.crawl("zoo/mlp-a").fingerprint != after_card


def test_fingerprint_sees_weights_rewritten_in_place(hub: Path) -> None:
    src = LocalHubSource(hub)
    before = src.crawl("zoo/mlp-b").fingerprint
    path = hub / "zoo/mlp-b/model.safetensors"
    st = path.stat()
    make_full(hub / "zoo" / "mlp-b", seed=9, documented=False)  # same shapes, new values
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    assert src.crawl("zoo/mlp-b").fingerprint != before


# --- local: lazy reads ---------------------------------------------------------------------


def test_read_tensors_reads_only_that_tensors_bytes(hub: Path) -> None:
    saved = make_full(hub / "zoo" / "mlp-c", seed=5)
    src = CountingSource(hub)
    r = src.crawl("zoo/mlp-c")
    src.reads.clear()
    out = src.read_tensors(r, ["fc2.weight"])
    assert list(out) == ["fc2.weight"]
    assert torch.equal(out["fc2.weight"], saved["fc2.weight"])
    info = r.tensors["fc2.weight"]
    assert src.reads == [(info.start, info.end - info.start)]
    half = src.read_tensors(r, ["conv.weight"])["conv.weight"]
    assert half.dtype == torch.float16 and torch.equal(half, saved["conv.weight"])


def test_bench_scale_counts_a_crawl_by_headers_and_a_read_by_its_tensors(hub: Path) -> None:
    """`probex bench scale`'s counter (on every directory source): a crawl reads headers,
    not weights; a layer read reads exactly its tensors' bytes (read/tensor = 1)."""
    from bench.scale import _Counter, _counting

    with _counting(_Counter()) as counter:
        src = LocalHubSource(hub)
        r = src.crawl("zoo/mlp-a")
        repo = hub / "zoo" / "mlp-a"
        texts = [repo / f for f in ("README.md", "config.json") if (repo / f).is_file()]
        header = min(t.start for t in r.tensors.values())  # 8 bytes + the JSON header
        want = header + sum(p.stat().st_size for p in texts)
        assert counter.take() == (want, 0, 1 + len(texts))
        src.read_tensors(r, ["fc1.weight", "fc2.weight"])
        nbytes = sum(r.tensors[n].end - r.tensors[n].start for n in ("fc1.weight", "fc2.weight"))
        assert counter.take() == (nbytes, nbytes, 1)
    src.read_tensors(r, ["fc1.weight"])  # the patch is gone with the block
    assert counter.take() == (0, 0, 0)


def test_read_ignores_garbage_in_other_tensors(hub: Path) -> None:
    saved = make_full(hub / "zoo" / "mlp-d", seed=6)
    src = LocalHubSource(hub)
    r = src.crawl("zoo/mlp-d")
    path = hub / "zoo/mlp-d/model.safetensors"
    data = bytearray(path.read_bytes())
    for name, info in r.tensors.items():
        if name != "fc1.weight":
            data[info.start : info.end] = b"\xff" * (info.end - info.start)
    path.write_bytes(bytes(data))
    assert torch.equal(src.read_tensors(r, ["fc1.weight"])["fc1.weight"], saved["fc1.weight"])
    assert torch.isnan(src.read_tensors(r, ["fc2.weight"])["fc2.weight"]).all()  # garbage is there


def test_read_layer_full_and_lora(hub: Path) -> None:
    src = LocalHubSource(hub)
    full = make_full(hub / "zoo" / "mlp-e", seed=7)
    x = read_layer(src, src.crawl("zoo/mlp-e"), "conv")
    assert x.shape == (2, 27) and torch.equal(x, full["conv.weight"].float().reshape(2, 27))
    lora_t = make_lora(hub / "zoo" / "lora-b", seed=8)
    rec = src.crawl("zoo/lora-b")
    x = read_layer(src, rec, "fc1")
    expected = (
        lora_t["base_model.model.fc1.lora_B.weight"] @ lora_t["base_model.model.fc1.lora_A.weight"]
    )
    assert torch.allclose(x, expected)
    with pytest.raises(RepoError, match="no layer named"):
        read_layer(src, rec, "nope")
    with pytest.raises(RepoError, match="no tensor named"):
        src.read_tensors(rec, ["missing.weight"])


def test_read_detects_file_truncated_after_crawl(hub: Path) -> None:
    src = LocalHubSource(hub)
    r = src.crawl("zoo/mlp-a")
    path = hub / "zoo/mlp-a/model.safetensors"
    path.write_bytes(path.read_bytes()[:-8])
    last = max(r.tensors.values(), key=lambda t: t.end)
    with pytest.raises(RepoError, match="truncated"):
        src.read_tensors(r, [last.name])


# --- local: untrusted input ----------------------------------------------------------------


def _bad_hub(root: Path, outside: Path) -> dict[str, tuple[str, str]]:
    """Bad repos beside good ones; returns repo_id → (file at fault, reason fragment)."""
    ok_bytes = (root / "zoo/mlp-a/model.safetensors").read_bytes()

    def repo(name: str) -> Path:
        p = root / "bad" / name
        p.mkdir(parents=True)
        return p

    repo("truncated").joinpath("model.safetensors").write_bytes(ok_bytes[:-10])
    repo("garbage").joinpath("model.safetensors").write_bytes(
        struct.pack("<Q", 12) + b"not json!!!!" + b"\0" * 8
    )
    raw_safetensors(repo("huge-header") / "model.safetensors", {}, b"", length=2**40)
    raw_safetensors(
        repo("wrong-size") / "model.safetensors",
        {"w": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 12]}},
        b"\0" * 12,
    )
    raw_safetensors(
        repo("overlap") / "model.safetensors",
        {
            "a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
            "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]},
        },
        b"\0" * 12,
    )
    outside.mkdir()
    (outside / "model.safetensors").write_bytes(ok_bytes)
    repo("escape").joinpath("model.safetensors").symlink_to(outside / "model.safetensors")
    (root / "bad" / "linkdir").symlink_to(outside, target_is_directory=True)
    repo("pickle").joinpath("pytorch_model.bin").write_bytes(b"\x80\x04cos\nsystem\n")
    repo("empty").joinpath("README.md").write_text("no weights here")
    yaml_repo = repo("bad-yaml")
    yaml_repo.joinpath("model.safetensors").write_bytes(ok_bytes)
    yaml_repo.joinpath("README.md").write_text("---\nbase_model: [unclosed\n---\n")
    bad_json = repo("bad-config")
    bad_json.joinpath("model.safetensors").write_bytes(ok_bytes)
    bad_json.joinpath("config.json").write_text("{not json")
    marker = outside / "PWNED"
    for name, value in {
        "code-meta": f"__import__('os').system('touch {marker}')",
        "code-list": f"[__import__('os').system('touch {marker}')]",
    }.items():
        save_file(
            {"w": torch.zeros(2, 2)},
            str(repo(name) / "model.safetensors"),
            metadata={"dataset_chosen_targets": value},
        )
    (root / "bad" / "dots..name").mkdir()
    return {
        "bad/truncated": ("model.safetensors", "truncated"),
        "bad/garbage": ("model.safetensors", "not valid JSON"),
        "bad/huge-header": ("model.safetensors", "exceeds"),
        "bad/wrong-size": ("model.safetensors", "needs 16"),
        "bad/overlap": ("model.safetensors", "overlap"),
        "bad/escape": ("model.safetensors", "escapes the hub root"),
        "bad/linkdir": ("", "escapes the hub root"),
        "bad/pickle": ("pytorch_model.bin", "safetensors only"),
        "bad/empty": ("", "missing weights"),
        "bad/bad-yaml": ("README.md", "bad YAML"),
        "bad/bad-config": ("config.json", "bad JSON"),
        "bad/code-meta": ("model.safetensors", "dataset_chosen_targets"),
        "bad/code-list": ("model.safetensors", "neither JSON nor a Python literal"),
        "bad/dots..name": ("", "invalid repo id"),
    }


def test_bad_repos_are_rejected_and_the_crawl_goes_on(hub: Path, tmp_path: Path) -> None:
    expected = _bad_hub(hub, tmp_path / "outside")
    records, rejected = crawl_all(LocalHubSource(hub))
    assert sorted(r.repo_id for r in records) == ["zoo/lora-a", "zoo/mlp-a", "zoo/mlp-b"]
    got = {r.repo_id: r for r in rejected}
    assert set(got) == set(expected)
    for repo_id, (path, fragment) in expected.items():
        assert got[repo_id].path == path, repo_id
        assert fragment in got[repo_id].reason, (repo_id, got[repo_id].reason)
    assert not (tmp_path / "outside" / "PWNED").exists()


def test_repo_error_names_file_and_reason(hub: Path, tmp_path: Path) -> None:
    _bad_hub(hub, tmp_path / "outside")
    with pytest.raises(RepoError) as e:
        LocalHubSource(hub).crawl("bad/truncated")
    assert (e.value.repo_id, e.value.path) == ("bad/truncated", "model.safetensors")
    assert "bad/truncated/model.safetensors" in str(e.value) and "truncated" in str(e.value)


@pytest.mark.parametrize(
    "bad_id", ["../hub", "zoo/..", "/etc/passwd", "zoo", "a/b/c", "zoo/mlp a", "", "zoo/.."]
)
def test_invalid_repo_ids(hub: Path, bad_id: str) -> None:
    with pytest.raises(RepoError, match="invalid repo id"):
        LocalHubSource(hub).crawl(bad_id)


def test_read_refuses_a_tampered_record_location(hub: Path) -> None:
    import dataclasses

    src = LocalHubSource(hub)
    r = src.crawl("zoo/mlp-a")
    with pytest.raises(RepoError, match="unsafe file path"):
        src.read_tensors(dataclasses.replace(r, location="../../etc"), ["fc1.weight"])


# --- make_source ---------------------------------------------------------------------------


def test_make_source(tmp_path: Path) -> None:
    zoo = tmp_path / "zoo"
    (zoo / "hub").mkdir(parents=True)
    (zoo / "manifest.json").write_text("{}")
    assert isinstance(make_source(str(zoo)), LocalHubSource)
    assert make_source(str(zoo)).root == zoo / "hub"
    assert make_source(zoo / "hub").root == zoo / "hub"
    cache = make_source(f"hf-cache:{tmp_path}")
    assert isinstance(cache, HFCacheSource) and cache.name == "hf_cache"
    api = make_source("hf:http://127.0.0.1:9/?filter=a&filter=b&author=me&base_model=o/r&limit=5")
    assert isinstance(api, HubApiSource) and api.endpoint == "http://127.0.0.1:9"
    assert api.filters == ("a", "b", "base_model:o/r") and api.author == "me" and api.limit == 5
    assert make_source("hf:").endpoint == "https://huggingface.co"


# --- Hugging Face cache (with Model-J layouts) ---------------------------------------------

LORA_LAYER = "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_q"


def _st_bytes(tmp: Path, tensors: dict[str, torch.Tensor], meta: dict[str, str]) -> bytes:
    path = tmp / "scratch.safetensors"
    save_file(tensors, str(path), metadata=meta)
    return path.read_bytes()


def _model_j_full(
    cache: Path, tmp: Path, idx: int, classes_literal: str
) -> dict[str, torch.Tensor]:
    folder = f"models--ProbeX--Model-J__SupViT__model_idx_{idx:04d}"
    g = torch.Generator().manual_seed(idx)
    tensors = {
        "vit.encoder.layer.0.attention.output.dense.weight": torch.randn(6, 6, generator=g),
        "classifier.weight": torch.randn(4, 6, generator=g),
    }
    meta = {"dataset_chosen_targets": classes_literal, "lr": "0.0003", "seed": str(idx)}
    old, new = "a" * 40, "b" * 40
    # an older snapshot with other weights: refs/main must win even though it is touched last
    cache_file(cache, folder, new, "model.safetensors", _st_bytes(tmp, tensors, meta))
    cache_file(
        cache,
        folder,
        new,
        "README.md",
        b"---\nbase_model: google/vit-base-patch16-224-in21k\n---\n",
    )
    cache_file(cache, folder, new, "config.json", b'{"model_type": "vit"}')
    cache_file(cache, folder, old, "model.safetensors", _st_bytes(tmp, {"x": torch.zeros(1)}, {}))
    (cache / folder / "refs").mkdir()
    (cache / folder / "refs" / "main").write_text(new)
    os.utime(cache / folder / "snapshots" / old, ns=(2**62, 2**62))
    return tensors


def _model_j_lora(
    cache: Path, tmp: Path, folder: str, rel: str, seed: int, class_id: str | None
) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    tensors = {
        f"{LORA_LAYER}.lora.down.weight": torch.randn(4, 10, generator=g),  # A: r × d_in
        f"{LORA_LAYER}.lora.up.weight": torch.randn(12, 4, generator=g),  # B: d_out × r
    }
    meta = {"imagenet_class_id": class_id} if class_id else {}
    rev = "c" * 40
    cache_file(
        cache, folder, rev, f"{rel}/pytorch_lora_weights.safetensors", _st_bytes(tmp, tensors, meta)
    )
    (cache / folder / "refs").mkdir(exist_ok=True)
    (cache / folder / "refs" / "main").write_text(rev)
    return tensors


@pytest.fixture
def cache(tmp_path: Path) -> tuple[Path, dict[str, dict[str, torch.Tensor]]]:
    root = tmp_path / "hf_home" / "hub"
    root.mkdir(parents=True)
    saved = {
        "ProbeX/Model-J__SupViT__model_idx_0001": _model_j_full(
            root, tmp_path, 1, "['apple', 'aquarium_fish']"
        ),
        "ProbeX/Model-J__SupViT__model_idx_0002": _model_j_full(
            root, tmp_path, 2, '["bear", "beaver"]'
        ),
    }
    sd200 = "models--ProbeX--Model-J__SD_200"
    saved["ProbeX/Model-J__SD_200__train__model_idx_0000"] = _model_j_lora(
        root, tmp_path, sd200, "train/model_idx_0000", 10, "n01440764"
    )
    saved["ProbeX/Model-J__SD_200__val_holdout__model_idx_0007"] = _model_j_lora(
        root, tmp_path, sd200, "val_holdout/model_idx_0007", 11, "n01443537"
    )
    saved["ProbeX/Model-J__SD_1k__test__model_idx_0003"] = _model_j_lora(
        root, tmp_path, "datasets--ProbeX--Model-J", "SD_1k/test/model_idx_0003", 12, None
    )
    return root, saved


def test_fixture_is_a_real_hf_cache(cache: tuple[Path, dict]) -> None:
    from huggingface_hub import scan_cache_dir

    info = scan_cache_dir(cache[0])
    assert not info.warnings
    assert {r.repo_id for r in info.repos} >= {
        "ProbeX/Model-J__SupViT__model_idx_0001",
        "ProbeX/Model-J__SD_200",
    }


def test_hf_cache_lists_model_j_repos_and_lora_models(cache: tuple[Path, dict]) -> None:
    root, saved = cache
    src = HFCacheSource(root.parent)  # HF_HOME works as well as the hub folder itself
    assert src.root == root
    assert sorted(src.list_repos()) == sorted(saved)


def test_hf_cache_model_j_full(cache: tuple[Path, dict]) -> None:
    root, saved = cache
    src = HFCacheSource(root)
    records, rejected = crawl_all(src)
    assert rejected == []
    by_id = {r.repo_id: r for r in records}
    r = by_id["ProbeX/Model-J__SupViT__model_idx_0001"]
    assert (r.source, r.kind, r.revision, r.split) == ("hf_cache", "full", "b" * 40, None)
    assert r.files == ("README.md", "config.json", "model.safetensors")
    # names as people write them (prompts need words), the raw list kept in the metadata
    assert r.training_classes == ("apple", "aquarium fish") and r.documented
    assert r.metadata == {
        "dataset_chosen_targets": ["apple", "aquarium_fish"],
        "lr": 0.0003,
        "seed": 1,
    }
    assert r.base_model == ("google/vit-base-patch16-224-in21k",) and r.config == {
        "model_type": "vit"
    }
    assert by_id["ProbeX/Model-J__SupViT__model_idx_0002"].training_classes == ("bear", "beaver")
    name = "vit.encoder.layer.0.attention.output.dense.weight"
    got = src.read_tensors(r, [name])
    assert torch.equal(got[name], saved[r.repo_id][name])
    assert r.signature == by_id["ProbeX/Model-J__SupViT__model_idx_0002"].signature
    assert r.fingerprint != by_id["ProbeX/Model-J__SupViT__model_idx_0002"].fingerprint


def test_hf_cache_model_j_lora_layout(cache: tuple[Path, dict]) -> None:
    root, saved = cache
    src = HFCacheSource(root)
    r = src.crawl("ProbeX/Model-J__SD_200__val_holdout__model_idx_0007")
    assert (r.kind, r.split, r.weights_file) == (
        "lora",
        "val_holdout",
        "pytorch_lora_weights.safetensors",
    )
    # a held-out split's label is ground truth only: withheld from every stage but evaluation,
    # and a WordNet id reads as its ImageNet class name
    assert r.training_classes is None and not r.documented
    assert r.withheld_classes == ("goldfish",)
    train = src.crawl("ProbeX/Model-J__SD_200__train__model_idx_0000")
    assert train.training_classes == ("tench",) and train.documented
    assert r.files == ("pytorch_lora_weights.safetensors",)
    t = saved[r.repo_id]
    x = read_layer(src, r, LORA_LAYER)
    assert x.shape == (12, 10)
    assert torch.allclose(
        x, t[f"{LORA_LAYER}.lora.up.weight"] @ t[f"{LORA_LAYER}.lora.down.weight"]
    )
    undocumented = src.crawl("ProbeX/Model-J__SD_1k__test__model_idx_0003")
    assert undocumented.split == "test" and undocumented.extra == {"subset": "SD_1k"}
    assert undocumented.training_classes is None and not undocumented.documented
    fresh = HFCacheSource(root)  # crawl without listing first
    assert fresh.crawl(r.repo_id).fingerprint == r.fingerprint


def test_hf_cache_rejects_escaping_blob_and_code_metadata(
    cache: tuple[Path, dict], tmp_path: Path
) -> None:
    root, _ = cache
    outside = tmp_path / "elsewhere.safetensors"
    outside.write_bytes(_st_bytes(tmp_path, {"w": torch.zeros(2)}, {}))
    snap = root / "models--evil--escape" / "snapshots" / ("d" * 40)
    snap.mkdir(parents=True)
    (snap / "model.safetensors").symlink_to(outside)
    marker = tmp_path / "PWNED"
    cache_file(
        root,
        "models--evil--code",
        "e" * 40,
        "model.safetensors",
        _st_bytes(
            tmp_path,
            {"w": torch.zeros(2)},
            {"dataset_chosen_targets": f"['a', __import__('os').system('touch {marker}')]"},
        ),
    )
    cache_file(root, "models--evil--pickle", "f" * 40, "pytorch_model.bin", b"\x80\x04.")
    records, rejected = crawl_all(HFCacheSource(root))
    got = {r.repo_id: r for r in rejected}
    assert set(got) == {"evil/escape", "evil/code", "evil/pickle"}
    assert got["evil/escape"].path == "model.safetensors" and "escapes" in got["evil/escape"].reason
    assert "nor a Python literal" in got["evil/code"].reason
    assert got["evil/pickle"].path == "pytorch_model.bin"
    assert len(records) == 5 and not marker.exists()
    with pytest.raises(RepoError, match="not in the cache"):
        HFCacheSource(root).crawl("nobody/nothing")
