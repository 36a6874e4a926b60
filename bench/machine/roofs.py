"""Measured machine roofs: dense GEMM FLOP/s per dtype and memory bandwidth.

Utilisation in a results file is analytic FLOPs / time against the GEMM roof measured in the
same run (DESIGN.md "Measurement rules"), and, where the device is in ``datasheet.DATASHEET_PEAKS``,
against the vendor's dense peak too. The measured roof is the one to trust: datasheet peaks
assume boost clocks that a power-capped part rarely holds.

Method. GEMM: square ``n x n`` matmuls, 2 n^3 FLOPs each; "tf32" is fp32 with TF32 allowed
(torch's allow_tf32, JAX's "tensorfloat32" precision), torch's "fp32" has TF32 off, as the
harness's fp32 points run, and JAX's other dtypes use its default precision (the ``method``
string says which); a warm-up call (JAX compiles here), then the best of a few timed
repetitions of k back-to-back calls, synchronised at both edges. On CPU, n doubles from 256 up
to 2048 while the next size's call is predicted (8x the last) to take < 1 s, so slow dtypes
stay quick; on GPU and TPU n = 8192. Bandwidth: a copy of a buffer larger than any cache
(256 MiB on CPU, 1 GiB on an accelerator), counting bytes read + bytes written.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable, Sequence
from typing import Any

from recmodels.config import DTYPES as MODEL_DTYPES
from recmodels.errors import InputError

# The model's dtypes plus "tf32": fp32 matmuls with TF32 tensor cores allowed, the roof of the
# harness's `tf32` precision (ROOF_DTYPES below). fp32 is measured with TF32 off, as the
# harness's fp32 points run.
DTYPES = (*MODEL_DTYPES, "tf32")
# A point's precision -> the roof it is held to (int8 has no GEMM roof here).
ROOF_DTYPES = {"fp32": "fp32", "tf32": "tf32", "bf16": "bf16", "fp16": "fp16"}

FRAMEWORKS = ("torch", "jax")
MiB = 2**20

CPU_N_START, CPU_N_MAX = 256, 2048
# Grow n (x2, so x8 the time) only while the next size's call is predicted under this: one
# slow dtype (fp16 on most CPUs runs at ~1 GFLOP/s) must not cost seconds per call.
CPU_NEXT_CALL_MAX_S = 1.0
ACCEL_N = {"cuda": 8192, "tpu": 8192, "mps": 4096}
BANDWIDTH_NBYTES = {"cpu": 256 * MiB, "cuda": 1024 * MiB, "tpu": 1024 * MiB, "mps": 512 * MiB}


# --- devices ------------------------------------------------------------------------------------

_DEVICE_RE = re.compile(r"^(cpu|cuda|gpu|tpu|mps)(?::(\d+))?$")


def parse_device(device: str) -> tuple[str, int]:
    """``"cuda:1"`` -> ("cuda", 1); ``"gpu"`` is an alias of ``"cuda"``."""
    m = _DEVICE_RE.match(str(device).strip().lower())
    if not m:
        raise InputError(f"unknown device {device!r}; use cpu, cuda[:N], tpu[:N] or mps")
    kind = "cuda" if m.group(1) == "gpu" else m.group(1)
    return kind, int(m.group(2) or 0)


def _check_framework(framework: str) -> None:
    if framework not in FRAMEWORKS:
        raise InputError(f"unknown framework {framework!r}; use one of {', '.join(FRAMEWORKS)}")


def _check_dtype(dtype: str) -> None:
    if dtype not in DTYPES:
        raise InputError(f"unknown dtype {dtype!r}; use one of {', '.join(DTYPES)}")


# A step is (call, sync): call() launches work and returns something; sync(out) blocks until
# the device has finished it. Timing never measures async dispatch.
Step = tuple[Callable[[], Any], Callable[[Any], None]]
# The clock every roof is timed with (seconds); tests plant a fake one with a fake step, so the
# FLOP and byte counts can be checked against a known time.
_clock: Callable[[], float] = time.perf_counter


def _torch_setup(kind: str, index: int) -> tuple[Any, Any, Callable[[Any], None]]:
    import torch

    if kind == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError("torch sees no CUDA device")
        dev = torch.device("cuda", index)
        return torch, dev, lambda _: torch.cuda.synchronize(dev)
    if kind == "mps":
        if not torch.backends.mps.is_available():
            raise RuntimeError("torch sees no MPS device")
        return torch, torch.device("mps"), lambda _: torch.mps.synchronize()
    if kind == "cpu":
        return torch, torch.device("cpu"), lambda _: None  # eager CPU ops finish on return
    raise RuntimeError(f"torch cannot run on {kind}")


def _jax_device(kind: str, index: int) -> Any:
    import jax

    platform = {"cuda": "gpu"}.get(kind, kind)
    try:
        devices = jax.devices(platform)
    except RuntimeError as e:
        raise RuntimeError(f"jax has no {platform} backend: {e}") from e
    return devices[index]


def _torch_gemm(kind: str, index: int, dtype: str, n: int) -> Step:
    torch, dev, sync = _torch_setup(kind, index)
    tdtype = {"fp32": torch.float32, "tf32": torch.float32, "bf16": torch.bfloat16,
              "fp16": torch.float16}[dtype]
    a = torch.randn(n, n, device=dev).to(tdtype)
    b = torch.randn(n, n, device=dev).to(tdtype)
    c = torch.empty(n, n, device=dev, dtype=tdtype)
    flags = torch.backends.cuda.matmul

    def call() -> Any:
        # TF32 for the tf32 roof only, and the process's setting put back (it is global)
        before = flags.allow_tf32
        flags.allow_tf32 = dtype == "tf32"
        try:
            return torch.matmul(a, b, out=c)
        finally:
            flags.allow_tf32 = before

    return call, sync


def _jax_gemm(kind: str, index: int, dtype: str, n: int) -> Step:
    import jax
    import jax.numpy as jnp

    jdtype = {"fp32": jnp.float32, "tf32": jnp.float32, "bf16": jnp.bfloat16,
              "fp16": jnp.float16}[dtype]
    dev = _jax_device(kind, index)
    ka, kb = jax.random.split(jax.random.PRNGKey(0))
    a = jax.device_put(jax.random.normal(ka, (n, n), jdtype), dev)
    b = jax.device_put(jax.random.normal(kb, (n, n), jdtype), dev)
    precision = "tensorfloat32" if dtype == "tf32" else None
    f = jax.jit(lambda x, y: jnp.matmul(x, y, precision=precision))
    return (lambda: f(a, b)), jax.block_until_ready


def _torch_copy(kind: str, index: int, nbytes: int) -> Step:
    torch, dev, sync = _torch_setup(kind, index)
    src = torch.ones(nbytes // 4, device=dev, dtype=torch.float32)
    dst = torch.empty_like(src)
    return (lambda: dst.copy_(src)), sync


def _jax_copy(kind: str, index: int, nbytes: int) -> Step:
    import jax
    import jax.numpy as jnp

    x = jax.device_put(jnp.ones(nbytes // 4, jnp.float32), _jax_device(kind, index))
    f = jax.jit(lambda v: v + 1.0)  # + 1 so XLA cannot elide the copy; reads and writes once
    return (lambda: f(x)), jax.block_until_ready


def _time_one(step: Step) -> float:
    """Seconds for one warm call: a warm-up (compilation, allocation, page faults), then one."""
    call, sync = step
    sync(call())
    t0 = _clock()
    sync(call())
    return max(_clock() - t0, 1e-9)


def _best_call_s(
    step: Step, min_time_s: float, repeats: int, one_s: float | None = None
) -> tuple[float, int]:
    """Seconds per call (best of ``repeats`` reps of k calls, k sized from one timed call).

    ``one_s``: a warm single-call time already measured on this step (skips the warm-up).
    """
    call, sync = step
    one = one_s if one_s is not None else _time_one(step)
    k = max(1, math.ceil(min_time_s / repeats / one))
    best = math.inf
    for _ in range(repeats):
        t0 = _clock()
        out = None
        for _ in range(k):
            out = call()
        sync(out)  # in-order device queue: the last result done means all are
        best = min(best, (_clock() - t0) / k)
    return best, k


def _torch_onednn_gemm(kind: str, index: int, dtype: str, n: int) -> Step:
    """oneDNN's fp32 matmul (torch.ops.mkldnn._linear_pointwise): the kernel recbench's torch
    Linear layers use for fp32 on CPU (recmodels/torch/blocks.py `linear`)."""
    torch, _, sync = _torch_setup(kind, index)
    a, b = torch.randn(n, n), torch.randn(n, n)
    op = torch.ops.mkldnn._linear_pointwise
    return (lambda: op(a, b, None, "none", [], "")), sync


def _gemm_kernels(framework: str, kind: str, dtype: str) -> list[tuple[str, Callable]]:
    """(name, step maker) of each GEMM kernel the framework's model code may run. torch on
    CPU at fp32 has two: MKL's sgemm (torch.matmul) and oneDNN's matmul, which the model's
    Linear layers take where this torch has it (MKL runs AVX2 kernels on AMD CPUs, at about
    half oneDNN's rate): the roof is the better of the two, as the step may run either."""
    if framework == "jax":
        return [("matmul", _jax_gemm)]
    kernels = [("matmul", _torch_gemm)]
    if kind == "cpu" and dtype in ("fp32", "tf32"):
        import torch

        if torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn,
                                                            "_linear_pointwise"):
            kernels.append(("oneDNN matmul", _torch_onednn_gemm))
    return kernels


