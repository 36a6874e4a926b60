"""The reference suite's [measure] gives fast points enough samples for what is printed.

The sampling rule is StepTimer.sample's own, run on a fake clock with a planted step time:
no real benchmark runs.
"""

from __future__ import annotations

import pytest

from bench.meters.timing import MIN_SAMPLES, StepTimer, min_ci_samples
from bench.point import Measure
from bench.suites.suite import load_suite


def samples_for(measure: Measure, step_ms: float) -> tuple[int, str]:
    """(samples, stop reason) of a step that always takes ``step_ms``, under ``measure``."""
    now = [0]
    step_ns = int(step_ms * 1e6)

    def step() -> None:
        now[0] += step_ns

    timer = StepTimer(clock_ns=lambda: now[0])
    s = timer.sample(step, lambda _: None, min_time_s=measure.min_time_s,
                     min_iters=measure.min_iters, max_iters=measure.max_iters,
                     max_time_s=measure.max_time_s)
    return len(s.samples_ms), s.stop_reason


@pytest.mark.parametrize("name", ["reference", "quick"])
@pytest.mark.parametrize("step_ms", [0.5, 10.0, 50.0, 99.0])
def test_fast_points_get_at_least_30_samples(name: str, step_ms: float) -> None:
    n, _ = samples_for(load_suite(name).measure, step_ms)
    assert n >= 30
    assert n >= MIN_SAMPLES["p90"] and n >= min_ci_samples()  # p90 and the CI are printed


def test_planted_10ms_step_under_the_reference_measure() -> None:
    m = load_suite("reference").measure
    assert samples_for(m, 10.0) == (30, "target")  # 30 x 10 ms = 0.3 s = min_time_s
    assert samples_for(m, 1.0) == (m.max_iters, "max_iters")  # 100: p99 printed too


def test_slow_points_stop_at_max_time() -> None:
    m = load_suite("reference").measure
    n, why = samples_for(m, 1000.0)
    assert why == "max_time" and n == int(m.max_time_s)  # a 1 s step: 3 samples


def test_quick_extras_are_sampled_like_the_reference_points() -> None:
    quick = load_suite("quick")
    assert quick.measure == load_suite("reference").measure
    assert len({quick.measure_for(p) for p in quick.points}) == 1
