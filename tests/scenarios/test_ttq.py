"""`recbench ttq`: MLPerf Training's score (fastest and slowest dropped, a miss counts as the
slowest, two misses fail), the record it writes, and its command's contract."""

import json
import time
from pathlib import Path

import pytest

from bench.cli import main
from bench.meters import EnergyCounter
from bench.results import load
from bench.scenarios import ttq as Q
from recmodels import data as D

CHECKED = ("planted", "cpu", None)  # check(spec)'s answer, so no dataset is loaded


def planted(walls, statuses=None):
    """A run function whose i-th run took walls[i] seconds with statuses[i]."""
    statuses = statuses or ["converged"] * len(walls)

    def run(spec, seed, *, log, energy_sources=None):
        i = seed - spec.seed
        log(f"eval epoch 1/{spec.cap()}  planted")
        return {"seed": seed, "status": statuses[i], "reason": None, "wall_s": walls[i],
                "setup_s": 1.0, "train_s": walls[i] * 0.75, "eval_s": walls[i] * 0.25,
                "epochs": 3 + i, "energy_j": walls[i] * 10, "energy_provenance":
                "measured-counter", "energy_note": "planted", "reached": {"hr@10": 0.5,
                "ndcg@10": 0.3}, "test": {"hr@10": 0.45, "ndcg@10": 0.28}, "curve": []}

    return run


def _spec(runs, **kw):
    return Q.TTQSpec(dataset="synthetic", target="hr@10", target_value=0.5, runs=runs, **kw)


def test_three_runs_score_the_middle_one():
    lines = []
    out = Q.ttq(_spec(3, seed=7), run=planted([30.0, 10.0, 20.0]), checked=CHECKED,
                progress=lines.append)
    m = out.metrics
    assert out.status == "ok" and out.reason is None
    assert m["time_to_target_s"] == 20.0 and m["kept_runs"] == [9]  # seeds 7, 8, 9
    assert m["score_rule"] == ("mean of 1 of 3 runs, fastest and slowest dropped (MLPerf "
                               "Training)")
    assert m["train_s"] == 15.0 and m["eval_s"] == 5.0 and m["epochs_to_target"] == 5
    assert m["train_share"] == 0.75 and m["eval_share"] == 0.25
    assert m["energy_to_target_j"] == 200.0 and m["energy_provenance"] == "measured-counter"
    assert m["converged"] == 3 and [r["seed"] for r in m["runs"]] == [7, 8, 9]
    # progress: a line per evaluation and a line per run
    assert "run 1/3 (seed 7): eval epoch 1/30  planted" in lines
    assert any(x.startswith("run 3/3 (seed 9): reached valid hr@10 >= 0.5 at epoch 5 in 20.0 s")
               for x in lines)


def test_five_runs_average_the_middle_three():
    out = Q.ttq(_spec(5), run=planted([50.0, 10.0, 30.0, 20.0, 40.0]), checked=CHECKED)
    assert out.metrics["time_to_target_s"] == pytest.approx(30.0)
    assert out.metrics["kept_runs"] == [2, 3, 4]
    assert out.metrics["score_rule"].startswith("mean of 3 of 5 runs")


@pytest.mark.parametrize("miss", ["did-not-converge", "diverged"])
def test_one_miss_of_three_counts_as_the_slowest_and_is_dropped(miss):
    # the miss stopped first (5 s), yet it is the slowest: the fastest converged run (20 s)
    # and the miss are dropped, leaving 30 s
    out = Q.ttq(_spec(3), run=planted([5.0, 20.0, 30.0], [miss, "converged", "converged"]),
                checked=CHECKED)
    assert out.status == "ok" and out.metrics["time_to_target_s"] == 30.0
    assert out.metrics["converged"] == 2 and out.metrics["kept_runs"] == [2]
    assert "missed the target counted as the slowest" in out.metrics["score_rule"]


def test_two_misses_are_did_not_converge_with_no_time():
    out = Q.ttq(_spec(3), run=planted([5.0, 20.0, 30.0], ["diverged", "converged",
                                                          "did-not-converge"]), checked=CHECKED)
    assert out.status == "did-not-converge"
    assert out.reason == "2 of 3 runs did not reach the target (1 diverged) (2 or more misses: " \
                         "no score)"
    m = out.metrics
    assert m["time_to_target_s"] is None and m["energy_to_target_j"] is None
    assert m["train_share"] is None and m["converged"] == 1 and len(m["runs"]) == 3


def test_under_three_runs_nothing_is_dropped_and_a_miss_fails():
    two = Q.ttq(_spec(2), run=planted([10.0, 20.0]), checked=CHECKED)
    assert two.metrics["time_to_target_s"] == 15.0
    assert two.metrics["score_rule"].startswith("plain mean of 2 runs (under 3 runs nothing")
    one = Q.ttq(_spec(1), run=planted([10.0], ["did-not-converge"]), checked=CHECKED)
    assert one.status == "did-not-converge" and one.metrics["time_to_target_s"] is None


