"""Faults: a run killed with SIGKILL in the middle of a tree, then run again."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from probex_core import pipeline
from probex_core.catalog import Home, query, read_table
from probex_core.pipeline.layers import verify_layers
from probex_core.store import TreeLayers
from tests.conftest import SHORT

ROOT = Path(__file__).resolve().parents[1]
RUN = f"""
import sys
from assets.experts import ExpertTraining
from orchestration.runner import run_all
from probex_core.catalog import Home

result = run_all(Home(sys.argv[1]), sys.argv[2], training=ExpertTraining(**{SHORT!r}))
sys.exit(0 if all(result["checks"].values()) else 3)
"""


def _run(home: Path, hub: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", RUN, str(home), str(hub)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # its own process group: the kill takes its children too
    )


def _partial_files(home: Path) -> list[Path]:
    return [p for top in ("tables", "artifacts") for p in (home / top).rglob("*.tmp")]


def test_a_run_killed_while_training_experts_is_completed_by_a_rerun(tiny_hub_copy, tmp_path):
    manifest = json.loads((tiny_hub_copy / "manifest.json").read_text())
    hub = tmp_path / "hub"
    for m in manifest["models"]:  # two of the tiny zoo's trees: enough to kill one mid-way
        if m["tree_id"] in ("mlp-a", "mlp-b"):
            shutil.copytree(tiny_hub_copy / "hub" / m["repo_id"], hub / m["repo_id"])
    home = tmp_path / "home"
    proc = _run(home, hub)
    experts = home / "artifacts" / "experts"
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and proc.poll() is None:
        if experts.is_dir() and any(experts.iterdir()):  # a tree's experts are being trained
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be killed:\n" + proc.stdout.read()
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    # what a writer killed mid-file leaves: a temp file beside its target
    (experts.parent / "layers" / ".interrupted.safetensors.abc123.tmp").parent.mkdir(
        parents=True, exist_ok=True
    )
    (experts.parent / "layers" / ".interrupted.safetensors.abc123.tmp").write_bytes(b"\0" * 100)
    plan_before = pipeline.stale_trees(Home(home))
    assert plan_before.stale, "the killed run had left no tree to finish"

    rerun = _run(home, hub)
    out = rerun.communicate(timeout=900)[0]
    assert rerun.returncode == 0, out[-3000:]
    assert "removed 1 partial files" in out or "partial files" in out
    assert _partial_files(home) == []

    h = Home(home)
    plan = pipeline.stale_trees(h)
    assert plan.stale == [] and sorted(plan.wanted) == sorted(plan_before.wanted)
    predicted = set(query(h, "SELECT DISTINCT repo_id FROM predictions").repo_id)
    for tree in plan.wanted:
        assert verify_layers(h, tree) == []
        meta = json.loads((h.expert_dir(tree) / "meta.json").read_text())
        assert meta["version"] == plan.wanted[tree]
        if not meta.get("skipped"):
            assert set(TreeLayers(h, tree).index()["repo_ids"]) <= predicted, tree
    members = read_table(h, "tree_members")
    assert len(members) == len(read_table(h, "repos"))
