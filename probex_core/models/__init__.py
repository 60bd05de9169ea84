"""Models that read one layer's weight matrix X (d_H × d_W) and predict what it was trained for.

All models share one interface (`WeightModel`): `encode(X) -> e (N, r_T)`, `forward(X) ->
logits (N, d_Y)` from a multi-label classification head, and `zero_shot_logits(X, T)` when
built with a text width. `build_model` is the one factory; its `config` dict is what
checkpoints store to rebuild the model (see `store.save_expert`).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from probex_core.models.base import LayerRows, WeightModel, ZeroShotHead, probe_responses
from probex_core.models.baselines import (
    N_STATS,
    QUANTILE_SAMPLE,
    DenseProbe,
    StatNN,
    weight_statistics,
)
from probex_core.models.probex import MultiViewProbe, ProbeX

MODEL_KINDS = ("probex", "mvprobe", "dense", "statnn")

_KINDS: dict[str, type[WeightModel]] = {
    "probex": ProbeX,
    "mvprobe": MultiViewProbe,
    "dense": DenseProbe,
    "statnn": StatNN,
}


def build_model(
    kind: str,
    d_H: int,
    d_W: int,
    n_classes: int,
    text_dim: int | None = None,
    seed: int = 0,
    **hparams: Any,
) -> WeightModel:
    """Build a model by kind (probex | mvprobe | dense | statnn); hparams go to its constructor.

    Initialisation is drawn from `seed` without touching the global RNG, so one seed gives one
    model. The returned model's `config` records kind and all arguments, enough to rebuild it.
    """
    if kind not in _KINDS:
        raise ValueError(f"unknown model kind {kind!r}; choose from {', '.join(MODEL_KINDS)}")
    direction = hparams.pop("zs_direction", "text_to_weight")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = _KINDS[kind](d_H, d_W, n_classes, text_dim=text_dim, **hparams)
        if direction != "text_to_weight":
            if model.zero_shot is None:
                raise ValueError("zs_direction needs text_dim")
            head = model.zero_shot
            model.zero_shot = ZeroShotHead(
                text_dim,
                model.r_T,
                float(head.log_scale.detach().exp()),
                head.log_scale.requires_grad,
                direction,
            )
            hparams["zs_direction"] = direction
    model.config = {
        "kind": kind,
        "d_H": d_H,
        "d_W": d_W,
        "n_classes": n_classes,
        "text_dim": text_dim,
        **hparams,
    }
    return model


def count_parameters(model: nn.Module, trainable_only: bool = True) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


__all__ = [
    "MODEL_KINDS",
    "N_STATS",
    "QUANTILE_SAMPLE",
    "DenseProbe",
    "LayerRows",
    "MultiViewProbe",
    "ProbeX",
    "StatNN",
    "WeightModel",
    "ZeroShotHead",
    "build_model",
    "count_parameters",
    "probe_responses",
    "weight_statistics",
]
