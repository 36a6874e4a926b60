"""Vendor datasheet peaks (dense FLOP/s per dtype, memory bandwidth) and the device names that
map to them. A reference next to the measured roofs, never in place of them: datasheet peaks
assume boost clocks that a power-capped part rarely holds."""

from __future__ import annotations

import re
from typing import Any

from bench.machine.roofs import parse_device

T = 1e12
# Dense (no 2:4 sparsity) per-chip peaks. NVIDIA datasheets print tensor-core figures "with
# sparsity": the dense figure is half. "fp32" is the non-tensor-core FP32 rate; "tf32" is
# what fp32 matmuls reach when TF32 is allowed. TPU docs give bf16 only.
DATASHEET_PEAKS: dict[str, dict[str, Any]] = {
    "NVIDIA H100 SXM": {
        "flops_per_s": {
            "fp32": 66.9 * T,
            "tf32": 494.7 * T,
            "bf16": 989.4 * T,
            "fp16": 989.4 * T,
            "fp8": 1978.9 * T,
        },
        "mem_bytes_per_s": 3.35 * T,
        "power_limit_w": 700.0,  # "Max TDP up to 700W (configurable)", H100 SXM datasheet
        "source": (
            "NVIDIA H100 Tensor Core GPU Architecture whitepaper (H100 SXM5 dense peaks), "
            "https://resources.nvidia.com/en-us-tensor-core/gtc22-whitepaper-hopper; "
            "HBM3 3.35 TB/s: NVIDIA H100 Tensor Core GPU datasheet, "
            "https://www.nvidia.com/en-us/data-center/h100/"
        ),
    },
    "NVIDIA H200 SXM": {
        # Same GH100 compute as H100 SXM; the datasheet's 1,979 TFLOPS bf16 is with sparsity.
        "flops_per_s": {
            "fp32": 67.0 * T,
            "tf32": 494.5 * T,
            "bf16": 989.5 * T,
            "fp16": 989.5 * T,
            "fp8": 1979.0 * T,
        },
        "mem_bytes_per_s": 4.8 * T,
        "power_limit_w": 700.0,  # "Max TDP up to 700W (configurable)", H200 SXM datasheet
        "source": (
            "NVIDIA H200 Tensor Core GPU datasheet (H200 SXM; sparse figures halved), "
            "https://www.nvidia.com/en-us/data-center/h200/"
        ),
    },
    "NVIDIA A100 80GB SXM": {
        "flops_per_s": {"fp32": 19.5 * T, "tf32": 156 * T, "bf16": 312 * T, "fp16": 312 * T},
        "mem_bytes_per_s": 2.039 * T,
        "power_limit_w": 400.0,  # "Max TDP 400W", A100 80GB SXM datasheet
        "source": (
            "NVIDIA A100 Tensor Core GPU datasheet (A100 80GB SXM, dense), "
            "https://www.nvidia.com/content/dam/en-zz/Solutions/Data-Center/a100/pdf/"
            "nvidia-a100-datasheet-us-nvidia-1758950-r4-web.pdf"
        ),
    },
    "NVIDIA L4": {
        "flops_per_s": {
            "fp32": 30.3 * T,
            "tf32": 60 * T,
            "bf16": 121 * T,
            "fp16": 121 * T,
            "fp8": 242.5 * T,
        },
        "mem_bytes_per_s": 300e9,
        "power_limit_w": 72.0,  # "Max TDP 72W", L4 datasheet
        "source": (
            "NVIDIA L4 Tensor Core GPU datasheet (sparse figures halved), "
            "https://www.nvidia.com/en-us/data-center/l4/"
        ),
    },
    "TPU v4": {
        "flops_per_s": {"bf16": 275 * T},
        "mem_bytes_per_s": 1200e9,
        "source": "Google Cloud TPU v4 docs, https://cloud.google.com/tpu/docs/v4",
    },
    "TPU v5e": {
        "flops_per_s": {"bf16": 197 * T},
        "mem_bytes_per_s": 819e9,  # a later revision of the page says "800 GiBps" (859 GB/s)
        "source": "Google Cloud TPU v5e docs, https://cloud.google.com/tpu/docs/v5e",
    },
    "TPU v5p": {
        "flops_per_s": {"bf16": 459 * T},
        "mem_bytes_per_s": 2765e9,
        "source": "Google Cloud TPU v5p docs, https://cloud.google.com/tpu/docs/v5p",
    },
    "TPU v6e": {
        "flops_per_s": {"bf16": 918 * T},
        "mem_bytes_per_s": 1638e9,
        "source": "Google Cloud TPU v6e (Trillium) docs, https://cloud.google.com/tpu/docs/v6e",
    },
}

