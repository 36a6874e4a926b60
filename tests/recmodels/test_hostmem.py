"""glibc's malloc kept for torch's CPU steps (recmodels/torch/hostmem.py)."""

from __future__ import annotations

import platform
import subprocess
import sys
import textwrap

import pytest

from recmodels.errors import InputError
from recmodels.torch import hostmem

GLIBC = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"


class FakeLibc:
    def __init__(self, answer: int = 1):
        self.calls: list[tuple[int, int]] = []
        self.answer = answer

    def mallopt(self, param: int, value: int) -> int:
        self.calls.append((param, value))
        return self.answer


def test_keep_turns_mmap_and_trimming_off():
    libc = FakeLibc()
    assert hostmem.configure(libc, "glibc", "keep") == "kept (glibc: mmap off, trim off)"
    assert libc.calls == [(hostmem.M_MMAP_MAX, 0), (hostmem.M_TRIM_THRESHOLD, 2**31 - 1)]


@pytest.mark.parametrize("name, wanted, says", [
    ("glibc", "system", "RECBENCH_HOST_MALLOC=system"),
    ("musl", "keep", "C library musl, not glibc"),
    ("", "keep", "C library unknown, not glibc"),
])
def test_nothing_is_changed_when_not_asked_or_not_glibc(name, wanted, says):
    libc = FakeLibc()
    outcome = hostmem.configure(libc, name, wanted)
    assert outcome.startswith("system (") and says in outcome and libc.calls == []


def test_a_refused_mallopt_is_reported_as_system():
    assert hostmem.configure(FakeLibc(answer=0), "glibc", "keep") == \
        "system (glibc refused mallopt)"


@pytest.mark.parametrize("value, expected", [(None, "keep"), ("", "keep"), ("keep", "keep"),
                                             (" SYSTEM ", "system")])
def test_choice(monkeypatch, value, expected):
    if value is None:
        monkeypatch.delenv(hostmem.ENV, raising=False)
    else:
        monkeypatch.setenv(hostmem.ENV, value)
    assert hostmem.choice() == expected


def test_a_bad_choice_names_the_values(monkeypatch):
    monkeypatch.setenv(hostmem.ENV, "jemalloc")
    with pytest.raises(InputError, match=r"RECBENCH_HOST_MALLOC='jemalloc': expected one of "
                                         r"keep, system"):
        hostmem.choice()


def test_recbench_run_refuses_a_bad_setting_before_any_point(tmp_path, capsys, monkeypatch):
    from bench.cli import main

    monkeypatch.setenv(hostmem.ENV, "yes")
    out = tmp_path / "out"
    assert main(["run", "--suite", "quick", "--out", str(out), "--no-roofs"]) == 2
    err = capsys.readouterr().err.strip()
    assert "RECBENCH_HOST_MALLOC='yes'" in err and len(err.splitlines()) == 1
    assert not out.exists()


# A child process: a torch CPU Engine built (its outcome printed), then 48 MiB (above glibc's
# largest dynamic mmap threshold, 32 MiB) malloc'd, touched, freed, malloc'd and touched again;
# prints the minor page faults of the second touch.
CHILD = textwrap.dedent("""
    import ctypes, resource
    from recmodels.config import preset
    from recmodels.torch.engine import Engine
    print(Engine(preset("tiny", catalog_size=50, seq_len=8)).host_malloc)
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


def _second_touch_faults(setting: str) -> tuple[str, int]:
    """(the Engine's host_malloc, the second touch's minor faults) in a child process."""
    import os

    env = {**os.environ, hostmem.ENV: setting}
    lines = subprocess.run([sys.executable, "-c", CHILD], env=env, capture_output=True,
                           text=True, check=True, timeout=120).stdout.split()
    return " ".join(lines[:-1]), int(lines[-1])


@pytest.mark.skipif(not GLIBC, reason="glibc's malloc only")
def test_a_torch_cpu_engine_reuses_freed_memory_without_page_faults():
    pages = (48 << 20) // 4096
    outcome, kept = _second_touch_faults("keep")
    assert outcome == "kept (glibc: mmap off, trim off)"
    assert kept < pages // 10  # the block came back from the heap, its pages already there
    outcome, system = _second_touch_faults("system")
    assert outcome == "system (RECBENCH_HOST_MALLOC=system)"
    assert system > pages // 2  # glibc's own: a fresh mmap, every page faulted in again
