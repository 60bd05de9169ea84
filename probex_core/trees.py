"""Model Tree recovery from weights alone (MoTHer, Horwitz et al. 2025).

Cards lie or are missing; the weights do not. Models are grouped by architecture signature,
clustered into trees by weight distance, and inside every tree a minimum directed spanning
arborescence (Chu-Liu/Edmonds) over `D + λ·scale·T` (T: the kurtosis direction cue) gives
each model's parent. The root is the tree's medoid, and D is measured after removing the
few directions that all fine-tunes of the tree drift along (see `drift_removed_distances`).
Declared `base_model` edges are only hints: they vote the kurtosis direction, choose among
a handful of structure settings, and are checked against the recovered edges.

LoRA adapters carry only ΔW = B @ A, so they have their own signature and their base (a full
model) is never in their group. An adapter is attached to the full model whose layers it
adapts (same names and shapes); when several full models qualify, the weights decide: the
top singular subspaces of a trained ΔW align with its base W (LoRA paper §7), so the
candidate with the largest alignment wins. Adapters are leaves: every adapter edge is
base → adapter.

Hub-scale metadata trees (declared edges only) are rebuilt with a DuckDB recursive query.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import networkx as nx
import numpy as np
import scipy.linalg
import torch
from scipy.cluster.hierarchy import fcluster, linkage
from scipy.spatial.distance import squareform
from threadpoolctl import threadpool_limits

from probex_core.canon import find_layers
from probex_core.catalog import load_sql

_HEAD_NAME = re.compile(
    r"(^|\.)(head|heads|classifier|lm_head|score|logits|fc_out|output_layer)(\.|$)|^fc$"
)


@dataclass(frozen=True)
class WeightRecord:
    """What tree recovery needs from one repo: its signature, its card hint, a few layers."""

    repo_id: str  # hub id "org/name"
    signature: str  # architecture_signature() of the repo's tensor names and shapes
    declared_base: str | None  # base_model from the card / adapter_config (a hint only)
    layers: dict[str, torch.Tensor]  # canonical 2-D layers, same names within a signature
    adapter: bool = False  # True for a LoRA adapter repo (layers hold ΔW = B @ A)


@dataclass(frozen=True)
class TreeConfig:
    """Knobs of `recover_trees`."""

    direction_lambda: float = 0.3  # λ of MoTHer's cost D + λ·scale·T (public code: 0.3)
    graded_cue: bool = True  # T grows with the kurtosis violation (capped at 1), not a 0/1 step
    sibling_cos: float = 0.1  # lift c from p to p's parent when cos∠(g, p, c) exceeds this
    penalty_scale: str = "edge"  # scale: "edge" = mean nearest-neighbour distance, "mean" = mean(D)
    # "raise" | "lower" | "auto": per tree, the majority of its declared edges, else the side of
    # the kurtosis distribution the root sits on
    kurtosis_direction: str = "auto"
    min_direction_votes: int = 3  # declared in-tree edges needed before they vote or choose
    # candidate numbers of shared drift directions removed before measuring edges
    drift_ranks: tuple[int, ...] = (0, 1, 2, 3, 4, 6, 8)
    # declared edges may pick the root among this many most central models, and this many − 1
    # of either kurtosis extreme and of the bases cards name most (that name no base)
    root_candidates: int = 3
    min_gap_ratio: float = 2.5  # a merge-height jump at least this large separates trees
    min_split_distance: float = 0.5  # relative distance below which models are never split
    min_adapter_alignment: float = 1.5  # LoRA: alignment a base must reach to count as found


@dataclass(frozen=True)
class ModelAssignment:
    """One repo's place in the recovered forest."""

    repo_id: str  # hub id
    tree_id: str  # "tree-<12 hex of sha1(root repo id)>"
    parent: str | None  # recovered parent repo id; None for a root
    depth: int  # edges from the root
    is_root: bool  # True for the tree's root
    signature: str  # architecture signature of the repo


@dataclass(frozen=True)
class TreeInfo:
    """One recovered tree."""

    tree_id: str  # stable id derived from the root repo id
    root: str  # root repo id
    size: int  # number of models, root included
    signature: str  # the root's architecture signature
    kind: str  # "full" (full fine-tunes only), "lora" (root + adapters) or "mixed"
    direction: str  # kurtosis direction used inside this tree ("raise" | "lower")
    structure: dict = field(default_factory=dict)  # asdict(TreeStructure): how edges were found


