"""Machine identity from ISA features (fake cpuinfo) and the run-condition readings and rules
(planted readings; never an assumption that this shared machine is idle)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from bench.machine import conditions as C
from bench.machine.envinfo import (
    fingerprint,
    fingerprint_key,
    format_env,
    isa_features,
    machine_id,
)

GiB = 2**30
BASE_FLAGS = "fpu sse sse2 ssse3 sse4_1 sse4_2 avx fma f16c hypervisor"


def cpuinfo_text(flags: str, n: int = 2, model: str = "AMD EPYC 9B14") -> str:
    return "".join(f"processor\t: {i}\nmodel name\t: {model}\nphysical id\t: 0\n"
                   f"core id\t\t: {i}\nflags\t\t: {flags}\n\n" for i in range(n))


def env_on(tmp_path: Path, text: str, **versions) -> dict:
    path = tmp_path / f"cpuinfo-{abs(hash(text))}"
    path.write_text(text)
    env = fingerprint(nvml=False, torch_cuda=False, jax_devices=False, cpuinfo_path=path,
                      ram=24 * GiB, hostname="h")
    if versions:
        env["versions"] = {**env["versions"], **versions}
        env["machine_id"] = machine_id(env)
    return env


def test_avx2_and_avx512_bf16_vms_of_one_cpu_family_are_different_machines(tmp_path):
    avx2 = env_on(tmp_path, cpuinfo_text(BASE_FLAGS + " avx2"))
    bf16 = env_on(tmp_path, cpuinfo_text(BASE_FLAGS + " avx2 avx512f avx512bw avx512vl "
                                         "avx512_bf16 avx512_vnni"))
    assert avx2["isa"] == ["avx", "avx2", "f16c", "fma", "sse4_2"]
    assert {"avx512f", "avx512_bf16", "avx512_vnni"} <= set(bf16["isa"])
    assert avx2["cpu"] == bf16["cpu"] and avx2["cores"] == bf16["cores"]
    assert avx2["machine_id"] != bf16["machine_id"]
    assert avx2["machine_id"].split("-")[:-1] == bf16["machine_id"].split("-")[:-1]  # same slug
    assert fingerprint_key(avx2) != fingerprint_key(bf16)
    assert "avx512_bf16" in format_env(bf16)
    again = env_on(tmp_path, cpuinfo_text(BASE_FLAGS + " avx2 some_new_kernel_flag"))
    assert again["machine_id"] == avx2["machine_id"]  # flags outside ISA_FEATURES don't count


def test_amx_arm_mixed_and_unknown_isa(tmp_path):
    amx = tmp_path / "amx"
    amx.write_text(cpuinfo_text(BASE_FLAGS + " avx2 avx512f amx_tile amx_bf16 amx_int8"))
    assert {"amx_tile", "amx_bf16", "amx_int8"} <= set(isa_features(amx))
    arm = tmp_path / "arm"
    arm.write_text("processor\t: 0\nFeatures\t: fp asimd evtstrm sve sve2 bf16 i8mm\n\n")
    assert isa_features(arm) == ["asimd", "bf16", "i8mm", "sve", "sve2"]
    mixed = tmp_path / "mixed"  # a feature counts only when every CPU has it
    mixed.write_text(cpuinfo_text("avx2 avx512f", 1) + "processor\t: 1\nflags\t: avx2\n\n")
    assert isa_features(mixed) == ["avx2"]
    assert isa_features(tmp_path / "missing") is None  # other OS: unknown, not a guess


def test_framework_versions_change_the_machine_id(tmp_path):
    text = cpuinfo_text(BASE_FLAGS)
    a = env_on(tmp_path, text, torch="2.13.0", jax="0.7.0", jaxlib="0.7.0")
    b = env_on(tmp_path, text, torch="2.14.0", jax="0.7.0", jaxlib="0.7.0")
    c = env_on(tmp_path, text, torch="2.13.0", jax="0.7.0", jaxlib="0.7.1")
    assert len({a["machine_id"], b["machine_id"], c["machine_id"]}) == 3
    assert len({fingerprint_key(a), fingerprint_key(b), fingerprint_key(c)}) == 3


def test_steal_from_planted_proc_stat(tmp_path):
    def stat(user, idle, steal):
        p = tmp_path / f"stat-{user}-{idle}-{steal}"
        p.write_text(f"cpu  {user} 0 0 {idle} 0 0 0 {steal} 0 0\ncpu0 1 2 3 4 5 6 7 8\n")
        return C.cpu_times(p)

    before, after = stat(100, 100, 0), stat(160, 120, 20)
    assert C.steal_fraction(before, after) == pytest.approx(0.2)
    assert C.steal_fraction(before, before) is None
    assert C.cpu_times(tmp_path / "absent") is None and C.steal_fraction(None, after) is None


def test_busiest_other_processes_from_planted_snapshots():
    before = {1: ("python", 10.0), 2: ("sshd", 5.0), 3: ("gone", 1.0)}
    after = {1: ("python", 11.9), 2: ("sshd", 5.001), 4: ("new", 0.4)}  # 4 started inside
    total, top = C.busiest(before, after, wall_s=2.0)
    assert total == pytest.approx(0.95 + 0.0005 + 0.2, abs=1e-3)
    assert top == [{"name": "python", "cpu_cores": 0.95}, {"name": "new", "cpu_cores": 0.2}]
    assert C.busiest(None, after, 2.0) == (None, [])
    # Kernel threads are shown (bracketed, as ps names them) but not counted.
    after_k = {**after, 9: ("[kworker/u8:0-flush-254:0]", 1.6)}
    total_k, top_k = C.busiest({**before, 9: ("[kworker/u8:0-flush-254:0]", 0.0)}, after_k, 2.0)
    assert total_k == total
    assert top_k[1] == {"name": "[kworker/u8:0-flush-254:0]", "cpu_cores": 0.8}


def test_process_snapshot_holds_names_and_never_command_lines():
    snap = C.process_times(exclude=C.own_pids())
    assert snap is not None and all(isinstance(n, str) and isinstance(t, float)
                                    and isinstance(started, float)
                                    for n, t, started in snap.values())
    assert os.getpid() not in snap
    cond = C.sample_conditions(window_s=0.05)
    assert set(cond) == {"at", "load_avg", "steal", "others_cpu_cores", "busiest", "governors"}
    assert all(set(p) == {"name", "cpu_cores"} for p in cond["busiest"])


def test_governors_from_a_fake_sysfs(tmp_path):
    for i, gov in enumerate(["performance", "performance", "powersave"]):
        d = tmp_path / f"cpu{i}" / "cpufreq"
        d.mkdir(parents=True)
        (d / "scaling_governor").write_text(gov + "\n")
    assert C.governors(tmp_path) == {"performance": 2, "powersave": 1}
    assert C.governors(tmp_path / "none") is None


@pytest.mark.parametrize(("cv", "window", "expect"), [
    (0.05, {"others_cpu_cores": 0.1, "steal": 0.0}, None),
    (None, None, None),  # fewer than 2 samples and no window: nothing to say
    (0.35, None, "CV 35% > 20%"),
    (0.05, {"others_cpu_cores": 1.02, "busiest": [{"name": "python", "cpu_cores": 0.99}]},
     "other processes used 1.02 cores during the point (>= 0.5): python 0.99"),
    (0.05, {"others_cpu_cores": 0.0, "steal": 0.25}, "CPU steal 25%"),
    (0.20, {"others_cpu_cores": 0.49, "steal": 0.099}, None),  # at the limits: stable
])
def test_unstable_rule_on_planted_spread_and_conditions(cv, window, expect):
    why = C.unstable_reason(cv, window)
    assert (why is None) if expect is None else (expect in why)


def test_both_reasons_are_given():
    why = C.unstable_reason(0.5, {"others_cpu_cores": 2.0, "busiest": []})
    assert "CV 50%" in why and "2.00 cores" in why


def test_roof_drift_beyond_ten_percent_is_flagged():
    start = {"cpu/fp32": {"gemm_flops_per_s": 100e9, "mem_bytes_per_s": 30e9},
             "cpu/bf16": {"gemm_flops_per_s": 400e9, "mem_bytes_per_s": None}}
    end = {"cpu/fp32": {"gemm_flops_per_s": 85e9, "mem_bytes_per_s": 31e9},
           "cpu/bf16": {"gemm_flops_per_s": 410e9}}
    drift, flagged = C.roof_drift(start, end)
    assert drift["cpu/fp32"]["gemm_flops_per_s"] == pytest.approx(-0.15)
    assert drift["cpu/bf16"] == {"gemm_flops_per_s": pytest.approx(0.025)}
    assert flagged == ["cpu/fp32 GEMM -15% since the run started (> 10%)"]
    assert C.roof_drift(start, {}) == ({}, [])


def test_a_renamed_process_counts_only_its_cpu_in_the_window():
    """A kworker's name follows its work: matched by pid and start time, a rename is the
    same process (its lifetime CPU is not charged to a 0.5 s window); a reused pid is not."""
    from bench.machine.conditions import busiest

    before = {10: ("[kworker/1:1-events]", 5.00, 100.0), 11: ("python", 1.0, 100.0)}
    after = {10: ("[kworker/1:1-mm_percpu_wq]", 5.01, 100.0), 11: ("python", 1.25, 200.0)}
    total, top = busiest(before, after, 0.5)
    cores = {t["name"]: t["cpu_cores"] for t in top}
    assert cores["[kworker/1:1-mm_percpu_wq]"] == pytest.approx(0.02)
    assert cores["python"] == pytest.approx(2.5)  # a new process behind a reused pid: all of it
    assert total == pytest.approx(2.5)  # kernel threads are listed, not counted
