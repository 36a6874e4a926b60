"""Measuring one point, in-process (`measure_point`) or in a worker process (`main`).

The runner starts `python -m bench.launch.worker FRAMEWORK` for each point (``isolation =
"point"``, the default: nothing an earlier point left in the process, such as heap the allocator
keeps resident, reaches this point's memory figures) or once per (framework, device) group
(``"group"``: imports paid once, memory figures order-dependent), and talks to it in JSON lines:
  -> {"cmd": "run", "point": {...}, "measure": {...}}   <- {"status", "reason", "metrics", ...}
  -> {"cmd": "roofs", "devices": [...], "dtypes": [...], "frameworks": [...]}
                                                         <- {"roofs": {...}}
  -> {"cmd": "probe", "point": {...}}                    <- {"reason": str | None}
  -> {"cmd": "serve", "spec": {...}, "log_root": str}    <- {"status", "reason", "point", "metrics"}
  -> {"cmd": "exit"}
Replies go to the original stdout; anything else the process prints (framework logs, stray
prints, C libraries) is sent to stderr, which the runner keeps for crash reports. A device
OOM becomes an `oom` reply and the worker frees what it can and carries on; a crash or a hang
is the runner's to detect.

RECBENCH_FAULT injects faults for the harness's own tests: a comma list of MATCH=KIND, where
MATCH is a substring of a point's label or id and KIND is one of sigkill, segfault, hang,
oom, error (the worker then fails on that point the way the named fault would).
"""

from __future__ import annotations

import gc
import json
import os
import signal
import sys
import time
import traceback
from dataclasses import dataclass
from typing import Any

from bench import meters
from bench.point import Measure, Point

FAULT_ENV = "RECBENCH_FAULT"
OOM_MARKERS = ("RESOURCE_EXHAUSTED", "out of memory", "Out of memory", "can't allocate memory")


def is_oom(exc: BaseException) -> bool:
    """torch.OutOfMemoryError, a MemoryError, or an XLA RESOURCE_EXHAUSTED error."""
    if isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError":
        return True
    return any(m in str(exc) for m in OOM_MARKERS)


def _fault_for(point: Point) -> str | None:
    for rule in filter(None, os.environ.get(FAULT_ENV, "").split(",")):
        match, _, kind = rule.rpartition("=")
        if match and (match in point.label() or match == point.id):
            return kind
    return None


def _inject(kind: str, step):
    """Make the point fail like `kind` would; the OOM and error faults fire inside the step,
    so the worker's own recovery path is what gets tested."""
    if kind == "sigkill":
        os.kill(os.getpid(), signal.SIGKILL)
    if kind == "segfault":
        import ctypes

        ctypes.string_at(0)  # reads address 0: SIGSEGV
    if kind == "hang":
        while True:
            time.sleep(3600)

    def faulty():
        step()
        if kind == "oom":
            raise MemoryError("RESOURCE_EXHAUSTED: injected out of memory (RECBENCH_FAULT)")
        raise RuntimeError("injected error (RECBENCH_FAULT)")

    return faulty


def _free_device_memory(framework: str) -> None:
    gc.collect()
    if framework == "torch" and "torch" in sys.modules:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def _short_error(exc: BaseException) -> str:
    lines = [s for s in str(exc).strip().splitlines() if s.strip()]
    text = lines[0] if lines else ""
    return f"{type(exc).__name__}: {text}"[:500]


def thread_settings(framework: str) -> dict[str, Any]:
    """The threads a point runs with: ``threads`` {torch intra- and inter-op threads (torch
    points), OMP_NUM_THREADS, MKL_NUM_THREADS, XLA_FLAGS (jax points): the variable's text or
    None when unset} and ``cpu_affinity`` (how many CPUs this process may run on, or None)."""
    threads: dict[str, Any] = {}
    if framework == "torch" and "torch" in sys.modules:
        import torch

        threads["torch"] = torch.get_num_threads()
        threads["torch_interop"] = torch.get_num_interop_threads()
    names = ["OMP_NUM_THREADS", "MKL_NUM_THREADS"] + (["XLA_FLAGS"] if framework == "jax" else [])
    threads.update({n: os.environ.get(n) for n in names})
    try:
        affinity: int | None = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not on Linux
        affinity = None
    return {"threads": threads, "cpu_affinity": affinity}


