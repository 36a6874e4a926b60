"""Figures of a sweep: the registry of figure kinds, and the files written from them.

``FIGURES`` names each kind of step-record figure (its function, in
bench/analysis/plots_step.py) and whether its panel is per framework. ``iter_figures`` groups
the result entries into panels (``plotstyle.panel_of``) and yields every figure that has
something to show, then those of the serve, scale-out and ttq modules (the report embeds
them); ``plot_all`` writes them all, files from the Agg and SVG canvases; ``register_cli`` adds
`recbench plot`. Several result files overlay on shared axes, one colour per machine (or run):
see bench.analysis.plotstyle.

Figures (file stem ``<device>-<framework>-<workload>-<kind>``):
  throughput, latency, memory, utilization, roofline, energy, precision
               one panel per device kind, framework and workload: bench/analysis/plots_step.py
  frameworks   torch / JAX throughput at the same point (``<device>-<workload>-frameworks``):
               bench/analysis/plots_step.py
  serve-*      latency against offered rate, throughput against max batch, prefill/decode:
               bench/analysis/plots_serve.py (from ``serve`` records)
  scaling, comm, interconnect
               distributed points and the interconnect roof: bench/analysis/plots_scale.py
  ttq-*        validation quality against wall time per (dataset, target), each run's curve,
               the target and the time to target: bench/analysis/plots_ttq.py (``ttq`` records)
Records that are not ok appear only on the memory figure (oom, infeasible); the report
counts every status.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from bench.analysis.plotdata import Entry, as_files, entries, group, require_ok
from bench.analysis.plots_scale import iter_scale_figures
from bench.analysis.plots_serve import iter_serve_figures
from bench.analysis.plots_step import (
    energy_figure,
    framework_figure,
    latency_figure,
    memory_figure,
    precision_figure,
    roofline_figure,
    throughput_figure,
    utilization_figure,
)
from bench.analysis.plots_ttq import iter_ttq_figures
from bench.analysis.plotstyle import DPI, panel_of, panel_text
from bench.results import ResultsFile, safe_name
from bench.results.write import out_dir
from recmodels.errors import InputError

# name, figure function, whether its panel is per framework (else both frameworks together)
FIGURES: tuple[tuple[str, Callable[[Sequence[Entry]], Figure | None], bool], ...] = (
    ("throughput", throughput_figure, True),
    ("latency", latency_figure, True),
    ("memory", memory_figure, True),
    ("utilization", utilization_figure, True),
    ("roofline", roofline_figure, True),
    ("energy", energy_figure, True),
    ("precision", precision_figure, True),
    ("frameworks", framework_figure, False),
)


@dataclass
class NamedFigure:
    name: str  # file stem, e.g. "cpu-torch-train-throughput"
    kind: str  # a FIGURES name
    panel: str  # e.g. "torch train on cpu"
    figure: Figure


def iter_figures(files: Sequence[ResultsFile]) -> Iterator[NamedFigure]:
    """Every figure that has something to show, panel by panel."""
    items = entries(files)
    for kind, fn, per_framework in FIGURES:
        def key(e: Entry, per: bool = per_framework) -> tuple[str, ...]:
            device, framework, workload = panel_of(e)
            return (device, framework, workload) if per else (device, workload)

        for panel, members in group(items, key).items():
            fig = fn(members)
            if fig is not None:
                yield NamedFigure(safe_name("-".join([*panel, kind]), "figure name"), kind,
                                  panel_text(members, per_framework), fig)
    for name, kind, panel, fig in iter_serve_figures(files):
        yield NamedFigure(safe_name(name, "figure name"), f"serve {kind}", panel, fig)
    for name, kind, panel, fig in iter_scale_figures(items, files):
        yield NamedFigure(safe_name(name, "figure name"), kind, panel, fig)
    for name, panel, fig in iter_ttq_figures(files):
        yield NamedFigure(safe_name(name, "figure name"), "time to quality", panel, fig)


def plot_all(files: Sequence[Any], out_dir: str | Path, svg: bool = False) -> list[Path]:
    """Write every figure as ``out_dir/<device>-<framework>-<workload>-<kind>.png`` (and
    ``.svg`` with ``svg``); returns the paths written. ``files``: ResultsFiles or paths."""
    files = as_files(files)
    require_ok(files)
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise InputError(f"cannot create {out}: {e.strerror or e}; pass a writable --out") from e
    written: list[Path] = []
    for nf in iter_figures(files):
        for ext in ("png", "svg") if svg else ("png",):
            path = out / f"{nf.name}.{ext}"
            try:
                nf.figure.savefig(path, dpi=DPI, format=ext)
            except OSError as e:  # read-only directory, full disk: as for mkdir above
                raise InputError(f"cannot write {path}: {e.strerror or e}; pass a writable "
                                 "--out") from None
            written.append(path)
    return written


def default_out_dir(results: Sequence[str], sub: str | None) -> Path:
    """The first RESULTS' directory (a file's parent), plus ``sub``."""
    first = Path(results[0])
    base = first if first.is_dir() else first.parent
    return base / sub if sub else base


def cmd_plot(args: argparse.Namespace) -> int:
    out = Path(args.out) if args.out else default_out_dir(args.results, "plots")
    paths = plot_all(args.results, out, svg=args.svg)
    for p in paths:
        print(p)
    print(f"{len(paths)} figure file(s) in {out}", file=sys.stderr)
    return 0


def register_cli(subparsers: Any) -> None:
    """Add ``recbench plot RESULTS... [--out DIR] [--svg]``."""
    p = subparsers.add_parser("plot", help="figures (PNG, optionally SVG) from result files")
    p.add_argument("results", nargs="+", metavar="RESULTS",
                   help="results .jsonl files or directories of them")
    p.add_argument("--out", type=out_dir,
                   help="output directory (default: plots/ in the first RESULTS dir)")
    p.add_argument("--svg", action="store_true", help="also write SVG next to each PNG")
    p.set_defaults(func=cmd_plot)
