"""Typed result records and their JSONL files (DESIGN.md "Result files (schema version 1)").

A results file is ``<out>/<machine-id>/<run-id>.jsonl``: one ``{"kind": "run", ...}`` header
line, then one ``{"kind": "point", ...}`` line per finished point, each appended, flushed and
fsync'ed as the point ends (and a ``{"kind": "run-end", ...}`` line when the sweep is done),
so killing a run loses nothing that finished. A reader therefore
tolerates a truncated *last* line (an interrupted write) with a warning, but refuses a corrupt
line anywhere else (someone edited the file), a line holding a value no reader can use (a hand
edit, wherever it is) and a schema version it does not know.

Fields other than the documented ones are kept in ``extra`` and written back unchanged, so a
file round-trips through :func:`load` and :class:`ResultsWriter` without loss.

The package splits along the file's life: ``schema`` (records and their validation), ``checks``
(the values every reader computes with, checked as a record is read), ``read`` (loading, and
the repair of an interrupted last line), ``write`` (the appending writer) and ``frame`` (a
pandas view). Import from ``bench.results``; the names below are its API.
"""

from bench.point import ID_DEFAULTS as POINT_ID_DEFAULTS
from bench.point import ID_FIELDS_V1 as POINT_FIELDS_V1
from bench.point import point_id
from bench.results.frame import record_row, records_frame
from bench.results.read import ResultsFile, iter_ok, load, load_many, read_header, repair_tail
from bench.results.schema import (
    SCHEMA_VERSION,
    SERVE_STATUSES,
    STATUSES,
    TTQ_STATUSES,
    PointRecord,
    ResultsWarning,
    RunEnd,
    RunHeader,
    ServeRecord,
    TTQRecord,
    iso_utc,
    json_safe,
    make_run_id,
    safe_name,
)
from bench.results.write import ResultsWriteError, ResultsWriter

__all__ = [
    "POINT_FIELDS_V1",
    "POINT_ID_DEFAULTS",
    "SCHEMA_VERSION",
    "SERVE_STATUSES",
    "STATUSES",
    "TTQ_STATUSES",
    "PointRecord",
    "ResultsFile",
    "ResultsWarning",
    "ResultsWriteError",
    "ResultsWriter",
    "RunEnd",
    "RunHeader",
    "ServeRecord",
    "TTQRecord",
    "iso_utc",
    "iter_ok",
    "json_safe",
    "load",
    "load_many",
    "make_run_id",
    "point_id",
    "read_header",
    "record_row",
    "records_frame",
    "repair_tail",
    "safe_name",
]
