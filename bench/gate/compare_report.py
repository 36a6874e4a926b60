"""Showing a :class:`bench.gate.compare.Comparison`, and the `recbench compare` command.

Three forms: terminal text (a line per point, the reasons of what moved under it), Markdown for
a pull-request comment (a summary line, a table of the points that moved, then everything in a
collapsed ``<details>``), and one JSON object (``Comparison.to_json``).
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from collections.abc import Iterable, Sequence

from bench.gate import stats
from bench.gate.compare import (
    ANALYTIC,
    METRICS,
    Comparison,
    MetricResult,
    PointResult,
    _redundant,
    compare_results,
)
from bench.results import ResultsFile, load_many
from recmodels.config import human
from recmodels.errors import InputError

# --- output ------------------------------------------------------------------------------------

_UNITS = {"step_ms": "ms", "samples_per_s": "/s", "peak_mem_bytes": "B",
          "energy_j_per_1k_recs": "J"}
_MARK = {"failed": "❌", "regressed": "❌", "changed": "⚠️", "improved": "✅", "inconclusive": "❔",
         "unchanged": "", "not-compared": ""}


def _num(metric: str, x: float | None) -> str:
    if x is None:
        return "-"
    if metric == "step_ms":
        return f"{x:.3g}"
    return human(x, _UNITS.get(metric, ""))


def _change(m: MetricResult) -> tuple[str, str, str]:
    """(change, CI of the change, p) as short strings."""
    v = m.verdict or {}
    ratio = v.get("ratio") if v else (m.new / m.base if m.base and m.new is not None else None)
    change = f"{ratio - 1:+.1%}" if ratio is not None else "-"
    lo, hi = v.get("ci_low"), v.get("ci_high")
    ci = f"[{lo - 1:+.1%}, {hi - 1:+.1%}]" if lo is not None and hi is not None else "-"
    p = v.get("p_value")
    return change, ci, (f"{p:.2g}" if p is not None else "-")


def summary_line(c: Comparison) -> str:
    counts = ", ".join(f"{n} {s}" for s, n in c.counts.items())
    only = [f"{len(x)} only in {side}" for side, x in (("base", c.only_base), ("new", c.only_new))
            if x]
    verdict = "FAIL" if c.failed else "pass"
    return (f"{verdict}: {counts} of {len(c.points)} points compared"
            + (f" ({', '.join(only)})" if only else "")
            + f"; threshold {c.threshold:.1%}, alpha {c.alpha:g}")


def _rule(c: Comparison) -> str:
    rule = (f"Regressed = Mann–Whitney p < {c.alpha:g} and the ratio of medians beyond the "
            f"{c.threshold:.1%} threshold, its 95% bootstrap CI clear of "
            f"{stats.CONFIRM_FRACTION:g}x the threshold (bench/gate/stats.py)")
    if c.paired:
        rule += ("; rounds paired: samples aligned per round, and the 95% t-interval over "
                 "rounds must agree (bench/gate/compare.py)")
    return rule + "."


def format_text(c: Comparison) -> str:
    """The terminal report: one line per point, the reasons of notable metrics under it."""
    lines = [f"base: {c.base_desc}", f"new:  {c.new_desc}", *c.notes,
             _rule(c)]
    width = max([len(p.label) for p in c.points] + [5])
    lines.append(f"{'status':<13s} {'point':<{width}s} {'step ms base -> new':>22s} "
                 f"{'change':>8s} {'95% CI':>17s} {'p':>7s}")
    for p in c.points:
        m = p.metric("step_ms")
        if m is None or m.base is None:
            lines.append(f"{p.status:<13s} {p.label:<{width}s}  {p.reason}")
            continue
        change, ci, pv = _change(m)
        span = f"{_num('step_ms', m.base)} -> {_num('step_ms', m.new)}"
        lines.append(f"{p.status:<13s} {p.label:<{width}s} {span:>22s} {change:>8s} {ci:>17s} "
                     f"{pv:>7s}")
        for x in p.metrics:
            if x.status != "unchanged" and not _redundant(p, x):
                lines.append(f"    {x.metric}: {x.status}: {x.reason}")
    lines += [f"only in base: {lab} [{i}]" for i, lab in c.only_base]
    lines += [f"only in new: {lab} [{i}]" for i, lab in c.only_new]
    lines.append(summary_line(c))
    return "\n".join(lines)


def _md(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


_MOVED = ("failed", "regressed", "changed", "improved")


def _md_notable(points: Iterable[PointResult]) -> list[str]:
    rows = ["| status | point | metric | base | new | change | 95% CI | p |",
            "|---|---|---|---|---|---|---|---|"]
    for p in points:
        shown = [m for m in p.metrics if m.status in _MOVED and not _redundant(p, m)]
        for m in shown or [None]:
            if m is None:
                rows.append(f"| {_MARK[p.status]} {p.status} | {_md(p.label)} | "
                            f"{_md(p.reason)} | | | | | |")
                continue
            change, ci, pv = _change(m)
            rows.append(f"| {_MARK[m.status]} {m.status}{' (accepted)' if m.accepted else ''} "
                        f"| {_md(p.label)} | {m.metric} | {_num(m.metric, m.base)} | "
                        f"{_num(m.metric, m.new)} | {change} | {ci} | {pv} |")
    return rows


def _md_all(points: Iterable[PointResult]) -> list[str]:
    """One row per point: step time in full, the other metrics as their change."""
    rows = ["| status | point | step ms base → new | change | 95% CI | p | throughput | "
            "peak mem | analytic |", "|---|---|---|---|---|---|---|---|---|"]
    for p in points:
        step, tput, mem = (p.metric(k) for k in ("step_ms", "samples_per_s", "peak_mem_bytes"))
        change, ci, pv = _change(step) if step else ("-", "-", "-")
        span = f"{_num('step_ms', step.base)} → {_num('step_ms', step.new)}" if step else "-"
        analytic = [m for m in p.metrics if m.metric in ANALYTIC]
        moved = [f"{m.metric} {_change(m)[0]}" for m in analytic if m.status == "changed"]
        cells = [_change(tput)[0] if tput else "-", _change(mem)[0] if mem else "-",
                 ", ".join(moved) or ("same" if analytic else "-")]
        rows.append(f"| {p.status} | {_md(p.label)} | {span} | {change} | {ci} | {pv} | "
                    + " | ".join(cells) + " |")
    return rows


def format_markdown(c: Comparison, title: str = "recbench compare") -> str:
    """A PR comment: summary, the notable points' table, then everything in <details>."""
    mark = "❌" if c.failed else "✅"
    out = [f"### {mark} {title}: {summary_line(c)}", "",
           f"- base: {_md(c.base_desc)}", f"- new: {_md(c.new_desc)}",
           *[f"- {_md(n)}" for n in c.notes], ""]
    notable = [p for p in c.points if p.status in _MOVED]
    if notable:
        out += [*_md_notable(notable), ""]
        out += [f"- **{_md(p.label)}**: {_md(p.reason)}" for p in notable] + [""]
    else:
        out += ["No point regressed, improved or changed.", ""]
    out += ["<details><summary>All points and metrics</summary>", "",
            *_md_all(c.points), ""]
    out += [f"- {p.status}: **{_md(p.label)}**: {_md(p.reason)}" for p in c.points
            if p.status in ("inconclusive", "not-compared")]
    out += [f"- only in base: {_md(lab)} `{i}`" for i, lab in c.only_base]
    out += [f"- only in new: {_md(lab)} `{i}`" for i, lab in c.only_new]
    out += ["", _rule(c), "</details>", ""]
    return "\n".join(out)


