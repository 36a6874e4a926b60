"""`recbench compare BASE NEW`: per-point, per-metric verdicts between two sets of results.

Points are paired by id (``Point.id``: the whole configuration, device included). Records of
one id on one side (several files, or the rounds of ``recbench gate``) are pooled: their raw
samples are concatenated and their scalars replaced by the median over runs. Per metric:

* ``step_ms`` (lower is better) and ``samples_per_s`` (higher; ``batch_size / step time`` per
  iteration) from the raw ``samples_ms``: ratio of medians with a percentile-bootstrap CI and a
  two-sided Mann–Whitney U test, decided by :func:`bench.gate.stats.compare_samples`: regressed only
  when significant (p < alpha) *and* beyond the threshold.
* ``peak_mem_bytes``: the device peak where both sides have one, else host peak RSS;
  :func:`bench.gate.stats.compare_scalar` (an allocation pattern is near-deterministic).
* ``energy_j_per_1k_recs`` where both sides *measured* it (counter or sampled, never an
  estimate). One aggregate per run has no noise estimate: with >= 5 runs a side it is tested
  like step time; otherwise a change beyond the threshold is reported inconclusive.
* ``flops_per_step``, ``params_dense``, ``params_embedding``: analytic and exact, so any change
  is ``changed`` and fails unless ``accept_analytic`` (``--accept-analytic-changes``).

With ``paired`` (``--paired-runs``; always in ``recbench gate``) run i of each side were
measured back to back: step time and throughput are tested on samples aligned per pair
(:func:`align_runs`) and the verdict must also hold over the pairs (:func:`confirm_over_rounds`).

A point flagged ``unstable`` on either side (``PointRecord.flags``: its spread or the run
conditions say it was disturbed) gets ``inconclusive`` for the timed metrics (step time,
throughput, energy), with the flag's reason; memory and the analytic values are judged as
usual. A point that ran on the base but failed on new (oom, crash, ...) is ``failed``. Exit status:
1 if any point regressed, failed or changed (unaccepted), else 0; bad input is exit 2.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import scipy.stats

from bench.gate import stats
from bench.machine.envinfo import fingerprint_key
from bench.results import PointRecord, ResultsFile
from recmodels.config import human
from recmodels.errors import InputError

ANALYTIC = ("flops_per_step", "params_dense", "params_embedding")
METRICS = ("step_ms", "samples_per_s", "peak_mem_bytes", "energy_j_per_1k_recs", *ANALYTIC)
MEASURED_ENERGY = ("measured-counter", "measured-sampled")
# Point statuses, most severe first: the first three fail the comparison (exit 1).
POINT_STATUSES = ("failed", "regressed", "changed", "improved", "inconclusive", "unchanged",
                  "not-compared")
FAILING = ("failed", "regressed", "changed")
TIMED = ("step_ms", "samples_per_s", "energy_j_per_1k_recs")  # what a disturbance distorts
_FP_FIELDS = ("cpu", "logical cores", "usable cores", "gpus", "tpu", "torch", "jax", "isa",
              "jaxlib")


@dataclass
class Side:
    """One point on one side: its records pooled over files/rounds."""

    id: str
    point: dict[str, Any]
    records: list[PointRecord]

    @property
    def ok(self) -> bool:
        return all(r.ok for r in self.records)

    @property
    def failure(self) -> str:
        bad = [r for r in self.records if not r.ok]
        runs = f" (in {len(bad)} of {len(self.records)} runs)" if len(self.records) > 1 else ""
        return f"{bad[0].status}: {bad[0].reason}{runs}" if bad else "ok"

    @property
    def unstable(self) -> str | None:
        """Why some run of this point was flagged unstable (the first), or None."""
        why = [r.flags["unstable"] for r in self.records if "unstable" in r.flags]
        runs = f" (in {len(why)} of {len(self.records)} runs)" if len(self.records) > 1 else ""
        return f"{why[0]}{runs}" if why else None

    @property
    def samples_ms(self) -> list[float]:
        return [x for r in self.records for x in r.samples_ms]

    def per_run(self, key: str) -> list[float]:
        """The metric's non-null value in each run."""
        vals = [r.metrics.get(key) for r in self.records]
        return [float(v) for v in vals
                if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)]

    def value(self, key: str) -> float | None:
        vals = self.per_run(key)
        return float(np.median(vals)) if vals else None


