"""ProbeX (probes, a shared projection, a representation), ProbeX with class probes, and the
multi-view variant."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from probex_core.models.base import LayerRows, WeightModel, probe_responses
from probex_core.models.config import (
    ClassProbeConfig,
    MultiViewConfig,
    ProbeXConfig,
    TextHeadConfig,
)


class _CentredProbes:
    """Probes U (d_W × k) passed through layers centred on the training models' mean X̄
    (`x_mean`, set by `fit_stats`): what all members share is nuisance, and
    (X − X̄) U = X U − X̄ U costs one product."""

    U: nn.Parameter
    x_mean: torch.Tensor

    @torch.no_grad()
    def fit_stats(self, X: torch.Tensor) -> None:
        self.x_mean.copy_(X.mean(0))

    def responses(self, X: torch.Tensor | LayerRows) -> torch.Tensor:
        """The probes' responses to the centred layers, (X − X̄) U transposed: (N, k, d_H)."""
        return probe_responses(X, self.U) - (self.x_mean @ self.U).T


class ProbeX(_CentredProbes, WeightModel):
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
        config: ProbeXConfig = ProbeXConfig(),
        text_dim: int | None = None,
        text_head: TextHeadConfig = TextHeadConfig(),
    ):
        super().__init__(config.r_T, n_classes, text_dim, text_head)
        r_U, r_V, r_T = config.r_U, config.r_V, config.r_T
        self.U = nn.Parameter(torch.randn(d_W, r_U) / math.sqrt(d_W))  # probes (d_W, r_U)
        self.V = nn.Linear(d_H, r_V)  # shared projection along d_H
        self.M = nn.Linear(r_U * r_V, r_T)  # Σ_l M_l as one map
        self.register_buffer("x_mean", torch.zeros(d_H, d_W))

    def encode(self, X: torch.Tensor | LayerRows) -> torch.Tensor:
        Z = torch.relu(self.V(self.responses(X)))  # (N, r_U, r_V)
        return self.M(Z.flatten(1))  # (N, r_T)


class ClassProbeX(_CentredProbes, WeightModel):
    """ProbeX with class probes (our variant, not the paper's): class c reads the centred
    layer through `rank` probes of its own, u_cj (d_W), and projects each response with a
    vector of its own, v_cj (d_H): logit_c = Σ_j v_cjᵀ (X − X̄) u_cj + b_c. Each class map
    is a rank-`rank` matrix Σ_j v_cj u_cjᵀ: (d_H + d_W)·rank·d_Y + d_Y parameters against
    Dense's d_H·d_W·d_Y. A fine-tune's class leaves about a rank-one mark on a layer (its
    images' activations times their error signals), so the class maps of the ridge
    read-out keep its accuracy at rank 1–2 (`ridge.warm_start_class_probes`), while the
    paper's shared probes and representation must hold every class direction at once.
    Linear: the representation e is the logit vector (r_T = d_Y), as Dense's is.
    """

    kind = "probex-classes"
    reads_in_place = True

    def __init__(
        self,
        d_H: int,
        d_W: int,
        n_classes: int,
        config: ClassProbeConfig = ClassProbeConfig(),
        text_dim: int | None = None,
        text_head: TextHeadConfig = TextHeadConfig(),
    ):
        super().__init__(n_classes, 0, text_dim, text_head)
        k = n_classes * config.rank
        self.rank = config.rank
        self.U = nn.Parameter(torch.randn(d_W, k) / math.sqrt(d_W))  # probes, class-major
        self.V = nn.Parameter(torch.randn(k, d_H) / math.sqrt(d_H))  # one projection each
        self.bias = nn.Parameter(torch.zeros(n_classes))
        self.register_buffer("x_mean", torch.zeros(d_H, d_W))

    def encode(self, X: torch.Tensor | LayerRows) -> torch.Tensor:
        per_probe = (self.responses(X) * self.V).sum(-1)  # (N, d_Y·rank)
        return per_probe.view(len(per_probe), -1, self.rank).sum(-1) + self.bias  # (N, d_Y)

    def forward(self, X: torch.Tensor | LayerRows) -> torch.Tensor:
        return self.encode(X)


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
        config: MultiViewConfig = MultiViewConfig(),
        text_dim: int | None = None,
        text_head: TextHeadConfig = TextHeadConfig(),
    ):
        super().__init__(config.r_T, n_classes, text_dim, text_head)
        r, proj_dim, r_T = config.r, config.proj_dim, config.r_T
        self.preprocess = config.preprocess
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
