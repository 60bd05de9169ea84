"""Model-J as the official script downloads it: layouts found, splits honoured, labels read.

The fixture (`bench.modelj_fixture`) writes both layouts of SCIENCE.md §7: per-split
Hugging Face caches with symlinked blobs and Python-literal `dataset_chosen_targets`, and bare
LoRA split folders with `imagenet_class_id`. The end-to-end run must ingest every repo,
train on `train`, validate on `val`, score `test` and the holdout splits, and beat chance.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from assets.experts import ExpertTraining
from bench.modelj_fixture import ModelJSizes, write_modelj
from probex_core.catalog import Home, query
from probex_core.classnames import class_name, imagenet_names
from probex_core.hub import HFCacheSource, LocalHubSource, crawl_all, describe_hub, make_source

SHORT = {"epochs": 40, "sweep_epochs": 10, "val_every": 10}


@pytest.fixture(scope="module")
def download(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """`<out>/{SupViT,SD_200}/…` exactly as the official script leaves them, and their truth."""
    out = tmp_path_factory.mktemp("modelj") / "Model-J"
    return out, write_modelj(out, seed=0)


@pytest.fixture(scope="module")
def run(download, tmp_path_factory):
    from orchestration.runner import run_all

    out, truth = download
    home = Home(tmp_path_factory.mktemp("modelj-home"))
    result = run_all(home, str(out), training=ExpertTraining(**SHORT))
    return home, result, truth


def test_the_layouts_are_found_without_a_prefix(download) -> None:
    out, truth = download
    for spec, subsets in (
        (str(out), {"SupViT", "SD_200"}),  # the download folder: subsets side by side
        (str(out / "SupViT"), {"SupViT"}),  # one subset's folder
        (str(out / "SD_200"), {"SD_200"}),
        (f"hf-cache:{out / 'SupViT'}", {"SupViT"}),  # the explicit prefix reads it too
    ):
        src = make_source(spec)
        assert isinstance(src, HFCacheSource), spec
        ids = set(src.list_repos())
        want = {r for r in truth if any(f"__{s}__" in r for s in subsets)}
        assert ids == want, spec
        line = describe_hub(spec, src)
        assert line.startswith("Model-J layout") and f"{len(want):,} repos" in line
    assert "5 splits" in describe_hub(str(out / "SD_200"), make_source(str(out / "SD_200")))


def test_every_repo_is_read_with_its_split_and_labels(download) -> None:
    out, truth = download
    records, rejected = crawl_all(make_source(str(out)))
    assert rejected == []
    assert {r.repo_id for r in records} == set(truth)
    for r in records:
        want = truth[r.repo_id]
        assert r.split == want["split"]
        names = tuple(class_name(c) for c in want["classes"])
        if r.split in ("train", "val"):
            assert r.documented and set(r.training_classes) == set(names)
        else:  # scored only: no stage but evaluation may see these labels
            assert not r.documented and r.training_classes is None
            assert set(r.withheld_classes) == set(names)
    lora = next(r for r in records if r.kind == "lora" and r.split == "train")
    assert lora.extra == {"subset": "SD_200"} and lora.location.startswith("SD_200/train/")
    assert all(" " in c or c.isalpha() for r in records for c in r.training_classes or ())
    assert not any("_" in c for r in records for c in r.training_classes or ())


def test_default_download_location(download, tmp_path, monkeypatch) -> None:
    """Without --output_dir the script downloads under cached_assets_path("ProbeX", "ModelJ")."""
    from huggingface_hub import cached_assets_path

    out, truth = download
    monkeypatch.setenv("HF_ASSETS_CACHE", str(tmp_path / "assets"))
    where = cached_assets_path(
        library_name="ProbeX", namespace="ModelJ", assets_dir=tmp_path / "assets"
    )
    shutil.copytree(out / "SupViT", where / "models" / "SupViT", symlinks=True)
    src = make_source("modelj:SupViT")
    assert src.root == where / "models" / "SupViT"
    assert set(src.list_repos()) == {r for r in truth if "__SupViT__" in r}


def test_wordnet_ids_and_underscores() -> None:
    names = imagenet_names()
    assert len(names) == 1000 and all(k.startswith("n") and len(k) == 9 for k in names)
    assert class_name("n01983481") == "American lobster"
    assert class_name("n01440764") == "tench"
    assert class_name("aquarium_fish") == "aquarium fish"
    assert class_name("n99999999") == "n99999999"  # not ImageNet-1k: kept as it is


@pytest.mark.parametrize("layout", ["missing", "file", "empty", "unknown"])
def test_bad_hubs_end_in_one_line(layout: str, tmp_path: Path, capsys, monkeypatch) -> None:
    from orchestration.cli import main

    monkeypatch.setenv("PROBEX_HOME", str(tmp_path / "home"))
    hub = tmp_path / "hub"
    if layout == "file":
        hub.write_text("not a folder")
    elif layout == "empty":
        hub.mkdir()
    elif layout == "unknown":  # files, but no repo folder, cache or split folder
        (hub / "weights").mkdir(parents=True)
        (hub / "notes.txt").write_text("x")
    code = main(["run", "--hub", str(hub)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("probex: error: ")
    assert str(hub) in err[0]
    if layout in ("empty", "unknown"):
        assert "no repos found" in err[0] and "Model-J" in err[0]


def test_a_train_split_without_labels_is_refused(download, tmp_path, capsys, monkeypatch) -> None:
    from safetensors.torch import load_file, save_file

    from orchestration.cli import main

    monkeypatch.setenv("PROBEX_HOME", str(tmp_path / "home"))
    out, _ = download
    hub = tmp_path / "SD_200"
    shutil.copytree(out / "SD_200", hub)
    for f in hub.glob("train/*/pytorch_lora_weights.safetensors"):  # drop every train label
        save_file(load_file(f), f)
    code = main(["run", "--hub", str(hub)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "split 'train' has no labels" in err[0]


def test_a_zoo_folder_finds_its_own_manifest(tmp_path: Path) -> None:
    from assets.resources import HubSourceResource

    (tmp_path / "zoo" / "hub").mkdir(parents=True)
    (tmp_path / "zoo" / "manifest.json").write_text("{}")
    for spec in (tmp_path / "zoo", tmp_path / "zoo" / "hub"):
        assert (
            HubSourceResource(spec=str(spec)).manifest_path() == tmp_path / "zoo" / "manifest.json"
        )
        assert isinstance(make_source(str(spec)), LocalHubSource)
    assert HubSourceResource(spec=f"hf-cache:{tmp_path}").manifest_path() is None


def test_run_ingests_everything_and_honours_the_splits(run) -> None:
    home, result, truth = run
    n = query(home, "SELECT count(*) AS n FROM models").n[0]
    assert n == len(truth)
    assert query(home, "SELECT count(*) AS n FROM rejected_repos").n[0] == 0
    trees = query(home, "SELECT root_repo, kind, size FROM trees ORDER BY size DESC")
    # one tree per subset: the LoRAs' base (Stable Diffusion) is absent, named as such
    assert len(trees) == 2
    lora = trees[trees.kind == "lora"].iloc[0]
    assert lora.root_repo == "absent:unknown-base"
    assert lora["size"] == sum("SD_200" in r for r in truth)
    for meta_path in (home.artifacts / "experts").glob("*/meta.json"):
        meta = json.loads(meta_path.read_text())
        assert meta["split_from"] == "hub"
        assert {truth[r]["split"] for r in meta["train_repos"]} == {"train"}
        assert {truth[r]["split"] for r in meta["val_repos"]} == {"val"}


def test_run_scores_the_test_splits_above_chance(run) -> None:
    home, _, truth = run
    ev = query(home, "SELECT * FROM evaluations WHERE split IN ('test', 'holdout')")
    vit = ev[(ev.method == "probex") & (ev.metric == "per_class_accuracy")]
    full = vit[vit.n == sum(t["split"] == "test" and "SupViT" in r for r, t in truth.items())]
    assert len(full) == 1 and full.value.iloc[0] > full.chance.iloc[0] + 0.15
    top1 = ev[(ev.method == "probex") & (ev.metric == "top1")].iloc[0]
    assert top1.value > top1.chance + 0.3  # LoRA test models, one class each
    held = ev[(ev.method == "probex-zeroshot") & (ev.metric.isin(["heldout_top1", "heldout_top5"]))]
    assert set(held.metric) == {"heldout_top1", "heldout_top5"}
    assert held.chance.notna().all()
    assert (held.n == sum(t["split"].endswith("holdout") for t in truth.values())).all()


def test_the_layer_screen_finds_the_layer_an_even_spread_misses(tmp_path: Path) -> None:
    """24 projections, the classes in block 5's attention output: six layers spread evenly
    over depth miss it; the ridge screen of every layer keeps it and the experts choose it."""
    from bench.modelj_fixture import ModelJSizes, signal_layer_name
    from orchestration.runner import run_all
    from probex_core.pipeline.layers import _even, candidate_layers

    sizes = ModelJSizes(vit_blocks=12, signal_block=5)
    write_modelj(tmp_path / "mj", seed=1, sizes=sizes)
    signal = signal_layer_name(sizes).removesuffix(".weight")
    src = make_source(str(tmp_path / "mj" / "SupViT"))
    records, _ = crawl_all(src)
    every = list(candidate_layers({r.repo_id: r.tensor_shapes() for r in records}, 64))
    assert len(every) == 24 and signal not in _even(every, 6)

    home = Home(tmp_path / "home")
    run_all(home, str(tmp_path / "mj" / "SupViT"), training=ExpertTraining(**SHORT))
    (index,) = [
        json.loads(p.read_text()) for p in (home.artifacts / "layers").glob("*/layers.json")
    ]
    assert len(index["screen"]) == 24 and signal in index["layers"]
    assert max(index["screen"], key=index["screen"].get) == signal
    (meta,) = [json.loads(p.read_text()) for p in (home.artifacts / "experts").glob("*/meta.json")]
    assert meta["layer"] == signal


def test_the_bench_reads_what_the_official_code_reads(download) -> None:
    """`probex bench modelj` times an official-style loader against probex's one read: both
    must see the same weights and the same labels, model for model."""
    import torch

    from bench.modelj import _FilesEachEpoch, _stacks
    from bench.modelj_fixture import signal_layer_name

    out, _ = download
    layer = signal_layer_name(ModelJSizes())
    data, classes = _stacks(out / "SupViT", layer)
    for split in ("train", "test"):
        files = _FilesEachEpoch(out / "SupViT" / split, layer, classes)
        X, Y = map(torch.stack, zip(*[files[i] for i in range(len(files))], strict=True))
        assert torch.equal(X, data[split].X) and torch.equal(Y, data[split].Y)


def test_a_repo_id_in_two_splits_is_kept_once_and_the_other_rejected(download, tmp_path) -> None:
    out, truth = download
    hub = tmp_path / "SupViT"
    shutil.copytree(out / "SupViT", hub, symlinks=True)
    folder = "models--ProbeX--Model-J__SupViT__model_idx_0000"  # a train model
    shutil.copytree(hub / "train" / folder, hub / "val" / folder, symlinks=True)
    records, rejected = crawl_all(make_source(str(hub)))
    ids = [r.repo_id for r in records]
    assert sorted(ids) == sorted(r for r in truth if "__SupViT__" in r)  # nothing good lost
    kept = next(r for r in records if r.repo_id == "ProbeX/Model-J__SupViT__model_idx_0000")
    assert kept.split == "train"
    (rej,) = rejected
    assert rej.repo_id == kept.repo_id and rej.path.startswith(f"val/{folder}")
    assert "duplicate repo id" in rej.reason and f"train/{folder}" in rej.reason


def test_the_report_fills_its_tables_on_model_j_with_the_official_protocol(run, tmp_path) -> None:
    """`probex report --experiments` on a Model-J-layout home: ground truth from the labelled
    test split (no manifest), every experiment on both trees, the official protocol beside
    the pipeline's experts."""
    from probex_core.catalog import refresh_views
    from probex_core.pipeline.experiments import run_experiments_on_home
    from probex_core.pipeline.report import build_report

    src, _, _ = run
    shutil.copytree(src.root, tmp_path / "home", ignore=shutil.ignore_patterns("*.duckdb*"))
    home = Home(tmp_path / "home")
    refresh_views(home)
    run_experiments_on_home(home)
    report = build_report(home, measure_speed=False)
    assert report.header["hub layout"].startswith("Model-J layout"), report.header
    for title in ("Discriminative accuracy per tree", "Probes ablation",
                  "Per-tree experts against cross-tree learners",
                  "The official ProbeX protocol beside ours"):  # fmt: skip
        table = report.section(title).table
        assert table is not None and len(table) >= 2, title
    official = report.section("The official ProbeX protocol beside ours").table
    # the miniature's planted signal is easy: measured 0.958 (ViT, chance 0.575) and top-1
    # 1.000 (LoRA, chance 0.125), ours 0.971 and 1.000
    assert (official["official protocol"] > official.chance + 0.2).all(), official
    assert (official["ours: ProbeX"] > official.chance + 0.2).all(), official
    # it reads the layer as the hub stores it; with that hub gone it is skipped, with why
    from probex_core.hub import make_source, read_layer
    from probex_core.pipeline.crawl import load_records
    from probex_core.pipeline.experiments import _raw_reader
    from probex_core.store import TreeExperts

    read, why = _raw_reader(home)
    tree = query(home, "SELECT tree_id FROM trees WHERE kind = 'full'").tree_id[0]
    meta = TreeExperts(home, tree).meta()
    repo = meta.train_repos[0]
    hub = json.loads((home.root / "run.json").read_text())["hub"]
    want = read_layer(make_source(hub), load_records(home)[repo], meta.layer)
    assert why is None and torch.equal(read([repo], meta.layer, tuple(want.shape))[0], want)
    (home.root / "run.json").write_text(json.dumps({"hub": str(tmp_path / "gone")}))
    assert _raw_reader(home) == (None, f"hub not found: {tmp_path / 'gone'}")
