"""The points of a suite (default ``ci``) as pytest-benchmark benchmarks.

    pytest bench/gate/ --benchmark-only --benchmark-autosave
    pytest bench/gate/ --benchmark-only --benchmark-compare --benchmark-compare-fail=median:10%

One test, parametrised by bench/gate/conftest.py from the suite file (ids are point labels). The
workload is built by ``bench.scenarios.step.build``, the code path of ``recbench run``'s worker;
each pytest-benchmark round is one device-synchronised step (``step`` then ``sync``), after
one untimed compile step and the suite's ``measure.warmup_iters``; rounds are the suite's
``measure.min_iters``. ``benchmark.extra_info`` holds the point, the analytic cost (FLOPs,
bytes, parameters), peak device memory and host RSS, and energy with its provenance, under the
result schema's names. This is the pytest-benchmark way in (its JSON, autosave and
``--benchmark-compare-fail``); ``recbench gate`` is the interleaved, model-code-only gate.
"""

from __future__ import annotations

import time

import pytest

from bench import meters
from bench.point import device_kind
from bench.scenarios.step import Unsupported, build


def test_step(benchmark, recbench_point, recbench_suite) -> None:
    point = recbench_point
    measure = recbench_suite.measure_for(point)
    with meters.HostMemoryMeter() as host:
        try:
            workload = build(point)
        except Unsupported as e:
            pytest.skip(str(e))
        try:
            def step_and_sync():
                return workload.sync(workload.step())

            t0 = time.perf_counter()
            step_and_sync()  # the first step compiles: timed apart, as the harness does
            compile_s = time.perf_counter() - t0
            reset_peak, read_peak = workload.peak_fns
            # JAX cannot reset its peak: a reading counts only if this point raised it.
            before = read_peak() if (read_peak and not reset_peak) else None
            index = int(point.device.split(":")[1]) if ":" in point.device else 0
            sources = meters.default_energy_sources(device_kind(point.device), index)
            benchmark.group = f"{point.framework} {point.workload}"
            with meters.DeviceMemoryMeter(reset_peak, read_peak) as dev, \
                    meters.EnergyMeter(sources) as energy:
                benchmark.pedantic(step_and_sync, rounds=measure.min_iters, iterations=1,
                                   warmup_rounds=measure.warmup_iters)
            workload.check()  # a diverged train step fails the test: no times over NaN
            cost = dict(workload.cost)
            samples_per_step = workload.samples_per_step
        finally:
            workload.close()
    peak = dev.peak_bytes
    if before is not None and (peak is None or peak <= before):
        peak = None
    steps = measure.min_iters + measure.warmup_iters  # the energy meter saw warm-up too
    stats = benchmark.stats.stats if benchmark.stats else None
    benchmark.extra_info.update({
        "recbench_id": point.id,
        "point": point.to_dict(),
        **cost,
        "samples_per_step": samples_per_step,
        "samples_per_s": samples_per_step / stats.median if stats else None,
        "compile_s": compile_s,
        "peak_device_mem_bytes": peak,
        "peak_host_rss_bytes": host.peak_rss_bytes,
        **meters.energy_metrics(energy.result, steps=steps, recs=steps * samples_per_step),
        "energy_source": energy.result.source,
    })
