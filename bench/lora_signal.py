"""`probex bench lora-signal`: which LoRA recipe lets the zero-shot expert name held-out classes.

Each named recipe grows one small LoRA tree (one-class adapters of an MLP root, as the zoo's
LoRA tree) with the real zoo generator, its holdout models trained on classes no documented
model has, and reads the adapters' fc1 change as the pipeline does. It prints, side by side:
fine-tune (adapter) balanced accuracy and cost per model; top-1 of a closed-form ridge
read-out and of the pipeline's ProbeX expert on test models among the seen classes; and the
pipeline's zero-shot expert (ProbeX → text space, softmax head started from the classifier's
encoder) on holdout models among the held-out class names: top-1 and ranking AUC. Every
recipe uses the same seed, splits and held-out classes.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import torch
from safetensors import safe_open

from bench.zoo_signal import bench_preset, grow
from probex_core.canon import lora_product
from probex_core.catalog import Home
from probex_core.metrics import ranking_auc, topk_accuracy, topk_chance
from probex_core.models import TextHeadConfig
from probex_core.pipeline.common import ExpertSettings
from probex_core.pipeline.labels import text_encoder
from probex_core.pipeline.layers import layer_transform
from probex_core.pipeline.starts import encoder_state, probex_starts
from probex_core.ridge import fit_ridge
from probex_core.text import class_prompts
from probex_core.train import TensorData, predict_proba
from probex_core.zeroshot import ZeroShotConfig, multi_hot, train_zero_shot_expert
from probex_core.zoo.archs import MLP
from probex_core.zoo.presets import Splits, TreeSpec, ZooPreset


@dataclass(frozen=True)
class LoraRecipe:
    """A way to grow a LoRA tree: the images' texture and the adapters' training steps."""

    description: str
    texture: float  # ZooPreset.texture of the adapters' images (the root is always flat)
    steps: tuple[int, int]  # TreeSpec.steps


RECIPES: dict[str, LoraRecipe] = {
    "v2": LoraRecipe(
        "zoo v2's first LoRA tree: patterned images (2.0), 60-120 steps", 2.0, (60, 120)
    ),
    "long": LoraRecipe("patterned images, 200-400 steps", 2.0, (200, 400)),
    "flat-long": LoraRecipe(
        "the default zoo's LoRA tree: flat-colour images, 200-400 steps", 0.0, (200, 400)
    ),
}

LAYER = "fc1"
FULL_SPLITS = Splits(train=300, val=50, test=40, val_holdout=30, test_holdout=30)
QUICK_SPLITS = Splits(train=60, val=16, test=16, val_holdout=10, test_holdout=10)
BASE = TreeSpec("bench-lora", MLP(hidden=(256, 128)), "bench-lab/mlp-wide", FULL_SPLITS,
                kind="lora", lr=(2e-3, 8e-3))  # fmt: skip


def _preset(name: str, recipe: LoraRecipe, quick: bool) -> ZooPreset:
    spec = replace(BASE, steps=recipe.steps)  # the root is always pretrained on flat images
    return bench_preset(f"lora-{name}", spec, QUICK_SPLITS, quick, recipe.texture, 0.0)


def _adapters(out: Path, manifest: dict) -> tuple[torch.Tensor, list[dict]]:
    """The adapters' fc1 change B·A at unit RMS (as the pipeline reads LoRA layers), and the
    adapter rows in stack order."""
    rows = [m for m in manifest["models"] if m["split"] != "root"]

    def read(repo_id: str) -> torch.Tensor:
        path = out / "hub" / repo_id / "adapter_model.safetensors"
        with safe_open(str(path), framework="pt") as f:
            key = f"base_model.model.{LAYER}.lora_"
            return lora_product(f.get_tensor(key + "A.weight"), f.get_tensor(key + "B.weight"))

    return layer_transform(torch.stack([read(m["repo_id"]) for m in rows]), None), rows


def _readouts(X: torch.Tensor, rows: list[dict], heldout: list[str], home: Home,
              settings: ExpertSettings) -> dict:  # fmt: skip
    """Seen-class top-1 of the ridge read-out and ProbeX on test adapters, and the zero-shot
    expert's top-1 and ranking AUC on holdout adapters among the `heldout` names; chances.
    `home` only holds the text encoder's cache."""
    held = set(heldout)
    seen = sorted({c for m in rows for c in m["training_classes"]} - held)
    idx = {s: [i for i, m in enumerate(rows) if m["split"] == s] for s in FULL_SPLITS.as_dict()}
    hold = idx["val_holdout"] + idx["test_holdout"]
    classes = {s: [rows[i]["training_classes"] for i in ix] for s, ix in idx.items()}
    data = {s: TensorData(X[idx[s]], multi_hot(classes[s], seen)) for s in ("train", "val", "test")}
    ridge = fit_ridge(data["train"], data["val"], single=True)
    starts = probex_starts(data["train"], data["val"], len(seen), settings.train_config("single"),
                           settings, True, ridge)  # fmt: skip
    probex, pairs = starts["probex"], starts["probex-pairs"]
    test_y = data["test"].Y.numpy()
    encoder = text_encoder(home, settings.encoder)
    cfg = ZeroShotConfig(
        model=settings.probex,
        text_head=TextHeadConfig(direction="weight_to_text"),
        train=replace(settings.train_config("zeroshot"), zs_loss="softmax"),
        seed=settings.seed,
    )
    expert = train_zero_shot_expert(
        (data["train"].X, classes["train"]), (data["val"].X, classes["val"]), encoder, cfg,
        init=encoder_state(pairs.model),
    )  # fmt: skip
    with torch.no_grad():
        scores = expert.scores(X[hold], encoder.encode(class_prompts(heldout))).numpy()
    Yh = multi_hot(classes["val_holdout"] + classes["test_holdout"], heldout).numpy()
    return {
        "chance": 1 / len(seen),
        "ridge": topk_accuracy(predict_proba(ridge.model, data["test"]).numpy(), test_y, 1),
        "probex": topk_accuracy(predict_proba(probex.model, data["test"]).numpy(), test_y, 1),
        "heldout_top1": topk_accuracy(scores, Yh, 1),
        "heldout_chance": float(topk_chance(Yh.sum(1), len(heldout), 1).mean()),
        "heldout_auc": ranking_auc(scores, Yh)[0],
        "n_holdout": len(hold),
    }


