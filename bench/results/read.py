"""Reading results files: validation, a truncated last line skipped with a warning, and the
repair of that line before a resumed run appends to the file."""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from bench.results.schema import (
    PointRecord,
    ResultsWarning,
    RunEnd,
    RunHeader,
    ServeRecord,
    TTQRecord,
)
from recmodels.errors import InputError
from recmodels.textio import strip_bom, utf8_problem


def repair_tail(path: Path) -> None:
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



@dataclass
class ResultsFile:
    """A loaded results file. ``warnings`` lists what was skipped (also sent to warnings.warn)."""

    path: Path
    header: RunHeader
    records: list[PointRecord]
    warnings: list[str] = field(default_factory=list)
    ends: list[RunEnd] = field(default_factory=list)  # run-end lines, in file order
    serve: list[ServeRecord] = field(default_factory=list)  # serving records, in file order
    ttq: list[TTQRecord] = field(default_factory=list)  # time-to-quality records, in order

    @property
    def end(self) -> RunEnd | None:
        """The last run-end line (conditions and roofs at the end), or None: the run was
        interrupted, is still going, or was written before run-end lines existed."""
        return self.ends[-1] if self.ends else None

    @property
    def machine_id(self) -> str | None:
        return self.header.machine_id

    @property
    def run_id(self) -> str:
        return self.header.run_id


_HOW_TO_FIX = "the file may have been edited; restore it or delete that line"
# A line that parses but holds a value no reader can use (a hand edit): that line is refused
# as a whole, whichever command reads it, before any of them computes (or plots) anything.
_FIX_RECORD = "restore the value or delete that line"
_RESUME_NOTE = " (`recbench run --resume` measures a deleted point again)"


def load(path: str | os.PathLike[str]) -> ResultsFile:
    """Read and validate one results file.

    A truncated or corrupt *last* line is skipped with a ResultsWarning (a killed run); a
    corrupt line anywhere else, a missing or invalid header, an empty file and an unknown
    schema version are InputErrors naming the file (and line). So is a record holding a value
    no reader can use (``"batch_size": "big"``, ``"step_ms": "fast"``, a negative sample: see
    bench/results/checks.py), wherever it is: a complete line was written whole, so a bad
    value in it is an edit, never an interrupted write, and every command refuses it alike.
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
    # UTF-8, a byte-order mark allowed. Lines are checked one by one, not the whole file
    # up front: a killed run may leave half a multi-byte character on the last line.
    lines = strip_bom(str(p), data).split(b"\n")
    numbered = [(i + 1, raw) for i, raw in enumerate(lines) if raw.strip()]
    header = _header(p, numbered)

    records: list[PointRecord] = []
    ends: list[RunEnd] = []
    serve: list[ServeRecord] = []
    ttq: list[TTQRecord] = []
    notes: list[str] = []
    kinds: dict[str, tuple[type[PointRecord], list]] = {
        "point": (PointRecord, records), "serve": (ServeRecord, serve), "ttq": (TTQRecord, ttq)}
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
            bad_text = utf8_problem(raw)
            what = f" (not UTF-8 text: {bad_text[1]})" if bad_text else ""
            raise InputError(f"{p}:{no}: corrupt line{what}; {_HOW_TO_FIX}") from e
        kind = obj.get("kind")
        if kind in kinds:
            cls, into = kinds[kind]
            try:
                into.append(cls.from_json(obj))
            except InputError as e:
                note = _RESUME_NOTE if kind == "point" else ""
                raise InputError(f"{p}:{no}: {e}; {_FIX_RECORD}{note}") from e
        elif kind == "run-end":
            try:
                ends.append(RunEnd.from_json(obj))
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
    return ResultsFile(p, header, records, notes, ends, serve, ttq)


def read_header(path: str | os.PathLike[str]) -> RunHeader:
    """The run header of a results file, checked as :func:`load` checks it, without reading
    (or judging) the records after it: which run a file holds, e.g. to choose one to resume."""
    p = Path(path)
    numbered: list[tuple[int, bytes]] = []
    try:
        with open(p, "rb") as f:
            for no, raw in enumerate(f, 1):
                raw = strip_bom(str(p), raw) if no == 1 else raw
                if raw.strip():
                    numbered.append((no, raw.rstrip(b"\n")))
                    break
    except OSError as e:
        raise InputError(f"cannot read results file {p}: {e.strerror or e}") from e
    return _header(p, numbered)


def _header(p: Path, numbered: list[tuple[int, bytes]]) -> RunHeader:
    """The header from the file's first non-blank line (``numbered``: (line number, bytes))."""
    if not numbered:
        raise InputError(f"{p}: empty results file; the run wrote nothing: rerun or delete it")
    first_no, first_raw = numbered[0]
    bad_text = utf8_problem(first_raw)
    if bad_text is not None:
        raise InputError(
            f"{p}:{first_no}: not a recbench results file: not UTF-8 text: {bad_text[1]}; "
            "pass a .jsonl file written by `recbench run`"
        )
    try:
        first = json.loads(first_raw.decode("utf-8"))
    except json.JSONDecodeError as e:
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
        return RunHeader.from_json(first)
    except InputError as e:
        raise InputError(f"{p}:{first_no}: {e}") from e


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

