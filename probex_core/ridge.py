"""The closed-form ridge read-out of a layer, and ProbeX warm-started from it.

`fit_ridge` solves ridge regression on the flattened layer in its dual (float64), with λ
chosen on validation; `warm_start_probex` writes that read-out into a ProbeX (probes and V
from the class maps' singular directions, V's units passing their responses linearly) as
the point its training starts from.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from probex_core.metrics import per_class_accuracy, topk_accuracy
from probex_core.models import WeightModel, build_model
from probex_core.train import Dataset, as_dataset

RIDGE_GRID = (
    1e-5,
    1e-4,
    1e-3,
    3e-3,
    1e-2,
    3e-2,
    0.1,
    0.3,
    1.0,
    3.0,
    10.0,
    30.0,
)  # λ / mean kernel diagonal
# a warm-started ProbeX's offsets: this many times the deepest training response below zero,
# so that a test model reaching further than any training model still passes linearly
OFFSET_FACTOR = 4.0
RIDGE_LOGIT_SCALE = 8.0  # logits = scale · (ŷ − 0.5): sigmoid > 0.5 exactly where ŷ > 0.5


@dataclass
class RidgeResult:
    model: WeightModel  # a Dense probe holding the closed-form weights
    best_metric: float  # validation per-class accuracy at the chosen λ
    ridge: float  # chosen λ, relative to the mean kernel diagonal
    curve: dict[float, float]  # relative λ → validation per-class accuracy


def fit_ridge(
    train: Dataset | tuple[torch.Tensor, torch.Tensor],
    val: Dataset | tuple[torch.Tensor, torch.Tensor],
    grid: Sequence[float] = RIDGE_GRID,
    single: bool = False,
) -> RidgeResult:
    """Closed-form ridge regression of the multi-hot Y on the flattened layer, λ chosen on
    validation (per-class accuracy, or top-1 with `single`: one class per model): a cheap,
    strong linear baseline beside the trained experts.

    Solved in the dual (N × N kernel of training models centred on their mean; N is in the
    hundreds while d_H·d_W is up to ~10⁶), in float64. The result is a `DenseProbe` with
    logits RIDGE_LOGIT_SCALE · (ŷ − 0.5), so every caller scores it like the other experts.
    """
    train, val = as_dataset(train), as_dataset(val)
    X = train.head(len(train)).flatten(1).double()  # (N, D)
    mu = X.mean(0)
    Xc = X - mu
    Y = train.Y.double()
    y_mean = Y.mean(0)
    K = Xc @ Xc.T  # (N, N)
    scale = float(K.diagonal().mean().clamp_min(1e-12))
    Xv = val.head(len(val)).flatten(1).double() - mu  # (N_val, D)
    Kv = Xv @ Xc.T
    evals, evecs = torch.linalg.eigh(K)
    proj = evecs.T @ (Y - y_mean)  # (N, d_Y)
    curve, best = {}, None
    for rel in grid:
        alpha = evecs @ (proj / (evals.clamp_min(0) + rel * scale)[:, None])  # (N, d_Y)
        pred = Kv @ alpha + y_mean
        if single:
            acc = topk_accuracy(pred.numpy(), val.Y.numpy(), k=1)
        else:
            acc = per_class_accuracy(val.Y.numpy(), (pred > 0.5).double().numpy())
        curve[rel] = acc
        if best is None or acc > curve[best[0]]:
            best = (rel, alpha)
    rel, alpha = best
    W = Xc.T @ alpha  # (D, d_Y)
    d_H, d_W = train.shape
    model = build_model("dense", d_H, d_W, Y.shape[1])
    with torch.no_grad():
        model.lin.weight.copy_((RIDGE_LOGIT_SCALE * W.T).float())
        model.lin.bias.copy_((RIDGE_LOGIT_SCALE * (y_mean - mu @ W - 0.5)).float())
    model.eval()
    return RidgeResult(model, curve[rel], rel, curve)


LINEAR_UNITS = ("offset", "pairs")  # how a warm start's V units pass responses linearly


@torch.no_grad()
def warm_start_probex(
    model: WeightModel, linear: WeightModel, train: Dataset, units: str = "offset"
) -> WeightModel:
    """Initialise a ProbeX from a linear read-out (`fit_ridge`'s Dense probe) of the same
    layer, so that it starts as a low-rank approximation of that read-out and training
    refines it instead of searching from random probes.

    The linear logits Σ W_c ⊙ X are written in ProbeX's own terms: probes U are the top r_U
    input-side singular directions of the stacked class maps W_c, V holds output-side ones,
    and M and the head factor the coefficients (C × r_U·r_V, rank ≤ r_T). V's units must
    pass their responses through the one ReLU linearly; `units` says how:
    - "offset": the top r_V directions, each unit offset above the
      ReLU's kink (`OFFSET_FACTOR` times its deepest training response below zero) and M's
      bias taking the offsets back out — the best rank-(r_U, r_V) approximation;
    - "pairs": the top r_V/2 directions in ± pairs, relu(v·z) − relu(−v·z) = v·z — half as
      many, but every unit sits at the kink, so gradients move the read-out gently (the
      zero-shot expert's start: trained from offset units its text head stayed at chance,
      the responses' large offsets magnifying every step of M).
    The tree's classifier is trained from both and keeps the better on validation
    (`starts.probex_starts`).
    Still the paper's architecture, only its starting point. Measured (default zoo v2.2,
    seed 0, test per-class accuracy of the start; ridge 0.916 / 0.940): conv3 64×288 starts
    at 0.897 with offsets against 0.872 in pairs, mlp-alpha's fc2 64×128 at 0.936 against
    0.920 (r_U 32, r_V 64).
    """
    if model.kind != "probex" or linear.kind != "dense" or linear.head is not None:
        raise ValueError("warm_start_probex takes a ProbeX and a Dense probe without bottleneck")
    if units not in LINEAR_UNITS:
        raise ValueError(f"units must be one of {LINEAR_UNITS}, not {units!r}")
    train = as_dataset(train)
    d_H, d_W = train.shape
    r_U, r_V, r_T = model.U.shape[1], model.V.weight.shape[0], model.M.weight.shape[0]
    n_classes = model.head.weight.shape[0]
    W = linear.lin.weight.double().view(n_classes, d_H, d_W)  # class maps W_c
    model.fit_stats(train.head(2048))  # x_mean, as train_expert sets it
    bias = linear.lin.bias.double() + (W * model.x_mean.double()).sum((1, 2))  # centred inputs
    k_U, k_V = min(r_U, d_W), min(r_V if units == "offset" else r_V // 2, d_H)
    U = torch.linalg.svd(W.reshape(-1, d_W), full_matrices=False)[2][:k_U].T  # (d_W, k_U)
    V = torch.linalg.svd(W.transpose(1, 2).reshape(-1, d_H), full_matrices=False)[2][:k_V]
    A = torch.einsum("vh,chw,wu->cuv", V, W, U)  # (C, k_U, k_V) coefficients
    coef = torch.zeros(n_classes, r_U, r_V, dtype=torch.float64)
    coef[:, :k_U, :k_V] = A
    # what the read-out does not use keeps a faint random start (exact zeros would never train)
    for p in (model.U, model.V.weight, model.M.weight, model.head.weight):
        p.mul_(1e-2)
    model.V.bias.zero_()
    model.U[:, :k_U] = U.float()
    model.V.weight[:k_V] = V.float()
    if units == "pairs":
        coef[:, :k_U, k_V : 2 * k_V] = -A
        model.V.weight[k_V : 2 * k_V] = -V.float()
    u, s, vt = torch.linalg.svd(coef.reshape(n_classes, -1), full_matrices=False)
    k = min(r_T, len(s))
    model.M.weight[:k] = (s[:k, None].sqrt() * vt[:k]).float()
    model.head.weight[:, :k] = (u[:, :k] * s[:k].sqrt()).float()
    model.head.bias.copy_(bias.float())
    model.M.bias.zero_()
    if units == "offset":
        _offset_units(model, train)
    return model


@torch.no_grad()
def _offset_units(model: WeightModel, train: Dataset) -> None:
    """Lift each V unit above the ReLU's kink for every training model, and take the
    offsets back out through M's bias, so the encoder's output is unchanged but linear."""
    deepest = torch.zeros(model.V.weight.shape[0])
    for X, _ in train.batches(256):
        deepest = torch.minimum(deepest, model.V(model.responses(X)).amin(dim=(0, 1)))
    model.V.bias.copy_(-OFFSET_FACTOR * deepest)
    r_U = model.U.shape[1]
    model.M.bias.sub_(model.M.weight @ model.V.bias.repeat(r_U))  # Z flattens as (probe, unit)


@torch.no_grad()
def warm_start_class_probes(model: WeightModel, linear: WeightModel, train: Dataset) -> WeightModel:
    """Initialise ProbeX with class probes from a linear read-out (`fit_ridge`'s Dense probe)
    of the same layer: each class map W_c (d_H × d_W) truncated to its top `rank` singular
    directions, √s_j v_j as the class's projections and √s_j u_j as its probes, and the bias
    set so the logit at the training mean is the read-out's.

    Measured (default zoo v2.2, seed 0, test per-class accuracy of this start against the
    full read-out): rank 1 / 2 read mlp-base's fc2 at 0.863 / 0.868 (ridge 0.863), mlp-alpha's
    0.932 / 0.937 (0.940), convnet-s's conv3 0.896 / 0.916 (0.916), the ViT's fc2 0.911 / 0.914
    (0.917); the LoRA tree's fc1 top-1 0.477 / 0.538, 0.585 at rank 4 (ridge 0.585).
    """
    if model.kind != "probex-classes" or linear.kind != "dense" or linear.head is not None:
        raise ValueError(
            "warm_start_class_probes takes class probes and a Dense probe without bottleneck"
        )
    train = as_dataset(train)
    d_H, d_W = train.shape
    n_classes, r = len(model.bias), model.rank
    W = linear.lin.weight.double().view(n_classes, d_H, d_W)  # class maps W_c
    model.fit_stats(train.head(2048))  # x_mean, as train_expert sets it
    P, S, Qt = torch.linalg.svd(W, full_matrices=False)  # (C, d_H, k), (C, k), (C, k, d_W)
    k = min(r, S.shape[1])
    root = S[:, :k].sqrt()
    V = torch.zeros(n_classes, r, d_H, dtype=torch.float64)
    U = torch.zeros(n_classes, r, d_W, dtype=torch.float64)
    V[:, :k] = (P[:, :, :k] * root[:, None]).transpose(1, 2)
    U[:, :k] = Qt[:, :k] * root[:, :, None]
    model.V.copy_(V.reshape(-1, d_H).float())
    model.U.copy_(U.reshape(-1, d_W).T.float())
    model.bias.copy_((linear.lin.bias.double() + (W * model.x_mean.double()).sum((1, 2))).float())
    return model
