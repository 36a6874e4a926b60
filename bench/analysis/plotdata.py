"""What the plots, the HTML report and the cross-hardware table read from result files.

The figures, the report and ``compare_hw`` all see a sweep as a flat list of :class:`Entry`:
one point record plus the file it came from and the *source* it is drawn as (a machine, or a
machine and run when one machine has several files). Helpers here group entries into panels
and series, name what varies, find the knee of a throughput curve and the memory a device has.

Matching points across files. Two records describe the same work when their point fields are
equal except the ones a comparison varies on purpose (``config_key(point, drop=...)``): the
device for a cross-hardware comparison, the precision for a precision speed-up, the framework
for torch vs JAX. Point ids cannot be used for that: the id hashes every field, device included.
"""

from __future__ import annotations

import itertools
import math
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from bench.point import ID_DEFAULTS, compile_mode, device_kind, framework_label
from bench.results import PointRecord, ResultsFile, load_many
from recmodels.config import human, human_bytes
from recmodels.errors import InputError

GiB = 2**30
# The knee: the first batch size from which the next measured batch gives less than this much
# more throughput per doubling of the batch (see knee()).
KNEE_MIN_GAIN = 0.10
MEASURED_ENERGY = ("measured-counter", "measured-sampled")
NO_ENERGY = (None, "unavailable")
# The relative error bound of a point's energy figure (0.05: +-5%), where the meter records one.
ENERGY_ERROR_KEY = "energy_rel_error"
UNSTABLE = "unstable"  # the record flag of a point whose spread or conditions say it was disturbed
RECOMPILED = "recompiled"  # the flag of a point whose timed steps recompiled (compiled.py)

# How a point field reads in a legend; unlisted fields print their bare value.
_FIELD_TEXT: dict[str, Callable[[Any], str]] = {
    "catalog_size": lambda v: f"C={human(v)}" if isinstance(v, (int, float)) else f"C={v}",
    "seq_len": lambda v: f"T={v}",
    "batch_size": lambda v: f"B={v}",
    "n_neg": lambda v: f"neg={v}",
    "compile": lambda v: str(compile_mode(v)),  # describe() names the framework with it
    "world_size": lambda v: f"W={v}",
    "nodes": lambda v: f"{v} node{'s' if v != 1 else ''}",
    "sharding": lambda v: f"{v} table",
    "scaling": lambda v: f"{v} scaling",
    "parallel": lambda v: "1 process" if v == "none" else str(v),
    # ttq points (bench/scenarios/ttq.py)
    "max_epochs": lambda v: f"cap {v} epochs",
    "runs": lambda v: f"{v} run{'s' if v != 1 else ''}",
    "eval_every": lambda v: f"eval every {v}",
    "target_value": lambda v: f"target {v:g}" if isinstance(v, (int, float)) else f"target {v}",
    "lr": lambda v: f"lr {v:g}" if isinstance(v, (int, float)) else f"lr {v}",
}


@dataclass(frozen=True)
class Entry:
    """One point record, the file it came from, and the source (machine / run) it is drawn as."""

    source: str
    file: ResultsFile
    record: PointRecord

    @property
    def point(self) -> dict[str, Any]:
        return self.record.point

    @property
    def ok(self) -> bool:
        return self.record.ok

    @property
    def status(self) -> str:
        return self.record.status

    @property
    def device(self) -> str:
        return str(self.point.get("device", "?"))

    @property
    def batch_size(self) -> int:
        return int(self.point.get("batch_size") or 0)

    def metric(self, name: str) -> float | None:
        """A numeric metric by dotted name (``"step_ms.median"``); None when absent or null."""
        value: Any = self.record.metrics
        for part in name.split("."):
            if not isinstance(value, Mapping):
                return None
            value = value.get(part)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return None
        return float(value) if math.isfinite(value) else None

    @property
    def params_total(self) -> float | None:
        dense, emb = self.metric("params_dense"), self.metric("params_embedding")
        return None if dense is None or emb is None else dense + emb

    def peak_memory(self) -> tuple[float | None, str]:
        """(bytes, what): the device's peak counter, else host RSS on CPU/MPS hosts.

        On a GPU or TPU a host RSS is not the device's memory, so it is not a stand-in there.
        """
        dev = self.metric("peak_device_mem_bytes")
        if dev is not None:
            return dev, "device peak"
        if device_kind(self.device) in ("cpu", "mps"):
            rss = self.metric("peak_host_rss_bytes")
            if rss is not None:
                return rss, "host RSS"
        return None, "none"

    def energy_provenance(self) -> str | None:
        prov = self.record.metrics.get("energy_provenance")
        return prov if isinstance(prov, str) else None

    @property
    def unstable(self) -> str | None:
        """Why the run flagged this point ``unstable`` (record.flags), or None."""
        return self.record.flags.get(UNSTABLE)

    @property
    def recompiled(self) -> str | None:
        """``"recompiled N times during timing"`` when its timed steps recompiled, or None."""
        return self.record.flags.get(RECOMPILED)

    @property
    def workload(self) -> str:
        return str(self.point.get("workload"))

    def roof_dtype(self) -> str | None:
        """The dtype of the measured GEMM roof this point's precision is held to, when the run
        header has that roof; None for a precision without one (int8) or a roof not measured."""
        from bench.machine.roofs import ROOF_DTYPES

        dtype = ROOF_DTYPES.get(str(self.point.get("precision")))
        roof = (self.file.header.roofs or {}).get(f"{device_kind(self.device)}/{dtype}")
        return dtype if dtype and isinstance(roof, Mapping) and roof.get("gemm_flops_per_s") \
            else None


