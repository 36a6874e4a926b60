"""Tests for bench.gate.stats: the Mann–Whitney test, the bootstrap CI, the regression rule,
parsers.

The calibration and power tests simulate CI-like step times: log-normal around 10 ms with
sigma 0.1 (~10% spread) and 2% of samples inflated x1.5-3 (preemption, GC, a noisy neighbour).
All trials are drawn as arrays up front; each seed is fixed, so the rates are reproducible.
Rates measured with this model (3000 trials per cell, threshold 5%, alpha 0.01, n per side;
``python benchmarks/stats_calibration.py --trials 3000 --seed 0``, ~6 minutes on 2 cores):

    n      A/A regressed   A/A unchanged   +3% regressed   +10% regressed
    5      0.23%            0.07%          1.1%             6.6%
    10     0.07%            0.10%          0.87%           15%
    15     0.07%            0.47%          1.1%            25%
    30     0.13%            7.3%           1.7%            49%
    50     0               45%             2.0%            73%
    80     0.03%           91%             1.9%            91%
    100    0.03%           98.5%           1.9%            95.6%
    120    0               99.7%           2.1%            97.5%
    200    0              100%             2.1%            99.93%

so a CI suite needs ~120 samples a side to catch a 10% slowdown 95% of the time with margin.
With 5 a side a 2x slowdown is flagged in 92% of trials: only the exact Mann–Whitney p (used up
to 8 a side without ties) can go below 0.01 there; the asymptotic one flagged none.
The tests below use 400 trials per cell.
"""

from __future__ import annotations

import functools
import itertools
import json
import math
import warnings
from dataclasses import asdict

import numpy as np
import pytest

import bench.gate.stats as stats
from bench.gate.stats import (
    Check,
    Verdict,
    compare_samples,
    compare_scalar,
    mann_whitney_u,
    parse_check,
    parse_threshold,
    ratio_of_medians_ci,
    statistic,
)
from recmodels.errors import InputError

# ----------------------------------------------------------------------------- noise model


def noisy_step_ms(rng: np.random.Generator, trials: int, n: int, factor: float = 1.0) -> np.ndarray:
    """``[trials, n]`` step times: 10 ms log-normal (sigma 0.1), 2% outliers x1.5-3, x factor."""
    x = 10.0 * np.exp(rng.normal(0.0, 0.1, (trials, n)))
    outlier = rng.random((trials, n)) < 0.02
    x = np.where(outlier, x * rng.uniform(1.5, 3.0, (trials, n)), x)
    return x * factor


def status_rates(base: np.ndarray, new: np.ndarray, **kw: object) -> dict[str, float]:
    """Fraction of trials (rows) that end in each status."""
    got = [compare_samples(b, v, **kw).status for b, v in zip(base, new, strict=True)]
    return {
        s: got.count(s) / len(got) for s in ("regressed", "improved", "unchanged", "inconclusive")
    }


TRIALS = 400


# ----------------------------------------------------------------------------- Mann–Whitney


def _exact_two_sided_p(x: list[float], y: list[float]) -> float:
    """Exact two-sided Mann–Whitney p by enumerating every split of the pooled ranks (no ties)."""
    n1, pooled = len(x), sorted(x + y)
    rank = {v: i + 1 for i, v in enumerate(pooled)}
    mean = n1 * len(y) / 2
    dev = abs(sum(rank[v] for v in x) - n1 * (n1 + 1) / 2 - mean)
    us = [sum(c) - n1 * (n1 + 1) / 2 for c in itertools.combinations(range(1, len(pooled) + 1), n1)]
    return min(1.0, sum(abs(u - mean) >= dev for u in us) / len(us))


def test_mann_whitney_exact_for_small_samples_without_ties() -> None:
    # Complete separation of 5 v 5: 2 of the C(10, 5) = 252 rank splits are as extreme.
    u, p = mann_whitney_u([1.0, 2.0, 3.0, 4.0, 5.0], [6.0, 7.0, 8.0, 9.0, 10.0])
    assert (u, p) == (0.0, pytest.approx(2 / 252, rel=1e-12))
    assert p < 0.01  # the asymptotic test gave 0.012 here
    assert mann_whitney_u([6.0, 7.0, 8.0, 9.0, 10.0], [1.0, 2.0, 3.0, 4.0, 5.0]) == (25.0, p)
    # overlapping 4 v 5 and 3 v 7, against an enumeration of all splits
    for x, y in [
        ([1.5, 3.2, 4.1, 9.0], [2.0, 5.5, 6.1, 7.3, 8.8]),
        ([0.1, 0.7, 0.3], [0.2, 0.9, 1.4, 0.8, 0.5, 1.1, 1.3]),
    ]:
        assert mann_whitney_u(x, y)[1] == pytest.approx(_exact_two_sided_p(x, y), rel=1e-12)
    assert mann_whitney_u([1.0], [2.0]) == (0.0, 1.0)  # 1 v 1: both orders equally likely


