"""Session fixtures shared by all tests: the tiny built-in zoo, generated once."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from assets.experts import ExpertTraining
from probex_core.catalog import Home

# One torch thread in every test process and the runs it starts, with or without xdist:
# - on pytest-xdist's workers (one per core, pyproject's addopts) so they do not oversubscribe
#   the cores (OpenMP spin-waits on shared cores made small matmuls many times slower);
# - and with `-n 0` too, because tests compare what this process built with what a one-thread
#   Dask worker or run process rebuilds: equal bit for bit at equal thread counts, while two
#   threads against one moved the tiny LoRA tree's probabilities by up to 4e-4 (measured).
os.environ.setdefault("OMP_NUM_THREADS", "1")
torch.set_num_threads(1)


def _shared_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The directory every pytest-xdist worker of this session can see: the parent of the
    workers' own base temps (the base temp itself in a single-process run)."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


@pytest.fixture(scope="session")
def tiny_zoo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Directory holding hub/ and manifest.json of the tiny zoo (seed 0).

    Set PROBEX_TEST_ZOO to an already generated tiny zoo directory to skip generation
    during local development.
    """
    reuse = os.environ.get("PROBEX_TEST_ZOO")
    if reuse and (Path(reuse) / "manifest.json").exists():
        return Path(reuse)
    from filelock import FileLock

    from probex_core.zoo import generate_zoo

    # the first worker generates the zoo in the shared root, the others wait on the lock
    shared = _shared_root(tmp_path_factory)
    out = shared / "tiny_zoo"
    with FileLock(str(shared / "tiny_zoo.lock")):
        if not (out / "manifest.json").exists():
            generate_zoo(preset="tiny", out=out, seed=0, progress=False)
    return out


FAST = {"epochs": 60, "sweep_epochs": 15, "val_every": 15}
# for runs that check orchestration, not accuracy: the tiny experts still pass their gate
# (mlp-a 0.59 per-class against chance 0.52, lora top-1 0.14 against 0.02)
SHORT = {"epochs": 20, "sweep_epochs": 5, "val_every": 5}


@pytest.fixture(scope="session")
def tiny_hub_copy(tiny_zoo: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A private copy of the tiny zoo (hub + manifest): tests may copy it and change that."""
    dst = tmp_path_factory.mktemp("hubcopy") / "zoo"
    shutil.copytree(tiny_zoo, dst)
    return dst


@pytest.fixture(scope="session")
def built(tiny_zoo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Home, dict]]:
    """The whole graph materialised once on the tiny zoo (FAST experts): (home, run result
    with the run's printed "output").

    Built once per session in the shared root, by the first worker that asks (the others wait
    on a lock), then shared read-only: a test that writes to a home copies this one
    (`copy_without_trees`, test_gates' `home_copy`); each worker checks at its end that the
    home's content is what was built."""
    from filelock import FileLock

    from probex_core.files import atomic_write_json

    shared = _shared_root(tmp_path_factory) / "built"
    home, done = Home(shared / "home"), shared / "result.json"
    with FileLock(str(shared.parent / "built.lock")):
        if not done.exists():
            shutil.rmtree(shared, ignore_errors=True)  # what an interrupted build left
            shutil.copytree(tiny_zoo, shared / "zoo")
            result = _build(home, shared / "zoo" / "hub")
            atomic_write_json(done, {**result, "digest": _digest(shared)})
    result = json.loads(done.read_text())
    yield home, result
    # each worker at its end: the last to finish sees every other worker's writes too
    assert _digest(shared) == result["digest"], (
        f"a test wrote to the shared built home {home.root}; copy it first"
    )


def _digest(root: Path) -> str:
    """A content hash of every file under `root` but the text-embedding cache (written
    atomically by any reader that encodes a new text: a cache, not the home's results)."""
    import hashlib

    h = hashlib.blake2b()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        if "text_cache" not in path.parts and path.name != "result.json":
            h.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes())
    return h.hexdigest()


def _build(home: Home, hub: Path) -> dict:
    import contextlib
    import io

    from orchestration.runner import run_all

    out = io.StringIO()
    saved = os.environ.get("PROBEX_PROGRESS_EVERY")
    os.environ["PROBEX_PROGRESS_EVERY"] = "0"  # every progress line, whatever the speed
    try:
        with contextlib.redirect_stdout(out):
            result = run_all(home, str(hub), training=ExpertTraining(**FAST))
    finally:
        if saved is None:
            os.environ.pop("PROBEX_PROGRESS_EVERY")
        else:
            os.environ["PROBEX_PROGRESS_EVERY"] = saved
    return {**result, "output": out.getvalue()}


@pytest.fixture(scope="session")
def zoo_recovery(tiny_zoo: Path):
    """(weight records, manifest, tree recovery) of the tiny zoo, read and recovered once."""
    from probex_core.trees import recover_trees
    from tests.test_trees import load_zoo_records

    records = load_zoo_records(tiny_zoo / "hub")
    manifest = json.loads((tiny_zoo / "manifest.json").read_text())
    return records, manifest, recover_trees(records)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Order the test files for two xdist workers (`--no-loadscope-reorder` keeps this order):
    the pipeline's file first, so one worker generates the zoo and builds the shared home
    at once, while the other runs the files that need no zoo, then those that need only the
    zoo, and the built home's other readers last, when it is ready."""

    def needs(item: pytest.Item) -> int:
        if item.path.name == "test_pipeline.py":
            return 0
        fixtures = set(item.fixturenames)
        return 3 if "built" in fixtures else 2 if "tiny_zoo" in fixtures else 1

    files: dict[Path, int] = {}
    for item in items:
        files[item.path] = max(files.get(item.path, 0), needs(item))
    items.sort(key=lambda item: files[item.path])  # stable: order within a file is kept