def per_1k_text(workload: str) -> str:
    """What energy_j_per_1k_recs counts: a training sample or a recommendation (one user's
    history scored against the catalog)."""
    return "1,000 training samples" if workload == "train" else "1,000 recommendations"


def rate_text(workload: str) -> str:
    return "samples/s" if workload == "train" else "recommendations/s"


def bytes_text(n: float, per_s: bool = False) -> str:
    """Binary units for every byte quantity of the report and figures (config.human_bytes)."""
    return human_bytes(n, per_s)


def as_files(items: Iterable[ResultsFile | str | os.PathLike[str]]) -> list[ResultsFile]:
    """ResultsFiles as given; paths (files or directories) loaded with results.load_many."""
    files: list[ResultsFile] = []
    for x in items:  # in the order given: the first source gets the first colour
        files += [x] if isinstance(x, ResultsFile) else load_many([x])
    if not files:
        raise InputError("no result files given; pass .jsonl files or directories of them")
    return files


def source_names(files: Sequence[ResultsFile]) -> list[str]:
    """The name each file is drawn under: its machine id, plus the run id when the same
    machine has several files (two runs of one machine are two sources)."""
    machines = [f.machine_id or "unknown-machine" for f in files]
    return [m if machines.count(m) == 1 else f"{m} / {f.run_id}" for m, f in zip(machines, files)]


def entries(files: Sequence[ResultsFile]) -> list[Entry]:
    """Every record of every file (all statuses), in file order."""
    return [Entry(name, f, r) for name, f in zip(source_names(files), files) for r in f.records]


def group(items: Iterable[Entry], key: Callable[[Entry], Any]) -> dict[Any, list[Entry]]:
    """Entries grouped by ``key``, groups in order of first appearance."""
    out: dict[Any, list[Entry]] = {}
    for e in items:
        out.setdefault(key(e), []).append(e)
    return out


def _hashable(v: Any) -> Any:
    if isinstance(v, list):
        return tuple(_hashable(x) for x in v)
    if isinstance(v, dict):
        return tuple(sorted((k, _hashable(x)) for k, x in v.items()))
    return v


def at_default(name: str, value: Any) -> bool:
    """Whether a field added after the first results is at its default (bench.point
    ID_DEFAULTS): such a field is left out of keys and labels, so a point written before the
    field existed and one written after are the same work, as their ids say."""
    return name in ID_DEFAULTS and value == ID_DEFAULTS[name]


def config_key(point: Mapping[str, Any], drop: Iterable[str] = ("device",)) -> tuple:
    """The point's fields minus ``drop`` and minus later fields at their defaults, as a
    hashable key: equal keys are the same work."""
    dropped = set(drop)
    return tuple(sorted((k, _hashable(v)) for k, v in point.items()
                        if k not in dropped and not at_default(k, v)))


def field_text(name: str, value: Any) -> str:
    return _FIELD_TEXT.get(name, str)(value)


def varying_fields(points: Iterable[Mapping[str, Any]], exclude: Iterable[str] = (),
                   always: Iterable[str] = ()) -> list[str]:
    """Point fields with more than one value among ``points`` (in field order), plus ``always``.

    A legend names only what tells its lines apart.
    """
    points = list(points)
    excluded, forced = set(exclude), list(always)
    names: list[str] = []
    for p in points:
        names += [k for k in p if k not in names]
    return [k for k in names if k not in excluded and (
        k in forced or len({repr(p.get(k)) for p in points}) > 1)]


def describe(point: Mapping[str, Any], fields: Sequence[str]) -> str:
    """``"tiny bf16 C=20k"``: the given fields of a point, as a legend reads them. The
    framework and the compile mode read as one, ``"torch (reduce-overhead)"``, ``"jax (jit)"``
    (bench.point.framework_label): from either field, once."""
    words, named = [], False
    for k in fields:
        if k in ("framework", "compile"):
            if not named:
                words.append(framework_label(point.get("framework"), point.get("compile")))
            named = True
        else:
            words.append(field_text(k, point.get(k)))
    return " ".join(words)


def gain_per_doubling(b0: float, t0: float, b1: float, t1: float) -> float:
    """Relative throughput gain per doubling of the batch between two measured points.

    Ladders need not double (the quick suite steps x4): (t1/t0) ** (1 / log2(b1/b0)) - 1.
    """
    return (t1 / t0) ** (1.0 / math.log2(b1 / b0)) - 1.0


