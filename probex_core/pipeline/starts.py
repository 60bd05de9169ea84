"""How a tree's ProbeX classifiers start and train: from the layer's ridge read-out, the
paper's shared-probe ProbeX in two warm starts, and ProbeX with class probes."""

from __future__ import annotations

import torch

from probex_core.models import ClassProbeConfig, build_model
from probex_core.pipeline.common import ExpertSettings
from probex_core.ridge import RidgeResult, fit_ridge, warm_start_class_probes, warm_start_probex
from probex_core.train import TensorData, TrainConfig, TrainResult, train_expert


def warm_probex(
    train: TensorData,
    val: TensorData,
    n_classes: int,
    cfg: TrainConfig,
    settings: ExpertSettings,
    single_label: bool,
    ridge: RidgeResult | None = None,
    units: str = "offset",
) -> tuple[RidgeResult, TrainResult]:
    """The ridge read-out of one layer (fitted unless given, e.g. by the layer sweep), and the
    ProbeX expert warm-started from it (its V units as `units` says) and trained
    (`warm_start_probex`; random probes with `settings.probex_init == "random"`)."""
    ridge = ridge or fit_ridge(train, val, single=single_label)
    d_H, d_W = train.shape
    model = build_model(settings.probex, d_H, d_W, n_classes, seed=settings.seed)
    if settings.probex_init == "ridge":
        warm_start_probex(model, ridge.model, train, units=units)
    return ridge, train_expert(model, train, val, cfg)


def probex_starts(train, val, n_classes, cfg, settings, single_label, ridge) -> dict:
    """The tree's ProbeX classifiers, trained. From the ridge read-out: the paper's ProbeX
    with offset units and in ± pairs ("probex-offset", "probex-pairs", the better on
    validation "probex-shared"; a tie keeps the pairs), ProbeX with class probes
    (`settings.class_rank`, "probex-classes"), and the better on validation of those two as
    "probex", the tree's classifier (a tie keeps the class probes, the smaller). With
    class_rank 0 "probex" is the better shared one. From random probes
    (`settings.probex_init`), "probex" alone: the paper's ProbeX."""
    args = (train, val, n_classes, cfg, settings, single_label, ridge)
    if settings.probex_init != "ridge":
        return {"probex": warm_probex(*args)[1]}
    offset, pairs = (warm_probex(*args, units=u)[1] for u in ("offset", "pairs"))
    shared = offset if offset.best_metric > pairs.best_metric else pairs
    if not settings.class_rank:
        return {"probex-offset": offset, "probex-pairs": pairs, "probex": shared}
    classes = class_probes(train, val, n_classes, cfg, settings, ridge)
    best = classes if classes.best_metric >= shared.best_metric else shared
    return {"probex-offset": offset, "probex-pairs": pairs, "probex-shared": shared,
            "probex-classes": classes, "probex": best}  # fmt: skip


def class_probes(
    train: TensorData,
    val: TensorData,
    n_classes: int,
    cfg: TrainConfig,
    settings: ExpertSettings,
    ridge: RidgeResult,
) -> TrainResult:
    """ProbeX with class probes of rank `settings.class_rank`, started from the ridge
    read-out's class maps truncated to that rank (`warm_start_class_probes`), and trained."""
    d_H, d_W = train.shape
    config = ClassProbeConfig(rank=settings.class_rank)
    model = build_model(config, d_H, d_W, n_classes, seed=settings.seed)
    warm_start_class_probes(model, ridge.model, train)
    return train_expert(model, train, val, cfg)


def encoder_state(model) -> dict[str, torch.Tensor]:
    """A ProbeX's encoder weights (probes, projections, training mean), without its heads."""
    return {
        k: v for k, v in model.state_dict().items() if not k.startswith(("head.", "zero_shot."))
    }
