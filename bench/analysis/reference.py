"""The report's headline: the reference points, machines side by side.

The reference points are those of ``bench/suites/reference.toml`` (DESIGN.md "Comparable
across machines"): a fixed set every machine runs unchanged. They are found by loading that
suite (``bench.suites.suite.load_suite``, so the headline follows the suite as it changes) and
matching each record's point fields *other than the device* against the suite's points: the
suite's ``device = "auto"`` resolves per machine (cuda on a GPU box, cpu on a CPU box), and a
record matches whatever device it ran on. A machine whose results hold reference points on
several devices (a GPU box that also ran them on its CPU) gets one column group per device.

Per point and machine: throughput, p50 step time, utilisation against the measured GEMM roof
and against the datasheet peak, energy per 1,000 training samples (train) or recommendations
(infer) with its provenance and error bound (``metrics.energy_rel_error`` where the meter
records one), and throughput per watt (throughput / mean power). Train and infer are separate
tables, since their units differ. A point flagged ``unstable`` says so in its throughput cell.
The reference suite's ``[[serve]]`` points (LoadGen Server) get a table of their own: the
maximum requests/s within the p99 target and J per 1,000 requests, per machine.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from bench.analysis.htmlbits import Cell, esc, fmt, pct, table
from bench.analysis.plotdata import (
    ENERGY_ERROR_KEY,
    NO_ENERGY,
    Entry,
    at_default,
    config_key,
    describe,
    field_text,
    group,
    machine_summary,
    per_1k_text,
    rate_text,
    varying_fields,
)
from bench.point import framework_label
from bench.results import ResultsFile
from recmodels.errors import InputError

SUITE = "reference"
METRIC_COLUMNS = ("{rate}", "p50 step ms (n samples)", "% of measured roof",
                  "% of datasheet peak", "J per {per}", "energy provenance (error bound)",
                  "{rate} per W")


@dataclass
class Reference:
    """The reference suite's points (minus the device) and which records match them."""

    keys: dict[tuple, dict[str, Any]]  # config_key(point) -> point, in suite order
    shape: str  # the fields every reference point shares, e.g. "sasrec bce C=20k T=50"
    error: str | None = None  # why the suite could not be loaded
    matched: dict[tuple[str, str], dict[tuple, Entry]] = field(default_factory=dict)


def load_reference(suite: str = SUITE) -> Reference:
    """The reference suite's points; a Reference with ``error`` set when it cannot be loaded."""
    from bench.suites.suite import load_suite

    try:
        points = [p.to_dict() for p in load_suite(suite).points]
    except InputError as e:
        return Reference({}, "", error=str(e))
    keys = {config_key(p): {k: v for k, v in p.items()
                            if k != "device" and not at_default(k, v)} for p in points}
    same = [k for k in next(iter(keys.values()), {})
            if k not in varying_fields(keys.values()) and k != "device"]
    shape = ", ".join(field_text(k, keys[next(iter(keys))][k]) for k in same)
    return Reference(keys, shape)


def match(ref: Reference, items: Sequence[Entry]) -> Reference:
    """Fill ``ref.matched``: per (source, device), reference key -> the record standing for it
    (the fastest ok one when a machine has several, else the first)."""
    ref.matched = {}
    for (src, dev), members in group([e for e in items if config_key(e.point) in ref.keys],
                                     lambda e: (e.source, e.device)).items():
        chosen: dict[tuple, Entry] = {}
        for e in members:
            k = config_key(e.point)
            old = chosen.get(k)
            if old is None or (e.ok and (not old.ok or (e.metric("samples_per_s") or 0)
                                         > (old.metric("samples_per_s") or 0))):
                chosen[k] = e
        ref.matched[(src, dev)] = chosen
    return ref


def energy_cells(e: Entry) -> tuple[str, str, str]:
    """(J per 1k, provenance with error bound, throughput per W) of an ok entry."""
    prov = e.energy_provenance()
    j, power = e.metric("energy_j_per_1k_recs"), e.metric("mean_power_w")
    if prov in NO_ENERGY or j is None:
        return "-", prov or "not recorded", "-"
    bound = e.metric(ENERGY_ERROR_KEY)
    where = f"±{bound:.0%}" if bound is not None else "no error bound recorded"
    thr = e.metric("samples_per_s")
    per_w = thr / power if thr is not None and power else None
    return fmt(j), f"{prov} ({where})", fmt(per_w)


