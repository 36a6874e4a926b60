"""Serving (`recbench serve`): one Engine behind a dynamic batcher, driven by MLPerf's LoadGen.

The system under test (SUT) is an Engine on its device (recmodels, any framework) with a
:class:`~bench.scenarios.batcher.DynamicBatcher` in front; LoadGen (the `mlcommons-loadgen`
package, the MLPerf Inference load generator) issues the queries and measures each one from
its scheduled issue time to its answer. Scenarios, as MLPerf defines them:
  server        Poisson arrivals at a rate; the highest rate whose latency percentile meets
                the target is searched by bisection over LoadGen PerformanceOnly runs
                (``search_max_rate``; LoadGen's FindPeakPerformance mode is not used: its
                runs are MLPerf-length and cannot be cut short)
  offline       every sample at once: throughput
  singlestream  one query at a time, the next issued when the last is answered: latency
Workloads: ``retrieve`` (top-10 over the whole catalog, Engine.infer_step), ``rank`` (a
history against K candidates, Engine.rank_step) and ``generate`` (beam search of S next items
with width W over a KV cache, Engine.generate; positions count from the oldest item). A
request is one user; batches are padded up to a power of two (at most ``max_batch``) so a
compiling framework sees a few shapes, each compiled and timed before LoadGen starts
(``compile_s``).

One LoadGen run (settings, batcher, result figures, energy) is bench/scenarios/loadgen.py.
MLPerf asks for 600 s runs (and 270,336 queries for Server) before a figure is comparable;
``duration_s`` and ``min_queries`` set both here, short by default.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bench.scenarios.loadgen import LoadgenRun, run_loadgen
from recmodels.errors import InputError

SCENARIOS = ("server", "offline", "singlestream")
WORKLOADS = ("retrieve", "rank", "generate")
# The latency percentiles LoadGen reports (mlperf_log_detail.txt result_*_percentile_*).
PERCENTILES = (50.0, 90.0, 95.0, 97.0, 99.0, 99.9)
# A percentile needs the samples to back it (DESIGN.md): p99 from < 100 queries is null.
MIN_QUERIES_FOR = {50.0: 2, 90.0: 10, 95.0: 20, 97.0: 34, 99.0: 100, 99.9: 1000}
TOP_K = 10
# Test hook: sleep this long in every batch, a slower SUT on purpose (recorded in the point).
DELAY_ENV = "RECBENCH_SERVE_DELAY_MS"


@dataclass(frozen=True)
class ServeSpec:
    """One `recbench serve` measurement: what is served, how it is batched, how it is driven."""

    framework: str = "torch"
    workload: str = "rank"  # retrieve | rank | generate
    preset: str = "tiny"
    catalog_size: int | None = None  # None: the preset's
    seq_len: int | None = None  # None: the preset's
    n_candidates: int = 256  # K, per ranked request (rank)
    gen_steps: int = 4  # S, items generated per request (generate)
    beam_width: int = 16  # W, beams kept per request (generate)
    precision: str = "fp32"
    device: str = "cpu"
    scenario: str = "server"
    max_batch: int = 32  # the batcher's largest batch
    max_delay_ms: float | None = None  # how long a request may wait for others; None: 2 ms
    # for server, 0 elsewhere (offline batches fill at once; singlestream has no one to wait for)
    target_latency_ms: float = 80.0  # server: the latency target at `percentile`
    percentile: float = 99.0
    rate_per_s: float | None = None  # server: one run at this rate instead of the search
    duration_s: float = 5.0  # each LoadGen run's minimum duration (MLPerf: 600 s)
    min_queries: int = 200  # and its minimum query count
    search_runs: int = 8  # server: at most this many runs in the search
    search_tolerance: float = 0.05  # server: stop when the bracket is this narrow (relative)
    samples: int = 1024  # distinct requests in the sample library
    seed: int = 0

    @property
    def delay_ms(self) -> float:
        return float(self.max_delay_ms if self.max_delay_ms is not None
                     else 2.0 if self.scenario == "server" else 0.0)

    def validate(self) -> None:
        from bench.point import FRAMEWORKS, PRECISIONS, field_problem
        from recmodels.config import PRESETS

        checks = [("scenario", self.scenario, SCENARIOS), ("workload", self.workload, WORKLOADS),
                  ("framework", self.framework, FRAMEWORKS), ("preset", self.preset, PRESETS),
                  ("precision", self.precision, PRECISIONS)]
        for name, value, choices in checks:
            if value not in choices:
                raise InputError(f"unknown {name} {value!r}; choose one of {', '.join(choices)}")
        problem = field_problem("device", self.device)
        if problem:
            raise InputError(f"device: {problem}")
        if self.percentile not in PERCENTILES:
            raise InputError(f"percentile {self.percentile:g} is not one LoadGen reports; "
                             f"choose one of {', '.join(f'{p:g}' for p in PERCENTILES)}")
        positive = {"max_batch": self.max_batch, "n_candidates": self.n_candidates,
                    "gen_steps": self.gen_steps, "beam_width": self.beam_width,
                    "target_latency_ms": self.target_latency_ms, "duration_s": self.duration_s,
                    "min_queries": self.min_queries, "samples": self.samples,
                    "search_runs": self.search_runs}
        for name, value in positive.items():
            if not value > 0:
                raise InputError(f"{name} must be positive, got {value}")
        if self.precision == "int8" and (self.framework, self.device) != ("torch", "cpu"):
            raise InputError("int8 is PyTorch dynamic quantisation on CPU: --framework torch "
                             "--device cpu")
        if self.delay_ms < 0 or (self.rate_per_s is not None and not self.rate_per_s > 0):
            raise InputError("max_delay_ms must be >= 0 and rate_per_s positive")

    def point(self, sut_delay_ms: float = 0.0) -> dict[str, Any]:
        """The record's ``point``: a serve point has a ``scenario`` (step points have none)."""
        cfg = self.model_config()
        p: dict[str, Any] = {
            "framework": self.framework, "workload": self.workload, "preset": self.preset,
            "block": cfg.block, "catalog_size": cfg.catalog_size, "seq_len": cfg.seq_len,
            "precision": self.precision, "device": self.device, "scenario": self.scenario,
            "max_batch": self.max_batch, "max_delay_ms": self.delay_ms,
        }
        if self.workload == "rank":
            p["n_candidates"] = self.n_candidates
        if self.workload == "generate":
            p.update(gen_steps=self.gen_steps, beam_width=self.beam_width)
        if self.scenario == "server":
            p.update(target_latency_ms=self.target_latency_ms, percentile=self.percentile)
            if self.rate_per_s is not None:
                p["rate_per_s"] = self.rate_per_s
        if sut_delay_ms:
            p["sut_delay_ms"] = sut_delay_ms  # a slowed SUT is a different point
        return p

    def model_config(self):
        from bench.point import COMPUTE_DTYPE
        from recmodels.config import preset

        over = {k: v for k, v in (("catalog_size", self.catalog_size),
                                  ("seq_len", self.seq_len)) if v is not None}
        if self.workload == "generate":  # a KV cache needs positions that do not move
            over["positions"] = "left"
        return preset(self.preset, compute_dtype=COMPUTE_DTYPE[self.precision], **over)


