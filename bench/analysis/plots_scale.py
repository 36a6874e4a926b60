"""Scale-out figures: distributed points (``parallel`` dp / fsdp) and the interconnect roof.

  scaling       samples/s against world size, one line per configuration, with the ideal
                line (the one-rank point's samples/s x the devices: ranks on GPUs, hosts on
                CPUs, whose ranks share the cores): strong scaling (fixed
                global batch) and weak scaling (fixed per-rank batch) in their own panels;
                a point that did not run is a cross on the x axis
  comm          scaling efficiency and the exposed communication share (an estimate: 1 -
                the compute-only twin's step time / the distributed step's) against world size
  interconnect  the run's interconnect roof: all-reduce and all-to-all bus bandwidth
                (nccl-tests' busbw) against message size, per framework and backend
File stems: ``<device>-<framework>-train-scaling``, ``...-comm``, ``interconnect-<device>``.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from matplotlib.figure import Figure

from bench.analysis.plotdata import Entry, config_key, describe, source_names, varying_fields
from bench.point import device_kind
from bench.results import ResultsFile
from recmodels.config import human_bytes

COLORS = ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown",
          "tab:pink", "tab:olive")
SCALE_FIELDS = ("world_size", "nodes")  # what varies along a scaling line


def is_distributed(e: Entry) -> bool:
    return str(e.point.get("parallel", "none")) != "none"


def baseline_key(point: Mapping[str, Any]) -> tuple:
    """The key of the one-rank point a distributed point is held to (Point.scaling_baseline):
    the same fields at world size 1, one node, scaling "strong"."""
    return config_key({**point, "world_size": 1, "nodes": 1, "scaling": "strong"})


def ideal_devices(e: Entry, world_size: int, nodes: int) -> int:
    """The devices W ranks bring against one rank's (bench.launch.runner.roof_devices): each
    rank a GPU or TPU; CPU ranks share their host's cores, so a host is one device."""
    return nodes if device_kind(e.device) == "cpu" else world_size


def scaling_lines(entries: Sequence[Entry]) -> dict[tuple, list[Entry]]:
    """Distributed entries by (source, configuration without world size), each line sorted by
    world size."""
    lines: dict[tuple, list[Entry]] = {}
    for e in entries:
        if is_distributed(e):
            key = (e.source, config_key(e.point, drop=("device", *SCALE_FIELDS)))
            lines.setdefault(key, []).append(e)
    return {k: sorted(v, key=lambda e: int(e.point.get("world_size", 1))) for k, v in
            lines.items()}


def _baselines(entries: Sequence[Entry]) -> dict[tuple, float]:
    return {(e.source, config_key(e.point)): v for e in entries
            if e.ok and is_distributed(e) and int(e.point.get("world_size", 1)) == 1
            and (v := e.metric("samples_per_s")) is not None}


def scaling_figure(entries: Sequence[Entry]) -> Figure | None:
    lines = scaling_lines(entries)
    if not any(len(v) > 1 or int(v[0].point.get("world_size", 1)) > 1 for v in lines.values()):
        return None
    base = _baselines(entries)
    kind_of = {k: str(v[-1].point.get("scaling", "strong")) for k, v in lines.items()}
    kinds = [s for s in ("strong", "weak") if s in kind_of.values()]
    fig = Figure(figsize=(6.2 * len(kinds), 4.8), layout="constrained")
    axes = fig.subplots(1, len(kinds), squeeze=False)[0]
    fields = varying_fields([e.point for v in lines.values() for e in v],
                            exclude=("device", "framework", "workload", *SCALE_FIELDS,
                                     "scaling"))
    several = len({source for source, _ in lines}) > 1
    for ax, kind in zip(axes, kinds):
        shown = [(k, v) for k, v in lines.items() if kind_of[k] == kind]
        plotted: list[float] = []
        sizes: set[int] = {1}
        for i, ((source, _), members) in enumerate(shown):
            color = COLORS[i % len(COLORS)]
            one = base.get((source, baseline_key(members[-1].point)))
            ok = [(int(e.point["world_size"]), v) for e in members
                  if e.ok and (v := e.metric("samples_per_s")) is not None]
            if one and kind == "weak":  # its line starts at the one-rank point it is held to
                ok = [(1, one), *ok]
            label = " ".join(filter(None, [source if several else "",
                                           describe(members[0].point, fields)]))
            if ok:
                ax.plot([w for w, _ in ok], [t for _, t in ok], "o-", color=color,
                        label=label or "measured")
                plotted += [t for _, t in ok]
            ws = sorted({int(e.point["world_size"]) for e in members} | {1})
            sizes |= set(ws)
            if one:
                nodes = {int(e.point["world_size"]): int(e.point.get("nodes", 1))
                         for e in members}
                ideal = [one * ideal_devices(members[0], w, nodes.get(w, 1)) for w in ws]
                ax.plot(ws, ideal, ":", color=color, alpha=0.7,
                        label="ideal (1 rank x devices)" if i == 0 else None)
                plotted += ideal
            for e in members:  # at the bottom edge, whatever the scale
                if not e.ok:
                    ax.plot([int(e.point["world_size"])], [0.03], "x", color=color, ms=9,
                            transform=ax.get_xaxis_transform())
        ax.set_xlabel("world size (ranks)")
        ax.set_ylabel("samples/s (all ranks)")
        ax.set_title(f"{kind} scaling: " + ("fixed global batch" if kind == "strong"
                                            else "fixed per-rank batch"), fontsize=10)
        ax.set_xscale("log", base=2)
        ax.set_xticks(sorted(sizes), [str(w) for w in sorted(sizes)])
        ax.set_xticks([], minor=True)
        if plotted and max(plotted) > 20 * min(plotted):  # sizes far apart: a log axis
            ax.set_yscale("log")
        else:
            ax.set_ylim(bottom=0)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7.5)
    fig.suptitle("throughput against world size (x: did not run)", fontsize=10.5)
    return fig


