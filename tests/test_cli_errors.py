"""A user's mistake ends in one line on stderr and exit code 2; `--debug` shows the traceback."""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestration.cli import main


@pytest.mark.parametrize(
    "argv, says",
    [
        (["sql", "SELECT 1"], "no catalog at"),
        (["report"], "no catalog at"),
        (["search", "red star"], "no catalog at"),
        (["predict", "/nonexistent/x.safetensors"], "/nonexistent/x.safetensors"),
        (["run", "--hub", "/nonexistent/hub"], "hub not found"),
        (["zoo", "generate", "--out", "zoo", "--workers", "0"], "--workers must be at least 1"),
    ],
)
def test_user_errors_end_in_one_line(argv, says, tmp_path: Path, capsys, monkeypatch) -> None:
    monkeypatch.setenv("PROBEX_HOME", str(tmp_path / "home"))
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("probex: error: ") and says in err[0]


def test_debug_shows_the_traceback(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("PROBEX_HOME", str(tmp_path / "home"))
    with pytest.raises(FileNotFoundError, match="no catalog"):
        main(["--debug", "sql", "SELECT 1"])


def test_an_empty_hub_is_one_line(tmp_path: Path, capsys, monkeypatch) -> None:
    monkeypatch.setenv("PROBEX_HOME", str(tmp_path / "home"))
    (tmp_path / "empty").mkdir()
    assert main(["run", "--hub", str(tmp_path / "empty")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no repos found under" in err[0], err


def test_an_unknown_tree_is_one_line_naming_the_known_ones(built, capsys, monkeypatch) -> None:
    home, _ = built
    monkeypatch.setenv("PROBEX_HOME", str(home.root))
    assert main(["search", "red star", "--tree", "tree-nope"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown tree 'tree-nope'; trees with embeddings: " in err[0]
    assert "foundation-lab/mlp-alpha (tree-" in err[0]


def test_a_tree_is_found_by_its_name_or_its_id(built, capsys, monkeypatch) -> None:
    from probex_core.catalog import query

    home, _ = built
    monkeypatch.setenv("PROBEX_HOME", str(home.root))
    tree = query(home, "SELECT tree_id FROM trees WHERE name = 'foundation-lab/mlp-alpha'")
    outputs = []
    for ask in ("foundation-lab/mlp-alpha", tree.tree_id.iloc[0]):
        assert main(["search", "red star", "--tree", ask, "-k", "3"]) == 0
        outputs.append(capsys.readouterr().out)
    assert outputs[0] == outputs[1] and outputs[0].count(tree.tree_id.iloc[0]) == 3


def test_predict_finds_a_repo_id_in_the_hub_of_the_last_run(built, capsys, monkeypatch) -> None:
    """After `probex run --hub DIR`, `probex predict ORG/NAME` needs no --hub."""
    from probex_core.catalog import query

    home, _ = built
    monkeypatch.setenv("PROBEX_HOME", str(home.root))
    monkeypatch.delenv("PROBEX_HUB", raising=False)
    repo, tree = query(
        home, "SELECT repo_id, tree_id FROM models WHERE NOT documented AND kind = 'full' LIMIT 1"
    ).iloc[0]
    assert main(["predict", repo]) == 0
    out = capsys.readouterr().out
    assert f"model: {repo}" in out and f"({tree}, distance" in out


def test_a_home_at_a_url_nothing_can_open_is_one_line(tmp_path: Path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PROBEX_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("PROBEX_HOME", "nosuchfs://bucket/probex")
    assert main(["sql", "SELECT 1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "home nosuchfs://bucket/probex: cannot open it" in err[0], err
    assert [p.name for p in tmp_path.iterdir()] == [], "no local folder named after the URL"


def test_a_home_given_as_a_file_url_is_that_directory(tmp_path: Path) -> None:
    from probex_core.catalog import Home
    from probex_core.errors import UserError

    where = tmp_path / "shared mount" / "home"
    assert Home.from_env(where.as_uri()).root == where.resolve()
    assert Home.from_env(f"file://localhost{where}").root == where.resolve()
    with pytest.raises(UserError, match="names no host"):
        Home.from_env("file://otherhost/x")