def test_mann_whitney_asymptotic_with_ties_or_larger_samples() -> None:
    # Ties: normal approximation with the tie-corrected variance and a continuity correction.
    # x > y pairs of [1, 2, 2] v [2, 3, 4]: the two 2s tie the y 2 (half each): U = 1.
    # Var = 3*3/12 * (7 - (3^3 - 3)/(6*5)) = 4.65; z = (|1 - 4.5| - 0.5)/sqrt(4.65).
    u, p = mann_whitney_u([1.0, 2.0, 2.0], [2.0, 3.0, 4.0])
    assert u == 1.0
    assert p == pytest.approx(math.erfc(3.0 / math.sqrt(4.65) / math.sqrt(2.0)), rel=1e-12)
    # 9 v 9 (more than 8 a side), complete separation: Var = 9*9*19/12, z = (40.5 - 0.5)/sd.
    u, p = mann_whitney_u(np.arange(9.0), np.arange(9.0) + 10.0)
    assert u == 0.0
    assert p == pytest.approx(math.erfc(40.0 / math.sqrt(81 * 19 / 12) / math.sqrt(2.0)), rel=1e-12)
    # all tied: no evidence of a difference
    assert mann_whitney_u(np.full(6, 3.0), np.full(4, 3.0)) == (12.0, 1.0)


def test_mann_whitney_by_hand() -> None:
    # x > y pairs: 1>0; 2>0, 2=2 (half); 3>0, 3>2  ->  U = 4.5
    u, _ = mann_whitney_u([1.0, 2.0, 3.0], [0.0, 2.0, 5.0])
    assert u == 4.5
    # No ties, 3 v 3, U = 0: exact, 2 of the C(6, 3) = 20 rank splits are as extreme
    u, p = mann_whitney_u([1.0, 2.0, 3.0], [4.0, 5.0, 6.0])
    assert u == 0.0
    assert p == pytest.approx(2 / 20, rel=1e-12)
    assert isinstance(u, float) and isinstance(p, float)
    # swapping the samples mirrors U and keeps p
    u2, p2 = mann_whitney_u([4.0, 5.0, 6.0], [1.0, 2.0, 3.0])
    assert (u2, p2) == (9.0, p)


def test_mann_whitney_rejects_bad_input() -> None:
    with pytest.raises(InputError, match="both sides"):
        mann_whitney_u([], [1.0, 2.0])
    with pytest.raises(InputError, match="finite"):
        mann_whitney_u([1.0, float("nan")], [1.0, 2.0])
    with pytest.raises(InputError, match="flat list"):
        mann_whitney_u([[1.0, 2.0]], [1.0, 2.0])


# ----------------------------------------------------------------------------- bootstrap CI


def test_ratio_ci_is_deterministic_and_brackets_the_ratio() -> None:
    rng = np.random.default_rng(5)
    base, new = noisy_step_ms(rng, 2, 40)
    r1 = ratio_of_medians_ci(base, new, seed=3)
    assert r1 == ratio_of_medians_ci(base, new, seed=3)
    assert r1 != ratio_of_medians_ci(base, new, seed=4)
    ratio, low, high = r1
    assert ratio == pytest.approx(np.median(new) / np.median(base), rel=1e-15)
    assert low < ratio < high
    narrow = ratio_of_medians_ci(base, new, seed=3, confidence=0.5)
    assert low < narrow[1] < narrow[2] < high


def test_ratio_ci_coverage() -> None:
    # Percentile-bootstrap CIs of a median ratio should cover the true ratio ~95% of the time.
    rng = np.random.default_rng(21)
    base = 10.0 * np.exp(rng.normal(0.0, 0.1, (300, 50)))
    new = 11.0 * np.exp(rng.normal(0.0, 0.1, (300, 50)))
    covered = [
        lo <= 1.1 <= hi
        for b, v in zip(base, new, strict=True)
        for _, lo, hi in [ratio_of_medians_ci(b, v, n_boot=1000)]
    ]
    assert 0.90 <= np.mean(covered) <= 0.99


