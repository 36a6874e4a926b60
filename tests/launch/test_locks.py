"""The lock files of bench/launch/locks.py: none made for a results file that is not there,
and a results file's lock is its writer's alone (not world-writable)."""

import stat
from pathlib import Path

import pytest

from bench.launch import locks
from bench.launch.runner import run_suite
from bench.suites.suite import load_suite
from recmodels.errors import InputError
from tests.launch.test_runner import INFEASIBLE, SMALL_ENV, write_suite


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _infeasible_run(tmp_path: Path) -> Path:
    """A whole run with no worker (every point infeasible on SMALL_ENV); its results file."""
    suite = load_suite(write_suite(tmp_path, INFEASIBLE.format(batches="4096")))
    return run_suite(suite, out_dir=tmp_path / "out", env=SMALL_ENV, roofs={},
                     log=lambda s: None).path


def test_resuming_a_missing_results_file_makes_no_lock_file(tmp_path):
    missing = tmp_path / "none.jsonl"
    with pytest.raises(InputError, match=r"none\.jsonl: no such results file"), \
            locks.results_lock(missing):
        pass
    suite = load_suite(write_suite(tmp_path, INFEASIBLE.format(batches="4096")))
    with pytest.raises(InputError, match="no such results file"):
        run_suite(suite, out_dir=tmp_path / "out", env=SMALL_ENV, resume=missing,
                  log=lambda s: None)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.toml"]  # no none.jsonl.lock


def test_a_results_lock_file_is_not_world_writable(tmp_path):
    path = _infeasible_run(tmp_path)
    lock = locks.results_lock_path(path)
    # It stays after release (see the module's docstring: removing it is unsafe), 0o644.
    assert lock.is_file() and _mode(lock) == locks.RESULTS_LOCK_MODE == 0o644
    assert not Path(str(lock) + ".owner").exists()


def test_a_world_writable_lock_left_by_an_older_run_is_tightened(tmp_path):
    path = _infeasible_run(tmp_path)
    lock = locks.results_lock_path(path)
    lock.chmod(0o666)
    with locks.results_lock(path):
        assert _mode(lock) == 0o644


def test_the_machine_lock_stays_open_to_every_user(tmp_path, monkeypatch):
    monkeypatch.setenv(locks.MACHINE_LOCK_ENV, str(tmp_path))
    with locks.machine_lock("test"):
        pass
    assert _mode(tmp_path / "recbench-measure.lock") == 0o666
