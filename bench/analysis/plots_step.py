"""Figures of step records (the ``point`` records of `recbench run`): one function per kind
in ``bench.analysis.plots.FIGURES``.

Each ``*_figure(entries)`` takes the entries of one panel (one device kind, framework and
workload, see ``plotstyle.panel_of``; ``framework_figure``: one device kind and workload, both
frameworks) and returns a ``matplotlib.figure.Figure``, or None when the panel has nothing that
figure can show (no energy measured, no fp32 partner, ...). Figures are built on ``Figure``
directly, never through pyplot: no global state, no GUI backend.

  throughput   samples/s vs batch size, log-log, one line per preset (and precision, ...),
               the knee ringed: bench.analysis.plotdata.knee, the first batch size from which
               the next measured batch gains < 10% throughput per doubling of the batch
  latency      p50 and p99 step time vs batch size; p99 only where the record has one (it is
               null below 100 samples: the axis title counts the points left out)
  memory       the scaling limit: peak memory (device counter, host RSS on CPU) vs parameters
               and vs batch size, the device's capacity as a dashed line, oom and infeasible
               points at their analytic estimate (est_mem_bytes) with their own markers
  utilization  achieved FLOP/s over the measured GEMM roof (metric ``utilization``), and over
               the datasheet peak (``utilization_datasheet``) where the run knew one
  roofline     arithmetic intensity vs achieved FLOP/s under the header's measured roofs; a
               point whose precision has no measured roof (int8) is left out, with a note
  energy       J per 1,000 training samples (train) or recommendations (infer), only where
               measured or estimated (provenance in the legend, estimates dotted)
  precision    speed-up of each precision over fp32 at the same point
  frameworks   torch / JAX throughput at the same point (``<device>-<workload>-frameworks``),
               a line per torch.compile mode, labelled "torch (eager) / jax (jit)"; every
               legend names the framework with its mode where the mode varies
Records that are not ok appear only on the memory figure (oom, infeasible). Points flagged
``unstable`` are hollow markers (plotstyle). Bytes are binary everywhere (GiB, GiB/s).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, LogFormatter

from bench.analysis.plotdata import (
    NO_ENERGY,
    Entry,
    GiB,
    bytes_text,
    capacity_bytes,
    config_key,
    group,
    knee,
    per_1k_text,
)
from bench.analysis.plotstyle import (
    SERIES_DROP,
    Series,
    Styler,
    batch_axis,
    ci_bars,
    draw_lines,
    flops_unit,
    legend,
    make_series,
    median_ci,
    new_figure,
    p99_note,
    panel_text,
    scatter,
    throughput_ci,
)
from bench.machine.roofs import ROOF_DTYPES
from bench.point import device_kind, framework_label
from recmodels.config import human


def _ok(items: Sequence[Entry], metric: str) -> list[Entry]:
    return [e for e in items if e.ok and e.metric(metric) is not None]


def throughput_figure(items: Sequence[Entry]) -> Figure | None:
    """Samples/s vs batch size, log-log, one line per preset (and varying field), knee ringed."""
    ok = _ok(items, "samples_per_s")
    if not ok:
        return None
    series = make_series(ok)
    styler = Styler(series)
    fig, (ax,) = new_figure(f"Throughput vs batch size: {panel_text(ok)}", ok)
    xs = draw_lines(ax, series, lambda e: e.metric("samples_per_s"), styler)
    ci_bars(ax, series, lambda e: e.metric("samples_per_s"), throughput_ci, styler)
    ring = {"linestyle": "none", "marker": "o", "markersize": 14, "markerfacecolor": "none",
            "markeredgewidth": 1.6}
    knees = 0
    for s in series:
        b = [e.batch_size for e in s.entries]
        t = [e.metric("samples_per_s") for e in s.entries]
        k = knee(b, t)  # type: ignore[arg-type]
        if k is None:
            continue
        tk = t[b.index(int(k))]
        ax.plot([k], [tk], color=styler(s)["color"], gid="knee", **ring)  # type: ignore[arg-type]
        ax.annotate(f"knee B={k:g}", (k, tk), textcoords="offset points", xytext=(6, -14),
                    fontsize="x-small", color=styler(s)["color"])
        knees += 1
    if knees:  # one black legend entry for all rings
        ax.plot([], [], color="black", gid="knee-legend", **ring,  # type: ignore[arg-type]
                label="knee: next batch gains < 10% per doubling")
    batch_axis(ax, xs)
    ax.set_yscale("log")
    ax.set_ylabel("throughput (samples/s)")
    legend(fig, [ax])
    return fig


def latency_figure(items: Sequence[Entry]) -> Figure | None:
    """Median (p50, with its CI as error bars) and p99 step time vs batch size, side by side
    on one latency scale; p99 only where the record has one."""
    ok = _ok(items, "step_ms.median")
    if not ok:
        return None
    series = make_series(ok)
    styler = Styler(series)
    fig, axes = new_figure(f"Step latency vs batch size: {panel_text(ok)}", ok, 2, sharey=True)
    for ax, key, name in zip(axes, ("median", "p99"), ("p50 (median)", "p99")):
        xs = draw_lines(ax, series, lambda e, k=key: e.metric(f"step_ms.{k}"), styler)
        batch_axis(ax, xs or [e.batch_size for e in ok])
        ax.set_yscale("log")
        ax.set_title(f"{name} step time", fontsize="medium")
    ci_bars(axes[0], series, lambda e: e.metric("step_ms.median"), median_ci, styler)
    missing = sum(e.metric("step_ms.p99") is None for e in ok)
    if missing:  # p99 is null below 100 samples: say so where it is missing
        axes[1].set_title(p99_note(missing, len(ok)), fontsize="medium", color="tab:red")
    axes[0].set_ylabel("step time (ms)")
    legend(fig, axes)
    return fig


# oom is measured (the point ran out of memory); infeasible is predicted (the estimate, less
# its stated error, is over capacity: not run). Both are drawn at their analytic estimate.
_FAILED_MARKERS = {"oom": ("X", "tab:red", "measured OOM"),
                   "infeasible": ("^", "tab:gray", "predicted, not run")}


def memory_figure(items: Sequence[Entry]) -> Figure | None:
    """The scaling limit: peak memory vs parameters and vs batch size, under the device's
    capacity; oom and infeasible points at their analytic estimate (est_mem_bytes)."""
    ok = [e for e in items if e.ok and e.peak_memory()[0] is not None]
    failed = [e for e in items if e.status in _FAILED_MARKERS and e.metric("est_mem_bytes")]
    if not ok and not failed:
        return None
    shown = ok + failed
    kinds = sorted({e.peak_memory()[1] for e in ok})
    fig, (left, right) = new_figure(f"Scaling limit (memory): {panel_text(shown)}", shown, 2,
                                    sharey=True)
    styler = Styler(make_series(shown))
    # Left: every ok point at its parameter count, one colour per series minus the preset.
    by_size = make_series(ok, drop=(*SERIES_DROP, "preset"), always=())
    lstyler = Styler(by_size, styler.sources)
    for s in by_size:
        scatter(left, [e for e in s.entries if e.params_total], lambda e: e.params_total,
                lambda e: e.peak_memory()[0] / GiB, lstyler(s), gid="ok",
                label=f"{lstyler.label(s)} (measured)")
    for source, members in group([e for e in ok if e.metric("est_mem_bytes")],
                                 lambda e: e.source).items():
        # the analytic estimate next to the measurement: on a CPU, RSS also holds the runtime
        left.scatter([e.params_total or np.nan for e in members],
                     [e.metric("est_mem_bytes") / GiB for e in members],  # type: ignore
                     marker="x", s=22, gid="estimate",
                     color=styler.colour(source) if styler.multi else "tab:gray",
                     label=f"{source + ': ' if styler.multi else ''}ok (analytic estimate)")
    xs = draw_lines(right, make_series(ok), lambda e: e.peak_memory()[0] / GiB, styler)
    for status, (marker, colour, how) in _FAILED_MARKERS.items():
        for source, members in group([e for e in failed if e.status == status],
                                     lambda e: e.source).items():
            est = [e.metric("est_mem_bytes") / GiB for e in members]  # type: ignore[operator]
            label = f"{source}: {status}" if styler.multi else status
            kw = {"marker": marker, "s": 70, "gid": status, "zorder": 3,
                  "color": styler.colour(source) if styler.multi else colour,
                  "label": f"{label} ({how}; at analytic estimate)"}
            left.scatter([e.params_total or np.nan for e in members], est, **kw)
            right.scatter([e.batch_size for e in members], est, **kw)
            xs += [e.batch_size for e in members]
    devices = {(e.source, e.device): e.file for e in shown}
    for (source, device), file in devices.items():
        cap, what = capacity_bytes(file.header.env, device)
        if cap:
            who = " ".join(([source] if styler.multi else [])
                           + ([device] if len({d for _, d in devices}) > 1 else []))
            label = f"capacity{' ' + who if who else ''}: {cap / GiB:.1f} GiB {what}"
            for ax in (left, right):
                ax.axhline(cap / GiB, color=styler.colour(source) if styler.multi else "black",
                           linestyle="--", linewidth=1.2, gid="capacity", label=label)
    left.set_xscale("log")
    left.set_xlabel("parameters (dense + embedding, count)")
    left.set_ylabel(f"peak memory (GiB; {' or '.join(kinds) or 'none measured'})")
    left.set_yscale("log")
    left.grid(True, alpha=0.3)
    left.set_title("vs model size", fontsize="medium")
    batch_axis(right, xs)
    right.set_title("vs batch size", fontsize="medium")
    legend(fig, [left, right])
    return fig


def utilization_figure(items: Sequence[Entry]) -> Figure | None:
    """Achieved FLOP/s over the measured GEMM roof (metric ``utilization``), in %, and over
    the datasheet peak (``utilization_datasheet``) beside it where any point has one. Only
    points whose precision has a measured roof (never int8)."""
    ok = [e for e in _ok(items, "utilization") if e.roof_dtype()]
    if not ok:
        return None
    series = make_series(ok)
    styler = Styler(series)
    sheet = any(e.metric("utilization_datasheet") is not None for e in ok)
    fig, axes = new_figure(f"Utilisation: {panel_text(ok)}", ok, 2 if sheet else 1)
    for ax, key, what in zip(axes, ("utilization", "utilization_datasheet"),
                             ("measured GEMM roof", "datasheet peak")):
        xs = draw_lines(ax, series, lambda e, k=key: None if e.metric(k) is None
                        else 100 * e.metric(k), styler)  # type: ignore[operator]
        batch_axis(ax, xs)
        ax.set_ylim(bottom=0)
        ax.set_ylabel(f"utilisation (% of {what} FLOP/s)")
        ax.set_title(f"of the {what}", fontsize="medium")
    legend(fig, axes)
    return fig


def roofline_figure(items: Sequence[Entry]) -> Figure | None:
    """Arithmetic intensity vs achieved FLOP/s under the run's measured compute and
    bandwidth roofs (header ``roofs["<device>/<dtype>"]``)."""
    drawable = [e for e in _ok(items, "achieved_flops_per_s")
                if e.metric("flops_per_step") and e.metric("bytes_per_step")]
    ok = [e for e in drawable if e.roof_dtype()]  # never against a roof of another dtype
    left_out = sorted({str(e.point.get("precision")) for e in drawable if not e.roof_dtype()})
    if not ok:
        return None

    def ai(e: Entry) -> float:
        return e.metric("flops_per_step") / e.metric("bytes_per_step")  # type: ignore[operator]

    series = make_series(ok)
    styler = Styler(series)
    roofs = []  # (source, dtype, gemm FLOP/s or None, bytes/s or None)
    for (source, kind, dtype), members in group(ok, lambda e: (
            e.source, device_kind(e.device), ROOF_DTYPES.get(e.point.get("precision")))).items():
        roof = members[0].file.header.roofs.get(f"{kind}/{dtype}")
        if dtype and isinstance(roof, dict) and (roof.get("gemm_flops_per_s")
                                                 or roof.get("mem_bytes_per_s")):
            roofs.append((source, dtype, roof.get("gemm_flops_per_s"),
                          roof.get("mem_bytes_per_s")))
    scale, unit = flops_unit([e.metric("achieved_flops_per_s") for e in ok]  # type: ignore
                              + [r[2] for r in roofs if r[2]])
    fig, (ax,) = new_figure(f"Roofline: {panel_text(ok)}", ok)
    intensities = [ai(e) for e in ok]
    ridges = [p / w for _, _, p, w in roofs if p and w]
    lo, hi = min(intensities + ridges) / 4, max(intensities + ridges) * 4
    x = np.geomspace(lo, hi, 200)
    for i, (source, dtype, peak, bw) in enumerate(roofs):
        y = np.minimum(peak if peak else np.inf, bw * x if bw else np.inf) / scale
        parts = [f"{human(peak, 'FLOP/s')}" if peak else "no GEMM roof",
                 bytes_text(bw, per_s=True) if bw else "no bandwidth roof"]
        who = f"{source} " if styler.multi else ""
        ax.plot(x, y, color=styler.colour(source) if styler.multi else "black",
                linestyle=("-", "--", "-.", ":")[i % 4], linewidth=1.3, gid="roof",
                label=f"{who}{dtype} roof: {', '.join(parts)}")
    for s in series:
        scatter(ax, s.entries, ai, lambda e: e.metric("achieved_flops_per_s") / scale,
                styler(s), label=styler.label(s), gid="points", zorder=3)  # type: ignore
    notes = [] if roofs else ["no measured roofs in this run's header"]
    notes += [f"{p} points not drawn: no measured {p} GEMM roof" for p in left_out]
    if notes:
        ax.text(0.02, 0.98, "\n".join(notes), transform=ax.transAxes, va="top",
                fontsize="small", color="tab:red", gid="roofline-note")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("arithmetic intensity (FLOP/byte, analytic)")
    ax.set_ylabel(f"achieved ({unit})")
    for axis in (ax.xaxis, ax.yaxis):  # plain numbers: roofs span few decades here
        axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        axis.set_minor_formatter(LogFormatter(labelOnlyBase=False))  # labels only when few
    ax.grid(True, which="major", alpha=0.3)
    legend(fig, [ax])
    return fig


def energy_figure(items: Sequence[Entry]) -> Figure | None:
    """Energy per 1,000 training samples (a train panel) or recommendations (infer) vs batch
    size where it was measured or estimated; estimates are dotted and every label carries its
    provenance."""
    ok = [e for e in _ok(items, "energy_j_per_1k_recs") if e.energy_provenance() not in NO_ENERGY]
    if not ok:
        return None
    series = make_series(ok)
    styler = Styler(series)
    per = per_1k_text(ok[0].workload)
    fig, (ax,) = new_figure(f"Energy per {per}: {panel_text(ok)}", ok)
    xs: list[float] = []
    for s in series:
        for prov, members in group(s.entries, lambda e: e.energy_provenance()).items():
            part = Series(s.source, s.name, members)
            xs += draw_lines(ax, [part], lambda e: e.metric("energy_j_per_1k_recs"), styler,
                             suffix=f" [{prov}]",
                             **({"linestyle": ":"} if prov == "estimated" else {}))
    batch_axis(ax, xs)
    ax.set_yscale("log")
    ax.set_ylabel(f"energy per {per} (J)")
    legend(fig, [ax])
    return fig


def _ratio_figure(pairs: list[tuple[Entry, Entry]], title: str, ylabel: str, one: str,
                  drop: Sequence[str], always: Sequence[str],
                  suffix: str = "") -> Figure | None:
    """Throughput of entry / throughput of its partner, vs batch size (``suffix`` ends each
    line's legend label)."""
    if not pairs:
        return None
    ratio = {id(e): e.metric("samples_per_s") / p.metric("samples_per_s")  # type: ignore
             for e, p in pairs}
    items = [e for e, _ in pairs]
    series = make_series(items, drop=drop, always=always)
    styler = Styler(series)
    fig, (ax,) = new_figure(title, items)
    xs = draw_lines(ax, series, lambda e: ratio[id(e)], styler, suffix)
    ax.axhline(1.0, color="black", linewidth=1, linestyle="--", gid="parity", label=one)
    batch_axis(ax, xs)
    ax.set_ylim(bottom=0)  # linear: ratios of a few x read better than on a log axis
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}x"))
    ax.set_ylabel(ylabel)
    legend(fig, [ax])
    return fig


