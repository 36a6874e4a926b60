"""How much does the harness add to a step? A benchmark, not a test.

For one point, times the same step two ways in one process, alternating A B A B ... so that
machine drift hits both: (A) under the harness (`bench.launch.worker.measure_point`: meters,
host-RSS sampling thread, energy meter, per-iteration sync), (B) a bare loop of the same step
with one perf_counter pair per iteration and the same sync. Prints the ratio of the medians of the
per-round medians; the harness aims to stay within 3%.

    python benchmarks/harness_overhead.py [--framework torch|jax] [--workload train|infer]
                                          [--preset tiny] [--batch-size 64] [--rounds 7]
"""

from __future__ import annotations

import argparse
import statistics
import time

from bench.launch.worker import measure_point
from bench.point import Measure, Point
from bench.scenarios.step import build


def bare_loop_ms(point: Point, iters: int, warmup: int) -> float:
    w = build(point)
    try:
        for _ in range(warmup + 1):
            w.sync(w.step())
        times = []
        for _ in range(iters):
            t0 = time.perf_counter_ns()
            w.sync(w.step())
            times.append(time.perf_counter_ns() - t0)
        return statistics.median(times) / 1e6
    finally:
        w.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--framework", default="torch", choices=("torch", "jax"))
    ap.add_argument("--workload", default="train", choices=("train", "infer"))
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--iters", type=int, default=60)
    ap.add_argument("--rounds", type=int, default=7)
    a = ap.parse_args()
    point = Point(framework=a.framework, workload=a.workload, preset=a.preset,
                  catalog_size=20_000, seq_len=50, batch_size=a.batch_size, precision="fp32",
                  device=a.device)
    measure = Measure(warmup_iters=3, min_time_s=0.0, min_iters=a.iters, max_iters=a.iters,
                      max_time_s=600.0)
    harness, bare = [], []
    for r in range(a.rounds):
        res = measure_point(point, measure)
        assert res["status"] == "ok", res
        harness.append(res["metrics"]["step_ms"]["median"])
        bare.append(bare_loop_ms(point, a.iters, 3))
        print(f"round {r + 1}: harness {harness[-1]:.3f} ms  bare {bare[-1]:.3f} ms  "
              f"ratio {harness[-1] / bare[-1]:.4f}", flush=True)
    ratio = statistics.median(h / b for h, b in zip(harness, bare))
    print(f"{point.label()}: harness / bare median step time = {ratio:.4f} "
          f"({(ratio - 1) * 100:+.2f}%), median over {a.rounds} alternating rounds of "
          f"{a.iters} iterations each")


if __name__ == "__main__":
    main()
