"""Exclusive locks for measuring commands: one per machine, one per results file.

Two benchmarks on one machine measure each other (two resumed runs of one file read 443 and
490 ms a step where one alone reads 272 ms), and two writers of one results file record the
same point twice. ``run``, ``gate``, ``serve`` and ``env`` (while it measures roofs) hold the
machine lock for as long as they measure, and a writer holds its results file's lock; a second
command exits 2 naming the holder: ``... in use for measuring by pid N (recbench run --suite
quick) since ...``.

The locks are ``filelock.FileLock`` (flock(2) on Unix): the kernel drops a lock when its
holder dies, so the lock of a killed run is simply taken over. Who holds a lock is written to
a sidecar ``<lock>.owner`` (JSON), because the lock file itself may be truncated by a
contender's open.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from filelock import FileLock, Timeout

from recmodels.errors import InputError

MACHINE_LOCK_ENV = "RECBENCH_LOCK_DIR"  # where the machine lock lives (tests set it)


class InUse(InputError):
    """Another live process holds the lock (one line: who, since when, what to do)."""


def machine_lock_path() -> Path:
    """The machine-wide lock: in ``$RECBENCH_LOCK_DIR``, else ``/tmp`` itself (not
    ``$TMPDIR``: two jobs with their own temp directories must still meet one lock), so every
    checkout, virtualenv and user of the machine meets the same one."""
    default = "/tmp" if os.name == "posix" and Path("/tmp").is_dir() else tempfile.gettempdir()
    return Path(os.environ.get(MACHINE_LOCK_ENV) or default) / "recbench-measure.lock"


def results_lock_path(results_file: Path) -> Path:
    """``<file>.jsonl.lock`` beside the results file (readers glob ``*.jsonl`` only)."""
    return results_file.with_name(results_file.name + ".lock")


def _owner_text(path: Path) -> str:
    try:
        owner = json.loads(Path(str(path) + ".owner").read_text(encoding="utf-8"))
        since = time.strftime("%H:%M:%S", time.localtime(owner["since"]))
        return f"pid {owner['pid']} ({owner['command']}) since {since}"
    except (OSError, ValueError, KeyError, TypeError):
        return "another process"


@contextlib.contextmanager
def exclusive(path: Path, what: str, command: str | None = None) -> Iterator[None]:
    """Hold the lock at ``path`` for the ``with`` body; raise InUse at once if it is held.

    ``what`` starts the message ("this machine is in use for measuring", "results file X is
    in use"); ``command`` is what the holder is doing (default: this process's command line).
    """
    command = command or " ".join(["recbench", *sys.argv[1:]])
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        lock = FileLock(str(path), mode=0o666)  # any user of the machine may take it after us
        lock.acquire(timeout=0)
    except Timeout:
        raise InUse(f"{what} by {_owner_text(path)}; wait for it to end or stop it, then "
                    "run again") from None
    except OSError as e:
        raise InputError(f"cannot take the lock {path} ({e.strerror or e}); set "
                         f"{MACHINE_LOCK_ENV} to a writable directory") from None
    owner = Path(str(path) + ".owner")
    try:
        with contextlib.suppress(OSError):
            owner.write_text(json.dumps({"pid": os.getpid(), "command": command,
                                         "since": time.time()}), encoding="utf-8")
        yield
    finally:
        with contextlib.suppress(OSError):
            owner.unlink()
        lock.release()


def machine_lock(command: str | None = None) -> contextlib.AbstractContextManager[None]:
    """The machine-wide lock of measuring commands."""
    return exclusive(machine_lock_path(), "this machine is in use for measuring", command)


def results_lock(results_file: Path, command: str | None = None
                 ) -> contextlib.AbstractContextManager[None]:
    """The lock of one results file (held by whoever appends to it)."""
    return exclusive(results_lock_path(results_file), f"results file {results_file} is in use",
                     command)
