"""Host memory: glibc's malloc set to keep freed memory, for both frameworks' CPU engines.

A CPU train step allocates its buffers afresh every step: XLA:CPU mallocs a step's
temporaries in one block (tiny's train step: 87 MB, small's at B=64: 444 MB) from the thread
that runs it; torch mallocs each activation and gradient (MBs each at small's shape). glibc
serves a block above its mmap threshold (128 KiB, raised as blocks are freed, to at most
32 MiB) with a new mmap and unmaps it when freed, and trims the heap's top when enough of it is
free, so every step page-faults its buffers in and the kernel zeroes them. Measured on this
project's 2-core AMD EPYC VM: 21k faults and ~40% of JAX's tiny step; ~13% of torch's small
step at B=64 (271 -> 235 ms on 2 cores, the same products; fixing the trim threshold alone made
it 466 ms: glibc then freezes the mmap threshold at 128 KiB and maps even more).

keep_host_memory sets glibc's malloc, process-wide, to one arena (M_ARENA_MAX 1), no mmaps
(M_MMAP_MAX 0) and no trimming (M_TRIM_THRESHOLD 2^31-1): freed memory stays in the process for
its next allocation, what tcmalloc and jemalloc do (PyTorch's CPU performance guide suggests
preloading either). The cost: resident memory stays at its high-water mark; the suites run
each point in a process of its own, so a point's memory figures are its own.
"""

from __future__ import annotations

import ctypes
import os
import sys
from collections.abc import Mapping
from typing import Any

from recmodels.envvars import switch

ENV = "RECBENCH_KEEP_HOST_MEMORY"  # an on/off switch (recmodels.envvars): off leaves malloc alone
# glibc mallopt parameters (malloc.h), and the values set
M_TRIM_THRESHOLD, M_MMAP_MAX, M_ARENA_MAX = -1, -4, -8
SETTINGS = ((M_ARENA_MAX, 1), (M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, 2**31 - 1))


def _glibc() -> Any:
    """This process's C library when it is glibc, else None."""
    try:
        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version  # noqa: B018  (glibc, not musl)
    except (OSError, AttributeError):
        return None
    return libc


def keep_host_memory(*, libc: Any = None, environ: Mapping[str, str] | None = None,
                     platform: str | None = None) -> bool:
    """Set glibc's malloc to keep freed memory (the module docstring) -> whether it applied.

    The arena limit reaches only threads that have not allocated yet: call it before a
    process's first JAX computation (the JAX Engine does, on CPU, and so do the suites' JAX
    workers); the mmap and trim settings hold at once for every thread (the torch Engine
    calls it on CPU). Linux with glibc only; a no-op elsewhere, where RECBENCH_KEEP_HOST_MEMORY
    is off (0, false, off or no; recmodels.envvars.switch, which raises InputError for a value
    it does not take), or where the environment sets glibc's malloc tunables (MALLOC_*_ /
    GLIBC_TUNABLES: the user's choice stands). libc (anything with mallopt(int, int) -> int),
    environ and platform default to the process's own; tests pass fakes."""
    environ = os.environ if environ is None else environ
    if not switch(ENV, environ) or not (platform or sys.platform).startswith("linux"):
        return False
    if "GLIBC_TUNABLES" in environ or any(k.startswith("MALLOC_") for k in environ):
        return False
    libc = libc or _glibc()
    return libc is not None and all(libc.mallopt(p, v) == 1 for p, v in SETTINGS)
