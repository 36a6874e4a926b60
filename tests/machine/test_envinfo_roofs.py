"""Environment fingerprint (on fake hardware) and machine roofs (measured here, datasheets)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from bench.machine import envinfo
from bench.machine import roofs as roofs_mod
from bench.machine.datasheet import (
    DATASHEET_PEAKS,
    datasheet_bandwidth,
    datasheet_for_env,
    datasheet_key,
    datasheet_peak,
)
from bench.machine.envinfo import fingerprint, fingerprint_key, format_env, git_info, machine_id
from bench.machine.roofs import measure_bandwidth, measure_gemm, measure_roofs
from recmodels.errors import InputError

GiB = 2**30

CPUINFO = "".join(
    f"processor\t: {i}\nvendor_id\t: GenuineIntel\n"
    f"model name\t: Intel(R) Xeon(R) Platinum 8481C CPU @ 2.70GHz\n"
    f"physical id\t: 0\ncore id\t\t: {i // 2}\ncpu cores\t: 2\n\n"
    for i in range(4)
)


class FakeNvml:
    """The slice of pynvml that envinfo uses, with configurable GPUs."""

    class NVMLError(Exception):
        pass

    def __init__(self, names: list[str | bytes], memory_bytes: int = 141 * GiB, fail=False):
        self.names = names
        self.memory_bytes = memory_bytes
        self.fail = fail
        self.shutdowns = 0

    def nvmlInit(self) -> None:
        if self.fail:
            raise self.NVMLError("NVML Shared Library Not Found")

    def nvmlShutdown(self) -> None:
        self.shutdowns += 1

    def nvmlSystemGetDriverVersion(self) -> str:
        return "550.54.15"

    def nvmlDeviceGetCount(self) -> int:
        return len(self.names)

    def nvmlDeviceGetHandleByIndex(self, i: int) -> int:
        return i

    def nvmlDeviceGetName(self, h: int) -> str | bytes:
        return self.names[h]

    def nvmlDeviceGetMemoryInfo(self, h: int) -> SimpleNamespace:
        return SimpleNamespace(total=self.memory_bytes, free=0, used=0)


class FakeCuda:
    def __init__(self, names: list[str]):
        self.names = names

    def is_available(self) -> bool:
        return bool(self.names)

    def device_count(self) -> int:
        return len(self.names)

    def get_device_properties(self, i: int) -> SimpleNamespace:
        return SimpleNamespace(name=self.names[i], total_memory=24 * GiB)


@pytest.fixture
def cpuinfo(tmp_path: Path) -> Path:
    p = tmp_path / "cpuinfo"
    p.write_text(CPUINFO)
    return p


def fp(cpuinfo: Path, **kw):
    args = {
        "nvml": FakeNvml(["NVIDIA H200", b"NVIDIA H200"]),
        "torch_cuda": False,
        "jax_devices": False,
        "cpuinfo_path": cpuinfo,
        "ram": 64 * GiB,
        "hostname": "ci-runner-1",
    }
    args.update(kw)
    return fingerprint(**args)


# --- envinfo ------------------------------------------------------------------------------------


def test_fingerprint_fields_from_fake_hardware(cpuinfo: Path) -> None:
    nvml = FakeNvml(["NVIDIA H200", b"NVIDIA H200"])
    env = fp(cpuinfo, nvml=nvml)
    assert env["cpu"] == "Intel(R) Xeon(R) Platinum 8481C CPU @ 2.70GHz"
    assert env["cores"]["logical"] == 4 and env["cores"]["physical"] == 2
    assert env["ram_bytes"] == 64 * GiB
    assert env["gpus"] == [
        {"index": 0, "name": "NVIDIA H200", "memory_bytes": 141 * GiB, "driver": "550.54.15"},
        {"index": 1, "name": "NVIDIA H200", "memory_bytes": 141 * GiB, "driver": "550.54.15"},
    ]
    assert nvml.shutdowns == 1
    assert env["tpu"] is None
    assert set(env["versions"]) == {"torch", "jax", "jaxlib", "recbench", "numpy"}
    assert env["versions"]["recbench"] == "0.1.0"
    assert env["versions"]["numpy"] is not None
    assert set(env["git"]) == {"commit", "dirty"}
    assert env["python"].count(".") == 2 and env["os"]
    assert env["hostname"] == "ci-runner-1"
    json.dumps(env)  # a results header must hold it as is


def test_machine_id_is_stable_safe_and_ignores_hostname(cpuinfo: Path) -> None:
    a = fp(cpuinfo)
    b = fp(cpuinfo, hostname="ci-runner-2")
    assert a["machine_id"] == b["machine_id"] == machine_id(a)
    assert re.fullmatch(r"nvidia-h200x2-[0-9a-f]{6}", a["machine_id"])
    c = fp(cpuinfo, nvml=FakeNvml(["NVIDIA H100 80GB HBM3"] * 2, 80 * GiB))
    assert c["machine_id"].startswith("nvidia-h100-80gb-hbm3x2-")
    assert c["machine_id"] != a["machine_id"]


def test_cpu_only_machine_id_and_torch_fallback(cpuinfo: Path) -> None:
    no_nvml = FakeNvml([], fail=True)
    env = fp(cpuinfo, nvml=no_nvml, torch_cuda=FakeCuda([]), ram=int(63.8 * GiB))
    assert env["gpus"] == []
    assert re.fullmatch(r"intel-xeon-platinum-8481c-4c-64g-[0-9a-f]{6}", env["machine_id"])
    # NVML cannot initialise (e.g. ROCm): torch.cuda still lists the GPUs, driver unknown.
    env = fp(cpuinfo, nvml=no_nvml, torch_cuda=FakeCuda(["AMD Instinct MI300X"]))
    assert env["gpus"] == [
        {"index": 0, "name": "AMD Instinct MI300X", "memory_bytes": 24 * GiB, "driver": None}
    ]
    assert env["machine_id"].startswith("amd-instinct-mi300xx1-")


def test_tpu_from_fake_jax_devices(cpuinfo: Path) -> None:
    devs = [SimpleNamespace(platform="tpu", device_kind="TPU v5 lite", id=i) for i in range(4)]
    env = fp(cpuinfo, nvml=False, jax_devices=lambda: devs)
    assert env["tpu"] == {"device_kind": "TPU v5 lite", "count": 4}
    assert re.fullmatch(r"tpu-v5-litex4-[0-9a-f]{6}", env["machine_id"])
    cpu_devs = [SimpleNamespace(platform="cpu", device_kind="cpu", id=0)]
    assert fp(cpuinfo, nvml=False, jax_devices=lambda: cpu_devs)["tpu"] is None
    assert datasheet_for_env(env, "tpu")["name"] == "TPU v5e"


def test_fingerprint_key_differs_when_the_gpu_differs(cpuinfo: Path) -> None:
    h200 = fp(cpuinfo)
    assert fingerprint_key(h200) == fingerprint_key(fp(cpuinfo, hostname="other"))
    h100 = fp(cpuinfo, nvml=FakeNvml(["NVIDIA H100 80GB HBM3"] * 2))
    assert fingerprint_key(h100) != fingerprint_key(h200)
    newer_torch = {**h200, "versions": {**h200["versions"], "torch": "9.9.9"}}
    assert fingerprint_key(newer_torch) != fingerprint_key(h200)
    assert fingerprint_key({}) == (None, None, None, (), None, None, None, None, None)  # old env


def test_format_env_is_readable(cpuinfo: Path) -> None:
    text = format_env(fp(cpuinfo))
    assert text.splitlines()[0].startswith("machine_id")
    assert "NVIDIA H200, 141.0 GiB, driver 550.54.15" in text
    assert "Xeon" in text and "64.0 GiB" in text


def test_malloc_tuning_is_recorded(cpuinfo: Path, monkeypatch) -> None:
    """hostmem leaves glibc's malloc alone where the user tunes it: the header shows how."""
    tuned = {"MALLOC_ARENA_MAX": "2", "MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": "-1",
             "MALLOC_MMAP_THRESHOLD_": "1048576", "MALLOC_TOP_PAD_": "0",
             "GLIBC_TUNABLES": "glibc.malloc.arena_max=1"}
    for k, v in tuned.items():
        monkeypatch.setenv(k, v)
    env = fp(cpuinfo)
    assert {k: env["env_vars"].get(k) for k in tuned} == tuned
    assert re.search(r"^MALLOC_ARENA_MAX +2$", format_env(env), re.M)