# --- CLI ---------------------------------------------------------------------------------------


def parse_alpha(text: str) -> float:
    try:
        alpha = float(text)
    except ValueError:
        alpha = math.nan
    if not 0 < alpha < 1:
        raise InputError(f"--alpha {text!r}: expected a significance level in (0, 1), e.g. 0.01")
    return alpha


def parse_metrics(names: Sequence[str] | None) -> tuple[str, ...]:
    """``--metric`` values (repeatable, comma lists); ``analytic`` means the three analytic."""
    if not names:
        return METRICS
    out: list[str] = []
    for name in (n.strip() for item in names for n in item.split(",")):
        if name == "analytic":
            out += ANALYTIC
        elif name in METRICS:
            out.append(name)
        else:
            raise InputError(f"--metric {name!r}: unknown; choose from {', '.join(METRICS)}, "
                             "analytic")
    return tuple(dict.fromkeys(out))


def emit(c: Comparison, args: argparse.Namespace, title: str) -> int:
    """Print ``c`` as --json, --markdown or text; returns the exit code."""
    if getattr(args, "json", False):
        json.dump(c.to_json(), sys.stdout, indent=2, default=str)
        sys.stdout.write("\n")
    elif getattr(args, "markdown", False) is True:
        print(format_markdown(c, title))
    else:
        print(format_text(c))
    return c.exit_code


