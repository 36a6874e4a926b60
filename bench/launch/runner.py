"""Runs a suite: worker processes, isolation, faults as results, resume.

Each point runs in a worker process of its own (bench/launch/worker.py; suite ``[runner]
isolation = "point"``), so its memory figures do not depend on the points before it; with
``isolation = "group"`` one worker serves a (framework, device) group and imports are paid
once. Workers run inside a memory cgroup with a cap where one can be made
(bench/launch/memcap.py; ``runner.mem_cap``), so a point that outgrows host memory is an
``oom`` record, not the kernel killing some other process. What can go wrong with a point is
recorded as its status and the sweep goes on:
  infeasible         the analytic memory estimate exceeds the device's memory: not run
  skipped-after-oom  a smaller point of the same line ran out of memory (Point.dominated_by)
  unsupported        the precision/device/framework combination cannot run (with the reason)
  oom                the framework raised out-of-memory (the worker freed memory and went
                     on), or the kernel ended the worker at the host-memory cap
  timeout            the point ran past measure.timeout_s; its worker was killed
  crashed            the worker died (signal or exit), the reason holds the tail of stderr
  error              any other exception in the point, with its message
Every record is appended and fsync'ed as soon as its point ends, so Ctrl-C (or a kill of the
runner) loses nothing finished, and `--resume` runs only the points with no record.

Conditions (bench/machine/conditions.py): sampled at the start (the header's ``conditions``)
and, when the sweep is done, at the end with the roofs measured again (a ``run-end`` line;
a roof that moved more than 10% is flagged there). Each point runs inside a PointWindow; a
point whose spread or window says it was disturbed gets ``flags["unstable"]`` (status stays
ok) and every measured point keeps its window as ``conditions``.
"""

from __future__ import annotations

import contextlib
import shlex
import sys
import tempfile
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from bench import results as R
from bench.launch.channel import (
    STDERR_TAIL_CHARS,
    Worker,
    WorkerDied,
    WorkerTimeout,
)
from bench.launch.derived import add_scaling, add_utilization
from bench.launch.dist import measure_interconnect
from bench.launch.locks import results_lock
from bench.launch.memcap import MemoryCap, host_oom_killed, make_memory_cap
from bench.launch.progress import Progress
from bench.launch.serve_runs import run_serve_specs
from bench.launch.signals import exit_code
from bench.machine import conditions as C
from bench.machine.hardware import device_capacity_bytes, devices_spanned
from bench.machine.roofs import ROOF_DTYPES
from bench.point import Point, device_kind
from bench.scenarios.compiled import recompile_flag
from bench.scenarios.step import analytic_cost, probe_key
from bench.suites.suite import Suite
from recmodels.config import human_bytes
from recmodels.errors import InputError

CONDITIONS_WINDOW_S = 0.5  # how long the run's start and end conditions are watched


# --- the sweep -----------------------------------------------------------------------------


@dataclass
class RunOutcome:
    path: Path
    records: list[R.PointRecord] = field(default_factory=list)  # written this run
    previous: list[R.PointRecord] = field(default_factory=list)  # already in the file
    interrupted: bool = False
    exit_code: int = 0  # when interrupted: 128 + the signal (130 Ctrl-C, 143 SIGTERM, 129 SIGHUP)
    end: R.RunEnd | None = None  # the run-end line written (None when interrupted)
    serve: list[R.ServeRecord] = field(default_factory=list)  # [[serve]] records, this run
    elsewhere: int = 0  # multi-node points this node ran and node 0 wrote

    @property
    def counts(self) -> Counter:
        return Counter(r.status for r in [*self.previous, *self.records, *self.serve])