@dataclass(frozen=True)
class Disagreement:
    """A declared base_model that the weights contradict."""

    repo_id: str  # the repo whose card declares a base
    declared_base: str  # what the card claims
    recovered_parent: str | None  # what the weights say
    declared_in_same_tree: bool  # the claimed base is at least in the recovered tree
    declared_known: bool  # the claimed base is a repo we have weights for


@dataclass
class TreeRecovery:
    """The recovered forest: per-repo assignments, per-tree summaries, card disagreements."""

    models: dict[str, ModelAssignment]
    trees: dict[str, TreeInfo]
    disagreements: list[Disagreement]
    directions: dict[str, str]  # tree id → kurtosis direction used
    seconds: float = 0.0  # wall time of the recovery

    def model_rows(self) -> list[dict]:
        """Rows for a `models`-style catalog table (one per repo)."""
        return [asdict(m) for m in self.models.values()]

    def tree_rows(self) -> list[dict]:
        """Rows for the `trees` catalog table."""
        return [asdict(t) for t in self.trees.values()]

    def disagreement_rows(self) -> list[dict]:
        """Rows for the card-disagreement table."""
        return [asdict(d) for d in self.disagreements]

    def members(self, tree_id: str) -> list[str]:
        """Repo ids of one tree, root first."""
        ms = [m for m in self.models.values() if m.tree_id == tree_id]
        return [m.repo_id for m in sorted(ms, key=lambda m: (m.depth, m.repo_id))]


def architecture_signature(tensor_shapes: Mapping[str, Sequence[int]]) -> str:
    """Hash of the sorted tensor names and shapes: models that can share a tree share it.

    A classification head keeps its name but not its shape: fine-tunes of one root get
    heads of different widths (their label sets differ) and still belong to one tree.
    Dtypes are left out too: a bf16 copy of a model is still the same tree.
    """
    items = sorted(
        (name, [] if is_head_layer(_module_of(name)) else [int(s) for s in shape])
        for name, shape in tensor_shapes.items()
    )
    return hashlib.sha1(json.dumps(items, separators=(",", ":")).encode()).hexdigest()[:16]


def _module_of(tensor_name: str) -> str:
    return (
        tensor_name.rsplit(".", 1)[0] if tensor_name.endswith((".weight", ".bias")) else tensor_name
    )


def tree_id_for(root_repo: str) -> str:
    """Stable tree id of a root: the same root gives the same id across runs and hubs."""
    return "tree-" + hashlib.sha1(root_repo.encode()).hexdigest()[:12]


def is_head_layer(name: str) -> bool:
    """Classification heads change shape with the label set, so they never define a tree."""
    return bool(_HEAD_NAME.search(name))


def choose_recovery_layers(
    tensor_shapes: Mapping[str, Sequence[int]], max_layers: int = 4
) -> list[str]:
    """Canonical layer names (canon.find_layers) to read for tree recovery and routing.

    Adapters: their LoRA layers (ΔW). Full models: hidden 2-D/conv layers, heads excluded,
    square-ish and large first — they carry most of the init-specific "nuisance" that tells
    trees apart, and their shapes do not depend on the task.
    """
    specs = find_layers(tensor_shapes)
    lora = [s for s in specs.values() if s.kind == "lora" and not is_head_layer(s.name)]
    if lora:
        pool = lora
    else:
        pool = [
            s
            for s in specs.values()
            if s.kind in ("linear", "conv") and not is_head_layer(s.name) and min(s.shape) >= 2
        ]

    def rank(s):  # square-ish first (aspect ≤ 4), then larger smaller side, then size, name
        aspect = max(s.shape) / min(s.shape)
        return (aspect > 4, -min(s.shape), -(s.shape[0] * s.shape[1]), s.name)

    return [s.name for s in sorted(pool, key=rank)[:max_layers]]


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


def arborescence(
    d: np.ndarray,
    kurt: np.ndarray,
    direction: str,
    root: int,
    config: TreeConfig,
    lam: float | None = None,
    lift: bool = True,
) -> np.ndarray:
    """Parent index of every model (-1 for `root`) from D + λ·scale·T (Chu-Liu/Edmonds).

    MoTHer scales the penalty by mean(D). In a deep or wide tree mean(D) grows with the
    tree's diameter while an edge stays one fine-tune long, so λ·mean(D) outgrows the gap
    between a parent (one step away) and a grandparent (√2 steps), and kurtosis noise then
    rewires edges. The default scale is therefore the mean nearest-neighbour distance — one
    typical edge — which keeps the cue a tie-breaker for direction, as intended. `lift`
    applies `lift_siblings` afterwards.
    """
    n = d.shape[0]
    if n == 1:
        return np.array([-1])
    cost = edge_costs(d, kurt, direction, config, lam)
    root_cost = np.full(n, np.inf)
    root_cost[root] = 0.0
    parent = min_arborescence(cost, root_cost)
    return lift_siblings(parent, d, config.sibling_cos) if lift else parent