@dataclass
class ProcessMemory:
    """What the worker process holds before a point: ``baseline_rss_bytes``, its resident set
    once the framework is imported (reported apart from the point's peak), and ``fresh``,
    whether no point ran in it before (then the kernel's high-water mark is this point's)."""

    baseline_rss_bytes: int | None = None
    fresh: bool = False


def host_memory_metrics(sampled_peak: int | None, process: ProcessMemory) -> dict[str, Any]:
    """``peak_host_rss_bytes``: the process's peak while the point ran, the sampled peak
    raised to the kernel's exact high-water mark (VmHWM) where the process is the point's
    own; ``host_rss_baseline_bytes``: the framework's import alone; ``host_mem_scope``: how
    far the figure can be trusted ("fresh-process" or "shared-process": a process that ran
    other points before, whose freed-but-resident heap is inside this figure)."""
    peak = sampled_peak
    if process.fresh:
        hwm = meters.process_peak_rss_bytes()
        if hwm is not None:
            peak = hwm if peak is None else max(peak, hwm)
    return {"peak_host_rss_bytes": peak,
            "host_rss_baseline_bytes": process.baseline_rss_bytes,
            "host_mem_scope": "fresh-process" if process.fresh else "shared-process"}


def measure_point(point: Point, measure: Measure,
                  process: ProcessMemory | None = None) -> dict[str, Any]:
    """Build, warm up and time one point; never raises for the point's own failures.

    ``process`` describes the worker process (see ProcessMemory); in-process callers (tests,
    the pytest-benchmark front door) leave it None: a shared process."""
    from bench.point import device_kind
    from bench.scenarios.compiled import compile_metrics
    from bench.scenarios.step import DeviceCaps, Unsupported, build, support_reason

    if point.distributed:  # its ranks are torchrun's (bench/launch/dist.py)
        from bench.launch.dist import launch_point, ranks_reason

        reason = support_reason(point, DeviceCaps(device_kind(point.device),
                                                  count=point.world_size)) or ranks_reason(point)
        if reason:
            return {"status": "unsupported", "reason": reason}
        return launch_point(point, measure)
    workload = None
    try:
        with meters.HostMemoryMeter() as host:
            workload = build(point)
            fault = _fault_for(point)
            step = _inject(fault, workload.step) if fault else workload.step
            reset_peak, read_peak = workload.peak_fns
            # JAX cannot reset its peak counter: a reading is this point's own only when the
            # point raised the process's peak (else it is unknown, not someone else's).
            peak_before = read_peak() if (read_peak and not reset_peak) else None
            timer = meters.StepTimer()
            with meters.DeviceMemoryMeter(reset_peak, read_peak) as dev:
                warm = timer.warmup(step, workload.sync, warmup_iters=measure.warmup_iters)
                counts_warm = workload.compile_counts()  # what compiling built, before timing
                kind = device_kind(point.device)
                suffix = point.device.partition(":")[2]
                index = None if suffix == "all" else int(suffix or 0)  # None: every device
                sampled = timer.sample(step, workload.sync, min_time_s=measure.min_time_s,
                                       min_iters=measure.min_iters,
                                       max_iters=measure.max_iters,
                                       max_time_s=measure.max_time_s)
                counts_timed = workload.compile_counts()  # more graphs now: it recompiled
                # Energy has its own window after the timed samples: the step repeated for
                # >= 20 counter periods, aligned to counter updates (meters.EnergyWindow).
                energy = meters.measure_energy_window(
                    step, workload.sync, meters.default_energy_sources(kind, index))
            planned = workload.planned_mem_bytes()
            extra = workload.extra_metrics()  # e.g. generate's prefill_ms, decode_step_ms
            workload.check()  # a diverged train step (NaN loss) raises: status error
    except Unsupported as e:
        return {"status": "unsupported", "reason": str(e)}
    except Exception as e:
        status = "oom" if is_oom(e) else "error"
        reason = _short_error(e)
        detail = "".join(traceback.format_exception(e)[-6:]) if status == "error" else None
        traceback.clear_frames(e.__traceback__)
        del e
        return {"status": status, "reason": reason, "extra": {"traceback": detail}}
    finally:
        if workload is not None:
            workload.close()
        _free_device_memory(point.framework)

    peak_dev = dev.peak_bytes
    if peak_before is not None and (peak_dev is None or peak_dev <= peak_before):
        peak_dev = None
    summary = meters.summarize(sampled.samples_ms)
    median_s = summary["median"] / 1e3
    cost = workload.cost
    metrics = {
        "step_ms": summary,
        "samples_per_s": workload.samples_per_step / median_s,
        "tokens_per_s": workload.tokens_per_step / median_s,
        "compile_s": warm.compile_s,
        "warmup_s": warm.warmup_s,
        **compile_metrics(point, counts_warm, counts_timed),
        **cost,
        "achieved_flops_per_s": cost["flops_per_step"] / median_s,
        "achieved_bytes_per_s": cost["bytes_per_step"] / median_s,
        "peak_device_mem_bytes": peak_dev,
        "planned_device_mem_bytes": planned,
        **host_memory_metrics(host.peak_rss_bytes, process or ProcessMemory()),
        **meters.window_energy_metrics(energy, workload.samples_per_step),
        "stop_reason": sampled.stop_reason,
        **thread_settings(point.framework),
        **extra,
    }
    return {"status": "ok", "reason": None, "metrics": metrics, "samples_ms": sampled.samples_ms}