def knee(batch_sizes: Sequence[float], throughputs: Sequence[float],
         min_gain: float = KNEE_MIN_GAIN) -> float | None:
    """The batch size where throughput stops growing, or None.

    The knee is the first measured batch size b_i such that going to the next measured batch
    b_{i+1} gains less than ``min_gain`` (10%) throughput per doubling of the batch
    (:func:`gain_per_doubling`). Past it, a larger batch buys latency and memory, not speed.
    None when the curve is still growing at the largest measured batch (the knee, if any, lies
    beyond the sweep) or when there are fewer than two points with a positive throughput.
    """
    pts = sorted((b, t) for b, t in zip(batch_sizes, throughputs)
                 if b and t and b > 0 and t > 0)
    for (b0, t0), (b1, t1) in itertools.pairwise(pts):
        if b1 > b0 and gain_per_doubling(b0, t0, b1, t1) < min_gain:
            return b0
    return None


def capacity_bytes(env: Mapping[str, Any], device: str) -> tuple[int | None, str]:
    """(bytes, what) a point on ``device`` can hold, as the runner judges feasibility
    (machine.hardware.device_capacity_bytes: the GPU's memory from ``env["gpus"]``, host RAM
    for cpu and mps); (None, why) when the header does not say (e.g. TPUs)."""
    from bench.machine.hardware import device_capacity_bytes

    kind = device_kind(device)
    try:
        cap = device_capacity_bytes(device, dict(env))
    except (ValueError, TypeError, AttributeError):  # a malformed env in a hand-made file
        cap = None
    if not isinstance(cap, int):
        return None, f"the run header gives no memory size for {device}"
    if kind == "cuda":
        suffix = device.partition(":")[2]
        index = int(suffix) if suffix.isdigit() else 0  # cuda:all: each GPU's memory
        each = " (each GPU)" if suffix == "all" else ""
        return cap, f"{env['gpus'][index].get('name', 'GPU')} memory{each}"
    return cap, "host RAM"


def machine_summary(file: ResultsFile) -> str:
    """``"AMD EPYC, 2 cores, 23.5 GiB RAM"`` (+ GPUs / TPU): the machine in one line."""
    env = file.header.env
    cores = (env.get("cores") or {}).get("usable") or (env.get("cores") or {}).get("logical")
    parts = [str(env.get("cpu") or "unknown CPU") + (f" ({cores} cores)" if cores else "")]
    if isinstance(env.get("ram_bytes"), (int, float)):
        parts.append(f"{env['ram_bytes'] / GiB:.1f} GiB RAM")
    gpus = env.get("gpus") or []
    if gpus:
        names = sorted({str(g.get("name")) for g in gpus})
        parts.append(f"{len(gpus)}x " + "/".join(names))
    tpu = env.get("tpu")
    if isinstance(tpu, Mapping):
        parts.append(f"{tpu.get('count', '?')}x {tpu.get('device_kind', 'TPU')}")
    return ", ".join(parts)


def status_counts(file: ResultsFile) -> dict[str, int]:
    counts: dict[str, int] = {}
    for r in file.records:
        counts[r.status] = counts.get(r.status, 0) + 1
    return counts


def require_ok(files: Sequence[ResultsFile]) -> None:
    """InputError naming the statuses when no file has a single ok record (a time-to-quality
    record that did not converge counts: its curves are drawn)."""
    if not any(r.ok for f in files for r in (*f.records, *f.serve)) and not any(
            r.ok or r.status == "did-not-converge" for f in files for r in f.ttq):
        n = len(files)
        # every kind of record counted, so the statuses named are all the files hold
        counts: dict[str, int] = {}
        for kind, attr in (("", "records"), ("serve ", "serve"), ("time-to-quality ", "ttq")):
            for r in (r for f in files for r in getattr(f, attr)):
                counts[kind + r.status] = counts.get(kind + r.status, 0) + 1
        if not counts:
            raise InputError(f"no records in {n} result file(s) (a header only: the run "
                             "measured nothing): nothing to plot; rerun, or resume it with "
                             "`recbench run --suite SUITE --resume FILE`")
        got = ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))
        raise InputError(f"no ok records in {n} result file(s) ({got}): nothing was measured "
                         "to plot; `recbench report` lists each record's reason")


def text_grid(grid: Sequence[Sequence[str]]) -> list[str]:
    """Rows of cells as plain-text lines: the first column left-aligned, the others right,
    two spaces apart, a rule of dashes under the first row (the header)."""
    widths = [max(len(r[i]) for r in grid) for i in range(len(grid[0]))]
    lines: list[str] = []
    for i, r in enumerate(grid):
        lines.append("  ".join(c.ljust(w) if j == 0 else c.rjust(w)
                               for j, (c, w) in enumerate(zip(r, widths))).rstrip())
        if i == 0:
            lines.append("-" * len(lines[-1]))
    return lines