def measure_roofs_in_worker(points: Iterable[Point], *, timeout_s: float = 600.0,
                            log: Callable[[str], None] = print) -> dict[str, Any]:
    """Measure GEMM and bandwidth roofs for the suite's devices and precisions in a worker,
    so the runner itself never initialises a GPU (and never holds its memory).

    Each roof is measured with every framework the suite runs on that device and is the best
    of them (``by_framework`` keeps each): a device's roof is what its best GEMM reaches. On
    this 2-core VM XLA's fp32 GEMM ran ~2x torch's, and a torch-only roof put JAX points at
    154% utilisation."""
    by_kind: dict[str, tuple[set[str], set[str]]] = {}
    for p in points:
        if p.precision in ROOF_DTYPES:
            dtypes, frameworks = by_kind.setdefault(device_kind(p.device), (set(), set()))
            dtypes.add(ROOF_DTYPES[p.precision])
            frameworks.add(p.framework)
    roofs: dict[str, Any] = {}
    for kind, (dtypes, frameworks) in sorted(by_kind.items()):
        # torch cannot drive a TPU (no torch_xla here): JAX measures it alone
        fws = ["jax"] if kind == "tpu" else sorted(frameworks)
        log(f"measuring {kind} roofs ({', '.join(sorted(dtypes))}) with {', '.join(fws)} ...")
        worker = None
        try:
            worker = Worker("torch" if "torch" in fws else "jax")  # it imports the other
            reply = worker.request({"cmd": "roofs", "devices": [kind], "dtypes": sorted(dtypes),
                                    "frameworks": fws}, timeout_s)
            roofs.update(reply["roofs"])
        except (WorkerDied, WorkerTimeout) as e:
            if worker is not None:
                worker.kill()  # a hung worker would keep close() waiting its 30 s
            log(f"roofs for {kind} could not be measured ({e}); utilisation will be null")
        finally:
            if worker is not None:
                worker.close()
    return roofs


def find_latest(out_dir: Path, machine_id: str, suite_name: str) -> Path:
    """The newest results file of this machine for `suite_name` (for a bare --resume).

    Files whose header cannot be read (empty, not ours, a newer schema) are passed over; the
    newest file of the suite is chosen on its header alone, so a bad line in it is reported
    when it is opened (with its line) instead of an older run being resumed in its place."""
    directory = out_dir / R.safe_name(machine_id, "machine id")  # where ResultsWriter writes
    candidates = sorted(directory.glob("*.jsonl"), reverse=True)
    for path in candidates:
        try:
            if R.read_header(path).suite == suite_name:
                return path
        except InputError:
            continue
    raise InputError(f"nothing to resume: no results file for suite {suite_name!r} under "
                     f"{directory}; run without --resume or pass the file")


def run_suite(suite: Suite, *, out_dir: Path, env: dict[str, Any],
              resume: Path | None = None, roofs: dict[str, Any] | None = None,
              progress: Progress | None = None,
              log: Callable[[str], None] = lambda s: print(s, file=sys.stderr, flush=True),
              ) -> RunOutcome:
    """Run every point of `suite` that has no record yet; return what was written.

    Holds the results file's lock while it writes (bench/launch/locks.py: a second writer of
    the same file gets InUse) and the run's memory cgroup while workers live. A write that
    fails (disk full, file size limit) raises ResultsWriteError after the workers are gone.
    """
    with contextlib.ExitStack() as held:
        writer = None
        if resume is not None:
            held.enter_context(results_lock(Path(resume)))
            # Read and checked before anything else (a memory cap, a roof, a point): a file
            # that cannot be resumed, or a line in it no reader can use, is refused up front.
            writer = R.ResultsWriter.open_append(resume, check=resumable_by(suite, env))
            held.callback(writer.close)
        memcap, memcap_info = make_memory_cap(suite.mem_cap, log)
        if memcap is not None:
            held.callback(memcap.close)
        return _run_suite(suite, out_dir=out_dir, env=env, resume=writer, roofs=roofs,
                          progress=progress, log=log, held=held, memcap=memcap,
                          memcap_info=memcap_info)


