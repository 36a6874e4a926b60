"""The result schema, version 1 (DESIGN.md "Result files"): the run header and point records,
their validation, and the JSON and id helpers both the reader and the writer use."""

from __future__ import annotations

import json
import math
import os
import re
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, ClassVar

from bench.point import compile_mode, point_id  # the one id rule, shared with Point.id
from bench.results.checks import count_problem, metrics_problem, samples_problem, step_point_problem
from recmodels.errors import InputError

SCHEMA_VERSION = 1
STATUSES = (
    "ok",
    "oom",
    "infeasible",
    "skipped-after-oom",
    "unsupported",
    "crashed",
    "timeout",
    "error",
)

_RUN_KEYS = ("kind", "schema_version", "run_id", "suite", "started_at", "env", "roofs")
_END_KEYS = ("kind", "run_id", "ended_at", "conditions", "roofs", "roof_drift", "flags")
_POINT_KEYS = ("kind", "id", "point", "status", "reason", "metrics", "samples_ms", "flags")


class ResultsWarning(UserWarning):
    """A results file was readable but not intact (e.g. a truncated last line was skipped)."""


# --- JSON helpers -------------------------------------------------------------------------------


def json_safe(obj: Any) -> Any:
    """A copy of ``obj`` that strict JSON can hold.

    NaN and infinities become None (a metric without a value is null, never a fake number);
    numpy scalars and arrays become Python numbers and lists; tuples become lists; paths
    become strings.
    """
    if obj is None or isinstance(obj, (bool, int, str)):
        return obj
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, Mapping):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    tolist = getattr(obj, "tolist", None)  # numpy scalar or array, without importing numpy
    if callable(tolist):
        return json_safe(tolist())
    raise TypeError(f"cannot store a {type(obj).__name__} in a results file: {obj!r}")


def dumps(obj: Mapping[str, Any]) -> str:
    return json.dumps(json_safe(obj), ensure_ascii=False, allow_nan=False)


def make_run_id(now: datetime | None = None) -> str:
    """``20261128T121500Z-1a2b``: UTC start time plus 4 random hex against same-second clashes.

    A naive ``now`` is taken as UTC.
    """
    now = _utc(now)
    return f"{now.strftime('%Y%m%dT%H%M%SZ')}-{secrets.token_hex(2)}"


def iso_utc(now: datetime | None = None) -> str:
    """``2026-11-28T12:15:00Z``: the ``started_at`` format."""
    return _utc(now).strftime("%Y-%m-%dT%H:%M:%SZ")


def _utc(now: datetime | None) -> datetime:
    if now is None:
        return datetime.now(timezone.utc)
    if now.tzinfo is None:
        return now.replace(tzinfo=timezone.utc)
    return now.astimezone(timezone.utc)


_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def safe_name(name: str, what: str = "name") -> str:
    """``name`` as one filesystem-safe path component: ``[A-Za-z0-9._-]``, at most 100 chars."""
    s = _UNSAFE.sub("-", str(name)).strip(".-")[:100].strip(".-")
    if not s:
        raise InputError(f"{what} {name!r} has no filesystem-safe characters; use letters/digits")
    return s


# --- records ------------------------------------------------------------------------------------


def _require(d: Mapping[str, Any], key: str, types: type | tuple[type, ...], what: str) -> Any:
    if key not in d:
        raise InputError(f"{what} has no {key!r} field")
    v = d[key]
    if not isinstance(v, types):
        raise InputError(f"{what} field {key!r} has the wrong type ({type(v).__name__})")
    return v


@dataclass
class RunHeader:
    """The first line of a results file: who ran what, where, and the machine's roofs."""

    run_id: str
    suite: str
    started_at: str  # ISO 8601 UTC, see iso_utc()
    env: dict[str, Any]  # bench.machine.envinfo.fingerprint()
    roofs: dict[str, Any]  # bench.machine.roofs.measure_roofs(): "<device>/<dtype>" -> {...}
    # (the runner also writes "conditions": bench.machine.conditions.sample_conditions() at
    # the start, in ``extra``; files before it have none)
    schema_version: int = SCHEMA_VERSION
    extra: dict[str, Any] = field(default_factory=dict)  # unknown fields, kept for round trips

    def __post_init__(self) -> None:
        clash = set(self.extra) & set(_RUN_KEYS)
        if clash:
            raise ValueError(f"RunHeader.extra must not hold documented fields: {sorted(clash)}")

    @property
    def machine_id(self) -> str | None:
        return self.env.get("machine_id")

    def to_json(self) -> dict[str, Any]:
        """The header as a JSON-ready dict (``kind`` first, extras last)."""
        d: dict[str, Any] = {
            "kind": "run",
            "schema_version": self.schema_version,
            "run_id": self.run_id,
            "suite": self.suite,
            "started_at": self.started_at,
            "env": self.env,
            "roofs": self.roofs,
        }
        d.update(self.extra)
        return d

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> RunHeader:
        """Parse a header dict; raises InputError (without file context) when it is invalid."""
        if not isinstance(d, Mapping) or d.get("kind") != "run":
            raise InputError('first line is not a run header ({"kind": "run", ...})')
        _check_schema(d.get("schema_version"))
        return cls(
            run_id=_require(d, "run_id", str, "run header"),
            suite=_require(d, "suite", str, "run header"),
            started_at=_require(d, "started_at", str, "run header"),
            env=dict(_require(d, "env", dict, "run header")),
            roofs=dict(_require(d, "roofs", dict, "run header")),
            schema_version=d["schema_version"],
            extra={k: v for k, v in d.items() if k not in _RUN_KEYS},
        )


