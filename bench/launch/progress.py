"""What a running suite shows: a progress line (or bar) per finished point, and the summary
table at the end."""

from __future__ import annotations

import sys
import time
from collections import Counter

from bench import results as R
from bench.point import Point
from bench.scenarios.compiled import RECOMPILED
from recmodels.config import human, human_bytes


def _clock(seconds: float) -> str:
    m, s = divmod(int(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def _num(value: object) -> float | None:
    """A metric as a number, or None (null, absent): a record may lack any metric."""
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) \
        else None


def _step(m: dict) -> tuple[float | None, float | None]:
    """(median ms, samples) of ``metrics["step_ms"]``; None for what the record does not hold."""
    step = m.get("step_ms")
    step = step if isinstance(step, dict) else {}
    return _num(step.get("median")), _num(step.get("n"))


def status_text(rec: R.PointRecord) -> str:
    """``ok``, or ``ok (unstable)`` when the record carries the unstable flag."""
    return f"{rec.status} (unstable)" if "unstable" in rec.flags else rec.status


def compile_text(rec: R.PointRecord) -> str:
    """``"  recompiled 3 times during timing"`` for a point whose timed steps recompiled
    (record flag ``recompiled``), and the record's compile note (e.g. no CUDA graphs on a
    CPU), each after two spaces; "" when there is neither."""
    note = (rec.metrics or {}).get("compile_note")
    parts = [rec.flags[RECOMPILED]] if RECOMPILED in rec.flags else []
    return "".join(f"  {p}" for p in (*parts, *([note] if note else [])))


def describe_record(rec: R.PointRecord) -> str:
    if rec.status != "ok":
        return rec.reason or ""
    m = rec.metrics
    unstable = f"  unstable: {rec.flags['unstable']}" if "unstable" in rec.flags else ""
    scale = ""
    if m.get("scaling_efficiency") is not None and m.get("speedup") is not None:
        scale += f"  speedup {m['speedup']:.2f}x, efficiency {m['scaling_efficiency']:.0%}"
        if m.get("scaling_note"):
            scale += f" ({m['scaling_note']})"
    if m.get("comm_share") is not None:  # at one rank: the distributed machinery alone
        what = "communication" if (m.get("ranks") or 1) > 1 else "distributed overhead"
        scale += f"  {what} ~{m['comm_share']:.0%} of the step (estimate)"
    median, n = _step(m)
    rate, flops = _num(m.get("samples_per_s")), _num(m.get("achieved_flops_per_s"))
    text = "no step time" if median is None else (
        f"{median:.2f} ms/step (median" + (f" of {n:.0f})" if n is not None else ")"))
    if rate is not None:
        text += f"  {rate:,.0f} samples/s"
    if flops is not None:
        text += f"  {human(flops, 'FLOP/s')} (analytic FLOPs / median)"
    return f"{text}{scale}{unstable}{compile_text(rec)}"


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
        self._line(status_text(rec), point, describe_record(rec))

    def elsewhere(self, point: Point, why: str) -> None:
        """A point this process took part in but another wrote (node 0 of a multi-node run)."""
        self._line("elsewhere", point, why)

    def _line(self, status: str, point: Point, text: str) -> None:
        self.done += 1
        elapsed = time.monotonic() - self.start
        eta = elapsed / self.done * (self.total - self.done)
        line = (f"[{self.done:>{len(str(self.total))}}/{self.total}] {status:<17s} "
                f"{point.label()}  {text}")
        if self.bar is not None:
            self.bar.write(line)
            self.bar.update(1)
        else:
            print(f"{line}  [{_clock(elapsed)} elapsed, ETA {_clock(eta)}]", file=self.stream,
                  flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def summary_table(records: list[R.PointRecord], end: R.RunEnd | None = None) -> str:
    """Status counts, then one row per point: the figures a person looks at first; then why
    points are ``unstable``, and the run's end (``end``: roof drift, conditions) when given."""
    counts = Counter(r.status for r in records)
    n_unstable = sum("unstable" in r.flags for r in records)
    lines = ["status: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))
             + (f" ({n_unstable} flagged unstable)" if n_unstable else "")]
    header = (f"{'status':<17s} {'point':<58s} {'ms/step':>9s} {'samples/s':>10s} "
              f"{'FLOP/s':>9s} {'util':>6s} {'peak mem':>9s}")
    lines += [header, "-" * len(header)]
    for r in records:
        p = Point.from_dict(r.point)
        m = r.metrics
        if r.ok:
            util = f"{m['utilization']:.0%}" if m.get("utilization") is not None else "-"
            mem = m.get("peak_device_mem_bytes") or m.get("peak_host_rss_bytes")
            median, _ = _step(m)
            rate, flops = _num(m.get("samples_per_s")), _num(m.get("achieved_flops_per_s"))
            lines.append(f"{status_text(r):<17s} {p.label():<58s} "
                         f"{'-' if median is None else f'{median:.2f}':>9s} "
                         f"{'-' if rate is None else f'{rate:,.0f}':>10s} "
                         f"{'-' if flops is None else human(flops):>9s} "
                         f"{util:>6s} {human_bytes(mem) if mem else '-':>9s}")
        else:
            lines.append(f"{r.status:<17s} {p.label():<58s} {(r.reason or '')[:60]}")
    lines.append("ms/step: median; FLOP/s: analytic FLOPs / median step time; util: against "
                 "the measured GEMM roof; peak mem: device counter, else host RSS")
    for r in records:
        if "unstable" in r.flags:
            lines.append(f"unstable: {Point.from_dict(r.point).label()}: {r.flags['unstable']}")
        if RECOMPILED in r.flags:
            lines.append(f"recompiled: {Point.from_dict(r.point).label()}: "
                         f"{r.flags[RECOMPILED]} (a step that recompiles is a bug)")
    if end is not None:
        lines += [f"{name}: {why}" for name, why in end.flags.items()]
        c = end.conditions
        if c:
            top = ", ".join(f"{p['name']} {p['cpu_cores']:.2f}" for p in c.get("busiest") or [])
            lines.append(f"at the end: load average {c.get('load_avg')}, other processes "
                         f"{c.get('others_cpu_cores')} cores" + (f" ({top})" if top else ""))
    return "\n".join(lines)
