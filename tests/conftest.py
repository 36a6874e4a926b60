"""Test-wide settings: the measuring commands' machine lock lives in a folder of this test
session, so a `make bench` running beside `make test` and the tests never lock each other out
(the lock's own tests point it elsewhere again)."""

import os
import tempfile

import pytest

os.environ["RECBENCH_LOCK_DIR"] = tempfile.mkdtemp(prefix="recbench-test-locks-")


@pytest.fixture
def busy_machine(monkeypatch):
    """The machine-wide measuring lock held by another process: taking it raises the
    one-line InputError a measuring command turns into exit 2."""
    import contextlib

    from bench.launch import locks
    from recmodels.errors import InputError

    @contextlib.contextmanager
    def busy(command=None):
        raise InputError("this machine is in use for measuring by pid 1")
        yield

    monkeypatch.setattr(locks, "machine_lock", busy)
