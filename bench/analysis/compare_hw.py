"""The cross-hardware table: the same work on two machines, point by point, as B / A ratios.

``recbench compare --cross-hardware A B`` prints it (bench/gate/compare.py); the report shows it
when it has results from two machines. It is a comparison, not a verdict: nothing here passes
or fails.

Matching. Two records are the same work when their point fields are equal *except the device*
(``plotdata.config_key(point, drop=("device",))``): torch train tiny B=128 bf16 on machine A's
``cuda`` and on machine B's ``cpu`` match. When one side has several records of one
configuration (two devices of one machine, or two runs), the fastest ok one stands for that side
(``Side.candidates`` says how many there were); pass ``device_a``/``device_b`` to pick one.
Nothing is dropped silently: points ok on both sides are ``rows``; configurations on both sides
but not ok on one are ``not_comparable`` (with their statuses); the rest are ``only_a`` and
``only_b``.

Ratios are B / A for every metric: throughput (samples/s; > 1: B is faster), latency (median
step ms; < 1: B is faster), peak memory (the device's peak counter, else host RSS; the ``kind``
of each side is kept, since a GPU counter and a CPU RSS are different measures), and energy per
sample (only where both sides *measured* it, by counter or sampling; estimates are never
compared as measurements). Each ratio has a geometric mean over the rows where both sides
have the value.

Time to quality (``ttq`` records, `recbench ttq`): when both sides have them, the table gains
a second part, :class:`TTQTable`: the time to target (MLPerf's score) of the same work on each
machine and its ratio to the first (base) machine. The same work: the point fields minus the
device, the first run's seed, the number of runs and the epoch cap (dataset, target and target
value, framework and mode, preset, precision, batch size, evaluation interval, overrides must
be equal). A record that did not converge has no time and no ratio; it is listed, not dropped.
With several records of one configuration on a machine, the fastest ok one stands for it.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from bench.analysis.compare_ttq import TTQTable, format_ttq, ttq_across, ttq_json, ttq_markdown
from bench.analysis.plotdata import (
    MEASURED_ENERGY,
    Entry,
    as_files,
    config_key,
    entries,
    field_text,
    group,
    text_grid,
)
from bench.point import device_kind, framework_label
from bench.results import ResultsFile
from recmodels.config import human

# key, title, column name (with unit), which way is better
METRICS = (
    ("samples_per_s", "throughput", "samples/s", "higher"),
    ("step_ms", "latency (median step)", "step ms", "lower"),
    ("peak_mem_bytes", "peak memory", "peak GiB", "lower"),
    ("energy_j_per_sample", "energy per sample", "energy/sample", "lower"),
)
_LABEL_ORDER = ("framework", "workload", "preset", "block", "catalog_size", "seq_len",
                "batch_size", "precision")
_DEFAULTS = {"loss": "bce", "compile": "eager", "optimizer": "adam"}


def config_label(point: dict[str, Any]) -> str:
    """``"torch (eager) train tiny/sasrec C=2k T=20 B=8 fp32"``: a point without its device;
    the framework with the mode it ran in (``"jax (jit)"``, ``"torch (reduce-overhead)"``)."""
    p = dict(point)
    head = [framework_label(p.get("framework"), p.get("compile", "eager")),
            str(p.get("workload")),
            f"{p.get('preset')}/{p.get('block', 'sasrec')}"]
    head += [field_text(k, p[k]) for k in ("catalog_size", "seq_len", "batch_size") if k in p]
    head.append(str(p.get("precision")))
    if p.get("loss", "bce") != "bce":
        head.append(f"{p['loss']}:{p.get('n_neg')}" if p["loss"] == "sampled_softmax"
                    else str(p["loss"]))
    elif p.get("n_neg", 1) != 1:
        head.append(f"neg={p['n_neg']}")
    if p.get("optimizer", "adam") != "adam":
        head.append(str(p["optimizer"]))
    known = {*_LABEL_ORDER, *_DEFAULTS, "n_neg", "device"}
    head += [f"{k}={v}" for k, v in sorted(p.items()) if k not in known]  # fields added later
    return " ".join(head)


@dataclass
class Side:
    """One side's record of a configuration."""

    source: str
    device: str
    status: str
    reason: str | None
    samples_per_s: float | None = None
    step_ms: float | None = None
    peak_mem_bytes: float | None = None
    peak_mem_kind: str = "none"  # "device peak" | "host RSS" | "none"
    energy_j_per_sample: float | None = None  # only when measured (counter or sampled)
    energy_provenance: str | None = None
    candidates: int = 1  # records of this configuration on this side (the fastest ok is used)
    unstable: str | None = None  # why the run flagged the point unstable, if it did

    @classmethod
    def of(cls, e: Entry, candidates: int = 1) -> Side:
        mem, kind = e.peak_memory()
        prov = e.energy_provenance()
        per_1k = e.metric("energy_j_per_1k_recs")
        energy = per_1k / 1000 if per_1k is not None and prov in MEASURED_ENERGY else None
        return cls(e.source, e.device, e.status, e.record.reason, e.metric("samples_per_s"),
                   e.metric("step_ms.median"), mem, kind, energy, prov, candidates, e.unstable)

    def value(self, key: str) -> float | None:
        return getattr(self, key)


