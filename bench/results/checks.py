"""What every reader of a results file computes with, checked once as a record is read
(``PointRecord.from_json``): so that a hand-edited value (``"batch_size": "big"``,
``"step_ms": "fast"``, a negative sample) is named with its file, line and field by every
command alike, instead of crashing one reader (``int("big")``) and being dropped in silence
by another. Each function returns what is wrong (``"point.batch_size: expected a positive
integer, got 'big'"``) or None. Fields not named here may be added freely."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import fields
from typing import Any

from bench.point import POSITIVE_INT_FIELDS, Point, field_problem
from recmodels.errors import InputError


def _show(value: Any, width: int = 60) -> str:
    """``repr(value)``, cut to ``width`` characters (a hand-pasted object can be long)."""
    text = repr(value)
    return text if len(text) <= width else text[: width - 3] + "..."


def _is_number(value: Any) -> bool:
    """A finite int or float (Python's json reads NaN and Infinity; the writer never writes
    them: a value it has not got is null)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


# Metrics that hold a number or null, per record kind (DESIGN.md "Result files").
_NUMBER_METRICS: dict[str, tuple[str, ...]] = {
    "point": ("samples_per_s", "tokens_per_s", "compile_s", "warmup_s", "params_dense",
              "params_embedding", "flops_per_step", "bytes_per_step", "achieved_flops_per_s",
              "achieved_bytes_per_s", "roof_flops_per_s", "datasheet_flops_per_s",
              "utilization", "bandwidth_utilization", "utilization_datasheet",
              "peak_device_mem_bytes", "planned_device_mem_bytes", "peak_host_rss_bytes",
              "est_mem_bytes", "energy_j_per_step", "energy_j_per_1k_recs", "mean_power_w",
              "energy_rel_error", "speedup", "scaling_efficiency", "comm_share", "ranks",
              "prefill_ms", "decode_step_ms", "reencode_ms"),
    "serve": ("samples_per_s", "max_rate_per_s", "capacity_per_s", "offered_rate_per_s",
              "achieved_latency_ms", "mean_batch", "compile_s", "energy_j",
              "energy_j_per_1k_requests", "mean_power_w"),
    "ttq": ("time_to_target_s", "energy_to_target_j", "train_share", "eval_share",
            "epochs_to_target"),
}
# Objects of times in ms (each a number >= 0, or null), per record kind.
_TIME_STATS: dict[str, tuple[str, tuple[str, ...]]] = {
    "point": ("step_ms", ("median", "p90", "p99", "iqr", "mean", "std", "min", "max",
                          "ci_low", "ci_high", "cv")),
    "serve": ("latency_ms", ("p50", "p90", "p95", "p97", "p99", "p99_9", "mean", "max")),
}
# Point fields that are counts (a positive integer, or null) in serve and ttq records; step
# points are checked as a whole (bench.point.Point).
_COUNT_FIELDS = (*POSITIVE_INT_FIELDS, "max_batch", "runs", "max_epochs", "eval_every")
_STEP_REQUIRED = ("framework", "workload", "preset", "batch_size", "precision", "device")
_STEP_FIELDS = tuple(f.name for f in fields(Point))
_DEFAULTED = ("n_neg", "catalog_size", "seq_len")  # null: the loss's or the preset's (Point)


def step_point_problem(point: Mapping[str, Any]) -> str | None:
    """What is wrong with a step record's ``point`` (``"point.batch_size: expected a positive
    integer, got 'big'"``), or None: the same rules as :class:`bench.point.Point`, so that a
    record every reader accepts is one ``recbench run --resume`` can rebuild."""
    missing = [n for n in _STEP_REQUIRED if n not in point]
    if missing:
        return f"point has no {', '.join(missing)} (a step point names {', '.join(_STEP_REQUIRED)})"
    for name in _STEP_FIELDS:
        if name in point and not (name in _DEFAULTED and point[name] is None):
            problem = field_problem(name, point[name])
            if problem:
                return f"point.{name}: {problem}"
    try:
        Point.from_dict(point)  # what the fields say together (e.g. world_size and parallel)
    except InputError as e:
        return str(e)
    return None


def count_problem(point: Mapping[str, Any]) -> str | None:
    """What is wrong with the counts of a serve or ttq record's ``point``, or None."""
    for name in _COUNT_FIELDS:
        value = point.get(name)
        if value is not None and not (isinstance(value, int) and not isinstance(value, bool)
                                      and value >= 1):
            return f"point.{name}: expected a positive integer, got {_show(value)}"
    return None


def metrics_problem(kind: str, metrics: Mapping[str, Any]) -> str | None:
    """What is wrong with the figures of a record of ``kind`` ("point", "serve", "ttq")."""
    for name in _NUMBER_METRICS.get(kind, ()):
        value = metrics.get(name)
        if value is not None and not _is_number(value):
            return f"metrics.{name}: expected a finite number or null, got {_show(value)}"
    if kind in _TIME_STATS:
        name, stats = _TIME_STATS[kind]
        value = metrics.get(name)
        if value is not None and not isinstance(value, dict):
            return (f"metrics.{name}: expected an object of times in ms ({{\"median\": ...}}) "
                    f"or null, got {_show(value)}")
        for stat in stats if value else ():
            v = value.get(stat)
            if v is not None and not (_is_number(v) and v >= 0):
                return f"metrics.{name}.{stat}: expected a number >= 0 or null, got {_show(v)}"
        n = value.get("n") if value else None
        if n is not None and not (isinstance(n, int) and not isinstance(n, bool) and n >= 0):
            return f"metrics.{name}.n: expected a count of samples (an integer >= 0) or null, " \
                f"got {_show(n)}"
    return None


def samples_problem(samples: Any) -> str | None:
    """What is wrong with ``samples_ms``: raw step times, each a finite number of ms > 0."""
    if not isinstance(samples, list):
        return f"samples_ms: expected a list of step times in ms, got {_show(samples)}"
    for i, x in enumerate(samples):
        if not (_is_number(x) and x > 0):
            return f"samples_ms[{i}]: expected a step time in ms > 0, got {_show(x)}"
    return None
