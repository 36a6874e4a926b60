"""``recbench report``: one self-contained static HTML page about one or more result files.

The page needs no network and no JavaScript: figures are PNGs embedded as base64 data URIs,
the style sheet is inline, and every piece of text from a file goes through html.escape.
Sections: the reference points with the machines side by side (bench.analysis.reference, the
headline), what is missing, status counts (with each non-ok point's reason), the environment
of each machine, the measured roofs, a summary (best throughput per configuration, batch size
aside, every field of the configuration in its own column; the largest model and batch that
ran on each device; the OOM frontier; a cross-hardware table when there are two or more
machines), time to quality where a file has ``ttq`` records (bench.analysis.report_ttq), then
the figures of bench.analysis.plots. A point flagged ``unstable`` (or
``recompiled``: its timed steps compiled new graphs) says so in every table it appears in; the
framework is named with the mode its step ran in ("torch (reduce-overhead)", "jax (jit)").
Bytes are binary (GiB, GiB/s) throughout.

Input without a single ok record is not an error here (``recbench plot`` refuses it): the
page is then the useful answer, saying what ran, what failed and why.
"""

from __future__ import annotations

import argparse
import base64
import io
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from bench.analysis import compare_hw, reference
from bench.analysis.htmlbits import Cell, esc, fmt, section, table
from bench.analysis.plotdata import (
    MEASURED_ENERGY,
    NO_ENERGY,
    Entry,
    GiB,
    as_files,
    bytes_text,
    capacity_bytes,
    config_key,
    describe,
    entries,
    field_text,
    group,
    knee,
    machine_summary,
    source_names,
    status_counts,
    varying_fields,
)
from bench.analysis.plots import DPI, default_out_dir, iter_figures
from bench.analysis.report_scale import scale_section
from bench.analysis.report_ttq import has_ttq, ttq_section
from bench.point import device_kind, framework_label
from bench.results import STATUSES, ResultsFile
from bench.results.write import out_dir
from recmodels.config import human
from recmodels.errors import InputError
from recmodels.memory import MEMORY_ESTIMATE_ABS_ERROR_BYTES, MEMORY_ESTIMATE_REL_ERROR