@dataclass
class MetricResult:
    metric: str
    base: float | None  # median of samples, or the (pooled) scalar
    new: float | None
    status: str  # a Verdict status, or "changed" for analytic values
    reason: str
    verdict: dict[str, Any] | None = None  # stats.Verdict as a dict
    accepted: bool = False  # an analytic change let through by --accept-analytic-changes


@dataclass
class PointResult:
    id: str
    label: str
    point: dict[str, Any]
    status: str  # one of POINT_STATUSES
    reason: str
    metrics: list[MetricResult] = field(default_factory=list)
    n_runs: tuple[int, int] = (0, 0)  # records pooled on (base, new)

    def metric(self, name: str) -> MetricResult | None:
        return next((m for m in self.metrics if m.metric == name), None)


@dataclass
class Comparison:
    points: list[PointResult]
    only_base: list[tuple[str, str]]  # (id, label)
    only_new: list[tuple[str, str]]
    threshold: float
    alpha: float
    accept_analytic: bool
    base_desc: str
    new_desc: str
    notes: list[str] = field(default_factory=list)  # context lines (the gate adds its own)
    paired: bool = False  # runs were paired rounds (align_runs, confirm_over_rounds)

    @property
    def counts(self) -> dict[str, int]:
        return {s: n for s in POINT_STATUSES
                if (n := sum(p.status == s for p in self.points))}

    @property
    def failed(self) -> bool:
        return any(p.status in FAILING for p in self.points)

    @property
    def exit_code(self) -> int:
        return 1 if self.failed else 0

    def to_json(self) -> dict[str, Any]:
        return {"base": self.base_desc, "new": self.new_desc, "threshold": self.threshold,
                "alpha": self.alpha, "accept_analytic_changes": self.accept_analytic,
                "paired_runs": self.paired,
                "counts": self.counts, "failed": self.failed, "exit_code": self.exit_code,
                "notes": self.notes, "points": [asdict(p) for p in self.points],
                "only_in_base": [{"id": i, "label": lab} for i, lab in self.only_base],
                "only_in_new": [{"id": i, "label": lab} for i, lab in self.only_new]}


def point_label(point: dict[str, Any]) -> str:
    """``Point.label()`` where the record parses as a Point, else its values joined."""
    from bench.point import Point

    try:
        return Point.from_dict(point).label()
    except (InputError, TypeError):
        return " ".join(str(v) for v in point.values())


def pool(files: Iterable[ResultsFile]) -> dict[str, Side]:
    """Records grouped by point id, in first-seen order."""
    sides: dict[str, Side] = {}
    for f in files:
        for r in f.records:
            sides.setdefault(r.id, Side(r.id, r.point, [])).records.append(r)
    return sides


def check_same_environment(base: Sequence[ResultsFile], new: Sequence[ResultsFile]) -> None:
    """Refuse (InputError) results whose ``envinfo.fingerprint_key`` differ."""
    kb = {fingerprint_key(f.header.env) for f in base}
    kn = {fingerprint_key(f.header.env) for f in new}
    if kb == kn and len(kb) == 1:
        return
    if len(kb) > 1 or len(kn) > 1:
        side = "BASE" if len(kb) > 1 else "NEW"
        raise InputError(f"{side} mixes results from different environments; compare one "
                         "machine type per side, or pass --cross-hardware for a ratio table")
    a, b = next(iter(kb)), next(iter(kn))
    diff = [f"{_FP_FIELDS[i] if i < len(_FP_FIELDS) else f'field {i}'} {x!r} vs {y!r}"
            for i, (x, y) in enumerate(zip(a, b)) if x != y]
    raise InputError("environments differ (" + "; ".join(diff) + "): a gate verdict needs "
                     "one machine type; pass --cross-hardware for a cross-hardware ratio table")


# --- one point ---------------------------------------------------------------------------------


def _samples_result(name: str, b: Sequence[float], v: Sequence[float], *, higher: bool,
                    threshold: float, alpha: float,
                    tested: tuple[list[float], list[float]] | None = None,
                    rounds: list[float] | None = None) -> MetricResult:
    """Verdict on ``tested`` (aligned samples) if given, else on the raw ``b`` and ``v``;
    with ``rounds`` (per-round ratios of medians) also :func:`confirm_over_rounds`."""
    if not b or not v:
        return MetricResult(name, None, None, "inconclusive", "no raw samples on "
                            + ("either side" if not (b or v) else "base" if not b else "new"))
    verdict = stats.compare_samples(*(tested or (b, v)), threshold=threshold, alpha=alpha,
                                    higher_is_better=higher)
    found = asdict(verdict)
    if rounds is not None and len(rounds) >= 2:
        found = confirm_over_rounds(found, rounds, threshold)
    return MetricResult(name, float(np.median(b)), float(np.median(v)), found["status"],
                        found["reason"], found)