def test_ratio_ci_chunked_draws_fill_every_replicate(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(8)
    base, new = noisy_step_ms(rng, 2, 50)
    whole = ratio_of_medians_ci(base, new, n_boot=1000)
    monkeypatch.setattr(stats, "_BOOT_CHUNK_ELEMS", 50 * 7)  # 7 replicates a chunk, last partial
    chunked = ratio_of_medians_ci(base, new, n_boot=1000)
    assert chunked == ratio_of_medians_ci(base, new, n_boot=1000)
    assert chunked[0] == whole[0]
    # different draws, same distribution: the bounds agree to bootstrap noise
    assert chunked[1] == pytest.approx(whole[1], abs=0.02)
    assert chunked[2] == pytest.approx(whole[2], abs=0.02)


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"base": [1.0, -2.0, 3.0]}, "positive"),
        ({"base": [1.0, 0.0, 3.0]}, "positive"),
        ({"new": [1.0, float("inf")]}, "positive finite"),
        ({"new": []}, "both sides"),
        ({"base": [1.0]}, "at least 2 samples on both sides; got 1 and 3"),
        ({"n_boot": 10}, "n_boot"),
        ({"confidence": 1.5}, "confidence"),
    ],
)
def test_ratio_ci_rejects_bad_input(kw: dict, match: str) -> None:
    args = {"base": [1.0, 2.0, 3.0], "new": [2.0, 3.0, 4.0]} | kw
    base, new = args.pop("base"), args.pop("new")
    with pytest.raises(InputError, match=match):
        ratio_of_medians_ci(base, new, **args)


# ----------------------------------------------------------------------------- calibration


@functools.cache
def simulated(n: int, slowdown: float) -> dict[str, float]:
    """Status rates over TRIALS A/B comparisons of n samples a side, new = base noise x slowdown.

    Cached: each (n, slowdown) is simulated once per session and shared by the tests below.
    """
    rng = np.random.default_rng([n, round(slowdown * 1000)])
    rates = status_rates(noisy_step_ms(rng, TRIALS, n), noisy_step_ms(rng, TRIALS, n, slowdown))
    print(f"n={n} x{slowdown}: {rates}")
    return rates


@pytest.mark.parametrize("n", [15, 30, 120])
def test_no_false_alarms_on_identical_distributions(n: int) -> None:
    rates = simulated(n, 1.0)
    assert rates["regressed"] <= 0.01
    assert rates["improved"] <= 0.01


def test_adequately_sampled_aa_says_unchanged() -> None:
    # The "inconclusive" signal must not be noise: at the suite's n an A/A run is "unchanged".
    assert simulated(120, 1.0)["unchanged"] >= 0.95


def test_under_sampled_aa_says_too_noisy() -> None:
    rng = np.random.default_rng(8)
    base, new = noisy_step_ms(rng, 100, 15), noisy_step_ms(rng, 100, 15)
    verdicts = [compare_samples(b, v) for b, v in zip(base, new, strict=True)]
    too_noisy = [v for v in verdicts if v.reason.startswith("too noisy")]
    assert len(too_noisy) >= 95
    assert all(v.status == "inconclusive" for v in too_noisy)


# ----------------------------------------------------------------------------- power


def test_detects_a_ten_percent_slowdown_at_120_samples() -> None:
    assert simulated(120, 1.10)["regressed"] >= 0.95


@pytest.mark.parametrize(("n", "at_least"), [(30, 0.45), (15, 0.15)])
def test_power_with_fewer_samples(n: int, at_least: float) -> None:
    # Below ~100 samples a side 95% power is out of reach for any rule that also keeps a 3%
    # change quiet (see the module docstring); this pins what n = 30 and n = 15 do reach.
    rates = simulated(n, 1.10)
    assert rates["regressed"] >= at_least
    assert rates["improved"] == 0.0


@pytest.mark.parametrize("n", [30, 120])
def test_sub_threshold_slowdown_is_not_flagged(n: int) -> None:
    assert simulated(n, 1.03)["regressed"] <= 0.05


def test_throughput_drop_is_a_regression_when_higher_is_better() -> None:
    rng = np.random.default_rng(9)
    step = noisy_step_ms(rng, 50, 120), noisy_step_ms(rng, 50, 120, 1.10)
    base_tput, new_tput = 1000.0 / step[0], 1000.0 / step[1]  # samples/s from step times
    pairs = list(zip(base_tput, new_tput, strict=True))
    as_tput = [compare_samples(b, v, higher_is_better=True).status for b, v in pairs]
    as_time = [compare_samples(b, v).status for b, v in pairs]
    assert as_tput.count("regressed") >= 45
    assert as_tput.count("improved") == 0
    # same data, same numbers: only the label flips
    flip = {"regressed": "improved", "improved": "regressed"}
    assert as_time == [flip.get(s, s) for s in as_tput]


