"""The `probex` command line as a user calls it: `main(argv)`, its output and exit code."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from orchestration.cli import main
from probex_core.catalog import SQL_DIR, load_sql, query
from probex_core.pipeline.query import last_run_hub
from tests.test_pipeline import copy_home


@pytest.fixture
def on_built(built, monkeypatch):
    home, _ = built
    monkeypatch.setenv("PROBEX_HOME", str(home.root))
    monkeypatch.delenv("PROBEX_HUB", raising=False)
    return home


def test_sql_answers_from_the_catalog(on_built, capsys) -> None:
    assert main(["sql", "SELECT count(*) AS n FROM models"]) == 0
    n = len(query(on_built, "SELECT repo_id FROM models"))
    assert re.search(rf"\|\s*{n}\s*\|", capsys.readouterr().out)


def test_every_report_query_runs_and_answers(on_built) -> None:
    names = sorted(p.stem for p in SQL_DIR.glob("report_*.sql"))
    assert {"report_summary", "report_trees", "report_experts", "report_evaluations"} <= set(names)
    for name in names:
        assert len(query(on_built, load_sql(name))) > 0, name


def test_report_prints_every_tree_by_name_with_the_skipped_one_explained(
    on_built, capsys, monkeypatch, tmp_path
):
    monkeypatch.setenv("PROBEX_HOME", str(copy_home(on_built, tmp_path / "home").root))
    assert main(["report"]) == 0
    out = capsys.readouterr().out
    for title in ("## Summary", "## Trees", "## Experts (validation)", "## Evaluations"):
        assert title in out
    for name in query(on_built, "SELECT name FROM trees").name:
        assert name in out
    assert "documented models < 40 needed for an expert" in out


def test_search_lists_k_models(on_built, capsys) -> None:
    assert main(["search", "red star", "-k", "4"]) == 0
    rows = [r for r in capsys.readouterr().out.splitlines() if r.startswith("| ") and "/" in r]
    assert len(rows) == 4


def _member(home, tree_name: str, documented: bool) -> tuple[str, str]:
    row = query(
        home,
        "SELECT m.repo_id, m.tree_id FROM models m JOIN trees t USING (tree_id) "
        "WHERE t.name = ? AND m.documented = ? AND m.kind = 'full' ORDER BY m.repo_id LIMIT 1",
        [tree_name, documented],
    ).iloc[0]
    return row.repo_id, row.tree_id


def test_predict_a_repo_folder_gives_its_tree_and_classes(on_built, capsys) -> None:
    repo, tree = _member(on_built, "foundation-lab/mlp-alpha", documented=False)
    hub = Path(last_run_hub(on_built))
    assert main(["predict", str(hub / repo), "--top", "3"]) == 0
    out = capsys.readouterr().out
    assert f"model: {repo}" in out and f"tree:  foundation-lab/mlp-alpha ({tree}, " in out
    classes = out.split("predicted training classes:\n")[1].split("nearest text labels")[0]
    assert len(classes.strip().splitlines()) == 3


def test_predict_in_a_tree_without_an_expert_says_why(on_built, capsys) -> None:
    repo, _ = _member(on_built, "openvision/mlp-base", documented=False)
    assert main(["predict", repo]) == 0
    assert "its tree has no expert (" in capsys.readouterr().out


def test_predict_a_model_like_no_tree_answers_unknown_tree(on_built, capsys, tmp_path) -> None:
    repo = tmp_path / "hub" / "stranger" / "odd-net"
    repo.mkdir(parents=True)
    g = torch.Generator().manual_seed(0)
    save_file({"body.weight": torch.randn(32, 24, generator=g)}, str(repo / "model.safetensors"))
    assert main(["predict", str(repo)]) == 0
    out = capsys.readouterr().out
    assert "model: stranger/odd-net" in out and "unknown tree" in out


def test_predict_an_adapter_without_the_experts_layer_says_so(on_built, capsys, tmp_path):
    """A LoRA adapter of the LoRA tree that adapts only the layer its expert does not read:
    routed to its tree by the layer it has, then told which layer it lacks."""
    from safetensors import safe_open

    from probex_core.store import TreeExperts

    tree = query(on_built, "SELECT tree_id FROM trees WHERE kind = 'lora'").tree_id.iloc[0]
    layer = TreeExperts(on_built, tree).meta().layer
    repo = query(
        on_built,
        "SELECT repo_id FROM models WHERE tree_id = ? AND kind = 'lora' AND NOT documented "
        "ORDER BY repo_id LIMIT 1",
        [tree],
    ).repo_id.iloc[0]
    src = Path(last_run_hub(on_built)) / repo
    dst = tmp_path / "hub" / "someone" / "partial-adapter"
    shutil.copytree(src, dst)
    config = json.loads((dst / "adapter_config.json").read_text())
    assert layer in config["target_modules"] and len(config["target_modules"]) > 1
    config["target_modules"] = [m for m in config["target_modules"] if m != layer]
    (dst / "adapter_config.json").write_text(json.dumps(config))
    with safe_open(str(src / "adapter_model.safetensors"), "pt") as f:
        kept = {k: f.get_tensor(k) for k in f.keys() if f".{layer}." not in k}
    save_file(kept, str(dst / "adapter_model.safetensors"))

    assert main(["predict", str(dst)]) == 0
    out = capsys.readouterr().out
    assert "model: someone/partial-adapter" in out and f"({tree}, " in out
    assert f"no prediction: model lacks the expert's layer {layer}" in out
    assert "predicted training classes" not in out


def test_run_on_a_hub_from_the_environment_then_again_then_forced(
    tiny_hub_copy, tmp_path, monkeypatch, capsys
) -> None:
    """`probex run` with PROBEX_HUB: the first run builds the tree, a second finds it fresh,
    --force rebuilds it. One small tree (mlp-b, too few documented models for an expert, so
    nothing trains): this checks the command, not the experts."""
    manifest = json.loads((tiny_hub_copy / "manifest.json").read_text())
    hub = tmp_path / "hub"
    for m in manifest["models"]:
        if m["tree_id"] == "mlp-b":
            shutil.copytree(tiny_hub_copy / "hub" / m["repo_id"], hub / m["repo_id"])
    monkeypatch.setenv("PROBEX_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("PROBEX_HUB", str(hub))
    assert main(["run", "--epochs", "5"]) == 0
    first = capsys.readouterr().out
    assert "1 trees: 1 to build, 0 up to date" in first
    assert "openvision/mlp-base" in first and "needed for an expert" in first
    assert main(["run"]) == 0
    assert "1 trees: 0 to build, 1 up to date" in capsys.readouterr().out
    assert main(["run", "--force"]) == 0
    assert "1 trees: 1 to build, 0 up to date" in capsys.readouterr().out


@pytest.fixture
def recorded_run(monkeypatch, tmp_path):
    """`probex run` with the pipeline replaced by a recorder: which hub, which settings."""
    import orchestration.runner as runner

    calls: dict = {"default_hub": [], "run": []}
    monkeypatch.setenv("PROBEX_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("PROBEX_HUB", raising=False)

    def default_hub(home, preset, seed=0):
        calls["default_hub"].append((preset, seed))
        return tmp_path / f"zoo-{preset}" / "hub"

    def run_all(home, hub, training=None, force=False, dask=None):
        calls["run"].append((hub, training and training.epochs, force))
        calls.setdefault("dask", []).append(dask)
        return {}

    monkeypatch.setattr(runner, "ensure_default_hub", default_hub)
    monkeypatch.setattr(runner, "run_all", run_all)
    monkeypatch.setattr("orchestration.cli._summary", lambda home: "")
    return calls, tmp_path


def test_run_picks_its_hub_and_training_length(recorded_run, monkeypatch) -> None:
    calls, tmp = recorded_run
    assert main(["run"]) == 0  # the embedded default zoo, full training
    assert main(["run", "--zoo", "tiny"]) == 0  # the quick look: 100 epochs
    assert main(["run", "--zoo", "tiny", "--epochs", "7", "--seed", "3"]) == 0
    assert main(["run", "--hub", "/some/hub", "--force"]) == 0
    monkeypatch.setenv("PROBEX_HUB", "/env/hub")
    assert main(["run", "--zoo", "tiny"]) == 0  # a hub from the environment: no quick default
    assert calls["default_hub"] == [("default", 0), ("tiny", 0), ("tiny", 3)]
    assert calls["run"] == [
        (str(tmp / "zoo-default" / "hub"), None, False),
        (str(tmp / "zoo-tiny" / "hub"), 100, False),
        (str(tmp / "zoo-tiny" / "hub"), 7, False),
        ("/some/hub", None, True),
        ("/env/hub", None, False),
    ]
    assert calls["dask"] == [None] * 5  # in-process unless asked
    assert main(["run", "--dask"]) == 0  # a LocalCluster for the run
    assert main(["run", "--dask", "tcp://10.0.0.5:8786"]) == 0  # an existing scheduler
    assert calls["dask"][-2:] == ["local", "tcp://10.0.0.5:8786"]


def test_zoo_generate_passes_its_arguments(monkeypatch, tmp_path) -> None:
    import probex_core.zoo

    seen = []
    monkeypatch.setattr(probex_core.zoo, "generate_zoo", lambda **kw: seen.append(kw))
    argv = ["zoo", "generate", "--preset", "tiny", "--out", str(tmp_path / "z"), "--seed", "4"]
    assert main(argv) == 0 and main([*argv, "--workers", "3"]) == 0
    asked = {"preset": "tiny", "out": tmp_path / "z", "seed": 4, "progress": True}
    assert seen == [asked | {"workers": None}, asked | {"workers": 3}]


def test_bench_quick_prints_its_side_by_side_table(capsys) -> None:
    assert main(["bench", "search", "--quick"]) == 0
    out = capsys.readouterr().out
    assert "== bench search ==" in out and "SQL top-10 == exact top-10: True" in out
    rows = [r for r in out.splitlines() if r.startswith(("exact", "faiss", "brute"))]
    assert len(rows) >= 10 and all("x" in r for r in rows)  # every row carries its ratios
    # faiss's exact index agrees with ours; its approximate ones are measured against it
    recall = {r[:36].strip(): float(r.split()[-1]) for r in rows if r.startswith("faiss")}
    assert recall["faiss exact (IndexFlatIP)"] == 1.0
    assert all(0.0 < v <= 1.0 for v in recall.values()), recall
