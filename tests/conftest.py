"""Session fixtures shared by all tests: the tiny built-in zoo, generated once."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_zoo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Directory holding hub/ and manifest.json of the tiny zoo (seed 0).

    Set PROBEX_TEST_ZOO to an already generated tiny zoo directory to skip generation
    during local development.
    """
    reuse = os.environ.get("PROBEX_TEST_ZOO")
    if reuse and (Path(reuse) / "manifest.json").exists():
        return Path(reuse)
    from probex_core.zoo import generate_zoo

    out = tmp_path_factory.mktemp("tiny_zoo")
    generate_zoo(preset="tiny", out=out, seed=0, progress=False)
    return out
