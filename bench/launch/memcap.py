"""A host-memory cap for worker processes: a memory cgroup made for the run.

On a shared machine a CPU point that outgrows RAM should be a recorded ``oom``, not the
kernel's OOM killer picking some process (perhaps someone else's). Where this process's own
memory cgroup is writable, the runner makes a child cgroup ``recbench-<pid>`` under it, sets
its limit, and starts each worker inside it (``wrap`` runs ``sh -c 'echo $$ > cgroup.procs;
exec ...'`` so the worker is charged from its first byte). When a worker dies of SIGKILL and
the cgroup's ``oom_kill`` counter moved, the point ran out of host memory.

Both cgroup versions (kernel docs, admin-guide/cgroup-v1/memory.rst and cgroup-v2.rst):
  v2  ``memory.max``, ``memory.swap.max`` = 0, ``memory.events`` "oom_kill N"
  v1  ``memory.limit_in_bytes``, ``memory.memsw.limit_in_bytes`` (where swap accounting is
      on), ``memory.oom_control`` "oom_kill N" (kernel >= 4.13)
Where neither is writable (no cgroup, read-only sysfs, a v2 parent without the memory
controller in ``cgroup.subtree_control``) there is no cap and ``reason`` says why.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from recmodels.config import human_bytes

CGROUP_ROOT = Path("/sys/fs/cgroup")
RESERVE_FRACTION = 0.10  # "auto" leaves this share of the available memory (at least 1 GiB)
RESERVE_MIN_BYTES = 1 << 30


def auto_cap_bytes(available_bytes: int) -> int:
    """The "auto" cap: what is available now, less a reserve for everything else."""
    return max(available_bytes - max(RESERVE_MIN_BYTES, int(available_bytes * RESERVE_FRACTION)),
               64 << 20)


def own_memory_cgroup(proc_cgroup: str) -> tuple[int, str] | None:
    """(version, path) of the memory cgroup in a ``/proc/self/cgroup`` text: a v1 line
    ``N:...memory...:/path`` wins over the v2 line ``0::/path``; None when neither exists."""
    v2 = None
    for line in proc_cgroup.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        if "memory" in parts[1].split(","):
            return 1, parts[2]
        if parts[0] == "0" and parts[1] == "":
            v2 = (2, parts[2])
    return v2


@dataclass
class MemoryCap:
    """A cgroup holding every worker of one run, with a memory limit."""

    path: Path
    version: int
    limit_bytes: int

    @property
    def mechanism(self) -> str:
        return ("cgroup v2 memory.max" if self.version == 2 else
                "cgroup v1 memory.limit_in_bytes")

    @classmethod
    def create(cls, limit_bytes: int, *, root: Path = CGROUP_ROOT,
               proc_cgroup: str | None = None) -> tuple[MemoryCap | None, str]:
        """Make the run's cgroup with ``limit_bytes``: (cap, "") or (None, why there is none).
        Never raises for an unwritable or missing cgroup: the run goes on without a cap."""
        if proc_cgroup is None:
            try:
                proc_cgroup = Path("/proc/self/cgroup").read_text()
            except OSError as e:
                return None, f"no /proc/self/cgroup ({e.strerror or e})"
        found = own_memory_cgroup(proc_cgroup)
        if found is None:
            return None, "this process is in no memory cgroup"
        version, rel = found
        base = (root / "memory" if version == 1 else root) / rel.lstrip("/")
        path = base / f"recbench-{os.getpid()}"
        limit_file = "memory.limit_in_bytes" if version == 1 else "memory.max"
        try:
            _remove_stale(base)
            path.mkdir(exist_ok=True)
            if not (path / limit_file).exists():
                with contextlib.suppress(OSError):
                    path.rmdir()
                return None, (f"{base} does not give its children a memory controller "
                              f"(no {limit_file})")
            (path / limit_file).write_text(str(limit_bytes))
            swap = "memory.memsw.limit_in_bytes" if version == 1 else "memory.swap.max"
            if (path / swap).exists():  # no swapping past the cap: an OOM, not a crawl
                with contextlib.suppress(OSError):
                    (path / swap).write_text(str(limit_bytes) if version == 1 else "0")
        except OSError as e:
            with contextlib.suppress(OSError):
                path.rmdir()
            return None, f"cannot make a memory cgroup under {base} ({e.strerror or e})"
        return cls(path, version, limit_bytes), ""

    def wrap(self, argv: list[str]) -> list[str]:
        """``argv`` started inside the cgroup: the shell moves itself in, then execs it."""
        procs = str(self.path / "cgroup.procs")
        return ["/bin/sh", "-c", 'echo $$ > "$0" && exec "$@"', procs, *argv]

    def oom_kills(self) -> int | None:
        """How many processes the kernel's OOM killer ended in this cgroup so far (None where
        the kernel does not say)."""
        name = "memory.oom_control" if self.version == 1 else "memory.events"
        try:
            text = (self.path / name).read_text()
        except OSError:
            return None
        m = re.search(r"^oom_kill (\d+)$", text, re.M)
        return int(m.group(1)) if m else None

    def describe(self) -> dict[str, object]:
        return {"bytes": self.limit_bytes, "mechanism": self.mechanism, "cgroup": str(self.path)}

    def oom_reason(self) -> str:
        return (f"host memory cap of {human_bytes(self.limit_bytes)} reached: the kernel's OOM "
                f"killer ended the worker ({self.mechanism}; set runner.mem_cap to change it)")

    def close(self) -> None:
        """Remove the cgroup (it must hold no process: call after every worker exited)."""
        with contextlib.suppress(OSError):
            self.path.rmdir()


def _remove_stale(base: Path) -> None:
    """Empty ``recbench-<pid>`` cgroups of runs that died without cleaning up."""
    for child in base.glob("recbench-*"):
        pid = child.name.removeprefix("recbench-")
        if pid.isdigit() and not Path(f"/proc/{pid}").exists():
            with contextlib.suppress(OSError):
                child.rmdir()  # fails (and stays) while a process is still inside


def make_memory_cap(setting: int | str, log: Callable[[str], None]
                    ) -> tuple[MemoryCap | None, dict[str, Any]]:
    """The run's cap from ``runner.mem_cap`` ("auto", "off" or bytes): the cap (None where
    there is none) and what the results header records of it."""
    if setting == "off":
        return None, {"bytes": None, "reason": "runner.mem_cap = off"}
    if setting == "auto":
        import psutil

        limit = auto_cap_bytes(psutil.virtual_memory().available)
    else:
        limit = int(setting)
    cap, why = MemoryCap.create(limit)
    if cap is None:
        log(f"no host-memory cap ({why}): a point that outgrows memory meets the kernel's OOM "
            "killer")
        return None, {"bytes": None, "reason": why}
    return cap, cap.describe()


def host_oom_killed(returncode: int | None, kills_before: int | None,
                    kills_now: int | None) -> bool:
    """Whether a dead worker was ended by the cap: SIGKILL, and the cgroup's OOM-kill count
    moved while its point ran."""
    return (returncode == -signal.SIGKILL and kills_before is not None
            and kills_now is not None and kills_now > kills_before)
