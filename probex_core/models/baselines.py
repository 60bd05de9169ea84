"""The baselines ProbeX is measured against: a dense linear probe on the flattened layer, and
StatNN over weight statistics."""

from __future__ import annotations

import functools
import weakref

import torch
from torch import nn

from probex_core.models.base import LayerRows, WeightModel
from probex_core.models.config import DenseConfig, StatNNConfig, TextHeadConfig


class DenseProbe(WeightModel):
    """Dense baseline: a linear classifier on the flattened layer (d_H·d_W → d_Y).

    Without a bottleneck the representation e *is* the logit vector (r_T = d_Y): the model is
    one linear layer and has no other hidden space. With `bottleneck=k`, e is a linear
    d_H·d_W → k map and the head is k → d_Y (still linear overall, but with a usable e).
    """

    kind = "dense"

    def __init__(
        self,
        d_H: int,
        d_W: int,
        n_classes: int,
        config: DenseConfig = DenseConfig(),
        text_dim: int | None = None,
        text_head: TextHeadConfig = TextHeadConfig(),
    ):
        bottleneck = config.bottleneck
        r_T = bottleneck or n_classes
        super().__init__(r_T, n_classes if bottleneck else 0, text_dim, text_head)
        self.lin = nn.Linear(d_H * d_W, r_T)  # (d_H·d_W → r_T)
        self.bottleneck = bottleneck

    def encode(self, X: torch.Tensor) -> torch.Tensor:
        return self.lin(X.flatten(1))  # (N, r_T)

    def forward(self, X: torch.Tensor) -> torch.Tensor:
        e = self.encode(X)
        return e if self.head is None else self.head(e)  # (N, d_Y)


N_STATS = 17
QUANTILE_SAMPLE = 1 << 15  # entries per matrix the inner quantiles are estimated from


def _quantile_sample(flat: torch.Tensor) -> torch.Tensor:
    """The entries the inner quantiles are read from: all of them up to QUANTILE_SAMPLE,
    otherwise a fixed seeded sample of QUANTILE_SAMPLE positions (the same for every matrix of
    that size). Sorting all 590k entries of a 768×768 layer took ~40 ms per model and made
    StatNN the slowest model of the bench; the sample's quantiles are off by ~0.01 std."""
    n = flat.shape[1]
    return flat if n <= QUANTILE_SAMPLE else flat[:, _sample_positions(n)]


@functools.lru_cache(maxsize=16)
def _sample_positions(n: int) -> torch.Tensor:
    """QUANTILE_SAMPLE positions out of n, seeded by n; drawn once per size (every batch of
    every epoch asks again)."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(n))[:QUANTILE_SAMPLE]


def weight_statistics(X: torch.Tensor) -> torch.Tensor:
    """Per-layer statistics of X (N, d_H, d_W) → (N, N_STATS).

    mean, std, quantiles (0, 5, 25, 50, 75, 95, 100 %), skew, kurtosis, mean |x|, RMS,
    row-norm mean/std, column-norm mean/std — the "StatNN" features of Unterthiner et al.
    plus norms.
    """
    flat = X.flatten(1)  # (N, d_H·d_W)
    n = flat.shape[1]
    mean = flat.mean(1, keepdim=True)
    z = flat - mean
    z2 = z * z
    # moments as batched dot products: no (N, d_H·d_W) temporary per statistic
    m2, m3, m4 = (_dot(z, z) / n, _dot(z2, z) / n, _dot(z2, z2) / n)
    std = (m2 * n / max(n - 1, 1)).sqrt()  # unbiased, as torch.std
    inner = torch.quantile(
        _quantile_sample(flat), torch.tensor([0.05, 0.25, 0.5, 0.75, 0.95]), dim=1
    ).T
    rows, cols = X.norm(dim=2), X.norm(dim=1)  # (N, d_H), (N, d_W)
    return torch.cat(
        [
            mean,
            std,
            flat.amin(1, keepdim=True),
            inner,
            flat.amax(1, keepdim=True),
            m3 / (m2.sqrt() ** 3 + 1e-36),  # skew
            m4 / (m2**2 + 1e-36),  # kurtosis
            flat.abs().mean(1, keepdim=True),
            (_dot(flat, flat) / n).sqrt(),  # RMS
            rows.mean(1, keepdim=True),
            rows.std(1, keepdim=True),
            cols.mean(1, keepdim=True),
            cols.std(1, keepdim=True),
        ],
        dim=1,
    )


def _dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Row-wise dot products of (N, n) tensors → (N, 1)."""
    return torch.einsum("ni,ni->n", a, b)[:, None]


class StatNN(WeightModel):
    """StatNN baseline: weight statistics → a small MLP (hidden width `hidden`, r_T = hidden).

    Features are standardised with buffers set by `fit_stats` on training data (the training
    loop calls it), so checkpoints carry the normalisation. Training batches come as
    `LayerRows`: a stack's statistics are computed once and indexed, not recomputed every
    epoch (on the default zoo's 256×768 LoRA layers that took 192 s of a 293 s tree).
    """

    kind = "statnn"
    reads_in_place = True

    def __init__(
        self,
        d_H: int,
        d_W: int,
        n_classes: int,
        config: StatNNConfig = StatNNConfig(),
        text_dim: int | None = None,
        text_head: TextHeadConfig = TextHeadConfig(),
    ):
        hidden = config.hidden
        super().__init__(hidden, n_classes, text_dim, text_head)
        self.register_buffer("feat_mean", torch.zeros(N_STATS))
        self.register_buffer("feat_std", torch.ones(N_STATS))
        self.mlp = nn.Sequential(
            nn.Linear(N_STATS, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU()
        )
        # (the stack, its statistics) for in-place batches; a weak reference, so a model kept
        # after training does not keep its training layers alive
        self._stack_stats: tuple[weakref.ref, torch.Tensor] | None = None

    @torch.no_grad()
    def fit_stats(self, X: torch.Tensor) -> None:
        f = weight_statistics(X)
        self.feat_mean.copy_(f.mean(0))
        self.feat_std.copy_(f.std(0).clamp_min(1e-8) if len(f) > 1 else torch.ones(N_STATS))

    def encode(self, X: torch.Tensor | LayerRows) -> torch.Tensor:
        f = (self._statistics(X) - self.feat_mean) / self.feat_std  # (N, N_STATS)
        return self.mlp(f)  # (N, hidden)

    @torch.no_grad()
    def _statistics(self, X: torch.Tensor | LayerRows) -> torch.Tensor:
        if not isinstance(X, LayerRows):
            return weight_statistics(X)
        cached = self._stack_stats
        if cached is None or cached[0]() is not X.source:
            stats = torch.cat([weight_statistics(X.source[s : s + 128])
                               for s in range(0, len(X.source), 128)])  # fmt: skip
            cached = self._stack_stats = (weakref.ref(X.source), stats)
        return cached[1][X.index]