# (pattern, key) over the lowercased device name (NVML name or jax device_kind), first match
# wins. Variants with other clocks or memory (H100 PCIe/NVL, H200 NVL, A100 PCIe/40GB,
# TPU v4 lite) deliberately match nothing: no number beats a wrong one.
_NAME_RULES: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"\bh100\b(?!.*(pcie|nvl))(?=.*(sxm|hbm3))"), "NVIDIA H100 SXM"),
    (re.compile(r"\bh200\b(?!.*nvl)"), "NVIDIA H200 SXM"),
    (re.compile(r"\ba100\b(?=.*sxm)(?=.*\b80\s*gb)"), "NVIDIA A100 80GB SXM"),
    (re.compile(r"\bl4\b"), "NVIDIA L4"),
    (re.compile(r"\bv6\s*(e|lite)\b"), "TPU v6e"),
    (re.compile(r"\bv5\s*(e|lite|litepod)\b"), "TPU v5e"),
    (re.compile(r"\bv5\s*p?$|\bv5p\b"), "TPU v5p"),
    (re.compile(r"\bv4\s*$"), "TPU v4"),
)


def datasheet_key(device_name: str) -> str | None:
    """The DATASHEET_PEAKS key for an NVML GPU name or a jax TPU device_kind, or None."""
    name = " ".join(str(device_name).lower().replace("-", " ").split())
    for pattern, key in _NAME_RULES:
        if pattern.search(name):
            return key
    return None


def datasheet_peak(device_name: str, dtype: str) -> tuple[float, str] | None:
    """(dense peak FLOP/s, source) for ``dtype`` on the named device, or None if not known.

    Names as NVML or jax report them: "NVIDIA H200", "NVIDIA H100 80GB HBM3",
    "NVIDIA A100-SXM4-80GB", "NVIDIA L4", "TPU v4", "TPU v5 lite", "TPU v5p", "TPU v6 lite".
    """
    key = datasheet_key(device_name)
    if key is None:
        return None
    entry = DATASHEET_PEAKS[key]
    flops = entry["flops_per_s"].get(dtype)
    return (flops, entry["source"]) if flops is not None else None


def datasheet_bandwidth(device_name: str) -> tuple[float, str] | None:
    """(peak memory bandwidth in bytes/s, source) for the named device, or None."""
    key = datasheet_key(device_name)
    if key is None:
        return None
    entry = DATASHEET_PEAKS[key]
    return entry["mem_bytes_per_s"], entry["source"]


def datasheet_for_env(env: dict[str, Any], device: str) -> dict[str, Any] | None:
    """The datasheet entry (plus ``name``) for ``device`` given an env fingerprint, or None.

    ``cuda:N`` is looked up as ``env["gpus"][N]``, NVML's order: right unless
    CUDA_VISIBLE_DEVICES reorders the GPUs (it is recorded in ``env["env_vars"]``).
    ``KIND:all`` (JAX data parallel over every device) gives None: one chip's peak is not the
    peak of a step spread over several.
    """
    if str(device).strip().lower().endswith(":all"):
        return None
    kind, index = parse_device(device)
    name: str | None = None
    if kind == "cuda":
        gpus = env.get("gpus") or []
        name = gpus[index]["name"] if index < len(gpus) else None
    elif kind == "tpu" and env.get("tpu"):
        name = env["tpu"].get("device_kind")
    key = datasheet_key(name) if name else None
    return {"name": key, **DATASHEET_PEAKS[key]} if key else None


def datasheet_power_limit(device_name: str) -> tuple[float, str] | None:
    """(board power limit in W, source) for the named GPU, or None. The datasheet's maximum
    TDP: the driver may enforce a lower limit, never (by default) a higher one."""
    key = datasheet_key(device_name)
    entry = DATASHEET_PEAKS[key] if key else {}
    limit = entry.get("power_limit_w")
    return (limit, entry["source"]) if limit is not None else None