_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;margin:2rem auto;max-width:1200px;
padding:0 1rem;color:#222;line-height:1.4}
h1{margin-bottom:.2rem}h2{border-bottom:1px solid #ccc;margin-top:2.2rem}
table{border-collapse:collapse;margin:.6rem 0 1rem;font-size:.9rem}
th,td{border:1px solid #ddd;padding:.25rem .5rem;text-align:left;vertical-align:top}
th{background:#f3f3f3}td.n{text-align:right;font-variant-numeric:tabular-nums}
.missing li{color:#8a4b00}.muted{color:#666;font-size:.9rem}
figure{margin:1.2rem 0}figure img{max-width:100%;border:1px solid #eee}
figcaption{color:#555;font-size:.9rem}nav a{margin-right:1rem}
pre{overflow-x:auto;font-size:.8rem;background:#fafafa;padding:.5rem}
td.flag{color:#a33;font-weight:600}div.wide{overflow-x:auto}
"""


def _num(v: float | None, unit: str = "") -> str:
    return "-" if v is None else human(v, unit)


# --- what is missing ----------------------------------------------------------------------


def missing_notes(files: Sequence[ResultsFile]) -> list[str]:
    """One sentence per thing a reader would look for and not find."""
    notes: list[str] = []
    for name, f in zip(source_names(files), files):
        ok = [r for r in f.records if r.ok]
        counts = ", ".join(f"{k} {v}" for k, v in sorted(status_counts(f).items()))
        if not f.records and f.serve:
            notes.append(f"{name}: serving records only ({len(f.serve)}; recbench serve): "
                         "no step points")
        elif not f.records and f.ttq:
            notes.append(f"{name}: time-to-quality records only ({len(f.ttq)}; recbench ttq): "
                         "no step points")
        elif not f.records:
            notes.append(f"{name}: the file has no point records (the run wrote only its header)")
        elif not ok:
            notes.append(f"{name}: no ok records ({counts}): nothing was measured, so no "
                         "throughput, latency or energy; see the status table for the reasons")
        devices = sorted({str(r.point.get("device", "?")) for r in ok})
        for dev in devices:
            provs = {r.metrics.get("energy_provenance") for r in ok if r.point.get("device") == dev}
            where = "this machine" if len(devices) == 1 else dev
            if provs <= set(NO_ENERGY):
                notes.append(f"{name}: no energy measured on {where}: RAPL/NVML unavailable "
                             "(energy_provenance 'unavailable' on every ok point)")
            elif not provs & set(MEASURED_ENERGY):
                notes.append(f"{name}: energy on {where} is estimated only (from an assumed "
                             "power), never measured")
        roofs = f.header.roofs or {}
        if not any(isinstance(v, dict) and v.get("gemm_flops_per_s") for v in roofs.values()):
            why = "; ".join(f"{k}: {v.get('reason')}" for k, v in roofs.items()
                            if isinstance(v, dict) and v.get("reason"))
            notes.append(f"{name}: no measured GEMM roof, so no utilisation and no roofline"
                         + (f" ({why})" if why else " (run without roofs)"))
        for dev in devices:
            if device_kind(dev) not in ("cpu", "mps") and not any(
                    r.metrics.get("peak_device_mem_bytes") for r in ok
                    if r.point.get("device") == dev):
                notes.append(f"{name}: no device memory counter on {dev}: its peak memory is "
                             "unknown")
            cap, why = capacity_bytes(f.header.env, dev)
            if cap is None:
                notes.append(f"{name}: capacity of {dev} unknown ({why}): the memory figure "
                             "has no capacity line")
        notes += [f"{name}: {w}" for w in f.warnings]
    return notes


# --- summary tables -----------------------------------------------------------------------


_fmt = fmt


def _params(e: Entry) -> str:
    return _num(e.params_total)


# The configuration columns of the best-throughput table (batch size is where the best was).
CONFIG_COLUMNS = ("framework", "workload", "preset", "block", "loss", "catalog_size", "seq_len",
                  "precision")


def _count(v: float | None) -> str:
    return f"{v:.0f}" if v is not None else "-"


def loss_text(p: dict[str, Any]) -> str:
    loss = str(p.get("loss", "bce"))
    return f"{loss}:{p.get('n_neg')}" if loss == "sampled_softmax" else loss


def _flags(e: Entry) -> list[tuple[str, str]]:
    """The entry's flags the report shows, (name, why): unstable, recompiled."""
    return [(name, why) for name, why in (("unstable", e.unstable),
                                          ("recompiled", e.recompiled)) if why]


def flag_cell(flagged: Sequence[Entry]) -> Any:
    """``unstable (n)`` and ``recompiled (n)`` (reasons on hover) for the entries that carry
    those flags, else empty."""
    hits = [(e, name, why) for e in flagged for name, why in _flags(e)]
    names = list(dict.fromkeys(name for _, name, _ in hits))
    words = [f"{n} ({sum(1 for _, name, _ in hits if name == n)})" for n in names]
    return Cell(", ".join(words), "flag", "; ".join(f"B={e.batch_size}: {why}"
                                                    for e, _, why in hits)) if hits else ""


def best_throughput_rows(items: Sequence[Entry]) -> list[list[Any]]:
    """Best samples/s per machine, device and configuration (every point field but the batch
    size: block, loss, catalog and T each in their own column, so that "tiny" on one row is
    one model); the knee over that line's batch sizes; flags of the line's points."""
    ok = [e for e in items if e.ok and e.metric("samples_per_s")]
    other = varying_fields([e.point for e in ok],  # the framework cell names the mode
                           exclude=(*CONFIG_COLUMNS, "compile", "device", "batch_size", "n_neg"))
    rows = []
    for _, members in group(ok, lambda e: (e.source, e.device, config_key(
            e.point, drop=("device", "batch_size")))).items():
        best = max(members, key=lambda e: e.metric("samples_per_s") or 0.0)
        k = knee([e.batch_size for e in members],
                 [e.metric("samples_per_s") or 0.0 for e in members])
        p = best.point
        util = best.metric("utilization") if best.roof_dtype() else None
        rows.append([best.source, best.device, framework_label(p.get("framework"),
                                                               p.get("compile")),
                     p.get("workload"), p.get("preset"), p.get("block", "sasrec"), loss_text(p),
                     field_text("catalog_size", p.get("catalog_size"))[2:], p.get("seq_len"),
                     p.get("precision"), describe(p, other) if other else "",
                     _fmt(best.metric("samples_per_s")), best.batch_size,
                     _fmt(best.metric("step_ms.median")), _count(best.metric("step_ms.n")),
                     f"{util:.1%}" if util is not None else
                     "no roof" if not best.roof_dtype() else "-",
                     f"{k:g}" if k is not None else "none in range", flag_cell(members)])
    return rows


def largest_rows(items: Sequence[Entry]) -> list[list[Any]]:
    """Per (machine, device): the largest model that ran and its largest batch; the largest
    batch that ran at all; the memory it took against the device's capacity."""
    rows = []
    for (src, dev), members in group([e for e in items if e.ok and e.params_total],
                                     lambda e: (e.source, e.device)).items():
        top = max(e.params_total or 0 for e in members)
        at_top = max((e for e in members if e.params_total == top), key=lambda e: e.batch_size)
        widest = max(members, key=lambda e: (e.batch_size, e.params_total or 0))
        mem, kind = at_top.peak_memory()
        cap, what = capacity_bytes(members[0].file.header.env, dev)
        rows.append([src, dev, f"{at_top.point.get('preset')} ({_params(at_top)} params)",
                     at_top.batch_size, f"{widest.batch_size} ({widest.point.get('preset')})",
                     f"{mem / GiB:.2f} GiB ({kind})" if mem else "-",
                     f"{cap / GiB:.1f} GiB {what}" if cap else "unknown"])
    return rows


_FAILED = ("oom", "infeasible", "skipped-after-oom")
# How the frontier point is known: an OOM is measured; the others were not run (predicted).
FRONTIER_KIND = {"oom": "measured", "infeasible": "predicted (estimate over capacity)",
                 "skipped-after-oom": "predicted (a smaller point ran out of memory)"}


def frontier_rows(items: Sequence[Entry]) -> list[list[Any]]:
    """Per line (machine, device, and every point field but the batch size): the largest batch
    that ran next to the smallest that did not fit (oom, infeasible, skipped-after-oom), and
    whether that frontier is measured (oom) or predicted (not run). The preset cell also
    names the fields (catalog, T, block, ...) that tell lines apart."""
    rows = []
    pool = [e for e in items if e.ok or e.status in _FAILED]
    lines = group(pool, lambda e: (e.source, e.device,
                                   config_key(e.point, drop=("device", "batch_size"))))
    shown = ("framework", "workload", "preset", "precision")
    other = varying_fields([e.point for e in pool],
                           exclude=(*shown, "compile", "device", "batch_size"))
    for (src, dev, _), members in lines.items():
        failed = [e for e in members if e.status in _FAILED]
        if not failed:
            continue
        p = members[0].point
        first = min(failed, key=lambda e: e.batch_size)
        ok = [e.batch_size for e in members if e.ok]
        est = first.metric("est_mem_bytes")
        rows.append([src, dev, framework_label(p.get("framework"), p.get("compile")),
                     p.get("workload"), describe(p, ["preset", *other]), p.get("precision"),
                     max(ok) if ok else "none", first.batch_size, first.status,
                     FRONTIER_KIND[first.status], f"{est / GiB:.2f} GiB" if est else "-"])
    return rows


def status_table(files: Sequence[ResultsFile]) -> str:
    present = [s for s in STATUSES if any(status_counts(f).get(s) for f in files)]
    rows = [[name, f.run_id, f.header.suite, str(f.path), *(status_counts(f).get(s, 0)
                                                             for s in present), len(f.records)]
            for name, f in zip(source_names(files), files)]
    head = ["machine", "run", "suite", "file", *present, "total"]
    body = table(head, rows, numeric=range(4, len(head)))
    failed = [e for e in entries(files) if not e.ok]
    if failed:
        detail = table(["machine", "status", "point", "reason"],
                       [[e.source, e.status, compare_hw.config_label(e.point) + f" [{e.device}]",
                         e.record.reason or ""] for e in failed])
        body += (f"<details open><summary>{len(failed)} point(s) not ok, with reasons"
                 f"</summary>{detail}</details>")
    flagged = [e for e in entries(files) if e.ok and (e.unstable or e.recompiled)]
    if flagged:
        detail = table(["machine", "point", "flags"],
                       [[e.source, compare_hw.config_label(e.point) + f" [{e.device}]",
                         "; ".join(f"{name}: {why}" for name, why in _flags(e))]
                        for e in flagged])
        body += (f"<details open><summary>{len(flagged)} ok point(s) flagged (unstable: "
                 "disturbed; recompiled: the timed steps compiled new graphs, a bug), with "
                 f"reasons</summary>{detail}</details>")
    return body


def env_section(files: Sequence[ResultsFile]) -> str:
    parts = []
    for name, f in zip(source_names(files), files):
        env = f.header.env
        gpus = env.get("gpus") or []
        versions = env.get("versions") or {}
        git = env.get("git") or {}
        rows = [["machine", machine_summary(f)], ["cpu", env.get("cpu")],
                ["cores", ", ".join(f"{k} {v}" for k, v in (env.get("cores") or {}).items())],
                ["RAM", f"{env['ram_bytes'] / GiB:.1f} GiB" if isinstance(
                    env.get("ram_bytes"), (int, float)) else "unknown"],
                ["GPUs", "; ".join(f"{g.get('name')} ({(g.get('memory_bytes') or 0) / GiB:.0f}"
                                   f" GiB, driver {g.get('driver')})" for g in gpus) or "none"],
                ["TPU", env.get("tpu") or "none"], ["OS", env.get("os")],
                ["python", env.get("python")],
                ["versions", ", ".join(f"{k} {v}" for k, v in versions.items())],
                ["git", f"{str(git.get('commit'))[:12]}{' (dirty)' if git.get('dirty') else ''}"
                 if git.get("commit") else "unknown"],
                ["run", f"{f.run_id}, suite {f.header.suite}, started {f.header.started_at}"]]
        parts.append(f"<h3>{esc(name)}</h3>" + table(["field", "value"], rows))
    return "".join(parts)


def roofs_section(files: Sequence[ResultsFile]) -> str:
    rows = []
    for name, f in zip(source_names(files), files):
        for key, r in sorted((f.header.roofs or {}).items()):
            r = r if isinstance(r, dict) else {}
            rows.append([name, key, _num(r.get("gemm_flops_per_s"), "FLOP/s"),
                         bytes_text(r["mem_bytes_per_s"], per_s=True)
                         if isinstance(r.get("mem_bytes_per_s"), (int, float)) else "-",
                         r.get("method") or r.get("reason") or ""])
        if not f.header.roofs:
            rows.append([name, "-", "-", "-", "no roofs measured in this run"])
    return (table(["machine", "device/dtype", "GEMM roof", "bandwidth roof", "method"], rows,
                  numeric=(2, 3))
            + '<p class="muted">Utilisation is analytic FLOPs / median step time over the '
            "GEMM roof measured in the same run.</p>")


def summary_section(files: Sequence[ResultsFile], items: Sequence[Entry]) -> str:
    parts = ["<h3>Best throughput per configuration (batch size aside)</h3>"]
    best = best_throughput_rows(items)
    head = ["machine", "device", "framework", "workload", "preset", "block", "loss", "catalog",
            "T", "precision", "other", "best samples/s", "at batch", "step ms (median)",
            "n (samples)", "utilisation (measured roof)", "knee (batch)", "flags"]
    numeric = (8, 11, 12, 13, 14, 15)
    if not any(r[10] for r in best):  # no field beyond the named ones varies
        head, best = head[:10] + head[11:], [r[:10] + r[11:] for r in best]
        numeric = (8, 10, 11, 12, 13, 14)
    parts.append('<div class="wide">' + table(head, best, numeric) + "</div>" if best
                 else "<p>No ok records: nothing measured.</p>")
    parts.append('<p class="muted">One row per configuration: every point field but the batch '
                 "size (other: fields beyond these that vary, e.g. optimizer); the framework "
                 "names the mode its step ran in: torch's torch.compile mode (eager: none), "
                 "jax (jit). Knee: the first "
                 "batch size from which the next measured batch gains less than 10% throughput "
                 "per doubling of the batch. Flags: how many of the row's points the run "
                 "flagged unstable (disturbed), or recompiled while timed (a bug: their times "
                 "include compilation); the reasons on hover and in the status section."
                 " n: the timed samples behind the median (p90 is null below 20, p99 below "
                 "100, the median's 95% CI below 6)."
                 " No roof: the precision has no measured GEMM roof (int8).</p>")
    parts.append("<h3>Largest feasible model and batch per device</h3>")
    large = largest_rows(items)
    parts.append(table(["machine", "device", "largest model that ran", "its largest batch",
                        "largest batch that ran (preset)", "peak memory there", "capacity"],
                       large) if large else "<p>No ok records: nothing ran.</p>")
    parts.append("<h3>OOM frontier</h3>")
    parts.append('<p class="muted">Frontier: measured where the point ran and ran out of '
                 "memory (oom); predicted where it was not run: infeasible (the analytic "
                 f"estimate, less its stated error of {MEMORY_ESTIMATE_REL_ERROR:.0%} or "
                 f"{MEMORY_ESTIMATE_ABS_ERROR_BYTES / 2**20:.0f} MiB, is over capacity) or "
                 "skipped after a smaller point's OOM.</p>")
    front = frontier_rows(items)
    parts.append(table(["machine", "device", "framework", "workload", "preset", "precision",
                        "largest ok batch", "first failing batch", "status", "frontier",
                        "estimate there"],
                       front, numeric=(6, 7)) if front
                 else "<p>No point ran out of memory or was infeasible: the frontier lies "
                      "beyond this sweep.</p>")
    machines = list(dict.fromkeys(f.machine_id for f in files))
    if len(machines) >= 2:
        parts.append("<h3>Cross-hardware</h3>")
        first = [f for f in files if f.machine_id == machines[0]]
        for other in machines[1:]:
            t = compare_hw.cross_hardware(first, [f for f in files if f.machine_id == other],
                                          with_ttq=False)  # the ttq section has its own
            parts.append(f"<pre>{esc(compare_hw.format_table(t))}</pre>")
    return "".join(parts)


def figures_section(files: Sequence[ResultsFile]) -> str:
    parts = []
    for nf in iter_figures(files):
        if not parts or f"<h3>{esc(nf.kind)}</h3>" not in parts:
            parts.append(f"<h3>{esc(nf.kind)}</h3>")
        buf = io.BytesIO()
        nf.figure.savefig(buf, format="png", dpi=DPI)
        data = base64.b64encode(buf.getvalue()).decode("ascii")
        parts.append(f'<figure id="fig-{esc(nf.name)}"><img src="data:image/png;base64,{data}" '
                     f'alt="{esc(nf.kind)}: {esc(nf.panel)}"><figcaption>{esc(nf.kind)}: '
                     f"{esc(nf.panel)}</figcaption></figure>")
    return "\n".join(parts) or "<p>No figures: there is nothing ok (or oom/infeasible) to draw.</p>"


def build_report(files: Sequence[Any]) -> str:
    """The whole page as a string. ``files``: ResultsFiles or paths."""
    files = as_files(files)
    items = entries(files)
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    notes = missing_notes(files)
    sections = [
        section("reference", "Reference points: the same work on every machine",
                reference.headline_html(files, items, source_names(files))),
        section("missing", "What is missing", '<ul class="missing">' + "".join(
            f"<li>{esc(n)}</li>" for n in notes) + "</ul>" if notes
                else "<p>Nothing: every file has ok records, energy, roofs and memory.</p>"),
        section("status", "Status counts", status_table(files)),
        section("environment", "Environment", env_section(files)),
        section("roofs", "Measured roofs", roofs_section(files)),
        section("summary", "Summary", summary_section(files, items)),
        section("scale-out", "Scale-out", scale_section(files, items)),
        *([section("time-to-quality", "Time to quality", ttq_section(files))]
          if has_ttq(files) else []),
        section("figures", "Figures", figures_section(files)),
    ]
    nav = "".join(f'<a href="#{a}">{t}</a>' for a, t in (
        ("reference", "reference points"), ("missing", "missing"), ("status", "statuses"),
        ("environment", "environment"),
        ("roofs", "roofs"), ("summary", "summary"), ("scale-out", "scale-out"),
        *([("time-to-quality", "time to quality")] if has_ttq(files) else []),
        ("figures", "figures")))
    n_ttq = sum(len(f.ttq) for f in files)
    ttq_count = f", {n_ttq} time-to-quality record(s)" if n_ttq else ""
    title = "recbench report: " + ", ".join(dict.fromkeys(source_names(files)))
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f"<title>{esc(title)}</title><style>{_CSS}</style></head><body>\n"
            f"<h1>{esc(title)}</h1><p class=\"muted\">{len(files)} result file(s), "
            f"{len(items)} point record(s){ttq_count}; generated {esc(when)}.</p>"
            f"<nav>{nav}</nav>\n"
            + "".join(sections) + "</body></html>\n")


def write_report(files: Sequence[Any], out_dir: str | Path) -> Path:
    """Write ``out_dir/report.html``; returns its path."""
    page = build_report(files)
    out = Path(out_dir)
    path = out / "report.html"
    try:
        out.mkdir(parents=True, exist_ok=True)
        path.write_text(page, encoding="utf-8")
    except OSError as e:
        raise InputError(f"cannot write {path}: {e.strerror or e}; pass a writable --out") from e
    return path


def cmd_report(args: argparse.Namespace) -> int:
    out = Path(args.out) if args.out else default_out_dir(args.results, None)
    print(write_report(args.results, out))
    return 0


def register_cli(subparsers: Any) -> None:
    """Add ``recbench report RESULTS... [--out DIR]``."""
    p = subparsers.add_parser("report", help="one self-contained HTML page from result files")
    p.add_argument("results", nargs="+", metavar="RESULTS",
                   help="results .jsonl files or directories of them")
    p.add_argument("--out", type=out_dir,
                   help="directory for report.html (default: the first RESULTS dir)")
    p.set_defaults(func=cmd_report)