# ----------------------------------------------------------------------------- hand cases


def tight(n: int, seed: int = 0, spread: float = 0.01) -> np.ndarray:
    return 10.0 * np.exp(np.random.default_rng(seed).normal(0.0, spread, n))


def test_identical_samples_are_unchanged() -> None:
    x = tight(40)
    v = compare_samples(x, x.copy())
    assert v.status == "unchanged"
    assert v.ratio == 1.0 and v.p_value == 1.0
    assert v.ci_low is not None and v.ci_high is not None and v.ci_low < 1.0 < v.ci_high
    assert (v.n_base, v.n_new) == (40, 40)
    assert "within the 5% threshold" in v.reason


def test_identical_but_noisy_samples_are_too_noisy() -> None:
    # Equal medians prove nothing when the CI could hide a 5% change either way.
    x = tight(10, spread=0.15)
    v = compare_samples(x, x.copy())
    assert v.status == "inconclusive"
    assert v.reason.startswith("too noisy: 95% CI of the ratio [")
    assert "spans no change" in v.reason and "5% threshold" in v.reason


@pytest.mark.parametrize(
    ("nb", "nv", "reason"),
    [
        (3, 30, "only 3 samples in base (need 5)"),
        (30, 4, "only 4 samples in new (need 5)"),
        (1, 2, "only 1 sample in base and 2 in new (need 5)"),
        (0, 9, "only 0 samples in base (need 5)"),
    ],
)
def test_too_few_samples_is_inconclusive(nb: int, nv: int, reason: str) -> None:
    v = compare_samples(tight(nb), tight(nv, 1))
    assert v.status == "inconclusive"
    assert v.reason == reason
    assert v.p_value is None and v.ci_low is None and v.ci_high is None
    assert (v.n_base, v.n_new) == (nb, nv)


def test_min_samples_is_respected() -> None:
    assert compare_samples(tight(8), tight(8, 1), min_samples=10).status == "inconclusive"
    assert compare_samples(tight(8), tight(8, 1), min_samples=8).status == "unchanged"


def test_clear_regression_and_improvement() -> None:
    base = tight(30)
    slow = compare_samples(base, tight(30, 1) * 1.2)
    assert slow.status == "regressed"
    assert slow.ratio == pytest.approx(1.2, rel=0.01)
    assert slow.p_value is not None and slow.p_value < 1e-9
    assert slow.ci_low is not None and slow.ci_low > 1.05
    assert slow.reason.startswith("worse by 2") and "beyond the 5% threshold" in slow.reason
    fast = compare_samples(base, tight(30, 1) * 0.8)
    assert fast.status == "improved" and fast.reason.startswith("better by")


def test_higher_is_better_flips_the_direction() -> None:
    base, new = tight(30), tight(30, 1) * 0.8
    assert compare_samples(base, new).status == "improved"
    assert compare_samples(base, new, higher_is_better=True).status == "regressed"
    assert compare_samples(new, base, higher_is_better=True).status == "improved"


def test_significant_but_small_change_is_unchanged() -> None:
    v = compare_samples(tight(200), tight(200, 1) * 1.02)
    assert v.p_value is not None and v.p_value < 1e-6  # real, but below the threshold
    assert v.status == "unchanged"
    assert "+2." in v.reason and "within the 5% threshold" in v.reason
    assert compare_samples(tight(200), tight(200, 1) * 1.02, threshold=0.01).status == "regressed"


def test_unconfirmed_large_change_is_inconclusive() -> None:
    # 4 v 4 with complete separation: the exact p cannot go below 2/70 ~ 0.029.
    v = compare_samples(tight(4), tight(4, 1) * 1.08, min_samples=4)
    assert v.status == "inconclusive"
    assert "worse by 8." in v.reason and "not confirmed" in v.reason
    assert "p < 0.01 (got 0.029)" in v.reason
    slow = compare_samples(tight(4), tight(4, 1) * 1.08, min_samples=4, alpha=0.05)
    assert slow.status == "regressed"