def precision_figure(items: Sequence[Entry]) -> Figure | None:
    """Speed-up (samples/s) of each precision over fp32 at the same point of the same source."""
    ok = _ok(items, "samples_per_s")
    drop = ("precision",)
    base = {(e.source, config_key(e.point, drop)): e for e in ok
            if e.point.get("precision") == "fp32"}
    pairs = [(e, base[k]) for e in ok if e.point.get("precision") != "fp32"
             and (k := (e.source, config_key(e.point, drop))) in base]
    return _ratio_figure(pairs, f"Precision speed-up over fp32: {panel_text(ok)}",
                         "speed-up over fp32 (samples/s ratio)", "fp32 (= 1x)",
                         SERIES_DROP, ("preset", "precision"))


def framework_figure(items: Sequence[Entry]) -> Figure | None:
    """torch vs JAX: torch's samples/s over JAX's at the same point of the same source, one
    line per torch.compile mode (``compile`` is ignored when matching: jax always jits). Every
    label names the mode of each side: "tiny torch (reduce-overhead) / jax (jit)"."""
    ok = _ok(items, "samples_per_s")
    drop = ("framework", "compile")
    jax = {(e.source, config_key(e.point, drop)): e for e in ok
           if e.point.get("framework") == "jax"}
    pairs = [(e, jax[k]) for e in ok if e.point.get("framework") == "torch"
             and (k := (e.source, config_key(e.point, drop))) in jax]
    jit = framework_label("jax")
    return _ratio_figure(pairs, f"torch vs {jit} throughput: {panel_text(ok, False)}",
                         f"torch / {jit} throughput (samples/s ratio)", f"{jit} (= 1x)",
                         SERIES_DROP, ("preset", "compile"), suffix=f" / {jit}")

