"""One MLPerf LoadGen test of a serving SUT (bench/scenarios/serve.py): the settings of its
scenario, the dynamic batcher in front of the SUT, LoadGen's ``result_*`` figures read back
from its detail log, and the energy over the whole run."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.scenarios.batcher import DynamicBatcher


@dataclass
class LoadgenRun:
    """One LoadGen test: its settings, LoadGen's result_* figures, the batcher's counts."""

    scenario: str
    rate_per_s: float | None  # server: the offered (scheduled) rate
    result: dict[str, Any]  # LoadGen's result_* keys without the prefix
    answered: dict[str, int]
    mean_batch: float | None
    busy_s: float
    errors: list[str]
    energy: Any  # bench.meters.EnergyResult
    log_dir: str

    def latency_ms(self, pct: float) -> float | None:
        v = self.result.get(f"{pct:.2f}_percentile_latency_ns")
        return None if v is None else v / 1e6

    @property
    def queries(self) -> int:
        """LoadGen's queries (what its percentiles are over; Offline has one of all)."""
        return int(self.result.get("query_count") or 0)

    @property
    def requests(self) -> int:
        """Requests (users) answered: queries x samples per query."""
        return self.answered["answered"]

    @property
    def requests_per_s(self) -> float | None:
        r = self.result
        return (r.get("samples_per_second") or r.get("completed_samples_per_sec")
                or r.get("qps_with_loadgen_overhead"))

    def meets(self, target_ms: float, pct: float) -> bool:
        got = self.latency_ms(pct)
        return got is not None and got <= target_ms and not self.errors

    def summary(self, target_ms: float, pct: float) -> dict[str, Any]:
        return {"rate_per_s": self.rate_per_s, "queries": self.queries,
                "met": None if self.rate_per_s is None else self.meets(target_ms, pct),
                "latency_ms": self.latency_ms(pct), "log_dir": self.log_dir}


def read_loadgen_detail(path: Path) -> dict[str, Any]:
    """LoadGen's ``result_*`` entries of ``mlperf_log_detail.txt`` (":::MLLOG {json}" lines)."""
    out: dict[str, Any] = {}
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        _, sep, payload = line.partition(":::MLLOG ")
        if not sep:
            continue
        try:
            entry = json.loads(payload)
        except ValueError:
            continue
        key = str(entry.get("key", ""))
        if key.startswith("result_"):
            out[key[len("result_"):]] = entry.get("value")
    return out


def run_loadgen(sut: Any, spec: Any, log_dir: Path, *, rate_per_s: float | None = None,
                energy_sources: Sequence[Any] = (),
                offline_qps: float | None = None) -> LoadgenRun:
    """One LoadGen PerformanceOnly test of ``sut`` (a serve.Sut) as ``spec`` (a serve.ServeSpec)
    says; its logs go to ``log_dir``. (Typed Any: serve imports this module, not the reverse.)"""
    import mlperf_loadgen as lg

    from bench.meters import EnergyMeter

    settings = lg.TestSettings()
    settings.mode = lg.TestMode.PerformanceOnly
    settings.min_duration_ms = int(spec.duration_s * 1e3)
    settings.min_query_count = spec.min_queries
    # LoadGen stops issuing here; generous, so that min_queries is what ends a slow run
    settings.max_duration_ms = int(max(spec.duration_s * 20, 60) * 1e3)
    step_ns = int(sut.step_s[1] * 1e9 + sut.sut_delay_ms * 1e6)
    if spec.scenario == "server":
        settings.scenario = lg.TestScenario.Server
        settings.server_target_qps = float(rate_per_s)
        settings.server_target_latency_ns = int(spec.target_latency_ms * 1e6)
        settings.server_target_latency_percentile = spec.percentile / 100
    elif spec.scenario == "offline":
        settings.scenario = lg.TestScenario.Offline
        # LoadGen issues expected qps x min duration samples at once (x 1.1)
        settings.offline_expected_qps = offline_qps or sut.capacity_per_s(spec.max_batch)
    else:
        settings.scenario = lg.TestScenario.SingleStream
        settings.single_stream_expected_latency_ns = max(step_ns, 1)
        settings.single_stream_target_latency_percentile = spec.percentile / 100

    def respond(ids: Sequence[int]) -> None:
        lg.QuerySamplesComplete([lg.QuerySampleResponse(rid, 0, 0) for rid in ids])

    batcher = DynamicBatcher(sut.run_batch, respond, max_batch=spec.max_batch,
                             max_delay_s=spec.delay_ms / 1e3)
    lg_sut = lg.ConstructSUT(lambda qs: batcher.submit([(q.id, q.index) for q in qs]),
                             lambda: None)
    qsl = lg.ConstructQSL(spec.samples, spec.samples, lambda _: None, lambda _: None)
    log_dir.mkdir(parents=True, exist_ok=True)
    log = lg.LogSettings()
    log.log_output.outdir = str(log_dir)
    log.log_output.copy_summary_to_stdout = False
    log.enable_trace = False
    meter = EnergyMeter(energy_sources)
    try:
        with batcher, meter:  # the energy window is the whole LoadGen run
            lg.StartTestWithLogSettings(lg_sut, qsl, settings, log)
    finally:
        lg.DestroyQSL(qsl)
        lg.DestroySUT(lg_sut)
    stats = batcher.stats
    sizes = stats.batch_sizes
    return LoadgenRun(spec.scenario, rate_per_s,
                      read_loadgen_detail(log_dir / "mlperf_log_detail.txt"),
                      stats.answered_once(), sum(sizes) / len(sizes) if sizes else None,
                      stats.busy_s, list(stats.errors), meter.result, str(log_dir))