def test_energy_is_null_with_its_provenance_when_a_kept_run_has_none():
    def run(spec, seed, **kw):
        r = planted([10.0, 20.0, 30.0])(spec, seed, **kw)
        return r | {"energy_j": None, "energy_provenance": "unavailable",
                    "energy_note": "no energy counter or power sensor"}

    m = Q.ttq(_spec(3), run=run, checked=CHECKED).metrics
    assert m["energy_to_target_j"] is None and m["energy_provenance"] == "unavailable"
    assert m["time_to_target_s"] == 20.0


def test_a_crashed_run_is_an_error_record():
    def run(spec, seed, **kw):
        if seed == 1:
            raise RuntimeError("device lost")
        return planted([10.0, 20.0, 30.0])(spec, seed, **kw)

    out = Q.ttq(_spec(3), run=run, checked=CHECKED)
    assert out.status == "error" and out.reason == ("run 2/3 (seed 1) failed: RuntimeError: "
                                                    "device lost")
    assert out.metrics["time_to_target_s"] is None and len(out.metrics["runs"]) == 1


@pytest.mark.parametrize("text, ok", [("hr@10=0.6", ("hr@10", 0.6)),
                                      ("NDCG@10=1", ("ndcg@10", 1.0))])
def test_parse_target(text, ok):
    assert Q.parse_target(text) == ok


# --- through the CLI, with real (tiny) training -----------------------------------------------


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    path = tmp_path_factory.mktemp("ttq") / "small.txt"
    D.save_user_item(D.synthetic(n_users=200, n_items=80, mean_len=10, seed=5), path)
    return str(path)


POINT_KEYS = {"framework", "preset", "dataset", "precision", "device", "compile", "target",
              "target_value", "runs", "max_epochs", "eval_every", "batch_size", "seed"}
METRIC_KEYS = {"time_to_target_s", "score_rule", "setup_s", "train_s", "eval_s", "train_share",
               "eval_share", "epochs_to_target", "energy_to_target_j", "energy_provenance",
               "converged", "paper_quality", "runs"}
RUN_KEYS = {"seed", "status", "wall_s", "setup_s", "train_s", "eval_s", "epochs", "energy_j",
            "reached", "test", "curve"}


def test_a_target_no_run_reaches_is_did_not_converge_and_exit_1(small, tmp_path, capsys):
    rc = main(["ttq", "--dataset", small, "--target", "hr@10=1", "--runs", "3",
               "--max-epochs", "2", "--out", str(tmp_path), "--json"])
    out, err = capsys.readouterr()
    r = json.loads(out)
    assert rc == 1 and r["status"] == "did-not-converge"
    assert r["reason"].startswith("3 of 3 runs did not reach the target")
    assert "run 1/3 (seed 0): eval epoch 1/2" in err  # a progress line per evaluation
    assert "run 3/3 (seed 2): did-not-converge after 2 epochs" in err  # and per run
    loaded = load(r["results"])  # the record round-trips through the reader
    [rec] = loaded.ttq
    assert loaded.records == [] and loaded.serve == [] and loaded.header.suite == "ttq"
    assert rec.status == "did-not-converge" and rec.reason == r["reason"]
    assert {"load_avg_before", "others_cpu_cores"} <= set(rec.extra["conditions"])
    assert set(rec.point) == POINT_KEYS
    assert rec.point | {"dataset": None} == {
        "framework": "torch", "preset": "tiny", "dataset": None, "precision": "fp32",
        "device": "cpu", "compile": "eager", "target": "hr@10", "target_value": 1.0,
        "runs": 3, "max_epochs": 2, "eval_every": 1, "batch_size": 128, "seed": 0}
    assert set(rec.metrics) >= METRIC_KEYS and rec.metrics["time_to_target_s"] is None
    for i, run in enumerate(rec.metrics["runs"]):
        assert set(run) >= RUN_KEYS and run["seed"] == i
        assert run["status"] == "did-not-converge" and run["epochs"] == 2
        assert [c["epoch"] for c in run["curve"]] == [1, 2]
        assert run["reached"] == run["curve"][-1]["valid"]


