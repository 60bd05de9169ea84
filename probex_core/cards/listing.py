"""Which classes a generated card lists: one rule per tree, chosen on its validation models.

A class is listed when its calibrated probability reaches the tree's threshold: the lowest
confidence at which, on the tree's documented validation models, at least `TARGET_PRECISION`
of what the expert listed was right (never below `MIN_CONFIDENCE` for many-class models; the
top class only for one-class models). `listing_scores` measures the same rule against ground
truth, for `evaluations`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np
import pandas as pd

from probex_core.catalog import Home, read_table
from probex_core.metrics import binomial_se
from probex_core.store import ExpertMeta, TreeExperts
from probex_core.zeroshot import multi_hot

TARGET_PRECISION = 0.9
MIN_CONFIDENCE = 0.5  # and a class of a many-class model is never listed below even odds


@dataclass(frozen=True)
class Listing:
    """A tree's rule for listing classes: a class (the top one only, for a one-class tree) is
    listed when its calibrated probability is at least `threshold`. None: no confidence reached
    the target precision on validation, so nothing is listed. `precision` and `recall` are the
    rule's on the `n_val` validation models."""

    threshold: float | None
    precision: float | None
    recall: float | None
    n_val: int
    single_label: bool

    def mask(self, P: np.ndarray) -> np.ndarray:
        """Which entries of probabilities (N, C) the rule lists."""
        if self.threshold is None:
            return np.zeros(P.shape, dtype=bool)
        keep = P >= self.threshold
        if self.single_label:
            keep &= P == P.max(1, keepdims=True)
        return keep

    def listed(self, probs: dict[str, float]) -> list[tuple[str, float]]:
        """The (class, probability) pairs the rule lists, most likely first."""
        if self.threshold is None or not probs:
            return []
        ranked = sorted(probs.items(), key=lambda kv: (-kv[1], kv[0]))
        if self.single_label:
            ranked = ranked[:1]
        return [(c, p) for c, p in ranked if p >= self.threshold]


def choose_threshold(
    P: np.ndarray, Y: np.ndarray, single_label: bool, target: float = TARGET_PRECISION
) -> tuple[float | None, float | None, float | None]:
    """(threshold, precision, recall): the lowest confidence at which what is listed on these
    models is right at least `target` of the time (for multi-class models, at least
    `MIN_CONFIDENCE`); (None, best precision, 0) when no confidence reaches it. One-class
    models list their top class only."""
    if P.size == 0 or Y.sum() == 0:
        return None, None, None
    if single_label:
        top = P.argmax(1)
        scores, hits = P[np.arange(len(P)), top], Y[np.arange(len(P)), top] > 0
    else:
        scores, hits = P.ravel(), Y.ravel() > 0
    order = np.argsort(-scores, kind="stable")
    s, tp = scores[order], np.cumsum(hits[order])
    n = np.arange(1, len(s) + 1)
    # a threshold lists every score at or above it: only the last of a run of ties is a cut
    cuts = np.flatnonzero(np.r_[s[1:] != s[:-1], True])
    precision = tp[cuts] / n[cuts]
    ok = precision >= target
    if not single_label:
        ok &= s[cuts] >= MIN_CONFIDENCE  # never claim one of many classes below even odds
    if not ok.any():
        return None, float(precision.max()), 0.0
    k = cuts[ok][-1]
    return float(s[k]), float(tp[k] / n[k]), float(tp[k] / Y.sum())


def tree_probabilities(
    preds: pd.DataFrame, classes: list[str], repo_ids: Iterable[str]
) -> np.ndarray:
    """(len(repo_ids), len(classes)) predicted probabilities from `predictions_long` rows."""
    ids = list(repo_ids)
    wide = preds[preds.repo_id.isin(ids)].pivot(
        index="repo_id", columns="class_name", values="probability"
    )
    return wide.reindex(index=ids, columns=classes).fillna(0.0).to_numpy(np.float64)


def tree_listing(meta: ExpertMeta, preds: pd.DataFrame, repos: pd.DataFrame) -> Listing:
    """The tree's listing rule, chosen on its validation models' predictions and labels."""
    classes = list(meta.classes)
    val = [r for r in meta.val_repos if r in repos.index]
    P = tree_probabilities(preds, classes, val)
    Y = multi_hot([list(repos.at[r, "training_classes"]) for r in val], classes).numpy()
    threshold, precision, recall = choose_threshold(P, Y, meta.single_label)
    return Listing(threshold, precision, recall, len(val), meta.single_label)


def tree_listings(home: Home, preds: pd.DataFrame, repos: pd.DataFrame) -> dict[str, Listing]:
    """Every tree with an expert: its listing rule, from `predictions_long` and `repos`
    (indexed by repo id)."""
    out = {}
    for tree_id in sorted(preds.tree_id.unique()):
        experts = TreeExperts(home, tree_id)
        if experts.exists() and not (meta := experts.meta()).skipped:
            out[tree_id] = tree_listing(meta, preds[preds.tree_id == tree_id], repos)
    return out


def listing_scores(
    home: Home, split_of: Callable[[str], str | None], classes_of: Callable[[str], list[str]],
    splits: Iterable[str],
) -> list[dict]:  # fmt: skip
    """`evaluation_rows` fields (but the method) scoring each tree's listed classes against the
    truth (`split_of`, `classes_of`) per split: precision with its chance (the share of
    (model, class) pairs that are true) and standard error, recall, and the share of models
    with a class listed."""
    preds = read_table(home, "predictions_long")
    repos = read_table(home, "repos").set_index("repo_id")
    out = []
    for tree_id, rule in tree_listings(home, preds, repos).items():
        mine = preds[preds.tree_id == tree_id]
        classes = sorted(mine.class_name.unique())
        for split in splits:
            ids = sorted({r for r in mine.repo_id if split_of(r) == split})
            if not ids:
                continue
            listed = rule.mask(tree_probabilities(mine, classes, ids))
            Y = multi_hot([classes_of(r) for r in ids], classes).numpy() > 0
            k, hits = int(listed.sum()), int((listed & Y).sum())
            p = hits / k if k else 0.0
            row = {"tree": tree_id, "n": len(ids), "split": split, "chance": None}
            out += [
                {**row, "metric": "listed_precision", "value": p, "chance": float(Y.mean()),
                 "stderr": binomial_se(p, k) if k else None},
                {**row, "metric": "listed_recall", "value": hits / max(int(Y.sum()), 1)},
                {**row, "metric": "models_listing_a_class", "value": float(listed.any(1).mean())},
            ]  # fmt: skip
    return out
