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


def test_report_prints_every_tree_by_name_with_the_skipped_one_explained(on_built, capsys):
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
    hub = Path(json.loads((on_built.root / "run.json").read_text())["hub"])
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
