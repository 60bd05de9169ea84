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
    search = _StructureSearch(records, d, kurt, config)
    if len(search.declared) < config.min_direction_votes:
        return search.mother_rule()
    return search.by_declared_edges()


class _StructureSearch:
    """One tree's candidate roots and settings, scored against its declared edges."""

    def __init__(
        self, records: Sequence[WeightRecord], d: np.ndarray, kurt: np.ndarray, config: TreeConfig
    ) -> None:
        self.kurt, self.config = kurt, config
        pos = {r.repo_id: i for i, r in enumerate(records)}
        self.declared = [
            (i, pos[r.declared_base])
            for i, r in enumerate(records)
            if r.declared_base in pos and r.declared_base != r.repo_id
        ]
        self.candidates = _root_candidates(d, kurt, self.declared, config.root_candidates)
        self.grams = layer_grams(records, sorted(records[0].layers))
        self.ranks = sorted({k for k in config.drift_ranks if k < len(records) - 1} | {0})
        self.dists = drift_removed_distances(self.grams, self.candidates[0], self.ranks)

    def direction_for(self, root: int) -> str:
        if self.config.kurtosis_direction != "auto":
            return self.config.kurtosis_direction
        kurt = self.kurt
        voted = _vote_direction(((kurt[p], kurt[c]) for c, p in self.declared), self.config)
        return voted or ("raise" if np.median(kurt) >= kurt[root] else "lower")

    def mother_cost(self, parent: np.ndarray, direction: str) -> float:
        """MoTHer's objective: the arborescence's cost over D + λ·scale·T (no drift removed)."""
        cost = edge_costs(self.dists[0], self.kurt, direction, self.config)
        return float(cost[parent[parent >= 0], np.flatnonzero(parent >= 0)].sum())

    def mother_rule(self) -> tuple[np.ndarray, TreeStructure]:
        """No cards to choose with: the root whose arborescence (each candidate with its own
        direction) costs least."""
        best_cost, root, chosen = np.inf, self.candidates[0], self.config.kurtosis_direction
        for cand in self.candidates:
            direction = self.direction_for(cand)
            parent = arborescence(
                self.dists[0], self.kurt, direction, cand, self.config, lift=False
            )
            total = self.mother_cost(parent, direction)
            if total < best_cost:
                best_cost, root, chosen = total, cand, direction
        parent = arborescence(self.dists[0], self.kurt, chosen, root, self.config)
        return parent, TreeStructure(chosen, 0, self.config.direction_lambda, True, 0, np.nan)

    def solve(self, root: int, k: int, dist: np.ndarray, lam: float, lift: bool):
        """(agreement with the declared edges, parents, structure) for one root and setting."""
        direction = self.direction_for(root)
        parent = arborescence(dist, self.kurt, direction, root, self.config, lam, lift)
        child, par = np.array(self.declared).T
        agree = float((parent[child] == par).mean())
        return agree, parent, TreeStructure(direction, k, lam, lift, len(self.declared), agree)

    def best_settings(self, root: int, best=None):
        """The setting (k, λ, lift) whose edges reproduce most declared ones; ties keep `best`
        or the earlier setting."""
        for k in self.ranks:
            for lam in (0.0, self.config.direction_lambda):
                for lift in (False, True):
                    trial = self.solve(root, k, self.dists[k], lam, lift)
                    if best is None or trial[0] > best[0]:
                        best = trial
        return best

    def by_declared_edges(self) -> tuple[np.ndarray, TreeStructure]:
        """Settings chosen with the medoid as root, then other plausible roots with those
        settings; the cards decide, and where they cannot (undocumented children of the
        root), MoTHer's cost does."""
        best = self.best_settings(self.candidates[0])
        s = best[2]
        ranked = [(best[0], -self.mother_cost(best[1], s.direction), 0, best)]
        for j, other in enumerate(self.candidates[1:], start=1):
            dist = drift_removed_distances(self.grams, other, [s.drift_rank])[s.drift_rank]
            trial = self.solve(other, s.drift_rank, dist, s.lam, s.lift)
            ranked.append((trial[0], -self.mother_cost(trial[1], trial[2].direction), -j, trial))
        best = max(ranked, key=lambda t: t[:3])[3]
        root = int(np.flatnonzero(best[1] < 0)[0])
        if root != self.candidates[0]:  # a new root: choose the settings again around it
            self.dists = drift_removed_distances(self.grams, root, self.ranks)
            best = self.best_settings(root, best)
        return best[1], best[2]


def _root_candidates(
    d: np.ndarray, kurt: np.ndarray, declared: list[tuple[int, int]], m: int
) -> list[int]:
    """The m most central models, then the kurtosis extremes (MoTHer's cue) and the bases
    that cards name most among those that name no base themselves; each once."""
    by_kurt = np.argsort(kurt, kind="stable")
    has_base = {c for c, _ in declared}
    named = Counter(p for _, p in declared if p not in has_base)  # cards point up to these
    candidates = [int(i) for i in np.argsort(d.sum(axis=1), kind="stable")[:m]]
    for i in [
        *by_kurt[: m - 1],
        *by_kurt[::-1][: m - 1],
        *(p for p, _ in named.most_common(m - 1)),
    ]:
        if int(i) not in candidates:
            candidates.append(int(i))
    return candidates