def cmd_compare(args: argparse.Namespace) -> int:
    threshold = stats.parse_threshold(args.threshold)
    alpha = parse_alpha(args.alpha)
    metrics = parse_metrics(args.metric)
    base, new = load_many([args.base]), load_many([args.new])
    if args.cross_hardware:
        return _cross_hardware(base, new, args)
    c = compare_results(base, new, threshold=threshold, alpha=alpha, paired=args.paired_runs,
                        accept_analytic=args.accept_analytic_changes, metrics=metrics)
    return emit(c, args, "recbench compare")


def _cross_hardware(base: list[ResultsFile], new: list[ResultsFile],
                    args: argparse.Namespace) -> int:
    """The cross-hardware ratio table (bench/analysis/compare_hw.py): a comparison, not a
    verdict."""
    from bench.analysis import compare_hw

    table = compare_hw.cross_hardware(base, new)
    if not table.rows and not table.not_comparable and table.ttq is None:
        def ran(files: list[ResultsFile]) -> str:
            return ", ".join(dict.fromkeys(f.header.suite for f in files)) or "nothing"

        raise InputError(f"no point in common: base ran suites {ran(base)}, new ran "
                         f"{ran(new)}; run `recbench run --suite reference` on both machines "
                         "(every auto suite includes it) and compare those results")
    if args.json:
        json.dump(compare_hw.to_json(table), sys.stdout, indent=2, default=str)
        sys.stdout.write("\n")
    else:
        print(compare_hw.to_markdown(table) if args.markdown else compare_hw.format_table(table))
    return 0


def register_cli(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("compare", help="compare two results (statistics and regression verdict)",
                       description=__doc__.split("\n\n")[0])
    p.add_argument("base", metavar="BASE", help="results file or directory (the reference)")
    p.add_argument("new", metavar="NEW", help="results file or directory (the candidate)")
    add_verdict_args(p)
    p.add_argument("--metric", action="append", metavar="NAME",
                   help=f"compare only these (repeatable): {', '.join(METRICS)}, analytic")
    p.add_argument("--paired-runs", action="store_true",
                   help="run i of BASE and of NEW (file order) ran back to back, as the rounds "
                        "of `recbench gate --out` did: align each pair before testing")
    p.add_argument("--cross-hardware", action="store_true",
                   help="results from different machines: print the cross-hardware ratio "
                        "table instead of a verdict (exit 0; 2 when no point is in common)")
    out = p.add_mutually_exclusive_group()
    out.add_argument("--json", action="store_true", help="one JSON object on stdout")
    out.add_argument("--markdown", action="store_true", help="Markdown for a PR comment")
    p.set_defaults(func=cmd_compare)


class _Threshold(argparse.Action):
    """--threshold, checked as it is parsed: a bad one is one line before any file is read."""

    def __call__(self, parser, namespace, values, option_string=None):
        try:
            stats.parse_threshold(values)
        except InputError as e:
            text = str(values).strip()
            parser.error(f"threshold {text!r} is negative: a threshold is the smallest change of "
                         "a metric that counts (slower or faster alike), so write a percentage "
                         ">= 0 such as --threshold 5%" if text.startswith("-") else str(e))
        setattr(namespace, self.dest, values)


# What argparse takes for a value rather than an option: "-5%" too (Python 3.11 matches only
# plain negative numbers, so `--threshold -5%` read "expected one argument"). No option of these
# parsers starts with "-<digit>", so nothing else changes.
_NEGATIVE_VALUE = re.compile(r"-\.?\d")


def add_verdict_args(p: argparse.ArgumentParser) -> None:
    """The options `compare` and `gate` share."""
    p._negative_number_matcher = _NEGATIVE_VALUE
    p.add_argument("--threshold", default="5%", action=_Threshold,
                   help="smallest change of a metric that counts as a regression or an "
                        "improvement, as a percentage >= 0 (default 5%%)")
    p.add_argument("--alpha", default="0.01",
                   help="significance level of the Mann–Whitney test (default 0.01)")
    p.add_argument("--accept-analytic-changes", action="store_true",
                   help="let a change of analytic FLOPs / parameter counts pass (still listed)")
