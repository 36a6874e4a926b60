"""glibc's malloc kept for the CPU engines (recmodels/hostmem.py)."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import textwrap

import pytest

from recmodels import hostmem
from recmodels.errors import InputError

GLIBC = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"


class FakeLibc:
    def __init__(self, answer: int = 1):
        self.calls: list[tuple[int, int]] = []
        self.answer = answer

    def mallopt(self, param: int, value: int) -> int:
        self.calls.append((param, value))
        return self.answer


def test_one_arena_no_mmap_no_trim():
    libc = FakeLibc()
    assert hostmem.keep_host_memory(libc=libc, environ={}, platform="linux") is True
    assert libc.calls == [(-8, 1), (-4, 0), (-1, 2**31 - 1)]  # M_ARENA_MAX, M_MMAP_MAX, M_TRIM


@pytest.mark.parametrize("environ, plat", [
    ({"RECBENCH_KEEP_HOST_MEMORY": "0"}, "linux"),  # the opt-out
    ({"RECBENCH_KEEP_HOST_MEMORY": "false"}, "linux"),  # ... in any of its spellings
    ({"RECBENCH_KEEP_HOST_MEMORY": " 0"}, "linux"),
    ({"RECBENCH_KEEP_HOST_MEMORY": "OFF"}, "linux"),
    ({"RECBENCH_KEEP_HOST_MEMORY": "no"}, "linux"),
    ({"MALLOC_ARENA_MAX": "4"}, "linux"),  # the user's own malloc tuning stands
    ({"GLIBC_TUNABLES": "glibc.malloc.mmap_max=0"}, "linux"),
    ({}, "darwin"),
])
def test_left_alone(environ, plat):
    libc = FakeLibc()
    assert hostmem.keep_host_memory(libc=libc, environ=environ, platform=plat) is False
    assert libc.calls == []


@pytest.mark.parametrize("value", ["", "1", "true", " on ", "YES"])
def test_the_switch_on_or_unset_applies(value):
    libc = FakeLibc()
    environ = {"RECBENCH_KEEP_HOST_MEMORY": value}
    assert hostmem.keep_host_memory(libc=libc, environ=environ, platform="linux") is True
    assert len(libc.calls) == 3


@pytest.mark.parametrize("plat", ["linux", "darwin"])
def test_a_value_the_switch_does_not_take_is_an_input_error(plat):
    libc = FakeLibc()
    with pytest.raises(InputError, match=r"^RECBENCH_KEEP_HOST_MEMORY='banana' is not an on/off "
                                         r"value: set it to 0, false, off, no \(off\) or 1, "
                                         r"true, on, yes"):
        hostmem.keep_host_memory(libc=libc, environ={"RECBENCH_KEEP_HOST_MEMORY": "banana"},
                                 platform=plat)
    assert libc.calls == []


def test_a_refused_mallopt_says_so():
    assert hostmem.keep_host_memory(libc=FakeLibc(answer=0), environ={}, platform="linux") is False


# A child process: a framework's CPU Engine built, then 48 MiB (above glibc's largest dynamic
# mmap threshold, 32 MiB) malloc'd, touched, freed, malloc'd and touched again; prints the
# minor page faults of the second touch.
CHILD = textwrap.dedent("""
    import ctypes, resource, sys
    from recmodels.config import preset
    from recmodels.train import make_engine
    make_engine(sys.argv[1], preset("tiny", catalog_size=50, seq_len=8), device="cpu")
    libc = ctypes.CDLL(None)
    libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    n = 48 << 20
    def touch():
        p = libc.malloc(n)
        ctypes.memset(p, 1, n)
        return p
    libc.free(touch())
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    p = touch()
    print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    libc.free(p)
""")


def _second_touch_faults(framework: str, keep: str) -> int:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    env.pop("GLIBC_TUNABLES", None)
    env[hostmem.ENV] = keep
    out = subprocess.run([sys.executable, "-c", CHILD, framework], env=env,
                         capture_output=True, text=True, check=True, timeout=120).stdout
    return int(out.split()[-1])


@pytest.mark.skipif(not GLIBC, reason="glibc's malloc only")
@pytest.mark.parametrize("framework", ["torch", "jax"])
def test_a_cpu_engine_reuses_freed_memory_without_page_faults(framework):
    pages = (48 << 20) // 4096
    assert _second_touch_faults(framework, "1") < pages // 10  # from the heap, pages resident
    assert _second_touch_faults(framework, "0") > pages // 2  # glibc's own: a fresh mmap
