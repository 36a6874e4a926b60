"""`recbench serve`: the dynamic batcher, the rate search, LoadGen's three scenarios on a tiny
retrieve SUT (short runs), a slowed SUT, the CLI's exit codes and the results record."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from bench.cli import main
from bench.meters import EnergyCounter
from bench.results import load
from bench.scenarios.batcher import DynamicBatcher
from bench.scenarios.serve import DELAY_ENV, ServeSpec, search_max_rate, serve

pytest.importorskip("mlperf_loadgen")
pytest.importorskip("torch")

FAST = dict(framework="torch", workload="retrieve", preset="tiny", catalog_size=2000,
            seq_len=20, max_batch=8, duration_s=0.5, min_queries=100, samples=64)


# --- the batcher ------------------------------------------------------------------------------


def test_batcher_fills_batches_and_answers_every_request_once() -> None:
    seen: list[np.ndarray] = []
    answered: list[int] = []
    b = DynamicBatcher(lambda idx: seen.append(idx), answered.extend, max_batch=4,
                       max_delay_s=0.05)
    with b:
        b.submit([(i, 100 + i) for i in range(10)])
    assert [len(x) for x in seen] == [4, 4, 2]  # two full batches, then the rest
    assert np.concatenate(seen).tolist() == list(range(100, 110))
    assert sorted(answered) == list(range(10))
    assert b.stats.answered_once() == {"issued": 10, "answered": 10, "duplicates": 0,
                                       "missing": 0, "unknown": 0}


def test_batcher_sends_a_partial_batch_after_max_delay() -> None:
    done = threading.Event()
    t_done: list[float] = []
    b = DynamicBatcher(lambda idx: None, lambda ids: (t_done.append(time.perf_counter()),
                                                      done.set()),
                       max_batch=64, max_delay_s=0.05)
    with b:
        t0 = time.perf_counter()
        b.submit([(1, 0)])
        assert done.wait(2)
    waited = t_done[0] - t0
    assert 0.04 <= waited < 0.5  # held for the delay, not until 64 requests came
    assert b.stats.batch_sizes == [1]


def test_a_failing_batch_is_still_answered_and_reported() -> None:
    answered: list[int] = []

    def boom(idx):
        raise RuntimeError("device lost")

    b = DynamicBatcher(boom, answered.extend, max_batch=2, max_delay_s=0)
    with b:
        b.submit([(7, 0), (8, 1), (9, 2)])
    assert sorted(answered) == [7, 8, 9]
    assert b.stats.errors and "device lost" in b.stats.errors[0]


# --- the search, on a fake SUT whose latency is known -----------------------------------------


class _FakeRun:
    def __init__(self, rate: float, limit: float) -> None:
        self.rate_per_s = rate
        self._ok = rate <= limit

    def meets(self, target_ms: float, pct: float) -> bool:
        return self._ok


@pytest.mark.parametrize("limit", [37.0, 400.0, 2500.0])
def test_search_brackets_the_highest_passing_rate(limit: float) -> None:
    best, runs = search_max_rate(lambda r: _FakeRun(r, limit), capacity_per_s=1000,
                                 floor_per_s=5, target_ms=80, pct=99, max_runs=20,
                                 tolerance=0.05)
    assert best is not None and best.rate_per_s <= limit
    assert best.rate_per_s >= 0.9 * limit  # within the tolerance, from below
    assert len(runs) <= 20


def test_search_with_no_passing_rate_stops_at_the_floor() -> None:
    best, runs = search_max_rate(lambda r: _FakeRun(r, 0.0), capacity_per_s=1000,
                                 floor_per_s=50, target_ms=80, pct=99, max_runs=20,
                                 tolerance=0.05)
    assert best is None and runs[-1].rate_per_s == 50 and len(runs) <= 4


# --- LoadGen scenarios on a real (tiny) SUT ---------------------------------------------------


def _answered_once(metrics: dict) -> None:
    a = metrics["answered"]
    assert a["issued"] == a["answered"] > 0
    assert a["duplicates"] == a["missing"] == a["unknown"] == 0


def test_offline_reports_throughput(tmp_path: Path) -> None:
    out = serve(ServeSpec(**FAST, scenario="offline"), tmp_path)
    m = out.metrics
    assert out.status == "ok" and m["samples_per_s"] > 0
    assert m["requests"] == m["answered"]["answered"] >= 100
    assert m["queries"] == 1 and m["latency_ms"]["p99"] is None  # one query: no percentiles
    assert m["mean_batch"] > 4  # all at once: batches fill
    _answered_once(m)
    assert (Path(m["loadgen_log_dir"]) / "mlperf_log_summary.txt").is_file()


def test_singlestream_reports_latency_percentiles(tmp_path: Path) -> None:
    out = serve(ServeSpec(**FAST, scenario="singlestream"), tmp_path)
    m = out.metrics
    assert out.status == "ok" and m["mean_batch"] == 1.0
    lat = m["latency_ms"]
    assert m["queries"] >= 100 and 0 < lat["p50"] <= lat["p90"] <= lat["p99"]
    assert lat["p99_9"] is None or m["queries"] >= 1000  # backed by enough queries, or null
    _answered_once(m)


def test_server_at_a_fixed_rate(tmp_path: Path) -> None:
    out = serve(ServeSpec(**FAST, scenario="server", rate_per_s=200), tmp_path)
    m = out.metrics
    assert out.status == "ok", out.reason
    assert m["offered_rate_per_s"] == 200 and m["max_rate_per_s"] is None
    assert m["latency_ms"]["p99"] < 80 and m["queries"] >= 100
    _answered_once(m)


@pytest.mark.slow
def test_a_slowed_sut_finds_a_lower_max_rate(tmp_path: Path, monkeypatch) -> None:
    spec = ServeSpec(**{**FAST, "duration_s": 0.7, "search_runs": 6}, scenario="server",
                     target_latency_ms=40)
    fast = serve(spec, tmp_path / "fast")
    monkeypatch.setenv(DELAY_ENV, "10")
    slow = serve(spec, tmp_path / "slow")
    assert fast.status == slow.status == "ok", (fast.reason, slow.reason)
    assert slow.point["sut_delay_ms"] == 10 and "sut_delay_ms" not in fast.point
    assert slow.metrics["max_rate_per_s"] <= 0.6 * fast.metrics["max_rate_per_s"]
    _answered_once(slow.metrics)


# --- the CLI ----------------------------------------------------------------------------------


def _cli(tmp_path: Path, *extra: str) -> list[str]:
    return ["serve", "--workload", "retrieve", "--catalog-size", "2000", "--seq-len", "20",
            "--max-batch", "8", "--duration", "0.5", "--min-queries", "100",
            "--out", str(tmp_path), "--json", *extra]


def test_an_sut_slower_than_the_target_is_sla_missed_with_exit_1(tmp_path, capsys,
                                                                  monkeypatch) -> None:
    monkeypatch.setenv(DELAY_ENV, "15")
    rc = main(_cli(tmp_path, "--scenario", "server", "--target-latency", "10ms"))
    out = json.loads(capsys.readouterr().out)
    assert rc == 1 and out["status"] == "sla-missed"
    assert out["metrics"]["achieved_latency_ms"] > 10  # the measured p99 is reported
    assert "p99 latency" in out["reason"] and out["metrics"]["max_rate_per_s"] is None
    loaded = load(out["results"])  # the record round-trips through the reader
    [rec] = loaded.serve
    assert loaded.records == [] and loaded.warnings == []  # step-point readers never see it
    assert rec.status == "sla-missed" and rec.point["scenario"] == "server"
    assert rec.metrics["latency_ms"]["p99"] == out["metrics"]["latency_ms"]["p99"]


def test_serve_writes_a_results_file_and_loadgen_logs(tmp_path, capsys) -> None:
    rc = main(_cli(tmp_path, "--scenario", "offline"))
    out = json.loads(capsys.readouterr().out)
    assert rc == 0 and out["status"] == "ok"
    loaded = load(out["results"])
    assert loaded.header.suite == "serve" and loaded.header.schema_version == 1
    [rec] = loaded.serve
    assert json.loads(Path(out["results"]).read_text().splitlines()[1])["kind"] == "serve"
    assert rec.point["workload"] == "retrieve" and rec.point["max_batch"] == 8
    assert rec.metrics["samples_per_s"] == out["metrics"]["samples_per_s"] > 0
    logs = Path(out["results"]).with_suffix("") / "loadgen"
    assert list(logs.glob("*/mlperf_log_detail.txt"))


@pytest.mark.parametrize(("args", "message"), [
    (["--target-latency", "fast"], "expected a latency like 80ms"),
    (["--scenario", "multistream"], "invalid choice: 'multistream'"),
    (["--percentile", "98"], "invalid choice"),
    (["--duration", "0"], "expected a positive number"),
    (["--device", "cuda:7"], "--device cuda:7: not available on this machine"),
    (["--device", "gpu"], "expected a device"),
    (["--framework", "jax", "--precision", "int8"], "int8 is PyTorch dynamic quantisation"),
])
def test_bad_values_are_one_line_exit_2(tmp_path, capsys, args, message) -> None:
    assert main(["serve", "--out", str(tmp_path), *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]
    assert not list(tmp_path.rglob("*.jsonl"))  # refused before any results file


@pytest.mark.parametrize("framework", ["torch", "jax"])
def test_rank_serves_histories_against_candidates(tmp_path: Path, framework: str) -> None:
    pytest.importorskip(framework)
    spec = ServeSpec(**{**FAST, "framework": framework, "workload": "rank"}, n_candidates=16,
                     scenario="singlestream")
    out = serve(spec, tmp_path)
    assert out.status == "ok", out.reason
    assert out.point["n_candidates"] == 16 and out.metrics["latency_ms"]["p99"] > 0
    _answered_once(out.metrics)


@pytest.mark.parametrize("framework", ["torch", "jax"])
def test_generate_serves_beam_searches_over_the_kv_cache(tmp_path: Path, framework: str) -> None:
    pytest.importorskip(framework)
    spec = ServeSpec(**{**FAST, "framework": framework, "workload": "generate"}, gen_steps=3,
                     beam_width=4, scenario="offline")
    out = serve(spec, tmp_path)
    assert out.status == "ok", out.reason
    assert (out.point["gen_steps"], out.point["beam_width"]) == (3, 4)
    assert "n_candidates" not in out.point and out.metrics["samples_per_s"] > 0
    _answered_once(out.metrics)


def test_an_sut_that_cannot_start_is_an_error_record(tmp_path: Path, monkeypatch) -> None:
    import recmodels.train

    def broken(*a, **k):
        raise RuntimeError("no such device\nsecond line")

    monkeypatch.setattr(recmodels.train, "make_engine", broken)
    out = serve(ServeSpec(**FAST, scenario="offline"), tmp_path)
    assert out.status == "error" and out.reason.endswith("RuntimeError: no such device")


def test_offline_reruns_when_the_warm_up_underrated_the_sut(tmp_path: Path,
                                                            monkeypatch) -> None:
    """A busy neighbour during the warm-up makes LoadGen issue too few Offline samples to
    fill the duration: the run is repeated, expecting more."""
    import bench.scenarios.serve as S

    real = S.build_sut

    def underrated(spec, **kw):
        sut = real(spec, **kw)
        sut.step_s = {b: t * 50 for b, t in sut.step_s.items()}
        return sut

    monkeypatch.setattr(S, "build_sut", underrated)
    out = serve(ServeSpec(**FAST, scenario="offline"), tmp_path)
    assert out.status == "ok" and out.metrics["loadgen_validity"] == "VALID"
    assert Path(out.metrics["loadgen_log_dir"]).name != "01-offline"


class _Watts(EnergyCounter):
    """A counter at a constant 50 W: joules = 50 x seconds."""

    name = "fake:50W"
    period_s = 0.001

    def read_j(self) -> float:
        return 50.0 * time.perf_counter()


def test_energy_per_1000_requests_over_the_whole_run(tmp_path: Path) -> None:
    out = serve(ServeSpec(**FAST, scenario="server", rate_per_s=200), tmp_path,
                energy_sources=[_Watts()])
    m = out.metrics
    assert m["energy_provenance"] == "measured-counter" and m["energy_source"] == "fake:50W"
    assert m["mean_power_w"] == pytest.approx(50, rel=0.01)
    # the window is the whole LoadGen run: at least its 0.5 s, so at least 25 J
    assert m["energy_j"] >= 25
    assert m["energy_j_per_1k_requests"] == pytest.approx(m["energy_j"] * 1000 / m["requests"])


def test_a_busy_machine_refuses_serve_before_making_a_folder(tmp_path, capsys, busy_machine):
    """The machine lock comes before the results folder: refused, nothing is left behind."""
    out = tmp_path / "busy"
    assert main(["serve", "--scenario", "offline", "--out", str(out)]) == 2
    assert "in use for measuring" in capsys.readouterr().err and not out.exists()
