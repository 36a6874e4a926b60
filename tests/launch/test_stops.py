"""Every way a run can stop: SIGTERM/SIGHUP like Ctrl-C, no orphan worker after any of them
(SIGKILL of the runner included), a second measuring command locked out, and a results file
that cannot be written any more."""

import json
import os
import resource
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from bench import results as R
from bench.cli import main
from bench.launch import locks
from bench.launch.runner import run_suite
from bench.point import Point
from bench.suites.suite import load_suite
from tests.launch.test_runner import torch_infer_grid, write_suite

ENV = {"machine_id": "test-machine", "ram_bytes": 24 << 30, "gpus": []}


def start_run(tmp_path: Path, fault: str = "B=2 =hang", extra: list[str] | None = None):
    """`recbench run` in a subprocess, held by a hanging second point; returns (proc, cmd,
    results file) once the first record is on disk."""
    suite_path = write_suite(tmp_path, torch_infer_grid([1, 2, 3]))
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "bench", "run", "--suite", str(suite_path), "--out", str(out),
           "--no-roofs", *(extra or [])]
    proc = subprocess.Popen(cmd, env={**os.environ, "RECBENCH_FAULT": fault},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline:
        files = list(out.glob("*/*.jsonl"))
        if files and len(files[0].read_text().splitlines()) >= 2:  # header + point 1
            return proc, cmd, files[0]
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.2)
    proc.kill()
    raise AssertionError("the first point never finished")


def workers_of(proc: subprocess.Popen) -> list[psutil.Process]:
    deadline = time.time() + 60
    while time.time() < deadline:  # the hanging point's worker has to start first
        found = [c for c in psutil.Process(proc.pid).children(recursive=True)
                 if "bench.launch.worker" in " ".join(c.cmdline())]
        if found:
            return found
        time.sleep(0.2)
    raise AssertionError("no worker process appeared")


def gone_within(procs: list[psutil.Process], seconds: float) -> bool:
    _, alive = psutil.wait_procs(procs, timeout=seconds)
    return not alive


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGTERM, 143), (signal.SIGHUP, 129)])
def test_sigterm_and_sighup_stop_like_ctrl_c_and_leave_no_worker(tmp_path, sig, code):
    proc, cmd, path = start_run(tmp_path)
    workers = workers_of(proc)
    time.sleep(0.5)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == code, err
    assert "Traceback" not in err
    assert "1 of 3 points recorded; continue with:" in err and "--resume" in err
    assert "ok" in err  # the summary table was printed
    assert gone_within(workers, 5), "a worker outlived the runner"
    rc = subprocess.run([*cmd, "--resume", str(path)], capture_output=True, text=True,
                        timeout=180)
    assert rc.returncode == 0, rc.stderr
    assert len(R.load(path).records) == 3


def test_a_killed_runner_takes_its_worker_with_it(tmp_path):
    proc, _, _ = start_run(tmp_path)
    workers = workers_of(proc)
    proc.kill()  # SIGKILL: no handler runs in the runner
    proc.communicate(timeout=30)
    assert gone_within(workers, 5), "the worker kept running with init as its parent"


# --- locks ------------------------------------------------------------------------------------

HOLD = """
import sys, time
from pathlib import Path
from bench.launch import locks
with locks.{fn}({arg}"recbench run --suite holder"):
    print("held", flush=True)
    time.sleep(120)
"""


def hold(fn: str, arg: str = "") -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLD.format(fn=fn, arg=arg)],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_second_measuring_command_is_refused_naming_the_holder(tmp_path, capsys):
    holder = hold("machine_lock")
    try:
        suite_path = write_suite(tmp_path, torch_infer_grid([1]))
        rc = main(["run", "--suite", str(suite_path), "--out", str(tmp_path / "o"),
                   "--no-roofs"])
        err = capsys.readouterr().err
        assert rc == 2
        assert f"in use for measuring by pid {holder.pid} (recbench run --suite holder)" in err
        assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
        assert not (tmp_path / "o").exists() or not list((tmp_path / "o").rglob("*.jsonl"))
        assert main(["gate", "--base", "HEAD", "--rounds", "2"]) == 2
        assert "in use for measuring by pid" in capsys.readouterr().err
    finally:
        holder.kill()
        holder.wait()
    # the holder died without releasing: its lock is simply taken over
    with locks.machine_lock("next"):
        owner = json.loads(Path(str(locks.machine_lock_path()) + ".owner").read_text())
        assert owner["pid"] == os.getpid() and owner["command"] == "next"