@dataclass(frozen=True)
class TreeStructure:
    """How one tree's edges were recovered (written to the catalog beside the tree)."""

    direction: str  # kurtosis direction ("raise" | "lower")
    drift_rank: int  # shared drift directions removed before measuring edges
    lam: float  # weight of the kurtosis cue
    lift: bool  # siblings lifted (`lift_siblings`)
    declared_edges: int  # declared in-tree edges that chose the settings (0: defaults)
    agreement: float  # share of those the recovered edges reproduce (NaN without any)


def tree_structure(
    records: Sequence[WeightRecord],
    d: np.ndarray,
    kurt: np.ndarray,
    config: TreeConfig,
) -> tuple[np.ndarray, TreeStructure]:
    """Root, kurtosis direction and parents of one tree's models.

    The root is a central model: a root is the hub its fine-tunes spread around. It was the
    medoid (smallest mean distance to the others) of all six zoo trees checked, while its
    kurtosis sat at the low end in some trees and at the high end in another, so kurtosis
    cannot pick it. The direction is voted by declared edges or read from the root's side of
    the kurtosis distribution. The structure settings (drift rank k, λ, sibling lift) are
    chosen, with the medoid as root, by how many declared in-tree edges they reproduce; then
    other plausible roots are tried with those settings: the next most central models, the
    kurtosis extremes (in a narrow deep tree a level-1 model can be the medoid, while
    MoTHer's kurtosis cue still marks the root) and the bases that cards name most; if a
    new root wins, the settings are chosen again around it. Ties keep the earlier choice
    (medoid, smaller k, λ = 0, no lift). Lying cards are a small minority, so they do
    not steer the choice. Without enough declared edges MoTHer's plain rule decides (no drift
    removed, the root whose kurtosis-penalised arborescence is cheapest).
    """
    n = len(records)
    if n == 1:
        return np.array([-1]), TreeStructure(config.kurtosis_direction, 0, 0.0, False, 0, np.nan)
    pos = {r.repo_id: i for i, r in enumerate(records)}
    declared = [
        (i, pos[r.declared_base])
        for i, r in enumerate(records)
        if r.declared_base in pos and r.declared_base != r.repo_id
    ]
    m = config.root_candidates
    by_kurt = np.argsort(kurt, kind="stable")
    has_base = {c for c, _ in declared}
    named = Counter(p for _, p in declared if p not in has_base)  # cards point up to these
    candidates = [int(i) for i in np.argsort(d.sum(axis=1), kind="stable")[:m]]
    for i in [
        *by_kurt[: m - 1],  # MoTHer's cue: the kurtosis extremes
        *by_kurt[::-1][: m - 1],
        *(p for p, _ in named.most_common(m - 1)),  # most-named bases that name no base
    ]:
        if int(i) not in candidates:
            candidates.append(int(i))
    grams = layer_grams(records, sorted(records[0].layers))
    ranks = sorted({k for k in config.drift_ranks if k < n - 1} | {0})

    def direction_for(root: int) -> str:
        if config.kurtosis_direction != "auto":
            return config.kurtosis_direction
        voted = _vote_direction(((kurt[p], kurt[c]) for c, p in declared), config)
        return voted or ("raise" if np.median(kurt) >= kurt[root] else "lower")

    root = candidates[0]
    dists = drift_removed_distances(grams, root, ranks)
    if len(declared) < config.min_direction_votes:
        # no cards to choose with: MoTHer's plain rule — the root whose arborescence over
        # D + λ·scale·T (each candidate with its own direction) costs least
        best_cost = np.inf
        for cand in candidates:
            direction = direction_for(cand)
            cost = edge_costs(dists[0], kurt, direction, config)
            parent = arborescence(dists[0], kurt, direction, cand, config, lift=False)
            total = float(cost[parent[parent >= 0], np.flatnonzero(parent >= 0)].sum())
            if total < best_cost:
                best_cost, root, chosen = total, cand, direction
        parent = arborescence(dists[0], kurt, chosen, root, config)
        return parent, TreeStructure(chosen, 0, config.direction_lambda, True, 0, np.nan)
    child, par = np.array(declared).T

    def solve(root: int, k: int, dist: np.ndarray, lam: float, lift: bool):
        direction = direction_for(root)
        parent = arborescence(dist, kurt, direction, root, config, lam, lift)
        agree = float((parent[child] == par).mean())
        return agree, parent, TreeStructure(direction, k, lam, lift, len(declared), agree)

    best = None
    for k in ranks:  # settings, with the medoid as the root
        for lam in (0.0, config.direction_lambda):
            for lift in (False, True):
                trial = solve(root, k, dists[k], lam, lift)
                if best is None or trial[0] > best[0]:
                    best = trial
    assert best is not None
    s = best[2]

    def mother_cost(parent: np.ndarray, direction: str) -> float:
        cost = edge_costs(dists[0], kurt, direction, config)
        return float(cost[parent[parent >= 0], np.flatnonzero(parent >= 0)].sum())

    # then other plausible roots with those settings; the cards decide, and where they cannot
    # (undocumented children of the root), MoTHer's cost does
    ranked = [(best[0], -mother_cost(best[1], s.direction), 0, best)]
    for j, other in enumerate(candidates[1:], start=1):
        dist = drift_removed_distances(grams, other, [s.drift_rank])[s.drift_rank]
        trial = solve(other, s.drift_rank, dist, s.lam, s.lift)
        ranked.append((trial[0], -mother_cost(trial[1], trial[2].direction), -j, trial))
    best = max(ranked, key=lambda t: t[:3])[3]
    root = int(np.flatnonzero(best[1] < 0)[0])
    if root != candidates[0]:  # a new root: choose the settings again around it
        dists = drift_removed_distances(grams, root, ranks)
        for k in ranks:
            for lam in (0.0, config.direction_lambda):
                for lift in (False, True):
                    trial = solve(root, k, dists[k], lam, lift)
                    if trial[0] > best[0]:
                        best = trial
    return best[1], best[2]


