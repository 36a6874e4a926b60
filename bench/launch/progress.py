"""What a running suite shows: a progress line (or bar) per finished point, and the summary
table at the end."""

from __future__ import annotations

import sys
import time
from collections import Counter

from bench import results as R
from bench.point import Point
from recmodels.config import human


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
            f"{human(m['achieved_flops_per_s'], 'FLOP/s')} (analytic FLOPs / median)")


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
