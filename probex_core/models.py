"""Models that read one layer's weight matrix X (d_H × d_W) and predict what it was trained for.

All models share one interface (`WeightModel`): `encode(X) -> e (N, r_T)`, `forward(X) ->
logits (N, d_Y)` from a multi-label classification head, and `zero_shot_logits(X, T)` when
built with a text width. `build_model` is the one factory; its `config` dict is what
checkpoints store to rebuild the model (see `train.save_expert`).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

MODEL_KINDS = ("probex", "mvprobe", "dense", "statnn")


class ZeroShotHead(nn.Module):
    """Cosine logits between a model's representation e and class-text embeddings.

    direction "text_to_weight" (the paper): texts are mapped into r_T, logits = cos(e, P t).
    direction "weight_to_text": e is mapped into the text space, logits = cos(Q e, t); every
    model of every tree then has one embedding in one shared space (`text_embedding`), so
    scores of different trees are comparable and search is a single cosine ranking.
    The temperature is stored as a log-scale (CLIP style). `learn_scale=False` keeps it fixed,
    which avoids the degenerate "sharpen everything" solution on tiny training sets.
    """

    DIRECTIONS = ("text_to_weight", "weight_to_text")

    def __init__(
        self,
        text_dim: int,
        r_T: int,
        scale: float = 10.0,
        learn_scale: bool = True,
        direction: str = "text_to_weight",
    ):
        super().__init__()
        if direction not in self.DIRECTIONS:
            raise ValueError(f"unknown zero-shot direction {direction!r}")
        self.direction = direction
        if direction == "text_to_weight":
            self.proj = nn.Linear(text_dim, r_T, bias=False)  # text_dim → r_T
        else:
            self.proj = nn.Linear(r_T, text_dim, bias=False)  # r_T → text_dim
        self.log_scale = nn.Parameter(torch.tensor(math.log(scale)), requires_grad=learn_scale)

    def text_embedding(self, e: torch.Tensor) -> torch.Tensor:
        """(N, r_T) → (N, text_dim), L2-normalised; only for "weight_to_text"."""
        if self.direction != "weight_to_text":
            raise RuntimeError("text_embedding needs a zero-shot head built as weight_to_text")
        return F.normalize(self.proj(e), dim=-1)

    def forward(self, e: torch.Tensor, T: torch.Tensor) -> torch.Tensor:
        if self.direction == "weight_to_text":
            return self.log_scale.exp() * self.text_embedding(e) @ F.normalize(T, dim=-1).T
        e = F.normalize(e, dim=-1)  # (N, r_T)
        t = F.normalize(self.proj(T), dim=-1)  # (C, r_T)
        return self.log_scale.exp() * e @ t.T  # (N, C)


class WeightModel(nn.Module):
    """Base: an encoder X → e (subclass `encode`), a linear head e → d_Y, an optional text head.

    `config` holds every constructor argument, so `build_model(**config)` rebuilds the model.
    """

    kind: str = ""
    # True when `encode` also takes `LayerRows` and reads them in place (no batch copy).
    reads_in_place: bool = False

    def __init__(
        self, r_T: int, n_classes: int, text_dim: int | None, zs_scale: float, zs_learn_scale: bool
    ):
        super().__init__()
        self.r_T = r_T
        self.head = nn.Linear(r_T, n_classes) if n_classes > 0 else None  # r_T → d_Y
        self.zero_shot = ZeroShotHead(text_dim, r_T, zs_scale, zs_learn_scale) if text_dim else None
        self.config: dict[str, Any] = {}

    def encode(self, X: torch.Tensor) -> torch.Tensor:  # (N, d_H, d_W) → (N, r_T)
        raise NotImplementedError

    def forward(self, X: torch.Tensor) -> torch.Tensor:
        if self.head is None:
            raise RuntimeError("model was built with n_classes=0: no classification head")
        return self.head(self.encode(X))  # (N, d_Y)

    def zero_shot_logits(self, X: torch.Tensor, T: torch.Tensor) -> torch.Tensor:
        """Cosine logits (N, C) of each model against C class-text embeddings T (C, text_dim)."""
        if self.zero_shot is None:
            raise RuntimeError("model was built without text_dim: no zero-shot head")
        return self.zero_shot(self.encode(X), T)

    def text_embedding(self, X: torch.Tensor) -> torch.Tensor:
        """Each model's embedding in the text space (N, text_dim), L2-normalised."""
        if self.zero_shot is None:
            raise RuntimeError("model was built without text_dim: no zero-shot head")
        return self.zero_shot.text_embedding(self.encode(X))


@dataclass(frozen=True)
class LayerRows:
    """Layers `index` of a stack `source` (N, d_H, d_W), not gathered into a batch tensor.

    Only a model that reads each layer on its own (`WeightModel.reads_in_place`, i.e. ProbeX)
    is given these; it indexes `source` one layer at a time, so a shuffled batch costs no
    copy. Copying 128 layers of 768×768 into a batch reads and writes 300 MB, ~0.04 s, a
    quarter of a ProbeX step with 8 probes."""

    source: torch.Tensor
    index: torch.Tensor  # (B,) int64

    def __len__(self) -> int:
        return len(self.index)


