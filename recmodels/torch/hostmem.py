"""glibc's malloc set to keep freed memory, for torch's steps on the CPU.

torch's CPU tensors come from malloc. glibc serves a block above its mmap threshold (128 KiB,
raised as blocks are freed, to at most 32 MiB) with fresh pages from mmap and hands them back
on free, and trims the heap's top when enough of it is free. Either way a train step's
activations and gradients (MBs each) land on pages the kernel must fault in and zero again at
every step: on this project's 2-core AMD EPYC that was ~13% of small's train step at B=64
(measured 271 -> 235 ms with the setting below, the same products; 269 -> 466 ms when only the
trim threshold is fixed, which also freezes the mmap threshold at 128 KiB).

So a torch Engine on the CPU sets, once per process, M_MMAP_MAX = 0 (no block from mmap)
and M_TRIM_THRESHOLD = 2^31 - 1 (never trim): freed blocks stay in the heap and the next step
reuses them, what tcmalloc and jemalloc do (PyTorch's CPU performance guide recommends
preloading either). The cost: the process keeps its heap's high-water mark (RSS does not fall
after a peak); the suites run each point in a process of its own, so a point's memory figures
are its own. JAX is left alone (XLA reuses its own buffers: no difference was measured).

RECBENCH_HOST_MALLOC=system leaves glibc as it is; it is recorded in each results file's env.
On a C library other than glibc (macOS, musl) nothing is changed.
"""

from __future__ import annotations

import ctypes
import os
import platform
from typing import Any

from recmodels.errors import InputError

ENV = "RECBENCH_HOST_MALLOC"
CHOICES = ("keep", "system")
# mallopt(3) parameter numbers (glibc's malloc.h)
M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4
NEVER_TRIM = 2**31 - 1  # the largest int mallopt takes

_applied: str | None = None  # the outcome, once this process has decided


def choice() -> str:
    """RECBENCH_HOST_MALLOC, "keep" when unset. Raises InputError on another value."""
    value = os.environ.get(ENV, "keep").strip().lower() or "keep"
    if value not in CHOICES:
        raise InputError(f"{ENV}={value!r}: expected one of {', '.join(CHOICES)} (keep: freed "
                         f"memory is reused by the next step; system: glibc's own behaviour)")
    return value


def configure(libc: Any, libc_name: str, wanted: str) -> str:
    """Apply `wanted` through `libc` (anything with mallopt(int, int) -> int) -> the outcome in
    words, for logs and tests: "kept (glibc: mmap off, trim off)", or "system (...)" saying
    why nothing changed."""
    if wanted == "system":
        return f"system ({ENV}=system)"
    if libc_name != "glibc":
        return f"system (C library {libc_name or 'unknown'}, not glibc)"
    if libc.mallopt(M_MMAP_MAX, 0) != 1 or libc.mallopt(M_TRIM_THRESHOLD, NEVER_TRIM) != 1:
        return "system (glibc refused mallopt)"
    return "kept (glibc: mmap off, trim off)"


def keep_freed_memory() -> str:
    """Set this process's malloc as the module docstring says, once (later calls return the
    first outcome) -> the outcome in words (see configure). Raises InputError on a bad
    RECBENCH_HOST_MALLOC."""
    global _applied
    if _applied is None:
        wanted = choice()
        name = platform.libc_ver()[0] if platform.system() == "Linux" else platform.system()
        libc = ctypes.CDLL(None) if name == "glibc" and wanted == "keep" else None
        _applied = configure(libc, name, wanted)
    return _applied