def cells(e: Entry | None) -> list[Any]:
    """One machine's seven cells for one reference point."""
    if e is None:
        return ["not run", *["-"] * 6]
    if not e.ok:
        return [Cell(e.status, "flag", e.record.reason or ""), *["-"] * 6]
    thr = fmt(e.metric("samples_per_s"))
    first: Any = Cell(f"{thr} [unstable]", "flag", e.unstable) if e.unstable else thr
    util = e.metric("utilization") if e.roof_dtype() else None
    n = e.metric("step_ms.n")
    median = fmt(e.metric("step_ms.median")) + (f" (n={n:.0f})" if n is not None else "")
    return [first, median, pct(util),
            pct(e.metric("utilization_datasheet")), *energy_cells(e)]


def coverage(ref: Reference, files: Sequence[ResultsFile], names: Sequence[str]) -> list[str]:
    """One line per source: how many reference points it has, on which device(s), or none."""
    lines = []
    for name, f in zip(names, files):
        mine = {dev: m for (src, dev), m in ref.matched.items() if src == name}
        if not mine:
            lines.append(f"{name} ({machine_summary(f)}): no reference points in these results "
                         f"(suite {f.header.suite}); run `recbench run --suite reference` there")
            continue
        for dev, m in mine.items():
            ok = sum(1 for e in m.values() if e.ok)
            lines.append(f"{name} [{dev}] ({machine_summary(f)}): {len(m)} of {len(ref.keys)} "
                         f"reference points, {ok} ok")
    return lines


SERVE_COLUMNS = ("max requests/s within p99 target", "p99 ms at that rate",
                 "J per 1,000 requests", "energy provenance")


def _norm(v: Any) -> Any:  # 80 in a suite file is 80.0 in a record
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else str(v)


# the fields of a [[serve]] spec that are fields of its records' point (not run settings)
_SERVE_POINT_FIELDS = ("framework", "workload", "preset", "catalog_size", "seq_len",
                       "n_candidates", "precision", "scenario", "max_batch", "max_delay_ms",
                       "target_latency_ms", "percentile")


def serve_matches(spec: dict[str, Any], point: dict[str, Any]) -> bool:
    """Whether a serve record's point is the suite's spec: every point field the spec names
    is equal (numbers as numbers), the device aside (resolved per machine), and the SUT was
    not slowed on purpose."""
    return "sut_delay_ms" not in point and "rate_per_s" not in point and all(
        _norm(point.get(k)) == _norm(v) for k, v in spec.items() if k in _SERVE_POINT_FIELDS)


def serve_cells(rec: Any) -> list[Any]:
    if rec is None:
        return ["not run", "-", "-", "-"]
    m = rec.metrics
    if rec.status != "ok":
        p99 = m.get("achieved_latency_ms")
        return [Cell(rec.status, "flag", rec.reason or ""), fmt(p99), "-", "-"]
    return [fmt(m.get("max_rate_per_s") or m.get("samples_per_s")),
            fmt(m.get("achieved_latency_ms")), fmt(m.get("energy_j_per_1k_requests")),
            m.get("energy_provenance") or "not recorded"]


