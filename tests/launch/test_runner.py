"""The harness end to end: workers, fault statuses, Ctrl-C and --resume, bad input."""

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import ClassVar

import pytest

from bench import results as R
from bench.cli import main
from bench.launch.progress import Progress
from bench.launch.runner import run_suite
from bench.launch.worker import is_oom, measure_point
from bench.machine.hardware import device_capacity_bytes
from bench.point import Measure, Point
from bench.scenarios.step import DeviceCaps, support_reason
from bench.suites.suite import load_suite
from recmodels.errors import InputError

MEASURE = """
[measure]
warmup_iters = 1
min_time_s = 0.05
min_iters = 3
max_iters = 10
max_time_s = 2.0
timeout_s = {timeout}
"""


def write_suite(tmp_path: Path, grids: str, timeout: float = 60.0, name: str = "t") -> Path:
    path = tmp_path / f"{name}.toml"
    path.write_text(f'[suite]\nname = "{name}"\n' + MEASURE.format(timeout=timeout) + grids)
    return path


def tiny_point(**kw) -> Point:
    base = dict(framework="torch", workload="infer", preset="tiny", catalog_size=500,
                seq_len=8, batch_size=4, precision="fp32", device="cpu")
    return Point(**{**base, **kw})


def test_support_matrix():
    cpu, old_gpu = DeviceCaps("cpu"), DeviceCaps("cuda", "Tesla T4", (7, 5))
    h100, tpu = DeviceCaps("cuda", "H100", (9, 0)), DeviceCaps("tpu", "TPU v5 lite")
    assert support_reason(tiny_point(), cpu) is None
    assert "torch_xla" in support_reason(tiny_point(device="tpu"), tpu)
    assert support_reason(tiny_point(framework="jax", device="tpu"), tpu) is None
    assert "tf32" in support_reason(tiny_point(precision="tf32"), cpu)
    assert support_reason(tiny_point(precision="tf32", device="cuda"), h100) is None
    assert "8.0" in support_reason(tiny_point(precision="bf16", device="cuda"), old_gpu)
    assert "fp16" in support_reason(tiny_point(framework="jax", precision="fp16", device="tpu"),
                                    tpu)
    assert support_reason(tiny_point(precision="int8"), cpu) is None
    assert "CPU inference only" in support_reason(tiny_point(precision="int8", workload="train"),
                                                  cpu)


def test_is_oom_recognises_each_framework():
    class OutOfMemoryError(RuntimeError):
        pass

    assert is_oom(OutOfMemoryError("CUDA out of memory"))
    assert is_oom(RuntimeError("RESOURCE_EXHAUSTED: Out of memory while trying to allocate"))
    assert is_oom(MemoryError())
    assert not is_oom(ValueError("shape mismatch"))


def test_capacity_comes_from_the_environment():
    env = {"ram_bytes": 24 << 30, "gpus": [{"memory_bytes": 80 << 30}, {"memory_bytes": 40 << 30}]}
    assert device_capacity_bytes("cpu", env) == 24 << 30
    assert device_capacity_bytes("cuda:1", env) == 40 << 30
    assert device_capacity_bytes("tpu", env) is None


def test_measure_point_in_process_has_every_metric():
    res = measure_point(tiny_point(), Measure(warmup_iters=1, min_time_s=0.05, min_iters=3,
                                              max_iters=5, max_time_s=1.0))
    assert res["status"] == "ok", res
    m = res["metrics"]
    assert 3 <= m["step_ms"]["n"] == len(res["samples_ms"]) <= 5
    assert m["step_ms"]["median"] > 0 and m["compile_s"] > 0
    assert m["samples_per_s"] == pytest.approx(4 / (m["step_ms"]["median"] / 1e3))
    assert m["peak_host_rss_bytes"] > 50 << 20
    assert m["peak_device_mem_bytes"] is None  # a CPU has no device counter: null, never 0
    # No RAPL/NVML here: energy is unavailable, never a fabricated measurement.
    if m["energy_provenance"] == "unavailable":
        assert m["energy_j_per_step"] is None and m["mean_power_w"] is None
    else:
        assert m["energy_provenance"].startswith("measured")