@pytest.mark.parametrize("name", envinfo.SWITCH_ENV_VARS)
def test_a_switch_it_does_not_take_is_refused_before_a_fingerprint(cpuinfo: Path, monkeypatch,
                                                                   name: str) -> None:
    monkeypatch.setenv(name, "off")
    assert fp(cpuinfo)["env_vars"][name] == "off"  # recorded as written
    monkeypatch.setenv(name, "banana")
    with pytest.raises(InputError, match=rf"^{name}='banana' is not an on/off value"):
        fp(cpuinfo)


def test_git_info(tmp_path: Path) -> None:
    assert git_info(tmp_path) == {"commit": None, "dirty": None}  # not a checkout
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "pyproject.toml").write_text("[project]\n")

    def git(*args: str) -> None:
        subprocess.run(
            ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t", *args],
            check=True,
            capture_output=True,
        )

    git("init", "-q")
    assert git_info(repo) == {"commit": None, "dirty": None}  # no commit yet
    git("add", "pyproject.toml")
    git("commit", "-q", "-m", "x")
    info = git_info(repo)
    assert re.fullmatch(r"[0-9a-f]{40}", info["commit"]) and info["dirty"] is False
    (repo / "results.jsonl").write_text("{}")  # untracked output: still clean
    assert git_info(repo)["dirty"] is False
    (repo / "pyproject.toml").write_text("[project]\nname = 'x'\n")
    assert git_info(repo)["dirty"] is True