def test_five_samples_a_side_can_show_a_large_slowdown() -> None:
    # 5 v 5 fully separated: exact p = 2/252 < 0.01 (the asymptotic test gave 0.012, so this
    # read "inconclusive" however large the slowdown).
    v = compare_samples(tight(5), tight(5, 1) * 2.0)
    assert v.status == "regressed"
    assert v.p_value == pytest.approx(2 / 252, rel=1e-12)
    assert v.ratio == pytest.approx(2.0, rel=0.01)
    assert v.ci_low is not None and v.ci_low > 1.9
    assert "Mann–Whitney p = 0.0079" in v.reason
    assert compare_samples(tight(5), tight(5, 1) * 1.08).status == "regressed"


def test_tied_samples_do_not_break_the_bootstrap() -> None:
    # Coarse timers give ties; a BCa interval is NaN on these, the percentile one is not.
    base = [10.0, 10.0, 10.0, 10.0, 10.1]
    new = [11.0, 11.0, 11.0, 11.1, 11.0]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ratio, lo, hi = ratio_of_medians_ci(base, new)
        assert ratio == pytest.approx(1.1, rel=1e-12)
        assert 1.08 < lo <= ratio <= hi < 1.12
        same = compare_samples(np.full(8, 10.0), np.full(8, 10.0))
        assert same.status == "unchanged"
        assert (same.ratio, same.ci_low, same.ci_high, same.p_value) == (1.0, 1.0, 1.0, 1.0)
        slow = compare_samples(np.full(8, 10.0), np.full(8, 12.0))
        assert slow.status == "regressed" and slow.ci_low == slow.ci_high == pytest.approx(1.2)
        v = compare_samples(base, new)
        assert v.status == "regressed"  # ties: asymptotic p = 0.0075
        assert v.p_value is not None and v.p_value < 0.01


def test_estimate_beyond_threshold_without_a_confirming_ci_is_inconclusive() -> None:
    # significant and 6.5% slower, but the CI still allows ~2%: not enough to fail CI
    v = compare_samples(tight(30, 0, spread=0.06), tight(30, 4, spread=0.06) * 1.06)
    assert v.p_value is not None and v.p_value < 0.01
    assert v.ci_low is not None and 1.0 < v.ci_low < 1.03 < 1.05 < v.ratio  # type: ignore[operator]
    assert v.status == "inconclusive"
    assert "not confirmed: needs a CI above 1.03 (got [1.0" in v.reason


def test_max_cv_makes_a_noisy_side_inconclusive() -> None:
    base, new = tight(50), tight(50, 1, spread=0.3)
    v = compare_samples(base, new, max_cv=0.1)
    assert v.status == "inconclusive"
    assert "robust CV of new" in v.reason and "(max 10%)" in v.reason
    assert compare_samples(tight(50), tight(50, 1), max_cv=0.1).status == "unchanged"


def test_verdict_is_json_ready() -> None:
    v = compare_samples(tight(30), tight(30, 1) * 1.2)
    assert isinstance(v, Verdict)
    row = json.loads(json.dumps(asdict(v), allow_nan=False))
    assert row["status"] == "regressed" and row["n_base"] == 30
    assert all(type(row[k]) is float for k in ("ratio", "ci_low", "ci_high", "p_value"))
    assert "\n" not in v.reason


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"threshold": -0.05}, "threshold"),
        ({"threshold": float("nan")}, "threshold"),
        ({"alpha": 0.0}, "alpha"),
        ({"alpha": 1.0}, "alpha"),
        ({"min_samples": 1}, "min_samples"),
        ({"max_cv": 0.0}, "max_cv"),
    ],
)
def test_compare_samples_rejects_bad_settings(kw: dict, match: str) -> None:
    with pytest.raises(InputError, match=match):
        compare_samples(tight(10), tight(10, 1), **kw)


def test_compare_samples_rejects_bad_samples() -> None:
    with pytest.raises(InputError, match="new samples must be positive finite numbers; got nan"):
        compare_samples(tight(10), [1.0, float("nan")] * 5)
    with pytest.raises(InputError, match="base samples must be numbers"):
        compare_samples(["fast", "slow"], tight(10))


# ----------------------------------------------------------------------------- scalars