def run(quick: bool = False, recipes: list[str] | None = None, seed: int = 0) -> dict:
    """`seed`: the zoo seed every recipe's tree is grown with (the CLI's is 0)."""
    # the shared ProbeX (the better of its two starts), as this bench's tables were measured
    settings = ExpertSettings(epochs=100 if quick else 300, class_rank=0)
    names = recipes or list(RECIPES)
    splits = QUICK_SPLITS if quick else FULL_SPLITS
    print(
        f"one LoRA tree per recipe (rank-4 adapters of a 768→256→128 MLP, one class each), "
        f"{splits.train} train / {splits.val} val / {splits.test} test / "
        f"{splits.val_holdout + splits.test_holdout} holdout adapters, seed {seed}; layer {LAYER}"
    )
    print(
        f"{'recipe':<10} {'ft acc':>7} {'s/model':>8} {'ridge top1':>11} {'probex top1':>12}"
        f" {'chance':>7} {'held top1':>10} {'chance':>7} {'held AUC':>9}"
    )
    results = {}
    for name in names:
        recipe = RECIPES[name]

        def read(out: Path, manifest: dict) -> dict:  # the text cache lives in the bench zoo
            X, rows = _adapters(out, manifest)
            return _readouts(X, rows, manifest["heldout_classes"], Home(out), settings)

        summary, gen_seconds, reads = grow(_preset(name, recipe, quick), read, seed)
        tree = summary["trees"][0]
        row = {
            "description": recipe.description,
            "finetune_accuracy": tree["finetune_accuracy_mean"],
            "seconds_per_model": gen_seconds / tree["models"],
            **reads,
        }
        results[name] = row
        print(
            f"{name:<10} {row['finetune_accuracy']:>7.3f} {row['seconds_per_model']:>8.2f}"
            f" {row['ridge']:>11.3f} {row['probex']:>12.3f} {row['chance']:>7.3f}"
            f" {row['heldout_top1']:>10.3f} {row['heldout_chance']:>7.3f}"
            f" {row['heldout_auc']:>9.3f}",
            flush=True,
        )
    for name in names:
        print(f"  {name}: {RECIPES[name].description}")
    return results