@dataclass
class CrossRow:
    """A configuration found on both sides."""

    label: str
    config: dict[str, Any]  # point fields minus device
    a: Side
    b: Side
    ratios: dict[str, float | None] = field(default_factory=dict)  # B / A per METRICS key


@dataclass
class Unmatched:
    """A configuration found on one side only."""

    label: str
    config: dict[str, Any]
    side: Side


@dataclass
class CrossTable:
    name_a: str  # the machines (sources) of side A
    name_b: str
    rows: list[CrossRow]  # ok on both sides, with ratios
    not_comparable: list[CrossRow]  # on both sides, not ok on at least one (no ratios)
    only_a: list[Unmatched]
    only_b: list[Unmatched]
    geomeans: dict[str, float | None]  # per METRICS key, over the rows that have the ratio
    counts: dict[str, int]  # rows in each geomean
    ttq: TTQTable | None = None  # time to quality, when both sides have ttq records


def _side_name(files: Sequence[ResultsFile], other: Sequence[ResultsFile]) -> str:
    ids = list(dict.fromkeys(f.machine_id or "unknown-machine" for f in files))
    if set(ids) & {f.machine_id for f in other}:  # one machine on both sides: name the runs
        return "+".join(f"{f.machine_id}/{f.run_id}" for f in files)
    return "+".join(ids)


def _pick(members: list[Entry], device: str | None) -> tuple[Entry | None, int]:
    """The entry standing for a side: the fastest ok one, else the first; and how many."""
    if device:
        members = [e for e in members if e.device == device or device_kind(e.device) == device]
    if not members:
        return None, 0
    ok = [e for e in members if e.ok and e.metric("samples_per_s")]
    best = max(ok, key=lambda e: e.metric("samples_per_s") or 0.0) if ok else members[0]
    return best, len(members)


def _as_list(x: Any) -> list[Any]:
    return [x] if isinstance(x, (str, os.PathLike, ResultsFile)) else list(x)


def geomean(values: Iterable[float]) -> float | None:
    logs = [math.log(v) for v in values if v is not None and v > 0]
    return math.exp(sum(logs) / len(logs)) if logs else None


