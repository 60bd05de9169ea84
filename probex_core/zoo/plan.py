"""The plan of a zoo: every model's tree, parent, split, classes, hyperparameters and name,
drawn from the seed before anything is trained."""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass

import torch

from probex_core.zoo.archs import CNN, MLP, ViT
from probex_core.zoo.data import CLASSES
from probex_core.zoo.presets import TreeSpec, ZooPreset
from probex_core.zoo.trainer import (
    Hyper,
)

# A fine-tune "clearly beats chance" when its accuracy on held-out images of its own classes
# is at least chance + MIN_MARGIN (k=40: 0.175 vs 0.025; one-vs-rest: balanced 0.65 vs 0.5).
MIN_MARGIN = 0.15
DOCUMENTED_SPLITS = ("root", "train", "val")
USERS = (
    "amaru-k", "bexley", "calloway-ml", "dunmore", "elowen", "fjordbyte", "galeforce",
    "hollis-r", "ivarsen", "juniper-lab", "kestrel", "lumenfold", "marisol", "nightjar-ai",
    "oakhaven", "pemberton", "quillon", "rosalind-t", "saffron", "thistle", "umbra-dev",
    "vantablue", "wrenfield", "xanthe", "yarrow", "zephyrine", "brackenridge", "cobalt-owl",
    "driftwood", "emberly",
)  # fmt: skip
ARCH_NAMES = {MLP: "ZooMLPForImageClassification", CNN: "ZooCNNForImageClassification",
              ViT: "ZooViTForImageClassification"}  # fmt: skip


class ZooTrainingError(RuntimeError):
    """A fine-tune did not clearly beat chance: the zoo would carry no signal."""


def seeded_generator(seed: int, *tags: object) -> torch.Generator:
    """An independent torch generator for one purpose, derived from the seed and tags."""
    digest = hashlib.sha256(repr((seed, *tags)).encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") >> 1)


@dataclass
class Planned:
    """One model to train and write; becomes one manifest row."""

    repo_id: str
    tree_id: str
    parent: str | None
    depth: int
    split: str
    classes: list[int]  # global class ids, in the order of the model's head
    hyper: Hyper
    parent_idx: int | None = None  # index of the first-level parent inside its tree's plan
    card_base_model: str | None = None
    card_lies: bool = False
    accuracy: float = float("nan")
    chance: float = float("nan")

    @property
    def documented(self) -> bool:
        return self.split in DOCUMENTED_SPLITS

    def manifest_row(self) -> dict:
        return {
            "repo_id": self.repo_id,
            "tree_id": self.tree_id,
            "parent": self.parent,
            "depth": self.depth,
            "split": self.split,
            "training_classes": [CLASSES[c] for c in self.classes],
            "documented": self.documented,
            "card_base_model": self.card_base_model,
            "card_lies": self.card_lies,
            "hyperparameters": self.hyper.as_dict(),
            "accuracy": round(self.accuracy, 6),
            "chance": round(self.chance, 6),
        }


class Namer:
    """Neutral, unique `<user>/model-<6 hex>` repo ids that say nothing about the tree."""

    def __init__(self, seed: int):
        self.rng, self.used = random.Random(f"probex-zoo-names-{seed}"), set()

    def __call__(self) -> str:
        while True:
            rid = f"{self.rng.choice(USERS)}/model-{self.rng.getrandbits(24):06x}"
            if rid not in self.used:
                self.used.add(rid)
                return rid


def plan_tree(
    spec: TreeSpec, preset: ZooPreset, seed: int, heldout: list[int], namer: Namer
) -> list[Planned]:
    """Descendants of one tree: depth, parent, split, classes and hyperparameters."""
    rng = random.Random(f"probex-zoo-plan-{seed}-{spec.tree_id}")
    seen = [c for c in range(len(CLASSES)) if c not in set(heldout)]
    n = spec.splits.total
    n1 = n // (1 + spec.children) if spec.children else n
    assert n1 * (1 + spec.children) == n, f"{spec.tree_id}: splits must divide by 1 + children"
    depth = [1] * n1 + [2] * (n - n1)
    leaves = [i for i in range(n) if depth[i] == max(depth)]
    counts = spec.splits.as_dict()
    hold = ["val_holdout"] * counts.pop("val_holdout") + ["test_holdout"] * counts.pop(
        "test_holdout"
    )
    rest = [s for s, c in counts.items() for _ in range(c)]
    rng.shuffle(rest)
    split: list[str | None] = [None] * n
    for i, s in zip(rng.sample(leaves, len(hold)), hold, strict=True):
        split[i] = s  # holdout models are leaves, so no seen-class model inherits held-out training
    it = iter(rest)
    split = [s if s is not None else next(it) for s in split]
    k, kh = preset.classes_per_model, preset.heldout_per_model
    plan = []
    for i in range(n):
        holdout = split[i].endswith("holdout")
        if spec.kind == "lora":
            classes = [rng.choice(heldout if holdout else seen)]
        elif holdout:
            classes = rng.sample(heldout, kh) + rng.sample(seen, k - kh)
            rng.shuffle(classes)
        else:
            classes = rng.sample(seen, k)
        hyper = Hyper(
            lr=round(10 ** rng.uniform(*torch.tensor(spec.lr).log10().tolist()), 7),  # log-uniform
            weight_decay=rng.choice(preset.weight_decays),
            steps=rng.randint(*spec.steps),
            batch_size=spec.batch_size,
            scheduler=rng.choice(["constant", "cosine"]),
            flip=rng.random() < 0.5,
            crop=rng.random() < 0.5,
            seed=rng.getrandbits(31),
            lp_steps=spec.lp_steps,
        )
        parent_idx = (i - n1) // spec.children if depth[i] == 2 else None
        plan.append(
            Planned(namer(), spec.tree_id, None, depth[i], split[i], classes, hyper, parent_idx)
        )
    return plan


def add_card_lies(
    plans: dict[str, list[Planned]], roots: dict[str, str], rate: float, seed: int
) -> None:
    """Make ~`rate` of documented cards name a wrong base model (another tree's root)."""
    rng = random.Random(f"probex-zoo-lies-{seed}")
    documented = [p for ps in plans.values() for p in ps if p.documented]
    if len(roots) < 2 or not documented:
        return
    for p in rng.sample(documented, max(1, round(rate * len(documented)))):
        p.card_base_model = rng.choice([r for t, r in roots.items() if t != p.tree_id])
        p.card_lies = True


def root_hyper(spec: TreeSpec, seed: int) -> Hyper:
    return Hyper(spec.root_lr, 1e-4, spec.root_steps, 128, "cosine", True, True, seed)
