"""`probex bench trees`: tree recovery on 1,000 synthetic models, and declared-edge trees for
1 M metadata records in DuckDB SQL against a networkx baseline, from one run.

The synthetic forest (also used by the tests) mimics MoTHer's setting: every root is its own
random init; a fine-tune is its parent plus a sparse heavy-tailed update (it raises
kurtosis, as real fine-tuning does); trees can be multi-level and several trees can share
one architecture signature.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from probex_core.trees import (
    TreeConfig,
    TruthEntry,
    WeightRecord,
    architecture_signature,
    recover_trees,
    score_recovery,
    trees_from_declared_edges_networkx,
    trees_from_declared_edges_sql,
)


@dataclass(frozen=True)
class ForestSpec:
    """Shape of one synthetic tree."""

    branching: tuple[int, ...]  # children per node at each level: (4, 4) = root → 4 → 16
    layer_shapes: tuple[tuple[int, int], ...] = ((32, 32), (32, 32))  # hidden layers (d_H, d_W)
    step: float = 0.08  # relative size of one fine-tuning update (‖ΔW‖ / ‖W‖)


def _init(shape: tuple[int, int], g: torch.Generator) -> torch.Tensor:
    bound = 1.0 / np.sqrt(shape[1])  # PyTorch nn.Linear default: U(-1/√d_in, 1/√d_in)
    return (torch.rand(shape, generator=g) * 2 - 1) * bound


def _finetune(w: torch.Tensor, step: float, g: torch.Generator) -> torch.Tensor:
    """Parent + a sparse heavy-tailed update of relative norm `step` that makes outliers
    grow: half of the top-decile |w| entries (a random half per child) move outward by
    |t|·sign(w). Kurtosis therefore rises, the regularity MoTHer's direction cue relies on."""
    top = w.abs() >= w.abs().flatten().quantile(0.9)
    mask = top & (torch.rand(w.shape, generator=g) < 0.5)
    delta = _student_t(w.shape, g).abs() * torch.sign(w) * mask
    delta = delta * (step * w.norm() / delta.norm().clamp_min(1e-12))
    return w + delta


def _student_t(shape: torch.Size, g: torch.Generator, df: int = 3) -> torch.Tensor:
    z = torch.randn(shape, generator=g)
    chi2 = (torch.randn((df, *shape), generator=g) ** 2).sum(0)
    return z / torch.sqrt(chi2 / df)


def synthetic_forest(
    specs: Sequence[ForestSpec],
    seed: int = 0,
    documented: float = 1.0,
    liars: int = 0,
) -> tuple[list[WeightRecord], dict[str, TruthEntry]]:
    """Records and ground truth for a forest; trees with equal layer shapes share a signature.

    `documented`: fraction of non-root models whose card declares their true base;
    `liars`: that many documented models instead declare a wrong base (another tree's root).
    """
    g = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)
    records: list[WeightRecord] = []
    truth: dict[str, TruthEntry] = {}
    roots: list[str] = []
    for t, spec in enumerate(specs):
        names = [f"blocks.{i}.mlp" for i in range(len(spec.layer_shapes))]
        shapes = {f"{n}.weight": s for n, s in zip(names, spec.layer_shapes, strict=True)}
        shapes["head.weight"] = (10, spec.layer_shapes[-1][0])
        sig = architecture_signature(shapes)
        tid = f"true-{t}"
        root_id = f"org{t}/root"
        roots.append(root_id)
        frontier = [
            (root_id, {n: _init(s, g) for n, s in zip(names, spec.layer_shapes, strict=True)})
        ]
        records.append(WeightRecord(root_id, sig, None, frontier[0][1]))
        truth[root_id] = TruthEntry(tid, None)
        for level, k in enumerate(spec.branching):
            nxt = []
            for pid, pw in frontier:
                for c in range(k):
                    cid = f"org{t}/{pid.split('/')[1]}-l{level}c{c}"
                    cw = {n: _finetune(w, spec.step, g) for n, w in pw.items()}
                    declared = pid if rng.random() < documented else None
                    records.append(WeightRecord(cid, sig, declared, cw))
                    truth[cid] = TruthEntry(tid, pid)
                    nxt.append((cid, cw))
            frontier = nxt
    if liars:
        documented_ids = [i for i, r in enumerate(records) if r.declared_base is not None]
        for i in rng.choice(documented_ids, size=min(liars, len(documented_ids)), replace=False):
            r = records[i]
            others = [x for x in roots if truth[x].tree_id != truth[r.repo_id].tree_id]
            wrong = others[0] if others else r.repo_id
            records[i] = WeightRecord(r.repo_id, r.signature, wrong, r.layers)
    return records, truth