def lift_siblings(parent: np.ndarray, d: np.ndarray, cos_min: float) -> np.ndarray:
    """Re-hang c from p to p's parent g when p does not lie between g and c.

    Fine-tunes of one root drift the same way (shared data, weight decay), so a long
    fine-tune sits slightly closer to a short sibling than to their common parent and the
    arborescence hangs it under the sibling. A true grandchild's update is independent of
    (or continues) its parent's, so the angle at p in the triangle (g, p, c) is ≥ ~90°;
    a mis-hung sibling makes it acute. cos∠ comes from distances alone (law of cosines);
    on the tiny zoo true chains show cos ≤ 0.04 and mis-hung siblings ≥ 0.13.
    """
    parent = parent.copy()
    for _ in range(len(parent)):
        changed = False
        for c in range(len(parent)):
            p = parent[c]
            if p < 0 or parent[p] < 0:
                continue
            g = parent[p]
            cos = (d[g, p] ** 2 + d[p, c] ** 2 - d[g, c] ** 2) / max(2 * d[g, p] * d[p, c], 1e-30)
            if cos > cos_min:
                parent[c] = g
                changed = True
        if not changed:
            break
    return parent


def min_arborescence(cost: np.ndarray, root_cost: np.ndarray | None = None) -> np.ndarray:
    """Minimum spanning arborescence of a dense digraph, any root (cost[p, c]: edge p → c).

    A virtual root with one very expensive edge to every node (plus `root_cost[v]`, a prior
    on v being the root) makes the best root part of the optimisation: exactly one of those
    edges is used. Chu-Liu/Edmonds in Tarjan's
    contraction-forest form on a dense matrix: O(n²) numpy work, O(n) Python steps. (The
    networkx implementation copies its multigraph at each contraction and took ~10 s for a
    100-model tree here; a tree's root is absorbed into one growing cycle after another, so
    the textbook recursion is n levels deep.) Returns parent indices, -1 for the root.
    """
    n = cost.shape[0]
    finite = cost[np.isfinite(cost)]
    big = (n + 1) * (float(np.abs(finite).max()) if finite.size else 1.0) + 1.0
    full = np.full((n + 1, n + 1), np.inf)
    full[1:, 1:] = cost
    full[0, 1:] = big + (0.0 if root_cost is None else root_cost)
    return _edmonds_dense(full, 0)[1:] - 1


