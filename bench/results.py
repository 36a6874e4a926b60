"""Typed result records and their JSONL files (DESIGN.md "Result files (schema version 1)").

A results file is ``<out>/<machine-id>/<run-id>.jsonl``: one ``{"kind": "run", ...}`` header
line, then one ``{"kind": "point", ...}`` line per finished point, each appended, flushed and
fsync'ed as the point ends, so killing a run loses nothing that finished. A reader therefore
tolerates a truncated *last* line (an interrupted write) with a warning, but refuses a corrupt
line anywhere else (someone edited the file) and a schema version it does not know.

Fields other than the documented ones are kept in ``extra`` and written back unchanged, so a
file round-trips through :func:`load` and :class:`ResultsWriter` without loss.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import secrets
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from recmodels.errors import InputError

if TYPE_CHECKING:
    import pandas

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
_POINT_KEYS = ("kind", "id", "point", "status", "reason", "metrics", "samples_ms")


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


def _dumps(obj: Mapping[str, Any]) -> str:
    return json.dumps(json_safe(obj), ensure_ascii=False, allow_nan=False)


def point_id(point: Mapping[str, Any]) -> str:
    """Stable id of a sweep point: first 12 hex of sha1 over its canonical JSON.

    Canonical means sorted keys, no whitespace, numpy values as Python values, so the id does
    not depend on dict order. This id is the key ``recbench run --resume`` uses to skip points
    already in a file and the key ``recbench compare`` uses to pair points across files: any
    change to a point's fields (including 1 vs 1.0) makes it a different point.
    """
    canonical = json.dumps(
        json_safe(point), sort_keys=True, separators=(",", ":"), ensure_ascii=False
    )
    return hashlib.sha1(canonical.encode("utf-8")).hexdigest()[:12]


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
    env: dict[str, Any]  # bench.envinfo.fingerprint()
    roofs: dict[str, Any]  # bench.roofs.measure_roofs(): "<device>/<dtype>" -> {...}
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
    extra: dict[str, Any] = field(default_factory=dict)  # unknown fields, kept for round trips

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"unknown status {self.status!r}; expected one of {STATUSES}")
        if self.status != "ok" and not (isinstance(self.reason, str) and self.reason.strip()):
            raise ValueError(f"status {self.status!r} needs a reason (why it is not ok)")
        clash = set(self.extra) & set(_POINT_KEYS)
        if clash:
            raise ValueError(f"PointRecord.extra must not hold documented fields: {sorted(clash)}")
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
            extra=dict(extra),
        )

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def to_json(self) -> dict[str, Any]:
        """The record as a JSON-ready dict (``kind`` first, extras last)."""
        d: dict[str, Any] = {
            "kind": "point",
            "id": self.id,
            "point": self.point,
            "status": self.status,
            "reason": self.reason,
            "metrics": self.metrics,
            "samples_ms": self.samples_ms,
        }
        d.update(self.extra)
        return d

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> PointRecord:
        """Parse a point dict; raises InputError (without file context) when it is invalid."""
        if not isinstance(d, Mapping) or d.get("kind") != "point":
            raise InputError('not a point record ({"kind": "point", ...})')
        reason = d.get("reason")
        if reason is not None and not isinstance(reason, str):
            raise InputError(f"point record field 'reason' must be a string, got {reason!r}")
        samples = d.get("samples_ms", [])
        if not isinstance(samples, list) or not all(
            isinstance(x, (int, float)) and not isinstance(x, bool) for x in samples
        ):
            raise InputError("point record field 'samples_ms' must be a list of numbers")
        metrics = d.get("metrics", {})
        if not isinstance(metrics, dict):
            raise InputError("point record field 'metrics' must be an object")
        try:
            return cls(
                id=_require(d, "id", str, "point record"),
                point=dict(_require(d, "point", dict, "point record")),
                status=_require(d, "status", str, "point record"),
                reason=reason,
                metrics=dict(metrics),
                samples_ms=[float(x) for x in samples],
                extra={k: v for k, v in d.items() if k not in _POINT_KEYS},
            )
        except InputError:
            raise
        except ValueError as e:  # bad status or a missing reason, from __post_init__
            raise InputError(f"invalid point record: {e}") from e


# --- writing ------------------------------------------------------------------------------------


class ResultsWriter:
    """Appends point records to one results file, each flushed and fsync'ed as it is written.

    Use :meth:`create` for a new run and :meth:`open_append` to resume one; both return an open
    writer (also a context manager). One writer per file at a time.
    """

    def __init__(
        self,
        path: Path,
        fh: IO[str],
        header: RunHeader,
        records: list[PointRecord] | None = None,
    ) -> None:
        self.path = path
        self.header = header
        self.records: list[PointRecord] = records or []  # those already in the file on open
        self._fh: IO[str] | None = fh

    @classmethod
    def create(
        cls, out_dir: str | os.PathLike[str], machine_id: str, run_id: str, header: RunHeader
    ) -> ResultsWriter:
        """Create ``out_dir/<machine-id>/<run-id>.jsonl`` and write the header line.

        Never overwrites: an existing file is an InputError. The two ids are made filesystem
        safe with :func:`safe_name` (the header keeps them as given).
        """
        if header.schema_version != SCHEMA_VERSION:
            raise ValueError(f"can only write schema {SCHEMA_VERSION}, not {header.schema_version}")
        directory = Path(out_dir) / safe_name(machine_id, "machine id")
        path = directory / f"{safe_name(run_id, 'run id')}.jsonl"
        try:
            directory.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise InputError(
                f"cannot create results directory {directory}: {e.strerror or e}; "
                "pass a writable --out DIR"
            ) from e
        try:
            fh = open(path, "x", encoding="utf-8", newline="\n")  # noqa: SIM115 (kept open)
        except FileExistsError as e:
            raise InputError(
                f"results file {path} already exists; resume it with --resume or use another run id"
            ) from e
        except OSError as e:
            raise InputError(
                f"cannot write in results directory {directory}: {e.strerror or e}; "
                "pass a writable --out DIR"
            ) from e
        writer = cls(path, fh, header)
        try:
            writer._write_line(header.to_json())
        except BaseException as e:  # disk full, an env value JSON cannot hold, Ctrl-C:
            writer.close()  # leave no headerless file behind (load and resume refuse one)
            path.unlink(missing_ok=True)
            if isinstance(e, OSError):
                raise InputError(
                    f"cannot write results file {path}: {e.strerror or e}; "
                    "pass a writable --out DIR"
                ) from e
            raise
        return writer

    @classmethod
    def open_append(
        cls,
        path: str | os.PathLike[str],
        check: Callable[[ResultsFile], None] | None = None,
    ) -> ResultsWriter:
        """Reopen a results file to add records (resume); ``.records`` holds those already there.

        The header is validated as :func:`load` does, then by ``check`` (which raises to refuse
        the file, e.g. one of another suite or machine). A partial last line left by a killed run
        is cut off next (with a warning); otherwise the next record would be glued to it and
        the file would have a corrupt line in the middle.
        """
        p = Path(path)
        with warnings.catch_warnings():  # _repair_tail warns about the same partial line
            warnings.simplefilter("ignore", ResultsWarning)
            loaded = load(p)  # first, so a file that is not ours is never modified
        if check is not None:
            check(loaded)
        _repair_tail(p)
        try:
            fh = open(p, "a", encoding="utf-8", newline="\n")  # noqa: SIM115 (kept open)
        except OSError as e:
            raise InputError(f"cannot append to results file {p}: {e.strerror or e}") from e
        return cls(p, fh, loaded.header, loaded.records)

    def write(self, record: PointRecord) -> None:
        """Append one record; it is on disk (flushed and fsync'ed) when this returns."""
        if not isinstance(record, PointRecord):
            raise TypeError(f"write() takes a PointRecord, not {type(record).__name__}")
        self._write_line(record.to_json())
        self.records.append(record)

    def _write_line(self, obj: Mapping[str, Any]) -> None:
        if self._fh is None:
            raise ValueError(f"results writer for {self.path} is closed")
        self._fh.write(_dumps(obj) + "\n")  # one write per line: a kill can only cut the tail
        self._fh.flush()
        os.fsync(self._fh.fileno())

    @property
    def closed(self) -> bool:
        return self._fh is None

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None

    def __enter__(self) -> ResultsWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _repair_tail(path: Path) -> None:
    """Cut an unparseable last line (an interrupted write) off ``path``, or end it with \\n."""
    try:
        data = path.read_bytes()
    except OSError as e:
        raise InputError(f"cannot read results file {path}: {e.strerror or e}") from e
    body = data.rstrip(b" \t\r\n")
    if not body:
        return  # empty: load() reports it
    start = body.rfind(b"\n") + 1
    last = body[start:]
    try:
        json.loads(last.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        if start == 0:
            return  # the header itself is broken: load() reports it
        warnings.warn(
            f"{path}: dropped a partial last line ({len(last)} bytes) left by an interrupted "
            "run before resuming",
            ResultsWarning,
            stacklevel=3,
        )
        with open(path, "r+b") as f:
            f.truncate(start)
        return
    if not data.endswith(b"\n"):
        with open(path, "ab") as f:
            f.write(b"\n")


# --- reading ------------------------------------------------------------------------------------


@dataclass
class ResultsFile:
    """A loaded results file. ``warnings`` lists what was skipped (also sent to warnings.warn)."""

    path: Path
    header: RunHeader
    records: list[PointRecord]
    warnings: list[str] = field(default_factory=list)

    @property
    def machine_id(self) -> str | None:
        return self.header.machine_id

    @property
    def run_id(self) -> str:
        return self.header.run_id


_HOW_TO_FIX = "the file may have been edited; restore it or delete that line"


def load(path: str | os.PathLike[str]) -> ResultsFile:
    """Read and validate one results file.

    A truncated or corrupt *last* line is skipped with a ResultsWarning (a killed run); a
    corrupt line anywhere else, a missing or invalid header, an empty file and an unknown
    schema version are InputErrors naming the file (and line).
    """
    p = Path(path)
    try:
        data = p.read_bytes()
    except IsADirectoryError as e:
        raise InputError(
            f"{p} is a directory; pass a .jsonl results file (or use load_many)"
        ) from e
    except OSError as e:
        raise InputError(f"cannot read results file {p}: {e.strerror or e}") from e
    lines = data.split(b"\n")
    numbered = [(i + 1, raw) for i, raw in enumerate(lines) if raw.strip()]
    if not numbered:
        raise InputError(f"{p}: empty results file; the run wrote nothing: rerun or delete it")

    first_no, first_raw = numbered[0]
    try:
        first = json.loads(first_raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InputError(
            f"{p}:{first_no}: not a recbench results file (line is not JSON); "
            "pass a .jsonl file written by `recbench run`"
        ) from e
    if not isinstance(first, dict) or first.get("kind") != "run":
        raise InputError(
            f'{p}:{first_no}: missing run header (first line must be {{"kind": "run", ...}}); '
            "pass a .jsonl file written by `recbench run`"
        )
    try:
        header = RunHeader.from_json(first)
    except InputError as e:
        raise InputError(f"{p}:{first_no}: {e}") from e

    records: list[PointRecord] = []
    notes: list[str] = []
    last_no = numbered[-1][0]
    for no, raw in numbered[1:]:
        try:
            obj = json.loads(raw.decode("utf-8"))
            if not isinstance(obj, dict):
                raise ValueError("not a JSON object")
        except (UnicodeDecodeError, ValueError) as e:
            if no == last_no:
                msg = (
                    f"{p}:{no}: skipped a truncated last line ({len(raw)} bytes); "
                    "the run was probably interrupted"
                )
                notes.append(msg)
                warnings.warn(msg, ResultsWarning, stacklevel=2)
                continue
            raise InputError(f"{p}:{no}: corrupt line; {_HOW_TO_FIX}") from e
        kind = obj.get("kind")
        if kind == "point":
            try:
                records.append(PointRecord.from_json(obj))
            except InputError as e:
                raise InputError(f"{p}:{no}: {e}; {_HOW_TO_FIX}") from e
        elif kind == "run":
            raise InputError(
                f"{p}:{no}: a second run header; files were concatenated: split them again"
            )
        else:  # a line kind added later without a schema change: other fields may be added
            msg = f"{p}:{no}: skipped a line of unknown kind {kind!r}"
            notes.append(msg)
            warnings.warn(msg, ResultsWarning, stacklevel=2)
    return ResultsFile(p, header, records, notes)


def load_many(paths_or_dirs: Iterable[str | os.PathLike[str]]) -> list[ResultsFile]:
    """Load files, expanding each directory to the ``*.jsonl`` files under it (recursive, sorted).

    A path that does not exist, or a directory without any ``.jsonl``, is an InputError.
    """
    files: list[Path] = []
    for item in paths_or_dirs:
        p = Path(item)
        if p.is_dir():
            found = sorted(q for q in p.rglob("*.jsonl") if q.is_file())
            if not found:
                raise InputError(f"no .jsonl result files under {p}; pass a results directory")
            files.extend(found)
        elif p.exists():
            files.append(p)
        else:
            raise InputError(f"{p}: no such results file or directory")
    seen: set[Path] = set()
    out = []
    for f in files:
        key = f.resolve()
        if key not in seen:
            seen.add(key)
            out.append(load(f))
    return out


def iter_ok(files: Iterable[ResultsFile]) -> Iterator[tuple[ResultsFile, PointRecord]]:
    """(file, record) for every record with status ok, in file order."""
    for f in files:
        for r in f.records:
            if r.ok:
                yield f, r


_SCALARS = (str, int, float, bool, type(None))
_META_COLUMNS = ("machine_id", "run_id", "suite", "file", "id", "status", "reason")


def _flatten(prefix: str, value: Any, out: dict[str, Any]) -> None:
    """Nested objects become ``a_b`` columns (``step_ms.median`` -> ``step_ms_median``)."""
    if isinstance(value, dict):
        for k, v in value.items():
            _flatten(f"{prefix}_{k}", v, out)
    elif isinstance(value, _SCALARS):
        out[prefix] = value
    # lists are not scalar columns; raw samples stay in PointRecord.samples_ms


def record_row(file: ResultsFile, record: PointRecord) -> dict[str, Any]:
    """One flat row: metadata, point fields, status, reason and scalar metrics."""
    row: dict[str, Any] = {
        "machine_id": file.machine_id,
        "run_id": file.run_id,
        "suite": file.header.suite,
        "file": str(file.path),
        "id": record.id,
    }
    for k, v in record.point.items():
        name = f"point_{k}" if k in _META_COLUMNS else k  # never shadow a metadata column
        if isinstance(v, dict):
            _flatten(name, v, row)
        else:
            row[name] = tuple(v) if isinstance(v, list) else v  # tuples stay hashable for groupby
    row["status"] = record.status
    row["reason"] = record.reason
    for k, v in record.metrics.items():
        _flatten(k, v, row)
    return row


def records_frame(files: Iterable[ResultsFile]) -> pandas.DataFrame:
    """A pandas DataFrame with one row per point record (every status) across ``files``.

    Columns: machine_id, run_id, suite, file, id, the point's fields, status, reason, then the
    scalar metrics with nested ones flattened (``step_ms_median``, ``step_ms_p90``, ...).
    """
    try:
        import pandas as pd
    except ImportError as e:
        raise ImportError(
            "records_frame needs pandas: pip install pandas (or pip install 'recbench[all]')"
        ) from e
    rows = [record_row(f, r) for f in files for r in f.records]
    if not rows:
        return pd.DataFrame(columns=list(_META_COLUMNS))
    return pd.DataFrame(rows)