PARENT_ENV = "RECBENCH_PARENT_PID"  # set by the runner: the process this worker serves


def end_with_parent(parent_pid: int | None) -> None:
    """End this worker when its runner dies without warning (SIGKILL, OOM): a worker must
    never go on measuring with init as its parent. Linux: the kernel sends SIGKILL on the
    parent's death (prctl PR_SET_PDEATHSIG, man 2 prctl); elsewhere a daemon thread polls
    the parent pid once a second. A parent already gone ends the worker at once."""
    if parent_pid is None:
        return
    if sys.platform.startswith("linux"):
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_pdeathsig = 1
        if libc.prctl(pr_set_pdeathsig, int(signal.SIGKILL), 0, 0, 0) == 0:
            if os.getppid() != parent_pid:  # it died before the prctl took effect
                os._exit(1)
            return

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(1.0)
        os._exit(1)

    import threading

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parent = os.environ.get(PARENT_ENV)
    end_with_parent(int(parent) if parent and parent.isdigit() else None)
    framework = argv[0] if argv else "torch"
    replies = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # anything else printed to stdout lands in stderr
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the runner's to handle
    if framework == "jax":
        import jax  # noqa: F401  (pay the import before the first point's clock starts)

        from bench.scenarios.step import prepare_jax_process

        prepare_jax_process()  # before this process's first JAX computation (a probe, roofs)
    else:
        import torch  # noqa: F401
    process = ProcessMemory(baseline_rss_bytes=meters.current_rss_bytes(), fresh=True)
    replies.write(json.dumps({"event": "ready", "pid": os.getpid()}) + "\n")
    for line in sys.stdin:
        msg = json.loads(line)
        if msg["cmd"] == "exit":
            break
        if msg["cmd"] == "probe":  # {"point"} -> {"reason": why its kind of step cannot run}
            from bench.scenarios.step import probe

            reply = {"reason": probe(Point.from_dict(msg["point"]))}
            process.fresh = False
        elif msg["cmd"] == "serve":  # {"spec", "log_root"} -> {"status", "point", "metrics"}
            from bench.scenarios.serve import serve_in_worker

            reply = serve_in_worker(msg["spec"], msg["log_root"])
            process.fresh = False
        elif msg["cmd"] == "roofs":
            from bench.machine.roofs import measure_roofs

            frameworks = tuple(msg.get("frameworks") or (framework,))  # best of them
            reply = {"roofs": measure_roofs(msg["devices"], msg["dtypes"], frameworks)}
            process.fresh = False
        else:
            reply = measure_point(Point.from_dict(msg["point"]), Measure(**msg["measure"]),
                                  process)
            process.fresh = False  # every later point shares this process's history
        replies.write(json.dumps(reply, default=_json_default) + "\n")
    return 0


def _json_default(obj):
    import numpy as np

    if isinstance(obj, np.generic):
        return obj.item()
    return str(obj)


if __name__ == "__main__":
    sys.exit(main())