def _edmonds_dense(cost: np.ndarray, root: int) -> np.ndarray:
    """Parent of every node in the minimum arborescence rooted at `root`."""
    n = cost.shape[0]
    w = cost.astype(float).copy()
    np.fill_diagonal(w, np.inf)
    w[:, root] = np.inf
    src = np.repeat(np.arange(n)[:, None], n, axis=1)  # src[a, b]: original tail of slot edge a→b
    dst = np.repeat(np.arange(n)[None, :], n, axis=0)  # dst[a, b]: original head
    node_of = list(range(n))  # slot → contraction-forest node currently living there
    up: list[int] = [-1] * n  # forest parent
    kids: list[list[int]] = [[] for _ in range(n)]
    inedge: list[tuple[int, int]] = [(-1, -1)] * n  # forest node → chosen original edge
    w_in = np.zeros(n)
    done = np.zeros(n, dtype=bool)
    done[root] = True
    on_path = np.zeros(n, dtype=bool)
    rows = np.arange(n)
    for start in range(n):
        if done[start]:
            continue
        path = [start]
        on_path[start] = True
        while True:
            a = path[-1]
            b = int(np.argmin(w[:, a]))
            inedge[node_of[a]] = (int(src[b, a]), int(dst[b, a]))
            w_in[a] = w[b, a]
            if done[b]:
                done[path] = True
                on_path[path] = False
                break
            if not on_path[b]:
                path.append(b)
                on_path[b] = True
                continue
            cyc = []
            while True:
                x = path.pop()
                cyc.append(x)
                if x == b:
                    break
            cyc_a = np.array(cyc)
            new_id = len(up)
            up.append(-1)
            kids.append([node_of[x] for x in cyc])
            inedge.append((-1, -1))
            for x in cyc:
                up[node_of[x]] = new_id
            col = w[:, cyc_a] - w_in[cyc_a][None, :]  # entering the cycle replaces one edge
            ci = col.argmin(axis=1)
            row = w[cyc_a, :]
            ri = row.argmin(axis=0)
            keep = cyc[0]
            new_col = col[rows, ci]
            new_src_c, new_dst_c = src[rows, cyc_a[ci]], dst[rows, cyc_a[ci]]
            new_row = row[ri, rows]
            new_src_r, new_dst_r = src[cyc_a[ri], rows], dst[cyc_a[ri], rows]
            w[:, keep], src[:, keep], dst[:, keep] = new_col, new_src_c, new_dst_c
            w[keep, :], src[keep, :], dst[keep, :] = new_row, new_src_r, new_dst_r
            w[cyc_a, :] = np.inf
            w[:, cyc_a] = np.inf
            in_cycle = np.zeros(n, dtype=bool)
            in_cycle[cyc_a] = True
            w[keep, :] = np.where(in_cycle, np.inf, new_row)
            w[:, keep] = np.where(in_cycle, np.inf, new_col)
            w[:, root] = np.inf
            done[cyc_a] = True  # retired slots (keep is reopened below)
            done[keep] = False
            on_path[cyc_a] = False
            node_of[keep] = new_id
            path.append(keep)
            on_path[keep] = True
    parent = np.full(n, -1)
    deleted = [False] * len(up)
    roots: list[int] = []

    def dismantle(leaf: int, top: int | None) -> None:
        prev, y = -1, leaf
        while y != -1:
            deleted[y] = True
            roots.extend(k for k in kids[y] if k != prev)
            if y == top:
                break
            prev, y = y, up[y]

    dismantle(root, None)
    roots.extend(x for x in range(len(up)) if up[x] == -1)
    while roots:
        x = roots.pop()
        if deleted[x]:
            continue
        u, v = inedge[x]
        parent[v] = u
        dismantle(v, x)
    return parent


def adapter_alignment(delta: torch.Tensor, bases: torch.Tensor, max_rank: int = 64) -> np.ndarray:
    """How much a LoRA ΔW's top singular subspaces align with each candidate base W.

    ‖U_rᵀ W V_r‖_F / (r · rms(W)): ≈ 1 for a W unrelated to ΔW, larger for the W the adapter
    was trained on (LoRA, Hu et al. 2021, §7: ΔW amplifies directions present in W).
    delta: (d_out, d_in); bases: (m, d_out, d_in) → (m,).
    """
    u, s, vh = torch.linalg.svd(delta.to(torch.float64), full_matrices=False)
    if s.numel() == 0 or float(s[0]) <= 0:
        return np.zeros(bases.shape[0])
    r = int(min(max_rank, int((s > s[0] * 1e-6).sum())))
    ur, vr = u[:, :r], vh[:r].T
    w = bases.to(torch.float64)
    proj = torch.einsum("hr,mhw,ws->mrs", ur, w, vr)
    rms = w.pow(2).mean(dim=(1, 2)).sqrt().clamp_min(1e-30)
    return (torch.linalg.matrix_norm(proj) / (r * rms)).numpy()