def test_probe_jax_0_never_imports_jax() -> None:
    code = (
        "import os, sys; os.environ['RECBENCH_PROBE_JAX'] = '0'\n"
        "from bench.machine import envinfo; env = envinfo.fingerprint()\n"
        "print(env['tpu'], 'jax' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.split() == ["None", "False"]


def test_real_fingerprint_is_complete() -> None:
    env = envinfo.fingerprint(jax_devices=False)
    assert env["cores"]["logical"] >= 1 and env["ram_bytes"] > 0
    assert re.fullmatch(r"[a-z0-9.-]+", env["machine_id"])


# --- roofs --------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_measure_gemm_on_cpu(dtype: str) -> None:
    flops = measure_gemm("torch", "cpu", dtype, n=512, min_time_s=0.05)
    assert flops > 1e8  # a sanity floor only: this machine is shared


def test_measure_gemm_jax_on_cpu() -> None:
    pytest.importorskip("jax")
    assert measure_gemm("jax", "cpu", "fp32", n=256, min_time_s=0.05) > 1e8


def test_measure_bandwidth_on_cpu() -> None:
    assert measure_bandwidth("torch", "cpu", nbytes=64 * 2**20, min_time_s=0.05) > 1e8


def test_measure_roofs_keys_and_header_format() -> None:
    roofs = measure_roofs(["cpu"], ["fp32", "bf16"], min_time_s=0.05, repeats=2)
    assert set(roofs) == {"cpu/fp32", "cpu/bf16"}
    for entry in roofs.values():
        assert entry["gemm_flops_per_s"] > 1e8 and entry["mem_bytes_per_s"] > 1e8
        assert "matmul" in entry["method"] and "reason" not in entry
    json.dumps(roofs)


# Planted timings, worked by hand. A matmul of two n x n matrices is n^2 outputs of n
# multiply-adds, 2 n^3 FLOPs; at 1e10 FLOP/s: 256 -> 33,554,432 FLOPs = 3.3554432 ms,
# 512 -> 268,435,456 = 26.8435456 ms, 1024 -> 2,147,483,648 = 214.7483648 ms. A copy of
# N bytes reads N and writes N; at 2e10 B/s: 64 MiB -> 134,217,728 B = 6.7108864 ms,
# 256 MiB -> 536,870,912 B = 26.8435456 ms.
PLANTED_GEMM_S = {256: 0.0033554432, 512: 0.0268435456, 1024: 0.2147483648}
PLANTED_COPY_S = {64 * 2**20: 0.0067108864, 256 * 2**20: 0.0268435456}


@pytest.fixture
def planted(monkeypatch: pytest.MonkeyPatch) -> SimpleNamespace:
    """A fake clock and fake GEMM/copy steps that take exactly the planted times."""
    dev = SimpleNamespace(now=100.0, calls=0)

    def step(seconds: float):
        def call() -> None:
            dev.now += seconds
            dev.calls += 1

        return call, lambda _: None

    def gemm(kind, index, dtype, n):
        return step(PLANTED_GEMM_S[n])

    def copy(kind, index, nbytes):
        return step(PLANTED_COPY_S[nbytes])

    monkeypatch.setattr(roofs_mod, "_clock", lambda: dev.now)
    for name, fake in (("_torch_gemm", gemm), ("_torch_onednn_gemm", gemm), ("_jax_gemm", gemm),
                       ("_torch_copy", copy), ("_jax_copy", copy)):
        monkeypatch.setattr(roofs_mod, name, fake)
    return dev


@pytest.mark.parametrize("framework", ["torch", "jax"])
def test_roof_flop_and_byte_counts_against_planted_timings(planted, framework: str) -> None:
    """The roofs' arithmetic, not this machine's speed: with steps that take the planted
    times, GEMM must read 1e10 FLOP/s and the copy 2e10 B/s (a 2x slip in 2 n^3 or in bytes
    read + written, or in the per-call division, is off by 2x)."""
    for n in (256, 512, 1024):
        flops = measure_gemm(framework, "cpu", "fp32", n=n, min_time_s=0.5, repeats=2)
        assert flops == pytest.approx(1e10, rel=1e-9), n
    assert planted.calls > 2 * 3  # the timed reps made calls, not only the warm-up
    assert measure_bandwidth(framework, "cpu", nbytes=64 * 2**20, min_time_s=0.1) == (
        pytest.approx(2e10, rel=1e-9))
    # The CPU path picks n itself: it grows while 8x the last call stays under 1 s, so it
    # stops at 1024 (8 x 0.215 s > 1 s); the bandwidth buffer is 256 MiB.
    roofs = measure_roofs(["cpu"], ["fp32", "bf16"], [framework], min_time_s=0.5, repeats=2)
    for dtype in ("fp32", "bf16"):
        entry = roofs[f"cpu/{dtype}"]
        assert entry["gemm_flops_per_s"] == pytest.approx(1e10, rel=1e-9)
        assert entry["mem_bytes_per_s"] == pytest.approx(2e10, rel=1e-9)
        assert "1024x1024" in entry["method"] and "256 MiB" in entry["method"]
        assert "reason" not in entry


def test_measure_roofs_records_an_absent_device_instead_of_crashing() -> None:
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    roofs = measure_roofs(["cuda"], ["bf16"], min_time_s=0.01)
    entry = roofs["cuda/bf16"]
    assert entry["gemm_flops_per_s"] is None and entry["mem_bytes_per_s"] is None
    assert "CUDA" in entry["reason"]


def test_measure_roofs_takes_every_dtype_the_runner_asks_for() -> None:
    """`recbench env` on a GPU and the runner ask for tf32 (roofs.ROOF_DTYPES); a roof
    measurement that refused it lost every roof of the run. TF32 is allowed for the tf32
    roof only, and the process's setting is put back."""
    torch = pytest.importorskip("torch")
    from bench.machine.roofs import ROOF_DTYPES

    flags = torch.backends.cuda.matmul
    before = flags.allow_tf32
    roofs = measure_roofs(["cpu"], sorted(set(ROOF_DTYPES.values())), min_time_s=0.01,
                          repeats=1)
    assert set(roofs) == {f"cpu/{d}" for d in ROOF_DTYPES.values()}
    assert roofs["cpu/tf32"]["gemm_flops_per_s"] > 1e8
    assert " tf32 " in roofs["cpu/tf32"]["method"]
    assert flags.allow_tf32 == before
    seen = []
    call, _ = roofs_mod._torch_gemm("cpu", 0, "tf32", 64)
    orig = torch.matmul
    try:
        torch.matmul = lambda *a, **k: seen.append(flags.allow_tf32) or orig(*a, **k)
        call()
        roofs_mod._torch_gemm("cpu", 0, "fp32", 64)[0]()
    finally:
        torch.matmul = orig
    assert seen == [True, False] and flags.allow_tf32 == before


def test_datasheet_for_data_parallel_devices_is_none_not_an_error() -> None:
    env = {"gpus": [{"name": "NVIDIA H200", "memory_bytes": 141 * 2**30}] * 2}
    assert datasheet_for_env(env, "cuda:1")["name"] == "NVIDIA H200 SXM"
    assert datasheet_for_env(env, "cuda:all") is None
    assert datasheet_for_env(env, "cpu:all") is None


def test_roofs_reject_typos() -> None:
    with pytest.raises(InputError, match="unknown dtype"):
        measure_roofs(["cpu"], ["fp64x"])
    with pytest.raises(InputError, match="unknown device"):
        measure_gemm("torch", "gpu0", "fp32")
    with pytest.raises(InputError, match="unknown framework"):
        measure_bandwidth("tensorflow", "cpu")


@pytest.mark.parametrize(
    ("name", "dtype", "expected"),
    [
        ("NVIDIA H200", "bf16", 989.5e12),
        ("NVIDIA H100 80GB HBM3", "bf16", 989.4e12),
        ("NVIDIA H100 80GB HBM3", "fp32", 66.9e12),
        ("NVIDIA A100-SXM4-80GB", "bf16", 312e12),
        ("NVIDIA A100-SXM4-80GB", "tf32", 156e12),
        ("NVIDIA L4", "bf16", 121e12),
        ("TPU v4", "bf16", 275e12),
        ("TPU v5 lite", "bf16", 197e12),
        ("TPU v5e", "bf16", 197e12),
        ("TPU v5", "bf16", 459e12),
        ("TPU v5p", "bf16", 459e12),
        ("TPU v6 lite", "bf16", 918e12),
        ("TPU v6e", "bf16", 918e12),
    ],
)
def test_datasheet_peak_matches_device_names(name: str, dtype: str, expected: float) -> None:
    flops, source = datasheet_peak(name, dtype)
    assert flops == pytest.approx(expected)
    assert source.startswith(("NVIDIA", "Google")) and "https://" in source


@pytest.mark.parametrize(
    "name",
    [
        "NVIDIA H100 PCIe",  # other clocks and memory than SXM
        "NVIDIA H100 NVL",
        "NVIDIA H200 NVL",
        "NVIDIA GH200 480GB",
        "NVIDIA A100 80GB PCIe",
        "NVIDIA A100-SXM4-40GB",
        "NVIDIA L40S",
        "TPU v4 lite",
        "AMD EPYC",
        "",
    ],
)
def test_datasheet_peak_refuses_other_parts(name: str) -> None:
    assert datasheet_key(name) is None
    assert datasheet_peak(name, "bf16") is None


def test_datasheet_table_is_dense_and_sourced() -> None:
    expected = {
        "NVIDIA H100 SXM": 3.35e12,
        "NVIDIA H200 SXM": 4.8e12,
        "NVIDIA A100 80GB SXM": 2.039e12,
        "NVIDIA L4": 300e9,
        "TPU v4": 1200e9,
        "TPU v5e": 819e9,
        "TPU v5p": 2765e9,
        "TPU v6e": 1638e9,
    }
    assert set(DATASHEET_PEAKS) == set(expected)
    for key, entry in DATASHEET_PEAKS.items():
        assert "https://" in entry["source"], key
        assert entry["mem_bytes_per_s"] == pytest.approx(expected[key])
        assert datasheet_bandwidth(key)[0] == entry["mem_bytes_per_s"]
        assert "bf16" in entry["flops_per_s"]
    assert datasheet_peak("TPU v5 lite", "fp32") is None  # TPU docs give bf16 only
    # H200 has H100's compute: the datasheet's sparse figures halved agree with the whitepaper.
    h100 = DATASHEET_PEAKS["NVIDIA H100 SXM"]["flops_per_s"]
    h200 = DATASHEET_PEAKS["NVIDIA H200 SXM"]["flops_per_s"]
    for dt in h100:
        assert h200[dt] == pytest.approx(h100[dt], rel=2e-3)


def test_torch_cpu_fp32_roof_is_the_better_of_mkl_and_onednn(planted, monkeypatch) -> None:
    """torch's CPU fp32 Linear layers run oneDNN's matmul (recmodels/torch/blocks.py), which
    on some CPUs is 2x MKL's sgemm: the roof must be the faster kernel, named in the method,
    or a step's utilisation could pass 100%. Other dtypes have torch.matmul only."""
    def onednn(kind, index, dtype, n):  # planted twice as fast as torch.matmul
        def call() -> None:
            planted.now += 2 * n**3 / 2e10  # 2e10 FLOP/s at every n
        return call, lambda _: None

    monkeypatch.setattr(roofs_mod, "_torch_onednn_gemm", onednn)
    assert [k for k, _ in roofs_mod._gemm_kernels("torch", "cpu", "fp32")] == [
        "matmul", "oneDNN matmul"]
    assert [k for k, _ in roofs_mod._gemm_kernels("torch", "cpu", "bf16")] == ["matmul"]
    roofs = measure_roofs(["cpu"], ["fp32", "bf16"], ["torch"], min_time_s=0.5, repeats=2)
    assert roofs["cpu/fp32"]["gemm_flops_per_s"] == pytest.approx(2e10, rel=1e-9)
    assert "torch oneDNN matmul" in roofs["cpu/fp32"]["method"]
    assert roofs["cpu/bf16"]["gemm_flops_per_s"] == pytest.approx(1e10, rel=1e-9)


def test_onednn_roof_kernel_computes_a_matmul() -> None:
    """The real oneDNN roof step multiplies n x n matrices (not a cheaper product)."""
    import torch

    if not roofs_mod._gemm_kernels("torch", "cpu", "fp32")[1:]:
        pytest.skip("this torch has no oneDNN linear op")
    torch.manual_seed(0)
    call, _ = roofs_mod._torch_onednn_gemm("cpu", 0, "fp32", 64)
    out = call()
    assert out.shape == (64, 64) and torch.isfinite(out).all() and out.abs().max() > 1