def cross_hardware(files_a: Any, files_b: Any, device_a: str | None = None,
                   device_b: str | None = None, with_ttq: bool = True) -> CrossTable:
    """Match A's and B's records by configuration (point minus device) and compute B / A.

    ``files_a``/``files_b``: ResultsFiles or paths (a file, a directory, or a list of them).
    ``device_a``/``device_b``: only that device (``cuda:1``) or device kind (``cuda``).
    ``with_ttq``: add the time-to-quality part (``.ttq``) when both sides have ttq records.
    """
    fa, fb = as_files(_as_list(files_a)), as_files(_as_list(files_b))
    name_a, name_b = _side_name(fa, fb), _side_name(fb, fa)
    by_a = group(entries(fa), lambda e: config_key(e.point))
    by_b = group(entries(fb), lambda e: config_key(e.point))
    rows, not_comparable, only_a, only_b = [], [], [], []
    for key in [*by_a, *(k for k in by_b if k not in by_a)]:
        ea, na = _pick(by_a.get(key, []), device_a)
        eb, nb = _pick(by_b.get(key, []), device_b)
        if ea is None and eb is None:
            continue
        config = dict(key)
        label = config_label(config)
        if ea is None or eb is None:
            e, n = (ea, na) if eb is None else (eb, nb)
            (only_a if eb is None else only_b).append(Unmatched(label, config,
                                                                Side.of(e, n)))  # type: ignore
            continue
        row = CrossRow(label, config, Side.of(ea, na), Side.of(eb, nb))
        if not (ea.ok and eb.ok):
            not_comparable.append(row)
            continue
        for k, *_ in METRICS:
            va, vb = row.a.value(k), row.b.value(k)
            row.ratios[k] = vb / va if va and vb is not None else None
        rows.append(row)
    geo = {k: geomean(r.ratios[k] for r in rows if r.ratios.get(k)) for k, *_ in METRICS}
    counts = {k: sum(1 for r in rows if r.ratios.get(k)) for k, *_ in METRICS}
    ttq = ttq_across([(name_a, fa), (name_b, fb)], [device_a, device_b]) if with_ttq else None
    return CrossTable(name_a, name_b, rows, not_comparable, only_a, only_b, geo, counts, ttq)


cross_hardware_table = cross_hardware  # the name bench/gate/compare.py was first promised


# --- output -------------------------------------------------------------------------------


def _num(v: float | None, key: str) -> str:
    if v is None:
        return "-"
    if key == "peak_mem_bytes":
        return f"{v / 2**30:.3g}"
    if key == "energy_j_per_sample":
        for scale, unit in ((1.0, "J"), (1e-3, "mJ"), (1e-6, "µJ")):
            if v >= scale:
                return f"{v / scale:.3g} {unit}"
        return f"{v * 1e9:.3g} nJ"
    return human(v) if abs(v) >= 1000 else f"{v:.3g}"


def _ratio(v: float | None) -> str:
    return "-" if v is None else f"{v:.3g}x"


_COLUMNS = ["point"] + [f"{col} {ab}" if ab != "B/A" else "B/A"
                        for _, _, col, _ in METRICS for ab in ("A", "B", "B/A")]


def _cells(row: CrossRow) -> list[str]:
    out = [row.label + (" !" if row.a.unstable or row.b.unstable else "")]
    for key, *_ in METRICS:
        for side in (row.a, row.b):  # "*": host RSS stands in for a device counter
            rss = key == "peak_mem_bytes" and side.peak_mem_kind == "host RSS"
            out.append(_num(side.value(key), key) + ("*" if rss else ""))
        out.append(_ratio(row.ratios.get(key)))
    return out


def _devices(t: CrossTable) -> tuple[str, str]:
    rows = [*t.rows, *t.not_comparable]
    return tuple(",".join(sorted({getattr(r, s).device for r in rows}
                                 | {u.side.device for u in only})) or "-"
                 for s, only in (("a", t.only_a), ("b", t.only_b)))  # type: ignore[return-value]


def _has_steps(t: CrossTable) -> bool:
    """Whether either side has a step record (matched or not)."""
    return bool(t.rows or t.not_comparable or t.only_a or t.only_b)


def _title(t: CrossTable) -> str:
    da, db = _devices(t)
    return (f"A = {t.name_a} [{da}], B = {t.name_b} [{db}]; points matched by their fields "
            "minus the device; ratios are B/A")