def _depths(parent: Mapping[str, str | None]) -> dict[str, int]:
    depth: dict[str, int] = {}
    for node in parent:
        chain, cur = [], node
        while cur is not None and cur not in depth and cur not in chain:
            chain.append(cur)
            cur = parent.get(cur)
        base = depth.get(cur, -1) if cur is not None else -1
        for i, c in enumerate(reversed(chain)):
            depth[c] = base + 1 + i
    return depth


def _vote_direction(votes: Iterable[tuple[float, float]], config: TreeConfig) -> str | None:
    """Majority over declared (parent, child) kurtosis pairs; None when too few votes."""
    pairs = list(votes)
    if len(pairs) < config.min_direction_votes:
        return None
    up = sum(kc > kp for kp, kc in pairs)
    return "raise" if up * 2 >= len(pairs) else "lower"


def recover_trees(
    records: Sequence[WeightRecord], config: TreeConfig | None = None
) -> TreeRecovery:
    """Recover every model's tree, parent and root from weights alone.

    1. group full models by signature; 2. cluster each group by relative weight distance;
    3. inside each cluster, MoTHer's arborescence; 4. attach LoRA adapters to their base;
    5. compare with declared bases.
    """
    config = config or TreeConfig()
    start = time.perf_counter()
    by_id = {r.repo_id: r for r in records}
    if len(by_id) != len(records):
        raise ValueError("duplicate repo ids in records")
    full = [r for r in records if not r.adapter]
    adapters = [r for r in records if r.adapter]

    groups: dict[str, list[WeightRecord]] = defaultdict(list)
    for r in full:
        groups[r.signature].append(r)

    clusters: list[tuple[str, list[WeightRecord], np.ndarray, np.ndarray]] = []
    for sig, recs in sorted(groups.items()):
        layers = sorted(recs[0].layers)
        missing = [r.repo_id for r in recs if sorted(r.layers) != layers]
        if missing:
            raise ValueError(f"signature {sig}: records {missing[:3]} lack layers {layers}")
        d = pairwise_distances(recs, layers)
        kurt = weight_kurtosis(recs, layers)
        labels = cluster_by_distance(d, config)
        for lab in np.unique(labels):
            idx = np.flatnonzero(labels == lab)
            clusters.append((sig, [recs[i] for i in idx], d[np.ix_(idx, idx)], kurt[idx]))

    parent: dict[str, str | None] = {}
    sig_of: dict[str, str] = {}
    structure: dict[str, TreeStructure] = {}  # by root repo
    for sig, recs, d, kurt in clusters:
        par, setting = tree_structure(recs, d, kurt, config)
        for i, r in enumerate(recs):
            parent[r.repo_id] = recs[par[i]].repo_id if par[i] >= 0 else None
            sig_of[r.repo_id] = sig
        structure[recs[int(np.flatnonzero(par < 0)[0])].repo_id] = setting

    absent = absent_bases(adapters)
    for a in adapters:
        parent[a.repo_id] = _adapter_base(a, full, config) or absent[a.repo_id]
        sig_of[a.repo_id] = a.signature

    depth = _depths(parent)
    root_of: dict[str, str] = {}
    for repo in parent:
        cur = repo
        while parent.get(cur) is not None:
            cur = parent[cur]
        root_of[repo] = cur

    models = {
        repo: ModelAssignment(
            repo_id=repo,
            tree_id=tree_id_for(root_of[repo]),
            parent=parent[repo],
            depth=depth[repo],
            is_root=parent[repo] is None,
            signature=sig_of.get(repo, ""),
        )
        for repo in sorted(parent)
    }
    members: dict[str, list[str]] = defaultdict(list)
    for m in models.values():
        members[m.tree_id].append(m.repo_id)
    trees = {}
    for tid, reps in sorted(members.items()):
        root = root_of[reps[0]]
        n_adapt = sum(by_id[r].adapter for r in reps)
        n_full = len(reps) - n_adapt  # an absent base is no member: then all are adapters
        kind = "full" if n_adapt == 0 else "lora" if n_full == int(root in by_id) else "mixed"
        sig = sig_of.get(root, "")
        setting = structure.get(root)
        trees[tid] = TreeInfo(
            tid,
            root,
            len(reps),
            sig,
            kind,
            setting.direction if setting else "",
            asdict(setting) if setting else {},
        )

    disagreements = []
    for r in records:
        if r.declared_base is None or parent[r.repo_id] in (
            r.declared_base,
            absent[r.repo_id] if r.repo_id in absent and r.declared_base else None,
        ):
            continue
        known = r.declared_base in models
        same = known and models[r.declared_base].tree_id == models[r.repo_id].tree_id
        disagreements.append(
            Disagreement(r.repo_id, r.declared_base, parent[r.repo_id], same, known)
        )
    directions = {tid: t.direction for tid, t in trees.items() if t.direction}
    return TreeRecovery(models, trees, disagreements, directions, time.perf_counter() - start)


