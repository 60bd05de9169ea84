"""Metrics on cases small enough to compute by hand."""

from __future__ import annotations

import numpy as np
import pytest

from probex_core.metrics import (
    knn_accuracy,
    mean_average_precision,
    one_class_auc,
    per_class_accuracy,
    ranking_auc,
    retrieval,
    set_f1,
    topk_accuracy,
)

Y = np.array([[1, 0, 1], [0, 1, 1], [0, 0, 1], [1, 1, 0]])
P = np.array([[0.9, 0.2, 0.4], [0.1, 0.7, 0.6], [0.6, 0.1, 0.8], [0.8, 0.3, 0.2]])


def test_per_class_accuracy() -> None:
    # predictions at 0.5: [[1,0,0],[0,1,1],[1,0,1],[1,0,0]]
    # class 0: 3/4 correct, class 1: 3/4, class 2: 3/4 → 0.75
    assert per_class_accuracy(Y, P) == pytest.approx(0.75)
    assert per_class_accuracy(Y, P, class_mask=np.array([True, False, False])) == 0.75
    assert per_class_accuracy(Y, np.zeros_like(P)) == pytest.approx((2 / 4 + 2 / 4 + 1 / 4) / 3)
    assert np.isnan(per_class_accuracy(Y, P, class_mask=np.zeros(3, bool)))


def test_mean_average_precision() -> None:
    # class 0 ranking by score: m0(.9,+) m3(.8,+) → AP 1; class 1: m1(.7,+) m3(.3,+) m0(.2) m2 → 1
    # class 2: m2(.8,+) m1(.6,+) m0(.4,+) m3(.2,-) → 1
    assert mean_average_precision(Y, P) == pytest.approx(1.0)
    # reversed scores on class 0: positives at ranks 3 and 4 → AP = (1/3 + 2/4) / 2
    Q = P.copy()
    Q[:, 0] = -P[:, 0]
    ap0 = (1 / 3 + 2 / 4) / 2
    assert mean_average_precision(Y, Q, np.array([True, False, False])) == pytest.approx(ap0)


def test_set_f1() -> None:
    pred = np.array([[1, 0, 0], [0, 1, 1], [0, 0, 0], [0, 0, 0]])
    # F1 per row: 2·1/(2+1)=2/3, 1, 0, 0
    assert set_f1(Y, pred) == pytest.approx((2 / 3 + 1) / 4)
    assert set_f1(np.zeros((1, 3)), np.zeros((1, 3))) == 1.0


def test_topk_accuracy() -> None:
    scores = np.array([[0.1, 0.5, 0.4], [0.9, 0.05, 0.05], [0.2, 0.3, 0.5]])
    assert topk_accuracy(scores, np.array([1, 1, 0]), k=1) == pytest.approx(1 / 3)
    # k=2: row 1's tie (0.05, 0.05) resolves to the lower index, class 1 → a hit
    assert topk_accuracy(scores, np.array([1, 1, 0]), k=2) == pytest.approx(2 / 3)
    assert topk_accuracy(scores, np.array([1, 1, 0]), k=3) == 1.0
    assert topk_accuracy(scores, np.array([[0, 1, 1], [1, 0, 0], [1, 1, 0]]), k=1) == 2 / 3


def test_ranking_auc() -> None:
    scores = np.array([[0.9, 0.1, 0.5], [0.2, 0.2, 0.8], [0.3, 0.6, 0.1]])
    Y = np.array([[1, 0, 0], [1, 0, 0], [1, 1, 1]])  # row 3 has no false class: left out
    auc, se, n = ranking_auc(scores, Y)
    assert n == 2
    assert auc == pytest.approx((1.0 + 0.25) / 2)  # row 2: a tie (0.5) and a loss (0)
    assert se == pytest.approx(np.std([1.0, 0.25], ddof=1) / np.sqrt(2))
    rng = np.random.default_rng(0)
    Y = rng.random((400, 20)) < 0.4
    assert abs(ranking_auc(rng.random((400, 20)), Y)[0] - 0.5) < 0.03  # random scores
    assert ranking_auc(Y + 0.5 * rng.random((400, 20)), Y)[0] == 1.0