def serve_html(files: Sequence[ResultsFile], names: Sequence[str], suite: str = SUITE) -> str:
    """The reference serve points (one LoadGen Server point per framework), machines side by
    side; empty when the suite has none or no file holds one."""
    from bench.point import device_kind
    from bench.suites.suite import load_suite

    try:
        specs = load_suite(suite).serve
    except InputError:
        return ""
    found: dict[tuple[str, str], dict[int, Any]] = {}
    for name, f in zip(names, files):
        for rec in f.serve:
            for i, spec in enumerate(specs):
                if serve_matches(spec, rec.point):
                    dev = device_kind(str(rec.point.get("device", "")))
                    found.setdefault((name, dev), {})[i] = rec
    if not found:
        return ""
    groups = list(found)
    head = ["point"] + [c for _ in groups for c in SERVE_COLUMNS]
    rows = []
    for i, p in enumerate(specs):
        # serving runs torch eager (step.support_reason) and JAX jitted: "torch (eager)"
        label = " ".join(framework_label(p[k]) if k == "framework" else str(p[k])
                         for k in ("scenario", "framework", "workload", "preset") if k in p)
        label += f" K {p['n_candidates']}" if "n_candidates" in p else ""
        if "target_latency_ms" in p:
            label += f", p{p.get('percentile', 99):g} <= {p['target_latency_ms']:g} ms"
        rows.append([label] + [c for g in groups for c in serve_cells(found[g].get(i))])
    numeric = [1 + i * 4 + j for i in range(len(groups)) for j in (0, 1, 2)]
    return ("<h3>serve: LoadGen Server, max requests/s within the p99 target, energy per "
            "1,000 requests</h3>" + '<div class="wide">' + table(
                head, rows, numeric, groups=[("", 1)] + [(f"{s} [{d}]", 4) for s, d in groups])
            + "</div>")


def headline_html(files: Sequence[ResultsFile], items: Sequence[Entry],
                  names: Sequence[str], ref: Reference | None = None) -> str:
    """The headline section's body: shape, coverage per machine, train and infer tables."""
    ref = match(ref or load_reference(), items)
    if ref.error:
        return f"<p>The reference suite could not be loaded: {esc(ref.error)}</p>"
    parts = [f"<p>The {len(ref.keys)} points of <code>bench/suites/{SUITE}.toml</code>, the "
             f"same work on every machine: {esc(ref.shape)}; matched by every point field but "
             "the device.</p>",
             "<ul>" + "".join(f"<li>{esc(c)}</li>" for c in coverage(ref, files, names))
             + "</ul>"]
    groups = list(ref.matched)
    if not groups:
        return "".join(parts) + serve_html(files, names)
    present = [k for k in ref.keys if any(k in m for m in ref.matched.values())]
    for workload in ("train", "infer"):
        keys = [k for k in present if ref.keys[k].get("workload") == workload]
        if not keys:
            continue
        label_fields = varying_fields([ref.keys[k] for k in keys], exclude=("workload",),
                                      always=("framework", "preset", "batch_size", "precision"))
        head = ["point"] + [c.format(rate=rate_text(workload), per=per_1k_text(workload))
                            for _ in groups for c in METRIC_COLUMNS]
        rows = [[describe(ref.keys[k], label_fields)]
                + [c for g in groups for c in cells(ref.matched[g].get(k))] for k in keys]
        numeric = [1 + i * 7 + j for i in range(len(groups)) for j in (0, 1, 2, 3, 4, 6)]
        parts.append(f"<h3>{esc(workload)}: {esc(rate_text(workload))}, energy per "
                     f"{esc(per_1k_text(workload))}</h3>")
        parts.append('<div class="wide">' + table(
            head, rows, numeric, groups=[("", 1)] + [(f"{s} [{d}]", 7) for s, d in groups])
            + "</div>")
    shown = ["framework", "workload", "preset", "batch_size", "precision"]
    flagged = [f"{src} [{dev}] {describe(e.point, shown)}: {e.unstable}"
               for src, dev in groups for e in ref.matched[(src, dev)].values() if e.unstable]
    if flagged:
        parts.append("<p>[unstable]: the run flagged the point as disturbed (its spread or the "
                     "machine's conditions); do not compare it as a clean measurement:</p><ul>"
                     + "".join(f"<li>{esc(x)}</li>" for x in flagged) + "</ul>")
    parts.append(serve_html(files, names))
    parts.append('<p class="muted">% of measured roof: analytic FLOPs per second over the GEMM '
                 "roof measured in the same run for that precision; % of datasheet peak: over "
                 "the vendor's peak where bench/machine/datasheet.py lists the device (none for "
                 "CPUs). Throughput per W: throughput over the mean power of the measured "
                 "window. -: not recorded.</p>")
    return "".join(parts)