ABSENT = "absent:"  # prefix of a tree root that is not in the hub (adapters of a missing base)


def absent_bases(adapters: Sequence[WeightRecord]) -> dict[str, str]:
    """Per adapter, the name of its base in case that base is not in the hub.

    Adapters of one absent base (Model-J's LoRAs of Stable Diffusion) form one tree: those
    that declare the same base and adapt the same layers (one signature) share a root named
    `absent:<declared base>`; undeclared ones `absent:unknown-base`. A name that two
    signatures would share gets `@<signature prefix>` so each tree keeps one architecture.
    """
    names = {a.repo_id: f"{ABSENT}{a.declared_base or 'unknown-base'}" for a in adapters}
    sigs: dict[str, set[str]] = defaultdict(set)
    for a in adapters:
        sigs[names[a.repo_id]].add(a.signature)
    return {
        a.repo_id: names[a.repo_id]
        + (f"@{a.signature[:8]}" if len(sigs[names[a.repo_id]]) > 1 else "")
        for a in adapters
    }


def adapter_candidates(adapter: WeightRecord, full: Sequence[WeightRecord]) -> list[WeightRecord]:
    """Full models holding every layer the adapter adapts, with the same (d_out, d_in)."""
    want = {n: tuple(t.shape) for n, t in adapter.layers.items()}
    return [
        f
        for f in full
        if all(n in f.layers and tuple(f.layers[n].shape) == s for n, s in want.items())
    ]


def _adapter_base(a: WeightRecord, full: Sequence[WeightRecord], config: TreeConfig) -> str | None:
    """The full model an adapter was trained on: by shape, then by subspace alignment.

    With one candidate the shapes decide. With several, the weights decide when one
    candidate's alignment reaches `min_adapter_alignment`; otherwise the declared base is
    used if it is a candidate (the hint), else the best-aligned candidate.
    """
    cands = adapter_candidates(a, full)
    if not cands:
        return None
    if len(cands) == 1:
        return cands[0].repo_id
    score = np.zeros(len(cands))
    for name, delta in a.layers.items():
        score += adapter_alignment(delta, torch.stack([c.layers[name] for c in cands]))
    score /= max(len(a.layers), 1)
    best = int(np.argmax(score))
    if score[best] >= config.min_adapter_alignment:
        return cands[best].repo_id
    ids = [c.repo_id for c in cands]
    if a.declared_base in ids:
        return a.declared_base
    return cands[best].repo_id


# ---- scores against ground truth -------------------------------------------------------------


@dataclass(frozen=True)
class TruthEntry:
    """Ground truth for one repo (from the zoo manifest)."""

    tree_id: str  # true tree id
    parent: str | None  # true parent repo id; None for a root


def truth_from_manifest(path: str | Path) -> dict[str, TruthEntry]:
    """Read `DIR/manifest.json` (or DIR) into {repo_id: TruthEntry}; evaluation only."""
    p = Path(path)
    if p.is_dir():
        p = p / "manifest.json"
    manifest = json.loads(p.read_text())
    return {m["repo_id"]: TruthEntry(m["tree_id"], m.get("parent")) for m in manifest["models"]}