# --- the system under test --------------------------------------------------------------------


def buckets(max_batch: int) -> list[int]:
    """Batch shapes the device sees: powers of two below ``max_batch``, and ``max_batch``."""
    out, b = [], 1
    while b < max_batch:
        out.append(b)
        b *= 2
    return [*out, max_batch]


@dataclass
class Sut:
    """A runnable batch of requests: ``run_batch(sample indices)`` computes and syncs."""

    run_batch: Callable[[np.ndarray], object]
    compile_s: float  # first call of every bucket shape, summed
    # fastest of the warm-up batches, per bucket: a capacity estimate that a busy neighbour
    # slows less than a median of three would (the search and Offline only start from it)
    step_s: dict[int, float]
    sut_delay_ms: float = 0.0
    engine: Any = field(default=None, repr=False)

    def capacity_per_s(self, max_batch: int) -> float:
        """Requests per second if every batch were full: the rate no search goes above."""
        return max_batch / (self.step_s[max_batch] + self.sut_delay_ms / 1e3)


def sut_delay_ms() -> float:
    text = os.environ.get(DELAY_ENV, "").strip()
    if not text:
        return 0.0
    try:
        value = float(text)
    except ValueError:
        raise InputError(f"{DELAY_ENV}={text!r} is not a number of milliseconds") from None
    if not value >= 0:
        raise InputError(f"{DELAY_ENV} must be >= 0, got {text}")
    return value