def test_knn_accuracy() -> None:
    train = np.array([[1, 0], [1, 0.1], [0, 1], [0.1, 1]])
    test = np.array([[1, 0.05], [0.05, 1]])
    assert knn_accuracy(train, np.array([0, 0, 1, 1]), test, np.array([0, 0]), k=1) == 0.5
    multi = np.array([[1, 0], [1, 0], [0, 1], [0, 1]])
    assert knn_accuracy(train, multi, test, np.array([[1, 0], [0, 1]]), k=2) == 1.0


@pytest.mark.parametrize("method", ["knn", "mahalanobis"])
def test_one_class_auc(method: str) -> None:
    rng = np.random.default_rng(0)
    normal = rng.normal(size=(50, 3))
    test = np.vstack([rng.normal(size=(20, 3)), rng.normal(size=(20, 3)) + 6])
    is_normal = np.r_[np.ones(20, bool), np.zeros(20, bool)]
    assert one_class_auc(normal, test, is_normal, method=method) == 1.0
    assert one_class_auc(normal, test, ~is_normal, method=method) == 0.0


def test_retrieval() -> None:
    emb = np.array([[1, 0], [0.9, 0.1], [0, 1], [0.1, 0.9]])
    r = retrieval(emb, np.array([0, 0, 1, 1]), k=1)
    assert r == {"precision_at_k": 1.0, "mAP": 1.0}
    # labels crossed: every nearest neighbour is wrong. Rankings: q0 → 1, 3, 2 (relevant 2 at
    # rank 3, AP 1/3); q1 → 0, 3, 2 (AP 1/2); q2 → 3, 1, 0 (AP 1/3); q3 → 2, 1, 0 (AP 1/2)
    r = retrieval(emb, np.array([0, 1, 0, 1]), k=1)
    assert r["precision_at_k"] == 0.0
    assert r["mAP"] == pytest.approx(5 / 12)
    multi = np.array([[1, 1, 0], [1, 1, 0], [0, 1, 1], [0, 1, 1]])
    assert retrieval(emb, multi, k=1)["precision_at_k"] == 1.0
    assert retrieval(emb, multi, k=3, min_jaccard=0.3)["precision_at_k"] == 1.0


def _embedded(n: int, informative: bool, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Models with 3 of 8 classes; embeddings = their multi-hot labels plus noise, or noise."""
    rng = np.random.default_rng(seed)
    Y = np.zeros((n, 8))
    for row in Y:
        row[rng.choice(8, 3, replace=False)] = 1.0
    noise = rng.normal(size=(n, 16))
    return (np.hstack([4 * Y, np.zeros((n, 8))]) + noise if informative else noise), Y


@pytest.mark.parametrize("informative", [True, False])
def test_representation_scores_separate_signal_from_noise(informative: bool) -> None:
    from probex_core.metrics import representation_scores

    E_tr, Y_tr = _embedded(200, informative, seed=0)
    E_te, Y_te = _embedded(80, informative, seed=1)
    chance = per_class_accuracy(Y_te, np.zeros_like(Y_te))  # majority guess: "no class"
    scores = {m: (v, c) for m, v, c in representation_scores(E_tr, Y_tr, E_te, Y_te, chance)}
    assert set(scores) == {"knn_per_class_accuracy", "one_class_auc", "retrieval_precision_at_5"}
    for metric, (value, ch) in scores.items():
        if informative:
            assert value > ch + 0.1, metric
        else:
            assert abs(value - ch) < 0.1, metric


def test_expected_calibration_error_is_zero_when_confidence_matches_hits_and_large_when_not():
    from probex_core.metrics import expected_calibration_error

    rng = np.random.default_rng(0)
    p = rng.uniform(0, 1, size=(4000, 1))
    honest = (rng.uniform(0, 1, size=p.shape) < p).astype(float)
    assert expected_calibration_error(p, honest, single=False) < 0.03
    overconfident = np.where(p > 0.5, 0.999, 0.001)
    assert expected_calibration_error(overconfident, honest, single=False) > 0.2
    # one class per model: the top class's probability against whether it is right
    probs = np.array([[0.9, 0.1], [0.9, 0.1], [0.6, 0.4], [0.6, 0.4]])
    Y = np.array([[1, 0], [0, 1], [1, 0], [1, 0]])
    assert expected_calibration_error(probs, Y, single=True) == pytest.approx(0.5 * 0.4 + 0.5 * 0.4)
