"""`recbench compare`: verdicts on small fake result files written through ResultsWriter."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from bench.cli import main
from bench.gate.compare import compare_results, t95
from bench.gate.compare_report import format_markdown, parse_metrics
from bench.results import PointRecord, ResultsWriter, RunHeader, load

ENV = {"machine_id": "cpu-2c-8g-abc123", "cpu": "AMD EPYC 7B13", "cores": {"logical": 2,
       "usable": 2}, "gpus": [], "tpu": None, "versions": {"torch": "2.13.0", "jax": "0.7.0"},
       "git": {"commit": "a" * 40, "dirty": False}}
GPU_ENV = {**ENV, "machine_id": "nvidia-h200x1-abc123",
           "gpus": [{"name": "NVIDIA H200", "memory_bytes": 141e9}]}


def point(batch_size: int = 32, workload: str = "train") -> dict:
    return {"framework": "torch", "workload": workload, "preset": "tiny", "block": "sasrec",
            "loss": "bce", "n_neg": 1, "catalog_size": 5000, "seq_len": 50,
            "batch_size": batch_size, "precision": "fp32", "device": "cpu", "compile": False,
            "optimizer": "adam"}


def record(p: dict, *, scale: float = 1.0, n: int = 120, seed: int = 0, status: str = "ok",
           **metrics) -> PointRecord:
    """A point with n log-normal step times around 10 ms * scale (sigma 5%)."""
    if status != "ok":
        return PointRecord.for_point(p, status, "worker killed by signal SIGKILL")
    rng = np.random.default_rng(seed)
    samples = 10.0 * scale * rng.lognormal(0.0, 0.05, n)
    med = float(np.median(samples))
    base = {"step_ms": {"median": med, "n": n}, "samples_per_s": p["batch_size"] / med * 1e3,
            "flops_per_step": 1.5e9, "params_dense": 30_000, "params_embedding": 250_000,
            "peak_device_mem_bytes": None, "peak_host_rss_bytes": 500e6,
            "energy_j_per_1k_recs": None, "energy_provenance": "unavailable"}
    return PointRecord.for_point(p, "ok", metrics={**base, **metrics}, samples_ms=samples)


def write(path: Path, records: list[PointRecord], env: dict = ENV, suite: str = "ci") -> Path:
    header = RunHeader(run_id=path.stem, suite=suite, started_at="2026-11-28T12:00:00Z",
                       env=env, roofs={})
    with ResultsWriter.create(path.parent, "m", path.stem, header) as w:
        for r in records:
            w.write(r)
    return w.path


def run(capsys, *argv: str) -> tuple[int, str, str]:
    rc = main(["compare", *map(str, argv)])
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.fixture
def pair(tmp_path):
    """Factory: (base file, new file) from per-side record lists."""
    made = []

    def make(base: list[PointRecord], new: list[PointRecord], new_env: dict = ENV):
        made.append(1)
        d = tmp_path / str(len(made))
        return write(d / "base.jsonl", base), write(d / "new.jsonl", new, new_env)
    return make


def test_a_25_percent_slower_new_is_a_regression(pair, capsys):
    b, n = pair([record(point(), seed=1)], [record(point(), scale=1.25, seed=2)])
    rc, out, _ = run(capsys, b, n)
    assert rc == 1
    assert out.splitlines()[-1].startswith("FAIL: 1 regressed")
    c = compare_results([load(b)], [load(n)])
    step = c.points[0].metric("step_ms")
    assert c.points[0].status == "regressed" and step.status == "regressed"
    assert step.verdict["ratio"] == pytest.approx(1.25, rel=0.03)
    assert step.verdict["ci_low"] > 1.2 and step.verdict["p_value"] < 1e-10
    assert c.points[0].metric("samples_per_s").status == "regressed"  # throughput went down


def test_a_25_percent_faster_new_is_an_improvement_and_passes(pair, capsys):
    b, n = pair([record(point(), seed=1)], [record(point(), scale=0.75, seed=2)])
    rc, out, _ = run(capsys, b, n)
    assert rc == 0 and "pass: 1 improved" in out


def test_a_over_a_is_unchanged(pair, capsys):
    pts = [point(32), point(128), point(32, "infer")]
    b, n = pair([record(p, seed=i) for i, p in enumerate(pts)],
                [record(p, seed=10 + i) for i, p in enumerate(pts)])
    rc, out, _ = run(capsys, b, n)
    assert rc == 0
    c = compare_results([load(b)], [load(n)])
    assert [p.status for p in c.points] == ["unchanged"] * 3
    assert out.splitlines()[-1].startswith("pass: 3 unchanged of 3 points")


def test_tiny_samples_are_inconclusive_with_the_reason(pair, capsys):
    b, n = pair([record(point(), n=3, seed=1)], [record(point(), n=3, scale=1.5, seed=2)])
    rc, out, _ = run(capsys, b, n)
    assert rc == 0  # not enough evidence is not a regression
    c = compare_results([load(b)], [load(n)])
    assert c.points[0].status == "inconclusive"
    assert "only 3 samples in base and 3 in new (need 5)" in c.points[0].reason
    assert "only 3 samples in base" in out


def test_analytic_change_fails_unless_accepted(pair, capsys):
    b, n = pair([record(point(), seed=1)], [record(point(), seed=2, flops_per_step=1.8e9)])
    rc, out, _ = run(capsys, b, n)
    assert rc == 1 and "1 changed" in out and "flops_per_step: changed" in out
    rc, out, _ = run(capsys, b, n, "--accept-analytic-changes")
    assert rc == 0 and "1 unchanged" in out
    c = compare_results([load(b)], [load(n)], accept_analytic=True)
    flops = c.points[0].metric("flops_per_step")
    assert flops.status == "changed" and flops.accepted and "+20.00%" in flops.reason


def test_parameter_count_change_fails(pair, capsys):
    b, n = pair([record(point(), seed=1)], [record(point(), seed=2, params_dense=30_001)])
    rc, out, _ = run(capsys, b, n)
    assert rc == 1 and "params_dense: changed: 30,000 -> 30,001 (+0.0033%)" in out


def test_peak_device_memory_beyond_the_threshold_is_a_regression(pair, capsys):
    b, n = pair([record(point(), seed=1, peak_device_mem_bytes=1.0e9)],
                [record(point(), seed=2, peak_device_mem_bytes=1.2e9)])
    rc, _, _ = run(capsys, b, n)
    assert rc == 1
    mem = compare_results([load(b)], [load(n)]).points[0].metric("peak_mem_bytes")
    assert mem.status == "regressed" and mem.reason.startswith("device peak changed by +20.00%")
    rc, _, _ = run(capsys, b, n, "--threshold", "25%")
    assert rc == 0


def test_host_rss_is_the_fallback_memory(pair):
    b, n = pair([record(point(), seed=1)], [record(point(), seed=2, peak_host_rss_bytes=501e6)])
    mem = compare_results([load(b)], [load(n)]).points[0].metric("peak_mem_bytes")
    assert mem.status == "unchanged" and mem.reason.startswith("host RSS peak")


def test_energy_is_compared_only_when_measured_on_both_sides(pair):
    measured = {"energy_provenance": "measured-counter"}
    b, n = pair([record(point(), seed=1, energy_j_per_1k_recs=2.0, **measured)],
                [record(point(), seed=2, energy_j_per_1k_recs=3.0, **measured)])
    energy = compare_results([load(b)], [load(n)]).points[0].metric("energy_j_per_1k_recs")
    assert energy.status == "inconclusive" and "no noise estimate" in energy.reason
    b, n = pair([record(point(), seed=1, energy_j_per_1k_recs=2.0, **measured)],
                [record(point(), seed=2, energy_j_per_1k_recs=3.0,
                        energy_provenance="estimated")])
    assert compare_results([load(b)], [load(n)]).points[0].metric("energy_j_per_1k_recs") is None


def test_energy_over_five_runs_a_side_is_tested(tmp_path):
    measured = {"energy_provenance": "measured-counter"}
    base = [write(tmp_path / f"b{i}.jsonl", [record(point(), seed=i, **measured,
                                                    energy_j_per_1k_recs=2.0 + 0.01 * i)])
            for i in range(6)]
    new = [write(tmp_path / f"n{i}.jsonl", [record(point(), seed=9 + i, **measured,
                                                   energy_j_per_1k_recs=3.0 + 0.01 * i)])
           for i in range(6)]
    c = compare_results([load(p) for p in base], [load(p) for p in new])
    assert c.points[0].metric("energy_j_per_1k_recs").status == "regressed"
    assert c.points[0].n_runs == (6, 6)
    assert c.points[0].metric("step_ms").verdict["n_base"] == 720  # six runs pooled


def test_different_fingerprints_are_refused_unless_cross_hardware(pair, capsys, monkeypatch):
    b, n = pair([record(point(), seed=1)], [record(point(), seed=2)], new_env=GPU_ENV)
    rc, out, err = run(capsys, b, n)
    assert rc == 2 and out == ""
    assert len(err.strip().splitlines()) == 1
    assert "environments differ (gpus () vs ('NVIDIA H200',))" in err
    assert "--cross-hardware" in err
    calls = []
    from bench.analysis import compare_hw

    table = SimpleNamespace(rows=[1], not_comparable=[])
    monkeypatch.setattr(compare_hw, "cross_hardware",
                        lambda a, b: calls.append((a, b)) or table)
    monkeypatch.setattr(compare_hw, "format_table", lambda t: "TABLE")
    monkeypatch.setattr(compare_hw, "to_markdown", lambda t: "| MD |")
    monkeypatch.setattr(compare_hw, "to_json", lambda t: {"rows": len(t.rows)})
    rc, out, _ = run(capsys, b, n, "--cross-hardware")
    assert rc == 0 and out.strip() == "TABLE"
    assert [f.path for f in calls[0][0]] == [b] and [f.path for f in calls[0][1]] == [n]
    rc, out, _ = run(capsys, b, n, "--cross-hardware", "--json")
    assert rc == 0 and json.loads(out) == {"rows": 1}


def test_cross_hardware_with_the_real_table(pair, capsys):
    b, n = pair([record(point(), seed=1)], [record(point(), seed=2)], new_env=GPU_ENV)
    rc, out, _ = run(capsys, b, n, "--cross-hardware")
    assert rc == 0 and out.strip()


def test_cross_hardware_without_a_common_point_is_exit_2_naming_the_suites(tmp_path, capsys):
    b = write(tmp_path / "a" / "base.jsonl", [record(point(32), seed=1)], suite="quick")
    n = write(tmp_path / "b" / "new.jsonl", [record({**point(1024), "device": "cuda"}, seed=2)],
              GPU_ENV, suite="gpu-quick")
    for extra in ((), ("--json",), ("--markdown",)):
        rc, out, err = run(capsys, b, n, "--cross-hardware", *extra)
        assert rc == 2 and out == "" and len(err.strip().splitlines()) == 1
        assert "no point in common: base ran suites quick, new ran gpu-quick" in err
        assert "--suite reference" in err and "Traceback" not in err
    # one configuration in common (the device aside) is enough for the table
    n2 = write(tmp_path / "c" / "new.jsonl", [record({**point(32), "device": "cuda"}, seed=3)],
               GPU_ENV, suite="gpu-quick")
    assert run(capsys, b, n2, "--cross-hardware")[0] == 0


def test_points_on_one_side_only_are_listed(pair, capsys):
    b, n = pair([record(point(32), seed=1), record(point(128), seed=2)],
                [record(point(32), seed=3), record(point(64), seed=4)])
    rc, out, _ = run(capsys, b, n)
    assert rc == 0
    assert "only in base: torch (eager) train tiny/sasrec C=5k T=50 B=128 fp32 cpu" in out
    assert "only in new: torch (eager) train tiny/sasrec C=5k T=50 B=64 fp32 cpu" in out
    assert "(1 only in base, 1 only in new)" in out.splitlines()[-1]


def test_a_point_that_fails_on_new_fails_the_comparison(pair, capsys):
    b, n = pair([record(point(), seed=1), record(point(128), seed=2)],
                [record(point(), status="crashed"), record(point(128), seed=3)])
    rc, out, _ = run(capsys, b, n)
    assert rc == 1 and "failed" in out and "new crashed: worker killed" in out


def test_json_is_one_object(pair, capsys):
    b, n = pair([record(point(), seed=1)], [record(point(), scale=1.25, seed=2)])
    rc, out, _ = run(capsys, b, n, "--json")
    obj = json.loads(out)  # the whole of stdout is one object
    assert rc == 1 and obj["exit_code"] == 1 and obj["counts"] == {"regressed": 1}
    step = next(m for m in obj["points"][0]["metrics"] if m["metric"] == "step_ms")
    assert step["verdict"]["status"] == "regressed" and step["verdict"]["p_value"] < 1e-6


def test_markdown_has_the_summary_and_tables(pair, capsys):
    pts = [point(32), point(128)]
    b, n = pair([record(pts[0], seed=1), record(pts[1], seed=2)],
                [record(pts[0], scale=1.25, seed=3), record(pts[1], seed=4)])
    rc, out, _ = run(capsys, b, n, "--markdown")
    assert rc == 1
    lines = out.splitlines()
    assert lines[0].startswith("### ❌ recbench compare: FAIL: 1 regressed, 1 unchanged")
    table = lines.index("| status | point | metric | base | new | change | 95% CI | p |")
    assert "❌ regressed | torch (eager) train tiny/sasrec C=5k T=50 B=32" in lines[table + 2]
    assert "| step_ms | 10 | 12.5 | +2" in lines[table + 2]
    assert lines[table + 3] == ""  # only the regressed point is in the first table
    assert table < lines.index("<details><summary>All points and metrics</summary>")
    details = out[out.index("<details>"):]
    assert "B=128" in details and details.rstrip().endswith("</details>")


@pytest.mark.parametrize("threshold", ["5", "abc", "-5%"])
def test_bad_threshold_is_exit_2_with_one_line(pair, capsys, threshold):
    b, n = pair([record(point(), seed=1)], [record(point(), seed=2)])
    rc, out, err = run(capsys, b, n, f"--threshold={threshold}")
    assert rc == 2 and out == "" and len(err.strip().splitlines()) == 1
    assert err.startswith("recbench compare: error: threshold")


def test_no_matching_points_is_exit_2(pair, capsys):
    b, n = pair([record(point(32), seed=1)], [record(point(64), seed=2)])
    rc, _, err = run(capsys, b, n)
    assert rc == 2 and "no point in common" in err


def test_bad_alpha_metric_and_missing_file_are_exit_2(pair, capsys, tmp_path):
    b, n = pair([record(point(), seed=1)], [record(point(), seed=2)])
    assert run(capsys, b, n, "--alpha", "2")[0] == 2
    assert run(capsys, b, n, "--metric", "latency")[0] == 2
    rc, _, err = run(capsys, b, tmp_path / "nope.jsonl")
    assert rc == 2 and "no such results file" in err


def test_metric_selection(pair):
    assert parse_metrics(["step_ms,analytic"]) == ("step_ms", "flops_per_step", "params_dense",
                                                  "params_embedding")
    b, n = pair([record(point(), seed=1)], [record(point(), seed=2, flops_per_step=2e9)])
    c = compare_results([load(b)], [load(n)], metrics=("step_ms",))
    assert [m.metric for m in c.points[0].metrics] == ["step_ms"] and not c.failed


def test_directories_pool_their_runs(tmp_path, capsys):
    for i in range(2):
        write(tmp_path / "base" / f"r{i}.jsonl", [record(point(), n=60, seed=i)])
        write(tmp_path / "new" / f"r{i}.jsonl", [record(point(), n=60, seed=5 + i, scale=1.3)])
    rc, out, _ = run(capsys, tmp_path / "base", tmp_path / "new", "--json")
    obj = json.loads(out)
    assert rc == 1 and obj["points"][0]["n_runs"] == [2, 2]
    assert obj["points"][0]["metrics"][0]["verdict"]["n_base"] == 120


def test_markdown_renders_without_notable_points(pair):
    b, n = pair([record(point(), seed=1)], [record(point(), seed=2)])
    md = format_markdown(compare_results([load(b)], [load(n)]))
    assert "No point regressed, improved or changed." in md


# --- paired rounds (recbench gate; --paired-runs) ---------------------------------------------


def rounds(tmp_path, name: str, scales: list[float], n: int = 30, seed: int = 0) -> list:
    """One file per round; the step time of round i is 10 ms * scales[i] (sigma 3%)."""
    files = []
    for i, scale in enumerate(scales):
        rng = np.random.default_rng(seed + i)
        rec = PointRecord.for_point(point(), "ok", metrics={"flops_per_step": 1.5e9},
                                    samples_ms=10.0 * scale * rng.lognormal(0.0, 0.03, n))
        files.append(load(write(tmp_path / name / f"round-{i}.jsonl", [rec])))
    return files


def test_paired_rounds_cancel_drift_shared_by_both_sides(tmp_path):
    drift = [1.0, 1.5, 0.8, 1.3, 1.1]  # the machine's state, round by round
    base = rounds(tmp_path, "base", drift)
    new = rounds(tmp_path, "new", [1.1 * d for d in drift], seed=50)  # a true 10% slowdown
    step = compare_results(base, new, paired=True).points[0].metric("step_ms")
    assert step.status == "regressed"
    assert step.verdict["rounds"]["n"] == 5
    assert step.verdict["rounds"]["ratio"] == pytest.approx(1.10, abs=0.02)
    assert 1.05 < step.verdict["rounds"]["ci_low"] < 1.10 < step.verdict["rounds"]["ci_high"]
    assert step.verdict["ci_low"] <= step.verdict["rounds"]["ci_low"]  # the envelope is shown


def test_paired_rounds_that_disagree_are_inconclusive_not_regressed(tmp_path):
    base = rounds(tmp_path, "base", [1.0] * 5)
    new = rounds(tmp_path, "new", [1.8, 0.95, 1.05, 1.85, 1.1], seed=50)  # two bad rounds
    pooled = compare_results(base, new).points[0]
    assert pooled.status == "regressed"  # pooled samples alone would fail the gate ...
    step = compare_results(base, new, paired=True).points[0].metric("step_ms")
    assert step.status == "inconclusive"  # ... the rounds say it is not reproducible
    assert "the rounds disagree" in step.reason and "per round +79.4% -5.8%" in step.reason


def test_paired_unchanged_needs_rounds_that_agree(tmp_path):
    base = rounds(tmp_path, "base", [1.0] * 6)
    same = compare_results(base, rounds(tmp_path, "a", [1.0] * 6, seed=9), paired=True)
    assert same.points[0].status == "unchanged"
    wobbly = compare_results(base, rounds(tmp_path, "b", [1.12, 0.9, 1.0, 1.1, 0.92, 1.0],
                                          seed=9), paired=True)
    step = wobbly.points[0].metric("step_ms")
    assert step.status == "inconclusive" and "rounds vary too much" in step.reason


def test_t_quantiles_match_the_printed_table():
    # Two-sided 95% points of Student's t as printed in statistics tables (e.g. Abramowitz &
    # Stegun table 26.10), and the normal quantile as df grows.
    table = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 9: 2.262, 10: 2.228,
             15: 2.131, 30: 2.042, 120: 1.980}
    for df, value in table.items():
        assert t95(df) == pytest.approx(value, abs=1e-3)
    assert t95(10**6) == pytest.approx(1.960, abs=1e-3)


def test_paired_runs_flag(tmp_path, capsys):
    rounds(tmp_path, "base", [1.0, 1.5, 0.8, 1.3, 1.1])
    rounds(tmp_path, "new", [1.1, 1.65, 0.88, 1.43, 1.21], seed=50)
    rc, out, _ = run(capsys, tmp_path / "base", tmp_path / "new", "--paired-runs", "--json")
    assert rc == 1 and json.loads(out)["paired_runs"] is True


@pytest.mark.parametrize("value", [0.0, -10.0], ids=["zero", "negative"])
def test_a_zero_or_negative_step_time_is_exit_2_naming_the_file_and_line(pair, capsys, value):
    """No step takes 0 ms or less: such a sample (an unmeasured iteration written as 0, a hand
    edit) is refused as the file is read, naming it and the line, whichever metric is asked
    for; the file stays as it was."""
    bad = record(point(), seed=1)
    bad.samples_ms[3] = value
    b, n = pair([record(point(2), seed=3), bad], [record(point(), seed=2)])
    before = b.read_bytes()
    for metric in ("samples_per_s", "step_ms", "peak_mem_bytes"):
        rc, out, err = run(capsys, b, n, "--metric", metric)
        assert rc == 2 and out == "" and "Traceback" not in err
        assert len(err.strip().splitlines()) == 1
        assert err.startswith(f"recbench compare: error: {b}:3: samples_ms[3]: expected a step "
                              f"time in ms > 0, got {value}; restore the value or delete that "
                              "line"), err
        assert "drop failed" not in err
    assert b.read_bytes() == before


def test_paired_reason_prints_a_fractional_threshold_exactly(tmp_path):
    base = rounds(tmp_path, "base", [1.0] * 6)
    wobbly = rounds(tmp_path, "b", [1.12, 0.9, 1.0, 1.1, 0.92, 1.0], seed=9)
    step = compare_results(base, wobbly, paired=True, threshold=0.075).points[0].metric("step_ms")
    assert step.status == "inconclusive" and "rule out a 7.5% change" in step.reason


def test_an_unstable_point_is_inconclusive_with_the_reason(tmp_path, capsys):
    p = point()
    slow = record(p, scale=1.25, seed=1)
    slow.flags["unstable"] = "other processes used 1.02 cores during the point (>= 0.5)"
    base, new = write(tmp_path / "b.jsonl", [record(p)]), write(tmp_path / "n.jsonl", [slow])
    c = compare_results([load(base)], [load(new)])
    (res,) = c.points
    assert res.status == "inconclusive" and not c.failed
    step = res.metric("step_ms")
    assert step.status == step.verdict["status"] == "inconclusive"
    assert "new unstable: other processes used 1.02 cores" in step.reason
    assert "the samples alone read regressed" in step.reason
    rc, out, _ = run(capsys, base, new)
    assert rc == 0 and "unstable" in out
    # the analytic values are still judged: a changed FLOP count still fails
    changed = record(p, flops_per_step=2e9)
    changed.flags["unstable"] = "step time CV 35% > 20%"
    new2 = write(tmp_path / "n2.jsonl", [changed])
    assert compare_results([load(base)], [load(new2)]).points[0].status == "changed"


def test_an_unstable_point_says_so_even_when_the_samples_are_inconclusive(tmp_path):
    p = point()
    noisy = record(p, seed=1)
    noisy.samples_ms[::2] = [x * 3 for x in noisy.samples_ms[::2]]  # spread: inconclusive alone
    noisy.flags["unstable"] = "step time CV 80% > 20%"
    base, new = write(tmp_path / "b.jsonl", [record(p)]), write(tmp_path / "n.jsonl", [noisy])
    step = compare_results([load(base)], [load(new)]).points[0].metric("step_ms")
    assert step.status == "inconclusive"
    assert step.reason.startswith("new unstable: step time CV 80% > 20%; the samples alone read")


@pytest.mark.parametrize(("field", "value", "message"), [
    ("batch_size", "big", "point.batch_size: expected a positive integer, got 'big'"),
    ("step_ms", "fast", "metrics.step_ms: expected an object of times in ms"),
], ids=["batch_size", "step_ms"])
def test_a_hand_edited_value_is_exit_2_naming_the_file_line_and_field(pair, capsys, field,
                                                                      value, message):
    """Read as every reader reads it: one line naming the file, the line and the field, not a
    point listed as "only in new" or a comparison that passes over the edit."""
    b, n = pair([record(point(), seed=1)], [record(point(), seed=2)])
    lines = n.read_text().splitlines()
    rec = json.loads(lines[1])
    (rec["point"] if field == "batch_size" else rec["metrics"])[field] = value
    n.write_text("\n".join([lines[0], json.dumps(rec)]) + "\n")
    before = n.read_bytes()
    rc, out, err = run(capsys, b, n)
    assert rc == 2 and out == "" and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    assert err.startswith(f"recbench compare: error: {n}:2: {message}"), err
    assert n.read_bytes() == before
