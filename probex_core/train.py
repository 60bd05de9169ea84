"""Training experts: seeded loops with best-validation checkpointing, calibration, sweeps.

Data comes as a `TensorData` (in memory) or a `StackData` (streamed from a layer stack file,
`probex_core.store`); both yield (X (B, d_H, d_W), Y (B, d_Y)) batches, and in-memory data
gives a model that reads layers in place (ProbeX) `LayerRows` instead of a copy. Checkpoints
and layer stacks are written and read by `probex_core.store`.
"""

from __future__ import annotations

import copy
import functools
import math
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F

from probex_core.metrics import per_class_accuracy, ranking_auc, topk_accuracy
from probex_core.models import LayerRows, WeightModel, low_rank_factors
from probex_core.store import LayerStack


@dataclass(frozen=True)
class TrainConfig:
    lr: float | None = None  # Adam step; None → 1e-3 (classify), 2e-3 (zeroshot), the paper's
    weight_decay: float = 1e-5  # Adam (L2) weight decay, the paper's
    batch_size: int = 128  # models per step, the paper's
    epochs: int = 500  # most passes over the training models (paper: 500 classify, 200 zs)
    val_every: int = 25  # validate every this many epochs (and after the last one); paper: 25
    patience: int | None = None  # stop after this many validations without gain; None = never
    seed: int = 0  # seeds batch order (model init is seeded by build_model's `seed`)
    # "classify" (BCE, multi-hot) | "single" (softmax CE, one class per model; validated by
    # top-1) | "zeroshot" (scores against class texts)
    objective: str = "classify"
    # zero-shot loss: "softmax" (cross-entropy over the texts, the target spread over a
    # model's classes; the paper's, right for one class per model) or "bce" (each text on its
    # own: was this model trained on it? — multi-label, for models of many classes)
    zs_loss: str = "softmax"

    @property
    def step_size(self) -> float:
        if self.lr is not None:
            return self.lr
        return 2e-3 if self.objective == "zeroshot" else 1e-3


class Dataset(Protocol):
    Y: torch.Tensor  # (N, d_Y) multi-hot
    shape: tuple[int, int]  # (d_H, d_W)

    def __len__(self) -> int: ...

    def batches(
        self, batch_size: int, generator: torch.Generator | None = None, in_place: bool = False
    ) -> Iterator[tuple[torch.Tensor | LayerRows, torch.Tensor]]:
        """(X, Y) batches; a batch's X may be overwritten when the next one is drawn. With
        `in_place`, X may instead be `LayerRows` for a model whose `reads_in_place` is set."""
        ...

    def head(self, n: int) -> torch.Tensor: ...