def t95(df: int) -> float:
    """The two-sided 95% quantile of Student's t (Student 1908) with ``df`` degrees of freedom."""
    return float(scipy.stats.t.ppf(0.975, df))


def confirm_over_rounds(verdict: dict[str, Any], rounds: list[float],
                        threshold: float) -> dict[str, Any]:
    """Hold a pooled-sample verdict to the rounds' own spread.

    Samples of one round share its worker process and moment, so pooled samples overstate the
    evidence (stats.py: more iterations do not shrink run-to-run noise). The round is the unit
    of replication: the 95% t-interval of the mean log ratio over rounds must confirm a change
    as the sample CI must (beyond ``CONFIRM_FRACTION * threshold``), and "unchanged" needs it
    no wider than +-threshold; otherwise the verdict is inconclusive. The reported CI is the
    envelope of both intervals.
    """
    logs = np.log(np.asarray(rounds, dtype=np.float64))
    half = t95(logs.size - 1) * float(np.std(logs, ddof=1)) / np.sqrt(logs.size)
    ratio = float(np.exp(logs.mean()))
    lo, hi = float(np.exp(logs.mean() - half)), float(np.exp(logs.mean() + half))
    desc = (f"over {logs.size} rounds: ratio {ratio:.3f}, 95% t-interval [{lo:.3f}, {hi:.3f}], "
            "per round " + " ".join(f"{x - 1:+.1%}" for x in rounds))
    status, reason = verdict["status"], verdict["reason"]
    margin = stats.CONFIRM_FRACTION * threshold
    pooled = reason.split(" (")[0]
    if status in ("regressed", "improved") and not (
            lo > 1 + margin if verdict["ratio"] > 1 else hi < 1 - margin):
        status = "inconclusive"
        reason = f"{pooled} in the pooled samples, but the rounds disagree ({desc}); add rounds"
    elif status == "unchanged" and (hi - lo) / 2 > threshold:
        status = "inconclusive"
        reason = (f"{pooled} in the pooled samples, but the rounds vary too much to rule out a "
                  f"{stats._fmt_pct(threshold)} change ({desc}); add rounds")
    else:
        reason = f"{reason}; {desc}"
    low, high = verdict["ci_low"], verdict["ci_high"]
    return {**verdict, "status": status, "reason": reason,
            "ci_low": min(lo, low) if low is not None else lo,
            "ci_high": max(hi, high) if high is not None else hi,
            "rounds": {"n": int(logs.size), "ratio": ratio, "ci_low": lo, "ci_high": hi,
                       "per_round": [float(x) for x in rounds]}}


def round_ratios(b: Side, v: Side, per_iter: Callable[[float], float] = float) -> list[float]:
    """median(new run i) / median(base run i) of each pair of runs (see align_runs)."""
    return [float(np.median([per_iter(x) for x in rv.samples_ms])
                  / np.median([per_iter(x) for x in rb.samples_ms]))
            for rb, rv in zip(b.records, v.records)]


def align_runs(b: Side, v: Side, per_iter: Callable[[float], float] = float,
               ) -> tuple[list[float], list[float]] | None:
    """Pair run i of base with run i of new (the gate's rounds, measured back to back) and
    divide both by the median of the pair's values: the pair's shared machine state drops out
    and the within-pair ratio stays. This is the alignment of aligned-rank tests for blocked
    designs (Hodges & Lehmann 1962), on the log scale. None when runs do not pair up."""
    if len(b.records) != len(v.records) or len(b.records) < 2:
        return None
    ab: list[float] = []
    av: list[float] = []
    for rb, rv in zip(b.records, v.records):
        xb, xv = [per_iter(x) for x in rb.samples_ms], [per_iter(x) for x in rv.samples_ms]
        if not (xb and xv):
            return None
        m = float(np.median(xb + xv))
        ab += [x / m for x in xb]
        av += [x / m for x in xv]
    return ab, av