def lift_siblings(parent: np.ndarray, d: np.ndarray, cos_min: float) -> np.ndarray:
    """Re-hang c from p to p's parent g when p does not lie between g and c.

    Fine-tunes of one root drift the same way (shared data, weight decay), so a long
    fine-tune sits slightly closer to a short sibling than to their common parent and the
    arborescence hangs it under the sibling. A true grandchild's update is independent of
    (or continues) its parent's, so the angle at p in the triangle (g, p, c) is ≥ ~90°;
    a mis-hung sibling makes it acute. cos∠ comes from distances alone (law of cosines);
    on zoo v1's tiny zoo true chains showed cos ≤ 0.04 and mis-hung siblings ≥ 0.13. On zoo
    v2's tiny multi-level tree (one drift direction removed) true chains reach cos 0.27–0.29,
    and the declared edges leave the lift off there (`tree_structure`).
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
    return _Contraction(cost, root).run()


class _Contraction:
    """Tarjan's contraction forest over a dense cost matrix, one slot per live node.

    Slots hold a node of the forest: an original node or a contracted cycle. w[a, b] is the
    cheapest edge from slot a into slot b; src/dst remember which original edge it is.
    """

    def __init__(self, cost: np.ndarray, root: int) -> None:
        n = cost.shape[0]
        self.n, self.root = n, root
        self.w = cost.astype(float).copy()
        np.fill_diagonal(self.w, np.inf)
        self.w[:, root] = np.inf
        self.src = np.repeat(np.arange(n)[:, None], n, axis=1)  # original tail of slot edge a→b
        self.dst = np.repeat(np.arange(n)[None, :], n, axis=0)  # original head
        self.node_of = list(range(n))  # slot → contraction-forest node currently living there
        self.up: list[int] = [-1] * n  # forest parent
        self.kids: list[list[int]] = [[] for _ in range(n)]
        self.inedge: list[tuple[int, int]] = [(-1, -1)] * n  # forest node → chosen edge
        self.w_in = np.zeros(n)
        self.done = np.zeros(n, dtype=bool)
        self.done[root] = True
        self.on_path = np.zeros(n, dtype=bool)

    def run(self) -> np.ndarray:
        for start in range(self.n):
            if not self.done[start]:
                self._grow(start)
        return self._expand()

    def _grow(self, start: int) -> None:
        """Follow cheapest in-edges back from `start` until a finished slot, contracting
        every cycle met on the way."""
        path = [start]
        self.on_path[start] = True
        while True:
            a = path[-1]
            b = int(np.argmin(self.w[:, a]))
            self.inedge[self.node_of[a]] = (int(self.src[b, a]), int(self.dst[b, a]))
            self.w_in[a] = self.w[b, a]
            if self.done[b]:
                self.done[path] = True
                self.on_path[path] = False
                return
            if not self.on_path[b]:
                path.append(b)
                self.on_path[b] = True
                continue
            cyc = []
            while True:
                x = path.pop()
                cyc.append(x)
                if x == b:
                    break
            keep = self._contract(cyc)
            path.append(keep)
            self.on_path[keep] = True

    def _contract(self, cyc: list[int]) -> int:
        """Merge the cycle's slots into one new forest node living in the slot cyc[0]."""
        w, src, dst, rows = self.w, self.src, self.dst, np.arange(self.n)
        cyc_a = np.array(cyc)
        new_id = len(self.up)
        self.up.append(-1)
        self.kids.append([self.node_of[x] for x in cyc])
        self.inedge.append((-1, -1))
        for x in cyc:
            self.up[self.node_of[x]] = new_id
        col = w[:, cyc_a] - self.w_in[cyc_a][None, :]  # entering the cycle replaces one edge
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
        in_cycle = np.zeros(self.n, dtype=bool)
        in_cycle[cyc_a] = True
        w[keep, :] = np.where(in_cycle, np.inf, new_row)
        w[:, keep] = np.where(in_cycle, np.inf, new_col)
        w[:, self.root] = np.inf
        self.done[cyc_a] = True  # retired slots (keep is reopened below)
        self.done[keep] = False
        self.on_path[cyc_a] = False
        self.node_of[keep] = new_id
        return keep

    def _expand(self) -> np.ndarray:
        """Read the arborescence off the forest: each surviving node's in-edge, dismantling
        the cycles it breaks."""
        up, kids = self.up, self.kids
        parent = np.full(self.n, -1)
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

        dismantle(self.root, None)
        roots.extend(x for x in range(len(up)) if up[x] == -1)
        while roots:
            x = roots.pop()
            if deleted[x]:
                continue
            u, v = self.inedge[x]
            parent[v] = u
            dismantle(v, x)
        return parent