def torch_infer_grid(batch_sizes: list[int]) -> str:
    """A [[grid]] of tiny torch inference points, one per batch size."""
    return f"""
[[grid]]
framework = ["torch"]
workload = ["infer"]
preset = ["tiny"]
catalog_size = [500]
seq_len = [8]
batch_size = {batch_sizes}
precision = ["fp32"]
"""


FAULTS = torch_infer_grid([1, 2, 3, 4, 5, 6, 7]) + """
[[grid]]
framework = ["torch"]
workload = ["train"]
preset = ["tiny"]
catalog_size = [500]
seq_len = [8]
batch_size = [8]
precision = ["fp32", "int8"]

[[grid]]
framework = ["torch"]
workload = ["train"]
preset = ["xl"]
batch_size = [4096]
precision = ["fp32"]
"""


def test_faults_become_statuses_and_the_sweep_completes(tmp_path, monkeypatch):
    faults = {"B=2 ": "sigkill", "B=3 ": "segfault", "B=4 ": "hang", "B=5 ": "error",
              "B=6 ": "oom"}
    monkeypatch.setenv("RECBENCH_FAULT", ",".join(f"{k}fp32={v}" for k, v in faults.items()))
    suite = load_suite(write_suite(tmp_path, FAULTS, timeout=20.0))
    env = {"machine_id": "test-machine", "ram_bytes": 24 << 30, "gpus": []}
    outcome = run_suite(suite, out_dir=tmp_path / "out", env=env, roofs={})
    recs = {Point.from_dict(r.point).label(): r for r in R.load(outcome.path).records}
    assert len(recs) == len(suite.points)  # every point has exactly one record

    def status(label_part):
        (rec,) = [r for k, r in recs.items() if label_part in k]
        return rec

    assert status("infer tiny/sasrec C=500 T=8 B=1 ").status == "ok"
    assert status("B=2 fp32").status == "crashed"
    assert "SIGKILL" in status("B=2 fp32").reason
    assert status("B=3 fp32").status == "crashed"
    assert "SIGSEGV" in status("B=3 fp32").reason
    assert status("B=4 fp32").status == "timeout"
    assert status("B=5 fp32").status == "error" and "injected" in status("B=5 fp32").reason
    assert status("B=6 fp32").status == "oom"
    assert status("B=7 fp32").status == "skipped-after-oom"
    assert status("train tiny/sasrec C=500 T=8 B=8 fp32").status == "ok"  # after the OOM
    assert status("train tiny/sasrec C=500 T=8 B=8 int8").status == "unsupported"
    big = status("train xl/sasrec C=200k T=512 B=4096 fp32")
    assert big.status == "infeasible" and "estimate" in big.reason
    assert big.metrics["est_mem_bytes"] > 24 << 30
    ok = status("infer tiny/sasrec C=500 T=8 B=1 ")
    assert ok.metrics["step_ms"]["n"] == len(ok.samples_ms) >= 3


def test_ctrl_c_keeps_records_and_resume_finishes(tmp_path):
    suite_path = write_suite(tmp_path, torch_infer_grid([1, 2, 3, 4, 5, 6]))
    out = tmp_path / "out"
    env = {**os.environ, "RECBENCH_FAULT": "B=4 =hang"}  # holds the sweep at point 4
    cmd = [sys.executable, "-m", "bench", "run", "--suite", str(suite_path), "--out", str(out),
           "--no-roofs"]
    # SIGINT at its default in the run: a test suite started as a background job of a
    # non-interactive shell (`make test &`) has it ignored, and children inherit that
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 120
    files: list[Path] = []
    while time.time() < deadline:
        files = list(out.glob("*/*.jsonl"))
        if files and len(files[0].read_text().splitlines()) >= 4:  # header + 3 records
            break
        time.sleep(0.2)
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    try:
        _, err = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:  # kill it, so its machine lock fails no later test
        proc.kill()
        _, err = proc.communicate()
        raise AssertionError(f"recbench run did not stop within 120 s of Ctrl-C:\n{err}") from None
    assert proc.returncode == 130, err
    assert "--resume" in err and "Traceback" not in err
    (path,) = files
    before = R.load(path).records
    assert [Point.from_dict(r.point).batch_size for r in before] == [1, 2, 3]
    assert all(r.status == "ok" for r in before)

    rc = subprocess.run([*cmd, "--resume", str(path)], capture_output=True, text=True,
                        timeout=180)
    assert rc.returncode == 0, rc.stderr
    after = R.load(path).records
    assert sorted(Point.from_dict(r.point).batch_size for r in after) == [1, 2, 3, 4, 5, 6]
    assert [r.to_json() for r in after[:3]] == [r.to_json() for r in before]  # untouched


