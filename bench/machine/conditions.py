"""The conditions a run measures under: load average, CPU steal, the busiest other processes,
the CPU frequency governor; and the rule that flags a point ``unstable``.

Two samplers. :func:`sample_conditions` is the run's (at start, in the header's
``conditions``; at the end, in the ``run-end`` line): it watches a short window (0.5 s) for
steal and per-process CPU. :class:`PointWindow` is the point's: a snapshot before the point
and one after, so what it reports is what happened *during* the point, and it costs two
passes over the process table (tens of ms on a busy host), outside the timed region.

Processes are named by their executable name only (``psutil.Process.name()``): never a command
line, since result files are committed and shared. CPU shares are in cores (1.0 = one core
busy all the window). Everything that cannot be read is None, never a guess.

The ``unstable`` rule (:func:`unstable_reason`), any of:
- the step times' CV (std / mean) exceeds :data:`CV_LIMIT` (why 20%: see there);
- other processes used at least :data:`OTHERS_CORES_LIMIT` cores on average during the point:
  on the small machines this suite runs on (2 cores) that is a quarter of the machine taken
  from a step that uses every core, and a busy loop elsewhere (one core) always trips it;
- CPU steal was at least :data:`STEAL_LIMIT` of the CPU time during the point (a VM whose
  host gave the cores to someone else).
The load average is recorded before and after each point but not used by the rule: its
1-minute decay is slower than most points, and it counts the benchmark's own threads.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections import Counter
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

# The coefficient of variation above which a point's samples are called unstable. Chosen from
# the committed files (README "Results"): on the shared 2-core EPYC VM the CVs of the 112 ok
# points have median 5.6%, 90th percentile 19.7%, max 45% (11 points above 20%: the 5-sample
# base B=1 points and tiny torch points stalled by a neighbour); on the H200 median 1.8%, 90th
# percentile 9%, one point above 20% (a launch-bound tiny torch step at 35%). 20% thus marks
# the worst tenth of a noisy shared VM and almost nothing on a quiet machine: a spread a
# comparison at a 5% threshold cannot see through.
CV_LIMIT = 0.20
OTHERS_CORES_LIMIT = 0.5  # cores other processes used on average during a point
STEAL_LIMIT = 0.10  # fraction of CPU time stolen by the hypervisor during a point
ROOF_DRIFT_LIMIT = 0.10  # |end / start - 1| of a roof that flags the run
TOP_PROCESSES = 5  # how many of the busiest other processes are recorded

_STAT_FIELDS = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal")


# --- readings ----------------------------------------------------------------------------------


def load_average() -> list[float] | None:
    """The 1, 5 and 15-minute load averages (runnable tasks), or None where unknown."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def cpu_times(stat_path: str | os.PathLike[str] = "/proc/stat") -> dict[str, int] | None:
    """The aggregate ``cpu`` line of /proc/stat (clock ticks per field), or None."""
    try:
        with open(stat_path, encoding="ascii", errors="replace") as f:
            for line in f:
                parts = line.split()
                if parts and parts[0] == "cpu":
                    values = [int(v) for v in parts[1:1 + len(_STAT_FIELDS)]]
                    return dict(zip(_STAT_FIELDS, values))
    except (OSError, ValueError):
        return None
    return None


def steal_fraction(before: Mapping[str, int] | None, after: Mapping[str, int] | None,
                   ) -> float | None:
    """The fraction (0..1) of CPU time stolen between two :func:`cpu_times` readings."""
    if not before or not after:
        return None
    total = sum(after.get(k, 0) - before.get(k, 0) for k in _STAT_FIELDS)
    if total <= 0:
        return None
    return max(0.0, (after.get("steal", 0) - before.get("steal", 0)) / total)


def governors(cpu_dir: str | os.PathLike[str] = "/sys/devices/system/cpu") -> dict[str, int] | None:
    """Frequency governor -> number of CPUs using it (``{"performance": 2}``), or None."""
    found: Counter[str] = Counter()
    for path in Path(cpu_dir).glob("cpu[0-9]*/cpufreq/scaling_governor"):
        try:
            found[path.read_text().strip()] += 1
        except OSError:
            continue
    return dict(sorted(found.items())) or None


