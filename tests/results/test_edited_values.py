"""Hand-edited values in a results file: a line that parses but holds a value no reader can
use is refused as the file is read, naming the file, the line and the field, with the fix;
the file is left as it was. A truncated last line (an interrupted write) is still skipped."""

from __future__ import annotations

import json
import re
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from bench.results import (
    PointRecord,
    ResultsWarning,
    ResultsWriter,
    RunHeader,
    ServeRecord,
    TTQRecord,
    load,
    read_header,
)
from recmodels.errors import InputError

POINT = {"framework": "torch", "workload": "infer", "preset": "tiny", "block": "sasrec",
         "loss": "bce", "n_neg": 1, "catalog_size": 500, "seq_len": 8, "batch_size": 4,
         "precision": "fp32", "device": "cpu", "compile": "eager", "optimizer": "adam"}
TTQ_POINT = {"framework": "torch", "preset": "tiny", "dataset": "games", "precision": "fp32",
             "device": "cpu", "compile": "eager", "target": "hr@10", "target_value": 0.5,
             "runs": 3, "max_epochs": 5, "eval_every": 1, "batch_size": 128, "seed": 0}
SERVE_POINT = {"scenario": "offline", "workload": "retrieve", "framework": "torch",
               "preset": "tiny", "precision": "fp32", "device": "cpu", "max_batch": 8,
               "max_delay_ms": 1.0}


def _file(tmp_path: Path) -> Path:
    """A header, three ok step points (lines 2-4), a serve record (5), a ttq record (6)."""
    header = RunHeader(run_id="r1", suite="t", started_at="2026-11-28T12:00:00Z",
                       env={"machine_id": "m1"}, roofs={})
    with ResultsWriter.create(tmp_path, "m1", "r1", header) as w:
        for b in (1, 2, 4):
            w.write(PointRecord.for_point(
                {**POINT, "batch_size": b}, "ok",
                metrics={"step_ms": {"median": 2.0, "p90": 2.5, "p99": None, "n": 3},
                         "samples_per_s": b * 500.0, "achieved_flops_per_s": 1e9,
                         "peak_device_mem_bytes": None},
                samples_ms=[2.0, 2.5, 1.5]))
        w.write(ServeRecord.for_point(SERVE_POINT, "ok", metrics={
            "samples_per_s": 100.0, "latency_ms": {"p50": 3.0, "p99": None}}))
        w.write(TTQRecord.for_point(TTQ_POINT, "error", "ValueError: boom"))
        return w.path


def _edit(path: Path, line: int, change: Callable[[dict[str, Any]], None]) -> bytes:
    """Change the record on 1-based ``line`` in place; returns the file's new bytes."""
    lines = path.read_text().splitlines()
    obj = json.loads(lines[line - 1])
    change(obj)
    lines[line - 1] = json.dumps(obj)
    path.write_text("\n".join(lines) + "\n")
    return path.read_bytes()


def _set(*keys_and_value: Any) -> Callable[[dict[str, Any]], None]:
    *keys, value = keys_and_value

    def change(obj: dict[str, Any]) -> None:
        for k in keys[:-1]:
            obj = obj[k]
        obj[keys[-1]] = value

    return change


# (what, line, change, the field and problem the message names)
EDITS = [
    ("batch_size a word", 3, _set("point", "batch_size", "big"),
     "point.batch_size: expected a positive integer, got 'big'"),
    ("step_ms a word", 3, _set("metrics", "step_ms", "fast"),
     "metrics.step_ms: expected an object of times in ms"),
    ("a negative sample", 3, _set("samples_ms", 1, -2.5),
     "samples_ms[1]: expected a step time in ms > 0, got -2.5"),
    ("a zero sample", 2, _set("samples_ms", 0, 0),
     "samples_ms[0]: expected a step time in ms > 0, got 0"),
    ("an infinite sample", 4, _set("samples_ms", 2, float("inf")),
     "samples_ms[2]: expected a step time in ms > 0, got inf"),
    ("a NaN metric", 4, _set("metrics", "achieved_flops_per_s", float("nan")),
     "metrics.achieved_flops_per_s: expected a finite number or null, got nan"),
    ("a negative median", 2, _set("metrics", "step_ms", "median", -1.0),
     "metrics.step_ms.median: expected a number >= 0 or null, got -1.0"),
    ("a sample count as text", 2, _set("metrics", "step_ms", "n", "3"),
     "metrics.step_ms.n: expected a count of samples (an integer >= 0) or null, got '3'"),
    ("samples_per_s a word", 4, _set("metrics", "samples_per_s", "lots"),
     "metrics.samples_per_s: expected a finite number or null, got 'lots'"),
    ("samples_ms not a list", 2, _set("samples_ms", "2.0"),
     "samples_ms: expected a list of step times in ms, got '2.0'"),
    ("an unknown framework", 2, _set("point", "framework", "torhc"),
     "point.framework: unknown framework 'torhc' (did you mean 'torch'?)"),
    ("a batch_size of 0", 4, _set("point", "batch_size", 0),
     "point.batch_size: expected a positive integer, got 0"),
    ("no batch_size", 2, lambda obj: obj["point"].pop("batch_size"),
     "point has no batch_size"),
    ("fields that disagree", 2, _set("point", "world_size", 2),
     "need a parallel strategy"),
    ("a serve batch a word", 5, _set("point", "max_batch", "big"),
     "point.max_batch: expected a positive integer, got 'big'"),
    ("a serve latency a word", 5, _set("metrics", "latency_ms", "p50", "fast"),
     "metrics.latency_ms.p50: expected a number >= 0 or null, got 'fast'"),
    ("a ttq batch a word", 6, _set("point", "batch_size", "big"),
     "point.batch_size: expected a positive integer, got 'big'"),
    ("a ttq time a word", 6, _set("metrics", "time_to_target_s", "soon"),
     "metrics.time_to_target_s: expected a finite number or null, got 'soon'"),
]


