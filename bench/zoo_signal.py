"""`probex bench zoo-signal`: which zoo recipe leaves the classes readable in the weights.

Each named recipe grows one small MLP tree with the real zoo generator (`generate_zoo` on a
one-tree preset, written to a temporary hub), then reads every fine-tune's hidden layers as
the pipeline does (the change from the root, unit RMS) and prints, side by side:
fine-tune accuracy on its own classes, the per-class test accuracy of a closed-form ridge
read-out (`fit_ridge`, λ chosen on validation) and of the pipeline's ProbeX expert
(`warm_probex`: warm-started from that read-out, then trained), per layer, and the
generation cost per model. Chance is the majority
guess per class. Every recipe uses the same seed, classes per model and splits.
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TypeVar

import torch
from safetensors import safe_open

from probex_core.metrics import per_class_accuracy
from probex_core.pipeline.common import ExpertSettings
from probex_core.pipeline.labels import majority_chance
from probex_core.pipeline.layers import layer_transform
from probex_core.pipeline.starts import warm_probex
from probex_core.train import TensorData, predict_proba
from probex_core.zoo import generate_zoo
from probex_core.zoo.archs import MLP
from probex_core.zoo.presets import Splits, TreeSpec, ZooPreset

T = TypeVar("T")


@dataclass(frozen=True)
class Recipe:
    """A way to grow a tree: the data's texture and the tree's training overrides."""

    description: str
    texture: float  # ZooPreset.texture
    spec: dict  # TreeSpec fields that differ from the bench's base tree
    pretrain_texture: float | None = None  # ZooPreset.pretrain_texture


_V2 = {"head_init": "root_rows", "steps": (150, 300), "lr": (1e-3, 3e-3)}
RECIPES: dict[str, Recipe] = {
    "v1-warm": Recipe(
        "zoo v1: head warm-started from the root's class rows, 50-90 steps, lr 3e-4..1e-3",
        0.0,
        {"head_init": "root_rows", "steps": (50, 90), "lr": (3e-4, 1e-3)},
    ),
    "lpft": Recipe(
        "LP-FT: fresh head probed 100 steps on the frozen backbone, then 150-250 steps",
        0.0,
        {"head_init": "random", "lp_steps": 100, "steps": (150, 250), "lr": (6e-4, 1.5e-3)},
    ),
    "lpft-attr": Recipe(
        "LP-FT on patterned classes from a root pretrained on colour and shape (another task)",
        2.0,
        {
            "head_init": "random",
            "lp_steps": 100,
            "steps": (150, 250),
            "lr": (6e-4, 1.5e-3),
            "root_task": "attributes",
        },
    ),
    "warm-texture": Recipe(
        "v2's fine-tunes (warm head, 150-300 steps, lr 1e-3..3e-3) on patterned classes, "
        "root pretrained on the same patterned images",
        2.0,
        _V2,
    ),
    "v2": Recipe(
        "zoo v2: as warm-texture, but the root pretrained on flat-colour images (a shift)",
        2.0,
        _V2,
        pretrain_texture=0.0,
    ),
}

LAYERS = ("fc1", "fc2")
FULL_SPLITS = Splits(train=150, val=30, test=40, val_holdout=0, test_holdout=0)
QUICK_SPLITS = Splits(train=50, val=12, test=18, val_holdout=0, test_holdout=0)
BASE = TreeSpec("bench", MLP(hidden=(128, 64)), "bench-lab/mlp-root", FULL_SPLITS)


def _preset(name: str, recipe: Recipe, quick: bool) -> ZooPreset:
    spec = replace(BASE, **recipe.spec)
    return bench_preset(name, spec, QUICK_SPLITS, quick, recipe.texture, recipe.pretrain_texture)


def bench_preset(
    name: str,
    spec: TreeSpec,
    quick_splits: Splits,
    quick: bool,
    texture: float,
    pretrain_texture: float | None,
) -> ZooPreset:
    """A one-tree bench zoo of `spec` on images of `texture` (the root's: `pretrain_texture`);
    with `quick`, at `quick_splits` and with a shorter root pretraining and smaller pools."""
    if quick:
        spec = replace(spec, splits=quick_splits, root_steps=600)
    return ZooPreset(
        name=f"bench-{name}",
        trees=(spec,),
        texture=texture,
        pretrain_texture=pretrain_texture,
        pool_per_class=60 if quick else 200,
        pretrain_per_class=60 if quick else 150,
        eval_per_class=6 if quick else 12,
        card_lie_rate=0.0,
    )


def grow(
    preset: ZooPreset, read: Callable[[Path, dict], T], seed: int = 0
) -> tuple[dict, float, T]:
    """Generate a bench zoo in a temporary directory: its summary, the seconds that took, and
    what `read(directory, manifest)` takes from it before the directory goes."""
    with tempfile.TemporaryDirectory(prefix=f"probex-{preset.name}-") as tmp:
        t0 = time.perf_counter()
        summary = generate_zoo(preset, Path(tmp), seed=seed, progress=False)
        seconds = time.perf_counter() - t0
        manifest = json.loads((Path(tmp) / "manifest.json").read_text())
        return summary, seconds, read(Path(tmp), manifest)


def _layers(out: Path, manifest: dict) -> tuple[dict[str, dict[str, torch.Tensor]], list[dict]]:
    """Per split, each layer's transformed stack; and the fine-tune rows in stack order."""
    models = manifest["models"]
    root = next(m for m in models if m["split"] == "root")
    rows = [m for m in models if m["split"] != "root"]

    def read(repo_id: str, name: str) -> torch.Tensor:
        with safe_open(str(out / "hub" / repo_id / "model.safetensors"), framework="pt") as f:
            return f.get_tensor(f"{name}.weight")

    stacks = {}
    for name in LAYERS:
        ref = read(root["repo_id"], name)
        stacks[name] = layer_transform(torch.stack([read(m["repo_id"], name) for m in rows]), ref)
    return stacks, rows


def _readouts(stacks: dict, rows: list[dict], settings: ExpertSettings) -> dict[str, dict]:
    classes = sorted({c for m in rows for c in m["training_classes"]})
    col = {c: j for j, c in enumerate(classes)}
    Y = torch.zeros(len(rows), len(classes))
    for i, m in enumerate(rows):
        Y[i, [col[c] for c in m["training_classes"]]] = 1.0
    idx = {s: [i for i, m in enumerate(rows) if m["split"] == s] for s in ("train", "val", "test")}
    out = {}
    for name, X in stacks.items():
        data = {s: TensorData(X[ix], Y[ix]) for s, ix in idx.items()}
        t0 = time.perf_counter()
        ridge, res = warm_probex(
            data["train"], data["val"], len(classes), settings.train_config("classify"),
            settings, single_label=False,
        )  # fmt: skip
        seconds = time.perf_counter() - t0
        test_y = data["test"].Y.numpy()
        out[name] = {
            "chance": majority_chance(data["train"].Y, data["test"].Y),
            "ridge": per_class_accuracy(test_y, predict_proba(ridge.model, data["test"]).numpy()),
            "ridge_lambda": ridge.ridge,
            "probex": per_class_accuracy(test_y, predict_proba(res.model, data["test"]).numpy()),
            "probex_seconds": seconds,
        }
    return out


def run(quick: bool = False, recipes: list[str] | None = None) -> dict:
    settings = ExpertSettings(epochs=100 if quick else 300)
    names = recipes or list(RECIPES)
    splits = QUICK_SPLITS if quick else FULL_SPLITS
    print(
        f"one MLP tree per recipe (768→128→64→head), {splits.train} train / {splits.val} val / "
        f"{splits.test} test fine-tunes, 40 of 80 classes each, seed 0; per-class test accuracy"
    )
    header = f"{'recipe':<18} {'ft acc':>7} {'s/model':>8}"
    for layer in LAYERS:
        header += f" {layer + ' ridge':>10} {layer + ' probex':>11}"
    print(header + f" {'chance':>7}")
    results = {}
    for name in names:
        recipe = RECIPES[name]
        summary, gen_seconds, (stacks, rows) = grow(_preset(name, recipe, quick), _layers)
        reads = _readouts(stacks, rows, settings)
        tree = summary["trees"][0]
        row = {
            "description": recipe.description,
            "finetune_accuracy": tree["finetune_accuracy_mean"],
            "finetune_chance": tree["chance"],
            "seconds_per_model": gen_seconds / tree["models"],
            "layers": reads,
        }
        results[name] = row
        line = f"{name:<18} {row['finetune_accuracy']:>7.3f} {row['seconds_per_model']:>8.2f}"
        for layer in LAYERS:
            line += f" {reads[layer]['ridge']:>10.3f} {reads[layer]['probex']:>11.3f}"
        print(line + f" {reads[LAYERS[0]]['chance']:>7.3f}", flush=True)
    for name in names:
        print(f"  {name}: {RECIPES[name].description}")
    return results
