"""What accelerators this machine has, cheaply (no torch or jax import): it picks the
`auto` suite and where `device = "auto"` points run.

GPUs come from `nvidia-smi -L`, else NVML; a TPU host is recognised by its device files (a
heuristic, see tpu_device_present). RECBENCH_GPUS=N and RECBENCH_TPU=0|1 override both.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.point import Point, device_kind
from recmodels.config import human, human_bytes
from recmodels.errors import InputError


@dataclass(frozen=True)
class Hardware:
    n_gpus: int = 0
    tpu: bool = False


def auto_suite_name(hw: Hardware | Mapping[str, Any]) -> str:
    """'standard' with any accelerator (one or more GPUs, or a TPU), else 'quick' (CPU)."""
    get = hw.get if isinstance(hw, Mapping) else lambda k, d=None: getattr(hw, k, d)
    return "standard" if (get("n_gpus", 0) or 0) > 0 or get("tpu", False) else "quick"


def count_nvidia_gpus(run: Callable[..., Any] = subprocess.run) -> int:
    """GPUs listed by `nvidia-smi -L`, else by NVML; 0 when neither answers. No torch import."""
    try:  # a missing nvidia-smi raises FileNotFoundError at once
        out = run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=10)
        if out.returncode == 0:
            return sum(1 for line in out.stdout.splitlines() if line.startswith("GPU "))
    except (OSError, subprocess.SubprocessError):
        pass
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            return int(pynvml.nvmlDeviceGetCount())
        finally:
            pynvml.nvmlShutdown()
    except Exception:  # no library, no driver: no NVIDIA GPU to use
        return 0


def tpu_device_present(dev: Path = Path("/dev")) -> bool:
    """A heuristic: TPU VMs expose /dev/accel* (v2-v4) or numbered /dev/vfio/N (v5e and later).
    A non-TPU host with VFIO passthrough devices would read as a TPU: set RECBENCH_TPU=0."""
    try:
        if any(dev.glob("accel*")):
            return True
        vfio = dev / "vfio"
        return vfio.is_dir() and any(p.name.isdigit() for p in vfio.iterdir())
    except OSError:
        return False


def detect_hardware(env: Mapping[str, str] | None = None, *,
                    count_gpus: Callable[[], int] = count_nvidia_gpus,
                    tpu_present: Callable[[], bool] = tpu_device_present) -> Hardware:
    """Cheap detection for suite "auto". RECBENCH_GPUS=N and RECBENCH_TPU=0|1 override it;
    CUDA_VISIBLE_DEVICES="" or "-1" hides GPUs, a list caps their number."""
    env = os.environ if env is None else env
    if "RECBENCH_GPUS" in env:
        text = env["RECBENCH_GPUS"]
        if not text.isdigit():
            raise InputError(f"RECBENCH_GPUS={text!r}: expected a GPU count such as 0 or 2")
        n_gpus = int(text)
    else:
        n_gpus = count_gpus()
        visible = env.get("CUDA_VISIBLE_DEVICES")
        if visible is not None:
            listed = [d for d in visible.split(",") if d.strip()]
            n_gpus = 0 if not listed or listed[0].strip() == "-1" else min(n_gpus, len(listed))
    if "RECBENCH_TPU" in env:
        text = env["RECBENCH_TPU"].strip().lower()
        if text not in ("0", "1", "true", "false"):
            raise InputError(f"RECBENCH_TPU={text!r}: expected 0 or 1")
        tpu = text in ("1", "true")
    else:
        tpu = tpu_present()
    return Hardware(n_gpus=n_gpus, tpu=tpu)


def _apple_silicon() -> bool:
    import platform

    return platform.system() == "Darwin" and platform.machine() == "arm64"


def device_resolver_for(hardware: Hardware) -> Callable[[str], str]:
    """'auto' in a suite -> the device each framework should use on this machine: CUDA when
    there are GPUs, the TPU for JAX on a TPU host, Apple's GPU for torch on Apple silicon."""

    def resolve(framework: str) -> str:
        if hardware.n_gpus:
            return "cuda"
        if framework == "jax" and hardware.tpu:
            return "tpu"
        if framework == "torch" and _apple_silicon():
            return "mps"
        return "cpu"

    return resolve


def missing_device(device: str, hardware: Hardware) -> str | None:
    """Why `device` is not on this machine by the cheap detection above (the count that
    `nvidia-smi -L` gives, the TPU heuristic and their RECBENCH_* overrides), or None."""
    kind, _, index = str(device).partition(":")
    if kind == "cuda":
        n = hardware.n_gpus
        if not n:
            return "no NVIDIA GPU found by nvidia-smi -L or NVML, or CUDA_VISIBLE_DEVICES hides it"
        if index.isdigit() and int(index) >= n:
            return f"{n} GPU(s) here, cuda:0 to cuda:{n - 1}"
    elif kind == "tpu" and not hardware.tpu:
        return "no TPU found (no /dev/accel* or /dev/vfio/N; RECBENCH_TPU=1 overrides)"
    elif kind == "mps" and not _apple_silicon():
        return "MPS needs an Apple-silicon Mac"
    return None


def device_capacity_bytes(device: str, env: dict[str, Any]) -> int | None:
    """Memory a point on `device` can use: the GPU's, the host's for CPU/MPS, unknown (None)
    for TPUs (JAX reports it only from inside a process that owns the TPU)."""
    kind = device_kind(device)
    if kind == "cuda":
        index = int(device.split(":")[1]) if device[-1].isdigit() else 0  # :all: each GPU
        gpus = env.get("gpus") or []
        return gpus[index].get("memory_bytes") if index < len(gpus) else None
    if kind in ("cpu", "mps"):
        return env.get("ram_bytes")
    return None


def devices_spanned(device: str, env: dict[str, Any]) -> int:
    """How many devices a point runs on: every GPU or TPU chip for ``KIND:all`` (JAX data
    parallel), else 1. ``cpu:all`` splits one CPU into virtual devices that share its roof
    and its memory, so it counts as 1."""
    if not device.endswith(":all"):
        return 1
    kind = device_kind(device)
    if kind == "cuda":
        return max(1, len(env.get("gpus") or []))
    if kind == "tpu":
        return max(1, int((env.get("tpu") or {}).get("count") or 1))
    return 1


def roofline_floor_ms(point: Point, cost: Mapping[str, Any], env: dict[str, Any],
                      ) -> tuple[float | None, str | None]:
    """(est_step_ms, basis): max(FLOPs / peak FLOP/s, bytes / peak bandwidth) on the
    datasheet entry of the point's device, or (None, None) where none is known."""
    from bench.machine.datasheet import datasheet_for_env
    from bench.machine.roofs import ROOF_DTYPES

    dtype = ROOF_DTYPES.get(point.precision)
    sheet = datasheet_for_env(env, point.device) if dtype else None
    peak = (sheet or {}).get("flops_per_s", {}).get(dtype)
    if not peak:
        return None, None
    bw = sheet.get("mem_bytes_per_s")
    seconds = max(cost["flops_per_step"] / peak, cost["bytes_per_step"] / bw if bw else 0.0)
    basis = (f"lower bound: {human(cost['flops_per_step'], 'FLOP')} at the {sheet['name']} "
             f"datasheet {dtype} peak {human(peak, 'FLOP/s')}"
             + (f", {human_bytes(cost['bytes_per_step'])} at {human_bytes(bw, per_s=True)}"
                if bw else ""))
    return seconds * 1e3, basis