class _ProbeResponses(torch.autograd.Function):
    """Z_j = Uᵀ X_iᵀ (r × d_H) for each layer X_i = source[i] and probes U (d_W × r), one layer
    at a time, so rows of a larger stack are read in place. The U gradient accumulates
    G_j X_i, one (r × d_H)·(d_H × d_W) product per layer.

    Per-layer products, measured at one thread on 384 layers of 768×768: with r < 16, Uᵀ X_iᵀ
    takes 0.14 s against 0.31 s for X_i U (a slow BLAS path for narrow outputs); at r ≥ 16 the
    two are alike and X_i U is used. Autograd's own gradient, Xᵀ G, hit the same slow path
    (1.2 s against 0.07 s for 128 layers), which once made 4 or 8 probes slower than 16."""

    @staticmethod
    def forward(
        ctx, source: torch.Tensor, index: torch.Tensor | None, U: torch.Tensor
    ) -> torch.Tensor:  # type: ignore[override]
        rows = range(len(source)) if index is None else index.tolist()
        r = U.shape[1]
        Z = torch.empty(len(rows), r, source.shape[1], dtype=U.dtype)
        if r < 16:
            Ut = U.T.contiguous()
            for j, i in enumerate(rows):
                torch.mm(Ut, source[i].T, out=Z[j])
        else:
            for j, i in enumerate(rows):
                Z[j].copy_((source[i] @ U).T)
        ctx.rows = rows
        ctx.save_for_backward(source, index, U)
        return Z

    @staticmethod
    def backward(ctx, G: torch.Tensor) -> tuple[torch.Tensor | None, None, torch.Tensor | None]:  # type: ignore[override]
        source, index, U = ctx.saved_tensors
        G = G.contiguous()
        gX = gU = None
        if ctx.needs_input_grad[0]:
            per_row = G.transpose(1, 2) @ U.T  # (B, d_H, d_W)
            gX = (
                per_row if index is None else torch.zeros_like(source).index_add_(0, index, per_row)
            )
        if ctx.needs_input_grad[2]:
            gUt = torch.zeros(U.shape[1], U.shape[0], dtype=U.dtype)
            for j, i in enumerate(ctx.rows):
                gUt.addmm_(G[j], source[i])
            gU = gUt.T
        return gX, None, gU


def probe_responses(X: torch.Tensor | LayerRows, U: torch.Tensor) -> torch.Tensor:
    """Each layer's probe responses, transposed: (N, d_H, d_W) with U (d_W, r) → (N, r, d_H),
    i.e. (X U)ᵀ per layer, with a fast gradient for U. `LayerRows` are read in place."""
    if isinstance(X, LayerRows):
        return _ProbeResponses.apply(X.source, X.index, U)
    return _ProbeResponses.apply(X, None, U)


class ProbeX(WeightModel):
    """ProbeX (Horwitz et al., CVPR 2025): probes passed through the weights, one ReLU.

    Args map to the paper: d_H, d_W — the layer's shape; r_U — number of probes U
    (d_W × r_U); r_V — width of the shared projection V (d_H × r_V); r_T — width of the
    representation e; n_classes — d_Y. The per-probe encoders M_l (r_V → r_T, summed over l)
    are implemented as their exact equivalent, one linear map on the flattened r_U·r_V
    responses.
    """

    kind = "probex"
    reads_in_place = True

    def __init__(
        self,
        d_H: int,
        d_W: int,
        n_classes: int,
        r_U: int = 128,
        r_V: int = 128,
        r_T: int = 512,
        text_dim: int | None = None,
        zs_scale: float = 10.0,
        zs_learn_scale: bool = True,
    ):
        super().__init__(r_T, n_classes, text_dim, zs_scale, zs_learn_scale)
        self.U = nn.Parameter(torch.randn(d_W, r_U) / math.sqrt(d_W))  # probes (d_W, r_U)
        self.V = nn.Linear(d_H, r_V)  # shared projection along d_H
        self.M = nn.Linear(r_U * r_V, r_T)  # Σ_l M_l as one map
        # the training models' mean layer X̄, subtracted from every input (set by `fit_stats`):
        # what all members share is nuisance, and (X − X̄) U = X U − X̄ U costs one product
        self.register_buffer("x_mean", torch.zeros(d_H, d_W))

    @torch.no_grad()
    def fit_stats(self, X: torch.Tensor) -> None:
        self.x_mean.copy_(X.mean(0))

    def encode(self, X: torch.Tensor | LayerRows) -> torch.Tensor:
        Z = probe_responses(X, self.U) - (self.x_mean @ self.U).T  # (N, r_U, d_H)
        Z = torch.relu(self.V(Z))  # (N, r_U, r_V)
        return self.M(Z.flatten(1))  # (N, r_T)


