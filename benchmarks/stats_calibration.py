"""How often does the regression rule of bench/gate/stats.py fire? A measurement, not a test.

Simulates CI-like step times with the noise model of tests/gate/test_stats.py (log-normal
around 10 ms, sigma 0.1, 2% of samples x1.5-3) and runs ``compare_samples`` (threshold 5%,
alpha 0.01) on ``--trials`` independent comparisons per cell: A/A (same distribution), new 3%
slower (under the threshold) and new 10% slower. A second table shows small samples against a
2x slowdown, where the exact Mann–Whitney p-value decides. Prints the fraction of trials per
verdict; each cell has its own seed derived from ``--seed``, so the figures are reproducible.

    python benchmarks/stats_calibration.py [--trials 3000] [--seed 0] [--sizes 15 30 ...]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from bench.gate.stats import compare_samples

THRESHOLD = 0.05
ALPHA = 0.01
SIZES = (5, 10, 15, 30, 50, 80, 100, 120, 200)
SMALL_SIZES = (5, 6, 8, 10)


def noisy_step_ms(rng: np.random.Generator, trials: int, n: int, factor: float = 1.0) -> np.ndarray:
    """``[trials, n]`` step times in ms; the same model as tests/gate/test_stats.py."""
    x = 10.0 * np.exp(rng.normal(0.0, 0.1, (trials, n)))
    outlier = rng.random((trials, n)) < 0.02
    x = np.where(outlier, x * rng.uniform(1.5, 3.0, (trials, n)), x)
    return x * factor


def rates(n: int, factor: float, trials: int, seed: int) -> dict[str, float]:
    """Fraction of ``trials`` comparisons of n samples a side ending in each status."""
    rng = np.random.default_rng([seed, n, round(factor * 1000)])
    base, new = noisy_step_ms(rng, trials, n), noisy_step_ms(rng, trials, n, factor)
    got = [
        compare_samples(b, v, threshold=THRESHOLD, alpha=ALPHA).status
        for b, v in zip(base, new, strict=True)
    ]
    return {s: got.count(s) / trials for s in ("regressed", "improved", "unchanged")}


def pct(rate: float) -> str:
    return "0" if rate == 0 else f"{rate * 100:.2f}%"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=3000, help="comparisons per cell")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--sizes", type=int, nargs="+", default=SIZES, help="samples a side")
    a = ap.parse_args()
    if a.trials < 1 or min(a.sizes) < 5:
        ap.error("--trials must be >= 1 and --sizes >= 5 (compare_samples' min_samples)")
    t0 = time.perf_counter()
    print(f"threshold {THRESHOLD:.0%}, alpha {ALPHA}, {a.trials} trials per cell, seed {a.seed}")
    print(f"{'n':>5} {'A/A regressed':>14} {'A/A improved':>13} {'A/A unchanged':>14} "
          f"{'+3% regressed':>14} {'+10% regressed':>15}")
    for n in a.sizes:
        aa = rates(n, 1.0, a.trials, a.seed)
        r3 = rates(n, 1.03, a.trials, a.seed)
        r10 = rates(n, 1.10, a.trials, a.seed)
        print(f"{n:>5} {pct(aa['regressed']):>14} {pct(aa['improved']):>13} "
              f"{pct(aa['unchanged']):>14} {pct(r3['regressed']):>14} "
              f"{pct(r10['regressed']):>15}", flush=True)
    print(f"\n{'n':>5} {'x2 regressed':>13}   (small samples: exact Mann–Whitney p when n <= 8)")
    for n in SMALL_SIZES:
        print(f"{n:>5} {pct(rates(n, 2.0, a.trials, a.seed)['regressed']):>13}", flush=True)
    print(f"\n{time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
