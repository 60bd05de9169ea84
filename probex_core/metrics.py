"""Metrics for experts and their representations. Inputs are numpy arrays (or array-likes).

Conventions: `Y` is multi-hot (N, C); `scores` are real-valued (N, C), higher = more likely.
Every metric returns a float in [0, 1] (NaN when it is undefined, e.g. no class to score).
"""

from __future__ import annotations

import math

import numpy as np

# scipy's and scikit-learn's modules are imported by the two metrics that use them: importing
# them costs about 0.6 s in every process that imports the pipeline (a run's orchestrator too)


def _mask(C: int, class_mask: np.ndarray | None) -> np.ndarray:
    if class_mask is None:
        return np.ones(C, dtype=bool)
    m = np.asarray(class_mask, dtype=bool)
    if m.shape != (C,):
        raise ValueError(f"class_mask must have shape ({C},), got {m.shape}")
    return m


def per_class_accuracy(
    Y: np.ndarray, probs: np.ndarray, class_mask: np.ndarray | None = None, threshold: float = 0.5
) -> float:
    """The paper's metric: per-class binary accuracy of the multi-hot prediction.

    For each class c in the mask, acc_c = fraction of models i with [probs[i,c] ≥ threshold]
    == Y[i,c]; the result is the mean of acc_c over the masked classes (equal to the mean
    correctness over all model×class pairs, since every class is scored on every model).
    Chance is 0.5 for a coin flip, or max(p, 1-p) per class for a constant predictor.
    """
    Y, probs = np.asarray(Y), np.asarray(probs)
    m = _mask(Y.shape[1], class_mask)
    if not m.any():
        return float("nan")
    correct = (probs[:, m] >= threshold) == (Y[:, m] > 0.5)
    return float(correct.mean(axis=0).mean())


def mean_average_precision(
    Y: np.ndarray, scores: np.ndarray, class_mask: np.ndarray | None = None
) -> float:
    """Mean over classes of average precision (ranking models by score for that class).
    Classes without both a positive and a negative are skipped."""
    from sklearn.metrics import average_precision_score

    Y, scores = np.asarray(Y) > 0.5, np.asarray(scores)
    m = _mask(Y.shape[1], class_mask)
    aps = [
        average_precision_score(Y[:, c], scores[:, c])
        for c in np.flatnonzero(m)
        if 0 < Y[:, c].sum() < len(Y)
    ]
    return float(np.mean(aps)) if aps else float("nan")


def set_f1(Y: np.ndarray, pred: np.ndarray) -> float:
    """Mean over models of the F1 between the predicted and the true class sets
    (2|P∩T| / (|P|+|T|); 1 when both are empty)."""
    T, P = np.asarray(Y) > 0.5, np.asarray(pred) > 0.5
    inter = (T & P).sum(1)
    denom = T.sum(1) + P.sum(1)
    f1 = np.where(denom == 0, 1.0, 2 * inter / np.maximum(denom, 1))
    return float(f1.mean())


def topk_accuracy(scores: np.ndarray, targets: np.ndarray, k: int = 1) -> float:
    """Fraction of rows whose top-k scored classes contain a true class.
    `targets` is (N,) class indices or (N, C) multi-hot."""
    scores, targets = np.asarray(scores), np.asarray(targets)
    if targets.ndim == 1:
        targets = np.eye(scores.shape[1], dtype=bool)[targets]
    top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    hit = np.take_along_axis(targets > 0.5, top, axis=1).any(axis=1)
    return float(hit.mean())


def topk_chance(n_pos: np.ndarray, n_cand: int, k: int) -> np.ndarray:
    """Per row, P(a random ranking of n_cand candidates puts one of its n_pos true classes in
    its top k) = 1 − C(n_cand − n_pos, k) / C(n_cand, k); k/n_cand for one true class."""
    k = min(k, n_cand)
    return np.array([1.0 - math.comb(n_cand - int(p), k) / math.comb(n_cand, k) for p in n_pos])


def binomial_se(p: float, n: int) -> float:
    """Standard error of a proportion p measured on n trials (NaN without trials)."""
    return float(np.sqrt(p * (1 - p) / n)) if n else float("nan")


