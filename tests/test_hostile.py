"""Hostile hubs: a corpus of malformed repos beside the tiny zoo.

Every bad repo is built here by code (no committed binaries). Each must be rejected with its
file and reason, at the stage that can see the fault, and the good repos beside them must get
exactly the answers they get without them.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from assets.experts import ExpertTraining
from probex_core.catalog import Home, query
from probex_core.hub import LocalHubSource, crawl_all
from tests.conftest import FAST
from tests.test_hub import raw_safetensors

TEMPLATE_BASE = "foundation-lab/mlp-alpha"  # the tiny zoo's MLP root
SIZE_LIMIT = 64 * 2**20  # $PROBEX_MAX_FILE_BYTES for these runs; good files are < 1 MB


@dataclass(frozen=True)
class Expect:
    stage: str  # crawl | weights | layers
    path: str  # file at fault inside the repo ("" for the repo as a whole)
    fragment: str  # a piece of the reason


def _template(hub: Path) -> Path:
    """A documented fine-tune of the MLP root: the good repo the bad ones are cut from."""
    for card in sorted(hub.glob("*/*/README.md")):
        if f"base_model: {TEMPLATE_BASE}" in card.read_text():
            return card.parent
    raise AssertionError("the tiny zoo has no fine-tune of the MLP root")


def build_corpus(hub: Path, outside: Path) -> dict[str, Expect]:
    """Write the malformed repos under hub/mallory/ (and a few odd names); repo id → Expect."""
    good = _template(hub)
    ok = (good / "model.safetensors").read_bytes()
    card = (good / "README.md").read_text()
    config = (good / "config.json").read_text()
    tensors = load_file(str(good / "model.safetensors"))
    (n,) = struct.unpack("<Q", ok[:8])
    header = json.loads(ok[8 : 8 + n])
    meta = header.pop("__metadata__")
    expect: dict[str, Expect] = {}

    def repo(name: str, *, weights: bytes | None = ok, with_card: bool = True) -> Path:
        p = hub / "mallory" / name
        p.mkdir(parents=True)
        if weights is not None:
            (p / "model.safetensors").write_bytes(weights)
        if with_card:
            (p / "README.md").write_text(card)
        (p / "config.json").write_text(config)
        return p

    def bad(name: str, stage: str, path: str, fragment: str) -> None:
        expect[f"mallory/{name}"] = Expect(stage, path, fragment)

    def header_file(name: str, hdr: object, data: bytes = b"", length: int | None = None) -> None:
        raw_safetensors(repo(name, weights=None) / "model.safetensors", hdr, data, length)

    st = "model.safetensors"
    # --- safetensors files ----------------------------------------------------------------
    repo("empty-file", weights=b"")
    bad("empty-file", "crawl", st, "truncated")
    repo("truncated-data", weights=ok[: len(ok) // 2])
    bad("truncated-data", "crawl", st, "truncated")
    repo("header-past-end", weights=struct.pack("<Q", len(ok)) + ok[8:])
    bad("header-past-end", "crawl", st, "truncated")
    repo("header-not-json", weights=struct.pack("<Q", 12) + b"not json!!!!" + b"\0" * 8)
    bad("header-not-json", "crawl", st, "not valid JSON")
    header_file("header-a-list", [1, 2, 3])
    bad("header-a-list", "crawl", st, "not a JSON object")
    header_file("header-absurd-size", {}, length=2**62)
    bad("header-absurd-size", "crawl", st, "exceeds")
    header_file(
        "offsets-overlap",
        {
            "a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
            "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]},
        },
        b"\0" * 12,
    )
    bad("offsets-overlap", "crawl", st, "overlap")
    header_file(
        "offsets-past-end", {"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}, b"\0"
    )
    bad("offsets-past-end", "crawl", st, "truncated")
    header_file(
        "dtype-shape-disagree",
        {"a": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 12]}},
        b"\0" * 12,
    )
    bad("dtype-shape-disagree", "crawl", st, "F32 × [2, 2] needs")
    header_file(
        "unknown-dtype", {"a": {"dtype": "F128", "shape": [1], "data_offsets": [0, 16]}}, b"\0" * 16
    )
    bad("unknown-dtype", "crawl", st, "unsupported dtype")
    header_file(
        "negative-shape", {"a": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}}, b"\0" * 4
    )
    bad("negative-shape", "crawl", st, "bad shape")
    body = b'{"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}, "a": {}}'
    repo("duplicate-keys", weights=struct.pack("<Q", len(body)) + body + b"\0" * 4)
    bad("duplicate-keys", "crawl", st, "duplicate key")
    big = repo("over-size-limit", weights=ok)
    with open(big / "model.safetensors", "r+b") as f:
        f.truncate(SIZE_LIMIT + 1)  # sparse: no disk used
    bad("over-size-limit", "crawl", st, "file limit")
    # --- pickles and missing weights: never unpickled -------------------------------------
    marker = outside / "PWNED"
    outside.mkdir(parents=True, exist_ok=True)
    pickle = f"cos\nsystem\n(S'touch {marker}'\ntR.".encode()
    repo("pickle-bin", weights=None).joinpath("pytorch_model.bin").write_bytes(pickle)
    bad("pickle-bin", "crawl", "pytorch_model.bin", "safetensors only")
    repo("pickle-ckpt", weights=None).joinpath("last.ckpt").write_bytes(pickle)
    bad("pickle-ckpt", "crawl", "last.ckpt", "safetensors only")
    repo("no-weights", weights=None)
    bad("no-weights", "crawl", "", "missing weights")
    # --- cards, configs, metadata ---------------------------------------------------------
    repo("card-bad-yaml").joinpath("README.md").write_text("---\nbase_model: [unclosed\n---\n")
    bad("card-bad-yaml", "crawl", "README.md", "YAML")
    bomb = ["a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    for prev, cur in zip("abcdefgh", "bcdefghi", strict=True):
        bomb.append(f"{cur}: &{cur} [{', '.join([f'*{prev}'] * 9)}]")
    repo("card-alias-bomb").joinpath("README.md").write_text("---\n" + "\n".join(bomb) + "\n---\n")
    bad("card-alias-bomb", "crawl", "README.md", "YAML")
    repo("card-not-mapping").joinpath("README.md").write_text("---\n- just\n- a list\n---\n")
    bad("card-not-mapping", "crawl", "README.md", "not a mapping")
    repo("card-not-utf8").joinpath("README.md").write_bytes(b"---\nlicense: \xff\xfe\n---\n")
    bad("card-not-utf8", "crawl", "README.md", "not UTF-8")
    repo("config-bad-json").joinpath("config.json").write_text("{not json")
    bad("config-bad-json", "crawl", "config.json", "bad JSON")
    save_file(
        tensors,
        str(repo("metadata-code", weights=None) / st),
        metadata={**meta, "training_classes": f"[__import__('os').system('touch {marker}')]"},
    )
    bad("metadata-code", "crawl", st, "neither JSON nor a Python literal")
    shards = repo("shard-escapes", weights=None)
    (shards / "model.safetensors.index.json").write_text(
        json.dumps({"weight_map": {"fc1.weight": "../../bexley/x.safetensors"}})
    )
    bad("shard-escapes", "crawl", "../../bexley/x.safetensors", "unsafe file path")
    # --- paths ----------------------------------------------------------------------------
    (outside / "model.safetensors").write_bytes(ok)
    repo("symlink-out", weights=None).joinpath(st).symlink_to(outside / "model.safetensors")
    bad("symlink-out", "crawl", st, "escapes the hub root")
    (hub / "mallory" / "dir-link-out").symlink_to(outside, target_is_directory=True)
    bad("dir-link-out", "crawl", "", "escapes the hub root")
    (hub / "mallory" / "dots..name").mkdir()
    bad("dots..name", "crawl", "", "invalid repo id")
    (hub / "mallory" / ("x" * 200)).mkdir()
    bad("x" * 200, "crawl", "", "invalid repo id")
    os.mkdir(os.fsencode(hub / "mallory") + b"/caf\xe9")  # a name that is not UTF-8
    expect["mallory/caf\\xe9"] = Expect("crawl", "", "invalid repo id")  # as stored
    # --- weights that parse but cannot be read as a model ---------------------------------
    nan = {k: torch.full_like(v, float("nan")) for k, v in tensors.items()}
    save_file(nan, str(repo("all-nan", weights=None) / st), metadata=meta)
    bad("all-nan", "weights", st, "NaN")
    inf = dict(tensors)
    inf["fc2.weight"] = inf["fc2.weight"].clone()
    inf["fc2.weight"][0, 0] = float("inf")
    save_file(inf, str(repo("one-inf", weights=None) / st), metadata=meta)
    bad("one-inf", "weights", st, "1 Inf")
    missing = {k: v for k, v in tensors.items() if not k.startswith("fc2.")}
    save_file(missing, str(repo("missing-layer", weights=None) / st), metadata=meta)
    bad("missing-layer", "weights", st, "lacks tensor 'fc2.bias'")
    wide = dict(tensors)
    wide["fc2.weight"] = torch.zeros(64, 96)
    save_file(wide, str(repo("wrong-shape", weights=None) / st), metadata=meta)
    bad("wrong-shape", "weights", st, "wrong shape for the tree")
    return expect


@pytest.fixture(scope="module")
def hostile(tiny_hub_copy: Path, tmp_path_factory: pytest.TempPathFactory):
    """(hub, outside dir, expected rejections): the tiny zoo plus the malformed corpus."""
    root = tmp_path_factory.mktemp("hostile")
    hub = root / "hub"
    shutil.copytree(tiny_hub_copy / "hub", hub)
    shutil.copy(tiny_hub_copy / "manifest.json", root / "manifest.json")
    expect = build_corpus(hub, root / "outside")
    return hub, root / "outside", expect


@pytest.fixture
def size_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PROBEX_MAX_FILE_BYTES", str(SIZE_LIMIT))


def test_the_corpus_is_large_and_each_crawl_fault_is_named(hostile, size_limit) -> None:
    hub, outside, expect = hostile
    assert len(expect) >= 25
    records, rejected = crawl_all(LocalHubSource(hub))
    got = {r.repo_id: r for r in rejected}
    crawl_faults = {k: v for k, v in expect.items() if v.stage == "crawl"}
    assert set(got) == set(crawl_faults)
    for repo_id, e in crawl_faults.items():
        assert (got[repo_id].path, e.fragment in got[repo_id].reason) == (e.path, True), (
            repo_id,
            got[repo_id],
        )
    assert {r.repo_id for r in records} >= {k for k, v in expect.items() if v.stage != "crawl"}
    assert not (outside / "PWNED").exists()


def test_a_run_through_the_corpus_loses_no_good_model(hostile, built, size_limit, tmp_path):
    """The hub the shared home was built from gains the corpus; the whole graph is run again:
    every bad repo in rejected_repos with its stage, file and reason, every check passing, no
    tree made stale by its hostile neighbours (so no expert retrained), and every good repo's
    predictions identical to the run without the corpus (`built`)."""
    from orchestration.runner import run_all
    from tests.test_pipeline import copy_home

    hub, outside, expect = hostile
    clean, _ = built
    home = copy_home(clean, tmp_path / "home")
    result = run_all(home, str(hub), training=ExpertTraining(**FAST))
    assert all(result["checks"].values()), result["checks"]
    assert result["built"] == [] and result["fresh"] == 3, result  # the tiny zoo's 3 trees
    rej = query(home, "SELECT repo_id, path, reason, stage FROM rejected_repos")
    got = {r.repo_id: r for r in rej.itertuples()}
    assert set(got) == set(expect)
    for repo_id, e in expect.items():
        r = got[repo_id]
        assert (r.stage, r.path, e.fragment in r.reason) == (e.stage, e.path, True), (repo_id, r)
    assert not (outside / "PWNED").exists()

    sql = "SELECT repo_id, tree_id, class_name, probability, rank FROM predictions ORDER BY ALL"
    before, after = query(clean, sql), query(home, sql)
    assert len(before) > 0
    assert not after.repo_id.str.startswith("mallory/").any()
    assert before.drop(columns="probability").equals(after.drop(columns="probability"))
    assert (before.probability - after.probability).abs().max() < 1e-6
    trees = "SELECT repo_id, tree_id, parent FROM models WHERE tree_id IS NOT NULL ORDER BY ALL"
    assert query(clean, trees).equals(query(home, trees))


def test_a_nan_layer_found_at_extraction_drops_only_that_member(tiny_hub_copy, tmp_path):
    """Tree recovery reads only a few layers of each model; a NaN in a layer the experts read
    (here: written after recovery ran) surfaces when the tree's layers are extracted. That
    member is dropped with its file and reason, its tree still gets its layers, and the layer
    files hold only finite values."""
    from probex_core import pipeline
    from probex_core.catalog import read_table
    from probex_core.hub import make_source
    from probex_core.pipeline.layers import candidate_layers, verify_layers
    from probex_core.store import TreeLayers

    hub = tmp_path / "hub"
    shutil.copytree(tiny_hub_copy / "hub", hub)
    home = Home(tmp_path / "home")
    source = make_source(str(hub))
    pipeline.crawl(home, source)
    pipeline.recover(home, source)
    members = read_table(home, "tree_members")
    child = members[
        (members.depth == 1)
        & members.repo_id.map(lambda r: (hub / r / "model.safetensors").is_file())
    ]
    repo_id, tree_id = child.repo_id.iloc[0], child.tree_id.iloc[0]
    weights = hub / repo_id / "model.safetensors"
    tensors = load_file(str(weights))
    with open(weights, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        meta = json.loads(f.read(n)).get("__metadata__")
    layer = next(iter(candidate_layers({repo_id: {k: v.shape for k, v in tensors.items()}}, 6)))
    tensors[layer + ".weight"][0, :3] = float("nan")
    save_file(tensors, str(weights), metadata=meta)
    pipeline.crawl(home, source)
    report = pipeline.extract_layers(home, source, tree_id)
    assert report.summary["rejected"] == 1
    rej = read_table(home, "rejected")
    assert list(zip(rej.repo_id, rej.stage, rej.path, strict=True)) == [
        (repo_id, "layers", "model.safetensors")
    ]
    assert f"layer {layer!r} has 3 NaN" in rej.reason.iloc[0]
    ids = TreeLayers(home, tree_id).index()["repo_ids"]
    assert repo_id not in ids and len(ids) == (members.tree_id == tree_id).sum() - 1
    assert verify_layers(home, tree_id) == []