def build_sut(spec: ServeSpec, *, warmup_reps: int = 3) -> Sut:
    """The Engine with its sample library on the host and every bucket shape warmed up."""
    from recmodels.config import serving_history
    from recmodels.train import make_engine

    cfg = spec.model_config()
    engine = make_engine(spec.framework, cfg, device=spec.device, precision=spec.precision)
    if spec.precision == "int8":
        engine.quantize_int8()  # as step.py does for an int8 infer point
    if spec.workload == "rank" and not hasattr(engine, "rank_step"):
        raise InputError("workload rank needs Engine.rank_step, which this recmodels lacks; "
                         "use --workload retrieve")
    rng = np.random.default_rng(spec.seed)
    # rank scores each candidate at the position after the history, so a ranked history
    # leaves that one position free (T - 1 items), generate leaves S - 1 for the items it
    # appends; retrieve reads a full-length history
    hist = (cfg.seq_len if spec.workload == "retrieve" else
            serving_history(cfg, spec.workload, spec.gen_steps))
    seqs = rng.integers(1, cfg.catalog_size + 1, (spec.samples, hist), dtype=np.int32)
    cands = (rng.integers(1, cfg.catalog_size + 1, (spec.samples, spec.n_candidates),
                          dtype=np.int32) if spec.workload == "rank" else None)
    shapes = buckets(spec.max_batch)
    delay_s = sut_delay_ms() / 1e3

    def run_batch(indices: np.ndarray) -> object:
        size = next(b for b in shapes if b >= len(indices))
        if size > len(indices):  # pad with the last request; its extra answers are dropped
            indices = np.concatenate([indices, np.full(size - len(indices), indices[-1])])
        if spec.workload == "generate":
            seq = engine.put({"seq": seqs[indices]})["seq"]
            out = engine.sync(engine.generate(seq, spec.gen_steps, spec.beam_width))
        elif cands is None:
            seq = engine.put({"seq": seqs[indices]})["seq"]
            out = engine.sync(engine.infer_step(seq, TOP_K))
        else:
            d = engine.put({"seq": seqs[indices], "cand": cands[indices]})
            out = engine.sync(engine.rank_step(d["seq"], d["cand"]))
        if delay_s:
            time.sleep(delay_s)
        return out

    compile_s, step_s = 0.0, {}
    for b in shapes:
        idx = np.arange(b) % spec.samples
        t0 = time.perf_counter()
        run_batch(idx)
        compile_s += time.perf_counter() - t0
        times = []
        for _ in range(warmup_reps):
            t0 = time.perf_counter()
            run_batch(idx)
            times.append(time.perf_counter() - t0)
        step_s[b] = min(times) - delay_s
    return Sut(run_batch, compile_s, step_s, delay_s * 1e3, engine)


# --- the server search ------------------------------------------------------------------------


