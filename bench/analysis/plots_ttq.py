"""Time-to-quality figures (``ttq`` records of `recbench ttq`, MLPerf Training's score).

One figure per (dataset, target metric): the validation value of the target metric against
wall time, one colour per series (a ttq record: machine, framework with its mode, precision,
and whatever else differs within the figure, e.g. the preset).
  runs            every run's evaluation curve (``metrics.runs[i].curve``: ``valid[target]``
                  at ``wall_s``); the series' *median run* is drawn thick and labelled, the
                  others thin and faint. The median run: the middle one when the runs are
                  ordered by wall time, a run that did not reach the target counting as
                  slower than any that did (MLPerf's order); the lower middle for an even count
  target          the target value, a dashed black line (one per value in the figure)
  time to target  the record's score (``time_to_target_s``: the mean over the runs without the
                  fastest and the slowest, ``score_rule``) as a diamond on its target line; a
                  record that did not converge has no diamond, and its legend says so
  paper           the quality the SASRec paper reports for the dataset (``paper_quality``, a
                  *test* figure), a dotted grey line, where the record has one
File stems: ``ttq-<dataset>-<target>``, with ``-<target value>`` added where one dataset and
metric have several target values (one figure each); made filesystem safe.
"""

from __future__ import annotations

import textwrap
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from matplotlib.figure import Figure

from bench.analysis.plotdata import Entry, describe, varying_fields
from bench.analysis.plotstyle import legend, new_figure
from bench.results import ResultsFile

COLORS = ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown",
          "tab:pink", "tab:gray", "tab:olive", "tab:cyan")
TARGET_TEXT = {"hr@10": "HR@10", "ndcg@10": "NDCG@10"}
LEGEND_WIDTH = 90  # characters a legend line holds at the figure's width
# Fields never in a series' name: the figure's own, and the first run's seed.
_NOT_IN_NAME = ("dataset", "target", "target_value", "seed")


def target_text(target: Any) -> str:
    return TARGET_TEXT.get(str(target), str(target))


def ttq_entries(files: Sequence[ResultsFile]) -> list[Entry]:
    """Every ttq record of every file (all statuses), as entries named by their machine: each
    `recbench ttq` writes a file of its own, so a machine's files are one source (the step
    plots' source_names would name each run)."""
    return [Entry(f.machine_id or "unknown-machine", f, r) for f in files for r in f.ttq]


def num(value: Any) -> float | None:
    """A finite number, else None (JSON null, a string, a bool)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if value == value and abs(value) != float("inf") else None


def run_list(e: Entry) -> list[Mapping[str, Any]]:
    runs = e.record.metrics.get("runs")
    return [r for r in runs if isinstance(r, Mapping)] if isinstance(runs, list) else []


def median_run_index(runs: Sequence[Mapping[str, Any]]) -> int | None:
    """The index of the median run (see the module docstring), or None without runs."""
    if not runs:
        return None
    order = sorted(range(len(runs)), key=lambda i: (
        runs[i].get("status") != "converged", num(runs[i].get("wall_s")) or float("inf")))
    return order[(len(order) - 1) // 2]


@dataclass
class RunCurve:
    """One run's validation curve for the figure's target metric."""

    seed: Any
    status: str  # converged | did-not-converge | diverged
    wall_s: list[float]
    quality: list[float]
    median: bool  # the series' median run (drawn thick)


@dataclass
class TTQSeries:
    """One ttq record as the figure draws it."""

    entry: Entry
    name: str  # e.g. "torch (eager) fp32" (the machine is added where several share a figure)
    runs: list[RunCurve]

    @property
    def metrics(self) -> Mapping[str, Any]:
        return self.entry.record.metrics

    @property
    def time_to_target_s(self) -> float | None:
        return num(self.metrics.get("time_to_target_s")) if self.entry.ok else None

    @property
    def target_value(self) -> float | None:
        return num(self.entry.point.get("target_value"))

    @property
    def paper(self) -> float | None:
        paper = self.metrics.get("paper_quality")
        return num(paper.get(str(self.entry.point.get("target")))) if isinstance(
            paper, Mapping) else None

    def converged_text(self) -> str:
        runs = run_list(self.entry)
        n = self.metrics.get("converged")
        n = n if isinstance(n, int) else sum(1 for r in runs if r.get("status") == "converged")
        total = self.entry.point.get("runs", len(runs))
        return f"{n} of {total} runs reached it"


def curve(run: Mapping[str, Any], target: str) -> tuple[list[float], list[float]]:
    """(wall_s, valid[target]) over a run's evaluations, points without a value left out."""
    pts = []
    for c in run.get("curve") or []:
        if not isinstance(c, Mapping):
            continue
        valid = c.get("valid")
        x = num(c.get("wall_s"))
        y = num(valid.get(target)) if isinstance(valid, Mapping) else None
        if x is not None and y is not None:
            pts.append((x, y))
    pts.sort()
    return [x for x, _ in pts], [y for _, y in pts]