def ranking_auc(scores: np.ndarray, targets: np.ndarray) -> tuple[float, float, int]:
    """Per row, the chance that a true class outscores a false one (ties count half), averaged
    over the rows that have both; returns (mean, its standard error, rows used). Chance 0.5.

    Unlike top-1 it uses every candidate of a row, so it separates a weak signal from chance
    with far fewer rows: with 8 true classes of 20, top-1 is one coin flip per row."""
    scores, T = np.asarray(scores, float), np.asarray(targets) > 0.5
    aucs = []
    for s, t in zip(scores, T, strict=True):
        pos, neg = s[t], s[~t]
        if len(pos) and len(neg):
            diff = pos[:, None] - neg[None, :]
            aucs.append(float((diff > 0).mean() + 0.5 * (diff == 0).mean()))
    if not aucs:
        return math.nan, math.nan, 0
    a = np.array(aucs)
    se = float(a.std(ddof=1) / math.sqrt(len(a))) if len(a) > 1 else math.nan
    return float(a.mean()), se, len(a)


def _cosine_sim(A: np.ndarray, B: np.ndarray) -> np.ndarray:
    A = A / np.maximum(np.linalg.norm(A, axis=1, keepdims=True), 1e-12)
    B = B / np.maximum(np.linalg.norm(B, axis=1, keepdims=True), 1e-12)
    return A @ B.T


def knn_accuracy(
    train_emb: np.ndarray,
    train_labels: np.ndarray,
    test_emb: np.ndarray,
    test_labels: np.ndarray,
    k: int = 5,
) -> float:
    """kNN on cosine similarity. Integer labels (N,): majority-vote accuracy (ties → lowest
    label). Multi-hot labels (N, C): each class predicted by the neighbour vote fraction
    ≥ 0.5, scored with `per_class_accuracy`."""
    sim = _cosine_sim(np.asarray(test_emb), np.asarray(train_emb))
    nn = np.argsort(-sim, axis=1, kind="stable")[:, :k]  # (N_test, k)
    train_labels, test_labels = np.asarray(train_labels), np.asarray(test_labels)
    if train_labels.ndim == 2:
        vote = train_labels[nn].mean(axis=1)  # (N_test, C)
        return per_class_accuracy(test_labels, vote)
    n_cls = int(max(train_labels.max(), test_labels.max())) + 1
    counts = np.zeros((len(nn), n_cls))
    np.add.at(counts, (np.repeat(np.arange(len(nn)), nn.shape[1]), train_labels[nn].ravel()), 1)
    return float((counts.argmax(1) == test_labels).mean())


def one_class_auc(
    normal_emb: np.ndarray,
    test_emb: np.ndarray,
    test_is_normal: np.ndarray,
    method: str = "knn",
    k: int = 5,
) -> float:
    """One-class classification ROC-AUC: fit on embeddings of one class ("normal"), score test
    embeddings by anomaly (mean Euclidean distance to the k nearest normal embeddings, or
    Mahalanobis distance under a Ledoit-Wolf covariance), AUC of anomalies vs normals."""
    from scipy.spatial.distance import cdist
    from sklearn.covariance import LedoitWolf
    from sklearn.metrics import roc_auc_score

    normal_emb, test_emb = np.asarray(normal_emb, float), np.asarray(test_emb, float)
    if method == "knn":
        d = cdist(test_emb, normal_emb)  # (N_test, N_normal), without an (N, M, dim) temporary
        score = np.sort(d, axis=1)[:, : min(k, len(normal_emb))].mean(axis=1)
    elif method == "mahalanobis":
        lw = LedoitWolf().fit(normal_emb)
        score = lw.mahalanobis(test_emb)
    else:
        raise ValueError(f"unknown method {method!r}; use 'knn' or 'mahalanobis'")
    return float(roc_auc_score(~np.asarray(test_is_normal, dtype=bool), score))


