"""Session fixtures shared by all tests: the tiny built-in zoo, generated once."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from assets.experts import ExpertTraining
from probex_core.catalog import Home

if os.environ.get("PYTEST_XDIST_WORKER"):
    # the suite runs on pytest-xdist workers, one per core (pyproject's addopts): one torch
    # thread per worker, and for the runs they start, so the workers do not oversubscribe the
    # cores (OpenMP spin-waits on shared cores made small matmuls many times slower)
    import torch

    os.environ.setdefault("OMP_NUM_THREADS", "1")
    torch.set_num_threads(1)


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

    # under pytest-xdist every worker has its own base temp below one shared root: the first
    # worker generates the zoo there, the others wait on the lock and read it
    shared = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        shared = shared.parent
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
    import shutil

    dst = tmp_path_factory.mktemp("hubcopy") / "zoo"
    shutil.copytree(tiny_zoo, dst)
    return dst


@pytest.fixture(scope="session")
def built(tiny_hub_copy: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Home, dict]:
    """The whole graph materialised once on the tiny zoo (FAST experts): (home, run result
    with the run's printed "output")."""
    import contextlib
    import io

    from orchestration.runner import run_all

    home = Home(tmp_path_factory.mktemp("home"))
    out = io.StringIO()
    saved = os.environ.get("PROBEX_PROGRESS_EVERY")
    os.environ["PROBEX_PROGRESS_EVERY"] = "0"  # every progress line, whatever the speed
    try:
        with contextlib.redirect_stdout(out):
            result = run_all(home, str(tiny_hub_copy / "hub"), training=ExpertTraining(**FAST))
    finally:
        if saved is None:
            os.environ.pop("PROBEX_PROGRESS_EVERY")
        else:
            os.environ["PROBEX_PROGRESS_EVERY"] = saved
    return home, {**result, "output": out.getvalue()}


@pytest.fixture(scope="session")
def zoo_recovery(tiny_zoo: Path):
    """(weight records, manifest, tree recovery) of the tiny zoo, read and recovered once."""
    import json

    from probex_core.trees import recover_trees
    from tests.test_trees import load_zoo_records

    records = load_zoo_records(tiny_zoo / "hub")
    manifest = json.loads((tiny_zoo / "manifest.json").read_text())
    return records, manifest, recover_trees(records)
