"""Result files: typed records, the JSONL writer, the tolerant-but-strict reader, the frame."""

from __future__ import annotations

import json
import math
import re
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pytest

from bench.results import (
    SCHEMA_VERSION,
    STATUSES,
    PointRecord,
    ResultsWarning,
    ResultsWriter,
    RunHeader,
    iter_ok,
    load,
    load_many,
    make_run_id,
    point_id,
    records_frame,
)
from recmodels.errors import InputError

POINT = {
    "framework": "torch",
    "workload": "train",
    "preset": "tiny",
    "block": "sasrec",
    "loss": "bce",
    "catalog_size": 1000,
    "seq_len": 50,
    "batch_size": 128,
    "precision": "fp32",
    "device": "cpu",
}


def header(run_id: str = "20261128T121500Z-abcd", machine: str = "amd-epyc-2c-23g-123abc"):
    return RunHeader(
        run_id=run_id,
        suite="quick",
        started_at="2026-11-28T12:15:00Z",
        env={"machine_id": machine, "cpu": "AMD EPYC", "gpus": []},
        roofs={"cpu/fp32": {"gemm_flops_per_s": 5e10, "mem_bytes_per_s": 1e10}},
    )


def ok_record(batch_size: int = 128, median: float = 10.0) -> PointRecord:
    return PointRecord.for_point(
        {**POINT, "batch_size": batch_size},
        "ok",
        metrics={
            "step_ms": {"median": median, "p90": median * 1.1, "n": 3},
            "samples_per_s": batch_size / median * 1e3,
            "energy_j_per_step": None,
        },
        samples_ms=[median, median * 0.9, median * 1.1],
    )


def oom_record() -> PointRecord:
    return PointRecord.for_point({**POINT, "batch_size": 1 << 20}, "oom", reason="CUDA OOM")


def write_run(tmp_path: Path, records: list[PointRecord], run_id: str = "r1") -> Path:
    with ResultsWriter.create(tmp_path, "m1", run_id, header(run_id)) as w:
        for r in records:
            w.write(r)
    return w.path


# --- records ------------------------------------------------------------------------------------


def test_header_and_records_round_trip(tmp_path: Path) -> None:
    records = [ok_record(64), ok_record(128, 12.5), oom_record()]
    path = write_run(tmp_path, records)
    assert path == tmp_path / "m1" / "r1.jsonl"
    loaded = load(path)
    assert loaded.header == header("r1")
    assert loaded.records == records
    assert loaded.warnings == []
    assert loaded.machine_id == "amd-epyc-2c-23g-123abc"
    lines = path.read_text().splitlines()
    assert [json.loads(x)["kind"] for x in lines] == ["run", "point", "point", "point"]
    assert json.loads(lines[0])["schema_version"] == SCHEMA_VERSION == 1


def test_unknown_fields_survive_a_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "r.jsonl"
    head = {**header().to_json(), "host_note": "rack 7"}
    rec = {**oom_record().to_json(), "attempt": 2, "future": {"x": [1, 2]}}
    path.write_text(json.dumps(head) + "\n" + json.dumps(rec) + "\n")
    loaded = load(path)
    assert loaded.header.extra == {"host_note": "rack 7"}
    assert loaded.records[0].extra == {"attempt": 2, "future": {"x": [1, 2]}}
    # Written back unchanged.
    assert loaded.header.to_json() == head
    assert loaded.records[0].to_json() == rec


def test_flags_round_trip_and_older_files_have_none(tmp_path: Path) -> None:
    flagged = PointRecord.for_point(POINT, "ok", metrics={"x": 1}, samples_ms=[1.0, 9.0],
                                    flags={"unstable": "CV 80% > 10%"})
    path = write_run(tmp_path, [flagged, ok_record(64)])
    a, b = load(path).records
    assert a.flags == {"unstable": "CV 80% > 10%"} and a.ok and b.flags == {}
    # A record written before flags existed reads as unflagged, and a bad value is refused.
    old = {k: v for k, v in ok_record(64).to_json().items() if k != "flags"}
    assert PointRecord.from_json(old).flags == {}
    with pytest.raises(InputError, match="'flags' must be an object"):
        PointRecord.from_json({**old, "flags": ["unstable"]})
    with pytest.raises(InputError, match="flags must map a flag name to the reason"):
        PointRecord.from_json({**old, "flags": {"unstable": 1}})


