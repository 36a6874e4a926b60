"""Point ids that stay stable as the project grows, and the run-end line."""

from __future__ import annotations

import dataclasses
import json
import warnings
from pathlib import Path

import pytest

from bench import point as point_mod
from bench.point import Point
from bench.results import (
    POINT_FIELDS_V1,
    POINT_ID_DEFAULTS,
    PointRecord,
    ResultsWarning,
    ResultsWriter,
    RunEnd,
    RunHeader,
    load,
    point_id,
)
from recmodels.errors import InputError

REPO = Path(__file__).resolve().parents[2]
COMMITTED = sorted((REPO / "results" / "amd-epyc-2c-24g-3090c4").glob("*.jsonl"))


def test_point_and_schema_share_one_id_rule():
    assert point_mod.ID_FIELDS_V1 == POINT_FIELDS_V1
    assert point_mod.ID_DEFAULTS == POINT_ID_DEFAULTS
    for f in dataclasses.fields(Point):  # a field added later must register its default
        if f.name not in POINT_FIELDS_V1:
            assert f.name in POINT_ID_DEFAULTS and POINT_ID_DEFAULTS[f.name] == f.default
    pts = [Point(framework="torch", workload="train", preset="tiny", batch_size=8,
                 precision="fp32", device="cpu"),
           Point(framework="jax", workload="infer", preset="small", block="hstu",
                 loss="sampled_softmax", batch_size=64, precision="bf16", device="cuda:1")]
    for p in pts:
        assert p.id == point_id(p.to_dict())


def test_committed_file_pairs_with_freshly_built_records():
    assert COMMITTED, "the committed CPU results file is missing"
    f = load(COMMITTED[0])
    assert len(f.records) == 112
    for rec in f.records:
        fresh = Point.from_dict(rec.point)  # as a new run builds it
        assert rec.id == fresh.id == PointRecord.for_point(fresh.to_dict(), "ok").id
    stored = [json.loads(line)["id"] for line in COMMITTED[0].read_text().splitlines()[1:]
              if json.loads(line)["kind"] == "point"]
    assert stored == [r.id for r in f.records]  # today's rule keeps the ids written then


# Ids written when compile was a boolean (commit e900a36 and before): torch tiny train B=128 fp32
# on cpu, eager and compiled; jax (always false); small bf16 B=1024 on cuda, compiled.
OLD_IDS = [({"framework": "torch", "compile": False}, "97a4e0472744"),
           ({"framework": "torch", "compile": True}, "3fcc1022913e"),
           ({"framework": "jax", "compile": False}, "edf12a9c6938"),
           ({"framework": "torch", "compile": True, "preset": "small", "batch_size": 1024,
             "precision": "bf16", "device": "cuda", "catalog_size": 100_000, "seq_len": 200},
            "2bcce3a19ebe")]


def _old_point(**kw) -> dict:
    return {"framework": "torch", "workload": "train", "preset": "tiny", "block": "sasrec",
            "loss": "bce", "n_neg": 1, "catalog_size": 23715, "seq_len": 50, "batch_size": 128,
            "precision": "fp32", "device": "cpu", "compile": False, "optimizer": "adam", **kw}


@pytest.mark.parametrize(("fields", "known"), OLD_IDS)
def test_compile_modes_keep_the_ids_of_the_booleans_they_replace(fields, known):
    old = _old_point(**fields)  # a record's point as written then
    mode = {False: "eager", True: "default"}[old["compile"]]
    assert point_id(old) == known
    assert Point.from_dict(old).id == known and Point.from_dict(old).compile == mode
    assert Point.from_dict({**old, "compile": mode}).id == known
    rec = PointRecord.from_json({"kind": "point", "id": known, "point": old, "status": "ok"})
    assert rec.id == known and rec.point["compile"] == mode  # read as the mode it was
    others = {Point.from_dict({**old, "compile": m}).id for m in ("reduce-overhead",
                                                                  "max-autotune")}
    if old["framework"] == "torch":  # the new modes are new points
        assert len(others) == 2 and known not in others
    else:  # jax always jits: one point whatever the file says
        assert others == {known}


