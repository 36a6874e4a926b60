"""The scaffolding every recbench figure shares: series, colours, titles, legend, batch axis.

A *panel* is what one figure shows: the entries of one device kind, framework and workload
(``PANEL_OF``). Several sources (machines, or runs of one machine) on one panel share its axes
with one colour per source, and marker and line style tell the series of one source apart (the
same configuration keeps its marker on every machine); with a single source every series has
its own colour *and* its own marker (up to 13 series; past that the (colour, marker) pair stays
unique). A *series* is the points of one source whose fields differ only in batch size; its
legend names only the fields that vary.

A point the run flagged ``unstable`` (record.flags) is drawn with a hollow (white-filled)
marker, and the legend then says what hollow means. Hollow markers mean nothing else.

Error bars (gid "ci") are the 95% confidence interval of the median step time (record
``step_ms.ci_low``/``ci_high``, order statistics; null below 6 samples, so no bar there), on the
latency figure and, turned into samples/s, on the throughput figure.
"""

from __future__ import annotations

import textwrap
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator

from bench.analysis.plotdata import Entry, config_key, describe, group, machine_summary
from bench.analysis.plotdata import varying_fields as _varying
from bench.point import device_kind

DPI = 110
# Fixed within a panel, so never part of a series' name. The device stays in the series key
# (a panel holds one device kind, but cuda:0 and cuda:1 are two series).
FIXED = ("framework", "workload")
SERIES_DROP = (*FIXED, "batch_size")
_COLOURS = ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown",
            "tab:pink", "tab:gray", "tab:olive", "tab:cyan", "black", "gold", "navy", "lime",
            "maroon", "teal")
_STYLES = ("-", "--", "-.", ":")
# Filled markers only (a hollow one marks an unstable point); "X" and "^" are kept for the oom
# and infeasible markers of the memory figure.
_MARKERS = ("o", "s", "D", "v", "P", "*", "h", "<", ">", "p", "d", "8", "H")
CI_NOTE = "error bar: 95% CI of the median step time (none below 6 samples)"
UNSTABLE_NOTE = "hollow marker: flagged unstable (spread or run conditions; see the report)"


def panel_of(e: Entry) -> tuple[str, str, str]:
    """(device kind, framework, workload): the panel an entry is drawn on."""
    return device_kind(e.device), str(e.point.get("framework")), str(e.point.get("workload"))


@dataclass
class Series:
    """Points of one source that differ only in batch size (sorted by it)."""

    source: str
    name: str  # what tells it apart from the other series of its source, e.g. "tiny bf16"
    entries: list[Entry]


def make_series(items: Sequence[Entry], drop: Sequence[str] = SERIES_DROP,
                always: Sequence[str] = ("preset",)) -> list[Series]:
    """Group entries into series: one per source and point config minus ``drop``."""
    fields = _varying([e.point for e in items], exclude=drop, always=always)
    groups = group(items, lambda e: (e.source, config_key(e.point, drop)))
    return [Series(src, describe(members[0].point, fields) or "all points",
                   sorted(members, key=lambda e: e.batch_size))
            for (src, _), members in groups.items()]


class Styler:
    """Colour per source when several share the axes, else colour per series."""

    def __init__(self, series: Sequence[Series], sources: Sequence[str] | None = None):
        self.sources = list(sources or dict.fromkeys(s.source for s in series))
        self.names = list(dict.fromkeys(s.name for s in series))
        self.multi = len(self.sources) > 1

    def label(self, s: Series, suffix: str = "") -> str:
        return (f"{s.source}: {s.name}" if self.multi else s.name) + suffix

    def colour(self, source: str) -> str:
        return _COLOURS[self.sources.index(source) % len(_COLOURS)] if source in self.sources \
            else "black"

    def __call__(self, s: Series) -> dict[str, Any]:
        i = self.names.index(s.name) if s.name in self.names else len(self.names)
        marker = _MARKERS[i % len(_MARKERS)]
        if self.multi:
            return {"color": self.colour(s.source), "linestyle": _STYLES[i % len(_STYLES)],
                    "marker": marker}
        return {"color": _COLOURS[i % len(_COLOURS)], "linestyle": "-", "marker": marker}


def panel_text(items: Sequence[Entry], with_framework: bool = True) -> str:
    """``"torch train on cpu"`` (``"train on cpu"`` for a figure across frameworks)."""
    if not items:
        return ""
    kind, framework, workload = panel_of(items[0])
    return f"{framework + ' ' if with_framework else ''}{workload} on {kind}"


def subtitle(items: Sequence[Entry]) -> str:
    """The machine(s) a figure shows: source name and hardware, one clause per source."""
    seen: dict[str, Any] = {}
    for e in items:
        seen.setdefault(e.source, e.file)
    word = "machine" if len(seen) == 1 else "machines"
    text = f"{word}: " + "; ".join(f"{s} ({machine_summary(f)})" for s, f in seen.items())
    return "\n".join(textwrap.wrap(text, 110))


def new_figure(title: str, items: Sequence[Entry], ncols: int = 1,
               sharey: bool = False) -> tuple[Figure, list[Axes]]:
    """A Figure (no pyplot) whose suptitle is the title, then the machine(s) as a subtitle."""
    fig = Figure(figsize=(6.0 + 3.6 * ncols, 5.2), layout="constrained")
    axes = fig.subplots(1, ncols, squeeze=False, sharey=sharey)[0]
    fig.suptitle(f"{title}\n{subtitle(items)}", fontsize=10.5)
    return fig, list(axes)


