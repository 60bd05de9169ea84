"""`probex bench lora-signal`'s parts, on the tiny zoo's LoRA tree (the full bench is in the
README; it grows trees of its own and takes minutes)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch

from bench import lora_signal
from probex_core.catalog import Home, query
from probex_core.pipeline.common import ExpertSettings
from probex_core.store import TreeLayers


def _lora_manifest(tiny_zoo: Path) -> dict:
    manifest = json.loads((tiny_zoo / "manifest.json").read_text())
    return {**manifest, "models": [m for m in manifest["models"] if m["tree_id"] == "lora"]}


def test_bench_reads_each_adapter_as_the_pipeline_stores_it(built, tiny_zoo: Path) -> None:
    """The bench scores the very matrices the pipeline's experts read: B·A of fc1 at unit RMS."""
    home, _ = built
    X, rows = lora_signal._adapters(tiny_zoo, _lora_manifest(tiny_zoo))
    tree = query(home, "SELECT tree_id FROM trees WHERE kind = 'lora'").tree_id.iloc[0]
    layers = TreeLayers(home, tree)
    stored = layers.read(lora_signal.LAYER)
    position = {r: i for i, r in enumerate(layers.index()["repo_ids"])}
    shared = [(j, position[m["repo_id"]]) for j, m in enumerate(rows) if m["repo_id"] in position]
    assert len(shared) == len(rows) > 20
    mine, theirs = X[[j for j, _ in shared]], stored[[i for _, i in shared]]
    assert mine.shape == theirs.shape
    torch.testing.assert_close(mine, theirs.float(), rtol=1e-4, atol=1e-5)


def test_bench_scores_seen_and_held_out_classes(tiny_zoo: Path, tmp_path: Path) -> None:
    """One recipe's read-outs on the tiny LoRA tree: every score a rate, chance beside it, and
    the holdout adapters scored among the held-out class names only."""
    manifest = _lora_manifest(tiny_zoo)
    X, rows = lora_signal._adapters(tiny_zoo, manifest)
    reads = lora_signal._readouts(X, rows, manifest["heldout_classes"], Home(tmp_path),
                                  ExpertSettings(epochs=20, val_every=5))  # fmt: skip
    n_hold = sum(m["split"] in ("val_holdout", "test_holdout") for m in rows)
    assert reads["n_holdout"] == n_hold > 0
    assert math.isclose(reads["heldout_chance"], 1 / len(manifest["heldout_classes"]))
    n_seen = len(
        {c for m in rows for c in m["training_classes"]} - set(manifest["heldout_classes"])
    )
    assert math.isclose(reads["chance"], 1 / n_seen)
    for key in ("ridge", "probex", "heldout_top1", "heldout_auc"):
        assert 0.0 <= reads[key] <= 1.0, (key, reads)
