"""Tests for recmodels.metrics: hand-computed cases, brute-force and sklearn cross-checks."""

from __future__ import annotations

import subprocess
import sys
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from recmodels.metrics import (
    RankAccumulator,
    auc,
    auc_per_user,
    binary_metrics,
    evaluate_full,
    evaluate_sampled,
    hit_rate,
    ndcg,
    ranks_full,
    ranks_sampled,
)

INV_LOG2_3 = 0.6309297535714575  # 1 / log2(3)
INV_LOG2_11 = 0.2890648263178879  # 1 / log2(11)


def _csr(rows: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
    indptr = np.cumsum([0] + [len(r) for r in rows])
    indices = np.array([i for r in rows for i in r], dtype=np.int64)
    return indptr, indices


# --------------------------------------------------------------------------- sampled ranks


def test_ranks_sampled_hand_case_mid_rank() -> None:
    scores = np.array(
        [
            [5.0, 1.0, 2.0, 6.0, 5.0],  # one higher, one tie -> 1.5
            [3.0, 1.0, 2.0, 0.0, -np.inf],  # best -> 0
            [0.0, 1.0, 2.0, 3.0, 4.0],  # worst -> 4
        ]
    )
    np.testing.assert_array_equal(ranks_sampled(scores), [1.5, 0.0, 4.0])


def test_constant_scorer_gets_middle_rank() -> None:
    ranks = ranks_sampled(np.zeros((7, 101), dtype=np.float32))
    np.testing.assert_array_equal(ranks, np.full(7, 50.0))
    assert hit_rate(ranks, 10) == 0.0
    assert ndcg(ranks, 10) == 0.0
    assert hit_rate(ranks, 51) == 1.0  # 50 < 51


def test_ranks_sampled_matches_brute_force_with_ties() -> None:
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 5, size=(200, 11)).astype(np.float64)
    expected = [
        sum(1.0 if x > row[0] else 0.5 if x == row[0] else 0.0 for x in row[1:]) for row in scores
    ]
    np.testing.assert_array_equal(ranks_sampled(scores), expected)


def test_nan_scores_raise() -> None:
    with pytest.raises(ValueError, match="NaN"):
        ranks_sampled(np.array([[np.nan, 1.0, 2.0]]))
    with pytest.raises(ValueError, match="NaN"):
        binary_metrics(np.array([1.0]), np.array([[np.nan]]))


# --------------------------------------------------------------------------- HR / NDCG


def test_hit_rate_and_ndcg_hand_values() -> None:
    assert ndcg(np.array([0]), 10) == 1.0
    assert ndcg(np.array([1]), 10) == pytest.approx(INV_LOG2_3, abs=1e-15)
    assert ndcg(np.array([10]), 10) == 0.0
    assert ndcg(np.array([9]), 10) == pytest.approx(INV_LOG2_11, abs=1e-15)
    ranks = np.array([0, 1, 10, 9])
    assert hit_rate(ranks, 10) == 0.75
    assert hit_rate(ranks, 1) == 0.25
    assert ndcg(ranks, 10) == pytest.approx((1 + INV_LOG2_3 + INV_LOG2_11) / 4, abs=1e-15)
    # Fractional mid-rank uses the same formula: 1/log2(2.5).
    assert ndcg(np.array([0.5]), 10) == pytest.approx(0.75647079736603, abs=1e-15)


def test_bad_k_and_empty_ranks_raise() -> None:
    with pytest.raises(ValueError, match="k must"):
        hit_rate(np.array([0]), 0)
    with pytest.raises(ValueError, match="empty"):
        ndcg(np.array([]), 10)


# --------------------------------------------------------------------------- full catalog


def test_ranks_full_hand_case() -> None:
    # Padding column 0 scores highest and must never count.
    scores = np.array([[100.0, 0.9, 0.5, 0.7, 0.3, 0.5]])
    target = np.array([2])  # score 0.5: items 1, 3 higher; item 5 tied
    np.testing.assert_array_equal(ranks_full(scores, target), [2.5])
    # Seen: 1 (higher) and 5 (tie) go; 2 is the target and stays; 0 is padding and is ignored.
    indptr, indices = _csr([[1, 2, 5, 0]])
    np.testing.assert_array_equal(ranks_full(scores, target, indptr, indices), [1.0])
    # A duplicated seen item is removed once.
    indptr, indices = _csr([[3, 3]])
    np.testing.assert_array_equal(ranks_full(scores, target, indptr, indices), [1.5])


def test_ranks_full_target_in_seen_is_kept() -> None:
    scores = np.array([[0.0, 0.1, 0.2, 0.3]])
    target = np.array([1])
    indptr, indices = _csr([[1]])
    np.testing.assert_array_equal(ranks_full(scores, target, indptr, indices), [2.0])
    assert evaluate_full(scores, target, indptr, indices, ks=(3,)) == {"hr@3": 1.0, "ndcg@3": 0.5}


