"""Runs a suite: worker processes, isolation, faults as results, resume.

Points run in one worker process per (framework, device) group (bench/worker.py), so
imports and compilation caches are paid once per group. What can go wrong with a point is
recorded as its status and the sweep goes on:
  infeasible         the analytic memory estimate exceeds the device's memory: not run
  skipped-after-oom  a smaller point of the same line ran out of memory (Point.dominated_by)
  unsupported        the precision/device/framework combination cannot run (with the reason)
  oom                the framework raised out-of-memory; the worker freed memory and went on
  timeout            the point ran past measure.timeout_s; its worker was killed
  crashed            the worker died (signal or exit), the reason holds the tail of stderr
  error              any other exception in the point, with its message
Every record is appended and fsync'ed as soon as its point ends, so Ctrl-C (or a kill of the
runner) loses nothing finished, and `--resume` runs only the points with no record.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import results as R
from bench.suite import Point, Suite
from bench.workloads import analytic_cost, device_kind
from recmodels.config import human
from recmodels.errors import InputError

STARTUP_TIMEOUT_S = 180.0  # importing torch/jax on a cold, busy machine
STDERR_TAIL_CHARS = 2000
ROOF_DTYPES = {"fp32": "fp32", "tf32": "tf32", "bf16": "bf16", "fp16": "fp16"}


class WorkerDied(Exception):
    def __init__(self, returncode: int | None, stderr_tail: str):
        self.returncode, self.stderr_tail = returncode, stderr_tail
        super().__init__(describe_exit(returncode))


class WorkerTimeout(Exception):
    pass


def describe_exit(returncode: int | None) -> str:
    if returncode is None:
        return "worker closed its output without exiting"
    if returncode < 0:
        try:
            return f"killed by signal {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"exited with status {returncode}"


class Worker:
    """One `python -m bench.worker FRAMEWORK` process and its JSON-lines channel."""

    def __init__(self, framework: str, env: dict[str, str] | None = None):
        self.framework = framework
        self._stderr = tempfile.TemporaryFile(mode="w+b")  # noqa: SIM115 - closed in kill()
        worker_env = {**os.environ, **(env or {})}
        # JAX grabs 75% of GPU memory up front by default; allocate on demand instead so the
        # memory counters and the OOM frontier reflect what each point needs.
        worker_env.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
        worker_env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bench.worker", framework],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr,
            env=worker_env, start_new_session=True,  # Ctrl-C reaches the runner only
        )
        self._lines: queue.Queue[bytes | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        self._receive(STARTUP_TIMEOUT_S)  # {"event": "ready"}

    def _read(self) -> None:
        for line in self.proc.stdout:  # type: ignore[union-attr]
            self._lines.put(line)
        self._lines.put(None)

    def _receive(self, timeout_s: float) -> dict[str, Any]:
        try:
            line = self._lines.get(timeout=timeout_s)
        except queue.Empty:
            raise WorkerTimeout(f"no reply within {timeout_s:.0f} s") from None
        if line is None:
            try:
                code = self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                code = None
            raise WorkerDied(code, self.stderr_tail())
        return json.loads(line)

    def request(self, msg: dict[str, Any], timeout_s: float) -> dict[str, Any]:
        try:
            self.proc.stdin.write((json.dumps(msg) + "\n").encode())  # type: ignore[union-attr]
            self.proc.stdin.flush()  # type: ignore[union-attr]
        except (BrokenPipeError, OSError):
            pass  # the reader sees the EOF and reports how the worker died
        return self._receive(timeout_s)

    def stderr_tail(self, limit: int = STDERR_TAIL_CHARS) -> str:
        self._stderr.flush()
        self._stderr.seek(0, os.SEEK_END)
        size = self._stderr.tell()
        self._stderr.seek(max(0, size - limit))
        return self._stderr.read().decode(errors="replace").strip()

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        self._stderr.close()

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.proc.stdin.write(b'{"cmd": "exit"}\n')  # type: ignore[union-attr]
                self.proc.stdin.close()  # type: ignore[union-attr]
                self.proc.wait(timeout=30)
            except (OSError, subprocess.TimeoutExpired):
                pass
        self.kill()


# --- what the runner decides without running a point ---------------------------------------


def device_capacity_bytes(device: str, env: dict[str, Any]) -> int | None:
    """Memory a point on `device` can use: the GPU's, the host's for CPU/MPS, unknown (None)
    for TPUs (JAX reports it only from inside a process that owns the TPU)."""
    kind = device_kind(device)
    if kind == "cuda":
        index = int(device.split(":")[1]) if device[-1].isdigit() else 0  # :all: each GPU
        gpus = env.get("gpus") or []
        return gpus[index].get("memory_bytes") if index < len(gpus) else None
    if kind in ("cpu", "mps"):
        return env.get("ram_bytes")
    return None


def add_utilization(metrics: dict[str, Any], point: Point, roofs: dict[str, Any],
                    env: dict[str, Any]) -> None:
    """Achieved FLOP/s and bytes/s against the measured roofs and, where known, the
    datasheet peak. A missing roof leaves the ratio null, never 0."""
    from bench.roofs import datasheet_for_env

    dtype = ROOF_DTYPES.get(point.precision)
    roof = roofs.get(f"{device_kind(point.device)}/{dtype}") or {}
    flops, bw = roof.get("gemm_flops_per_s"), roof.get("mem_bytes_per_s")
    metrics["roof_flops_per_s"] = flops
    metrics["utilization"] = metrics["achieved_flops_per_s"] / flops if flops else None
    metrics["bandwidth_utilization"] = metrics["achieved_bytes_per_s"] / bw if bw else None
    sheet = datasheet_for_env(env, point.device) if dtype else None
    peak = (sheet or {}).get("flops_per_s", {}).get(dtype)
    metrics["datasheet_flops_per_s"] = peak
    metrics["utilization_datasheet"] = metrics["achieved_flops_per_s"] / peak if peak else None


# --- progress ------------------------------------------------------------------------------


def _clock(seconds: float) -> str:
    m, s = divmod(int(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def describe_record(rec: R.PointRecord) -> str:
    if rec.status != "ok":
        return rec.reason or ""
    m = rec.metrics
    return (f"{m['step_ms']['median']:.2f} ms/step (median of {m['step_ms']['n']})  "
            f"{m['samples_per_s']:,.0f} samples/s  "
            f"{human(m['achieved_flops_per_s'], 'FLOP/s')}")


class Progress:
    """A line per point (index, status, point, elapsed, ETA); a bar on a terminal."""

    def __init__(self, total: int, stream=None, bar: bool | None = None):
        self.total, self.done = total, 0
        self.stream = stream or sys.stderr
        self.start = time.monotonic()
        use_bar = self.stream.isatty() if bar is None else bar
        self.bar = None
        if use_bar:
            from tqdm import tqdm

            self.bar = tqdm(total=total, file=self.stream, unit="point", dynamic_ncols=True)

    def starting(self, point: Point) -> None:
        if self.bar is not None:
            self.bar.set_description_str(point.label()[:60])

    def finished(self, rec: R.PointRecord, point: Point) -> None:
        self.done += 1
        elapsed = time.monotonic() - self.start
        eta = elapsed / self.done * (self.total - self.done)
        line = (f"[{self.done:>{len(str(self.total))}}/{self.total}] {rec.status:<17s} "
                f"{point.label()}  {describe_record(rec)}")
        if self.bar is not None:
            self.bar.write(line)
            self.bar.update(1)
        else:
            print(f"{line}  [{_clock(elapsed)} elapsed, ETA {_clock(eta)}]", file=self.stream,
                  flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


# --- the sweep -----------------------------------------------------------------------------


@dataclass
class RunOutcome:
    path: Path
    records: list[R.PointRecord] = field(default_factory=list)  # written this run
    previous: list[R.PointRecord] = field(default_factory=list)  # already in the file
    interrupted: bool = False

    @property
    def counts(self) -> Counter:
        return Counter(r.status for r in [*self.previous, *self.records])


def measure_roofs_in_worker(points: Iterable[Point], *, timeout_s: float = 600.0,
                            log: Callable[[str], None] = print) -> dict[str, Any]:
    """Measure GEMM and bandwidth roofs for the suite's devices and precisions in a worker,
    so the runner itself never initialises a GPU (and never holds its memory)."""
    by_kind: dict[str, set[str]] = {}
    for p in points:
        if p.precision in ROOF_DTYPES:
            by_kind.setdefault(device_kind(p.device), set()).add(ROOF_DTYPES[p.precision])
    roofs: dict[str, Any] = {}
    for kind, dtypes in sorted(by_kind.items()):
        framework = "jax" if kind == "tpu" else "torch"
        log(f"measuring {kind} roofs ({', '.join(sorted(dtypes))}) with {framework} ...")
        worker = None
        try:
            worker = Worker(framework)
            reply = worker.request({"cmd": "roofs", "devices": [kind], "dtypes": sorted(dtypes)},
                                   timeout_s)
            roofs.update(reply["roofs"])
        except (WorkerDied, WorkerTimeout) as e:
            log(f"roofs for {kind} could not be measured ({e}); utilisation will be null")
        finally:
            if worker is not None:
                worker.close()
    return roofs


def find_latest(out_dir: Path, machine_id: str, suite_name: str) -> Path:
    """The newest results file of this machine for `suite_name` (for a bare --resume)."""
    candidates = sorted((out_dir / machine_id).glob("*.jsonl"), reverse=True)
    for path in candidates:
        try:
            if R.load(path).header.suite == suite_name:
                return path
        except InputError:
            continue
    raise InputError(f"nothing to resume: no results file for suite {suite_name!r} under "
                     f"{out_dir / machine_id}; run without --resume or pass the file")


def run_suite(suite: Suite, *, out_dir: Path, env: dict[str, Any],
              resume: Path | None = None, roofs: dict[str, Any] | None = None,
              progress: Progress | None = None,
              log: Callable[[str], None] = lambda s: print(s, file=sys.stderr, flush=True),
              ) -> RunOutcome:
    """Run every point of `suite` that has no record yet; return what was written."""
    if resume is not None:
        writer = R.ResultsWriter.open_append(resume)
        header = writer.header
        roofs = header.roofs
    else:
        machine = env["machine_id"]
        check_writable(out_dir / R.safe_name(machine))
        if roofs is None:
            roofs = measure_roofs_in_worker(suite.points, log=log)
        header = R.RunHeader(run_id=R.make_run_id(), suite=suite.name, started_at=R.iso_utc(),
                             env=env, roofs=roofs,
                             extra={"measure": suite.measure.__dict__,
                                    "suite_path": str(suite.path or ""),
                                    "n_points": len(suite.points)})
        writer = R.ResultsWriter.create(out_dir, machine, header.run_id, header)
    previous = list(writer.records)
    done = {r.id for r in previous}
    ooms = [Point.from_dict(r.point) for r in previous if r.status == "oom"]
    todo = [p for p in suite.points if p.id not in done]
    outcome = RunOutcome(writer.path, previous=previous)
    progress = progress or Progress(len(todo))
    log(f"{len(todo)} points to run ({len(done)} already recorded) -> {writer.path}")

    def record(point: Point, status: str, reason: str | None = None,
               reply: dict[str, Any] | None = None) -> None:
        reply = reply or {}
        metrics = reply.get("metrics") or {}
        if status == "ok":
            add_utilization(metrics, point, roofs or {}, env)
        else:  # the analytic cost is known for every point, whatever happened to it
            metrics = {**analytic_cost(point), **metrics}
        rec = R.PointRecord.for_point(point.to_dict(), status, reason or reply.get("reason"),
                                      metrics, reply.get("samples_ms") or [],
                                      **{k: v for k, v in (reply.get("extra") or {}).items()
                                         if v is not None})
        writer.write(rec)
        outcome.records.append(rec)
        progress.finished(rec, point)

    worker: Worker | None = None
    try:
        for (framework, device), points in suite.groups():
            for point in (p for p in points if p.id not in done):
                progress.starting(point)
                if suite.skip_after_oom and any(point.dominated_by(o) for o in ooms):
                    record(point, "skipped-after-oom", "a point of the same line with no more "
                           "parameters and no larger batch ran out of memory")
                    continue
                est, cap = analytic_cost(point)["est_mem_bytes"], device_capacity_bytes(device,
                                                                                         env)
                if cap and est > cap:
                    record(point, "infeasible", f"analytic memory estimate {human(est, 'B')} "
                           f"exceeds {device}'s {human(cap, 'B')} (an estimate; not run)")
                    continue
                try:
                    if worker is None:
                        worker = Worker(framework)
                    reply = worker.request({"cmd": "run", "point": point.to_dict(),
                                            "measure": suite.measure.__dict__},
                                           suite.measure.timeout_s)
                except WorkerTimeout:
                    worker.kill() if worker else None
                    worker = None
                    record(point, "timeout", f"no result within the point's limit of "
                           f"{suite.measure.timeout_s:g} s (measure.timeout_s); worker killed")
                    continue
                except WorkerDied as e:
                    worker = None
                    tail = e.stderr_tail[-STDERR_TAIL_CHARS:]
                    record(point, "crashed", f"worker {e}" + (f"; stderr: {tail}" if tail else ""),
                           {"extra": {"exit_status": e.returncode}})
                    continue
                record(point, reply["status"], reply=reply)
                if reply["status"] == "oom":
                    ooms.append(point)
            if worker is not None:
                worker.close()
                worker = None
    except KeyboardInterrupt:
        outcome.interrupted = True
    finally:
        if worker is not None:
            worker.kill()
        writer.close()
        progress.close()
    return outcome


def check_writable(directory: Path) -> None:
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=directory):
            pass
    except OSError as e:
        raise InputError(f"cannot write results to {directory} ({e.strerror or e}): "
                         "pass a writable directory with --out") from None


# --- the closing table -----------------------------------------------------------------------


def summary_table(records: list[R.PointRecord]) -> str:
    """Status counts, then one row per point: the figures a person looks at first."""
    counts = Counter(r.status for r in records)
    lines = ["status: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))]
    header = (f"{'status':<17s} {'point':<58s} {'ms/step':>9s} {'samples/s':>10s} "
              f"{'FLOP/s':>9s} {'util':>6s} {'peak mem':>9s}")
    lines += [header, "-" * len(header)]
    for r in records:
        p = Point.from_dict(r.point)
        m = r.metrics
        if r.ok:
            util = f"{m['utilization']:.0%}" if m.get("utilization") is not None else "-"
            mem = m.get("peak_device_mem_bytes") or m.get("peak_host_rss_bytes")
            lines.append(f"{r.status:<17s} {p.label():<58s} {m['step_ms']['median']:>9.2f} "
                         f"{m['samples_per_s']:>10,.0f} {human(m['achieved_flops_per_s']):>9s} "
                         f"{util:>6s} {human(mem, 'B') if mem else '-':>9s}")
        else:
            lines.append(f"{r.status:<17s} {p.label():<58s} {(r.reason or '')[:60]}")
    lines.append("ms/step: median; FLOP/s: analytic FLOPs / median step time; util: against "
                 "the measured GEMM roof; peak mem: device counter, else host RSS")
    return "\n".join(lines)
