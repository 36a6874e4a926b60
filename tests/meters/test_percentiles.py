"""When summarize() prints p90, p99 and the median's CI, and when it leaves them null."""

from __future__ import annotations

import numpy as np
import pytest

from bench.meters.timing import MIN_SAMPLES, median_ci_indices, min_ci_samples, summarize


def _planted(n: int) -> list[float]:
    # 1..n ms in a scrambled order: known order statistics, no ties
    return [float(v) for v in np.random.default_rng(n).permutation(np.arange(1, n + 1))]


def test_thresholds_are_the_documented_ones() -> None:
    assert MIN_SAMPLES == {"p90": 20, "p99": 100}
    assert min_ci_samples() == 6
    assert median_ci_indices(5) is None and median_ci_indices(6) is not None


@pytest.mark.parametrize(
    ("n", "p90", "p99", "ci"),
    [(5, False, False, False), (19, False, False, True), (20, True, False, True),
     (99, True, False, True), (100, True, True, True)],
)
def test_null_rules_with_planted_samples(n: int, p90: bool, p99: bool, ci: bool) -> None:
    s = summarize(_planted(n))
    x = np.arange(1, n + 1, dtype=float)
    reasons = s["null_reasons"]
    assert s["n"] == n
    assert s["median"] == pytest.approx(float(np.median(x)))  # the median is always there
    for key, shown in (("p90", p90), ("p99", p99)):
        if shown:
            assert s[key] == pytest.approx(float(np.percentile(x, int(key[1:]))))
            assert key not in reasons
        else:
            assert s[key] is None
            assert reasons[key] == f"needs >= {MIN_SAMPLES[key]} samples, have {n}"
    if ci:
        lo, hi, coverage = median_ci_indices(n)  # type: ignore[misc]
        assert (s["ci_low"], s["ci_high"]) == (lo + 1.0, hi + 1.0)
        assert s["ci_low"] <= s["median"] <= s["ci_high"]
        assert s["ci_coverage"] == pytest.approx(coverage) and coverage >= 0.95
        assert "ci_low" not in reasons
    else:
        assert (s["ci_low"], s["ci_high"], s["ci_coverage"]) == (None, None, None)
        for key in ("ci_low", "ci_high", "ci_coverage"):
            assert reasons[key] == f"needs >= 6 samples, have {n}"


def test_nothing_null_means_no_reasons() -> None:
    assert summarize(_planted(100))["null_reasons"] == {}


def test_single_sample_says_why_std_is_null() -> None:
    s = summarize([4.0])
    assert s["std"] is None and s["cv"] is None
    assert s["null_reasons"]["std"] == "needs >= 2 samples, have 1"
    assert set(s["null_reasons"]) >= {"p90", "p99", "ci_low", "std", "cv"}