def test_ranks_full_removing_seen_shifts_rank_by_removed_higher_items() -> None:
    rng = np.random.default_rng(1)
    n, c = 40, 300
    scores = rng.standard_normal((n, c + 1))  # continuous: no ties
    targets = rng.integers(1, c + 1, size=n)
    seen = [
        list(rng.choice(np.arange(1, c + 1), size=rng.integers(0, 30), replace=False))
        for _ in range(n)
    ]
    seen[0].append(int(targets[0]))  # the target listed in seen must stay
    indptr, indices = _csr(seen)
    base = ranks_full(scores, targets)
    got = ranks_full(scores, targets, indptr, indices)
    t = scores[np.arange(n), targets]
    removed_higher = [
        sum(1 for j in set(s) if j != targets[i] and scores[i, j] > t[i])
        for i, s in enumerate(seen)
    ]
    np.testing.assert_array_equal(base - got, removed_higher)
    assert any(removed_higher)  # the case exercises removal at all
    # Brute force: mask with -inf, rank among columns 1..C.
    masked = scores.copy()
    for i, s in enumerate(seen):
        masked[i, [j for j in s if j != targets[i]]] = -np.inf
    brute = (masked[:, 1:] > t[:, None]).sum(1)
    np.testing.assert_array_equal(got, brute)


def test_ranks_full_ties_and_padding_with_constant_scores() -> None:
    # Constant scorer over C=9 items, padding excluded: 8 competitors tie -> rank 4.
    scores = np.zeros((3, 10))
    np.testing.assert_array_equal(ranks_full(scores, np.array([1, 5, 9])), [4.0, 4.0, 4.0])
    indptr, indices = _csr([[2, 3], [], [1]])
    np.testing.assert_array_equal(
        ranks_full(scores, np.array([1, 5, 9]), indptr, indices), [3.0, 4.0, 3.5]
    )


def test_ranks_full_does_not_modify_scores_and_bounds_memory() -> None:
    rng = np.random.default_rng(2)
    n, c = 400, 20_000
    scores = rng.standard_normal((n, c + 1), dtype=np.float32)
    before = scores.copy()
    targets = rng.integers(1, c + 1, size=n)
    indptr = np.arange(0, 50 * n + 1, 50)
    indices = rng.integers(0, c + 1, size=50 * n)
    tracemalloc.start()
    try:
        ranks_full(scores, targets, indptr, indices)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    np.testing.assert_array_equal(scores, before)
    # One [N, C] bool mask at a time is 0.25 of the float32 scores; a float copy would be >= 1.
    assert peak <= 0.55 * scores.nbytes


def test_ranks_full_rejects_bad_input() -> None:
    scores = np.zeros((2, 5))
    with pytest.raises(ValueError, match=r"1\.\.4"):
        ranks_full(scores, np.array([0, 1]))  # padding is not a target
    with pytest.raises(ValueError, match="seen_indices"):
        ranks_full(scores, np.array([1, 1]), np.array([0, 1, 1]), np.array([5]))
    with pytest.raises(ValueError, match="seen_indptr"):
        ranks_full(scores, np.array([1, 1]), np.array([0, 1]), np.array([2]))


# --------------------------------------------------------------------------- classification


def test_binary_metrics_hand_case() -> None:
    pos = np.array([2.0, -1.0])
    neg = np.array([[1.0, -3.0], [0.0, 0.5]])
    # score > 0: tp=1 (2.0), fn=1; fp=2 (1.0, 0.5; 0.0 is not > 0), tn=2.
    m = binary_metrics(pos, neg)
    assert m["accuracy"] == 0.5
    assert m["precision"] == pytest.approx(1 / 3, abs=1e-15)
    assert m["recall"] == 0.5
    assert m["f1"] == pytest.approx(0.4, abs=1e-15)
    assert m["auc"] == 0.625  # pos 2.0 beats 4 negatives, -1.0 beats 1: 5/8
    m = binary_metrics(pos, neg, threshold=1.0)  # tp=1, fp=0, fn=1, tn=4
    assert (m["accuracy"], m["precision"], m["recall"]) == (5 / 6, 1.0, 0.5)
    assert m["f1"] == pytest.approx(2 / 3, abs=1e-15)
    # Strictly greater: a score equal to the threshold is predicted negative, for both labels.
    m = binary_metrics(np.array([0.0, 1.0]), np.array([[0.0], [0.0]]))
    assert (m["accuracy"], m["precision"], m["recall"]) == (0.75, 1.0, 0.5)


def test_binary_metrics_zero_over_zero_is_zero() -> None:
    m = binary_metrics(np.array([-1.0, -2.0]), np.array([[-1.0, -3.0], [-5.0, -0.5]]))
    assert (m["precision"], m["recall"], m["f1"]) == (0.0, 0.0, 0.0)
    assert m["accuracy"] == pytest.approx(4 / 6, abs=1e-15)