def test_status_is_validated_and_non_ok_needs_a_reason() -> None:
    assert "skipped-after-oom" in STATUSES and len(STATUSES) == 8
    with pytest.raises(ValueError, match="unknown status"):
        PointRecord.for_point(POINT, "slow")
    for status in STATUSES[1:]:
        with pytest.raises(ValueError, match="needs a reason"):
            PointRecord.for_point(POINT, status)
        assert PointRecord.for_point(POINT, status, reason="why").reason == "why"
    assert PointRecord.for_point(POINT, "ok").reason is None


def test_nan_and_numpy_values_are_stored_as_json(tmp_path: Path) -> None:
    rec = PointRecord.for_point(
        {**POINT, "batch_size": np.int64(32)},
        "ok",
        metrics={"utilization": float("nan"), "flops_per_step": np.float64(2.5e9)},
        samples_ms=np.array([1.0, 2.0]),
    )
    path = write_run(tmp_path, [rec])
    text = path.read_text()
    assert "NaN" not in text
    got = load(path).records[0]
    assert got.metrics == {"utilization": None, "flops_per_step": 2.5e9}
    assert got.point["batch_size"] == 32
    assert got.id == point_id({**POINT, "batch_size": 32})


# --- writer -------------------------------------------------------------------------------------


def test_writer_never_overwrites(tmp_path: Path) -> None:
    path = write_run(tmp_path, [ok_record()])
    before = path.read_bytes()
    with pytest.raises(InputError, match="already exists"):
        ResultsWriter.create(tmp_path, "m1", "r1", header("r1"))
    assert path.read_bytes() == before


def test_each_record_is_on_disk_before_the_writer_closes(tmp_path: Path) -> None:
    w = ResultsWriter.create(tmp_path, "m1", "r1", header("r1"))
    try:
        assert load(w.path).records == []
        w.write(ok_record(64))
        assert [r.point["batch_size"] for r in load(w.path).records] == [64]
        w.write(oom_record())
        assert [r.status for r in load(w.path).records] == ["ok", "oom"]
    finally:
        w.close()
    assert w.closed
    with pytest.raises(ValueError, match="closed"):
        w.write(ok_record())


