"""The DataFrame view of results files: one row per point record, nested metrics flattened."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from bench.results.read import ResultsFile
from bench.results.schema import PointRecord

if TYPE_CHECKING:
    import pandas


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