def test_every_committed_results_file_keeps_its_ids():
    paths = sorted((REPO / "results").glob("*/*.jsonl"))
    assert len(paths) >= 4
    for path in paths:
        f = load(path)
        stored = [json.loads(line)["id"] for line in path.read_text().splitlines()[1:]
                  if line.strip() and json.loads(line).get("kind") == "point"]
        assert stored == [r.id for r in f.records], path
        assert {r.point["compile"] for r in f.records} <= {"eager", "default"}
        assert all(Point.from_dict(r.point).id == r.id for r in f.records)


def test_a_new_axis_at_its_default_leaves_ids_alone():
    p = Point(framework="torch", workload="train", preset="tiny", batch_size=8,
              precision="fp32", device="cpu").to_dict()
    later = {"world_size": 1, "compile_mode": None, "layout": "dense"}  # axes added later
    grown = {**p, **later}
    assert point_id(grown, {**POINT_ID_DEFAULTS, **later}) == point_id(p)
    assert point_id({**grown, "world_size": 2}, later) != point_id(p)
    assert point_id({**grown, "world_size": 1.0}, later) != point_id(p)  # 1.0 is not 1
    assert point_id({**p, "compile_mode": False}, {"compile_mode": None}) != point_id(p)


def test_ids_are_recomputed_from_the_point_on_load(tmp_path):
    p = Point(framework="torch", workload="infer", preset="tiny", batch_size=4,
              precision="fp32", device="cpu").to_dict()
    line = {"kind": "point", "id": "0123456789ab", "point": p, "status": "ok"}  # an old rule's
    rec = PointRecord.from_json(line)
    assert rec.id == point_id(p) != "0123456789ab"
    with pytest.raises(InputError, match="'id'"):
        PointRecord.from_json({k: v for k, v in line.items() if k != "id"})


def _header() -> RunHeader:
    return RunHeader(run_id="r1", suite="quick", started_at="2026-11-28T12:00:00Z",
                     env={"machine_id": "m"}, roofs={}, extra={"conditions": {"load_avg": [1]}})


def test_run_end_round_trips_and_points_may_follow_it(tmp_path):
    p = Point(framework="torch", workload="infer", preset="tiny", batch_size=4,
              precision="fp32", device="cpu").to_dict()
    end = RunEnd(run_id="r1", ended_at="2026-11-28T12:05:00Z",
                 conditions={"load_avg": [0.5, 0.4, 0.3], "busiest": []},
                 roofs={"cpu/fp32": {"gemm_flops_per_s": 9e10}},
                 roof_drift={"cpu/fp32": {"gemm_flops_per_s": -0.2}},
                 flags={"roof-drift": "cpu/fp32 GEMM -20%"}, extra={"note": 1})
    with ResultsWriter.create(tmp_path, "m", "r1", _header()) as w:
        w.write(PointRecord.for_point(p, "ok"))
        w.write_end(end)
        w.write(PointRecord.for_point({**p, "batch_size": 8}, "ok"))  # a resumed run's
        w.write_end(RunEnd(run_id="r1", ended_at="2026-11-28T13:00:00Z"))
    with warnings.catch_warnings():
        warnings.simplefilter("error", ResultsWarning)  # a run-end line is no unknown kind
        f = load(w.path)
    assert len(f.records) == 2 and len(f.ends) == 2
    assert f.ends[0] == end and f.end.ended_at == "2026-11-28T13:00:00Z"
    assert f.header.extra["conditions"] == {"load_avg": [1]}
    lines = w.path.read_text().splitlines()
    assert json.loads(lines[2])["kind"] == "run-end"


def test_files_without_a_run_end_read_as_before(tmp_path):
    with ResultsWriter.create(tmp_path, "m", "r1", _header()) as w:
        pass
    assert load(w.path).end is None
    path = w.path
    with open(path, "a") as fh:  # a kind added after this reader: skipped with a warning
        fh.write('{"kind": "run-summary", "x": 1}\n')
    with pytest.warns(ResultsWarning, match="unknown kind"):
        assert load(path).end is None


def test_a_broken_run_end_names_the_line(tmp_path):
    with ResultsWriter.create(tmp_path, "m", "r1", _header()) as w:
        pass
    with open(w.path, "a") as fh:
        fh.write('{"kind": "run-end", "run_id": "r1", "ended_at": "x", "flags": []}\n')
        fh.write('{"kind": "run-end", "run_id": "r1", "ended_at": "x"}\n')
    with pytest.raises(InputError, match=r":2: run-end field 'flags' must be an object"):
        load(w.path)
