"""`probex bench low-rank`: ProbeX on LoRA adapters' layers, read through their factors or whole.

A LoRA tree's layer is an adapter's change ΔW = B A: 256 × 768 of rank 4 in the default zoo.
Read whole, each probe costs d_H·d_W multiply-adds per model; through the factors
(`probex_core.models.low_rank_factors`, found by one SVD per layer) it costs (d_H + d_W)·r.
Both ProbeX families are trained on the same synthetic rank-4 stack, the same seed and
splits, once each way; the bench prints time per epoch, the speed-up, the validation metric
(which must agree: the two reads are the same arithmetic up to rounding), and the time of
the SVDs that find the factors, paid once per stack.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from probex_core.models import ClassProbeConfig, ModelConfig, ProbeXConfig, build_model
from probex_core.train import TensorData, TrainConfig, train_expert


@dataclass(frozen=True)
class LowRankSize:
    d_H: int
    d_W: int
    rank: int  # the adapters' rank
    n_classes: int  # one class per adapter
    n_models: int  # 80 % train, 20 % validation
    epochs: int


FULL = LowRankSize(256, 768, 4, 80, 500, 12)  # the default zoo's LoRA tree's shape
QUICK = LowRankSize(64, 192, 4, 10, 120, 4)


def _data(s: LowRankSize, low_rank: bool) -> dict[str, TensorData]:
    """One-class adapters: B A with a class direction planted in A."""
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(s.n_classes, (s.n_models,), generator=g)
    B = torch.randn(s.n_models, s.d_H, s.rank, generator=g)
    A = torch.randn(s.n_models, s.rank, s.d_W, generator=g)
    A[:, 0] += 2 * torch.randn(s.n_classes, s.d_W, generator=g)[labels]
    X, Y = B @ A / s.d_W**0.5, torch.eye(s.n_classes)[labels]
    cut = int(0.8 * s.n_models)
    return {
        "train": TensorData(X[:cut], Y[:cut], low_rank=low_rank),
        "val": TensorData(X[cut:], Y[cut:], low_rank=low_rank),
    }


def run(quick: bool = False) -> dict:
    s = QUICK if quick else FULL
    configs: dict[str, ModelConfig] = {
        "probex (shared, 32 probes)": ProbeXConfig(r_U=32, r_V=32, r_T=64),
        "probex-classes (rank 1)": ClassProbeConfig(rank=1),
    }
    cfg = TrainConfig(epochs=s.epochs, val_every=s.epochs, batch_size=128, objective="single")
    print(
        f"rank-{s.rank} layers {s.d_H}×{s.d_W}, {s.n_models} models, {s.n_classes} classes, "
        f"{s.epochs} epochs, {torch.get_num_threads()} threads"
    )
    print(
        f"{'model':28s} {'whole s/epoch':>14s} {'factors s/epoch':>16s} {'speed-up':>9s}  val top-1"
    )
    rows: dict[str, dict] = {}
    for name, config in configs.items():
        row: dict = {}
        for way in ("whole", "factors"):
            data = _data(s, low_rank=way == "factors")
            t0 = time.perf_counter()
            found = data["train"].factors is not None  # one SVD per layer, outside the epochs
            row[f"{way}_factor_seconds"] = time.perf_counter() - t0
            if found != (way == "factors"):
                raise RuntimeError(f"factors {'not ' if not found else ''}found reading {way}")
            model = build_model(config, s.d_H, s.d_W, s.n_classes, seed=0)
            res = train_expert(model, data["train"], data["val"], cfg)
            row[way] = {
                "epoch_seconds": res.epoch_seconds,
                "val_top1": res.best_metric,
                "seconds": time.perf_counter() - t0,
            }
        row["speedup"] = row["whole"]["epoch_seconds"] / row["factors"]["epoch_seconds"]
        rows[name] = row
        svd = row["factors_factor_seconds"]
        print(
            f"{name:28s} {row['whole']['epoch_seconds']:14.3f} "
            f"{row['factors']['epoch_seconds']:16.3f} {row['speedup']:8.1f}×  "
            f"{row['whole']['val_top1']:.3f} / {row['factors']['val_top1']:.3f}  (SVDs {svd:.1f} s)",
            flush=True,
        )
    return {"size": s.__dict__, "models": rows}