def retrieval(
    emb: np.ndarray, labels: np.ndarray, k: int = 5, min_jaccard: float = 1.0
) -> dict[str, float]:
    """Model retrieval: each model queries all others by cosine similarity.

    A neighbour is relevant when it has the same label (integer labels) or, for multi-hot
    labels, a class-set Jaccard ≥ `min_jaccard` (1.0 = the same set). Returns precision@k and
    mAP (mean over queries with at least one relevant model of average precision of the full
    ranking)."""
    emb, labels = np.asarray(emb, float), np.asarray(labels)
    L = np.eye(int(labels.max()) + 1, dtype=bool)[labels] if labels.ndim == 1 else labels > 0.5
    inter = L.astype(float) @ L.T.astype(float)
    union = L.sum(1)[:, None] + L.sum(1)[None, :] - inter
    rel = np.where(union > 0, inter / np.maximum(union, 1), 1.0) >= min_jaccard - 1e-12
    sim = _cosine_sim(emb, emb)
    np.fill_diagonal(sim, -np.inf)
    n = len(emb)
    prec, aps = [], []
    for i in range(n):
        order = np.argsort(-sim[i], kind="stable")[: n - 1]  # self is last (−inf)
        r = rel[i, order]
        prec.append(r[:k].mean())
        if r.any():
            hits = np.cumsum(r)
            aps.append((hits[r] / (np.flatnonzero(r) + 1)).mean())
    return {
        "precision_at_k": float(np.mean(prec)),
        "mAP": float(np.mean(aps)) if aps else float("nan"),
    }


def expected_calibration_error(
    probs: np.ndarray, Y: np.ndarray, single: bool, bins: int = 10
) -> float:
    """Expected calibration error over equal-width confidence bins: the weighted mean gap
    between how confident predictions are and how often they are right. One class per model
    (`single`): the top class's probability against whether it is the model's class. Several:
    every (model, class) probability against whether the class is among the model's."""
    if single:
        conf = probs.max(1)
        hit = Y[np.arange(len(Y)), probs.argmax(1)] > 0
    else:
        conf, hit = probs.ravel(), Y.ravel() > 0
    if conf.size == 0:
        return float("nan")
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(conf, edges[1:-1]), 0, bins - 1)
    gap = 0.0
    for b in range(bins):
        sel = which == b
        if sel.any():
            gap += sel.mean() * abs(conf[sel].mean() - hit[sel].mean())
    return float(gap)


def representation_scores(
    E_train: np.ndarray,
    Y_train: np.ndarray,
    E_test: np.ndarray,
    Y_test: np.ndarray,
    knn_chance: float,
    k: int = 5,
) -> list[tuple[str, float, float]]:
    """(metric, value, chance) of downstream tasks on a representation of each model.

    kNN: the training classes of a test model by the vote of its k nearest documented
    (training) models, per-class accuracy (chance: the majority guess). One-class ROC-AUC,
    per class c with ≥ k training models that learned it: those are the "normal" set, test
    models are scored by their distance to it and the AUC separates test models that learned
    c from those that did not; mean over classes (chance 0.5). Retrieval: each test model
    queries the other test models; relevant ones learned the same class (one class per
    model) or a class set with Jaccard ≥ 0.5; precision@k (chance: the relevant fraction).
    """
    out = [
        ("knn_per_class_accuracy", knn_accuracy(E_train, Y_train, E_test, Y_test, k), knn_chance)
    ]
    aucs = [
        one_class_auc(E_train[Y_train[:, c] > 0.5], E_test, Y_test[:, c] > 0.5, k=k)
        for c in range(Y_train.shape[1])
        if (Y_train[:, c] > 0.5).sum() >= k and 0 < (Y_test[:, c] > 0.5).sum() < len(Y_test)
    ]
    if aucs:
        out.append(("one_class_auc", float(np.mean(aucs)), 0.5))
    single = bool((Y_test.sum(1) == 1).all())
    labels = Y_test.argmax(1) if single else Y_test
    min_jaccard = 1.0 if single else 0.5
    res = retrieval(E_test, labels, k=k, min_jaccard=min_jaccard)
    L = Y_test > 0.5
    inter = L.astype(float) @ L.T.astype(float)
    union = L.sum(1)[:, None] + L.sum(1)[None, :] - inter
    rel = inter / np.maximum(union, 1) >= min_jaccard - 1e-12
    np.fill_diagonal(rel, False)
    out.append(
        (
            f"retrieval_precision_at_{k}",
            res["precision_at_k"],
            float(rel.mean() * len(rel) / max(len(rel) - 1, 1)),
        )
    )
    return out
