"""Training across layers and across trees: the layer sweep (one expert per candidate layer,
the best on validation wins) and one shared expert over trees of different layer shapes
(zero-padded to the largest), the baseline per-tree experts are measured against.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from probex_core.models import ModelConfig, ProbeXConfig, build_model
from probex_core.train import (
    Dataset,
    TensorData,
    TrainConfig,
    TrainResult,
    as_dataset,
    train_expert,
)


@dataclass
class SweepResult:
    best_layer: str
    curve: dict[str, float]  # layer → best validation metric
    results: dict[str, TrainResult]


def layer_sweep(
    datasets_by_layer: Mapping[str, tuple[Dataset, Dataset]],
    model: ModelConfig = ProbeXConfig(),
    cfg: TrainConfig = TrainConfig(epochs=50, val_every=10),
    seed: int = 0,
) -> SweepResult:
    """Train one cheap expert per candidate layer ((train, val) each) and pick the best on
    validation — the paper's protocol for choosing the layer an expert reads."""
    results: dict[str, TrainResult] = {}
    for name, (tr, va) in datasets_by_layer.items():
        tr, va = as_dataset(tr), as_dataset(va)
        d_H, d_W = tr.shape
        expert = build_model(model, d_H, d_W, tr.Y.shape[1], seed=seed)
        results[name] = train_expert(expert, tr, va, cfg)
    curve = {name: r.best_metric for name, r in results.items()}
    return SweepResult(max(curve, key=curve.__getitem__), curve, results)


def pad_to(X: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    """Zero-pad (N, h, w) to (N, *shape) at the bottom/right."""
    h, w = X.shape[1:]
    return F.pad(X, (0, shape[1] - w, 0, shape[0] - h))


@dataclass
class SharedBaseline:
    result: TrainResult
    shape: tuple[int, int]  # every input is zero-padded to this shape

    def prepare(self, X: torch.Tensor) -> torch.Tensor:
        return pad_to(X, self.shape)


def train_shared_baseline(
    trees: Sequence[tuple[Dataset, Dataset]],
    model: ModelConfig = ProbeXConfig(),
    cfg: TrainConfig = TrainConfig(),
    seed: int = 0,
) -> SharedBaseline:
    """ONE model over several trees ((train, val) per tree, one shared class list): matrices of
    different shapes are zero-padded to the largest (d_H, d_W) and pooled. Compare its test
    accuracy per tree with one expert per tree to measure the nuisance across trees.
    In-memory only: pooled trees must fit (use StatNNConfig for shape-free statistics)."""
    trees = [(as_dataset(a), as_dataset(b)) for a, b in trees]
    shape = (max(t[0].shape[0] for t in trees), max(t[0].shape[1] for t in trees))

    def pool(split: int) -> TensorData:
        Xs = [pad_to(t[split].head(len(t[split])), shape) for t in trees]
        return TensorData(torch.cat(Xs), torch.cat([t[split].Y for t in trees]))

    tr, va = pool(0), pool(1)
    shared = build_model(model, *shape, tr.Y.shape[1], seed=seed)
    return SharedBaseline(train_expert(shared, tr, va, cfg), shape)
