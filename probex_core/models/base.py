"""What every weight model shares: the `WeightModel` interface, the zero-shot head, and
`LayerRows` with the probe-response kernel ProbeX reads layers in place with."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from probex_core.models.config import ZERO_SHOT_DIRECTIONS, TextHeadConfig


class ZeroShotHead(nn.Module):
    """Cosine logits between a model's representation e and class-text embeddings.

    direction "text_to_weight" (the paper): texts are mapped into r_T, logits = cos(e, P t).
    direction "weight_to_text": e is mapped into the text space, logits = cos(Q e, t); every
    model of every tree then has one embedding in one shared space (`text_embedding`), so
    scores of different trees are comparable and search is a single cosine ranking.
    The temperature is stored as a log-scale (CLIP style). `learn_scale=False` keeps it fixed,
    which avoids the degenerate "sharpen everything" solution on tiny training sets.
    """

    DIRECTIONS = ZERO_SHOT_DIRECTIONS

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

    `config` holds `build_model`'s arguments as keywords (the kind under "kind"), enough to
    rebuild the model.
    """

    kind: str = ""
    # True when `encode` also takes `LayerRows` and reads them in place (no batch copy).
    reads_in_place: bool = False

    def __init__(self, r_T: int, n_classes: int, text_dim: int | None, text_head: TextHeadConfig):
        super().__init__()
        self.r_T = r_T
        self.head = nn.Linear(r_T, n_classes) if n_classes > 0 else None  # r_T → d_Y
        self.zero_shot = (
            ZeroShotHead(text_dim, r_T, text_head.scale, text_head.learn_scale, text_head.direction)
            if text_dim
            else None
        )
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

    Only a model that reads each layer on its own (`WeightModel.reads_in_place`: ProbeX, its
    class-probe variant, StatNN) is given these; it indexes `source` one layer at a time, so
    a shuffled batch costs no copy. Copying 128 layers of 768×768 into a batch reads and
    writes 300 MB, ~0.04 s, a quarter of a ProbeX step with 8 probes.

    `factors`, when given, are the whole stack's low-rank factors (P (N, d_H, r), Q (N, r,
    d_W), source[i] = P[i] Q[i] to rounding; see `low_rank_factors`): probes then pass
    through them, P (Q U), at (d_H + d_W)·r instead of d_H·d_W per probe and layer."""

    source: torch.Tensor
    index: torch.Tensor  # (B,) int64
    factors: tuple[torch.Tensor, torch.Tensor] | None = None

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
    i.e. (X U)ᵀ per layer, with a fast gradient for U. `LayerRows` are read in place, or
    through their low-rank factors when they have them."""
    if isinstance(X, LayerRows):
        if X.factors is not None:
            P, Q = (f[X.index] for f in X.factors)
            return (P @ (Q @ U)).transpose(1, 2)
        return _ProbeResponses.apply(X.source, X.index, U)
    return _ProbeResponses.apply(X, None, U)


def low_rank_factors(
    X: torch.Tensor, max_fraction: float = 0.125, tol: float = 1e-5
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Factors P (N, d_H, r), Q (N, r, d_W) with X[i] = P[i] Q[i] to rounding, when every
    layer's numerical rank (singular values above `tol` times its largest) is at most
    `max_fraction` of min(d_H, d_W) — a LoRA adapter's ΔW = B A, for one — else None. The
    first layer is checked alone first, so a full-rank stack costs one SVD."""
    limit = int(min(X.shape[1:]) * max_fraction)
    if limit < 1 or len(X) == 0:
        return None

    def rank(s: torch.Tensor) -> torch.Tensor:
        return (s > tol * s[..., :1]).sum(-1)

    if rank(torch.linalg.svdvals(X[0])) > limit:
        return None
    U, S, Vh = torch.linalg.svd(X, full_matrices=False)
    r = int(rank(S).max())
    if r > limit:
        return None
    r = max(r, 1)  # an all-zero stack still gets one (zero) factor
    return (U[..., :r] * S[:, None, :r]).contiguous(), Vh[:, :r].contiguous()