def search_max_rate(test: Callable[[float], LoadgenRun], *, capacity_per_s: float,
                    floor_per_s: float, target_ms: float, pct: float, max_runs: int,
                    tolerance: float) -> tuple[LoadgenRun | None, list[LoadgenRun]]:
    """Bisection for the highest Poisson rate whose ``pct`` latency meets ``target_ms``.

    Starts at half the batcher's full-batch capacity; a passing run raises the lower bound, a
    failing one lowers the upper (doubling up while nothing has failed yet, quartering down
    while nothing has passed, never below ``floor_per_s``). Stops after ``max_runs`` runs or
    when the bracket is within ``tolerance``. Returns (the best passing run or None, all runs).
    """
    runs: list[LoadgenRun] = []
    best: LoadgenRun | None = None
    hi: float | None = None  # lowest failing rate
    rate = max(capacity_per_s / 2, floor_per_s)
    for _ in range(max_runs):
        run = test(rate)
        runs.append(run)
        if run.meets(target_ms, pct):
            best = run if best is None or rate > best.rate_per_s else best
            if hi is None:
                rate *= 2
                continue
        else:
            hi = rate if hi is None else min(hi, rate)
            if best is None:
                if rate <= floor_per_s:
                    break
                rate = max(rate / 4, floor_per_s)
                continue
        if (hi - best.rate_per_s) / hi <= tolerance:
            break
        rate = (best.rate_per_s + hi) / 2
    return best, runs


# --- the measurement --------------------------------------------------------------------------


@dataclass
class ServeOutcome:
    status: str  # ok | sla-missed | error
    reason: str | None
    point: dict[str, Any]
    metrics: dict[str, Any]


def serve_in_worker(spec: dict[str, Any], log_root: str) -> dict[str, Any]:
    """The worker's ``serve`` command: a reply that is always a record, never a raise (a
    spec this machine cannot serve is ``unsupported``, a failure ``error``)."""
    try:
        s = ServeSpec(**spec)
        point = s.point(sut_delay_ms())
    except (TypeError, InputError) as e:
        return {"status": "error", "reason": f"bad serve spec: {e}", "point": spec, "metrics": {}}
    try:
        out = serve(s, Path(log_root))
    except InputError as e:
        return {"status": "unsupported", "reason": str(e), "point": point, "metrics": {}}
    except Exception as e:  # the record says what failed; the sweep goes on
        return {"status": "error", "reason": f"{type(e).__name__}: {e}", "point": point,
                "metrics": {}}
    return {"status": out.status, "reason": out.reason, "point": out.point,
            "metrics": out.metrics}


def _latencies(run: LoadgenRun) -> dict[str, float | None]:
    n = run.queries
    out: dict[str, float | None] = {}
    for pct in PERCENTILES:
        name = "p" + f"{pct:g}".replace(".", "_")
        out[name] = run.latency_ms(pct) if n >= MIN_QUERIES_FOR[pct] else None
    mean, top = run.result.get("mean_latency_ns"), run.result.get("max_latency_ns")
    out["mean"] = None if mean is None else mean / 1e6
    out["max"] = None if top is None else top / 1e6
    return out