def test_small_sweep_both_frameworks_via_cli(tmp_path, capsys):
    grid = """
[[grid]]
framework = ["torch", "jax"]
workload = ["train", "infer"]
preset = ["tiny"]
catalog_size = [500]
seq_len = [8]
batch_size = [4]
precision = ["fp32", "bf16"]
"""
    rc = main(["run", "--suite", str(write_suite(tmp_path, grid)), "--out", str(tmp_path),
               "--json"])
    assert rc == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["counts"] == {"ok": 8}
    f = R.load(summary["results"])
    assert f.header.suite == "t" and f.header.roofs["cpu/fp32"]["gemm_flops_per_s"] > 0
    for r in f.records:
        assert r.metrics["utilization"] > 0 and r.metrics["flops_per_step"] > 0


@pytest.mark.parametrize("argv, message", [
    (["run", "--suite", "nosuch"], "unknown suite"),
    (["run", "--suite", "quick", "--set", "bogus=1"], "--set bogus=1"),
    (["run", "--suite", "quick", "--set", "measure.min_time_s"], "measure.min_time_s"),
    (["run", "--suite", "quick", "--device", "gpu7"], "device"),
])
def test_bad_run_input_is_one_line_exit_2(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_bad_suite_files(tmp_path, capsys):
    bad_toml = tmp_path / "bad.toml"
    bad_toml.write_text("[suite\nname = 1")
    unknown = write_suite(tmp_path, "[[grid]]\nframework = ['torch']\nworkload = ['train']\n"
                          "preset = ['tiny']\nbatch_size = [1]\nprecision = ['fp32']\n"
                          "batchsize = [2]\n", name="unknown")
    for path, message in ((bad_toml, "TOML syntax"), (unknown, "batchsize")):
        assert main(["run", "--suite", str(path), "--dry-run"]) == 2
        err = capsys.readouterr().err
        assert message in err and path.name in err and len(err.strip().splitlines()) == 1


def test_unwritable_output_directory(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    suite = write_suite(tmp_path, "[[grid]]\nframework = ['torch']\nworkload = ['infer']\n"
                        "preset = ['tiny']\nbatch_size = [1]\nprecision = ['fp32']\n")
    assert main(["run", "--suite", str(suite), "--out", str(blocker / "sub"), "--no-roofs"]) == 2
    err = capsys.readouterr().err
    assert "--out" in err and len(err.strip().splitlines()) == 1
    assert blocker.read_text() == "not a directory"


def test_a_worker_that_is_not_ready_in_time_is_killed(monkeypatch):
    from bench.launch import channel as runner

    started = []

    class Popen(subprocess.Popen):
        def __init__(self, *a, **kw):
            super().__init__(*a, **kw)
            started.append(self)

    monkeypatch.setattr(runner.subprocess, "Popen", Popen)
    monkeypatch.setattr(runner, "STARTUP_TIMEOUT_S", 0.01)  # torch takes longer to import
    with pytest.raises(runner.WorkerTimeout):
        runner.Worker("torch")
    (proc,) = started
    assert proc.returncode is not None  # killed and reaped, not left running in its session


def test_workload_close_drops_the_engine():
    import gc
    import weakref

    from bench.scenarios.step import build

    w = build(tiny_point(workload="train"))
    engine = weakref.ref(w.engine)
    w.step()
    w.close()
    gc.collect()
    assert engine() is None  # planned_mem_bytes' closure no longer holds it
    assert w.planned_mem_bytes() is None


INFEASIBLE = """
[[grid]]
framework = ["torch"]
workload = ["train"]
preset = ["xl"]
batch_size = [{batches}]
precision = ["fp32"]
"""
SMALL_ENV = {"machine_id": "test-machine", "cpu": "test cpu", "ram_bytes": 1 << 30, "gpus": []}


def _infeasible_run(tmp_path, batches: str, **kw) -> tuple[Path, list[str]]:
    """A run whose points are all infeasible on SMALL_ENV: the runner decides, no worker."""
    logged: list[str] = []
    suite = load_suite(write_suite(tmp_path, INFEASIBLE.format(batches=batches), **kw))
    out = run_suite(suite, out_dir=tmp_path / "out", env=SMALL_ENV, roofs={}, log=logged.append)
    return out.path, logged


def test_resume_refuses_another_suite_machine_or_sampling(tmp_path):
    path, _ = _infeasible_run(tmp_path, "4096")
    before = path.read_bytes()
    grid = INFEASIBLE.format(batches="4096")
    other = load_suite(write_suite(tmp_path, grid, name="other"))
    same = load_suite(write_suite(tmp_path, grid))
    slower = tmp_path / "slower" / "t.toml"
    slower.parent.mkdir()
    slower.write_text((tmp_path / "t.toml").read_text().replace("min_iters = 3", "min_iters = 5"))
    cases = [(other, SMALL_ENV, "holds a run of suite 't', not 'other'"),
             (same, {**SMALL_ENV, "machine_id": "elsewhere"}, "machine 'test-machine' vs "
              "'elsewhere'"),
             (same, {**SMALL_ENV, "versions": {"torch": "9.9"}}, "torch None vs '9.9'"),
             (load_suite(slower), SMALL_ENV, "measure.min_iters 3 -> 5")]
    for suite, env, message in cases:
        with pytest.raises(InputError, match=re.escape(message)):
            run_suite(suite, out_dir=tmp_path / "out", env=env, resume=path)
        assert path.read_bytes() == before
    assert main(["run", "--suite", str(tmp_path / "other.toml"), "--resume", str(path)]) == 2


def test_resume_keeps_records_of_points_no_longer_in_the_suite(tmp_path):
    path, _ = _infeasible_run(tmp_path, "4096, 8192")
    suite = load_suite(write_suite(tmp_path, INFEASIBLE.format(batches="8192, 16384")))
    logged: list[str] = []
    outcome = run_suite(suite, out_dir=tmp_path / "out", env=SMALL_ENV, resume=path,
                        log=logged.append)
    assert [Point.from_dict(r.point).batch_size for r in outcome.records] == [16384]
    assert "1 points to run (1 already recorded; 1 recorded points are not in the suite" in (
        logged[0])
    assert sorted(Point.from_dict(r.point).batch_size for r in R.load(path).records) == [
        4096, 8192, 16384]


def test_utilization_of_data_parallel_points_is_against_every_device():
    from bench.launch.derived import add_utilization
    from bench.machine.hardware import devices_spanned

    roofs = {"cuda/bf16": {"gemm_flops_per_s": 500e12, "mem_bytes_per_s": 4e12},
             "cpu/fp32": {"gemm_flops_per_s": 1e11, "mem_bytes_per_s": 2e10}}
    env = {"gpus": [{"name": "NVIDIA H100 80GB HBM3", "memory_bytes": 80 << 30}] * 4}
    achieved = {"achieved_flops_per_s": 1e15, "achieved_bytes_per_s": 4e12}
    one = {**achieved}
    add_utilization(one, tiny_point(framework="jax", precision="bf16", device="cuda:0"), roofs,
                    env)
    four = {**achieved}
    add_utilization(four, tiny_point(framework="jax", precision="bf16", device="cuda:all"),
                    roofs, env)
    assert devices_spanned("cuda:all", env) == 4 and four["roof_devices"] == 4
    assert four["utilization"] == pytest.approx(one["utilization"] / 4) == pytest.approx(0.5)
    assert four["bandwidth_utilization"] == pytest.approx(0.25)
    assert one["utilization_datasheet"] > 0 and four["utilization_datasheet"] is None
    host = {**achieved}  # cpu:all: virtual devices of one CPU, measured by no datasheet
    add_utilization(host, tiny_point(framework="jax", device="cpu:all"), roofs, env)
    assert host["utilization"] == pytest.approx(1e4) and host["utilization_datasheet"] is None


def test_data_parallel_feasibility_is_per_device(tmp_path, monkeypatch):
    from bench.launch import runner
    from bench.scenarios.step import analytic_cost

    class Worker:  # what the point does on the device is not this test's business
        def __init__(self, framework, env=None, cap=None):
            pass

        def request(self, msg, timeout_s):
            return {"status": "unsupported", "reason": "no GPU in this test"}

        def close(self):
            pass

        kill = close

    monkeypatch.setattr(runner, "Worker", Worker)
    # base, not tiny: the infeasible rule allows the estimate its stated error (25% or
    # 200 MiB), so the per-device batches must differ by more than that
    grid = INFEASIBLE.format(batches="512").replace('"torch"', '"jax"').replace(
        'preset = ["xl"]', 'preset = ["base"]\ndevice = ["cuda:all"]')
    cap = 6 << 30
    env = {**SMALL_ENV, "gpus": [{"name": "GPU", "memory_bytes": cap}] * 8}
    suite = load_suite(write_suite(tmp_path, grid), device_resolver=lambda d: d)
    (point,) = suite.points
    per_device = analytic_cost(Point(**{**point.to_dict(), "batch_size": 64}))["est_mem_bytes"]
    assert per_device < cap < analytic_cost(point)["est_mem_bytes"]  # all of B fits on no GPU
    (rec,) = run_suite(suite, out_dir=tmp_path / "out", env=env, roofs={},
                       log=lambda s: None).records
    assert rec.status == "unsupported", rec.reason  # it was sent to the worker
    env["gpus"] = [{"name": "GPU", "memory_bytes": cap}] * 2  # B=256 a device: does not fit
    (rec,) = run_suite(suite, out_dir=tmp_path / "out2", env=env, roofs={},
                       log=lambda s: None).records
    assert rec.status == "infeasible" and "each of cuda:all's 2 devices" in rec.reason


# --- resume after OOMs, skip_after_oom = false, and a bare --resume --------------------------


class FaultWorker:
    """Stands in for runner.Worker without a process: RECBENCH_FAULT decides each point as it
    does in the real worker (bench.launch.worker._fault_for): ``oom`` -> an "oom" reply; every
    other point is "ok"."""

    requested: ClassVar[list[int]] = []  # batch sizes, in the order the runner asked for them

    def __init__(self, framework, env=None, cap=None):
        pass

    def request(self, msg, timeout_s):
        from bench.launch.worker import _fault_for

        point = Point.from_dict(msg["point"])
        FaultWorker.requested.append(point.batch_size)
        if _fault_for(point) == "oom":
            return {"status": "oom", "reason": "RESOURCE_EXHAUSTED: injected out of memory"}
        return {"status": "ok", "samples_ms": [1.0, 1.0, 1.0],
                "metrics": {"step_ms": {"median": 1.0, "n": 3}, "samples_per_s": 1e3,
                            "achieved_flops_per_s": 1e9,
                            "achieved_bytes_per_s": 1e9}}

    def close(self):
        pass

    kill = close


class CtrlCAfterOom(Progress):
    """Ctrl-C as soon as an OOM is on disk (the runner calls ``finished`` after the write)."""

    def finished(self, rec, point):
        super().finished(rec, point)
        if rec.status == "oom":
            raise KeyboardInterrupt


# One line of inference points (B 1..4) and a training point on another line.
OOM_LINE = torch_infer_grid([1, 2, 3, 4]) + """
[[grid]]
framework = ["torch"]
workload = ["train"]
preset = ["tiny"]
catalog_size = [500]
seq_len = [8]
batch_size = [8]
precision = ["fp32"]
"""
RUN_ENV = {"machine_id": "test-machine", "ram_bytes": 24 << 30, "gpus": []}


@pytest.mark.parametrize("skip", [True, False], ids=["skip_after_oom", "no-skip"])
def test_resume_rebuilds_the_skip_after_oom_state_from_the_file(tmp_path, monkeypatch, skip):
    """The first part records B=1 ok and B=2 oom, then is interrupted (Ctrl-C). The resumed
    part must skip B=3 and B=4 (same line, larger batch: dominated by the OOM in the file)
    without sending them to a worker, and still run the training point of another line.
    With runner.skip_after_oom = false nothing is skipped, before or after the resume."""
    from bench.launch import runner

    monkeypatch.setattr(runner, "Worker", FaultWorker)
    overrides = [] if skip else ["runner.skip_after_oom=false"]
    suite = load_suite(write_suite(tmp_path, OOM_LINE), overrides=overrides)
    assert suite.skip_after_oom is skip
    order = [(p.workload, p.batch_size) for p in suite.points]
    assert order.index(("infer", 2)) < order.index(("infer", 3)) < order.index(("infer", 4))

    monkeypatch.setenv("RECBENCH_FAULT", "infer tiny/sasrec C=500 T=8 B=2 =oom")
    FaultWorker.requested = []
    first = run_suite(suite, out_dir=tmp_path / "out", env=RUN_ENV, roofs={},
                      progress=CtrlCAfterOom(len(suite.points)), log=lambda s: None)
    assert first.interrupted
    part1 = {(Point.from_dict(r.point).workload, Point.from_dict(r.point).batch_size): r.status
             for r in R.load(first.path).records}
    assert part1 == {("infer", 1): "ok", ("infer", 2): "oom"}

    monkeypatch.delenv("RECBENCH_FAULT")  # the resumed part: no fault is injected any more
    FaultWorker.requested = []
    second = run_suite(suite, out_dir=tmp_path / "out", env=RUN_ENV, resume=first.path,
                       log=lambda s: None)
    assert not second.interrupted and second.path == first.path
    statuses = {(Point.from_dict(r.point).workload, Point.from_dict(r.point).batch_size):
                r.status for r in R.load(first.path).records}
    if skip:
        assert statuses == {("infer", 1): "ok", ("infer", 2): "oom",
                            ("infer", 3): "skipped-after-oom", ("infer", 4): "skipped-after-oom",
                            ("train", 8): "ok"}
        assert FaultWorker.requested == [8]  # the skipped points never reached a worker
    else:
        assert statuses == {("infer", 1): "ok", ("infer", 2): "oom", ("infer", 3): "ok",
                            ("infer", 4): "ok", ("train", 8): "ok"}
        assert sorted(FaultWorker.requested) == [3, 4, 8]
    assert second.counts == Counter(statuses.values())


def _results_file(out: Path, machine: str, run_id: str, suite: str) -> Path:
    header = R.RunHeader(run_id=run_id, suite=suite, started_at="2026-11-28T12:00:00Z",
                         env={"machine_id": machine}, roofs={})
    with R.ResultsWriter.create(out, machine, run_id, header) as w:
        return w.path


def test_a_bare_resume_picks_the_newest_readable_file_of_the_suite_and_machine(tmp_path):
    from bench.launch.runner import find_latest

    out = tmp_path / "out"
    older = _results_file(out, "m1", "20261101T000000Z-aaaa", "t")
    newest = _results_file(out, "m1", "20261102T000000Z-aaaa", "t")
    _results_file(out, "m1", "20261103T000000Z-aaaa", "other")  # newer, another suite
    _results_file(out, "m2", "20261104T000000Z-aaaa", "t")  # newer, another machine
    (out / "m1" / "20261105T000000Z-aaaa.jsonl").write_bytes(b"")  # newer, empty
    (out / "m1" / "20261106T000000Z-aaaa.jsonl").write_text("not json\n")  # newer, unreadable
    (out / "m1" / "20261107T000000Z-aaaa.jsonl").write_text(  # newer, a future schema
        '{"kind": "run", "schema_version": 999, "run_id": "x", "suite": "t"}\n')
    assert find_latest(out, "m1", "t") == newest
    assert find_latest(out, "m1", "other").name.startswith("20261103")
    assert find_latest(out, "m2", "t").name.startswith("20261104")
    newest.unlink()
    assert find_latest(out, "m1", "t") == older
    with pytest.raises(InputError, match="nothing to resume: no results file for suite 'x'"):
        find_latest(out, "m1", "x")
    with pytest.raises(InputError, match="nothing to resume"):
        find_latest(out, "m3", "t")
    # An id with characters a path cannot hold is looked up where the writer put it.
    odd = _results_file(out, "box/with space", "20261108T000000Z-aaaa", "t")
    assert odd.parent.name == "box-with-space" and find_latest(out, "box/with space", "t") == odd


# --- resuming a hand-edited file ----------------------------------------------------------

# (what, the edit to the record on line 3, what the message names)
RESUME_EDITS = {
    "batch_size": (lambda r: r["point"].__setitem__("batch_size", "big"),
                   "point.batch_size: expected a positive integer, got 'big'"),
    "step_ms": (lambda r: r["metrics"].__setitem__("step_ms", "fast"),
                "metrics.step_ms: expected an object of times in ms"),
    "negative samples": (lambda r: r.__setitem__("samples_ms", [-1.0, 1.0, 1.0]),
                         "samples_ms[0]: expected a step time in ms > 0, got -1.0"),
}


@pytest.mark.parametrize("bare", [False, True], ids=["resume-file", "bare-resume"])
@pytest.mark.parametrize("what", list(RESUME_EDITS))
def test_resuming_a_hand_edited_file_is_refused_before_any_point_runs(tmp_path, monkeypatch,
                                                                       capsys, what, bare):
    """`recbench run --resume` on a file with an edited record: exit 2 and one line naming
    the file, the line and the field, before any point is measured (not after the sweep, in
    the summary table), and the file as it was. A bare --resume picks the file (the newest of
    the suite) and says the same, instead of passing over it for an older run."""
    from bench.launch import runner

    monkeypatch.setattr(runner, "Worker", FaultWorker)
    suite = str(write_suite(tmp_path, torch_infer_grid([1, 2, 3, 4])))
    out = tmp_path / "out"
    argv = ["run", "--suite", suite, "--out", str(out), "--no-roofs"]
    FaultWorker.requested = []
    assert main(argv) == 0 and sorted(FaultWorker.requested) == [1, 2, 3, 4]
    (path,) = out.glob("*/*.jsonl")
    lines = path.read_text().splitlines()  # header, the 4 points, run-end
    rec = json.loads(lines[2])
    RESUME_EDITS[what][0](rec)
    lines[2] = json.dumps(rec)
    del lines[4]  # B=4 has no record now: a resume would run it
    path.write_text("\n".join(lines) + "\n")
    before = path.read_bytes()
    capsys.readouterr()

    FaultWorker.requested = []
    assert main([*argv, "--resume", *([] if bare else [str(path)])]) == 2
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert err.startswith(f"recbench run: error: {path}:3: {RESUME_EDITS[what][1]}"), err
    assert "restore the value or delete that line" in err
    assert len(err.splitlines()) == 1 and "Traceback" not in err and captured.out == ""
    assert FaultWorker.requested == []  # nothing measured
    assert path.read_bytes() == before


def test_the_summary_table_shows_a_missing_figure_as_a_dash():
    """An ok record may hold null figures (a device that cannot give them): the table at the
    end of a run shows "-" where a figure is null or absent."""
    from bench.launch.progress import describe_record, summary_table

    point = tiny_point().to_dict()
    bare = R.PointRecord.for_point(point, "ok", metrics={"step_ms": None,
                                                         "samples_per_s": None})
    some = R.PointRecord.for_point({**point, "batch_size": 8}, "ok",
                                   metrics={"step_ms": {"median": 2.5}})
    table = summary_table([bare, some])
    rows = [line for line in table.splitlines() if line.startswith("ok ")]
    assert len(rows) == 2
    assert rows[0].split()[-5:] == ["-", "-", "-", "-", "-"]
    assert rows[1].split()[-5:] == ["2.50", "-", "-", "-", "-"]
    assert describe_record(bare) == "no step time"
    assert describe_record(some) == "2.50 ms/step (median)"


def test_utilization_without_a_roof_is_null_never_zero():
    """No measured roof (--no-roofs, a roof that failed, int8 which has no GEMM roof) leaves
    every ratio null: 0 would read as a measured 0% utilisation. With a roof, the ratios are
    achieved / roof, worked by hand here."""
    from bench.launch.derived import add_utilization

    env = {"gpus": []}
    achieved = {"achieved_flops_per_s": 2e10, "achieved_bytes_per_s": 5e9}
    failed = {"gemm_flops_per_s": None, "mem_bytes_per_s": None, "reason": "RuntimeError: x"}
    cases = [({}, tiny_point()),  # --no-roofs
             ({"cpu/fp32": failed}, tiny_point()),  # measured, but neither roof could be
             ({"cpu/bf16": {"gemm_flops_per_s": 1e11, "mem_bytes_per_s": 1e10}},
              tiny_point()),  # a roof of another dtype only
             ({"cpu/fp32": {"gemm_flops_per_s": 1e11, "mem_bytes_per_s": 1e10}},
              tiny_point(precision="int8"))]  # no GEMM roof for int8
    for roofs, point in cases:
        m = {**achieved}
        add_utilization(m, point, roofs, env)
        for key in ("roof_flops_per_s", "utilization", "bandwidth_utilization",
                    "datasheet_flops_per_s", "utilization_datasheet"):
            assert key in m and m[key] is None, (roofs, point.precision, key, m[key])
        assert m["roof_devices"] == 1
    half = {"cpu/fp32": {"gemm_flops_per_s": 1e11, "mem_bytes_per_s": None}}  # bandwidth failed
    m = {**achieved}
    add_utilization(m, tiny_point(), half, env)
    assert m["roof_flops_per_s"] == 1e11 and m["utilization"] == pytest.approx(0.2)
    assert m["bandwidth_utilization"] is None
    m = {**achieved}
    add_utilization(m, tiny_point(), {"cpu/fp32": {"gemm_flops_per_s": 4e10,
                                                   "mem_bytes_per_s": 2e10}}, env)
    assert m["utilization"] == pytest.approx(0.5) and m["bandwidth_utilization"] == 0.25


def test_roofs_are_measured_with_every_framework_the_suite_runs_there(monkeypatch):
    """A device's roof is the best GEMM any of its frameworks reaches (XLA's fp32 GEMM ran ~2x
    torch's on a 2-core VM, and a torch-only roof read JAX points at 154% utilisation)."""
    from bench.launch import runner

    asked = []

    class RoofWorker:
        def __init__(self, framework, env=None, cap=None):
            self.framework = framework

        def request(self, msg, timeout_s):
            asked.append((self.framework, msg["devices"], msg["dtypes"], msg["frameworks"]))
            return {"roofs": {f"{msg['devices'][0]}/{d}": {"gemm_flops_per_s": 1.0}
                              for d in msg["dtypes"]}}

        def close(self):
            pass

        kill = close

    monkeypatch.setattr(runner, "Worker", RoofWorker)
    points = [tiny_point(framework=fw, precision=pr) for fw in ("torch", "jax")
              for pr in ("fp32", "bf16")] + [tiny_point(framework="jax", device="tpu")]
    roofs = runner.measure_roofs_in_worker(points, log=lambda s: None)
    assert asked == [("torch", ["cpu"], ["bf16", "fp32"], ["jax", "torch"]),
                     ("jax", ["tpu"], ["fp32"], ["jax"])]
    assert set(roofs) == {"cpu/bf16", "cpu/fp32", "tpu/fp32"}