def _check_schema(v: Any) -> None:
    if isinstance(v, bool) or not isinstance(v, int):
        raise InputError(f"run header has no valid schema_version (got {v!r}); not a recbench file")
    if v > SCHEMA_VERSION:
        raise InputError(
            f"written by a newer recbench (schema {v}); this version reads schema "
            f"{SCHEMA_VERSION}: upgrade recbench"
        )
    if v != SCHEMA_VERSION:
        raise InputError(f"unknown schema_version {v}; this recbench reads schema {SCHEMA_VERSION}")


@dataclass
class PointRecord:
    """One finished sweep point: its parameters, status, metrics and raw step times."""

    id: str  # point_id(point)
    point: dict[str, Any]  # framework, workload, preset, ..., device
    status: str  # one of STATUSES
    reason: str | None = None  # why, for every status but "ok"
    metrics: dict[str, Any] = field(default_factory=dict)  # see DESIGN.md; null, never 0
    samples_ms: list[float] = field(default_factory=list)  # raw per-iteration step times
    # Warnings beside the status, name -> why (e.g. {"unstable": "CV 23% > 10%"}): an ok point
    # stays ok, but readers show the flag and comparisons do not trust it.
    flags: dict[str, str] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)  # unknown fields, kept for round trips
    kind: ClassVar[str] = "point"
    statuses: ClassVar[tuple[str, ...]] = STATUSES

    def __post_init__(self) -> None:
        if self.status not in self.statuses:
            raise ValueError(f"unknown status {self.status!r}; expected one of {self.statuses}")
        if self.status != "ok" and not (isinstance(self.reason, str) and self.reason.strip()):
            raise ValueError(f"status {self.status!r} needs a reason (why it is not ok)")
        clash = set(self.extra) & set(_POINT_KEYS)
        if clash:
            raise ValueError(f"PointRecord.extra must not hold documented fields: {sorted(clash)}")
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in self.flags.items()):
            raise ValueError("flags must map a flag name to the reason it was raised")
        if not all(math.isfinite(x) for x in self.samples_ms):
            raise ValueError("samples_ms must be finite step times in ms")  # JSON has no NaN

    @classmethod
    def for_point(
        cls,
        point: Mapping[str, Any],
        status: str,
        reason: str | None = None,
        metrics: Mapping[str, Any] | None = None,
        samples_ms: Iterable[float] | None = None,
        flags: Mapping[str, str] | None = None,
        **extra: Any,
    ) -> PointRecord:
        """A record whose ``id`` is ``point_id(point)``."""
        return cls(
            id=point_id(point),
            point=dict(point),
            status=status,
            reason=reason,
            metrics=dict(metrics or {}),
            samples_ms=[float(x) for x in (() if samples_ms is None else samples_ms)],
            flags=dict(flags or {}),
            extra=dict(extra),
        )

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def to_json(self) -> dict[str, Any]:
        """The record as a JSON-ready dict (``kind`` first, extras last)."""
        d: dict[str, Any] = {
            "kind": self.kind,
            "id": self.id,
            "point": self.point,
            "status": self.status,
            "reason": self.reason,
            "metrics": self.metrics,
            "samples_ms": self.samples_ms,
            "flags": self.flags,
        }
        d.update(self.extra)
        return d

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> PointRecord:
        """Parse a point dict; raises InputError (without file context) when it is invalid."""
        if not isinstance(d, Mapping) or d.get("kind") != cls.kind:
            raise InputError(f'not a {cls.kind} record ({{"kind": "{cls.kind}", ...}})')
        reason = d.get("reason")
        if reason is not None and not isinstance(reason, str):
            raise InputError(f"point record field 'reason' must be a string, got {reason!r}")
        samples = d.get("samples_ms", [])
        flags = d.get("flags", {})  # absent in files written before flags existed
        if not isinstance(flags, dict):
            raise InputError("point record field 'flags' must be an object")
        metrics = d.get("metrics", {})
        if not isinstance(metrics, dict):
            raise InputError("point record field 'metrics' must be an object")
        point = dict(_require(d, "point", dict, "point record"))
        if "compile" in point:  # a boolean before the modes: false is eager, true default
            point["compile"] = compile_mode(point["compile"])
        _require(d, "id", str, "point record")
        problem = (cls._point_problem(point) or metrics_problem(cls.kind, metrics)
                   or samples_problem(samples))
        if problem:
            raise InputError(problem)
        try:
            return cls(
                # recomputed, not trusted: a file written under an older id rule pairs with
                # new records (point_id)
                id=point_id(point),
                point=point,
                status=_require(d, "status", str, "point record"),
                reason=reason,
                metrics=dict(metrics),
                samples_ms=[float(x) for x in samples],
                flags=dict(flags),
                extra={k: v for k, v in d.items() if k not in _POINT_KEYS},
            )
        except InputError:
            raise
        except ValueError as e:  # bad status or a missing reason, from __post_init__
            raise InputError(f"invalid point record: {e}") from e

    @classmethod
    def _point_problem(cls, point: Mapping[str, Any]) -> str | None:
        """What is wrong with this kind's ``point`` (serve and ttq points: their counts)."""
        return step_point_problem(point) if cls.kind == "point" else count_problem(point)