@dataclass
class TensorData:
    """A whole split in memory: X (N, d_H, d_W) float32, Y (N, d_Y)."""

    X: torch.Tensor
    Y: torch.Tensor
    low_rank: bool = True  # read low-rank layers through their factors (False: always whole)
    _buffer: torch.Tensor | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.X = self.X.float()
        self.Y = self.Y.float()
        if len(self.X) != len(self.Y):
            raise ValueError(f"X has {len(self.X)} models but Y has {len(self.Y)}")

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.X.shape[1:])  # type: ignore[return-value]

    def __len__(self) -> int:
        return len(self.X)

    def batches(
        self, batch_size: int, generator: torch.Generator | None = None, in_place: bool = False
    ) -> Iterator[tuple[torch.Tensor | LayerRows, torch.Tensor]]:
        """Shuffled batches when a generator is given, in order (views of X) otherwise.

        A shuffled batch is `LayerRows` of X (with its `factors`, if any) when `in_place`;
        otherwise its X is gathered into one buffer kept between calls and is valid only until
        the next batch is drawn: a fresh (B, d_H, d_W) allocation per step page-faults its
        memory in anew, which cost ~8x the copy itself for 768×768 layers."""
        n = len(self)
        if generator is None:
            for s in range(0, n, batch_size):
                yield self.X[s : s + batch_size], self.Y[s : s + batch_size]
            return
        order = torch.randperm(n, generator=generator)
        if in_place:
            factors = self.factors
            for s in range(0, n, batch_size):
                idx = order[s : s + batch_size]
                yield LayerRows(self.X, idx, factors), self.Y[idx]
            return
        size = min(batch_size, n)
        if self._buffer is None or self._buffer.shape[0] < size:
            self._buffer = torch.empty(size, *self.X.shape[1:], dtype=self.X.dtype)
        for s in range(0, n, batch_size):
            idx = order[s : s + batch_size]
            X = torch.index_select(self.X, 0, idx, out=self._buffer[: len(idx)])
            yield X, self.Y[idx]

    def head(self, n: int) -> torch.Tensor:
        return self.X[:n]

    @functools.cached_property
    def factors(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """X's low-rank factors when its layers have some (LoRA ΔW, `low_rank_factors`)."""
        return low_rank_factors(self.X) if self.low_rank else None


@dataclass
class StackData:
    """A split streamed from a layer stack: rows `indices` of `stack`, labels Y (len(indices), d_Y)."""

    stack: LayerStack
    Y: torch.Tensor
    indices: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.indices is None:
            self.indices = np.arange(len(self.stack))
        self.indices = np.asarray(self.indices, dtype=np.int64)
        self.Y = self.Y.float()
        if len(self.indices) != len(self.Y):
            raise ValueError(f"{len(self.indices)} rows but {len(self.Y)} labels")

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.stack.shape[1:])  # type: ignore[return-value]

    def __len__(self) -> int:
        return len(self.indices)

    def batches(
        self, batch_size: int, generator: torch.Generator | None = None, in_place: bool = False
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Read from the stack batch by batch; `in_place` has no effect (nothing is in memory)."""
        n = len(self)
        order = torch.randperm(n, generator=generator) if generator is not None else torch.arange(n)
        for s in range(0, n, batch_size):
            pos = order[s : s + batch_size].numpy()
            yield self.stack.read(self.indices[pos]), self.Y[pos]

    def head(self, n: int) -> torch.Tensor:
        return self.stack.read(self.indices[:n])


def as_dataset(data: Dataset | tuple[torch.Tensor, torch.Tensor]) -> Dataset:
    return TensorData(*data) if isinstance(data, tuple) else data


@dataclass
class TrainResult:
    model: WeightModel  # with the best-validation weights loaded, in eval mode
    best_epoch: int  # epoch whose weights were kept (0 = before training)
    best_metric: float  # validation metric at best_epoch (higher is better)
    history: list[dict[str, float]] = field(default_factory=list)  # per validation
    epoch_seconds: float = 0.0  # mean wall time of one training epoch (no validation)
    metric_name: str = ""


def _zero_shot_loss(logits: torch.Tensor, Y: torch.Tensor) -> torch.Tensor:
    """Soft-target cross-entropy: the target spreads evenly over a model's positive classes
    (one class → ordinary CE). Rows with no positive among the candidates are ignored."""
    pos = Y.sum(1)
    keep = pos > 0
    target = Y[keep] / pos[keep, None]
    return -(target * F.log_softmax(logits[keep], dim=1)).sum(1).mean()


def _validate(
    model: WeightModel, val: Dataset, cfg: TrainConfig, texts: torch.Tensor | None
) -> float:
    """classify: per-class binary accuracy at 0.5; zeroshot: top-1 among the classes that
    occur in the validation labels (held-out classes when val is a held-out split)."""
    if cfg.objective == "classify":
        probs = predict_proba(model, val, cfg.batch_size)
        return per_class_accuracy(val.Y.numpy(), probs.numpy())
    if cfg.objective == "single":
        probs = predict_proba(model, val, cfg.batch_size)
        return topk_accuracy(probs.numpy(), val.Y.numpy(), k=1)
    cand = torch.nonzero(val.Y.sum(0) > 0).flatten()
    scores = zero_shot_scores(model, val, texts[cand], cfg.batch_size)
    if zero_shot_multilabel(val.Y):
        return ranking_auc(scores.numpy(), val.Y[:, cand].numpy())[0]
    return topk_accuracy(scores.numpy(), val.Y[:, cand].numpy(), k=1)


def zero_shot_multilabel(Y: torch.Tensor) -> bool:
    """Models of several classes each: zero-shot is validated by ranking AUC (chance 0.5),
    since top-1 among many true classes is one coin flip per model."""
    return bool((Y.sum(1) > 1).any())


def _objective(
    model: WeightModel, train: Dataset, cfg: TrainConfig, text_embeddings: torch.Tensor | None
) -> tuple[Any, torch.Tensor | None]:
    """The batch loss (X, Y) → scalar for `cfg.objective`, and the texts it scores against."""
    if cfg.zs_loss not in ("softmax", "bce"):
        raise ValueError(f"unknown zero-shot loss {cfg.zs_loss!r}; choose softmax or bce")
    if cfg.objective == "classify":
        return lambda X, Y: F.binary_cross_entropy_with_logits(model(X), Y), None
    if cfg.objective == "single":
        return lambda X, Y: F.cross_entropy(model(X), Y.argmax(1)), None
    if cfg.objective != "zeroshot":
        raise ValueError(f"unknown objective {cfg.objective!r}")
    if text_embeddings is None:
        raise ValueError("objective 'zeroshot' needs text_embeddings")
    texts = text_embeddings.float()
    seen = torch.nonzero(train.Y.sum(0) > 0).flatten()
    loss = F.binary_cross_entropy_with_logits if cfg.zs_loss == "bce" else _zero_shot_loss
    return lambda X, Y: loss(model.zero_shot_logits(X, texts[seen]), Y[:, seen]), texts


def _epoch(
    model: WeightModel,
    opt: torch.optim.Optimizer,
    train: Dataset,
    loss_of: Any,
    batch_size: int,
    gen: torch.Generator,
) -> float:
    """One pass over `train` in seeded batch order; the mean training loss."""
    total, count = 0.0, 0
    for X, Y in train.batches(batch_size, gen, in_place=model.reads_in_place):
        loss = loss_of(X, Y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        total += loss.item() * len(X)
        count += len(X)
    return total / max(count, 1)


def train_expert(
    model: WeightModel,
    train: Dataset | tuple[torch.Tensor, torch.Tensor],
    val: Dataset | tuple[torch.Tensor, torch.Tensor],
    cfg: TrainConfig = TrainConfig(),
    text_embeddings: torch.Tensor | None = None,
    class_names: Sequence[str] | None = None,
) -> TrainResult:
    """Train with Adam, validating every `cfg.val_every` epochs; return the best-val weights.

    classify: BCE-with-logits over the multi-hot Y (N, d_Y).
    zeroshot: `text_embeddings` (d_Y, text_dim) gives one text per column of Y; the loss is
    soft-target cross-entropy over the texts of the classes seen in training (columns with a
    positive in `train`), so held-out columns never leak into training.
    `class_names` (d_Y) are only checked against Y's width and recorded in the history.
    Deterministic: batch order is seeded by `cfg.seed`, and all ops run on the CPU.
    """
    train, val = as_dataset(train), as_dataset(val)
    if class_names is not None and len(class_names) != train.Y.shape[1]:
        raise ValueError(f"{len(class_names)} class names for {train.Y.shape[1]} label columns")
    loss_of, texts = _objective(model, train, cfg, text_embeddings)
    if hasattr(model, "fit_stats"):
        model.fit_stats(train.head(2048))
    gen = torch.Generator().manual_seed(cfg.seed)
    # The fused kernel: one pass over each parameter; for Dense's 59M weights the default
    # for-loop Adam took 0.69 s of a 1.6 s step, the fused one 0.05 s.
    opt = torch.optim.Adam(
        model.parameters(), lr=cfg.step_size, weight_decay=cfg.weight_decay, fused=True
    )

    model.eval()
    best_metric, best_epoch = _validate(model, val, cfg, texts), 0
    best_state = copy.deepcopy(model.state_dict())
    history: list[dict[str, float]] = [{"epoch": 0, "train_loss": math.nan, "val": best_metric}]
    stale, train_time = 0, 0.0
    for epoch in range(1, cfg.epochs + 1):
        model.train()
        t0 = time.perf_counter()
        train_loss = _epoch(model, opt, train, loss_of, cfg.batch_size, gen)
        train_time += time.perf_counter() - t0
        if epoch % cfg.val_every and epoch != cfg.epochs:
            continue
        model.eval()
        metric = _validate(model, val, cfg, texts)
        history.append({"epoch": epoch, "train_loss": train_loss, "val": metric})
        if metric > best_metric:
            best_metric, best_epoch, stale = metric, epoch, 0
            best_state = copy.deepcopy(model.state_dict())
        else:
            stale += 1
            if cfg.patience is not None and stale >= cfg.patience:
                break
    model.load_state_dict(best_state)
    model.eval()
    n_epochs = max(history[-1]["epoch"], 1)
    name = {"classify": "per_class_accuracy", "single": "top1"}.get(cfg.objective, "")
    if not name:
        name = "zero_shot_ranking_auc" if zero_shot_multilabel(val.Y) else "zero_shot_top1"
    return TrainResult(model, best_epoch, best_metric, history, train_time / n_epochs, name)


@torch.no_grad()
def _map_batches(fn: Any, data: Dataset | torch.Tensor, batch_size: int) -> torch.Tensor:
    if isinstance(data, torch.Tensor):
        data = TensorData(data, torch.zeros(len(data), 0))
    outs = [fn(X) for X, _ in data.batches(batch_size)]
    return torch.cat(outs) if outs else torch.empty(0)


@dataclass(frozen=True)
class Calibration:
    """How logits become probabilities: divided by a temperature fitted on validation, then
    a softmax over the classes (one class per model) or a sigmoid per class (several)."""

    temperature: float = 1.0
    softmax: bool = False

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        z = logits / self.temperature
        return torch.softmax(z, dim=-1) if self.softmax else torch.sigmoid(z)

    @classmethod
    def from_meta(cls, meta: Any, method: str) -> Calibration:
        """The calibration a tree's `ExpertMeta` records for `method` (none: identity)."""
        entry = meta.calibration.get(method)
        return cls(**entry) if entry else cls()


def predict_logits(
    model: WeightModel, data: Dataset | torch.Tensor, batch_size: int = 256
) -> torch.Tensor:
    """Class logits (N, d_Y)."""
    model.eval()
    return _map_batches(model, data, batch_size)


def predict_proba(
    model: WeightModel,
    data: Dataset | torch.Tensor,
    batch_size: int = 256,
    calibration: Calibration | None = None,
) -> torch.Tensor:
    """Class probabilities (N, d_Y): sigmoids of the logits unless a calibration says
    otherwise."""
    return (calibration or Calibration()).probabilities(predict_logits(model, data, batch_size))


def fit_temperature(logits: torch.Tensor, Y: torch.Tensor, softmax: bool) -> float:
    """The temperature T minimising the validation negative log-likelihood of logits / T
    (Guo et al. 2017): one number, so every ranking and every 0.5-threshold decision is
    unchanged and only the confidence moves. Golden-section search on log T in [-4, 4]."""
    z, y = logits.detach().double(), Y.double()

    def nll(log_t: float) -> float:
        zt = z / math.exp(log_t)
        if softmax:
            return float(-(y * torch.log_softmax(zt, dim=-1)).sum(-1).mean())
        return float(F.binary_cross_entropy_with_logits(zt, y))

    lo, hi = -4.0, 4.0
    g = (math.sqrt(5) - 1) / 2
    a, b = hi - g * (hi - lo), lo + g * (hi - lo)
    fa, fb = nll(a), nll(b)
    for _ in range(60):
        if fa < fb:
            hi, b, fb = b, a, fa
            a = hi - g * (hi - lo)
            fa = nll(a)
        else:
            lo, a, fa = a, b, fb
            b = lo + g * (hi - lo)
            fb = nll(b)
    return math.exp((lo + hi) / 2)


def embed(model: WeightModel, data: Dataset | torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """Representations e (N, r_T)."""
    model.eval()
    return _map_batches(model.encode, data, batch_size)


def zero_shot_scores(
    model: WeightModel, data: Dataset | torch.Tensor, texts: torch.Tensor, batch_size: int = 256
) -> torch.Tensor:
    """Cosine logits (N, C) against C candidate class texts (C, text_dim)."""
    model.eval()
    return _map_batches(lambda X: model.zero_shot_logits(X, texts), data, batch_size)
