"""Serving figures (``serve`` records of `recbench serve` and [[serve]] suite tables).

One panel per (device kind, framework, workload); one colour per machine (or run):
  latency-rate    the p-target latency of every Server run of the rate search against its
                  offered rate (log y), the target as a dashed line, the maximum rate that
                  met it ringed; a run that missed is a cross
  batch           throughput against the batcher's max batch size: Offline requests/s and,
                  where searched, the Server maximum rate within the target
  prefill-decode  prefill and one decode step against history length, from any record (step
                  or serve) whose metrics carry ``prefill_ms`` and ``decode_step_ms`` (the
                  ``generate`` step workload records both: TTFT and TPOT)
File stems: ``<device>-<framework>-<workload>-serve-<kind>``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from matplotlib.figure import Figure

from bench.analysis.plotdata import source_names
from bench.point import device_kind
from bench.results import ResultsFile

COLORS = ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown")


def _serve_entries(files: Sequence[ResultsFile]) -> list[tuple[str, Any]]:
    return [(name, r) for name, f in zip(source_names(files), files) for r in f.serve]


def _panel(rec: Any) -> tuple[str, str, str]:
    p = rec.point
    return (device_kind(str(p.get("device", "cpu"))), str(p.get("framework")),
            str(p.get("workload")))


def _label(rec: Any) -> str:
    p = rec.point
    k = f" K {p['n_candidates']}" if p.get("n_candidates") else ""
    return f"{p.get('preset')}{k} B<={p.get('max_batch')}"


def _figure(title: str) -> tuple[Figure, Any]:
    fig = Figure(figsize=(7.5, 5.0), layout="constrained")
    ax = fig.subplots()
    fig.suptitle(title, fontsize=10.5)
    return fig, ax


def latency_rate_figure(items: Sequence[tuple[str, Any]], panel: str) -> Figure | None:
    runs = [(n, r) for n, r in items if r.point.get("scenario") == "server"
            and any(s.get("latency_ms") is not None and s.get("rate_per_s")
                    for s in r.metrics.get("search") or [])]
    if not runs:
        return None
    pct = runs[0][1].point.get("percentile", 99)
    fig, ax = _figure(f"p{pct:g} latency against offered rate: {panel}")
    colors = {n: COLORS[i % len(COLORS)] for i, n in enumerate(dict.fromkeys(n for n, _ in runs))}
    targets = set()
    for name, rec in runs:
        search = sorted((s for s in rec.metrics["search"] if s.get("latency_ms") is not None),
                        key=lambda s: s["rate_per_s"])
        c = colors[name]
        ax.plot([s["rate_per_s"] for s in search], [s["latency_ms"] for s in search], "-",
                color=c, alpha=0.5, label=f"{name}: {_label(rec)}")
        for s in search:
            ax.plot(s["rate_per_s"], s["latency_ms"], "o" if s.get("met") else "x", color=c)
        best = rec.metrics.get("max_rate_per_s")
        if best:
            ax.plot(best, rec.metrics.get("achieved_latency_ms"), "o", markersize=14,
                    markerfacecolor="none", markeredgecolor=c,
                    label=f"{name}: max {best:,.0f} requests/s")
        targets.add(rec.point.get("target_latency_ms"))
    for t in sorted(x for x in targets if x):
        ax.axhline(t, color="black", linestyle="--", linewidth=1, label=f"target {t:g} ms")
    ax.set_yscale("log")
    ax.set_xlabel("offered rate (requests/s, Poisson)")
    ax.set_ylabel(f"p{pct:g} latency (ms)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="upper left")
    return fig


def batch_figure(items: Sequence[tuple[str, Any]], panel: str) -> Figure | None:
    lines: dict[tuple[str, str, str], list[tuple[int, float]]] = {}
    for name, rec in items:
        p, m = rec.point, rec.metrics
        y = (m.get("samples_per_s") if p.get("scenario") == "offline"
             else m.get("max_rate_per_s") if p.get("scenario") == "server" else None)
        if rec.status == "ok" and y and p.get("max_batch"):
            what = "offline" if p["scenario"] == "offline" else "server max rate"
            key = (name, what, f"{p.get('preset')}" + (f" K {p['n_candidates']}"
                                                          if p.get("n_candidates") else ""))
            lines.setdefault(key, []).append((int(p["max_batch"]), float(y)))
    if not lines:
        return None
    fig, ax = _figure(f"Throughput against the batcher's max batch: {panel}")
    names = list(dict.fromkeys(k[0] for k in lines))
    for (name, what, model), pts in lines.items():
        pts.sort()
        ax.plot([b for b, _ in pts], [y for _, y in pts], "o-" if what == "offline" else "s--",
                color=COLORS[names.index(name) % len(COLORS)], label=f"{name}: {model} {what}")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("max batch size (requests)")
    ax.set_ylabel("requests/s")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    return fig


def _ms(value: Any) -> float | None:
    if isinstance(value, dict):
        value = value.get("median")
    return float(value) if isinstance(value, (int, float)) else None


def prefill_decode_figure(records: Sequence[tuple[str, Any]], panel: str) -> Figure | None:
    pts = []
    for name, rec in records:
        m = rec.metrics
        pre, dec = _ms(m.get("prefill_ms")), _ms(m.get("decode_step_ms", m.get("decode_ms")))
        t = rec.point.get("seq_len")
        if rec.status == "ok" and pre is not None and dec is not None and t:
            pts.append((name, int(t), pre, dec))
    if not pts:
        return None
    fig, ax = _figure(f"Prefill and decode time against history length: {panel}")
    names = list(dict.fromkeys(p[0] for p in pts))
    for name in names:
        mine = sorted((p for p in pts if p[0] == name), key=lambda p: p[1])
        c = COLORS[names.index(name) % len(COLORS)]
        ax.plot([p[1] for p in mine], [p[2] for p in mine], "o-", color=c,
                label=f"{name}: prefill")
        ax.plot([p[1] for p in mine], [p[3] for p in mine], "s--", color=c,
                label=f"{name}: decode (one step)")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("history length (items)")
    ax.set_ylabel("time (ms)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    return fig


def iter_serve_figures(files: Sequence[ResultsFile]) -> Iterator[tuple[str, str, str, Figure]]:
    """(file stem, kind, panel text, figure) for every serving figure with something to show."""
    by_panel: dict[tuple[str, str, str], list[tuple[str, Any]]] = {}
    for item in _serve_entries(files):
        by_panel.setdefault(_panel(item[1]), []).append(item)
    steps = [(n, r) for n, f in zip(source_names(files), files) for r in f.records]
    for (device, framework, workload), members in by_panel.items():
        text = f"{framework} {workload} on {device}"
        for kind, fn in (("latency-rate", latency_rate_figure), ("batch", batch_figure)):
            fig = fn(members, text)
            if fig is not None:
                yield f"{device}-{framework}-{workload}-serve-{kind}", kind, text, fig
    generate: dict[tuple[str, str, str], list[tuple[str, Any]]] = {}
    for name, rec in [*steps, *_serve_entries(files)]:
        if "prefill_ms" in rec.metrics:
            generate.setdefault(_panel(rec), []).append((name, rec))
    for (device, framework, workload), members in generate.items():
        text = f"{framework} {workload} on {device}"
        fig = prefill_decode_figure(members, text)
        if fig is not None:
            yield (f"{device}-{framework}-{workload}-serve-prefill-decode", "prefill-decode",
                   text, fig)
