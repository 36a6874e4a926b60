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

The empty lock files stay after release, ``<file>.jsonl.lock`` beside each results file
included. The lock is flock(2) on the file's inode, not on its name: were a holder to remove
the name, a contender that had already opened the old inode could lock it while a third process
creates and locks a new file of that name, and both would write. filelock's UnixFileLock keeps
its file for that reason and has no option to remove it (filelock issue #574: releases that
removed it broke mutual exclusion, and that was reverted). Any user of the machine may take the
machine lock (mode 0o666); a results file's lock is its writer's, like the file (0o644).
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
MACHINE_LOCK_MODE = 0o666  # any user of the machine may take it after us
RESULTS_LOCK_MODE = 0o644  # only the results file's writer; others may read, as the file


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


def _tighten(path: Path, mode: int) -> None:
    """Give a lock file made by an older recbench (0o666) ``mode``: filelock sets ``mode`` only
    when it creates the file. Only the file's owner can."""
    with contextlib.suppress(OSError):
        st = path.stat()
        if st.st_uid == os.geteuid() and st.st_mode & 0o777 & ~mode:
            path.chmod(mode)


@contextlib.contextmanager
def exclusive(path: Path, what: str, command: str | None = None,
              mode: int = MACHINE_LOCK_MODE,
              fix: str = f"set {MACHINE_LOCK_ENV} to a writable directory") -> Iterator[None]:
    """Hold the lock at ``path`` for the ``with`` body; raise InUse at once if it is held.

    ``what`` starts the message ("this machine is in use for measuring", "results file X is
    in use"); ``command`` is what the holder is doing (default: this process's command line);
    ``mode`` the lock file's permissions; ``fix`` what to do when the lock cannot be made.
    """
    command = command or " ".join(["recbench", *sys.argv[1:]])
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        lock = FileLock(str(path), mode=mode)
        lock.acquire(timeout=0)
    except Timeout:
        raise InUse(f"{what} by {_owner_text(path)}; wait for it to end or stop it, then "
                    "run again") from None
    except OSError as e:
        raise InputError(f"cannot take the lock {path} ({e.strerror or e}); {fix}") from None
    owner = Path(str(path) + ".owner")
    try:
        _tighten(path, mode)
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


@contextlib.contextmanager
def results_lock(results_file: Path, command: str | None = None) -> Iterator[None]:
    """The lock of one results file (held by whoever appends to it); refused, before any lock
    file is made, when the results file is not there (a lock beside nothing would stay)."""
    if not results_file.is_file():
        raise InputError(f"{results_file}: no such results file; pass one a run wrote")
    with exclusive(results_lock_path(results_file), f"results file {results_file} is in use",
                   command, mode=RESULTS_LOCK_MODE,
                   fix="resume it as the user who wrote it, where that user can write"):
        yield
