"""Writing results files: each record appended, flushed and fsync'ed as its point ends."""

from __future__ import annotations

import argparse
import contextlib
import os
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import IO, Any

from bench.results.read import ResultsFile, load, repair_tail
from bench.results.schema import (
    SCHEMA_VERSION,
    PointRecord,
    ResultsWarning,
    RunEnd,
    RunHeader,
    ServeRecord,
    TTQRecord,
    dumps,
    safe_name,
)
from recmodels.errors import InputError


def out_dir(text: str) -> str:
    """The argparse type of every command's --out directory (results, figures, the report):
    an empty one would put the files in the current directory."""
    if not text.strip():
        raise argparse.ArgumentTypeError("expected a directory, got an empty string; name one, "
                                         "or leave --out out for the default")
    return text


class ResultsWriteError(InputError):
    """Appending to a results file failed (disk full, file size limit, I/O error). The file
    is left as it was before the failed line, so it loads and ``--resume`` completes it.
    ``n_recorded``: the point records safely in the file."""

    def __init__(self, path: Path, error: OSError, n_recorded: int) -> None:
        self.path, self.n_recorded = path, n_recorded
        self.reason = error.strerror or str(error)
        super().__init__(f"cannot write to results file {path} ({self.reason}); "
                         f"{n_recorded} point record{'s' if n_recorded != 1 else ''} "
                         "safely recorded")


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
        self.serve: list[ServeRecord] = []  # serving records, likewise (never in .records)
        self.ttq: list[TTQRecord] = []  # time-to-quality records, likewise
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
            if isinstance(e, (OSError, ResultsWriteError)):
                why = e.reason if isinstance(e, ResultsWriteError) else (e.strerror or e)
                raise InputError(
                    f"cannot write results file {path}: {why}; pass a writable --out DIR"
                ) from None
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
        with warnings.catch_warnings():  # repair_tail warns about the same partial line
            warnings.simplefilter("ignore", ResultsWarning)
            loaded = load(p)  # first, so a file that is not ours is never modified
        if check is not None:
            check(loaded)
        repair_tail(p)
        try:
            fh = open(p, "a", encoding="utf-8", newline="\n")  # noqa: SIM115 (kept open)
        except OSError as e:
            raise InputError(f"cannot append to results file {p}: {e.strerror or e}") from e
        writer = cls(p, fh, loaded.header, loaded.records)
        writer.serve = list(loaded.serve)
        writer.ttq = list(loaded.ttq)
        return writer

    def write(self, record: PointRecord) -> None:
        """Append one record; it is on disk (flushed and fsync'ed) when this returns."""
        if not isinstance(record, PointRecord):
            raise TypeError(f"write() takes a PointRecord, not {type(record).__name__}")
        self._write_line(record.to_json())
        if isinstance(record, ServeRecord):
            self.serve.append(record)
        elif isinstance(record, TTQRecord):
            self.ttq.append(record)
        else:
            self.records.append(record)

    def write_end(self, end: RunEnd) -> None:
        """Append the run-end line (the run's conditions and roofs at its end); on disk when
        this returns. Records may still follow it (a resumed run writes its own end)."""
        if not isinstance(end, RunEnd):
            raise TypeError(f"write_end() takes a RunEnd, not {type(end).__name__}")
        self._write_line(end.to_json())

    def _write_line(self, obj: Mapping[str, Any]) -> None:
        if self._fh is None:
            raise ValueError(f"results writer for {self.path} is closed")
        data = (dumps(obj) + "\n").encode("utf-8")
        fd = self._fh.fileno()  # written with os.write: nothing sits in a buffer to flush later
        size = os.fstat(fd).st_size  # the last complete line ends here
        try:
            view = memoryview(data)
            while view:  # one line per call in practice: a kill can only cut the tail
                view = view[os.write(fd, view):]
            os.fsync(fd)
        except OSError as e:
            # Cut the partial line off (truncating frees space, so it works on a full disk and
            # under a file size limit) and stop writing: the file stays loadable.
            with contextlib.suppress(OSError):
                os.ftruncate(fd, size)
            self.close()
            raise ResultsWriteError(self.path, e, len(self.records)) from None

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

