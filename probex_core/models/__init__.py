"""Models that read one layer's weight matrix X (d_H × d_W) and predict what it was trained for.

All models share one interface (`WeightModel`): `encode(X) -> e (N, r_T)`, `forward(X) ->
logits (N, d_Y)` from a multi-label classification head, and `zero_shot_logits(X, T)` when
built with a text width. Each family has a frozen config (`models/config.py`); `build_model`
is the one factory, and the keyword form of its arguments (`model.config`) is what
checkpoints store to rebuild the model (see `store.save_expert`).
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

import torch
from torch import nn

from probex_core.models.base import (
    LayerRows,
    WeightModel,
    ZeroShotHead,
    low_rank_factors,
    probe_responses,
)
from probex_core.models.baselines import (
    N_STATS,
    QUANTILE_SAMPLE,
    DenseProbe,
    StatNN,
    weight_statistics,
)
from probex_core.models.config import (
    FAMILIES,
    ClassProbeConfig,
    DenseConfig,
    ModelConfig,
    MultiViewConfig,
    ProbeXConfig,
    StatNNConfig,
    TextHeadConfig,
    model_config,
)
from probex_core.models.probex import ClassProbeX, MultiViewProbe, ProbeX

MODEL_KINDS = tuple(FAMILIES)

_MODELS: dict[str, type[WeightModel]] = {
    "probex": ProbeX,
    "probex-classes": ClassProbeX,
    "mvprobe": MultiViewProbe,
    "dense": DenseProbe,
    "statnn": StatNN,
}


def build_model(
    family: str | ModelConfig,
    d_H: int,
    d_W: int,
    n_classes: int,
    text_dim: int | None = None,
    seed: int = 0,
    text_head: TextHeadConfig | None = None,
    **settings: Any,
) -> WeightModel:
    """Build a model from its family's config (or a kind and that config's settings as
    keywords, zs_* for the text head — the form checkpoints store).

    Initialisation is drawn from `seed` without touching the global RNG, so one seed gives one
    model. The returned model's `config` records all arguments as keywords, enough to rebuild it.
    """
    if isinstance(family, str):
        family, parsed = model_config(family, **settings)
        text_head = text_head or parsed
    elif settings:
        raise ValueError(f"settings {sorted(settings)} given beside a {family.kind} config")
    text_head = text_head or TextHeadConfig()
    if text_head != TextHeadConfig() and not text_dim:
        raise ValueError("zero-shot head settings need text_dim")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = _MODELS[family.kind](d_H, d_W, n_classes, family, text_dim, text_head)
    model.config = {
        "kind": family.kind,
        "d_H": d_H,
        "d_W": d_W,
        "n_classes": n_classes,
        "text_dim": text_dim,
        **asdict(family),
        **text_head.as_keywords(),
    }
    return model


def count_parameters(model: nn.Module, trainable_only: bool = True) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


__all__ = [
    "MODEL_KINDS",
    "ClassProbeConfig",
    "ClassProbeX",
    "N_STATS",
    "QUANTILE_SAMPLE",
    "DenseConfig",
    "DenseProbe",
    "LayerRows",
    "ModelConfig",
    "MultiViewConfig",
    "MultiViewProbe",
    "ProbeX",
    "ProbeXConfig",
    "StatNN",
    "StatNNConfig",
    "TextHeadConfig",
    "WeightModel",
    "ZeroShotHead",
    "build_model",
    "count_parameters",
    "low_rank_factors",
    "model_config",
    "probe_responses",
    "weight_statistics",
]
