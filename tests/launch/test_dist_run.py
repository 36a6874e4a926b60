"""Distributed points through `recbench run`: torchrun-launched ranks, one record by rank 0,
a rank killed mid-step recorded as `crashed` while the sweep goes on (2 CPU ranks, gloo)."""

import json
import time

import pytest

from bench.cli import main
from bench.results import load

pytestmark = [pytest.mark.dist, pytest.mark.slow]

SUITE = """
[suite]
name = "dist"
[measure]
warmup_iters = 1
min_time_s = 0.1
min_iters = 4
max_iters = 8
max_time_s = 2.0
timeout_s = 90.0
[runner]
mem_cap = "off"
[[grid]]
framework = ["torch"]
workload = ["train"]
preset = ["tiny"]
catalog_size = [500]
seq_len = [8]
batch_size = [8, 16]
precision = ["fp32"]
parallel = ["dp"]
world_size = [2]
"""


def test_rank_killed_mid_step_is_crashed_and_the_sweep_goes_on(tmp_path, monkeypatch, capsys):
    suite = tmp_path / "dist.toml"
    suite.write_text(SUITE)
    monkeypatch.setenv("RECBENCH_RANK_FAULT", "B=8 @1:3")  # rank 1, its 3rd step, B=8 only
    t0 = time.monotonic()
    code = main(["run", "--suite", str(suite), "--out", str(tmp_path / "out"), "--no-roofs",
                 "--json"])
    elapsed = time.monotonic() - t0
    assert code == 0, capsys.readouterr().err
    path = json.loads(capsys.readouterr().out)["results"]
    recs = {r.point["batch_size"]: r for r in load(path).records}
    crashed, ok = recs[8], recs[16]
    assert crashed.status == "crashed", crashed.reason
    assert crashed.reason.startswith("rank 1 killed by signal SIGKILL"), crashed.reason
    assert ok.status == "ok", ok.reason
    m = ok.metrics
    assert m["ranks"] == 2 and len(m["peak_host_rss_bytes_per_rank"]) == 2
    assert m["samples_per_s"] == pytest.approx(16 / (m["step_ms"]["median"] / 1e3))
    assert 0.0 <= m["comm_share"] < 1.0 and m["compute_twin_ms"] > 0
    assert m["energy_provenance"] == "unavailable"
    assert len(ok.samples_ms) == m["step_ms"]["n"] >= 4
    assert elapsed < 2 * 90  # the crash ended its point long before its limit