def comm_figure(entries: Sequence[Entry]) -> Figure | None:
    lines = {k: [e for e in v if e.ok and int(e.point.get("world_size", 1)) > 1]
             for k, v in scaling_lines(entries).items()}
    lines = {k: v for k, v in lines.items() if v}
    if not lines:
        return None
    fig = Figure(figsize=(11.0, 4.6), layout="constrained")
    eff_ax, comm_ax = fig.subplots(1, 2)
    fields = varying_fields([e.point for v in lines.values() for e in v],
                            exclude=("device", "framework", "workload", *SCALE_FIELDS))
    for i, ((source, _), members) in enumerate(lines.items()):
        color = COLORS[i % len(COLORS)]
        label = describe(members[0].point, fields) or source
        ws = [int(e.point["world_size"]) for e in members]
        eff = [e.metric("scaling_efficiency") for e in members]
        comm = [e.metric("comm_share") for e in members]
        if any(v is not None for v in eff):
            eff_ax.plot(ws, [v if v is not None else float("nan") for v in eff], "o-",
                        color=color, label=label)
        if any(v is not None for v in comm):
            comm_ax.plot(ws, [100 * v if v is not None else float("nan") for v in comm], "s-",
                         color=color, label=label)
    eff_ax.axhline(1.0, color="grey", ls=":", lw=1)
    eff_ax.set_title("scaling efficiency: speedup / devices (GPUs; CPU hosts)", fontsize=10)
    comm_ax.set_title("exposed communication share (estimate: 1 - twin / step)", fontsize=10)
    eff_ax.set_ylabel("efficiency")
    comm_ax.set_ylabel("% of step time")
    sizes = sorted({int(e.point["world_size"]) for v in lines.values() for e in v})
    for ax in (eff_ax, comm_ax):
        ax.set_xlabel("world size (ranks)")
        ax.set_xscale("log", base=2)
        ax.set_xticks(sizes, [str(w) for w in sizes])
        ax.set_xticks([], minor=True)
        ax.set_ylim(bottom=0)
        ax.grid(True, alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7.5)
    fig.suptitle("where scale-out time goes", fontsize=10.5)
    return fig


def interconnect_results(file: ResultsFile) -> dict[str, dict[str, Any]]:
    """The run header's interconnect roofs that were measured: key -> result."""
    found = (file.header.extra or {}).get("interconnect") or {}
    return {k: v for k, v in found.items() if isinstance(v, Mapping) and v.get("ops")}


def interconnect_figure(items: Sequence[tuple[str, str, Mapping[str, Any]]]) -> Figure:
    """busbw against message size; ``items``: (source, key, result)."""
    fig = Figure(figsize=(7.5, 5.0), layout="constrained")
    ax = fig.subplots()
    styles = {"all_reduce": "o-", "all_to_all": "s--"}
    for i, (source, _key, result) in enumerate(items):
        color = COLORS[i % len(COLORS)]
        for op, rows in result["ops"].items():
            if not isinstance(rows, list):  # {"unsupported": why}
                continue
            rows = [r for r in rows if isinstance(r, Mapping) and r.get("busbw_bytes_per_s")]
            if not rows:
                continue
            ax.plot([r["bytes"] for r in rows], [r["busbw_bytes_per_s"] / 1e9 for r in rows],
                    styles.get(op, "^-"), color=color,
                    label=f"{source} {result.get('framework')} {result.get('backend')} "
                          f"{op.replace('_', '-')} ({result.get('world_size')} ranks)")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    sizes = sorted({r["bytes"] for _, _, res in items for rows in res["ops"].values()
                    if isinstance(rows, list) for r in rows if isinstance(r, Mapping)})
    if sizes:
        ax.set_xticks(sizes, [human_bytes(b) for b in sizes], fontsize=8)
        ax.set_xticks([], minor=True)
    ax.set_xlabel("message size per rank")
    ax.set_ylabel("bus bandwidth (GB/s, nccl-tests busbw)")
    transport = {r.get("transport") for _, _, r in items if r.get("transport")}
    ax.set_title("interconnect roof" + (f": {', '.join(sorted(transport))}" if transport
                                         else ""), fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7.5)
    return fig


def iter_scale_figures(entries: Sequence[Entry], files: Sequence[ResultsFile]
                       ) -> Iterator[tuple[str, str, str, Figure]]:
    """(file stem, kind, panel text, figure) for every scale-out figure with something to show."""
    panels: dict[tuple[str, str], list[Entry]] = {}
    for e in entries:
        if is_distributed(e):
            panels.setdefault((device_kind(e.device), str(e.point.get("framework"))),
                              []).append(e)
    for (device, framework), members in panels.items():
        text = f"{framework} train on {device}"
        for kind, fn in (("scaling", scaling_figure), ("comm", comm_figure)):
            fig = fn(members)
            if fig is not None:
                yield f"{device}-{framework}-train-{kind}", kind, text, fig
    by_device: dict[str, list[tuple[str, str, Mapping[str, Any]]]] = {}
    for name, f in zip(source_names(files), files):
        for key, result in interconnect_results(f).items():
            by_device.setdefault(str(result.get("device", "?")), []).append((name, key, result))
    for device, items in by_device.items():
        yield (f"interconnect-{device}", "interconnect", f"interconnect on {device}",
               interconnect_figure(items))
