"""What every step shares: its report type, code versions, settings, small helpers."""

from __future__ import annotations

import io
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import pandas as pd

from probex_core.models import ProbeXConfig
from probex_core.train import TrainConfig

# Bump a step's version when its output for the same input changes: every partition of that
# asset (and what depends on it) becomes stale.
CODE_VERSIONS: dict[str, str] = {
    "hub_repos": "3",
    "model_trees": "5",
    "tree_layers": "3",
    "tree_experts": "13",
    "model_predictions": "5",
    "evaluations": "12",
    "model_cards": "1",
}


EVERY_ENV = "PROBEX_PROGRESS_EVERY"  # seconds between two progress lines of a step (10)
Progress = Callable[[str], None]  # where a step says what it is doing, one line at a time


class Ticker:
    """Passes a progress line on at most once per `every` seconds (the first one only after
    `every` seconds too): a step that finishes quickly says nothing."""

    def __init__(self, say: Progress | None, every: float | None = None) -> None:
        self.say = say
        self.every = float(os.environ.get(EVERY_ENV, "10")) if every is None else every
        self.last = time.monotonic()

    def __call__(self, line: str) -> None:
        now = time.monotonic()
        if self.say is not None and now - self.last >= self.every:
            self.last = now
            self.say(line)


@dataclass
class StepReport:
    """What a step tells the UI: numbers, small tables, plots (PNG bytes), a data version."""

    summary: dict[str, float | int | str] = field(default_factory=dict)
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)
    plots: dict[str, bytes] = field(default_factory=dict)
    # small line charts as (x, y) points: light enough for the UI to show inline
    curves: dict[str, tuple[list[float], list[float]]] = field(default_factory=dict)
    data_version: str = ""


@dataclass(frozen=True)
class ExpertSettings:
    """How the per-tree experts are trained."""

    epochs: int = 300  # epochs for each final expert (paper: 500 classify / 200 zero-shot)
    sweep_epochs: int = 60  # cheap training per candidate layer in the layer sweep
    val_every: int = 10  # validate every this many epochs; the best checkpoint is kept
    # stop an expert after this many validations without a gain (None: run every epoch)
    patience: int | None = 8
    encoder: str = "minilm"  # text encoder spec for the zero-shot expert
    seed: int = 0  # seeds the train/val split and every model
    val_fraction: float = 0.2  # share of documented models held out for validation
    min_documented: int = 40  # fewer documented models in a tree: no expert (it would not learn)
    dense_max_params: int = 30_000_000  # skip the Dense baseline above this size (reported)
    # ProbeX widths: 32 probes, V 64 wide (32 ± pairs in a warm start), e 128 wide. The paper's
    # 128/128 were no better on the zoo and 26× fewer parameters than Dense on a 128×768 layer
    r_U: int = 32  # ProbeX probes (paper 128)
    r_V: int = 64  # ProbeX shared projection width (paper 128)
    r_T: int = 128  # representation width (paper 512; its scripts use 128)
    # "ridge": start ProbeX as the layer's ridge read-out (`warm_start_probex`); "random": the
    # paper's random probes (always trained beside it as "probex-scratch"; from the ridge
    # read-out, ProbeX is trained from offset units and from ± pairs, "probex-offset" and
    # "probex-pairs", and the better on validation is "probex-shared"; see class_rank)
    probex_init: str = "ridge"
    # from the ridge read-out, ProbeX with class probes is trained too ("probex-classes"), each
    # class reading the layer through this many probes of its own (`ClassProbeX`), and the
    # better on validation of it and the shared ProbeX ("probex-shared") is "probex". 0: none
    class_rank: int = 1

    def __post_init__(self) -> None:
        if self.probex_init not in ("ridge", "random"):
            raise ValueError(f"probex_init must be 'ridge' or 'random', not {self.probex_init!r}")
        if self.class_rank < 0:
            raise ValueError(f"class_rank must be >= 0, not {self.class_rank}")

    @property
    def probex(self) -> ProbeXConfig:
        """The experts' ProbeX ranks as the model family's config."""
        return ProbeXConfig(r_U=self.r_U, r_V=self.r_V, r_T=self.r_T)

    def train_config(self, objective: str, sweep: bool = False) -> TrainConfig:
        """How one expert (or, with `sweep`, one candidate layer of the sweep) is trained."""
        return TrainConfig(
            epochs=self.sweep_epochs if sweep else self.epochs,
            val_every=self.val_every,
            patience=self.patience,
            seed=self.seed,
            objective=objective,
        )


def png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return buf.getvalue()
