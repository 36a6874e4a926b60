"""Per-point memory: a fresh worker per point, the framework's baseline apart, and a
host-memory cap (a cgroup) that makes a CPU OOM a recorded result."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench import results as R
from bench.launch import memcap
from bench.launch.memcap import MemoryCap, host_oom_killed, own_memory_cgroup
from bench.launch.runner import run_suite
from bench.point import Point
from bench.suites.suite import load_suite, parse_cap
from recmodels.errors import InputError

ENV = {"machine_id": "test-machine", "ram_bytes": 24 << 30, "gpus": []}
MiB = 1 << 20

# P: the point whose memory must not depend on what ran before it. Q: a bigger point that
# runs first in the same (framework, device) group (its line sorts first: block "hstu").
P_GRID = """
[[grid]]
framework = ["torch"]
workload = ["train"]
preset = ["tiny"]
catalog_size = [20000]
seq_len = [50]
batch_size = [16]
precision = ["fp32"]
"""
Q_GRID = """
[[grid]]
framework = ["torch"]
workload = ["train"]
preset = ["small"]
block = ["hstu"]
catalog_size = [20000]
seq_len = [50]
batch_size = [64]
precision = ["fp32"]
"""


def suite_file(tmp_path: Path, name: str, grids: str, runner: str = "") -> Path:
    path = tmp_path / f"{name}.toml"
    path.write_text(f'[suite]\nname = "{name}"\n[measure]\nwarmup_iters = 1\nmin_time_s = 0.05\n'
                    f"min_iters = 3\nmax_iters = 5\nmax_time_s = 1.0\ntimeout_s = 120\n"
                    f"[runner]\n{runner}\n{grids}")
    return path


def run(tmp_path: Path, name: str, grids: str, runner: str = "") -> dict[str, R.PointRecord]:
    suite = load_suite(suite_file(tmp_path, name, grids, runner))
    outcome = run_suite(suite, out_dir=tmp_path / name, env=ENV, roofs={}, log=lambda s: None)
    return {Point.from_dict(r.point).preset: r for r in R.load(outcome.path).records}


def test_a_point_reads_the_same_memory_before_and_after_a_bigger_one(tmp_path):
    alone = run(tmp_path, "alone", P_GRID, 'mem_cap = "off"')["tiny"]
    after = run(tmp_path, "after", Q_GRID + P_GRID, 'mem_cap = "off"')
    shared = run(tmp_path, "shared", Q_GRID + P_GRID, 'isolation = "group"\nmem_cap = "off"')
    a, b = alone.metrics, after["tiny"].metrics
    s = shared["tiny"].metrics
    print(f"tiny alone {a['peak_host_rss_bytes'] / MiB:.0f} MiB, after small in its own "
          f"process {b['peak_host_rss_bytes'] / MiB:.0f} MiB, after small in a shared process "
          f"{s['peak_host_rss_bytes'] / MiB:.0f} MiB; baseline "
          f"{a['host_rss_baseline_bytes'] / MiB:.0f} MiB")
    assert after["small"].status == "ok" and after["tiny"].status == "ok"
    assert b["peak_host_rss_bytes"] == pytest.approx(a["peak_host_rss_bytes"], rel=0.10)
    assert a["host_mem_scope"] == b["host_mem_scope"] == "fresh-process"
    # the framework's own baseline is reported apart, below the point's peak
    assert 50 * MiB < a["host_rss_baseline_bytes"] < a["peak_host_rss_bytes"]
    # the reason isolation exists: one shared worker carries the big point's heap over
    assert s["host_mem_scope"] == "shared-process"
    assert s["peak_host_rss_bytes"] > 1.10 * a["peak_host_rss_bytes"]


def test_runner_settings_parse_and_bad_values_are_one_line(tmp_path):
    assert parse_cap("8GiB") == 8 << 30 and parse_cap("512m") == 512 * MiB
    assert parse_cap(" auto ") == "auto" and parse_cap("off") == "off"
    assert parse_cap(1 << 30) == 1 << 30
    suite = load_suite(suite_file(tmp_path, "s", P_GRID), overrides=["runner.mem_cap=1.5GiB"])
    assert suite.mem_cap == int(1.5 * (1 << 30)) and suite.isolation == "point"
    for runner, message in [('mem_cap = "lots"', "not a size"),
                            ("mem_cap = 1000", "below 512 MiB"),
                            ('isolation = "thread"', "expected one of point, group")]:
        with pytest.raises(InputError, match=message) as e:
            load_suite(suite_file(tmp_path, "bad", P_GRID, runner))
        assert "\n" not in str(e.value) and "runner." in str(e.value)


def test_the_memory_cgroup_is_found_in_either_version():
    v1 = "9:name=systemd:/\n4:memory:/process_api/abc\n0::/\n"
    assert own_memory_cgroup(v1) == (1, "/process_api/abc")
    assert own_memory_cgroup("5:cpu,memory:/x\n") == (1, "/x")
    assert own_memory_cgroup("0::/user.slice/s-1.scope\n") == (2, "/user.slice/s-1.scope")
    assert own_memory_cgroup("3:cpu:/\n") is None


def fake_cgroup(tmp_path: Path, version: int) -> tuple[Path, str, Path]:
    """A cgroup tree as the kernel would show it after our mkdir (files made up front)."""
    rel = "/parent"
    base = tmp_path / ("memory" if version == 1 else "") / "parent"
    child = base / f"recbench-{os.getpid()}"
    child.mkdir(parents=True)
    names = (["memory.limit_in_bytes", "memory.memsw.limit_in_bytes", "memory.oom_control"]
             if version == 1 else ["memory.max", "memory.swap.max", "memory.events"])
    for name in [*names, "cgroup.procs"]:
        (child / name).write_text("")
    text = f"4:memory:{rel}\n" if version == 1 else f"0::{rel}\n"
    return base, text, child


@pytest.mark.parametrize("version", [1, 2])
def test_a_cap_writes_its_limit_and_starts_workers_inside(tmp_path, version):
    _base, text, child = fake_cgroup(tmp_path, version)
    cap, why = MemoryCap.create(300 * MiB, root=tmp_path, proc_cgroup=text)
    assert cap is not None, why
    limit, swap = (("memory.limit_in_bytes", "memory.memsw.limit_in_bytes") if version == 1
                   else ("memory.max", "memory.swap.max"))
    assert (child / limit).read_text() == str(300 * MiB)
    assert (child / swap).read_text() == (str(300 * MiB) if version == 1 else "0")
    # wrap: the started process writes its own pid into cgroup.procs, then execs the command
    out = subprocess.run(cap.wrap([sys.executable, "-c", "import os; print(os.getpid())"]),
                         capture_output=True, text=True, check=True)
    assert (child / "cgroup.procs").read_text().strip() == out.stdout.strip()
    events = "memory.oom_control" if version == 1 else "memory.events"
    (child / events).write_text("oom_kill_disable 0\noom_kill 3\n" if version == 1 else
                                "low 0\noom 4\noom_kill 3\n")
    assert cap.oom_kills() == 3
    assert "300 MiB" in cap.oom_reason()


def test_no_cap_where_the_cgroup_gives_no_memory_controller(tmp_path):
    (tmp_path / "parent").mkdir()  # a plain folder: mkdir works, no memory.max appears
    cap, why = MemoryCap.create(300 * MiB, root=tmp_path, proc_cgroup="0::/parent\n")
    assert cap is None and "memory controller" in why
    assert not list((tmp_path / "parent").iterdir())  # the empty child was removed
    cap, why = MemoryCap.create(300 * MiB, root=tmp_path / "absent", proc_cgroup="0::/x\n")
    assert cap is None and "cannot make" in why
    assert MemoryCap.create(1, proc_cgroup="1:cpu:/\n") == (None, "this process is in no "
                                                            "memory cgroup")


def test_only_a_sigkill_with_a_new_oom_kill_is_the_cap():
    assert host_oom_killed(-9, 0, 1)
    assert not host_oom_killed(-9, 1, 1)  # killed, but not by the cgroup's OOM killer
    assert not host_oom_killed(-11, 0, 1)  # a segfault stays a crash
    assert not host_oom_killed(-9, None, None)  # a kernel that does not say


def test_auto_cap_leaves_a_reserve():
    assert memcap.auto_cap_bytes(20 << 30) == 18 << 30
    assert memcap.auto_cap_bytes(4 << 30) == 3 << 30  # at least 1 GiB is left


def _real_cap_or_skip() -> None:
    cap, why = MemoryCap.create(256 * MiB)
    if cap is None:
        pytest.skip(f"no writable memory cgroup here: {why}")
    cap.close()


def test_a_point_past_the_host_cap_is_an_oom_record_and_the_sweep_goes_on(tmp_path):
    _real_cap_or_skip()
    recs = run(tmp_path, "capped", Q_GRID + P_GRID, 'mem_cap = "600MiB"')
    big, small = recs["small"], recs["tiny"]
    assert big.status == "oom", (big.status, big.reason)
    assert "host memory cap of 600 MiB" in big.reason and "cgroup" in big.reason
    assert small.status == "ok" and small.metrics["peak_host_rss_bytes"] < 600 * MiB
    header = R.load(next((tmp_path / "capped").glob("*/*.jsonl"))).header
    assert header.extra["mem_cap"]["bytes"] == 600 * MiB
    assert header.extra["isolation"] == "point"
    cgroup = Path(header.extra["mem_cap"]["cgroup"])
    assert not cgroup.exists()  # removed when the run ended


def test_a_cap_that_ends_the_worker_while_it_starts_is_an_oom_record(tmp_path, monkeypatch):
    """The kernel can end a worker at the cap while it imports its framework, before the
    runner has asked for any point: still an oom record with the cap's reason."""
    from bench.launch import runner
    from bench.launch.channel import WorkerDied

    class FakeCap(MemoryCap):
        kills = 0

        def oom_kills(self):
            return FakeCap.kills

        def close(self):
            pass

    class DiesAtStart:
        def __init__(self, framework, env=None, cap=None):
            FakeCap.kills += 1  # the cgroup's OOM killer ended it during the import
            raise WorkerDied(-9, "")

    cap = FakeCap(tmp_path, 1, 512 * MiB)
    monkeypatch.setattr(runner, "make_memory_cap", lambda setting, log: (cap, cap.describe()))
    monkeypatch.setattr(runner, "Worker", DiesAtStart)
    recs = run(tmp_path, "starved", P_GRID)
    assert recs["tiny"].status == "oom" and "host memory cap of 512 MiB" in recs["tiny"].reason