def test_unwritable_out_dir_is_input_error(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("x")  # a regular file: no directory can be made under it, even by root
    with pytest.raises(InputError, match=r"not-a-dir.*--out") as exc:
        ResultsWriter.create(blocker / "sub", "m1", "r1", header("r1"))
    assert "\n" not in str(exc.value)


def test_ids_are_made_filesystem_safe(tmp_path: Path) -> None:
    with ResultsWriter.create(tmp_path, "../../evil host", "run/1 2", header("run/1 2")) as w:
        pass
    assert w.path.parent.parent == tmp_path
    assert w.path.name == "run-1-2.jsonl"
    assert re.fullmatch(r"[A-Za-z0-9._-]+", w.path.parent.name)
    assert load(w.path).header.run_id == "run/1 2"  # the header keeps the id as given


def test_make_run_id_format() -> None:
    now = datetime(2026, 11, 28, 12, 15, 0, tzinfo=timezone.utc)
    rid = make_run_id(now)
    assert re.fullmatch(r"20261128T121500Z-[0-9a-f]{4}", rid)
    assert re.fullmatch(r"\d{8}T\d{6}Z-[0-9a-f]{4}", make_run_id())


def test_open_append_resumes_after_a_partial_last_line(tmp_path: Path) -> None:
    path = write_run(tmp_path, [ok_record(64), ok_record(128)])
    with open(path, "a") as f:
        f.write('{"kind": "point", "id": "abc", "poi')  # killed mid-write
    with pytest.warns(ResultsWarning, match="partial last line"):
        w = ResultsWriter.open_append(path)
    with w:
        assert w.header == header("r1")
        assert [r.point["batch_size"] for r in w.records] == [64, 128]
        w.write(ok_record(256))
    loaded = load(path)  # no warning: the partial line was cut before appending
    assert loaded.warnings == []
    assert [r.point["batch_size"] for r in loaded.records] == [64, 128, 256]


@pytest.mark.parametrize("records", [[64, 128], []], ids=["after-a-record", "after-the-header"])
def test_open_append_after_a_complete_last_line_without_newline(tmp_path: Path,
                                                               records: list[int]) -> None:
    """A complete last line that lacks its \\n (the file was edited, or copied by a tool that
    strips it): the resumed record must start on a line of its own, not be glued on."""
    path = write_run(tmp_path, [ok_record(b) for b in records])
    path.write_bytes(path.read_bytes().rstrip(b"\n"))
    assert not path.read_bytes().endswith(b"\n")
    assert [r.point["batch_size"] for r in load(path).records] == records  # still complete
    with ResultsWriter.open_append(path) as w:
        assert [r.point["batch_size"] for r in w.records] == records
        w.write(ok_record(256))
        w.write(ok_record(512))
    lines = path.read_bytes().split(b"\n")
    assert lines[-1] == b"" and len(lines) == 1 + len(records) + 2 + 1  # header, records, \n
    loaded = load(path)
    assert loaded.warnings == []
    assert loaded.header == header("r1")
    assert [r.point["batch_size"] for r in loaded.records] == [*records, 256, 512]


def test_open_append_validates_the_header_and_leaves_other_files_alone(tmp_path: Path) -> None:
    path = tmp_path / "x.jsonl"
    path.write_text(json.dumps(ok_record().to_json()) + "\n")
    with pytest.raises(InputError, match="missing run header"):
        ResultsWriter.open_append(path)
    csv = tmp_path / "table.jsonl"
    csv.write_bytes(b"a,b\n1,2\n3,")  # not ours: its odd last line must not be "repaired"
    with pytest.raises(InputError, match="not a recbench results file"):
        ResultsWriter.open_append(csv)
    assert csv.read_bytes() == b"a,b\n1,2\n3,"


def test_open_append_check_refuses_before_the_file_is_touched(tmp_path: Path) -> None:
    path = write_run(tmp_path, [ok_record(64)])
    with open(path, "a") as f:
        f.write('{"kind": "point", "id": "abc", "poi')  # a partial line that a resume would cut
    before = path.read_bytes()

    def refuse(loaded):
        assert loaded.header.suite == "quick"
        raise InputError("another suite")

    with pytest.raises(InputError, match="another suite"):
        ResultsWriter.open_append(path, check=refuse)
    assert path.read_bytes() == before


def test_a_header_json_cannot_hold_leaves_no_file(tmp_path: Path) -> None:
    bad = header()
    bad.env["probe"] = object()  # a fingerprint value strict JSON cannot hold
    with pytest.raises(TypeError, match="cannot store"):
        ResultsWriter.create(tmp_path, "m1", "r1", bad)
    assert list((tmp_path / "m1").iterdir()) == []  # no empty, headerless r1.jsonl


# --- reader -------------------------------------------------------------------------------------


def test_truncated_last_line_is_skipped_with_a_warning(tmp_path: Path) -> None:
    path = write_run(tmp_path, [ok_record(64), ok_record(128), ok_record(256)])
    data = path.read_bytes()
    path.write_bytes(data[:-25])  # cut into the last record
    with pytest.warns(ResultsWarning, match=r":4: skipped a truncated last line"):
        loaded = load(path)
    assert [r.point["batch_size"] for r in loaded.records] == [64, 128]
    assert loaded.records[0] == ok_record(64)
    assert len(loaded.warnings) == 1 and ":4:" in loaded.warnings[0]


def test_corrupt_middle_line_names_file_and_line(tmp_path: Path) -> None:
    path = write_run(tmp_path, [ok_record(64), ok_record(128), ok_record(256)])
    lines = path.read_text().splitlines(keepends=True)
    lines[2] = lines[2][:40] + "\n"  # line 3 of 4
    path.write_text("".join(lines))
    with pytest.raises(InputError, match=re.escape(f"{path}:3: corrupt line")) as exc:
        load(path)
    assert "edited" in str(exc.value) and "\n" not in str(exc.value)


def test_invalid_record_in_the_middle_names_the_line(tmp_path: Path) -> None:
    path = write_run(tmp_path, [ok_record(64), ok_record(128)])
    lines = path.read_text().splitlines()
    bad = json.loads(lines[1])
    bad["status"] = "timeout"  # a non-ok status without a reason
    lines[1] = json.dumps(bad)
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(InputError, match=r":2: invalid point record: .*needs a reason"):
        load(path)


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "new.jsonl"
    path.write_text(json.dumps({**header().to_json(), "schema_version": 2}) + "\n")
    with pytest.raises(InputError, match=r"newer recbench \(schema 2\).*reads schema 1.*upgrade"):
        load(path)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "empty results file"),
        (b"\n  \n", "empty results file"),
        (b"framework,preset\ntorch,tiny\n", "not a recbench results file"),
        (b"\x89PNG\r\n\x1a\n\x00\x00", "not a recbench results file"),
        (b'{"kind": "point"}\n', "missing run header"),
        (b'{"kind": "run", "schema_version": 1}\n', "no 'run_id'"),
        (b'{"kind": "run", "schema_version": "1"}\n', "no valid schema_version"),
    ],
)
def test_bad_files_are_input_errors(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_bytes(content)
    with pytest.raises(InputError, match=message) as exc:
        load(path)
    assert str(path) in str(exc.value)


def test_missing_file_is_input_error(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="cannot read"):
        load(tmp_path / "nope.jsonl")


def test_load_many_expands_directories_sorted(tmp_path: Path) -> None:
    write_run(tmp_path / "a", [ok_record(64)], run_id="r2")
    write_run(tmp_path / "a", [ok_record(64), oom_record()], run_id="r1")
    write_run(tmp_path / "b", [ok_record(32)], run_id="r0")
    (tmp_path / "a" / "notes.txt").write_text("ignored")
    files = load_many([tmp_path / "a", tmp_path / "b" / "m1" / "r0.jsonl", tmp_path / "a"])
    assert [f.path.name for f in files] == ["r1.jsonl", "r2.jsonl", "r0.jsonl"]
    assert [r.point["batch_size"] for _, r in iter_ok(files)] == [64, 64, 32]
    with pytest.raises(InputError, match="no such"):
        load_many([tmp_path / "missing"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match=r"no \.jsonl"):
        load_many([tmp_path / "empty"])


# --- frame and ids ------------------------------------------------------------------------------


def test_records_frame_has_one_row_per_record_and_flat_columns(tmp_path: Path) -> None:
    pytest.importorskip("pandas")
    write_run(tmp_path, [ok_record(64, 10.0), oom_record()], run_id="r1")
    write_run(tmp_path, [ok_record(128, 20.0)], run_id="r2")
    files = load_many([tmp_path])
    df = records_frame(files)
    assert len(df) == 3
    for col in ("machine_id", "run_id", "file", "id", "preset", "batch_size", "status"):
        assert col in df.columns
    assert {"step_ms_median", "step_ms_p90", "step_ms_n", "samples_per_s"} <= set(df.columns)
    assert "step_ms" not in df.columns and "samples_ms" not in df.columns
    ok = df[df.status == "ok"].sort_values("batch_size")
    assert ok.step_ms_median.tolist() == [10.0, 20.0]
    assert ok.run_id.tolist() == ["r1", "r2"]
    oom = df[df.status == "oom"].iloc[0]
    assert oom.reason == "CUDA OOM" and math.isnan(oom.step_ms_median)
    assert set(df.machine_id) == {"amd-epyc-2c-23g-123abc"}
    assert len(records_frame([])) == 0


def test_point_id_is_stable_and_sensitive() -> None:
    reordered = dict(reversed(list(POINT.items())))
    assert point_id(POINT) == point_id(reordered)
    assert re.fullmatch(r"[0-9a-f]{12}", point_id(POINT))
    assert point_id(POINT) != point_id({**POINT, "batch_size": 256})
    assert point_id(POINT) != point_id({**POINT, "extra_axis": 1})
    assert point_id({**POINT, "batch_size": np.int64(128)}) == point_id(POINT)
    assert PointRecord.for_point(POINT, "ok").id == point_id(POINT)