@pytest.mark.parametrize(
    ("base", "new", "hib", "status"),
    [
        (100, 107, False, "regressed"),
        (100, 104, False, "unchanged"),
        (100, 105, False, "unchanged"),  # exactly at the threshold is not beyond it
        (100, 90, False, "improved"),
        (100, 94, True, "regressed"),
        (100, 96, True, "unchanged"),
        (100, 110, True, "improved"),
    ],
)
def test_compare_scalar(base: float, new: float, hib: bool, status: str) -> None:
    v = compare_scalar(base, new, threshold=0.05, higher_is_better=hib)
    assert v.status == status
    assert v.ratio == pytest.approx(new / base)
    assert v.p_value is None and v.ci_low is None and v.ci_high is None
    assert (v.n_base, v.n_new) == (1, 1)
    assert "no test" in v.reason and "5% threshold" in v.reason


def test_compare_scalar_edges() -> None:
    exact = compare_scalar(2_000_000, 2_000_001, threshold=0.0)  # analytic FLOPs: any increase
    assert exact.status == "regressed" and "+0.00%" in exact.reason
    assert compare_scalar(2_000_000, 2_000_000, threshold=0.0).status == "unchanged"
    zero = compare_scalar(0, 0, threshold=0.05)
    assert zero.status == "unchanged" and zero.ratio == 1.0
    grew = compare_scalar(0, 4096, threshold=0.05)
    assert grew.status == "regressed" and grew.ratio is None and "from 0 to 4096" in grew.reason
    assert compare_scalar(0, 4096, threshold=0.05, higher_is_better=True).status == "improved"
    for bad in (-1.0, float("nan"), float("inf"), "12"):
        with pytest.raises(InputError, match="finite number >= 0"):
            compare_scalar(bad, 1.0, threshold=0.05)  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- parsers


@pytest.mark.parametrize(
    ("text", "value"),
    [("5%", 0.05), ("2.5%", 0.025), (" 10 % ", 0.10), ("0%", 0.0), ("150%", 1.5), (".5%", 0.005)],
)
def test_parse_threshold_accepts_percentages(text: str, value: float) -> None:
    assert parse_threshold(text) == pytest.approx(value, rel=1e-15)


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("5", "threshold '5' is ambiguous: write it as a percentage, e.g. '5%'"),
        ("0.05", "'0.05' is ambiguous"),
        ("abc", "'abc' is not a percentage: write it like '5%'"),
        ("", "is not a percentage"),
        ("5%%", "is not a percentage"),
        ("nan%", "is not a percentage"),
        ("1e1%", "is not a percentage"),
        ("five percent", "is not a percentage"),
        ("-5%", "'-5%' is negative: write a percentage >= 0"),
        ("-0%", "is negative"),
    ],
)
def test_parse_threshold_rejects(text: str, fragment: str) -> None:
    with pytest.raises(InputError) as exc:
        parse_threshold(text)
    msg = str(exc.value)
    assert fragment in msg
    assert "\n" not in msg
    assert isinstance(exc.value, ValueError)


def test_parse_threshold_rejects_non_strings() -> None:
    with pytest.raises(InputError, match="percentage string"):
        parse_threshold(0.05)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("text", "stat", "threshold"),
    [
        ("median:10%", "median", 0.10),
        ("mean:5%", "mean", 0.05),
        ("min:2.5%", "min", 0.025),
        ("MAX: 1%", "max", 0.01),
        ("p90:0%", "p90", 0.0),
    ],
)
def test_parse_check_accepts(text: str, stat: str, threshold: float) -> None:
    check = parse_check(text)
    assert isinstance(check, Check)
    got_stat, got_threshold = check
    assert got_stat == stat and got_threshold == pytest.approx(threshold, rel=1e-15)


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("median", "has no threshold: write STAT:PCT, e.g. 'median:5%'"),
        ("p95:5%", "unknown statistic 'p95': use one of median, mean, min, max, p90"),
        (":5%", "unknown statistic ''"),
        ("median:5", "'5' is ambiguous"),
        ("mean:-1%", "is negative"),
        ("mean:fast", "is not a percentage"),
    ],
)
def test_parse_check_rejects(text: str, fragment: str) -> None:
    with pytest.raises(InputError) as exc:
        parse_check(text)
    assert fragment in str(exc.value)
    assert "\n" not in str(exc.value)


def test_statistic() -> None:
    x = [4.0, 1.0, 3.0, 2.0, 100.0]
    assert statistic(x, "median") == 3.0
    assert statistic(x, "mean") == 22.0
    assert statistic(x, "min") == 1.0
    assert statistic(x, "max") == 100.0
    assert statistic(np.arange(11.0), "p90") == 9.0
    with pytest.raises(InputError, match="unknown statistic"):
        statistic(x, "p95")
    with pytest.raises(InputError, match="no samples"):
        statistic([], "median")