def _gemm(
    framework: str, device: str, dtype: str, n: int | None, min_time_s: float, repeats: int
) -> tuple[float, str]:
    _check_framework(framework)
    _check_dtype(dtype)
    kind, index = parse_device(device)
    got: list[tuple[float, str, str]] = []  # (FLOP/s, method, kernel name)
    errors = []
    for name, make in _gemm_kernels(framework, kind, dtype):
        try:
            flops, method = _gemm_kernel(make, name, framework, kind, index, device, dtype, n,
                                         min_time_s, repeats)
        except Exception as e:  # a second kernel that fails leaves the first one's roof
            if name == "matmul":
                raise
            errors.append(f"{framework} {name}: {_short(e)}")
            continue
        got.append((flops, method, name))
    best = max(got)
    others = [f"{framework} {name} {flops / 1e9:.0f} GFLOP/s" for flops, _, name in got
              if (flops, name) != (best[0], best[2])] + errors
    return best[0], best[1] + (f" (the better kernel; also measured: {', '.join(others)})"
                               if others else "")


def _gemm_kernel(make: Callable, name: str, framework: str, kind: str, index: int,
                 device: str, dtype: str, n: int | None, min_time_s: float,
                 repeats: int) -> tuple[float, str]:
    one_s: float | None = None
    if n is None and kind == "cpu":
        n = CPU_N_START
        while True:  # grow n while a call is short: bigger GEMMs run nearer the peak
            step = make(kind, index, dtype, n)
            one_s = _time_one(step)
            if 8 * one_s > CPU_NEXT_CALL_MAX_S or n >= CPU_N_MAX:
                break
            n *= 2
    else:
        n = n or ACCEL_N.get(kind, 4096)
        step = make(kind, index, dtype, n)
    s, k = _best_call_s(step, min_time_s, repeats, one_s)
    note = _precision_note(framework, kind, dtype)
    method = f"{framework} {name} {n}x{n} {dtype} on {device}{note}"
    return 2 * n**3 / s, f"{method}, best of {repeats} reps x {k} calls"