def test_a_reachable_target_scores_the_middle_run(small, tmp_path, capsys):
    rc = main(["ttq", "--dataset", small, "--target", "hr@10=0.05", "--runs", "3",
               "--max-epochs", "3", "--set", "dropout=0.1", "--out", str(tmp_path)])
    out, err = capsys.readouterr()
    assert rc == 0, err
    [rec] = load(Path(out.splitlines()[-1].removeprefix("results: "))).ttq
    m = rec.metrics
    assert rec.status == "ok" and m["converged"] == 3
    assert rec.point["overrides"] == {"dropout": 0.1}
    walls = sorted(r["wall_s"] for r in m["runs"])
    assert m["time_to_target_s"] == walls[1]
    kept = next(r for r in m["runs"] if r["wall_s"] == walls[1])
    assert m["train_s"] == kept["train_s"] and m["eval_s"] == kept["eval_s"]
    assert kept["wall_s"] >= kept["train_s"] + kept["eval_s"]
    assert m["train_share"] == pytest.approx(kept["train_s"] / kept["wall_s"])
    assert f"time to target  {walls[1]:.1f} s: mean of 1 of 3 runs" in out


class _TenWatts(EnergyCounter):
    name, period_s = "fake", 0.001

    def read_j(self) -> float:
        return 10.0 * time.perf_counter()


def test_energy_to_target_is_metered_over_the_runs_wall_time(small):
    spec = Q.TTQSpec(dataset=small, target="hr@10", target_value=1.0, runs=1, max_epochs=2)
    r = Q.run_once(spec, 0, log=lambda m: None, energy_sources=[_TenWatts()])
    assert r["status"] == "did-not-converge" and r["energy_provenance"] == "measured-counter"
    # the meter's own start and stop sit at the window's ends: a few ms at 10 W on a run of
    # ~0.1 s; the setup before the window (data, engine: setup_s) would be far more
    assert r["energy_j"] == pytest.approx(10.0 * r["wall_s"], rel=0.05, abs=0.1)


@pytest.mark.parametrize("target", ["hr@20=0.5", "hr@10=0", "hr@10=1.5", "hr@10", "ndcg@10=x",
                                    "auc=0.5"])
def test_bad_target_is_one_line_exit_2(target, capsys):
    assert main(["ttq", "--dataset", "synthetic", "--target", target]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert "write METRIC=X with METRIC one of hr@10, ndcg@10 and 0 < X <= 1" in err


def test_bad_out_or_dataset_fails_before_any_training(small, tmp_path, capsys, monkeypatch):
    def no_training(*a, **kw):
        raise AssertionError("trained before checking its input")

    monkeypatch.setattr(Q, "ttq", no_training)
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert main(["ttq", "--dataset", small, "--target", "hr@10=0.5",
                 "--out", str(blocker)]) == 2
    assert "cannot write results to" in capsys.readouterr().err
    assert main(["ttq", "--dataset", "nosuch", "--target", "hr@10=0.5",
                 "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert "nosuch" in err and len(err.splitlines()) == 1
    assert not list(tmp_path.glob("*/*.jsonl"))  # no results file was started


def test_a_busy_machine_or_an_interrupt_leaves_nothing_behind(small, tmp_path, capsys,
                                                               busy_machine, monkeypatch):
    """The machine lock comes first (busy: exit 2, no folder made), and the results file is
    written only once the runs are done (interrupted: no header-only file, no empty folder)."""
    out = tmp_path / "busy"
    assert main(["ttq", "--dataset", small, "--target", "hr@10=0.5", "--out", str(out)]) == 2
    assert "in use for measuring" in capsys.readouterr().err and not out.exists()
    monkeypatch.undo()

    def interrupted(*a, **kw):
        raise KeyboardInterrupt

    monkeypatch.setattr(Q, "ttq", interrupted)
    out = tmp_path / "stopped"
    assert main(["ttq", "--dataset", small, "--target", "hr@10=0.5", "--out", str(out)]) == 130
    assert out.exists() and not any(out.iterdir())  # --out itself stays; nothing in it


def test_a_contended_machine_flags_the_record_unstable(small, tmp_path, capsys, monkeypatch):
    """Other processes using >= 0.5 cores during the runs: the record is still ok, flagged
    unstable with the reason, and the text says the times are not the machine's alone."""
    from bench.machine import conditions

    real = Q.ttq
    monkeypatch.setattr(Q, "ttq", lambda spec, **kw: real(spec, run=planted([3.0, 1.0, 2.0]),
                                                          checked=CHECKED))
    monkeypatch.setattr(conditions.PointWindow, "close", lambda self: {
        "wall_s": 6.0, "load_avg_before": [3.0], "load_avg_after": [3.0], "steal": 0.0,
        "others_cpu_cores": 0.8, "busiest": [{"name": "pytest", "cpu_cores": 0.8}]})
    out = tmp_path / "r"
    assert main(["ttq", "--dataset", small, "--target", "hr@10=0.5", "--runs", "3",
                 "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "unstable   other processes used 0.80 cores" in text
    [f] = list(out.glob("*/*.jsonl"))
    [rec] = load(f).ttq
    assert rec.status == "ok" and rec.flags["unstable"].startswith("other processes used 0.80")
