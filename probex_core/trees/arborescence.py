"""Each tree's parent edges: the minimum spanning arborescence (Chu-Liu/Edmonds) over
distance plus the direction cue, and the structure settings chosen among."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from probex_core.trees.core import TreeConfig, WeightRecord
from probex_core.trees.distances import drift_removed_distances, edge_costs, layer_grams


def _vote_direction(votes: Iterable[tuple[float, float]], config: TreeConfig) -> str | None:
    """Majority over declared (parent, child) kurtosis pairs; None when too few votes."""
    pairs = list(votes)
    if len(pairs) < config.min_direction_votes:
        return None
    up = sum(kc > kp for kp, kc in pairs)
    return "raise" if up * 2 >= len(pairs) else "lower"


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
