"""A home at an fsspec URL (here `memory://`, in this process): worked on in a local mirror,
every file written through whole, pulled by another mirror as a second machine would."""

from __future__ import annotations

import uuid
from pathlib import Path

import fsspec
import pandas as pd
import pytest

from assets.experts import ExpertTraining
from probex_core import pipeline
from probex_core.catalog import Home, query, read_table, refresh_views, write_table
from probex_core.files import atomic_path
from tests.conftest import SHORT
from tests.test_pipeline import built_hub, copy_without_trees


@pytest.fixture
def url(tmp_path: Path, monkeypatch) -> str:
    monkeypatch.setenv("PROBEX_CACHE", str(tmp_path / "machine-1"))
    return f"memory://probex-{uuid.uuid4().hex}/home"


def _objects(url: str) -> list[str]:
    fs, base = fsspec.core.url_to_fs(url)
    return sorted(p[len(base) + 1 :] for p in fs.find(base)) if fs.exists(base) else []


def test_a_part_appears_at_the_url_whole_and_a_failed_write_leaves_nothing(url, tmp_path):
    home = Home(url)
    assert home.url == url and home.root.is_relative_to(tmp_path / "machine-1")
    write_table(home, "repos", pd.DataFrame({"repo_id": ["a/b"]}), part="one")
    with pytest.raises(RuntimeError), atomic_path(home.table_dir("repos") / "two.parquet") as t:
        t.write_bytes(b"half a part")
        raise RuntimeError("killed mid-write")
    assert _objects(url) == ["tables/repos/one.parquet"]


def test_a_run_on_a_url_home_is_read_whole_by_another_machine(built, url, tmp_path, monkeypatch):
    """`probex run` with PROBEX_HOME at a URL: the stale trees (all of them, on a copy of the
    built home put at the URL) are rebuilt in machine 1's mirror and written through; machine
    2 opens the URL with an empty cache and reads the same catalog, nothing stale."""
    from orchestration.runner import run_all

    src, _ = built
    local = copy_without_trees(src, tmp_path / "copy")
    fs, base = fsspec.core.url_to_fs(url)
    for path in local.root.rglob("*"):
        rel = path.relative_to(local.root).as_posix()
        if path.is_file() and not rel.startswith(("dagster", "catalog.duckdb")):
            fs.put_file(str(path), f"{base}/{rel}")
    home = Home(url)
    assert len(pipeline.stale_trees(home).stale) == 3
    result = run_all(home, str(built_hub(src)), training=ExpertTraining(**SHORT))
    assert all(result["checks"].values()) and len(result["built"]) == 3
    at_url = _objects(url)
    assert not [o for o in at_url if o.endswith(".tmp") or o.startswith(("dagster", "catalog"))]
    assert {f"tables/expert_results/{t}.parquet" for t in result["built"]} & set(at_url)

    monkeypatch.setenv("PROBEX_CACHE", str(tmp_path / "machine-2"))
    other = Home(url)
    assert other.root != home.root and not other.catalog_path.exists()
    assert pipeline.stale_trees(other).stale == []
    refresh_views(other)
    sql = "SELECT repo_id, class_name, probability FROM predictions ORDER BY ALL"
    assert len(query(home, sql)) > 0 and query(other, sql).equals(query(home, sql))
    assert read_table(other, "expert_results").equals(read_table(home, "expert_results"))