def ttq_series(files: Sequence[ResultsFile]) -> dict[tuple[str, str, Any], list[TTQSeries]]:
    """The plot data: (dataset, target, target value) -> the series of that figure, in file
    order (one figure per target value: two dashed lines of one style cannot be told apart)."""
    panels: dict[tuple[str, str, Any], list[Entry]] = {}
    for e in ttq_entries(files):
        key = (str(e.point.get("dataset")), str(e.point.get("target")),
               e.point.get("target_value"))
        panels.setdefault(key, []).append(e)
    out: dict[tuple[str, str, Any], list[TTQSeries]] = {}
    for (dataset, target, _), members in panels.items():
        fields = varying_fields([e.point for e in members], exclude=_NOT_IN_NAME,
                                always=("framework", "precision"))
        multi = len({e.source for e in members}) > 1
        series: list[TTQSeries] = []
        for e in members:
            runs = run_list(e)
            mid = median_run_index(runs)
            curves = [RunCurve(r.get("seed"), str(r.get("status")), *curve(r, target),
                               median=i == mid) for i, r in enumerate(runs)]
            name = describe(e.point, fields)
            name = f"{e.source}: {name}" if multi else name
            same = sum(1 for s in series if s.name.split(" #")[0] == name)
            series.append(TTQSeries(e, f"{name} #{same + 1}" if same else name, curves))
        out[(dataset, target, members[0].point.get("target_value"))] = series
    return out


def ttq_figure(series: Sequence[TTQSeries], dataset: str, target: str) -> Figure | None:
    """Validation quality against wall time for one (dataset, target); None when no run of
    any series has a curve point."""
    if not any(r.wall_s for s in series for r in s.runs):
        return None
    items = [s.entry for s in series]
    fig, (ax,) = new_figure(f"Time to quality: validation {target_text(target)} against "
                            f"wall time, {dataset}", items)
    for i, s in enumerate(series):
        c = COLORS[i % len(COLORS)]
        for r in s.runs:
            if not r.wall_s:
                continue
            if r.median:
                ax.plot(r.wall_s, r.quality, "o-", color=c, linewidth=2.2, markersize=3.5,
                        gid="median-run", zorder=3,
                        label=f"{s.name}: median run (seed {r.seed}) of {len(s.runs)}")
            else:
                ax.plot(r.wall_s, r.quality, ".-", color=c, linewidth=0.9, alpha=0.35,
                        gid="run", label="_nolegend_")
        t, y = s.time_to_target_s, s.target_value
        if t is not None and y is not None:
            rule = s.metrics.get("score_rule")
            ax.plot([t], [y], "D", color=c, markersize=9, markeredgecolor="black", zorder=5,
                    gid="time-to-target",
                    label=f"{s.name}: time to target {t:,.4g} s"
                          + (f" ({rule})" if isinstance(rule, str) and rule else ""))
        elif s.entry.status == "did-not-converge":
            ax.plot([], [], " ", gid="did-not-converge",
                    label=f"{s.name}: did not converge ({s.converged_text()})")
        elif not s.entry.ok:
            ax.plot([], [], " ", gid="not-ok", label=f"{s.name}: {s.entry.status}")
    for v in sorted({s.target_value for s in series if s.target_value is not None}):
        ax.axhline(v, color="black", linestyle="--", linewidth=1, gid="target",
                   label=f"target: validation {target_text(target)} >= {v:g}")
    for v in sorted({s.paper for s in series if s.paper is not None}):
        ax.axhline(v, color="gray", linestyle=":", linewidth=1.2, gid="paper",
                   label=f"SASRec paper, test {target_text(target)} {v:.4f}")
    ax.set_xlabel("wall time from the run's first training step (s; compilation and "
                  "evaluation included, setup apart)")
    ax.set_ylabel(f"validation {target_text(target)}")
    ax.set_xlim(left=0)
    ax.grid(True, alpha=0.3)
    for line in ax.get_lines():  # a one-column legend wider than the figure is cut off
        if not line.get_label().startswith("_"):
            line.set_label(textwrap.fill(line.get_label(), LEGEND_WIDTH))
    legend(fig, [ax])
    return fig


def iter_ttq_figures(files: Sequence[ResultsFile]) -> Iterator[tuple[str, str, Figure]]:
    """(file stem, panel text, figure) for every (dataset, target) with a curve to draw."""
    panels = ttq_series(files)
    for (dataset, target, value), series in panels.items():
        fig = ttq_figure(series, dataset, target)
        if fig is None:
            continue
        several = sum(1 for d, t, _ in panels if (d, t) == (dataset, target)) > 1
        suffix = f"-{value:g}" if several and num(value) is not None else ""
        yield (f"ttq-{dataset}-{target}{suffix}",
               f"{target_text(target)}{' >= ' + format(value, 'g') if suffix else ''} on "
               f"{dataset}", fig)