def synthetic_edges(n: int, seed: int = 0, roots: int = 1000) -> tuple[np.ndarray, np.ndarray]:
    """n declared edges (child index, base index or -1); every base is an earlier repo.

    Like the hub, most repos fine-tune a foundation model directly (70%: a random root);
    the rest fine-tune any earlier repo, which grows chains of fine-tunes of fine-tunes
    (depth ~ log n).
    """
    rng = np.random.default_rng(seed)
    idx = np.arange(n)
    base = np.floor(rng.random(n) * np.maximum(idx, 1)).astype(np.int64)
    direct = rng.random(n) < 0.7
    base[direct] = rng.integers(0, roots, size=int(direct.sum()))
    base[:roots] = -1
    return idx, base


def _time_sql(n: int, seed: int) -> tuple[float, int, int]:
    import duckdb

    idx, base = synthetic_edges(n, seed)
    con = duckdb.connect()
    con.execute(
        "CREATE TABLE repos AS SELECT 'org/m' || i AS repo_id, "
        "CASE WHEN b < 0 THEN NULL ELSE 'org/m' || b END AS base_model "
        "FROM (SELECT unnest(?) AS i, unnest(?) AS b)",
        [idx.tolist(), base.tolist()],
    )
    t0 = time.perf_counter()
    trees_from_declared_edges_sql(con, "repos", out_table="repo_trees")
    secs = time.perf_counter() - t0
    n_roots, max_depth = con.execute(
        "SELECT count(DISTINCT root), max(depth) FROM repo_trees"
    ).fetchone()
    return secs, int(n_roots), int(max_depth)


def _time_networkx(n: int, seed: int) -> tuple[float, int]:
    idx, base = synthetic_edges(n, seed)
    names = [f"org/m{i}" for i in idx]
    edges = [(names[i], names[b] if b >= 0 else None) for i, b in zip(idx, base, strict=True)]
    t0 = time.perf_counter()
    out = trees_from_declared_edges_networkx(edges)
    secs = time.perf_counter() - t0
    return secs, len({r for r, _ in out.values()})


def run(quick: bool = False) -> dict:
    """Print recovery and metadata timings with their targets; return the numbers."""
    n_trees = 4 if quick else 10
    # 10 trees × (1 + 9 + 90) = 1,000 models (quick: 4 × (1 + 4 + 16) = 84), two signatures
    branching = (4, 4) if quick else (9, 10)
    specs = [
        ForestSpec(branching, layer_shapes=((64, 64), (64, 64)) if t % 2 else ((64, 64), (32, 64)))
        for t in range(n_trees)
    ]
    records, truth = synthetic_forest(specs, seed=0, documented=0.8)
    recovery = recover_trees(records, TreeConfig())
    scores = score_recovery(recovery, truth)
    n_meta = 100_000 if quick else 1_000_000
    sql_s, sql_roots, sql_depth = _time_sql(n_meta, 0)
    nx_s, nx_roots = _time_networkx(n_meta, 0)
    out = {
        "models": len(records),
        "recovery_seconds": recovery.seconds,
        "recovery_target_seconds": 30.0,
        "ari": scores.ari,
        "edge_accuracy": scores.edge_accuracy,
        "root_accuracy": scores.root_accuracy,
        "metadata_records": n_meta,
        "sql_seconds": sql_s,
        "sql_target_seconds": 10.0,
        "networkx_seconds": nx_s,
        "networkx_over_sql": nx_s / max(sql_s, 1e-9),
        "roots_agree": sql_roots == nx_roots,
        "max_depth": sql_depth,
    }
    print(f"{'measure':<44}{'value':>12}{'target':>10}")
    print(
        f"{'tree recovery, ' + str(len(records)) + ' models (s)':<44}{recovery.seconds:>12.2f}{'≤ 30':>10}"
    )
    print(
        f"{'  ARI / edge acc. / root acc.':<44}{scores.ari:>6.3f} {scores.edge_accuracy:.3f} {scores.root_accuracy:.2f}"
    )
    print(
        f"{'declared-edge trees, DuckDB SQL, ' + f'{n_meta:,}' + ' (s)':<44}{sql_s:>12.2f}{'≤ 10':>10}"
    )
    print(f"{'declared-edge trees, networkx (s)':<44}{nx_s:>12.2f}")
    print(f"{'networkx / SQL':<44}{out['networkx_over_sql']:>12.1f}x")
    print(
        f"{'roots agree (' + str(sql_roots) + '), max depth':<44}{str(out['roots_agree']):>12}{sql_depth:>10}"
    )
    return out
