"""Zero-shot ProbeX: held-out classes above chance and a shuffled control at chance on a
planted-signal tree; the metric and the encoder guard. The real zoo's zero-shot expert is
trained through this module by the pipeline and held to its held-out scores in
test_pipeline.py (recomputed from the manifest)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bench.synthetic import SyntheticConfig, SyntheticTree, make_tree
from probex_core.metrics import topk_chance
from probex_core.models import ProbeXConfig
from probex_core.text import class_prompt
from probex_core.train import TrainConfig
from probex_core.zeroshot import (
    ZeroShotConfig,
    evaluate_zero_shot,
    multi_hot,
    train_zero_shot_expert,
    zero_shot_report,
)


class PlantedText:
    """A text "encoder" over a synthetic tree's planted class texts, looked up by prompt."""

    name = "planted:v1"

    def __init__(self, tree: SyntheticTree) -> None:
        self.tree = tree
        self.dim = tree.texts.shape[1]
        self.row = {class_prompt(n): i for i, n in enumerate(tree.class_names)}

    def encode(self, texts: list[str]) -> torch.Tensor:
        return torch.nn.functional.normalize(self.tree.texts[[self.row[t] for t in texts]], dim=-1)


@pytest.fixture(scope="module")
def planted_report() -> dict:
    """One-class-per-model synthetic tree whose class texts are linear in a low-dim latent,
    so held-out classes are reachable from the training classes (the zero-shot premise)."""
    tree = make_tree(
        SyntheticConfig(n_classes=20, n_models=160, classes_per_model=1, latent_dim=6), seed=0
    )
    names = tree.class_names
    heldout = names[15:]
    classes = [[names[j] for j in torch.nonzero(y).flatten().tolist()] for y in tree.Y]
    seen = [i for i, c in enumerate(classes) if c[0] not in heldout]
    held = [i for i, c in enumerate(classes) if c[0] in heldout]

    def split(ix: list[int]):
        return tree.X[ix], [classes[i] for i in ix]

    splits = {
        "train": split(seen[:90]),
        "val": split(seen[90:105]),
        "test": split(seen[105:]),
        "test_holdout": split(held),
    }
    cfg = ZeroShotConfig(
        model=ProbeXConfig(r_U=16, r_V=16, r_T=32),
        train=TrainConfig(objective="zeroshot", epochs=40, val_every=10),
    )
    return zero_shot_report(splits, heldout, PlantedText(tree), cfg)


def test_planted_zero_shot_beats_chance_and_shuffled_does_not(planted_report):
    held, shuffled = planted_report["heldout"], planted_report["shuffled"]
    assert held["n_models"] >= 20 and held["n_candidates"] == 5
    assert held["top1"] >= 2 * held["chance_top1"]
    assert shuffled["top1"] < 2 * shuffled["chance_top1"]
    assert (
        planted_report["in_distribution"]["top1"]
        >= 2 * (planted_report["in_distribution"]["chance_top1"])
    )
    assert planted_report["encoder"] == "planted:v1"


def test_chance_is_exact():
    assert topk_chance(np.array([1]), 20, 1)[0] == pytest.approx(1 / 20)
    assert topk_chance(np.array([1]), 20, 5)[0] == pytest.approx(5 / 20)
    assert topk_chance(np.array([2]), 4, 1)[0] == pytest.approx(0.5)
    assert topk_chance(np.array([1]), 3, 5)[0] == 1.0
    # 8 true of 20 (a multi-class held-out model): top-5 misses with C(12,5)/C(20,5)
    assert topk_chance(np.array([8]), 20, 5)[0] == pytest.approx(1 - 792 / 15504)


def test_multi_hot_ignores_unknown_classes():
    Y = multi_hot([["a", "z"], ["b"]], ["a", "b", "c"])
    assert Y.tolist() == [[1, 0, 0], [0, 1, 0]]


class _Tiny:
    name = "tiny:v1"
    dim = 4

    def encode(self, texts: list[str]) -> torch.Tensor:
        g = [torch.Generator().manual_seed(sum(map(ord, t))) for t in texts]
        return torch.nn.functional.normalize(torch.stack([torch.randn(4, generator=x) for x in g]))


def test_expert_refuses_another_encoder():
    X = torch.randn(6, 5, 3)
    classes = [["a"], ["b"], ["c"], ["a"], ["b"], ["c"]]
    cfg = ZeroShotConfig(
        model=ProbeXConfig(r_U=2, r_V=2, r_T=4),
        train=TrainConfig(objective="zeroshot", epochs=2, val_every=1),
    )
    expert = train_zero_shot_expert((X, classes), (X, classes), _Tiny(), cfg)
    assert expert.encoder_name == "tiny:v1" and expert.train_classes == ["a", "b", "c"]
    other = _Tiny()
    other.name = "tiny:v2"
    with pytest.raises(ValueError, match="trained with"):
        evaluate_zero_shot(expert, (X, classes), ["a", "b"], other)
