"""Statistics for comparing two sets of benchmark samples, and the regression rule.

The tests come from scipy: a two-sided Mann–Whitney U test (Mann & Whitney 1947;
``scipy.stats.mannwhitneyu``, exact for small samples without ties) and a percentile bootstrap
confidence interval for the ratio of medians (Efron & Tibshirani 1993, ch. 13;
``scipy.stats.bootstrap``). This module adds the decision rule that turns them into a
:class:`Verdict`, and parsers for the ``--threshold 5%`` and ``median:5%`` strings of the CLI.

The decision rule (:func:`compare_samples`), for a metric where lower is better (step time);
``r = median(new) / median(base)``, ``[lo, hi]`` its 95% bootstrap CI, ``t`` the threshold,
``k = CONFIRM_FRACTION = 0.6``:

* ``regressed`` iff all three hold:
  (a) Mann–Whitney p < alpha (the two samples differ),
  (b) ``r > 1 + t`` (the best estimate is worse than the threshold),
  (c) ``lo > 1 + k*t`` (the CI rules out a change much smaller than the threshold).
  (c) keeps a sub-threshold change that looks large in one noisy sample from failing CI; as
  samples grow the CI shrinks onto ``r`` and the rule tends to "true change > t".
* ``improved``: the mirror image (p < alpha, ``r < 1 - t``, ``hi < 1 - k*t``).
* ``inconclusive``: fewer than ``min_samples`` on a side; a robust CV above ``max_cv``; a CI
  wider than +-t (the data cannot resolve a threshold-sized change: collect more samples); or
  an estimate beyond the threshold that (a) or (c) does not confirm.
* ``unchanged``: everything else: the CI is at most +-t wide and the estimate is within ``t``.

For a higher-is-better metric (throughput) the same bands apply and "worse" means down.
"Inconclusive" depends on the noise and the sample count, not on luck: an adequately sampled
A/A comparison is "unchanged", an under-sampled one says so every time.

Measured with the noise model of tests/gate/test_stats.py (log-normal, sigma 0.1, 2% of samples
x1.5-3), alpha 0.01, threshold 5%, 3000 trials (``python benchmarks/stats_calibration.py``): A/A
comparisons are flagged regressed in <= 0.13% (and improved in <= 0.13%) at every n from 15 to
200; a true 3% slowdown in <= 2.1%; a true 10% slowdown in 25% (n = 15 a side), 49% (30), 91%
(80), 95.6% (100), 97.5% (120). No rule reaches 95% at n = 30 while keeping a 3% change quiet:
there the noise of a median ratio (~3.3%) is half the gap between 3% and 10%. At 5 a side only
the exact p can reach alpha: a 2x slowdown is flagged in 92% (never with the asymptotic p), A/A
in 0.23% (0.27% improved).

Both tests treat samples as independent. Iterations of one run share that run's machine state,
so more iterations do not shrink run-to-run noise; samples from interleaved base/new rounds do.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Literal, NamedTuple

import numpy as np
import scipy.stats
from numpy.typing import ArrayLike, NDArray

from recmodels.errors import InputError

Status = Literal["regressed", "improved", "unchanged", "inconclusive"]

# Condition (c) of the rule: the CI must rule out changes smaller than this fraction of the
# threshold. With (b) alone a change just under the threshold is flagged up to half the time
# whatever the sample size; 0.6 rather than 0.5 keeps a true change of 0.6 * threshold flagged in
# under ~2.5% of comparisons at every n (the worst n is where 1.96 * SE ~ log((1+t)/(1+0.6t))),
# at the cost of needing ~120 rather than ~100 samples a side for 95% power at 2 * threshold.
CONFIRM_FRACTION = 0.6

# The bootstrap runs in batches of at most this many resampled elements a side (int64 indices
# plus float64 values: 1 MiB): they stay in cache (~1.4x faster than one batch at n = 150), and
# 2000 replicates of a 100k-sample run need no gigabytes.
_BOOT_CHUNK_ELEMS = 1 << 16


# ----------------------------------------------------------------------------- input checks


def _as_samples(values: ArrayLike, name: str, *, positive: bool = False) -> NDArray[np.float64]:
    """``values`` as a 1-D float64 array of finite (optionally positive) numbers."""
    try:
        arr = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        raise InputError(f"{name} samples must be numbers; got {values!r:.60}") from None
    if arr.ndim != 1:
        raise InputError(f"{name} samples must be a flat list of numbers; got shape {arr.shape}")
    bad = ~np.isfinite(arr)
    if positive:
        bad |= ~(arr > 0)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        kind = "positive finite" if positive else "finite"
        raise InputError(
            f"{name} samples must be {kind} numbers; got {float(arr[i])!r} at index {i}: "
            "drop failed or unmeasured iterations before comparing"
        )
    return arr


def _is_real(value: object) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)


def _check_fraction(value: float, name: str) -> None:
    if not (_is_real(value) and 0 < value < 1):
        raise InputError(f"{name} must be in (0, 1); got {value!r}")


def _check_threshold(threshold: float) -> None:
    if not (_is_real(threshold) and math.isfinite(threshold) and threshold >= 0):
        raise InputError(
            f"threshold must be a non-negative fraction (0.05 = 5%); got {threshold!r}"
        )


# ----------------------------------------------------------------------------- Mann–Whitney U


def mann_whitney_u(x: ArrayLike, y: ArrayLike) -> tuple[float, float]:
    """Two-sided Mann–Whitney U test (Mann & Whitney 1947) of samples ``x`` and ``y``.

    Returns ``(u, p)``: ``u`` is the U statistic of ``x`` (number of pairs with x > y, ties
    counting half), ``p`` the two-sided p-value of
    ``scipy.stats.mannwhitneyu(x, y, alternative="two-sided", method="auto")``: exact when a side
    has at most 8 samples and there are no ties, else the normal approximation with the tie
    correction of the variance and a continuity correction of 0.5. The smallest exact p with
    5 a side is 2/252 ~ 0.0079 (4 a side: 2/70 ~ 0.029, so p < 0.01 needs 5).
    Raises InputError on an empty side or a sample that is not a finite number.
    """
    xa = _as_samples(x, "x")
    ya = _as_samples(y, "y")
    if xa.size == 0 or ya.size == 0:
        raise InputError(
            f"Mann–Whitney U needs samples on both sides; got {xa.size} and {ya.size}"
        )
    res = scipy.stats.mannwhitneyu(xa, ya, alternative="two-sided", method="auto")
    return float(res.statistic), float(res.pvalue)


# ----------------------------------------------------------------------------- bootstrap CI


def _medians(x: NDArray[np.float64], axis: int) -> NDArray[np.float64]:
    """``np.median(x, axis)``; for rows of up to ~1000 samples a (SIMD) sort of each row is
    ~4x faster than the partition np.median does, and the bootstrap spends its time here."""
    n = x.shape[axis]
    mid = [(n - 1) // 2, n // 2]  # equal for odd n
    s = np.sort(x, axis=axis) if n <= 1024 else np.partition(x, mid, axis=axis)
    return (np.take(s, mid[0], axis=axis) + np.take(s, mid[1], axis=axis)) / 2.0


def _median_ratio(
    base: NDArray[np.float64], new: NDArray[np.float64], axis: int = -1
) -> NDArray[np.float64]:
    """``median(new) / median(base)`` along ``axis``: the bootstrap's vectorized statistic."""
    return _medians(new, axis) / _medians(base, axis)


