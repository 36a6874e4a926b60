"""`recbench plot` and `recbench report` on hand-edited results files: one line on stderr
naming the file, the line and the field with the fix, exit 2, no traceback, nothing written,
the file untouched. And a file with nothing ok says what it does hold."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.cli import main
from bench.results import ResultsWriter, RunHeader, TTQRecord

FIX = Path(__file__).parents[1] / "fixtures"

# (what, the edit, the field and problem the message names)
EDITS = {
    "batch_size": (lambda r: r["point"].__setitem__("batch_size", "big"),
                   "point.batch_size: expected a positive integer, got 'big'"),
    "step_ms": (lambda r: r["metrics"].__setitem__("step_ms", "fast"),
                "metrics.step_ms: expected an object of times in ms"),
    "negative samples": (lambda r: r.__setitem__("samples_ms", [-x for x in r["samples_ms"]]),
                         "samples_ms[0]: expected a step time in ms > 0"),
}


def edited(tmp_path: Path, what: str, line: int = 3) -> Path:
    """cpu_a.jsonl with the ok point record on ``line`` edited."""
    lines = (FIX / "cpu_a.jsonl").read_text().splitlines()
    rec = json.loads(lines[line - 1])
    assert rec["kind"] == "point" and rec["status"] == "ok" and rec["samples_ms"]
    EDITS[what][0](rec)
    lines[line - 1] = json.dumps(rec)
    path = tmp_path / "edited.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.parametrize("command", ["plot", "report"])
@pytest.mark.parametrize("what", list(EDITS))
def test_an_edited_value_is_one_line_exit_2_and_nothing_written(tmp_path: Path, capsys,
                                                                  command: str,
                                                                  what: str) -> None:
    path = edited(tmp_path, what)
    before = path.read_bytes()
    out = tmp_path / "out"
    assert main([command, str(FIX / "gpu_b.jsonl"), str(path), "--out", str(out)]) == 2
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert err.startswith(f"recbench {command}: error: {path}:3: {EDITS[what][1]}"), err
    assert "restore the value or delete that line" in err
    assert "\n" not in err and "Traceback" not in err and captured.out == ""
    assert path.read_bytes() == before
    assert not out.exists()  # no figure, no page: nothing half-written


def test_plot_on_a_failed_ttq_record_names_what_the_file_holds(tmp_path: Path, capsys) -> None:
    """A file holding only a time-to-quality record with status error: the message counts
    that record, instead of "no ok records ... (no records)"."""
    header = RunHeader(run_id="r1", suite="ttq", started_at="2026-11-28T12:00:00Z",
                       env={"machine_id": "m1"}, roofs={})
    point = {"framework": "torch", "preset": "tiny", "dataset": "games", "precision": "fp32",
             "device": "cpu", "compile": "eager", "target": "hr@10", "target_value": 0.5,
             "runs": 3, "max_epochs": 5, "eval_every": 1, "batch_size": 128, "seed": 0}
    with ResultsWriter.create(tmp_path, "m1", "r1", header) as w:
        w.write(TTQRecord.for_point(point, "error", "ValueError: boom"))
        path = w.path
    assert main(["plot", str(path), "--out", str(tmp_path / "plots")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == ("recbench plot: error: no ok records in 1 result file(s) (time-to-quality "
                   "error 1): nothing was measured to plot; `recbench report` lists each "
                   "record's reason")
    assert not (tmp_path / "plots").exists()


def test_plot_on_a_header_only_file_says_there_are_no_records(tmp_path: Path, capsys) -> None:
    header = RunHeader(run_id="r1", suite="t", started_at="2026-11-28T12:00:00Z",
                       env={"machine_id": "m1"}, roofs={})
    with ResultsWriter.create(tmp_path, "m1", "r1", header) as w:
        path = w.path
    assert main(["plot", str(path), "--out", str(tmp_path / "plots")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("recbench plot: error: no records in 1 result file(s)")
    assert "no ok records" not in err and "\n" not in err
