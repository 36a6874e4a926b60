"""Tests for bench.gate.stats: the Mann–Whitney test, the bootstrap CI, the regression rule,
parsers.

The calibration and power tests simulate CI-like step times: log-normal around 10 ms with
sigma 0.1 (~10% spread) and 2% of samples inflated x1.5-3 (preemption, GC, a noisy neighbour).
All trials are drawn as arrays up front; each seed is fixed, so the rates are reproducible.
Rates measured with this model (3000 trials per cell, threshold 5%, alpha 0.01, n per side):

    n      A/A regressed   A/A unchanged   +3% regressed   +10% regressed
    15     0.13%            0.6%           0.9%            23%
    30     0.10%           10%             1.5%            52%
    50     0               44%             1.6%            70%
    80     0.03%           93%             2.6%            90%
    100    0.03%           98%             1.2%            95.4%
    120    0               99.8%           1.6%            98.3%
    200    0              100%             1.9%            99.97%

so a CI suite needs ~120 samples a side to catch a 10% slowdown 95% of the time with margin.
The tests below use 400 trials per cell.
"""

from __future__ import annotations

import functools
import json
import math
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


def _mwu_cases() -> list[tuple[str, np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(123)
    return [
        ("continuous 5v7", rng.normal(size=5), rng.normal(size=7)),
        ("continuous 30v30 shifted", rng.normal(size=30), rng.normal(0.5, size=30)),
        ("unequal 200v20", rng.lognormal(size=200), rng.lognormal(size=20)),
        ("heavy ties", rng.integers(0, 4, 40).astype(float), rng.integers(1, 5, 25).astype(float)),
        (
            "rounded timings",
            np.round(rng.normal(10, 1, 60), 1),
            np.round(rng.normal(10.3, 1, 50), 1),
        ),
        ("complete separation", np.arange(1.0, 9.0), np.arange(20.0, 26.0)),
        ("one each", np.array([1.0]), np.array([2.0])),
        ("all tied", np.full(6, 3.0), np.full(4, 3.0)),
    ]


@pytest.mark.parametrize(
    ("x", "y"), [c[1:] for c in _mwu_cases()], ids=[c[0] for c in _mwu_cases()]
)
def test_mann_whitney_matches_scipy(x: np.ndarray, y: np.ndarray) -> None:
    sps = pytest.importorskip("scipy.stats")
    ref = sps.mannwhitneyu(x, y, alternative="two-sided", method="asymptotic")
    u, p = mann_whitney_u(x, y)
    assert u == pytest.approx(float(ref.statistic), abs=1e-9)
    assert p == pytest.approx(float(ref.pvalue), abs=1e-9)
    assert isinstance(u, float) and isinstance(p, float)


def test_mann_whitney_by_hand() -> None:
    # x > y pairs: 1>0; 2>0, 2=2 (half); 3>0, 3>2  ->  U = 4.5
    u, _ = mann_whitney_u([1.0, 2.0, 3.0], [0.0, 2.0, 5.0])
    assert u == 4.5
    # No ties, 3 v 3, U = 0: mu 4.5, var 3*3*7/12 = 5.25, z = (4.5 - 0.5)/sqrt(5.25)
    u, p = mann_whitney_u([1.0, 2.0, 3.0], [4.0, 5.0, 6.0])
    assert u == 0.0
    assert p == pytest.approx(math.erfc(4.0 / math.sqrt(5.25) / math.sqrt(2.0)), rel=1e-12)
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
    # 5 v 5 with complete separation: the asymptotic p cannot go below ~0.012.
    v = compare_samples(tight(5), tight(5, 1) * 1.08)
    assert v.status == "inconclusive"
    assert "worse by 8." in v.reason and "not confirmed" in v.reason
    assert "p < 0.01 (got 0.012)" in v.reason
    assert compare_samples(tight(5), tight(5, 1) * 1.08, alpha=0.05).status == "regressed"


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