def _run_suite(suite: Suite, *, out_dir: Path, env: dict[str, Any],
               resume: R.ResultsWriter | None, roofs: dict[str, Any] | None,
               progress: Progress | None, log: Callable[[str], None],
               held: contextlib.ExitStack, memcap: MemoryCap | None,
               memcap_info: dict[str, Any]) -> RunOutcome:
    if resume is not None:
        writer = resume
        header = writer.header
        roofs = header.roofs
        remeasure = bool(roofs)  # the end's roofs against the header's
    else:
        machine = env["machine_id"]
        check_writable(out_dir / R.safe_name(machine))
        start_conditions = C.sample_conditions(CONDITIONS_WINDOW_S)  # before roofs load it
        remeasure = roofs is None  # roofs given by the caller are not re-measured
        if roofs is None:
            roofs = measure_roofs_in_worker(suite.points, log=log)
            interconnect = measure_interconnect(suite.points, env, log=log)
        else:
            interconnect = {}
        header = R.RunHeader(run_id=R.make_run_id(), suite=suite.name, started_at=R.iso_utc(),
                             env=env, roofs=roofs,
                             extra={"measure": suite.measure.__dict__,
                                    "included": suite.included(),
                                    "suite_path": str(suite.path.resolve() if suite.path
                                                      else ""),
                                    "n_points": len(suite.points),
                                    "isolation": suite.isolation,
                                    "mem_cap": memcap_info,
                                    "interconnect": interconnect,
                                    "conditions": start_conditions})
        writer = R.ResultsWriter.create(out_dir, machine, header.run_id, header)
        held.enter_context(results_lock(writer.path))
    previous = list(writer.records)
    done = {r.id for r in previous}
    ooms = [Point.from_dict(r.point) for r in previous if r.status == "oom"]
    throughput = {r.id: (r.metrics or {}).get("samples_per_s") for r in previous
                  if r.status == "ok"}  # scaling efficiency's baselines
    shaky = {r.id for r in previous if r.status == "ok" and "unstable" in r.flags}
    unrunnable: dict[tuple[str, ...], str] = {}  # probe_key -> why that kind of step fails
    todo = [p for p in suite.points if p.id not in done]
    outcome = RunOutcome(writer.path, previous=previous)
    progress = progress or Progress(len(todo))
    stale = len(done - {p.id for p in suite.points})  # e.g. resumed with other --set values
    log(f"suite {suite.name!r}: {len(todo)} points to run "
        f"({len(suite.points) - len(todo)} already recorded"
        + (f"; {stale} recorded points are not in the suite now and stay as they are"
           if stale else "") + f") -> {writer.path}")

    def record(point: Point, status: str, reason: str | None = None,
               reply: dict[str, Any] | None = None, window: dict[str, Any] | None = None) -> None:
        reply = reply or {}
        metrics = reply.get("metrics") or {}
        flags = {}
        if status == "ok":
            add_utilization(metrics, point, roofs or {}, env)
            add_scaling(metrics, point, throughput, shaky)
            unstable = C.unstable_reason((metrics.get("step_ms") or {}).get("cv"), window)
            flags = {"unstable": unstable} if unstable else {}
            flags |= recompile_flag(metrics)  # a step that recompiled while timed: a bug
            throughput[point.id] = metrics.get("samples_per_s")
            if unstable:
                shaky.add(point.id)
        else:  # the analytic cost is known for every point, whatever happened to it
            metrics = {**analytic_cost(point), **metrics}
        extra = {k: v for k, v in (reply.get("extra") or {}).items() if v is not None}
        if window is not None:
            extra["conditions"] = window
        rec = R.PointRecord.for_point(point.to_dict(), status, reason or reply.get("reason"),
                                      metrics, reply.get("samples_ms") or [], flags, **extra)
        writer.write(rec)
        outcome.records.append(rec)
        progress.finished(rec, point)

    worker: Worker | None = None
    try:
        for (framework, device), points in suite.groups():
            for point in (p for p in points if p.id not in done):
                progress.starting(point)
                if probe_key(point) in unrunnable:  # a probe showed its kind of step fails here
                    record(point, "unsupported", unrunnable[probe_key(point)])
                    continue
                if suite.skip_after_oom and any(point.dominated_by(o) for o in ooms):
                    record(point, "skipped-after-oom", "a point of the same line with no more "
                           "parameters and no larger batch ran out of memory")
                    continue
                # KIND:all: each device holds B / n (a distributed point's estimate is per rank)
                n = 1 if point.distributed else devices_spanned(device, env)
                one = point if n == 1 else replace(point, batch_size=max(1, point.batch_size // n))
                est, cap = analytic_cost(one)["est_mem_bytes"], device_capacity_bytes(device, env)
                if memcap is not None and device_kind(device) == "cpu":  # the workers' RAM
                    cap = min(cap, memcap.limit_bytes) if cap else memcap.limit_bytes
                from recmodels.memory import error_band, exceeds_capacity

                # Infeasible only when even the low end of the estimate's stated error band is
                # over capacity; a point inside the band runs, and its OOM is measured.
                if exceeds_capacity(est, cap):
                    where = (f"exceeds {device}'s {human_bytes(cap)}" if n == 1 else
                             f"per device exceeds the {human_bytes(cap)} of each of {device}'s "
                             f"{n} devices")
                    record(point, "infeasible", f"analytic memory estimate {human_bytes(est)} "
                           f"(at least {human_bytes(error_band(est)[0])} within its stated "
                           f"error) {where} (an estimate; not run)")
                    continue
                measure = suite.measure_for(point)  # an included point: its own file's
                # before the worker starts: the cap can end it while it imports its framework
                kills_before = memcap.oom_kills() if memcap else None
                try:
                    if worker is None:
                        worker = Worker(framework, cap=memcap)
                    proc = getattr(worker, "proc", None)  # (test doubles have none)
                    window = C.PointWindow(exclude=[proc.pid if proc else None])
                    reply = worker.request({"cmd": "run", "point": point.to_dict(),
                                            "measure": measure.__dict__}, measure.timeout_s)
                except WorkerTimeout:
                    worker.kill() if worker else None
                    worker = None
                    record(point, "timeout", f"no result within the point's limit of "
                           f"{measure.timeout_s:g} s (measure.timeout_s); worker killed")
                    continue
                except WorkerDied as e:
                    worker.kill() if worker else None  # reap it, close its stderr file
                    worker = None
                    if memcap and host_oom_killed(e.returncode, kills_before, memcap.oom_kills()):
                        record(point, "oom", memcap.oom_reason(),
                               {"extra": {"exit_status": e.returncode}})
                        ooms.append(point)
                        continue
                    tail = e.stderr_tail[-STDERR_TAIL_CHARS:]
                    reply = {"status": "crashed", "reason": f"worker {e}" + (
                        f"; stderr: {tail}" if tail else ""),
                        "extra": {"exit_status": e.returncode}}
                    status, reply = device_cannot(point, reply, memcap, unrunnable)
                    record(point, status, reply=reply)
                    continue
                if suite.isolation == "point":  # the next point gets a process of its own
                    worker.close()
                    worker = None
                if reply.get("status") == "remote":  # a multi-node point: node 0 records it
                    progress.elsewhere(point, reply["reason"])
                    outcome.elsewhere += 1
                    continue
                status, reply = device_cannot(point, reply, memcap, unrunnable)
                record(point, status, reply=reply, window=window.close())
                if reply["status"] == "oom":
                    ooms.append(point)
            if worker is not None:
                worker.close()
                worker = None
        run_serve_specs(suite, writer, outcome, memcap, log)
        # a resume that ran nothing adds no end
        if outcome.records or outcome.serve or resume is None:
            outcome.end = finish_run(writer, suite, header, remeasure, log)
    except KeyboardInterrupt as e:  # Ctrl-C, or SIGTERM/SIGHUP (bench/launch/signals.py)
        outcome.interrupted = True
        outcome.exit_code = exit_code(e)
    finally:
        if worker is not None:
            worker.kill()
        writer.close()
        progress.close()
    return outcome



def device_cannot(point: Point, reply: dict[str, Any], cap: MemoryCap | None,
                  unrunnable: dict[tuple[str, ...], str]) -> tuple[str, dict[str, Any]]:
    """(status, reply) for a point that ended ``error`` or ``crashed``: a tiny probe step of
    the same framework, block, precision and workload (bench.scenarios.step.probe) decides
    whether the device cannot run that kind of step at all (then ``unsupported``, with the
    probe's reason, and every later point of the kind is unsupported without running) or the
    failure is the point's own. Healthy points never pay for a probe."""
    if reply.get("status") not in ("error", "crashed") or point.distributed:
        return reply["status"], reply  # a distributed point's failure names its rank
    reason = probe_in_worker(point, cap)
    if reason is None:
        return reply["status"], reply
    unrunnable[probe_key(point)] = reason
    extra = {**(reply.get("extra") or {}), "point_failure": reply.get("reason")}
    return "unsupported", {**reply, "status": "unsupported", "reason": reason, "extra": extra}


def probe_in_worker(point: Point, cap: MemoryCap | None = None,
                    timeout_s: float = 300.0) -> str | None:
    """Run ``probe`` for ``point`` in a fresh worker: its reason, or None when the tiny step
    runs (or the probe could not say: a hang is no verdict)."""
    worker = None
    try:
        worker = Worker(point.framework, cap=cap)
        return worker.request({"cmd": "probe", "point": point.to_dict()}, timeout_s).get("reason")
    except WorkerDied as e:
        return (f"{point.framework} cannot run a {point.workload} step of {point.block} in "
                f"{point.precision} on {point.device}: a tiny probe step killed its worker too "
                f"({e})")
    except WorkerTimeout:
        return None
    finally:
        if worker is not None:
            worker.kill()


def finish_run(writer: R.ResultsWriter, suite: Suite, header: R.RunHeader, remeasure: bool,
               log: Callable[[str], None]) -> R.RunEnd:
    """Sample the end conditions, re-measure the roofs (``remeasure``), flag a drift beyond
    conditions.ROOF_DRIFT_LIMIT, and append the run-end line."""
    conditions = C.sample_conditions(CONDITIONS_WINDOW_S)
    roofs = measure_roofs_in_worker(suite.points, log=log) if remeasure else {}
    drift, flagged = C.roof_drift(header.roofs, roofs)
    flags = {"roof-drift": "; ".join(flagged)} if flagged else {}
    end = R.RunEnd(run_id=header.run_id, ended_at=R.iso_utc(), conditions=conditions,
                   roofs=roofs, roof_drift=drift, flags=flags)
    writer.write_end(end)
    for line in flagged:
        log(f"roof drift: {line}; utilisation figures of this run are uncertain")
    return end


# Measure fields that shape the samples; a different timeout_s changes no measurement.
_SAMPLING_FIELDS = ("warmup_iters", "min_time_s", "min_iters", "max_iters", "max_time_s")
# machine_id, then the fields of envinfo.fingerprint_key in its order
_ENV_FIELDS = ("machine", "cpu", "logical cores", "usable cores", "gpus", "tpu", "torch", "jax",
               "isa", "jaxlib")


def resumable_by(suite: Suite, env: dict[str, Any]) -> Callable[[R.ResultsFile], None]:
    """A check for ResultsWriter.open_append: the file must hold this suite, measured on this
    machine and software with the same sampling settings, or its records would be mixed with
    incomparable ones under a header that describes only the first run."""
    from bench.machine.envinfo import fingerprint_key

    def check(f: R.ResultsFile) -> None:
        h = f.header
        if h.suite != suite.name:
            # a suite file is named by its path (the header keeps it), a shipped one by name
            again = h.extra.get("suite_path") or h.suite
            raise InputError(f"{f.path} holds a run of suite {h.suite!r}, not {suite.name!r}: "
                             f"resume it with --suite {shlex.quote(str(again))} or start a new "
                             "run")
        then = (h.machine_id, *fingerprint_key(h.env))
        now = (env.get("machine_id"), *fingerprint_key(env))
        diff = [f"{name} {a!r} vs {b!r} now" for name, a, b in zip(_ENV_FIELDS, then, now)
                if a != b]
        if diff:
            raise InputError(f"{f.path} was recorded in another environment ("
                             + "; ".join(diff) + "): start a new run")
        isolation = h.extra.get("isolation", "group")  # files before the setting: "group"
        if isolation != suite.isolation:
            raise InputError(f"{f.path} was measured with runner.isolation = {isolation!r}, "
                             f"not {suite.isolation!r}: resume with --set runner.isolation="
                             f"{isolation} or start a new run")
        before = h.extra.get("measure")
        if isinstance(before, dict):
            current = suite.measure.__dict__
            diff = [f"measure.{k} {before[k]!r} -> {current[k]!r}" for k in _SAMPLING_FIELDS
                    if k in before and before[k] != current[k]]
            if diff:
                raise InputError(f"{f.path} was measured with other settings ("
                                 + ", ".join(diff) + "): resume with the same --set values "
                                 "or start a new run")

    return check


def check_writable(directory: Path) -> None:
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=directory):
            pass
    except OSError as e:
        raise InputError(f"cannot write results to {directory} ({e.strerror or e}): "
                         "pass a writable directory with --out") from None


# --- the closing table -----------------------------------------------------------------------
