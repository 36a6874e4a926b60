"""Run conditions in a real run: the unstable flag under a planted busy loop, the run-end
line with re-measured roofs and their drift, threads and affinity per point, the summary."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from bench import results as R
from bench.launch import runner
from bench.launch.progress import summary_table
from bench.launch.runner import run_suite
from bench.suites.suite import load_suite

SUITE = """[suite]
name = "cond"
[measure]
warmup_iters = 1
min_time_s = {min_time_s}
min_iters = 5
max_iters = 100000
max_time_s = 5.0
timeout_s = 120
[[grid]]
framework = ["torch"]
workload = ["{workload}"]
preset = ["{preset}"]
catalog_size = [500]
seq_len = [8]
batch_size = [{batch}]
precision = ["fp32"]
"""
ENV = {"machine_id": "test-machine", "cpu": "test cpu", "ram_bytes": 24 << 30, "gpus": []}


def suite_file(tmp_path: Path, *, workload="infer", preset="tiny", batch=4, min_time_s=0.8):
    path = tmp_path / "cond.toml"
    path.write_text(SUITE.format(workload=workload, preset=preset, batch=batch,
                                 min_time_s=min_time_s))
    return load_suite(path)


def test_a_point_run_beside_busy_loops_is_flagged_unstable(tmp_path, monkeypatch):
    monkeypatch.setattr(runner, "CONDITIONS_WINDOW_S", 0.05)
    suite = suite_file(tmp_path)
    hogs = []
    try:
        # Two processes holding a core each while the point runs: a changed condition
        # (others >= 0.5 cores) whatever this shared machine was doing anyway.
        hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(2)]
        time.sleep(0.2)
        outcome = run_suite(suite, out_dir=tmp_path / "out", env=ENV, roofs={},
                            log=lambda s: None)
    finally:
        for h in hogs:
            h.kill()
            h.wait()
    (rec,) = outcome.records
    assert rec.status == "ok"
    assert "other processes used" in rec.flags["unstable"]
    window = rec.extra["conditions"]
    assert window["others_cpu_cores"] >= 0.5
    assert any(p["name"].startswith("python") for p in window["busiest"])
    assert set(window) >= {"wall_s", "load_avg_before", "load_avg_after", "steal"}
    m = rec.metrics
    assert m["step_ms"]["cv"] is not None and m["step_ms"]["cv"] >= 0
    assert m["threads"]["torch"] >= 1 and "OMP_NUM_THREADS" in m["threads"]
    assert m["cpu_affinity"] >= 1
    f = R.load(outcome.path)  # the flag, the window and the run-end line on disk
    assert f.records[0].flags == rec.flags and f.records[0].extra["conditions"] == window
    assert f.header.extra["conditions"]["busiest"] is not None
    assert f.end == outcome.end and f.end.roofs == {} and f.end.conditions["at"] > 0
    table = summary_table(f.records, f.end)
    assert "ok (unstable)" in table and "(1 flagged unstable)" in table
    assert "unstable: torch (eager) infer tiny/sasrec" in table
    assert "at the end: load average" in table


FAKE_ROOFS = [{"cpu/fp32": {"gemm_flops_per_s": 100e9, "mem_bytes_per_s": 30e9}},
              {"cpu/fp32": {"gemm_flops_per_s": 80e9, "mem_bytes_per_s": 30.5e9}}]


def test_roofs_are_measured_again_at_the_end_and_a_drift_is_flagged(tmp_path, monkeypatch):
    monkeypatch.setattr(runner, "CONDITIONS_WINDOW_S", 0.05)
    calls = []

    def fake_roofs(points, **kw):
        calls.append(list(points))
        return FAKE_ROOFS[len(calls) - 1]

    monkeypatch.setattr(runner, "measure_roofs_in_worker", fake_roofs)
    suite = suite_file(tmp_path, workload="train", preset="xl", batch=4096)  # infeasible
    logged: list[str] = []
    small = {**ENV, "ram_bytes": 1 << 30}
    outcome = run_suite(suite, out_dir=tmp_path / "out", env=small, log=logged.append)
    assert [r.status for r in outcome.records] == ["infeasible"] and len(calls) == 2
    end = R.load(outcome.path).end
    assert end.roofs == FAKE_ROOFS[1]
    assert end.roof_drift["cpu/fp32"]["gemm_flops_per_s"] == -0.2
    assert end.flags == {"roof-drift": "cpu/fp32 GEMM -20% since the run started (> 10%)"}
    assert any(line.startswith("roof drift: cpu/fp32 GEMM -20%") for line in logged)
    assert "roof-drift: cpu/fp32 GEMM -20%" in summary_table(outcome.records, end)
    # a resume that runs nothing writes no second end
    again = run_suite(suite, out_dir=tmp_path / "out", env=small, resume=outcome.path,
                      log=logged.append)
    assert again.end is None and len(R.load(outcome.path).ends) == 1 and len(calls) == 2


def test_resume_pairs_records_by_the_id_recomputed_from_their_point(tmp_path, monkeypatch):
    monkeypatch.setattr(runner, "CONDITIONS_WINDOW_S", 0.05)
    suite = suite_file(tmp_path, workload="train", preset="xl", batch=4096)
    small = {**ENV, "ram_bytes": 1 << 30}
    first = run_suite(suite, out_dir=tmp_path / "out", env=small, roofs={}, log=lambda s: None)
    text = first.path.read_text()
    first.path.write_text(text.replace(first.records[0].id, "0123456789ab"))  # an old id rule
    again = run_suite(suite, out_dir=tmp_path / "out", env=small, resume=first.path,
                      log=lambda s: None)
    assert again.records == [] and [r.id for r in again.previous] == [first.records[0].id]