def _precision_note(framework: str, kind: str, dtype: str) -> str:
    if framework == "torch" and kind == "cpu":
        import torch

        return f" ({torch.get_num_threads()} threads)"
    if framework == "torch" and kind == "cuda":
        return f" (tf32 {'on' if dtype == 'tf32' else 'off'})"
    if framework == "jax":
        return " (tensorfloat32 matmul precision)" if dtype == "tf32" else \
            " (jax default matmul precision)"
    return ""


def measure_gemm(
    framework: str,
    device: str,
    dtype: str,
    *,
    n: int | None = None,
    min_time_s: float = 0.3,
    repeats: int = 3,
) -> float:
    """Dense GEMM throughput in FLOP/s (2 n^3 per matmul; n chosen per device when None).

    Raises when the framework, device or dtype cannot run (measure_roofs turns that into a
    null roof with a reason).
    """
    return _gemm(framework, device, dtype, n, min_time_s, repeats)[0]


def _bandwidth(
    framework: str, device: str, nbytes: int | None, min_time_s: float, repeats: int
) -> tuple[float, str]:
    _check_framework(framework)
    kind, index = parse_device(device)
    nbytes = nbytes or BANDWIDTH_NBYTES.get(kind, 256 * MiB)
    make = _torch_copy if framework == "torch" else _jax_copy
    s, k = _best_call_s(make(kind, index, nbytes), min_time_s, repeats)
    what = "copy_" if framework == "torch" else "x + 1"
    method = (
        f"{framework} {what} of {nbytes // MiB} MiB fp32 on {device}, bytes read + written, "
        f"best of {repeats} reps x {k} calls"
    )
    return 2 * (nbytes // 4) * 4 / s, method


def measure_bandwidth(
    framework: str,
    device: str,
    *,
    nbytes: int | None = None,
    min_time_s: float = 0.3,
    repeats: int = 3,
) -> float:
    """Memory bandwidth in bytes/s: a copy of ``nbytes`` (bytes read + bytes written)."""
    return _bandwidth(framework, device, nbytes, min_time_s, repeats)[0]


def _short(e: BaseException) -> str:
    line = (str(e).strip().splitlines() or [""])[0]
    return f"{type(e).__name__}: {line}"[:160]


def measure_roofs(
    devices: Sequence[str] = ("cpu",),
    dtypes: Sequence[str] = ("fp32", "bf16"),
    frameworks: Sequence[str] = ("torch",),
    *,
    min_time_s: float = 0.3,
    repeats: int = 3,
) -> dict[str, dict[str, Any]]:
    """Roofs for a results header: ``{"<device>/<dtype>": {gemm_flops_per_s, mem_bytes_per_s,
    method}}``, keys as given (``cpu/bf16``, ``cuda/fp32``).

    Never raises for a device, framework or dtype that cannot run: its numbers are None and
    ``reason`` says why. With several frameworks each number is the best of them (the
    machine's roof) and ``by_framework`` keeps each framework's own.
    Unknown names (a typo) are an InputError.
    """
    for fw in frameworks:
        _check_framework(fw)
    for dt in dtypes:
        _check_dtype(dt)
    for dev in devices:
        parse_device(dev)

    roofs: dict[str, dict[str, Any]] = {}
    for device in devices:
        per: dict[str, dict[str, dict[str, Any]]] = {dt: {} for dt in dtypes}
        for fw in frameworks:
            try:
                bw, bw_method = _bandwidth(fw, device, None, min_time_s, repeats)
                bw_error = None
            except Exception as e:  # a roof that cannot be measured is null, never a crash
                bw, bw_method, bw_error = None, None, _short(e)
            for dt in dtypes:
                try:
                    gemm, gemm_method = _gemm(fw, device, dt, None, min_time_s, repeats)
                    gemm_error = None
                except Exception as e:
                    gemm, gemm_method, gemm_error = None, None, _short(e)
                entry: dict[str, Any] = {
                    "gemm_flops_per_s": gemm,
                    "mem_bytes_per_s": bw,
                    "method": "; ".join(m for m in (gemm_method, bw_method) if m) or None,
                    "gemm_method": gemm_method,
                    "mem_method": bw_method,
                }
                if gemm_error and gemm_error == bw_error:  # e.g. the device is not there
                    entry["reason"] = gemm_error
                elif gemm_error or bw_error:
                    parts = [("gemm", gemm_error), ("bandwidth", bw_error)]
                    entry["reason"] = "; ".join(f"{k}: {v}" for k, v in parts if v)
                per[dt][fw] = entry
        for dt in dtypes:
            roofs[f"{device}/{dt}"] = _combine(per[dt])
    return roofs


def _combine(by_fw: dict[str, dict[str, Any]]) -> dict[str, Any]:
    if len(by_fw) == 1:
        return next(iter(by_fw.values()))
    entry: dict[str, Any] = {}
    methods = []
    for key, how in (("gemm_flops_per_s", "gemm_method"), ("mem_bytes_per_s", "mem_method")):
        got = [(v[key], fw) for fw, v in by_fw.items() if v[key] is not None]
        entry[key] = max(got)[0] if got else None
        if got:
            winner = max(got)[1]
            methods.append(f"{key}: best of {', '.join(fw for _, fw in got)}: "
                           f"{by_fw[winner].get(how) or winner}")
    entry["method"] = "; ".join(methods) or None
    reasons = [f"{fw}: {v['reason']}" for fw, v in by_fw.items() if "reason" in v]
    if reasons:
        entry["reason"] = "; ".join(reasons)
    entry["by_framework"] = by_fw
    return entry
