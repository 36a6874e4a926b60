"""The report's scale-out section: scaling per distributed point, the interconnect roof, and
which catalogs need a sharded item table on each machine (an analytic estimate)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

from bench.analysis.htmlbits import fmt, table
from bench.analysis.plotdata import Entry, capacity_bytes, source_names
from bench.analysis.plots_scale import interconnect_results, is_distributed
from bench.point import Point, device_kind
from bench.results import ResultsFile
from recmodels.config import human, human_bytes
from recmodels.errors import InputError
from recmodels.memory import error_band, memory_estimate

CATALOG_LADDER = (10**5, 10**6, 10**7, 10**8, 10**9)  # items
MAX_SHARDS = 4096


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.0f}%"


def scaling_rows(items: Sequence[Entry]) -> list[list[Any]]:
    """One row per distributed point: throughput, speedup, efficiency, communication share."""
    rows = []
    for e in items:
        if not is_distributed(e):
            continue
        p = e.point
        rows.append([e.source, p.get("framework"), p.get("parallel"), p.get("sharding"),
                     p.get("scaling"), f"{p.get('preset')} C={human(p.get('catalog_size'))}",
                     p.get("precision"), p.get("world_size"), p.get("batch_size"),
                     fmt(e.metric("samples_per_s")) if e.ok else e.status,
                     fmt(e.metric("speedup")), _pct(e.metric("scaling_efficiency")),
                     _pct(e.metric("comm_share")) + (" (overhead)" if p.get("world_size") == 1
                                                     and e.ok else ""),
                     "; ".join(filter(None, [e.unstable and f"unstable: {e.unstable}",
                                             e.record.metrics.get("scaling_note")])) or ""])
    return rows


def interconnect_rows(files: Sequence[ResultsFile]) -> list[list[Any]]:
    rows = []
    for name, f in zip(source_names(files), files):
        for key, result in sorted(interconnect_results(f).items()):
            for op, sizes in result["ops"].items():
                sizes = [r for r in sizes if isinstance(r, Mapping) and r.get(
                    "busbw_bytes_per_s")] if isinstance(sizes, list) else []
                if not sizes:
                    rows.append([name, key, op, "-", "-", "unsupported"])
                    continue
                best = max(sizes, key=lambda r: r.get("busbw_bytes_per_s") or 0)
                rows.append([name, f"{result.get('framework')} {result.get('backend')}, "
                             f"{result.get('world_size')} ranks, {result.get('transport')}",
                             op.replace("_", "-"),
                             f"{best['busbw_bytes_per_s'] / 1e9:.3g} GB/s at "
                             f"{human_bytes(best['bytes'])}",
                             f"{sizes[0].get('time_us', 0):.0f} us at "
                             f"{human_bytes(sizes[0]['bytes'])}", result.get("method", "")])
        for key, result in sorted(((f.header.extra or {}).get("interconnect") or {}).items()):
            if isinstance(result, Mapping) and not result.get("ops"):
                rows.append([name, key, "-", "-", "-", f"not measured: {result.get('reason')}"])
    return rows


def shards_needed(point: Point, capacity: int) -> int | None:
    """The fewest row-wise shards of the item table (one per device) with which the step's
    analytic memory estimate per device, less its stated error, fits ``capacity``; None
    past MAX_SHARDS. Each device keeps the dense part, the per-device batch and 1/k of the
    table's rows with their gradients and optimizer state."""
    cfg = point.model_config()
    k = 1
    while k <= MAX_SHARDS:
        shard = dataclasses.replace(cfg, catalog_size=-(-cfg.catalog_size // k))
        est = memory_estimate(shard, point.batch_size, "train", point.optimizer,
                              point.framework, device_kind(point.device)).total_bytes
        if error_band(est)[0] <= capacity:
            return k
        k *= 2
    return None


def sharding_rows(files: Sequence[ResultsFile], items: Sequence[Entry]) -> list[list[Any]]:
    """Per machine, device and train configuration that ran ok (its smallest batch): the row-
    wise shards the item table needs at each catalog size of CATALOG_LADDER."""
    rows, seen = [], set()
    for e in sorted(items, key=lambda e: e.batch_size):
        if not e.ok or e.workload != "train":
            continue
        try:
            base = Point.from_dict({**e.point, "world_size": 1, "nodes": 1, "parallel": "none",
                                    "sharding": "dense", "scaling": "strong",
                                    "device": device_kind(e.device)})
        except InputError:
            continue
        key = (e.source, e.device, base.framework, base.preset, base.block, base.loss,
               base.precision, base.seq_len)
        if key in seen:
            continue
        seen.add(key)
        cap, what = capacity_bytes(e.file.header.env, e.device)
        if not cap:
            continue
        cells = []
        for c in CATALOG_LADDER:
            k = shards_needed(Point.from_dict({**base.to_dict(), "catalog_size": c}), cap)
            cells.append("1 (fits)" if k == 1 else f">{MAX_SHARDS}" if k is None else str(k))
        rows.append([e.source, f"{e.device} ({human_bytes(cap)} {what})", base.framework,
                     f"{base.preset}/{base.block} T={base.seq_len} {base.loss}",
                     base.precision, base.batch_size, *cells])
    return rows


def scale_section(files: Sequence[ResultsFile], items: Sequence[Entry]) -> str:
    parts = ["<h3>Scaling</h3>"]
    scaling = scaling_rows(items)
    parts.append(table(["machine", "framework", "parallel", "table", "scaling", "model",
                        "precision", "world size", "batch", "samples/s", "speedup",
                        "efficiency", "comm share (est.)", "flags"], scaling,
                       numeric=(7, 8, 9, 10))
                 if scaling else "<p>No distributed points in these files (suite "
                                 "<code>scale</code> has some).</p>")
    parts.append('<p class="muted">batch: the global batch under strong scaling, each rank\'s '
                 "under weak. Speedup: samples/s over the same point's on one rank (same file)."
                 " Efficiency: speedup / the devices the ranks add: one per rank on GPUs and "
                 "TPUs, one per host on CPUs (CPU ranks of one host share the cores the "
                 "one-rank point used all of). Comm share: an estimate, 1 - the compute-only "
                 "twin's step (the same model on one process at the per-rank batch, no "
                 "collective) / the distributed step; communication hidden under compute is "
                 "not in it. On one rank there is no communication: the figure is the "
                 "distributed machinery's overhead.</p>")
    ic = interconnect_rows(files)
    parts.append("<h3>Interconnect roof</h3>")
    parts.append(table(["machine", "backend", "collective", "peak busbw", "smallest message",
                        "method"], ic) if ic else
                 "<p>Not measured: the runs had no point with more than one rank.</p>")
    shard = sharding_rows(files, items)
    parts.append("<h3>Catalogs that need a sharded item table (analytic estimate)</h3>")
    parts.append(table(["machine", "device (capacity)", "framework", "model", "precision",
                        "batch per device", *(f"C={human(c)}" for c in CATALOG_LADDER)],
                       shard, numeric=range(5, 6 + len(CATALOG_LADDER))) if shard else
                 "<p>No ok train point with a known device capacity.</p>")
    parts.append('<p class="muted">Row-wise shards (one per device) the item table needs so '
                 "that the training step's memory estimate per device, less its stated error, "
                 "fits the device: 1 = a dense replica fits. Each device keeps the dense part "
                 "and the batch shown; an estimate, not a measurement.</p>")
    return "".join(parts)

