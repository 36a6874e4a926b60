"""What the CPU is: its model string, its cores, and the ISA features that change a
benchmark's speed (AVX2, AVX-512, BF16, AMX, ARM SVE ...), read from ``/proc/cpuinfo``.

Split out of ``envinfo`` (which re-exports these names); every function takes the cpuinfo
path, so tests run on fake text.
"""

from __future__ import annotations

import os
import platform
import re
from pathlib import Path

# The flags that change what a CPU can do fast, in /proc/cpuinfo spelling (x86 "flags", ARM
# "Features"). Others (virtualisation, security mitigations, ...) are left out so that a
# kernel update that adds a flag does not rename the machine.
ISA_FEATURES = (
    # x86
    "sse4_2", "avx", "avx2", "fma", "f16c", "avx_vnni", "avx512f", "avx512dq", "avx512cd",
    "avx512bw", "avx512vl", "avx512_vnni", "avx512_bf16", "avx512_fp16", "avx512ifma",
    "avx512vbmi", "amx_tile", "amx_bf16", "amx_int8", "amx_fp16",
    # ARM (aarch64)
    "asimd", "asimdhp", "asimddp", "sve", "sve2", "bf16", "i8mm", "sme",
)


def _read_cpuinfo(path: str | os.PathLike[str]) -> list[dict[str, str]]:
    """/proc/cpuinfo as one dict per logical processor; [] if unreadable."""
    try:
        text = Path(path).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return []
    blocks: list[dict[str, str]] = []
    for chunk in re.split(r"\n\s*\n", text):
        entry = {}
        for line in chunk.splitlines():
            key, sep, value = line.partition(":")
            if sep:
                entry[key.strip().lower()] = value.strip()
        if "processor" in entry:
            blocks.append(entry)
    return blocks


def isa_features(cpuinfo_path: str | os.PathLike[str] = "/proc/cpuinfo") -> list[str] | None:
    """The :data:`ISA_FEATURES` every logical CPU has, sorted; None where unknown.

    Read from the ``flags`` (x86) or ``Features`` (ARM) lines of ``/proc/cpuinfo``; a feature
    counts only when every processor lists it (a heterogeneous VM runs at the weakest).
    Other operating systems have no cheap equivalent here: None (unknown), never a guess.
    """
    sets = []
    for entry in _read_cpuinfo(cpuinfo_path):
        flags = entry.get("flags") or entry.get("features")
        if flags is not None:
            sets.append(set(flags.split()))
    if not sets:
        return None
    common = set.intersection(*sets)
    return sorted(f for f in ISA_FEATURES if f in common)


def cpu_model(cpuinfo_path: str | os.PathLike[str] = "/proc/cpuinfo") -> str:
    """The CPU's model string (``AMD EPYC 7B13 64-Core Processor``), or the platform's guess."""
    for entry in _read_cpuinfo(cpuinfo_path):
        for key in ("model name", "hardware", "cpu model"):  # x86, some ARM, others
            if entry.get(key):
                return re.sub(r"\s+", " ", entry[key])
    return platform.processor() or platform.machine() or "unknown"


def core_counts(cpuinfo_path: str | os.PathLike[str] = "/proc/cpuinfo") -> dict[str, int | None]:
    """``physical`` and ``logical`` cores of the machine, ``usable`` by this process (affinity)."""
    entries = _read_cpuinfo(cpuinfo_path)
    logical: int | None = len(entries) or None
    physical: int | None = None
    pairs = {(e.get("physical id"), e.get("core id")) for e in entries if "core id" in e}
    if pairs:
        physical = len(pairs)
    if logical is None:
        logical = os.cpu_count()
    if physical is None:
        try:
            import psutil

            physical = psutil.cpu_count(logical=False)
        except Exception:  # psutil missing or unsupported platform
            physical = None
    try:
        usable: int | None = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not on Linux
        usable = os.cpu_count()
    return {"physical": physical, "logical": logical, "usable": usable}