def test_auc_matches_sklearn_with_ties() -> None:
    rng = np.random.default_rng(3)
    n, r = 500, 20
    pos = np.round(rng.standard_normal(n) + 0.5, 1)  # rounding creates many ties
    neg = np.round(rng.standard_normal((n, r)), 1)
    labels = np.r_[np.ones(n), np.zeros(n * r)]
    expected = roc_auc_score(labels, np.r_[pos, neg.ravel()])
    assert abs(auc(pos, neg) - expected) < 1e-12
    assert 0.6 < expected < 0.9  # a non-trivial case


def test_auc_perfect_inverse_and_constant() -> None:
    pos, neg = np.array([2.0, 3.0]), np.array([[0.0, 1.0], [-1.0, 1.5]])
    assert auc(pos, neg) == 1.0
    assert auc(-pos, -neg) == 0.0
    assert auc(np.zeros(3), np.zeros((3, 4))) == 0.5


def test_auc_per_user_hand_case() -> None:
    pos = np.array([1.0, 3.0])
    neg = np.array(
        [
            [1.0, 0.0, 2.0, 1.0],  # 1 below + 2 ties/2 -> 2/4
            [0.0, 1.0, 2.0, 3.0],  # 3 below + 1 tie/2 -> 3.5/4
        ]
    )
    assert auc_per_user(pos, neg) == 0.6875


def test_auc_per_user_differs_from_pooled() -> None:
    pos = np.array([0.0, 10.0])
    neg = np.array([[-1.0, 1.0], [11.0, 12.0]])
    assert auc_per_user(pos, neg) == 0.25  # (1/2 + 0/2) / 2
    assert auc(pos, neg) == 0.375  # 0.0 beats 1 of all 4 negatives, 10.0 beats 2: 3/8


def test_evaluate_sampled_hand_case() -> None:
    scores = np.array(
        [
            [3.0, 1.0, 2.0],  # rank 0
            [-1.0, 1.0, 2.0],  # rank 2
        ]
    )
    m = evaluate_sampled(scores, ks=(1, 3))
    assert set(m) == {
        "hr@1",
        "ndcg@1",
        "hr@3",
        "ndcg@3",
        "auc",
        "auc_per_user",
        "accuracy",
        "precision",
        "recall",
        "f1",
    }
    assert (m["hr@1"], m["ndcg@1"], m["hr@3"]) == (0.5, 0.5, 1.0)
    assert m["ndcg@3"] == 0.75  # (1 + 1/log2(4)) / 2
    assert m["auc_per_user"] == 0.5
    assert m["auc"] == 0.5  # 3.0 beats all 4, -1.0 beats none
    # > 0: tp=1, fp=4, fn=1, tn=0
    assert (m["accuracy"], m["precision"], m["recall"]) == (1 / 6, 0.2, 0.5)
    assert m["f1"] == pytest.approx(2 / 7, abs=1e-15)


# --------------------------------------------------------------------------- accumulator


def test_accumulator_sampled_equals_one_shot() -> None:
    rng = np.random.default_rng(4)
    scores = np.round(rng.standard_normal((103, 101)), 1).astype(np.float32)
    acc = RankAccumulator()
    buf = np.empty((40, 101), dtype=np.float32)
    for lo in range(0, 103, 40):
        batch = scores[lo : lo + 40]
        buf[: len(batch)] = batch
        acc.add_sampled(buf[: len(batch)])
        buf[:] = 9.0  # the caller reuses its buffer: the accumulator must have copied
    assert len(acc) == 103
    assert acc.result(ks=(1, 10)) == evaluate_sampled(scores, ks=(1, 10))
    assert acc.result(threshold=0.5) == evaluate_sampled(scores, threshold=0.5)


def test_accumulator_full_equals_one_shot() -> None:
    rng = np.random.default_rng(5)
    n, c = 30, 50
    scores = np.round(rng.standard_normal((n, c + 1)), 1)
    targets = rng.integers(1, c + 1, size=n)
    seen = [list(rng.integers(0, c + 1, size=rng.integers(0, 8))) for _ in range(n)]
    acc = RankAccumulator()
    for lo, hi in ((0, 7), (7, 19), (19, n)):
        indptr, indices = _csr(seen[lo:hi])
        acc.add_full(scores[lo:hi], targets[lo:hi], indptr, indices)
    indptr, indices = _csr(seen)
    expected = evaluate_full(scores, targets, indptr, indices, ks=(5, 10))
    assert acc.result(ks=(5, 10)) == expected
    assert expected["hr@10"] > 0  # the comparison is not between two zeros


def test_accumulator_rejects_mixing_and_empty() -> None:
    acc = RankAccumulator()
    with pytest.raises(ValueError, match="nothing"):
        acc.result()
    acc.add_sampled(np.zeros((2, 5)))
    with pytest.raises(ValueError, match="R changed"):
        acc.add_sampled(np.zeros((2, 6)))
    with pytest.raises(ValueError, match="cannot add full"):
        acc.add_full(np.zeros((1, 5)), np.array([1]))


def test_module_does_not_import_sklearn() -> None:
    code = "import sys, recmodels.metrics; assert 'sklearn' not in sys.modules"
    subprocess.run(
        [sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[2]
    )