def score_recovery(recovery: TreeRecovery, truth: Mapping[str, TruthEntry]) -> dict:
    """Cluster purity, ARI, directed edge accuracy (overall and per true tree), root accuracy.

    Only repos present in both are scored. Edge accuracy counts every non-root model whose
    recovered parent is its true parent; root accuracy counts true trees whose root is
    recovered as a root of the tree holding most of its members.
    """
    from sklearn.metrics import adjusted_rand_score

    repos = sorted(set(truth) & set(recovery.models))
    if not repos:
        raise ValueError("no repo is both recovered and in the truth")
    true_t = [truth[r].tree_id for r in repos]
    pred_t = [recovery.models[r].tree_id for r in repos]
    by_pred: dict[str, Counter] = defaultdict(Counter)
    for t, p in zip(true_t, pred_t, strict=True):
        by_pred[p][t] += 1
    purity = sum(c.most_common(1)[0][1] for c in by_pred.values()) / len(repos)

    per_tree: dict[str, dict] = {}
    hits = total = 0
    roots_ok = 0
    true_trees = sorted(set(true_t))
    for tt in true_trees:
        mem = [r for r in repos if truth[r].tree_id == tt]
        child = [r for r in mem if truth[r].parent is not None]
        ok = sum(recovery.models[r].parent == truth[r].parent for r in child)
        hits, total = hits + ok, total + len(child)
        true_root = next((r for r in mem if truth[r].parent is None), None)
        major = Counter(recovery.models[r].tree_id for r in mem).most_common(1)[0][0]
        root_ok = true_root is not None and recovery.trees[major].root == true_root
        roots_ok += root_ok
        per_tree[tt] = {
            "size": len(mem),
            "edge_accuracy": ok / len(child) if child else 1.0,
            "root_correct": bool(root_ok),
        }
    return {
        "n_models": len(repos),
        "n_true_trees": len(true_trees),
        "n_recovered_trees": len(set(pred_t)),
        "purity": purity,
        "ari": float(adjusted_rand_score(true_t, pred_t)),
        "edge_accuracy": hits / total if total else 1.0,
        "root_accuracy": roots_ok / len(true_trees),
        "per_tree": per_tree,
    }


# ---- hub-scale metadata trees ------------------------------------------------------------------

_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)?$")


def trees_from_declared_edges_sql(con, table: str, out_table: str | None = None):
    """Root and depth of every repo from declared (repo_id, base_model) edges, in DuckDB.

    `table` needs columns repo_id (unique) and base_model (NULL for a root). Returns a
    DuckDB relation (repo_id, root, depth), or creates `out_table` with it and returns None.
    A table name cannot be a bound parameter, so it is validated as an identifier instead.
    """
    for name in (table, out_table):
        if name is not None and not _IDENT.match(name):
            raise ValueError(f"not a plain table name: {name!r}")
    sql = load_sql("declared_trees").format(table=table)
    if out_table is not None:
        con.execute(f"CREATE OR REPLACE TABLE {out_table} AS {sql}")
        return None
    return con.sql(sql)


def trees_from_declared_edges_networkx(
    edges: Iterable[tuple[str, str | None]],
) -> dict[str, tuple[str | None, int | None]]:
    """Baseline for the SQL rebuild: {repo_id: (root, depth)} with networkx BFS from roots."""
    pairs = list(edges)
    declared = {repo for repo, _ in pairs}
    g = nx.DiGraph()
    g.add_nodes_from(declared)
    g.add_edges_from(
        (base, repo)
        for repo, base in pairs
        if base is not None and base != repo and base in declared
    )
    out: dict[str, tuple[str | None, int | None]] = {}
    for root in [n for n in g.nodes if g.in_degree(n) == 0]:
        for n, dep in nx.single_source_shortest_path_length(g, root).items():
            out[n] = (root, dep)
    for n in declared:
        out.setdefault(n, (None, None))
    return out


__all__ = [
    "ABSENT",
    "absent_bases",
    "Disagreement",
    "ModelAssignment",
    "TreeConfig",
    "TreeInfo",
    "TreeRecovery",
    "TruthEntry",
    "WeightRecord",
    "adapter_alignment",
    "adapter_candidates",
    "architecture_signature",
    "choose_recovery_layers",
    "cluster_by_distance",
    "distances_to",
    "is_head_layer",
    "layer_scales",
    "min_arborescence",
    "pairwise_distances",
    "recover_trees",
    "score_recovery",
    "trees_from_declared_edges_networkx",
    "trees_from_declared_edges_sql",
    "truth_from_manifest",
    "tree_id_for",
    "weight_kurtosis",
]