def _psutil() -> Any:
    try:
        import psutil
    except ImportError:
        return None
    return psutil


def process_times(exclude: Iterable[int] = ()) -> dict[int, tuple[str, float, float]] | None:
    """pid -> (process name, CPU seconds used so far, start time) of every other process;
    None without psutil. Names only: command lines are never read. The start time tells a
    reused pid from the same process (names change: a kworker's name follows its work)."""
    psutil = _psutil()
    if psutil is None:
        return None
    skip = set(exclude)
    out: dict[int, tuple[str, float]] = {}
    for proc in psutil.process_iter(["name", "cpu_times", "ppid", "create_time"]):
        info = proc.info
        times = info.get("cpu_times")
        if proc.pid in skip or times is None:
            continue
        name = str(info.get("name") or "?")
        if proc.pid == 2 or info.get("ppid") == 2:  # a Linux kernel thread (kthreadd's child)
            name = f"[{name}]"  # named as ps names them
        out[proc.pid] = (name, float(times.user + times.system),
                         float(info.get("create_time") or 0.0))
    return out


def busiest(before: Mapping[int, tuple[Any, ...]] | None,
            after: Mapping[int, tuple[Any, ...]] | None, wall_s: float,
            top: int = TOP_PROCESSES) -> tuple[float | None, list[dict[str, Any]]]:
    """CPU that other processes used between two :func:`process_times` snapshots.

    Returns (total cores, the ``top`` busiest as ``{"name", "cpu_cores"}``). A process that
    appeared in between counts all its CPU time (it started in the window). Kernel threads
    (``[kworker/...]``) are listed but not in the total: they mostly work for the measured
    process itself (reclaim, RCU frees, writeback of its files). Measured on this project's
    2-core VM (`make bench`, 112 points): the 44 points that kernel threads alone would have
    flagged ran at the same speed, relative to an earlier run, as the unflagged ones (median
    ratio 0.973 vs 0.966).
    """
    if before is None or after is None or wall_s <= 0:
        return None, []
    used = []
    for pid, now in after.items():
        name, cpu_s = now[0], now[1]
        start = before.get(pid)
        if start is not None and len(start) > 2 and len(now) > 2:
            same = start[2] == now[2]  # one process, even if it renamed itself
        else:
            same = start is not None and start[0] == name
        delta = cpu_s - (start[1] if same else 0.0)
        if delta > 0:
            used.append((delta / wall_s, name))
    used.sort(reverse=True)
    total = round(sum(c for c, n in used if not n.startswith("[")), 3)
    return total, [{"name": n, "cpu_cores": round(c, 3)} for c, n in used[:top] if c >= 0.005]


def own_pids(*roots: int | None) -> set[int]:
    """This process, and each root pid with its descendants (a worker and what it spawned)."""
    pids = {os.getpid()}
    psutil = _psutil()
    for pid in roots:
        if pid is None:
            continue
        pids.add(pid)
        if psutil is not None:
            with contextlib.suppress(psutil.Error):
                pids.update(c.pid for c in psutil.Process(pid).children(recursive=True))
    return pids


# --- the run's and the point's samplers ----------------------------------------------------------


def sample_conditions(window_s: float = 0.5, exclude: Iterable[int] = ()) -> dict[str, Any]:
    """The run's conditions now, watched over ``window_s`` seconds.

    Keys: ``at`` (Unix time, s), ``load_avg`` [1, 5, 15 min], ``steal`` (fraction of CPU time
    in the window), ``others_cpu_cores`` (cores other processes used in the window),
    ``busiest`` [{name, cpu_cores}], ``governors`` {governor: CPUs}.
    """
    skip = own_pids(*exclude)
    t0, stat0, procs0 = time.monotonic(), cpu_times(), process_times(skip)
    time.sleep(window_s)
    wall, stat1, procs1 = time.monotonic() - t0, cpu_times(), process_times(skip)
    total, top = busiest(procs0, procs1, wall)
    steal = steal_fraction(stat0, stat1)
    return {"at": round(time.time(), 3), "load_avg": load_average(),
            "steal": round(steal, 4) if steal is not None else None,
            "others_cpu_cores": total, "busiest": top, "governors": governors()}


