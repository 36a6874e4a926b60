"""The serving step workloads (rank, generate, update): each runs as a point in both
frameworks, with its extra metrics, and the new point axes leave earlier ids alone."""

import pytest

from bench.launch.worker import measure_point
from bench.point import Measure, Point
from bench.scenarios.step import build

MEASURE = Measure(warmup_iters=1, min_time_s=0.0, min_iters=2, max_iters=2, max_time_s=5.0)


def point(**kw) -> Point:
    base = dict(framework="torch", workload="rank", preset="tiny", catalog_size=300,
                seq_len=10, batch_size=2, precision="fp32", device="cpu", n_candidates=24,
                gen_steps=3, beam_width=4)
    return Point(**{**base, **kw})


@pytest.mark.parametrize("fw", ["torch", "jax"])
@pytest.mark.parametrize("workload,extra", [("rank", set()),
                                            ("generate", {"prefill_ms", "decode_step_ms"}),
                                            ("update", {"reencode_ms"})])
def test_serving_points_run_with_their_extra_metrics(fw, workload, extra):
    r = measure_point(point(framework=fw, workload=workload), MEASURE)
    assert r["status"] == "ok", r
    m = r["metrics"]
    assert extra <= set(m) and all(m[k] > 0 for k in extra)
    assert m["flops_per_step"] > 0 and m["bytes_per_step"] > 0 and m["est_mem_bytes"] > 0


def test_serving_steps_return_what_the_engine_promises():
    w = build(point(workload="generate"))
    try:
        items, scores = w.sync(w.step())
        assert tuple(items.shape) == (2, 4, 3) and tuple(scores.shape) == (2, 4)
    finally:
        w.close()
    w = build(point(workload="rank"))
    try:
        assert tuple(w.sync(w.step()).shape) == (2, 24)
        assert w.tokens_per_step == 2 * (9 + 24)
    finally:
        w.close()


def test_lstm_has_no_serving_path_and_torch_compile_none_yet():
    r = measure_point(point(block="lstm", workload="update"), MEASURE)
    assert r["status"] == "unsupported" and "attention block" in r["reason"]
    r = measure_point(point(compile=True), MEASURE)
    assert r["status"] == "unsupported" and "not compiled" in r["reason"]


def test_new_axes_keep_earlier_ids_and_show_where_they_matter():
    infer = Point(framework="torch", workload="infer", preset="tiny", batch_size=8,
                  precision="fp32", device="cpu")
    assert infer.id == "903bb3e86277"  # the id it had before the serving axes existed
    assert point(n_candidates=2048).id != point(n_candidates=512).id
    assert "K=24" in point().label() and "S=3 W=4" in point(workload="generate").label()
    assert point(workload="generate").model_config().positions == "left"
    assert point(workload="rank").model_config().positions == "right"