@pytest.mark.parametrize(("line", "change", "message"), [e[1:] for e in EDITS],
                         ids=[e[0] for e in EDITS])
def test_an_edited_value_names_the_file_line_and_field_and_leaves_the_file(
        tmp_path: Path, line: int, change: Callable, message: str) -> None:
    path = _file(tmp_path)
    before = _edit(path, line, change)
    with pytest.raises(InputError) as e:
        load(path)
    text = str(e.value)
    assert text.startswith(f"{path}:{line}: ") and message in text, text
    assert "restore the value or delete that line" in text and "\n" not in text
    assert path.read_bytes() == before
    # the header alone is still readable (a bare --resume finds the file by it)
    assert read_header(path).suite == "t"


def test_a_bad_value_on_the_last_line_is_refused_not_skipped_as_truncated(tmp_path: Path) -> None:
    """A complete line is written whole: a bad value in it is an edit, wherever it is."""
    path = _file(tmp_path)
    _edit(path, 6, _set("point", "runs", "three"))
    with pytest.raises(InputError, match=re.escape(f"{path}:6: point.runs: expected a positive "
                                                   "integer, got 'three'")):
        load(path)


def test_a_truncated_last_line_is_still_skipped_with_a_warning(tmp_path: Path) -> None:
    path = _file(tmp_path)
    with open(path, "ab") as f:
        f.write(b'{"kind": "point", "id": "x", "point": {"batch_si')
    with pytest.warns(ResultsWarning, match=":7: skipped a truncated last line"):
        loaded = load(path)
    assert len(loaded.records) == 3 and len(loaded.ttq) == 1


def test_nulls_and_added_fields_are_not_edits(tmp_path: Path) -> None:
    """Null metrics (a device that cannot give them), an ok record without step_ms, a point
    from before defaults were written and fields added later all read as before."""
    path = _file(tmp_path)
    _edit(path, 2, _set("metrics", {"step_ms": None, "samples_per_s": None, "new_metric": "x"}))
    _edit(path, 3, lambda obj: obj["point"].update(catalog_size=None, n_neg=None,
                                                   compile=False, added_field="anything"))
    _edit(path, 4, _set("metrics", "step_ms", {"median": 2.0, "ci_method": "binomial",
                                               "null_reasons": {"p99": "too few"}}))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loaded = load(path)
    assert len(loaded.records) == 3
    assert loaded.records[0].metrics["step_ms"] is None
    assert loaded.records[1].point["added_field"] == "anything"


def test_read_header_checks_only_the_header(tmp_path: Path) -> None:
    path = _file(tmp_path)
    _edit(path, 3, _set("point", "batch_size", "big"))
    assert read_header(path).run_id == "r1"
    empty = tmp_path / "empty.jsonl"
    empty.write_bytes(b"\n\n")
    with pytest.raises(InputError, match="empty results file"):
        read_header(empty)
    newer = tmp_path / "newer.jsonl"
    newer.write_text('{"kind": "run", "schema_version": 99, "run_id": "x", "suite": "t"}\n')
    with pytest.raises(InputError, match=r"newer\.jsonl:1: written by a newer recbench"):
        read_header(newer)
    with pytest.raises(InputError, match="cannot read results file"):
        read_header(tmp_path / "missing.jsonl")