def _memory_result(b: Side, v: Side, threshold: float) -> MetricResult | None:
    for key, what in (("peak_device_mem_bytes", "device"), ("peak_host_rss_bytes", "host RSS")):
        xb, xv = b.value(key), v.value(key)
        if xb is not None and xv is not None:
            verdict = stats.compare_scalar(xb, xv, threshold=threshold)
            return MetricResult("peak_mem_bytes", xb, xv, verdict.status,
                                f"{what} peak {verdict.reason}", asdict(verdict))
    return None


def _energy_result(b: Side, v: Side, threshold: float, alpha: float) -> MetricResult | None:
    key = "energy_j_per_1k_recs"
    if not all(r.metrics.get("energy_provenance") in MEASURED_ENERGY
               for r in (*b.records, *v.records)):
        return None  # estimated or unavailable somewhere: never compared as a measurement
    rb, rv = b.per_run(key), v.per_run(key)
    if not rb or not rv:
        return None
    if min(len(rb), len(rv)) >= 5:  # one value per run: test the runs like samples
        return _samples_result(key, rb, rv, higher=False, threshold=threshold, alpha=alpha)
    verdict = stats.compare_scalar(float(np.median(rb)), float(np.median(rv)),
                                   threshold=threshold)
    status, reason = verdict.status, verdict.reason
    if status != "unchanged":
        status = "inconclusive"
        reason = (f"{reason.split(':')[0]}, but one aggregate per run has no noise estimate "
                  f"({len(rb)} vs {len(rv)} runs; >= 5 a side are tested)")
    return MetricResult(key, float(np.median(rb)), float(np.median(rv)), status, reason,
                        asdict(verdict))


def _analytic_result(key: str, b: Side, v: Side, accept: bool) -> MetricResult | None:
    xb, xv = b.value(key), v.value(key)
    if xb is None or xv is None:
        return None
    if xb == xv:
        return MetricResult(key, xb, xv, "unchanged", f"{human(xb)} on both sides")
    how = "accepted (--accept-analytic-changes)" if accept else (
        "an analytic value must not change silently: pass --accept-analytic-changes if intended")
    exact = human(xb) == human(xv)  # a small change: show every digit
    span = f"{xb:,.0f} -> {xv:,.0f}" if exact else f"{human(xb)} -> {human(xv)}"
    rel = f" ({xv / xb - 1:+.{4 if exact else 2}%})" if xb else ""
    return MetricResult(key, xb, xv, "changed", f"{span}{rel}; {how}", accepted=accept)


def _redundant(p: PointResult, m: MetricResult) -> bool:
    """Throughput is batch / step time: say it only when it disagrees with step time."""
    step = p.metric("step_ms")
    return m.metric == "samples_per_s" and step is not None and step.status == m.status


def compare_point(b: Side, v: Side, *, threshold: float, alpha: float, accept_analytic: bool,
                  metrics: Sequence[str] = METRICS, paired: bool = False) -> PointResult:
    """All metric verdicts of one point and its overall status (the most severe).

    ``paired``: the sides' runs were measured in interleaved pairs (``recbench gate``); step
    time and throughput are then tested on :func:`align_runs` samples."""
    label = point_label(v.point)
    res = PointResult(b.id, label, v.point, "unchanged", "", n_runs=(len(b.records),
                                                                     len(v.records)))
    if not (b.ok and v.ok):
        res.status = "failed" if b.ok else "not-compared"
        res.reason = f"base {b.failure}; new {v.failure}"
        return res
    if "step_ms" in metrics or "samples_per_s" in metrics:  # before dividing by them
        for side, s in (("base", b), ("new", v)):
            stats._as_samples(s.samples_ms, f"{side} {label}:", positive=True)
    bs = float(v.point.get("batch_size") or 1)

    def tput(ms: float) -> float:
        return bs * 1e3 / ms

    found: list[MetricResult | None] = []
    aligned = align_runs(b, v) if paired else None
    pairs = aligned is not None
    if "step_ms" in metrics:
        found.append(_samples_result("step_ms", b.samples_ms, v.samples_ms, higher=False,
                                     threshold=threshold, alpha=alpha, tested=aligned,
                                     rounds=round_ratios(b, v) if pairs else None))
    if "samples_per_s" in metrics:
        found.append(_samples_result("samples_per_s", [tput(x) for x in b.samples_ms],
                                     [tput(x) for x in v.samples_ms], higher=True,
                                     threshold=threshold, alpha=alpha,
                                     tested=align_runs(b, v, tput) if pairs else None,
                                     rounds=round_ratios(b, v, tput) if pairs else None))
    if "peak_mem_bytes" in metrics:
        found.append(_memory_result(b, v, threshold))
    if "energy_j_per_1k_recs" in metrics:
        found.append(_energy_result(b, v, threshold, alpha))
    found += [_analytic_result(k, b, v, accept_analytic) for k in ANALYTIC if k in metrics]
    res.metrics = [m for m in found if m is not None]
    unstable = "; ".join(f"{side} unstable: {why}" for side, why in
                         (("base", b.unstable), ("new", v.unstable)) if why)
    for m in res.metrics:
        if unstable and m.metric in TIMED and m.status in ("regressed", "improved", "unchanged",
                                                            "inconclusive"):
            m.reason = f"{unstable}; the samples alone read {m.status}: {m.reason}"
            m.status = "inconclusive"
            if m.verdict is not None:
                m.verdict = {**m.verdict, "status": m.status, "reason": m.reason}
    statuses = [("changed" if m.status == "changed" and not m.accepted else
                 "unchanged" if m.status == "changed" else m.status) for m in res.metrics]
    res.status = next((s for s in POINT_STATUSES if s in statuses), "unchanged")
    worst = [m for m, s in zip(res.metrics, statuses) if s == res.status
             and not _redundant(res, m)]
    res.reason = "; ".join(f"{m.metric}: {m.reason}" for m in worst)
    return res