def legend(fig: Figure, axes: Sequence[Axes]) -> None:
    """One legend below the axes (labels de-duplicated across axes). Below, not beside: the
    figure's two-line title spans the full width and a side legend would run into it."""
    handles: dict[str, Any] = {}
    flagged = [ax for ax in axes if any(a.get_gid() == "unstable" for a in ax.get_children())]
    if flagged:  # one legend entry says what a hollow marker means
        flagged[0].plot([], [], linestyle="none", marker="o", markerfacecolor="white",
                        markeredgecolor="black", gid="unstable-legend", label=UNSTABLE_NOTE)
    for ax in axes:
        for h, label in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(label, h)
    if handles:
        longest = max(len(t) for t in handles)
        ncols = max(1, min(len(handles), 4 if longest < 28 else 2 if longest < 60 else 1))
        rows = -(-len(handles) // ncols)
        fig.set_figheight(fig.get_figheight() + 0.2 * rows)  # keep the axes their height
        fig.legend(list(handles.values()), list(handles), loc="outside lower center",
                   ncols=ncols, fontsize="small", frameon=False)


def batch_axis(ax: Axes, batches: Sequence[float]) -> None:
    """Log2 batch-size axis ticked at the measured batch sizes."""
    ax.set_xscale("log", base=2)
    ticks = sorted({b for b in batches if b > 0})
    ax.xaxis.set_major_locator(FixedLocator(ticks))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xlabel("batch size (sequences per step)")
    ax.grid(True, which="major", alpha=0.3)


def draw_lines(ax: Axes, series: Sequence[Series], y: Callable[[Entry], float | None],
               styler: Styler, suffix: str = "", **style: Any) -> list[float]:
    """Plot y(entry) vs batch size for each series; returns the batch sizes drawn."""
    xs_all: list[float] = []
    for s in series:
        pts = [(e.batch_size, v, e.unstable) for e in s.entries if (v := y(e)) is not None]
        if not pts:
            continue
        xs, ys, flags = zip(*pts)
        kw = {**styler(s), **style}
        ax.plot(xs, ys, label=styler.label(s, suffix), gid="series",
                markevery=[i for i, f in enumerate(flags) if f is None], **kw)
        hollow(ax, [(x, v) for x, v, f in pts if f is not None], kw)
        xs_all += xs
    return xs_all


def hollow(ax: Axes, xy: Sequence[tuple[float, float]], style: dict[str, Any],
           label: str | None = None) -> None:
    """Unstable points: the series' marker and colour, filled white (gid "unstable")."""
    if xy:
        x, y = zip(*xy)
        ax.plot(x, y, linestyle="none", marker=style.get("marker", "o"), markerfacecolor="white",
                markeredgecolor=style.get("color", "black"), markeredgewidth=1.5, zorder=4,
                gid="unstable", label=label or "_nolegend_")


def scatter(ax: Axes, items: Sequence[Entry], x: Callable[[Entry], float],
            y: Callable[[Entry], float], style: dict[str, Any], **kw: Any) -> None:
    """A scatter of entries in the series' colour and marker; unstable ones hollow."""
    stable = [e for e in items if e.unstable is None]
    if stable:
        ax.scatter([x(e) for e in stable], [y(e) for e in stable], color=style.get("color"),
                   marker=style.get("marker", "o"), **kw)
    hollow(ax, [(x(e), y(e)) for e in items if e.unstable is not None], style,
           None if stable else kw.get("label"))


def flops_unit(values: Sequence[float]) -> tuple[float, str]:
    """(scale, unit) that shows the largest of ``values`` as a number >= 1."""
    top = max(values)
    for scale, name in ((1e15, "PFLOP/s"), (1e12, "TFLOP/s"), (1e9, "GFLOP/s"), (1e6, "MFLOP/s")):
        if top >= scale:
            return scale, name
    return 1.0, "FLOP/s"


def median_ci(e: Entry) -> tuple[float, float] | None:
    """(ci_low, ci_high) of the median step time in ms, or None when the record has none."""
    lo, hi = e.metric("step_ms.ci_low"), e.metric("step_ms.ci_high")
    return None if lo is None or hi is None else (lo, hi)


def throughput_ci(e: Entry) -> tuple[float, float] | None:
    """The median's CI as samples/s: throughput scales as 1 / step time, so the bounds swap."""
    ci, med, thr = median_ci(e), e.metric("step_ms.median"), e.metric("samples_per_s")
    if ci is None or not med or thr is None or ci[0] <= 0:
        return None
    return thr * med / ci[1], thr * med / ci[0]


def ci_bars(ax: Axes, series: Sequence[Series], y: Callable[[Entry], float | None],
            bounds: Callable[[Entry], tuple[float, float] | None], styler: Styler) -> int:
    """Error bars from ``bounds(entry)`` (low, high) at ``y(entry)``, in each series' colour
    (gid "ci"), and one legend entry saying what they are; returns how many were drawn."""
    drawn = 0
    for s in series:
        pts = [(e.batch_size, v, b) for e in s.entries
               if (v := y(e)) is not None and (b := bounds(e)) is not None]
        if not pts:
            continue
        xs, ys, bs = zip(*pts)
        err = [[max(0.0, v - b[0]) for v, b in zip(ys, bs)],
               [max(0.0, b[1] - v) for v, b in zip(ys, bs)]]
        bars = ax.errorbar(xs, ys, yerr=err, fmt="none", ecolor=styler(s)["color"], capsize=3,
                           elinewidth=1.0, zorder=2)
        for art in bars.lines[2]:
            art.set_gid("ci")
        drawn += len(pts)
    if drawn:
        ax.plot([], [], color="black", marker="|", markersize=10, linestyle="none",
                gid="ci-legend", label=CI_NOTE)
    return drawn


def p99_note(missing: int, total: int) -> str:
    """The p99 axis title when some points have no p99 (null below 100 samples)."""
    return (f"p99 step time ({missing} of {total} points not drawn:\n"
            "p99 is null below 100 samples)")
