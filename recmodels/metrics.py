"""Ranking and classification metrics for next-item recommendation.

Protocols (Kang & McAuley 2018, "Self-Attentive Sequential Recommendation", Sec. IV-B):

- **sampled**: leave-one-out; each user's held-out item (the target) is ranked against R sampled
  negatives (R = 100 in the paper). Scores are ``[N, 1+R]`` with the target in column 0.
- **full**: the target is ranked against the whole catalog ``1..C``; column 0 of ``[N, C+1]`` is
  the padding item and is never ranked, and the user's already-seen items are excluded.

Conventions every caller relies on:

- Ranks are 0-based (0 = best) and ties take the **mid-rank**: ``rank = #greater + 0.5 * #tied``
  counted over the competing candidates. A constant scorer therefore lands in the middle
  (rank 50 of 101) instead of being rewarded or punished by sort order. This is deterministic,
  not the expectation over random tie-breaks: a fractional rank just under K counts as a hit.
- HR@K = mean(rank < K); NDCG@K with one relevant item = mean(1 / log2(rank + 2) if rank < K
  else 0) (Jarvelin & Kekalainen 2002, ideal DCG = 1), applied unchanged to fractional ranks.
- Scores are logits: the classification metrics predict "positive" when ``score > threshold``
  (default 0.0, i.e. probability 0.5). Precision/recall/F1 are for the positive class, 0/0 := 0.
- NaN scores raise ``ValueError``: a diverged model has no rank, and NaN compares false, which
  would silently put a NaN target at rank 0. ``-inf`` is a valid score (a masked item).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = [
    "RankAccumulator",
    "auc",
    "auc_per_user",
    "binary_metrics",
    "evaluate_full",
    "evaluate_sampled",
    "hit_rate",
    "ndcg",
    "ranks_full",
    "ranks_sampled",
]


def _check_no_nan(x: np.ndarray, name: str) -> None:
    if np.issubdtype(x.dtype, np.floating) and np.isnan(x).any():
        raise ValueError(f"{name} contains NaN; metrics are undefined (did the model diverge?)")


def _as_scores_2d(scores: np.ndarray, name: str, first_col: int = 0) -> np.ndarray:
    """2-D scores with at least two columns, NaN-free from column ``first_col`` on."""
    s = np.asarray(scores)
    if s.ndim != 2 or s.shape[1] < 2:
        raise ValueError(f"{name} must be 2-D with at least 2 columns, got {s.shape}")
    _check_no_nan(s[:, first_col:], name)
    return s


def _check_k(k: int) -> int:
    if int(k) != k or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    return int(k)


def _as_ranks(ranks: np.ndarray) -> np.ndarray:
    r = np.asarray(ranks, dtype=np.float64).ravel()
    if r.size == 0:
        raise ValueError("no ranks to average (empty input)")
    return r


# --------------------------------------------------------------------------- ranks


def ranks_sampled(scores: np.ndarray) -> np.ndarray:
    """0-based mid-rank of column 0 (the target) among the row's ``1+R`` candidates.

    scores: ``[N, 1+R]``. Returns float64 ``[N]`` with values in ``[0, R]``:
    ``#negatives scored higher + 0.5 * #negatives tied with the target``.
    """
    s = _as_scores_2d(scores, "scores")
    target, neg = s[:, :1], s[:, 1:]
    greater = np.count_nonzero(neg > target, axis=1)
    tied = np.count_nonzero(neg == target, axis=1)
    return greater + 0.5 * tied


def ranks_full(
    scores: np.ndarray,
    targets: np.ndarray,
    seen_indptr: np.ndarray | None = None,
    seen_indices: np.ndarray | None = None,
) -> np.ndarray:
    """0-based mid-rank of each target among the whole catalog ``1..C``.

    scores: ``[N, C+1]``, column 0 = padding, never ranked (whatever its score).
    targets: ``[N]`` item IDs in ``1..C``.
    seen_indptr, seen_indices: CSR rows, row i = items to exclude for user i (history items);
    ``None`` excludes nothing. Duplicates and item 0 are ignored; the target is never excluded
    even when listed. Excluded items behave as if scored ``-inf`` and do not count as ties.

    Returns float64 ``[N]`` in ``[0, C-1]``. ``scores`` is not modified and not copied: we count
    over the catalog, then subtract the excluded items' contributions (O(nnz) gathers), so the
    largest temporary is one ``[N, C]`` boolean mask (a quarter of a float32 copy).
    """
    s = _as_scores_2d(scores, "scores", first_col=1)  # padding may hold anything
    n, c1 = s.shape
    t_idx = np.asarray(targets)
    if t_idx.shape != (n,) or not np.issubdtype(t_idx.dtype, np.integer):
        raise ValueError(
            f"targets must be an integer array of shape ({n},), got {t_idx.dtype} {t_idx.shape}"
        )
    if n and (t_idx.min() < 1 or t_idx.max() >= c1):
        raise ValueError(f"targets must be item IDs in 1..{c1 - 1} (0 is padding)")
    t_idx = t_idx.astype(np.int64)
    rows_all = np.arange(n)
    target = s[rows_all, t_idx][:, None]

    cand = s[:, 1:]  # a view: padding column dropped
    greater = np.count_nonzero(cand > target, axis=1)
    tied = np.count_nonzero(cand == target, axis=1) - 1  # the target ties with itself

    if seen_indptr is not None or seen_indices is not None:
        if seen_indptr is None or seen_indices is None:
            raise ValueError("give both seen_indptr and seen_indices, or neither")
        rows, items = _csr_pairs(seen_indptr, seen_indices, n, c1)
        # The target itself and padding are never excluded; dedupe so an item listed twice is
        # subtracted once.
        keep = (items != 0) & (items != t_idx[rows])
        key = np.unique(rows[keep] * c1 + items[keep])
        rows, items = np.divmod(key, c1)
        v, tv = s[rows, items], target[rows, 0]
        greater -= np.bincount(rows[v > tv], minlength=n)
        tied -= np.bincount(rows[v == tv], minlength=n)
    return greater + 0.5 * tied


def _csr_pairs(
    indptr: np.ndarray, indices: np.ndarray, n: int, c1: int
) -> tuple[np.ndarray, np.ndarray]:
    """CSR -> (row, item) int64 pairs, validated against N users and C+1 columns."""
    ptr = np.asarray(indptr, dtype=np.int64)
    idx = np.asarray(indices)
    if ptr.shape != (n + 1,):
        raise ValueError(f"seen_indptr must have shape ({n + 1},), got {ptr.shape}")
    counts = np.diff(ptr)
    if ptr[0] != 0 or (counts < 0).any() or ptr[-1] > idx.size:
        raise ValueError(
            "seen_indptr must start at 0, be non-decreasing and end <= len(seen_indices)"
        )
    items = idx[: ptr[-1]].astype(np.int64)
    if items.size and (items.min() < 0 or items.max() >= c1):
        raise ValueError(f"seen_indices must be item IDs in 0..{c1 - 1}")
    return np.repeat(np.arange(n, dtype=np.int64), counts), items


# --------------------------------------------------------------------------- ranking metrics


def hit_rate(ranks: np.ndarray, k: int) -> float:
    """HR@K: fraction of targets with rank < K (0-based ranks)."""
    r, k = _as_ranks(ranks), _check_k(k)
    return float(np.mean(r < k))


def ndcg(ranks: np.ndarray, k: int) -> float:
    """NDCG@K with one relevant item: mean of 1/log2(rank+2) for rank < K, else 0."""
    r, k = _as_ranks(ranks), _check_k(k)
    gain = np.zeros_like(r)
    hit = r < k
    gain[hit] = 1.0 / np.log2(r[hit] + 2.0)
    return float(gain.mean())


# --------------------------------------------------------------------------- classification


def _pos_neg(pos_scores: np.ndarray, neg_scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    pos = np.asarray(pos_scores).ravel()
    neg = np.asarray(neg_scores)
    if neg.ndim == 1:
        neg = neg[:, None]
    if neg.ndim != 2 or neg.shape[0] != pos.size or neg.shape[1] < 1 or pos.size == 0:
        raise ValueError(
            f"need pos [N] and neg [N, R] with N, R >= 1, got {pos.shape} and {neg.shape}"
        )
    _check_no_nan(pos, "pos_scores")
    _check_no_nan(neg, "neg_scores")
    return pos, neg


def _div(a: float, b: float) -> float:
    return float(a / b) if b else 0.0  # 0/0 := 0 (no predicted positives, etc.)


def auc(pos_scores: np.ndarray, neg_scores: np.ndarray) -> float:
    """Pooled AUC-ROC over all positive and negative scores.

    Mann-Whitney: AUC = P(pos > neg) + 0.5 P(pos == neg) over all (pos, neg) pairs, which equals
    the average-rank formula (U / (n_pos n_neg)). Counted with binary search over the sorted
    negatives, O(n log n), in integers (doubled to keep the half-ties exact).
    """
    pos, neg = _pos_neg(pos_scores, neg_scores)
    ns = np.sort(neg, axis=None)
    lo = np.searchsorted(ns, pos, side="left")  # negatives strictly below
    hi = np.searchsorted(ns, pos, side="right")  # ... plus ties
    twice_u = int(lo.sum(dtype=np.int64)) + int(hi.sum(dtype=np.int64))
    return twice_u / (2.0 * pos.size * ns.size)


def auc_per_user(pos_scores: np.ndarray, neg_scores: np.ndarray) -> float:
    """Per-user AUC averaged over users (GAUC with equal weights).

    For user i: fraction of its R negatives scored below its positive, ties counting 1/2, which
    is ``1 - rank_i / R`` with the mid-rank of ``ranks_sampled``.
    """
    pos, neg = _pos_neg(pos_scores, neg_scores)
    ranks = ranks_sampled(np.concatenate([pos[:, None], neg], axis=1))
    return float(np.mean(1.0 - ranks / neg.shape[1]))


def binary_metrics(
    pos_scores: np.ndarray, neg_scores: np.ndarray, threshold: float = 0.0
) -> dict[str, float]:
    """Accuracy, precision, recall, F1 (positive class) and pooled AUC.

    pos_scores ``[N]`` are label 1, neg_scores ``[N, R]`` are label 0; a pair is predicted
    positive when ``score > threshold``. Accuracy is over all ``N*(1+R)`` pairs, so with
    R = 100 an always-negative scorer scores 100/101: read it next to precision and recall.
    """
    pos, neg = _pos_neg(pos_scores, neg_scores)
    tp = int(np.count_nonzero(pos > threshold))
    fp = int(np.count_nonzero(neg > threshold))
    fn = pos.size - tp
    tn = neg.size - fp
    return {
        "accuracy": (tp + tn) / (pos.size + neg.size),
        "precision": _div(tp, tp + fp),
        "recall": _div(tp, tp + fn),
        "f1": _div(2 * tp, 2 * tp + fp + fn),  # = 2PR/(P+R), without the 0/0 corner cases
        "auc": auc(pos, neg),
    }


# --------------------------------------------------------------------------- one-shot reports


def _ranking(ranks: np.ndarray, ks: Sequence[int]) -> dict[str, float]:
    out: dict[str, float] = {}
    for k in ks:
        out[f"hr@{k}"] = hit_rate(ranks, k)
        out[f"ndcg@{k}"] = ndcg(ranks, k)
    return out


def _sampled_report(
    ranks: np.ndarray, pos: np.ndarray, neg: np.ndarray, ks: Sequence[int], threshold: float
) -> dict[str, float]:
    out = _ranking(ranks, ks)
    out.update(binary_metrics(pos, neg, threshold))
    out["auc_per_user"] = float(np.mean(1.0 - ranks / neg.shape[1]))
    return out


def evaluate_sampled(
    scores: np.ndarray, ks: Sequence[int] = (10,), threshold: float = 0.0
) -> dict[str, float]:
    """Sampled protocol: scores ``[N, 1+R]``, target in column 0.

    Keys: ``hr@K``, ``ndcg@K`` for each K, ``auc`` (pooled), ``auc_per_user``, ``accuracy``,
    ``precision``, ``recall``, ``f1``.
    """
    s = _as_scores_2d(scores, "scores")
    return _sampled_report(ranks_sampled(s), s[:, 0], s[:, 1:], ks, threshold)


def evaluate_full(
    scores: np.ndarray,
    targets: np.ndarray,
    seen_indptr: np.ndarray | None = None,
    seen_indices: np.ndarray | None = None,
    ks: Sequence[int] = (10,),
) -> dict[str, float]:
    """Full-catalog protocol (see ``ranks_full``). Keys: ``hr@K``, ``ndcg@K`` for each K."""
    return _ranking(ranks_full(scores, targets, seen_indptr, seen_indices), ks)


# --------------------------------------------------------------------------- streaming


class RankAccumulator:
    """Collects per-batch results so an evaluation loop can report once at the end.

    Use one protocol per accumulator (``add_sampled`` or ``add_full``, not both). Sampled
    batches keep their ranks and a copy of the scores (O(N*(1+R)) in total), because pooled
    AUC needs every score; full batches keep only the ranks (O(N)). ``result`` equals
    ``evaluate_sampled`` / ``evaluate_full`` on the concatenated batches.
    """

    def __init__(self) -> None:
        self._mode: str | None = None
        self._ranks: list[np.ndarray] = []
        self._pos: list[np.ndarray] = []
        self._neg: list[np.ndarray] = []

    def __len__(self) -> int:
        """Number of users (rows) added so far."""
        return sum(r.size for r in self._ranks)

    def _enter(self, mode: str) -> None:
        if self._mode not in (None, mode):
            raise ValueError(f"accumulator holds {self._mode} results; cannot add {mode}")
        self._mode = mode

    def add_sampled(self, scores: np.ndarray) -> None:
        """Add a batch of sampled-protocol scores ``[B, 1+R]`` (R fixed across batches)."""
        s = _as_scores_2d(scores, "scores")
        if self._neg and s.shape[1] - 1 != self._neg[0].shape[1]:
            raise ValueError(
                f"R changed between batches: {self._neg[0].shape[1]} -> {s.shape[1] - 1}"
            )
        self._enter("sampled")
        self._ranks.append(ranks_sampled(s))
        # Copies: callers often reuse their output buffer for the next batch.
        self._pos.append(s[:, 0].copy())
        self._neg.append(s[:, 1:].copy())

    def add_full(
        self,
        scores: np.ndarray,
        targets: np.ndarray,
        seen_indptr: np.ndarray | None = None,
        seen_indices: np.ndarray | None = None,
    ) -> None:
        """Add a batch of full-catalog scores; arguments as in ``ranks_full`` (batch-local)."""
        ranks = ranks_full(scores, targets, seen_indptr, seen_indices)
        self._enter("full")
        self._ranks.append(ranks)

    def result(self, ks: Sequence[int] = (10,), threshold: float = 0.0) -> dict[str, float]:
        """Metrics over everything added: the keys of ``evaluate_sampled`` or ``evaluate_full``."""
        if self._mode is None:
            raise ValueError("nothing was added to the accumulator")
        ranks = np.concatenate(self._ranks)
        if self._mode == "full":
            return _ranking(ranks, ks)
        pos, neg = np.concatenate(self._pos), np.concatenate(self._neg)
        return _sampled_report(ranks, pos, neg, ks, threshold)