def compare_results(base: Sequence[ResultsFile], new: Sequence[ResultsFile], *,
                    threshold: float = 0.05, alpha: float = 0.01,
                    accept_analytic: bool = False, metrics: Sequence[str] = METRICS,
                    check_env: bool = True, paired: bool = False) -> Comparison:
    """Compare two sets of loaded result files point by point (see the module docstring).

    ``paired``: the i-th run of a point on each side (file order) ran back to back, as the
    gate's rounds do; see :func:`align_runs`. Raises InputError when the environments differ
    (``check_env``), no point is common, or no common point ran on both sides.
    """
    if not (isinstance(threshold, (int, float)) and 0 <= threshold < math.inf):
        raise InputError(f"threshold must be a fraction >= 0 (0.05 = 5%); got {threshold!r}")
    if not (isinstance(alpha, (int, float)) and 0 < alpha < 1):
        raise InputError(f"alpha must be in (0, 1); got {alpha!r}")
    if check_env:
        check_same_environment(base, new)
    pb, pn = pool(base), pool(new)
    common = [i for i in pn if i in pb]
    if not common:
        raise InputError(f"no point in common between BASE ({len(pb)} points) and NEW "
                         f"({len(pn)} points): compare results of the same suite and device")
    points = [compare_point(pb[i], pn[i], threshold=threshold, alpha=alpha, paired=paired,
                            accept_analytic=accept_analytic, metrics=metrics) for i in common]
    if all(p.status == "not-compared" for p in points):
        why = " ".join(points[0].reason.split())[:300]  # one line, even with a stderr tail
        raise InputError(f"none of the {len(points)} common points ran on both sides (first: "
                         f"{points[0].label}: {why})")
    order = {s: k for k, s in enumerate(POINT_STATUSES)}
    points.sort(key=lambda p: order[p.status])  # stable: suite order within a status
    return Comparison(points=points,
                      only_base=[(i, point_label(s.point)) for i, s in pb.items() if i not in pn],
                      only_new=[(i, point_label(s.point)) for i, s in pn.items() if i not in pb],
                      threshold=threshold, alpha=alpha, accept_analytic=accept_analytic,
                      base_desc=describe(base), new_desc=describe(new), paired=paired)


def describe(files: Sequence[ResultsFile]) -> str:
    """``results/x.jsonl (suite ci, machine m, commit abc123)`` or ``4 files (...)``."""
    what = str(files[0].path) if len(files) == 1 else f"{len(files)} files"
    suites = sorted({f.header.suite for f in files})
    machines = sorted({str(f.machine_id) for f in files})
    commits = sorted({(f.header.env.get("git") or {}).get("commit") or "?" for f in files})
    return (f"{what} (suite {', '.join(suites)}, machine {', '.join(machines)}, "
            f"commit {', '.join(c[:10] for c in commits)})")
