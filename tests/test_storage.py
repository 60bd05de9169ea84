"""A home at an fsspec URL: worked on in a local mirror, every file written through whole
(`memory://`, in this process). Dask worker processes on a home in a loopback S3, read by a
second mirror: `test_dask.py`."""

from __future__ import annotations

import uuid
from pathlib import Path

import fsspec
import pandas as pd
import pytest

from probex_core.catalog import Home, write_table
from probex_core.files import atomic_path


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
