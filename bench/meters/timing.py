"""Per-iteration step timing with device synchronisation at the edges, and its summary.

The caller passes a zero-argument ``step`` that returns something to wait on and a
``sync(out)`` that blocks until the device has finished it (``jax.block_until_ready``,
``lambda _: torch.cuda.synchronize()``, or ``lambda _: None`` on an eager CPU). The timer has
no framework code: DESIGN.md "Measurement rules" (never time async dispatch).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any, TypeVar

import numpy as np

T = TypeVar("T")

# Confidence level of the median's interval. At 95% it needs n >= 6: even (min, max) covers the
# median with only 1 - 2 * 0.5**n, which is 0.9375 at n = 5 and 0.96875 at n = 6.
CI_LEVEL = 0.95


@dataclass(frozen=True)
class TimingResult:
    """What one ``StepTimer.measure`` saw. Times carry their unit in the name."""

    compile_s: float  # first call, incl. tracing/compilation, synchronised
    warmup_s: float  # the warm-up calls after the first, together
    warmup_iters: int  # how many warm-up calls followed the first
    samples_ms: list[float] = field(repr=False)  # one per timed iteration, in run order
    sampled_s: float  # wall time of the sampling phase (first timed start to last timed end)
    stop_reason: str  # "target" (min time and min iters met), "max_iters" or "max_time"

    @property
    def n(self) -> int:
        return len(self.samples_ms)

    def summary(self) -> dict[str, Any]:
        return summarize(self.samples_ms)


@dataclass(frozen=True)
class WarmupResult:
    compile_s: float
    warmup_s: float
    warmup_iters: int


@dataclass(frozen=True)
class SampleResult:
    samples_ms: list[float] = field(repr=False)
    sampled_s: float
    stop_reason: str


class StepTimer:
    """Times individual iterations of a step function.

    ``warmup`` and ``sample`` are public so a caller can wrap only the sampled phase in another
    meter (energy, memory); ``measure`` runs both.
    """

    def __init__(self, clock_ns: Callable[[], int] = time.perf_counter_ns) -> None:
        self._clock_ns = clock_ns  # injectable so tests can run on a fake clock

    @staticmethod
    def available() -> bool:
        return True  # a monotonic clock is always there

    def warmup(
        self, step: Callable[[], T], sync: Callable[[T], object], *, warmup_iters: int
    ) -> WarmupResult:
        """Run the first call (timed alone as compile_s) and ``warmup_iters`` more calls."""
        if warmup_iters < 0:
            raise ValueError(f"warmup_iters must be >= 0, got {warmup_iters}")
        clock = self._clock_ns
        t0 = clock()
        sync(step())
        t1 = clock()
        for _ in range(warmup_iters):
            sync(step())
        t2 = clock()
        return WarmupResult((t1 - t0) / 1e9, (t2 - t1) / 1e9, warmup_iters)

    def sample(
        self,
        step: Callable[[], T],
        sync: Callable[[T], object],
        *,
        min_time_s: float,
        min_iters: int,
        max_iters: int,
        max_time_s: float,
    ) -> SampleResult:
        """Time iterations one by one until min time and min iters are both met, or a max hits.

        ``sync(out)`` runs inside each timed region, so every sample ends when the device is
        done, and the next sample starts on an idle device.
        """
        _check_bounds(min_time_s, min_iters, max_iters, max_time_s)
        clock = self._clock_ns
        samples_ns: list[int] = []
        append = samples_ns.append
        n = 0
        start = clock()
        min_end = start + int(min_time_s * 1e9)
        max_end = start + int(max_time_s * 1e9)
        # The loop body is kept to two clock reads, the step, the sync and one int append.
        while True:
            t0 = clock()
            sync(step())
            t1 = clock()
            append(t1 - t0)
            n += 1
            # Target first: when a max is met on the same iteration the target still counts.
            if n >= min_iters and t1 >= min_end:
                reason = "target"
                break
            if n >= max_iters:
                reason = "max_iters"
                break
            if t1 >= max_end:
                reason = "max_time"
                break
        return SampleResult([s / 1e6 for s in samples_ns], (t1 - start) / 1e9, reason)

    def measure(
        self,
        step: Callable[[], T],
        sync: Callable[[T], object],
        *,
        warmup_iters: int = 3,
        min_time_s: float = 1.0,
        min_iters: int = 10,
        max_iters: int = 10_000,
        max_time_s: float = 60.0,
    ) -> TimingResult:
        _check_bounds(min_time_s, min_iters, max_iters, max_time_s)
        w = self.warmup(step, sync, warmup_iters=warmup_iters)
        s = self.sample(
            step,
            sync,
            min_time_s=min_time_s,
            min_iters=min_iters,
            max_iters=max_iters,
            max_time_s=max_time_s,
        )
        return TimingResult(
            compile_s=w.compile_s,
            warmup_s=w.warmup_s,
            warmup_iters=w.warmup_iters,
            samples_ms=s.samples_ms,
            sampled_s=s.sampled_s,
            stop_reason=s.stop_reason,
        )


def _check_bounds(min_time_s: float, min_iters: int, max_iters: int, max_time_s: float) -> None:
    if min_iters < 1:
        raise ValueError(f"min_iters must be >= 1, got {min_iters}")
    if max_iters < min_iters:
        raise ValueError(f"max_iters ({max_iters}) must be >= min_iters ({min_iters})")
    if min_time_s < 0 or max_time_s < min_time_s:
        raise ValueError(
            f"need 0 <= min_time_s <= max_time_s, got min {min_time_s} max {max_time_s}"
        )


def median_ci_indices(n: int, level: float = CI_LEVEL) -> tuple[int, int, float] | None:
    """0-based order-statistic indices (lo, hi) bracketing the median, and their coverage.

    Distribution-free: the number of samples below the true median is Binomial(n, 1/2), so
    P(x_(l) <= median <= x_(n+1-l)) = 1 - 2 * P(B <= l - 1) for 1-based order statistics
    (Conover, Practical Nonparametric Statistics, 3rd ed., sec. 3.2; Hahn & Meeker 1991).
    We take the largest l whose coverage is still >= ``level``; the interval is symmetric in
    rank. Exact integer arithmetic, so the indices do not depend on float rounding. Returns
    None when even (min, max) falls short of ``level`` (n <= 5 at 95%). Assumes independent
    samples; step times are mildly autocorrelated, so read it as a guide, not a guarantee.
    """
    if n < 1:
        return None
    half_alpha = (1 - Fraction(str(level))) / 2
    total = 1 << n  # 2**n, so P(B <= k) = cum / total
    # cum / total <= p / q  <=>  cum * q <= p * total, in integers.
    p, q = half_alpha.numerator, half_alpha.denominator
    limit = p * total
    cum = 0
    term = 1  # C(n, k)
    lower = 0  # largest 1-based l with P(B <= l - 1) <= half_alpha; 0 means none
    cum_ok = 0  # the cum that went with it
    for k in range(n // 2 + 1):
        cum += term
        if cum * q > limit:
            break
        lower, cum_ok = k + 1, cum
        term = term * (n - k) // (k + 1)
    if lower == 0:
        return None
    return lower - 1, n - lower, float(1 - Fraction(2 * cum_ok, total))


# The fewest samples a tail percentile is printed from: at n >= 1 / (1 - q) at least one sample
# lies beyond the q-quantile's rank, so the figure is more than the sample maximum stretched by
# interpolation; p90 asks for twice that (two samples above it) since it is read more often.
# Below these the statistic is null and ``null_reasons`` says why.
MIN_SAMPLES: dict[str, int] = {"p90": 20, "p99": 100}


def min_ci_samples(level: float = CI_LEVEL) -> int:
    """The fewest samples with a ``level`` order-statistic interval of the median (6 at 95%)."""
    n = 1
    while median_ci_indices(n, level) is None:
        n += 1
    return n


def summarize(samples_ms: Sequence[float], level: float = CI_LEVEL) -> dict[str, Any]:
    """Median, p90, p99, IQR, mean, std, min, max and a CI of the median, all in ms, and the
    coefficient of variation ``cv`` (std / mean, a unitless fraction: 0.05 is 5%).

    Percentiles use numpy's default linear interpolation. ``p90`` needs >= 20 samples and
    ``p99`` >= 100 (``MIN_SAMPLES``), else they are None. ``std`` is the sample standard
    deviation (ddof=1), None for a single sample; so is ``cv``. ``ci_low``/``ci_high`` are order
    statistics from ``median_ci_indices`` with coverage ``ci_coverage``; with too few samples
    for a ``level`` interval (n < 6 at 95%) all three are None. Every None statistic has an
    entry in ``null_reasons`` (statistic -> why, e.g. ``{"p99": "needs >= 100 samples, have
    7"}``); the dict is empty when nothing is null.
    """
    x = np.sort(np.asarray(samples_ms, dtype=np.float64))
    n = int(x.size)
    if n == 0:
        raise ValueError("summarize() needs at least one sample")
    p25, p50, p75, p90, p99 = np.percentile(x, [25, 50, 75, 90, 99])
    reasons: dict[str, str] = {}
    tails: dict[str, float | None] = {"p90": float(p90), "p99": float(p99)}
    for key, need in MIN_SAMPLES.items():
        if n < need:
            tails[key] = None
            reasons[key] = f"needs >= {need} samples, have {n}"
    idx = median_ci_indices(n, level)
    ci: tuple[float | None, float | None, float | None]
    if idx is None:
        ci = (None, None, None)
        method = (f"none: n={n} too small for a {level:.0%} order-statistic interval "
                  f"(needs >= {min_ci_samples(level)} samples)")
        for key in ("ci_low", "ci_high", "ci_coverage"):
            reasons[key] = f"needs >= {min_ci_samples(level)} samples, have {n}"
    else:
        lo, hi, coverage = idx
        ci = (float(x[lo]), float(x[hi]), coverage)
        method = f"binomial order statistics, {level:.0%}"
    std = float(x.std(ddof=1)) if n > 1 else None
    mean = float(x.mean())
    if std is None:
        reasons["std"] = reasons["cv"] = "needs >= 2 samples, have 1"
    return {
        "median": float(p50),
        **tails,
        "iqr": float(p75 - p25),
        "mean": mean,
        "std": std,
        "cv": std / mean if std is not None and mean > 0 else None,
        "min": float(x[0]),
        "max": float(x[-1]),
        "ci_low": ci[0],
        "ci_high": ci[1],
        "ci_coverage": ci[2],
        "ci_method": method,
        "n": n,
        "null_reasons": reasons,
    }