def ratio_of_medians_ci(
    base: ArrayLike,
    new: ArrayLike,
    *,
    confidence: float = 0.95,
    n_boot: int = 2000,
    seed: int = 0,
) -> tuple[float, float, float]:
    """``(ratio, low, high)``: ``median(new) / median(base)`` and its bootstrap CI (unitless).

    Percentile bootstrap (Efron & Tibshirani 1993, ch. 13) by ``scipy.stats.bootstrap``: each
    group is resampled with replacement independently (two-sample bootstrap, ibid. ch. 8),
    ``n_boot`` times, and the CI is the central ``confidence`` interval of the replicate ratios.
    Not BCa (scipy's default): its acceleration comes from the jackknife, which is inconsistent
    for the median (ibid. sec. 11.6), and it returns NaN when a few tied samples make the
    replicates degenerate. Deterministic for a given ``seed``.
    Raises InputError unless both sides hold at least 2 positive finite samples, ``confidence``
    is in (0, 1) and ``n_boot`` is an integer >= 100.
    """
    b = _as_samples(base, "base", positive=True)
    v = _as_samples(new, "new", positive=True)
    if b.size < 2 or v.size < 2:
        raise InputError(
            "a bootstrap CI of a ratio of medians needs at least 2 samples on both sides; "
            f"got {b.size} and {v.size}"
        )
    _check_fraction(confidence, "confidence")
    if not (_is_real(n_boot) and int(n_boot) == n_boot and n_boot >= 100):
        raise InputError(f"n_boot must be an integer >= 100; got {n_boot!r}")
    res = scipy.stats.bootstrap(
        (b, v),
        _median_ratio,
        n_resamples=int(n_boot),
        batch=max(1, _BOOT_CHUNK_ELEMS // max(b.size, v.size)),
        vectorized=True,
        paired=False,
        confidence_level=confidence,
        method="percentile",
        rng=seed,
    )
    low, high = res.confidence_interval
    return float(np.median(v) / np.median(b)), float(low), float(high)


# ----------------------------------------------------------------------------- verdicts


@dataclass(frozen=True)
class Verdict:
    """The outcome of comparing one metric between a base and a new run."""

    status: Status  # "regressed" | "improved" | "unchanged" | "inconclusive"
    ratio: float | None  # new / base (medians for samples); None when base is 0
    ci_low: float | None  # bootstrap CI of the ratio; None for scalars or too few samples
    ci_high: float | None
    p_value: float | None  # two-sided Mann–Whitney p; None for scalars or too few samples
    n_base: int
    n_new: int
    reason: str  # one line a person can act on


def _fmt_pct(fraction: float) -> str:
    return f"{fraction * 100:g}%"


def _fmt_p(p: float) -> str:
    return f"{p:.2g}"


def _robust_cv(x: NDArray[np.float64]) -> float:
    """1.4826 * MAD / median: the CV of a normal sample, but not blown up by outliers."""
    med = float(np.median(x))
    return 1.4826 * float(np.median(np.abs(x - med))) / med


def compare_samples(
    base: ArrayLike,
    new: ArrayLike,
    *,
    threshold: float = 0.05,
    alpha: float = 0.01,
    higher_is_better: bool = False,
    min_samples: int = 5,
    max_cv: float | None = None,
    confidence: float = 0.95,
    n_boot: int = 2000,
    seed: int = 0,
) -> Verdict:
    """Compare raw per-iteration samples of one metric; see the module docstring for the rule.

    ``threshold`` is a fraction (0.05 = 5%), the smallest change worth acting on. ``alpha`` is
    the significance level of the Mann–Whitney test (Mann & Whitney 1947); ``confidence``,
    ``n_boot`` and ``seed`` set the bootstrap CI of the median ratio (Efron & Tibshirani 1993).
    ``max_cv``, if given, makes a side whose robust CV (1.4826 * MAD / median) exceeds it
    inconclusive. Samples must be positive and finite (step times, throughputs; any unit, the
    same on both sides). With ``threshold=0`` nothing can be shown "unchanged" from noisy
    samples, so whatever is not flagged is inconclusive; a zero threshold is meant for
    :func:`compare_scalar`. Raises InputError on a bad sample or setting.
    """
    _check_threshold(threshold)
    _check_fraction(alpha, "alpha")
    if not (_is_real(min_samples) and int(min_samples) == min_samples and min_samples >= 2):
        raise InputError(f"min_samples must be an integer >= 2; got {min_samples!r}")
    if max_cv is not None and not (_is_real(max_cv) and math.isfinite(max_cv) and max_cv > 0):
        raise InputError(f"max_cv must be a positive fraction (0.2 = 20%); got {max_cv!r}")
    b = _as_samples(base, "base", positive=True)
    v = _as_samples(new, "new", positive=True)
    nb, nv = b.size, v.size

    short = [(side, n) for side, n in (("base", nb), ("new", nv)) if n < min_samples]
    if short:
        # "only 3 samples in base (need 5)", "only 1 sample in base and 2 in new (need 5)"
        parts = [f"{n} in {side}" for side, n in short]
        parts[0] = parts[0].replace(" in ", " sample in " if short[0][1] == 1 else " samples in ")
        only = " and ".join(parts)
        ratio = float(np.median(v) / np.median(b)) if nb and nv else None
        return Verdict(
            "inconclusive", ratio, None, None, None, nb, nv, f"only {only} (need {min_samples})"
        )

    ratio, lo, hi = ratio_of_medians_ci(b, v, confidence=confidence, n_boot=n_boot, seed=seed)
    _, p = mann_whitney_u(v, b)

    def verdict(status: Status, reason: str) -> Verdict:
        return Verdict(status, ratio, lo, hi, p, nb, nv, reason)

    ci = f"{confidence * 100:g}% CI of the ratio [{lo:.3f}, {hi:.3f}]"
    stats = f"median ratio {ratio:.3f}, {ci}, Mann–Whitney p = {_fmt_p(p)}"
    t = _fmt_pct(threshold)

    if max_cv is not None:
        for side, x in (("base", b), ("new", v)):
            cv = _robust_cv(x)
            if cv > max_cv:
                return verdict(
                    "inconclusive",
                    f"too noisy: robust CV of {side} is {cv:.1%} (max {_fmt_pct(max_cv)}); {stats}",
                )

    margin = CONFIRM_FRACTION * threshold
    up = ratio > 1 + threshold and lo > 1 + margin
    down = ratio < 1 - threshold and hi < 1 - margin
    if p < alpha and (up or down):
        worse = up != higher_is_better
        word = "worse" if worse else "better"
        return verdict(
            "regressed" if worse else "improved",
            f"{word} by {abs(ratio - 1):.1%}, beyond the {t} threshold ({stats})",
        )

    half_width = (hi - lo) / 2
    if half_width > threshold:
        span = "spans no change and is" if lo <= 1 <= hi else "is"
        return verdict(
            "inconclusive",
            f"too noisy: {ci} {span} ±{half_width:.1%} "
            f"wide, more than the {t} threshold (p = {_fmt_p(p)}); collect more samples",
        )

    if ratio > 1 + threshold or ratio < 1 - threshold:
        worse = (ratio > 1) != higher_is_better
        missing = []
        if p >= alpha:
            missing.append(f"p < {alpha:g} (got {_fmt_p(p)})")
        if not (up or down):
            edge = f"above {1 + margin:.4g}" if ratio > 1 else f"below {1 - margin:.4g}"
            missing.append(f"a CI {edge} (got [{lo:.4f}, {hi:.4f}])")
        return verdict(
            "inconclusive",
            f"{'worse' if worse else 'better'} by "
            f"{abs(ratio - 1):.1%} but not confirmed: needs "
            f"{' and '.join(missing)}; collect more samples",
        )

    return verdict("unchanged", f"change of {ratio - 1:+.1%} is within the {t} threshold ({stats})")


def compare_scalar(
    base: float, new: float, *, threshold: float, higher_is_better: bool = False
) -> Verdict:
    """Compare one deterministic value (peak memory, analytic FLOPs): no noise, no p-value.

    Regressed iff worse by more than ``threshold`` (lower is better: ``new > base * (1 + t)``;
    higher is better: ``new < base * (1 - t)``); improved iff better by more than it; else
    unchanged. With ``threshold=0`` any change counts. Values must be finite and >= 0; a base of
    0 leaves the ratio undefined (``None``) but the direction still decides.
    """
    _check_threshold(threshold)
    for name, x in (("base", base), ("new", new)):
        if not (_is_real(x) and math.isfinite(x) and x >= 0):
            raise InputError(f"{name} value must be a finite number >= 0; got {x!r}")
    base, new = float(base), float(new)
    t = _fmt_pct(threshold)
    if base == 0:
        ratio = 1.0 if new == 0 else None
        up, down = new > 0, False
        change = "unchanged at 0" if new == 0 else f"went from 0 to {new:g}"
    else:
        ratio = new / base
        up, down = ratio > 1 + threshold, ratio < 1 - threshold
        change = f"changed by {ratio - 1:+.2%} ({base:g} -> {new:g})"
    if up or down:
        worse = up != higher_is_better
        status: Status = "regressed" if worse else "improved"
        reason = f"{change}: {'worse' if worse else 'better'} by more than the {t} threshold"
    else:
        status = "unchanged"
        reason = f"{change}: within the {t} threshold"
    return Verdict(
        status, ratio, None, None, None, 1, 1, reason + " (single deterministic value, no test)"
    )


# ----------------------------------------------------------------------------- CLI strings

_PERCENT = re.compile(r"\s*([+-]?(?:\d+(?:\.\d*)?|\.\d+))\s*%\s*")
_NUMBER = re.compile(r"\s*[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?\s*")


def parse_threshold(text: str) -> float:
    """Parse ``--threshold``: a percentage such as ``"5%"`` or ``"2.5%"``, returned as a fraction.

    A bare number (``"5"``, ``"0.05"``) is refused as ambiguous (5% or 500%? 0.05% or 5%?), as
    are negatives and anything else. ``"0%"`` is allowed: it means any change beyond the noise
    counts, which is what exact metrics such as analytic FLOPs want.
    """
    if not isinstance(text, str):
        raise InputError(f"threshold must be a percentage string such as '5%'; got {text!r}")
    m = _PERCENT.fullmatch(text)
    if m is None:
        if _NUMBER.fullmatch(text):
            raise InputError(
                f"threshold {text.strip()!r} is ambiguous: write it as a percentage, e.g. '5%'"
            )
        raise InputError(f"threshold {text!r} is not a percentage: write it like '5%' or '2.5%'")
    value = float(m.group(1))
    if value < 0 or m.group(1).startswith("-"):
        raise InputError(
            f"threshold {text.strip()!r} is negative: write a percentage >= 0, e.g. '5%'"
        )
    return value / 100.0


STATISTICS: tuple[str, ...] = ("median", "mean", "min", "max", "p90")


class Check(NamedTuple):
    """A pytest-benchmark-style regression check parsed from ``"median:5%"``."""

    stat: str  # one of STATISTICS
    threshold: float  # fraction: 0.05 = 5%


def parse_check(text: str) -> Check:
    """Parse ``"STAT:PCT"`` (e.g. ``"median:10%"``) into ``Check(stat, threshold)``.

    ``STAT`` is one of ``median, mean, min, max, p90`` (case-insensitive); ``PCT`` follows
    :func:`parse_threshold`. The result unpacks as ``(stat, threshold)``.
    """
    if not isinstance(text, str) or ":" not in text:
        raise InputError(f"check {text!r} has no threshold: write STAT:PCT, e.g. 'median:5%'")
    stat, _, pct = text.partition(":")
    stat = stat.strip().lower()
    if stat not in STATISTICS:
        raise InputError(
            f"check {text!r} uses unknown statistic {stat!r}: use one of {', '.join(STATISTICS)}"
        )
    try:
        threshold = parse_threshold(pct)
    except InputError as exc:
        raise InputError(f"check {text!r}: {exc}") from None
    return Check(stat, threshold)


def statistic(samples: ArrayLike, stat: str) -> float:
    """The named statistic of ``samples`` (one of :data:`STATISTICS`; p90 by linear interp.)."""
    x = _as_samples(samples, "samples")
    if x.size == 0:
        raise InputError(f"cannot take the {stat} of no samples")
    funcs = {
        "median": np.median,
        "mean": np.mean,
        "min": np.min,
        "max": np.max,
        "p90": lambda a: np.quantile(a, 0.9),
    }
    if stat not in funcs:
        raise InputError(f"unknown statistic {stat!r}: use one of {', '.join(STATISTICS)}")
    return float(funcs[stat](x))