class PointWindow:
    """What other processes and the hypervisor took while one point ran.

    ``PointWindow(exclude=[worker pid])`` snapshots at construction; :meth:`close` snapshots
    again and returns ``{"wall_s", "load_avg_before", "load_avg_after", "steal",
    "others_cpu_cores", "busiest"}`` (the point record's ``conditions``).
    """

    def __init__(self, exclude: Iterable[int] = ()) -> None:
        self._roots = list(exclude)
        self._skip = own_pids(*self._roots)
        self._load = load_average()
        self._stat = cpu_times()
        self._procs = process_times(self._skip)
        self._t0 = time.monotonic()

    def close(self) -> dict[str, Any]:
        wall = time.monotonic() - self._t0
        # a worker's children born during the point (a distributed point's ranks) are its own
        self._skip |= own_pids(*self._roots)
        total, top = busiest(self._procs, process_times(self._skip), wall)
        steal = steal_fraction(self._stat, cpu_times())
        return {"wall_s": round(wall, 3), "load_avg_before": self._load,
                "load_avg_after": load_average(),
                "steal": round(steal, 4) if steal is not None else None,
                "others_cpu_cores": total, "busiest": top}


# --- the rules -----------------------------------------------------------------------------------


def unstable_reason(cv: float | None, window: Mapping[str, Any] | None = None, *,
                    cv_limit: float = CV_LIMIT, others_limit: float = OTHERS_CORES_LIMIT,
                    steal_limit: float = STEAL_LIMIT) -> str | None:
    """Why a point is ``unstable`` (see the module docstring), or None when it is not.

    ``cv``: its step times' std / mean (None: fewer than 2 samples, no verdict from spread);
    ``window``: its :meth:`PointWindow.close` result.
    """
    why = []
    if cv is not None and cv > cv_limit:
        why.append(f"step time CV {cv:.0%} > {cv_limit:.0%}")
    w = window or {}
    others = w.get("others_cpu_cores")
    if others is not None and others >= others_limit:
        top = ", ".join(f"{p['name']} {p['cpu_cores']:.2f}" for p in w.get("busiest") or []
                        if not p["name"].startswith("["))
        why.append(f"other processes used {others:.2f} cores during the point (>= "
                   f"{others_limit:g})" + (f": {top}" if top else ""))
    steal = w.get("steal")
    if steal is not None and steal >= steal_limit:
        why.append(f"CPU steal {steal:.0%} during the point (>= {steal_limit:.0%})")
    return "; ".join(why) or None


def roof_drift(start: Mapping[str, Any], end: Mapping[str, Any],
               limit: float = ROOF_DRIFT_LIMIT) -> tuple[dict[str, dict[str, float]], list[str]]:
    """Relative change (end / start - 1) of every roof measured both times, and a line for
    each beyond ``limit`` (``cpu/fp32 GEMM -14% (> 10%)``)."""
    drift: dict[str, dict[str, float]] = {}
    flagged = []
    for key in sorted(set(start) & set(end)):
        a, b = start.get(key) or {}, end.get(key) or {}
        for metric, what in (("gemm_flops_per_s", "GEMM"), ("mem_bytes_per_s", "bandwidth")):
            x, y = a.get(metric), b.get(metric)
            if isinstance(x, (int, float)) and isinstance(y, (int, float)) and x > 0:
                change = y / x - 1
                drift.setdefault(key, {})[metric] = round(change, 4)
                if abs(change) > limit:
                    flagged.append(f"{key} {what} {change:+.0%} since the run started "
                                   f"(> {limit:.0%})")
    return drift, flagged