def test_two_writers_of_one_results_file_cannot_both_resume_it(tmp_path):
    suite = load_suite(write_suite(tmp_path, torch_infer_grid([1, 2])))
    first = run_suite(suite, out_dir=tmp_path / "out", env=ENV, roofs={}, log=lambda s: None)
    path = first.path
    holder = hold("results_lock", f"Path({str(path)!r}), ")
    try:
        with pytest.raises(locks.InUse, match=f"results file .* in use by pid {holder.pid}"):
            run_suite(suite, out_dir=tmp_path / "out", env=ENV, resume=path,
                      log=lambda s: None)
    finally:
        holder.kill()
        holder.wait()
    assert len(R.load(path).records) == 2  # untouched


# --- results that cannot be written -----------------------------------------------------------


def test_a_file_size_limit_mid_line_leaves_a_loadable_file(tmp_path):
    suite = load_suite(write_suite(tmp_path, torch_infer_grid([1])))
    header = R.RunHeader(run_id="r1", suite=suite.name, started_at=R.iso_utc(),
                         env=ENV, roofs={})
    writer = R.ResultsWriter.create(tmp_path, "m", "r1", header)
    point = suite.points[0]
    rec = R.PointRecord.for_point(point.to_dict(), "error", "x" * 5000, {}, [])
    writer.write(rec)
    size = writer.path.stat().st_size
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (size + 1000, hard))  # half of the next line
    try:
        with pytest.raises(R.ResultsWriteError) as e:
            writer.write(rec)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    assert "File too large" in str(e.value) and "1 point record safely recorded" in str(e.value)
    assert e.value.n_recorded == 1 and writer.closed
    assert writer.path.stat().st_size == size  # the partial line was cut off
    assert len(R.load(writer.path).records) == 1
    with R.ResultsWriter.open_append(writer.path) as again:
        again.write(rec)
    assert len(R.load(writer.path).records) == 2


def test_a_run_past_the_file_size_limit_is_one_line_and_its_resume_hint_completes_it(
        tmp_path):
    """The issue's case: `ulimit -f` hit while a record is written."""
    suite_path = write_suite(tmp_path, torch_infer_grid([1, 2, 3]), name="size limit")
    probe_out = tmp_path / "probe"
    probe = [sys.executable, "-m", "bench", "run", "--suite", str(suite_path), "--out",
             str(probe_out), "--no-roofs", "--set", "batch_size=1"]
    subprocess.run(probe, capture_output=True, check=True, timeout=180)
    (probe_file,) = probe_out.glob("*/*.jsonl")
    header, record = probe_file.read_bytes().splitlines(keepends=True)[:2]
    limit = len(header) + len(record) + len(record) // 2  # the second record cannot fit

    out = tmp_path / "res int ü"
    cmd = [sys.executable, "-m", "bench", "run", "--suite", str(suite_path), "--out", str(out),
           "--no-roofs"]

    def limit_file_size():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    rc = subprocess.run(cmd, capture_output=True, text=True, timeout=180,
                        preexec_fn=limit_file_size)
    errors = [s for s in rc.stderr.splitlines() if "error:" in s]
    assert rc.returncode == 2, rc.stderr
    assert len(errors) == 1 and "Traceback" not in rc.stderr
    assert "File too large" in errors[0] and "1 point record safely recorded" in errors[0]
    (path,) = out.glob("*/*.jsonl")
    assert len(R.load(path).records) == 1  # loadable: no partial line left
    pasted = shlex.split(errors[0].split("continue with: ", 1)[1])
    assert pasted[:2] == ["recbench", "run"]
    assert pasted[pasted.index("--resume") + 1] == str(path)
    again = subprocess.run([sys.executable, "-m", "bench", *pasted[1:]], capture_output=True,
                           text=True, timeout=180)
    assert again.returncode == 0, again.stderr
    assert sorted(Point.from_dict(r.point).batch_size for r in R.load(path).records) == [1, 2, 3]
