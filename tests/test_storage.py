"""A home at an fsspec URL: worked on in a local mirror, every file written through whole,
pulled by another mirror as a second machine would (`memory://` in this process; a loopback
S3 for Dask worker processes)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
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


@pytest.fixture
def s3_url(tmp_path: Path, monkeypatch) -> Iterator[str]:
    """A bucket on a loopback S3 (moto's server), reachable by this process and by the Dask
    workers it starts (they inherit the environment)."""
    import logging
    import socket

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    for var in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"):
        monkeypatch.delenv(var, raising=False)
    env = {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test",
           "AWS_DEFAULT_REGION": "us-east-1", "FSSPEC_S3_ENDPOINT_URL": f"http://127.0.0.1:{port}",
           "PROBEX_CACHE": str(tmp_path / "machine-1")}  # fmt: skip
    for var, value in env.items():
        monkeypatch.setenv(var, value)
    # fsspec read FSSPEC_S3_* when it was imported: this process is told directly
    monkeypatch.setitem(fsspec.config.conf, "s3", {"endpoint_url": env["FSSPEC_S3_ENDPOINT_URL"]})
    fsspec.filesystem("s3", skip_instance_cache=True).mkdir("probex-test")
    try:
        yield "s3://probex-test/home"
    finally:
        fsspec.get_filesystem_class("s3").clear_instance_cache()
        server.stop()


def test_dask_workers_build_a_home_on_s3_that_another_machine_reads_whole(
    built, s3_url, tmp_path, monkeypatch
):
    """`probex run --dask` with PROBEX_HOME on a (loopback) S3: a copy of the built home with
    every tree's layers and experts removed is put in the bucket; two Dask worker processes
    rebuild the trees, each opening the home from its URL and writing through; then machine
    2, with an empty cache, reads the same catalog from the bucket, nothing stale."""
    from orchestration.runner import run_all

    src, _ = built
    local = copy_without_trees(src, tmp_path / "copy")
    fs, base = fsspec.core.url_to_fs(s3_url)
    for path in local.root.rglob("*"):
        rel = path.relative_to(local.root).as_posix()
        if path.is_file() and not rel.startswith(("dagster", "catalog.duckdb")):
            fs.put_file(str(path), f"{base}/{rel}")
    home = Home(s3_url)
    assert len(pipeline.stale_trees(home).stale) == 3
    result = run_all(home, str(built_hub(src)), training=ExpertTraining(**SHORT), dask="local")
    assert all(result["checks"].values()) and len(result["built"]) == 3
    at_url = _objects(s3_url)
    assert not [o for o in at_url if o.endswith(".tmp") or o.startswith(("dagster", "catalog"))]
    parts = {o.split("/")[-1].removesuffix(".parquet") for o in at_url if "expert_results/" in o}
    assert parts == set(result["built"])  # each worker's tree part, written through

    monkeypatch.setenv("PROBEX_CACHE", str(tmp_path / "machine-2"))
    other = Home(s3_url)
    assert other.root != home.root and not other.catalog_path.exists()
    assert pipeline.stale_trees(other).stale == []
    refresh_views(other)
    sql = "SELECT repo_id, class_name, probability FROM predictions ORDER BY ALL"
    assert len(query(home, sql)) > 0 and query(other, sql).equals(query(home, sql))
    assert read_table(other, "expert_results").equals(read_table(home, "expert_results"))
