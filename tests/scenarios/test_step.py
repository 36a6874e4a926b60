"""A train point whose step diverges is recorded as an error, never as a number from NaN."""

import functools

import pytest

import recmodels.train as T
from bench.launch.worker import measure_point
from bench.point import Measure, Point
from bench.scenarios.step import build

MEASURE = Measure(warmup_iters=1, min_time_s=0.0, min_iters=3, max_iters=3, max_time_s=5.0)


def tiny_point(**kw) -> Point:
    base = dict(framework="torch", workload="train", preset="tiny", catalog_size=500,
                seq_len=8, batch_size=4, precision="fp32", device="cpu")
    return Point(**{**base, **kw})


@pytest.fixture
def huge_lr(monkeypatch):
    monkeypatch.setattr(T, "make_engine", functools.partial(T.make_engine, lr=1e8))


def test_a_diverged_train_point_is_an_error_with_the_reason(huge_lr):
    rec = measure_point(tiny_point(), MEASURE)
    assert rec["status"] == "error" and "metrics" not in rec
    assert "diverged" in rec["reason"] and "nan" in rec["reason"]


@pytest.mark.parametrize("fw", ["torch", "jax"])
def test_the_check_runs_outside_the_step_and_names_the_cause(fw, huge_lr):
    w = build(tiny_point(framework=fw))
    for _ in range(3):
        w.sync(w.step())
    with pytest.raises(T.Diverged, match="diverged"):
        w.check()
    w.close()


@pytest.mark.parametrize("fw", ["torch", "jax"])
def test_a_healthy_point_passes_the_check(fw):
    for workload in ("train", "infer"):
        w = build(tiny_point(framework=fw, workload=workload))
        w.sync(w.step())
        w.check()  # no error
        w.close()
        w.check()  # close leaves a harmless no-op (its closure held the engine)