# Serving records (`recbench serve`, [[serve]] suite tables): a point record of another kind,
# so that every reader of step points (tables, plots, compare, gate) never meets one, and a
# recbench from before them skips the line with a warning (an unknown kind) and reads the rest.
SERVE_STATUSES = (*STATUSES, "sla-missed")  # sla-missed: no rate met the latency target


@dataclass
class ServeRecord(PointRecord):
    """One LoadGen measurement (``{"kind": "serve", ...}``): ``point`` has a ``scenario``,
    ``metrics`` the serving figures (bench/scenarios/serve.py); ``samples_ms`` is empty."""

    kind: ClassVar[str] = "serve"
    statuses: ClassVar[tuple[str, ...]] = SERVE_STATUSES


# Time-to-quality records (`recbench ttq`): MLPerf Training's score for one configuration,
# another kind again, so step readers never meet one and an older recbench skips the line.
# ``point``: framework, preset, dataset, precision, device, compile, target ("hr@10" or
# "ndcg@10"), target_value, runs, max_epochs, eval_every, batch_size, seed (the first run's).
# ``metrics``: time_to_target_s (the mean over runs without the fastest and the slowest; null
# unless ok), runs (per run: seed, status "converged" / "did-not-converge" / "diverged",
# wall_s, train_s, eval_s, epochs, energy_j, curve), train_share / eval_share, energy_to_target_j
# and energy_provenance, the paper's quality where the dataset is in the registry.
TTQ_STATUSES = (*STATUSES, "did-not-converge")  # two or more runs missed the target


@dataclass
class TTQRecord(PointRecord):
    """One time-to-quality measurement (``{"kind": "ttq", ...}``); ``samples_ms`` is empty."""

    kind: ClassVar[str] = "ttq"
    statuses: ClassVar[tuple[str, ...]] = TTQ_STATUSES


@dataclass
class RunEnd:
    """The last line of a finished run (``{"kind": "run-end", ...}``): the conditions at the
    end, the roofs measured again, and their drift since the start.

    Written once the sweep is done (not on Ctrl-C; a resumed run writes its own), so a file
    can hold several; :class:`~bench.results.read.ResultsFile` keeps them in order. Readers
    before this line existed skip it with a warning (an unknown kind) and read the rest.
    """

    run_id: str
    ended_at: str  # ISO 8601 UTC, see iso_utc()
    conditions: dict[str, Any] = field(default_factory=dict)  # conditions.sample_conditions()
    roofs: dict[str, Any] = field(default_factory=dict)  # measured again at the end; {} if not
    roof_drift: dict[str, Any] = field(default_factory=dict)  # key -> metric -> end/start - 1
    flags: dict[str, str] = field(default_factory=dict)  # e.g. {"roof-drift": "cpu/fp32 ..."}
    extra: dict[str, Any] = field(default_factory=dict)  # unknown fields, kept for round trips

    def to_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {"kind": "run-end", "run_id": self.run_id, "ended_at": self.ended_at,
                             "conditions": self.conditions, "roofs": self.roofs,
                             "roof_drift": self.roof_drift, "flags": self.flags}
        d.update(self.extra)
        return d

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> RunEnd:
        """Parse a run-end dict; raises InputError (without file context) when it is invalid."""
        if not isinstance(d, Mapping) or d.get("kind") != "run-end":
            raise InputError('not a run-end record ({"kind": "run-end", ...})')
        objects = {k: d.get(k, {}) for k in ("conditions", "roofs", "roof_drift", "flags")}
        bad = [k for k, v in objects.items() if not isinstance(v, dict)]
        if bad:
            raise InputError(f"run-end field {bad[0]!r} must be an object")
        if not all(isinstance(v, str) for v in objects["flags"].values()):
            raise InputError("run-end flags must map a flag name to its reason")
        return cls(run_id=_require(d, "run_id", str, "run-end record"),
                   ended_at=_require(d, "ended_at", str, "run-end record"),
                   **{k: dict(v) for k, v in objects.items()},
                   extra={k: v for k, v in d.items() if k not in _END_KEYS})