def _notes(t: CrossTable) -> list[str]:
    lines = []
    shaky = [(r, n, s.unstable) for r in t.rows for n, s in (("A", r.a), ("B", r.b))
             if s.unstable]
    if shaky:
        lines.append("points with !: flagged unstable (disturbed run); their ratios are not "
                     "clean measurements")
        lines += [f"  {r.label}: {n} unstable ({why})" for r, n, why in shaky]
    if any(r.a.peak_mem_kind == "host RSS" or r.b.peak_mem_kind == "host RSS" for r in t.rows):
        lines.append("peak GiB with *: host RSS (no device counter on that side)")
    for name, sides in (("A", [r.a for r in t.rows]), ("B", [r.b for r in t.rows])):
        n = sum(1 for s in sides if s.candidates > 1)
        if n:
            lines.append(f"{name} has several records of {n} configuration(s) (devices or runs):"
                         " the fastest ok one is used; choose with device_a/device_b")
    if t.not_comparable:
        lines.append(f"not comparable (on both, not ok on one): {len(t.not_comparable)}")
        lines += [f"  {r.label}: A {r.a.status}, B {r.b.status}" for r in t.not_comparable]
    for name, side in ((f"only in A ({t.name_a})", t.only_a), (f"only in B ({t.name_b})",
                                                                t.only_b)):
        if side:
            lines.append(f"{name}: {len(side)}")
            lines += [f"  {u.label} [{u.side.device}] {u.side.status}" for u in side]
    return lines


def _summary(t: CrossTable) -> list[str]:
    out = [f"geometric mean B/A over {len(t.rows)} point(s) ok on both:"]
    for key, title, _, better in METRICS:
        out.append(f"  {title}: {_ratio(t.geomeans[key])} (n={t.counts[key]}; {better} is "
                   "better)")
    return out


def format_table(table: CrossTable) -> str:
    """Plain-text table for a terminal: one row per matched point, then geomeans and lists."""
    head = [f"cross-hardware: {_title(table)}"]
    if not table.rows:
        head.append("no point is ok on both sides")
    else:
        head += text_grid([_COLUMNS] + [_cells(r) for r in table.rows])
    if table.ttq is not None and not _has_steps(table):  # ttq records only: no step part
        return format_ttq(table.ttq)
    text = "\n".join(head + _summary(table) + _notes(table))
    return text + ("\n\n" + format_ttq(table.ttq) if table.ttq is not None else "")


def to_markdown(table: CrossTable) -> str:
    """A GitHub-flavoured markdown table with the same content as format_table."""
    def esc(s: str) -> str:
        return s.replace("|", "\\|")

    if table.ttq is not None and not _has_steps(table):  # ttq records only: no step part
        return ttq_markdown(table.ttq)
    lines = [f"**Cross-hardware**: {esc(_title(table))}", ""]
    if table.rows:
        lines.append("| " + " | ".join(esc(c) for c in _COLUMNS) + " |")
        lines.append("|" + "---|" + "---:|" * (len(_COLUMNS) - 1))
        lines += ["| " + " | ".join(esc(c) for c in _cells(r)) + " |" for r in table.rows]
    else:
        lines.append("_No point is ok on both sides._")
    lines.append("")
    lines += [f"- {s.strip()}" for s in _summary(table)]
    notes = _notes(table)
    if notes:
        lines.append("")
        lines += [f"- {esc(s.strip())}" if not s.startswith("  ") else f"  - {esc(s.strip())}"
                  for s in notes]
    if table.ttq is not None:
        lines += ["", ttq_markdown(table.ttq)]
    return "\n".join(lines)


def to_json(table: CrossTable) -> dict[str, Any]:
    """The table as JSON-ready data (ratios B/A; null where a side lacks the value)."""
    out = {
        "a": table.name_a, "b": table.name_b,
        "match": "point fields minus device", "ratio": "B / A",
        "metrics": {k: {"title": t, "column": c, "better": b} for k, t, c, b in METRICS},
        "rows": [asdict(r) for r in table.rows],
        "geomean": table.geomeans, "geomean_n": table.counts,
        "not_comparable": [asdict(r) for r in table.not_comparable],
        "only_a": [asdict(u) for u in table.only_a],
        "only_b": [asdict(u) for u in table.only_b],
    }
    if table.ttq is not None:  # only then: a file without ttq records reads as it did
        out["ttq"] = ttq_json(table.ttq)
    return out
