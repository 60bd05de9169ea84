"""A recovery scored against ground truth (a zoo manifest): ARI, purity, edge and root accuracy."""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from probex_core.trees.core import TreeRecovery


@dataclass(frozen=True)
class TruthEntry:
    """Ground truth for one repo (from the zoo manifest)."""

    tree_id: str  # true tree id
    parent: str | None  # true parent repo id; None for a root


@dataclass(frozen=True)
class TreeScore:
    """One true tree's recovery: its size, the share of its parent edges recovered, and
    whether its root was."""

    size: int
    edge_accuracy: float
    root_correct: bool


@dataclass(frozen=True)
class RecoveryScores:
    """A recovery against ground truth: clustering (purity, adjusted Rand index), parent
    edges and roots, hub-wide and per true tree."""

    n_models: int
    n_true_trees: int
    n_recovered_trees: int
    purity: float
    ari: float
    edge_accuracy: float
    root_accuracy: float
    per_tree: dict[str, TreeScore] = field(default_factory=dict)


def truth_from_manifest(path: str | Path) -> dict[str, TruthEntry]:
    """Read `DIR/manifest.json` (or DIR) into {repo_id: TruthEntry}; evaluation only."""
    p = Path(path)
    if p.is_dir():
        p = p / "manifest.json"
    manifest = json.loads(p.read_text())
    return {m["repo_id"]: TruthEntry(m["tree_id"], m.get("parent")) for m in manifest["models"]}


def score_recovery(recovery: TreeRecovery, truth: Mapping[str, TruthEntry]) -> RecoveryScores:
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
        per_tree[tt] = TreeScore(len(mem), ok / len(child) if child else 1.0, bool(root_ok))
    return RecoveryScores(
        n_models=len(repos),
        n_true_trees=len(true_trees),
        n_recovered_trees=len(set(pred_t)),
        purity=purity,
        ari=float(adjusted_rand_score(true_t, pred_t)),
        edge_accuracy=hits / total if total else 1.0,
        root_accuracy=roots_ok / len(true_trees),
        per_tree=per_tree,
    )