def serve(spec: ServeSpec, log_root: Path, *, energy_sources: Sequence[Any] | None = None,
          progress: Callable[[str], object] = lambda _: None) -> ServeOutcome:
    """Build the SUT, run the scenario under LoadGen (logs under ``log_root``), summarise."""
    from bench.meters import default_energy_sources, energy_j_per_1k_recs
    from bench.point import device_kind

    spec.validate()
    if energy_sources is None:
        energy_sources = default_energy_sources(device_kind(spec.device))
    try:
        sut = build_sut(spec)
    except InputError:
        raise
    except Exception as e:  # the SUT cannot even start: a result with the reason
        first = next((ln for ln in str(e).splitlines() if ln.strip()), "")
        return ServeOutcome("error", f"the SUT failed to start: {type(e).__name__}: "
                            f"{first[:300]}", spec.point(sut_delay_ms()), {})
    point = spec.point(sut.sut_delay_ms)
    cap = sut.capacity_per_s(spec.max_batch)
    progress(f"SUT ready: compile {sut.compile_s:.2f} s, batch {spec.max_batch} in "
             f"{sut.step_s[spec.max_batch] * 1e3:.2f} ms (capacity ~{cap:,.0f} requests/s)")
    n_runs = [0]

    def test(rate: float | None) -> LoadgenRun:
        n_runs[0] += 1
        name = f"{n_runs[0]:02d}-{spec.scenario}" + (f"-{rate:.0f}qps" if rate else "")
        run = run_loadgen(sut, spec, log_root / name, rate_per_s=rate,
                          energy_sources=energy_sources)
        lat = run.latency_ms(spec.percentile)
        progress(f"{name}: {run.queries} queries, p{spec.percentile:g} "
                 f"{'-' if lat is None else f'{lat:.1f} ms'}")
        return run

    search: list[LoadgenRun] = []
    status, reason = "ok", None
    if spec.scenario == "server" and spec.rate_per_s is None:
        floor = spec.min_queries / spec.duration_s  # a run at the floor lasts duration_s
        best, search = search_max_rate(test, capacity_per_s=cap, floor_per_s=floor,
                                       target_ms=spec.target_latency_ms, pct=spec.percentile,
                                       max_runs=spec.search_runs,
                                       tolerance=spec.search_tolerance)
        run = best or min(search, key=lambda r: r.rate_per_s or 0.0)
    else:
        run = test(spec.rate_per_s)
        expected = cap
        for _ in range(3):
            if spec.scenario != "offline" or run.result.get("min_duration_met") is not False:
                break
            # the warm-up underrated the SUT (a busy machine): LoadGen issued too few samples
            # to fill min_duration; again, expecting the rate measured (at least twice more)
            expected = max(run.requests_per_s or 0.0, expected * 2)
            progress(f"offline run shorter than its duration: again expecting {expected:,.0f}"
                     " requests/s")
            n_runs[0] += 1
            run = run_loadgen(sut, spec, log_root / f"{n_runs[0]:02d}-offline",
                              offline_qps=expected, energy_sources=energy_sources)
        search = [run]
    achieved = run.latency_ms(spec.percentile)
    if spec.scenario == "server" and not run.meets(spec.target_latency_ms, spec.percentile):
        status = "sla-missed"
        reason = (f"p{spec.percentile:g} latency {achieved:.1f} ms > target "
                  f"{spec.target_latency_ms:g} ms even at {run.rate_per_s:.1f} requests/s"
                  if achieved is not None else "LoadGen reported no latency")
    every = [r.answered for r in search]
    broken = [a for a in every if a["duplicates"] or a["missing"] or a["unknown"]]
    errors = [e for r in search for e in r.errors]
    if errors:
        status, reason = "error", f"the SUT raised: {errors[0]}"
    elif broken:
        status, reason = "error", f"a query was not answered exactly once: {broken[0]}"
    energy = run.energy
    metrics: dict[str, Any] = {
        "scenario": spec.scenario,
        "queries": run.queries,
        "latency_ms": _latencies(run),
        "achieved_latency_ms": achieved,  # at `percentile`, of the reported run
        "requests": run.requests,
        "samples_per_s": run.requests_per_s,  # requests (users) answered per second
        "offered_rate_per_s": run.rate_per_s,
        "max_rate_per_s": run.rate_per_s if spec.scenario == "server" and status == "ok"
                          and spec.rate_per_s is None else None,
        "search": [r.summary(spec.target_latency_ms, spec.percentile) for r in search],
        "search_method": ("bisection over LoadGen PerformanceOnly runs"
                          if spec.scenario == "server" and spec.rate_per_s is None else None),
        "mean_batch": run.mean_batch,
        "device_busy_s": run.busy_s,
        "compile_s": sut.compile_s,
        "step_ms_by_batch": {str(b): s * 1e3 for b, s in sut.step_s.items()},
        "capacity_per_s": cap,
        "answered": {k: sum(a[k] for a in every) for k in every[0]},
        "duration_s": spec.duration_s,
        "min_queries": spec.min_queries,
        "loadgen_validity": run.result.get("validity"),
        "loadgen_log_dir": run.log_dir,
        "energy_j": energy.energy_j if energy else None,
        "energy_j_per_1k_requests": energy_j_per_1k_recs(energy.energy_j if energy else None,
                                                         run.requests),
        "mean_power_w": energy.mean_power_w if energy else None,
        "energy_provenance": energy.provenance if energy else "unavailable",
        "energy_source": energy.source if energy else "none",
    }
    if status == "ok" and achieved is not None and not math.isfinite(achieved):
        status, reason = "error", "LoadGen reported a non-finite latency"
    return ServeOutcome(status, reason, point, metrics)
