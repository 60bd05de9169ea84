"""Distances between models' weights: per-layer scales, pairwise and anchor distances, the
kurtosis direction cue, distance clustering, drift removal, and a LoRA ΔW's alignment with a
candidate base."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import scipy.linalg
import torch
from scipy.cluster.hierarchy import fcluster, linkage
from scipy.spatial.distance import squareform
from threadpoolctl import threadpool_limits
from torch.utils.weak import WeakTensorKeyDictionary

from probex_core.trees.core import TreeConfig, WeightRecord


def _stack(records: Sequence[WeightRecord], layer: str) -> torch.Tensor:
    return torch.stack([r.layers[layer].reshape(-1) for r in records]).to(torch.float64)


def layer_scales(records: Sequence[WeightRecord], layers: Sequence[str]) -> dict[str, float]:
    """RMS Frobenius norm per layer over a group: the unit of the relative distance."""
    out = {}
    for name in layers:
        x = _stack(records, name)
        out[name] = float(torch.sqrt((x * x).sum(1).mean()).clamp_min(1e-12))
    return out


def pairwise_distances(
    records: Sequence[WeightRecord],
    layers: Sequence[str],
    scales: Mapping[str, float] | None = None,
) -> np.ndarray:
    """Relative weight distance between every pair, as batched matrix work (Gram matrices).

    D[i, j] = mean over layers of ‖X_i − X_j‖_F / s_l with s_l the group's RMS norm of layer l.
    Two independent inits sit near √2; fine-tunes of one model far below. Layers are
    centred on the group mean and the Gram matrix is float64, so tiny fine-tuning deltas do
    not drown in cancellation. (MoTHer's public code sums mean |ΔW|; L2 is used here because
    it reduces to one matmul.)
    """
    scales = scales or layer_scales(records, layers)
    n = len(records)
    total = torch.zeros(n, n, dtype=torch.float64)
    for name in layers:
        x = _stack(records, name)
        x = x - x.mean(0, keepdim=True)
        sq = (x * x).sum(1)
        d2 = (sq[:, None] + sq[None, :] - 2.0 * (x @ x.T)).clamp_min(0.0)
        total += d2.sqrt() / scales[name]
    d = (total / max(len(layers), 1)).numpy()
    np.fill_diagonal(d, 0.0)
    return (d + d.T) / 2.0


def distances_to(
    record: WeightRecord,
    references: Mapping[str, torch.Tensor],
    layers: Sequence[str],
    scales: Mapping[str, float],
) -> np.ndarray:
    """Relative distance of one record to k reference models (references[layer]: (k, numel))."""
    total = None
    for name in layers:
        x = record.layers[name].reshape(1, -1).to(torch.float64)
        ref = references[name].to(torch.float64)
        d = torch.linalg.vector_norm(ref - x, dim=1) / scales[name]
        total = d if total is None else total + d
    return (total / max(len(layers), 1)).numpy()


def weight_kurtosis(records: Sequence[WeightRecord], layers: Sequence[str]) -> np.ndarray:
    """Mean over layers of the excess kurtosis of each model's weights (MoTHer's direction cue)."""
    out = np.zeros(len(records))
    for name in layers:
        x = _stack(records, name)
        x = x - x.mean(1, keepdim=True)
        m2 = (x * x).mean(1).clamp_min(1e-30)
        m4 = (x**4).mean(1)
        out += (m4 / m2**2 - 3.0).numpy()
    return out / max(len(layers), 1)


def cluster_by_distance(d: np.ndarray, config: TreeConfig) -> np.ndarray:
    """Split one signature group into trees: single linkage cut at the data's own gap.

    Inside a tree every model is close to its parent, so single-linkage merge heights stay at
    fine-tuning scale; the merges that join different roots jump to init scale (≈ √2). The
    cut is placed in the largest multiplicative jump between consecutive merge heights, if
    that jump is ≥ `min_gap_ratio` and above `min_split_distance`. No such jump: one tree —
    unless even the lowest merge is above `min_split_distance` (unrelated models only).
    """
    n = d.shape[0]
    if n == 1:
        return np.zeros(1, dtype=int)
    z = linkage(squareform(d, checks=False), method="single")
    heights = np.sort(z[:, 2])
    threshold = np.inf
    best = 0.0
    for k in range(len(heights) - 1):
        lo, hi = max(heights[k], 1e-12), heights[k + 1]
        ratio = hi / lo
        if hi >= config.min_split_distance and ratio >= config.min_gap_ratio and ratio > best:
            best, threshold = ratio, float(np.sqrt(lo * hi))
    if not np.isfinite(threshold) and heights[0] >= config.min_split_distance:
        threshold = heights[0] / 2.0
    if not np.isfinite(threshold):
        return np.zeros(n, dtype=int)
    return fcluster(z, t=threshold, criterion="distance") - 1


def direction_penalty(kurt: np.ndarray, direction: str, unit: float | None = None) -> np.ndarray:
    """T[p, c] > 0 when the edge p → c goes against the kurtosis direction.

    "raise": fine-tuning raises kurtosis, so a child with lower kurtosis than its would-be
    parent is penalised; "lower": the opposite. `unit` None gives MoTHer's 0/1 T; otherwise
    T = min(violation / unit, 1), so a violation far below one typical fine-tune's kurtosis
    change (estimation noise) costs almost nothing, while reversing a real step costs fully.
    """
    if direction not in ("raise", "lower"):
        raise ValueError(f"unknown kurtosis direction {direction!r}")
    gain = kurt[None, :] - kurt[:, None]  # gain[p, c] = kurt[c] - kurt[p]
    violation = -gain if direction == "raise" else gain
    if unit is None:
        return (violation > 0).astype(float)
    return np.clip(violation / max(unit, 1e-12), 0.0, 1.0)


def layer_grams(records: Sequence[WeightRecord], layers: Sequence[str]) -> list[np.ndarray]:
    """Per layer, the Gram matrix (float64, n × n) of the models' weights, centred on their
    mean (every distance and every root-relative Gram follows from it without the weights)."""
    out = []
    for name in layers:
        x = _stack(records, name)
        x = x - x.mean(0, keepdim=True)
        out.append((x @ x.T).numpy())
    return out


def drift_removed_distances(
    grams: Sequence[np.ndarray], root: int, ranks: Sequence[int]
) -> dict[int, np.ndarray]:
    """Relative distances inside one tree after removing its k strongest drift directions.

    Fine-tunes of one root trained on related data move along a few shared directions (the
    first principal direction of the deltas W_i − W_root holds 17–30 % of their variance in
    the zoo), by amounts that grow with learning rate and steps. Along those directions the
    models line up like a chain, so a long fine-tune sits closer to a short sibling than to
    its root and a spanning tree hangs siblings under siblings (default zoo, plain D: 0.45 to
    0.81 edge accuracy on the star trees). A real child instead inherits its parent's whole
    individual delta. Removing the top-k principal directions of the deltas keeps what is
    individual to each branch; it needs only the Gram matrix of the deltas (`layer_grams`,
    shifted to the root) and its eigendecomposition, no loop over pairs. Returns {k: D_k};
    D_k[i, j] is the mean over layers of the distance divided by its mean, so layers weigh
    alike. The n × n work is numpy/LAPACK on one thread: torch's threaded eigh on these
    small matrices took 0.2–0.4 s a call when the other core was busy (vs ~2 ms).
    """
    n = grams[0].shape[0]
    total = {k: np.zeros((n, n)) for k in ranks}
    for g0 in grams:
        gram = g0 - g0[root][None, :] - g0[:, root][:, None] + g0[root, root]  # deltas' Gram
        with threadpool_limits(limits=1):
            evals, evecs = scipy.linalg.eigh(gram)
        order = np.argsort(-evals, kind="stable")
        u, s2 = evecs[:, order], np.clip(evals[order], 0.0, None)
        for k in ranks:
            g = gram - (u[:, :k] * s2[:k]) @ u[:, :k].T
            sq = np.diagonal(g)
            d = np.sqrt(np.clip(sq[:, None] + sq[None, :] - 2.0 * g, 0.0, None))
            total[k] += d / max(float(d.mean()), 1e-30)
    out = {}
    for k, t in total.items():
        d = t / max(len(grams), 1)
        d = (d + d.T) / 2.0
        np.fill_diagonal(d, 0.0)
        out[k] = d
    return out


def edge_costs(
    d: np.ndarray, kurt: np.ndarray, direction: str, config: TreeConfig, lam: float | None = None
) -> np.ndarray:
    """cost[p, c] of the edge p → c: D + λ·scale·T (MoTHer), scale = one typical edge."""
    n = d.shape[0]
    lam = config.direction_lambda if lam is None else lam
    off = d + np.diag(np.full(n, np.inf))
    if config.penalty_scale == "edge":
        scale = float(off.min(axis=1).mean())
    else:
        scale = float(d[~np.eye(n, dtype=bool)].mean())
    nearest = off.argmin(axis=1)
    unit = float(np.median(np.abs(kurt - kurt[nearest]))) if config.graded_cue else None
    return d + lam * scale * direction_penalty(kurt, direction, unit)


def adapter_alignment(delta: torch.Tensor, bases: torch.Tensor, max_rank: int = 64) -> np.ndarray:
    """How much a LoRA ΔW's top singular subspaces align with each candidate base W.

    ‖U_rᵀ W V_r‖_F / (r · rms(W)): ≈ 1 for a W unrelated to ΔW, larger for the W the adapter
    was trained on (LoRA, Hu et al. 2021, §7: ΔW amplifies directions present in W).
    delta: (d_out, d_in); bases: (m, d_out, d_in) → (m,).
    """
    subspace = _top_subspaces(delta, max_rank)
    if subspace is None:
        return np.zeros(bases.shape[0])
    ur, vr = subspace
    r = ur.shape[1]
    w = bases.to(torch.float64)
    proj = torch.einsum("hr,mhw,ws->mrs", ur, w, vr)
    rms = w.pow(2).mean(dim=(1, 2)).sqrt().clamp_min(1e-30)
    return (torch.linalg.matrix_norm(proj) / (r * rms)).numpy()


# ΔW → ((its version, max_rank), its top singular subspaces): an adapter's ΔW is aligned with
# its candidate bases in recovery, again when the router is calibrated, and again when the
# adapter is routed; the SVD (nearly all of the cost) is done once. Weak keys: an entry goes
# with its tensor; the version: a tensor changed in place is decomposed again.
_SUBSPACES = WeakTensorKeyDictionary()


def _top_subspaces(delta: torch.Tensor, max_rank: int) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(U_r, V_r) of ΔW in float64, r its numerical rank capped at `max_rank`; None for 0."""
    key = (delta._version, max_rank)
    hit = _SUBSPACES.get(delta)
    if hit is not None and hit[0] == key:
        return hit[1]
    u, s, vh = torch.linalg.svd(delta.to(torch.float64), full_matrices=False)
    subspace = None
    if s.numel() and float(s[0]) > 0:
        r = int(min(max_rank, int((s > s[0] * 1e-6).sum())))
        subspace = (u[:, :r], vh[:r].T)
    _SUBSPACES[delta] = (key, subspace)
    return subspace