def _standardise(A: torch.Tensor) -> torch.Tensor:
    """Per-sample standardisation over all entries of A (N, …)."""
    dims = tuple(range(1, A.ndim))
    mean = A.mean(dim=dims, keepdim=True)
    std = A.std(dim=dims, keepdim=True)
    return (A - mean) / (std + 1e-6)


class MultiViewProbe(WeightModel):
    """MVProbe-style multi-view probe: first- and second-order views from both sides of X.

    Views (r probes each): X U1 (d_H × r), Xᵀ U2 (d_W × r), X (Xᵀ U3) (d_H × r) and
    Xᵀ (X U4) (d_W × r) — the Gram matrices X Xᵀ, Xᵀ X are never formed. Each view is
    standardised per sample, projected along its long axis (d_H or d_W → proj_dim), ReLU'd,
    flattened; the four are concatenated (4·r·proj_dim) and one linear map gives e (r_T).
    `preprocess` optionally centres ("center") or L2-normalises ("l2") the rows of X first.
    """

    kind = "mvprobe"

    def __init__(
        self,
        d_H: int,
        d_W: int,
        n_classes: int,
        r: int = 64,
        proj_dim: int = 32,
        r_T: int = 512,
        preprocess: str = "none",
        text_dim: int | None = None,
        zs_scale: float = 10.0,
        zs_learn_scale: bool = True,
    ):
        super().__init__(r_T, n_classes, text_dim, zs_scale, zs_learn_scale)
        if preprocess not in ("none", "center", "l2"):
            raise ValueError(f"unknown preprocess {preprocess!r}")
        self.preprocess = preprocess
        self.U1 = nn.Parameter(torch.randn(d_W, r) / math.sqrt(d_W))
        self.U2 = nn.Parameter(torch.randn(d_H, r) / math.sqrt(d_H))
        self.U3 = nn.Parameter(torch.randn(d_H, r) / math.sqrt(d_H))
        self.U4 = nn.Parameter(torch.randn(d_W, r) / math.sqrt(d_W))
        self.P = nn.ModuleList(
            [
                nn.Linear(d_H, proj_dim),
                nn.Linear(d_W, proj_dim),
                nn.Linear(d_H, proj_dim),
                nn.Linear(d_W, proj_dim),
            ]
        )  # per-view projection along the long axis
        self.out = nn.Linear(4 * r * proj_dim, r_T)

    def encode(self, X: torch.Tensor) -> torch.Tensor:
        if self.preprocess == "center":
            X = X - X.mean(dim=2, keepdim=True)
        elif self.preprocess == "l2":
            X = F.normalize(X, dim=2)
        Xt = X.transpose(1, 2)  # (N, d_W, d_H)
        views = (
            probe_responses(X, self.U1).transpose(1, 2),  # (N, d_H, r)
            Xt @ self.U2,  # (N, d_W, r)
            X @ (Xt @ self.U3),  # (N, d_H, r)
            Xt @ (X @ self.U4),  # (N, d_W, r)
        )
        feats = [
            torch.relu(P(_standardise(A).transpose(1, 2))).flatten(1)  # (N, r·proj_dim)
            for P, A in zip(self.P, views, strict=True)
        ]
        return self.out(torch.cat(feats, dim=1))  # (N, r_T)


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
        bottleneck: int | None = None,
        text_dim: int | None = None,
        zs_scale: float = 10.0,
        zs_learn_scale: bool = True,
    ):
        r_T = bottleneck or n_classes
        super().__init__(r_T, n_classes if bottleneck else 0, text_dim, zs_scale, zs_learn_scale)
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
    loop calls it), so checkpoints carry the normalisation.
    """

    kind = "statnn"

    def __init__(
        self,
        d_H: int,
        d_W: int,
        n_classes: int,
        hidden: int = 64,
        text_dim: int | None = None,
        zs_scale: float = 10.0,
        zs_learn_scale: bool = True,
    ):
        super().__init__(hidden, n_classes, text_dim, zs_scale, zs_learn_scale)
        self.register_buffer("feat_mean", torch.zeros(N_STATS))
        self.register_buffer("feat_std", torch.ones(N_STATS))
        self.mlp = nn.Sequential(
            nn.Linear(N_STATS, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU()
        )

    @torch.no_grad()
    def fit_stats(self, X: torch.Tensor) -> None:
        f = weight_statistics(X)
        self.feat_mean.copy_(f.mean(0))
        self.feat_std.copy_(f.std(0).clamp_min(1e-8) if len(f) > 1 else torch.ones(N_STATS))

    def encode(self, X: torch.Tensor) -> torch.Tensor:
        f = (weight_statistics(X) - self.feat_mean) / self.feat_std  # (N, N_STATS)
        return self.mlp(f)  # (N, hidden)


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
