"""The environment fingerprint written into every results header (``env``).

``fingerprint()`` is cheap (tens of ms): versions come from package metadata, not imports, and
the frameworks are imported only where they are the only way to see a device. The hardware
boundary (the pynvml module, torch.cuda, jax.devices, /proc/cpuinfo, RAM) is injectable so
tests run on fakes.

``machine_id`` names a machine by its hardware, not its hostname (CI hostnames change):
``<slug>-<6 hex>``, where the slug is ``nvidia-h200x8`` on a GPU machine, ``tpu-v5-litex4`` on
a TPU host, or ``<cpu model>-<logical cores>c-<RAM GiB>g`` (``amd-epyc-2c-23g``) on a CPU-only
machine, and the hex is a hash of what changes a benchmark's speed: cpu model, ISA features
(``isa``: AVX2, AVX-512, BF16, AMX ..., see ``cpuinfo.ISA_FEATURES``), logical cores, RAM GiB,
every GPU's name and GiB (so their count), TPU kind and count, and the torch, jax and jaxlib
versions. Two machines with the same hardware and frameworks share an id; an AVX2-only VM and
an AVX512-BF16 VM of one CPU family do not. Results go to ``results/<machine_id>/``.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import importlib.util
import json
import os
import platform
import re
import socket
import subprocess
import sys
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from bench.machine.cpuinfo import (  # noqa: F401 (re-exported: envinfo is the API)
    ISA_FEATURES,
    _read_cpuinfo,
    core_counts,
    cpu_model,
    isa_features,
)
from recmodels.envvars import switch

GiB = 2**30

# The package's checkout: bench/ lives directly under it.
REPO_DIR = Path(__file__).resolve().parents[2]

VERSIONED_PACKAGES = ("torch", "jax", "jaxlib", "recbench", "numpy")
# The versions that change what a point measures: part of the machine id and fingerprint key.
FRAMEWORK_PACKAGES = ("torch", "jax", "jaxlib")

# Environment variables that change what a benchmark measures; recorded when set.
RECORDED_ENV_VARS = (
    "CUDA_VISIBLE_DEVICES",
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "XLA_FLAGS",
    "JAX_PLATFORMS",
    "TPU_VISIBLE_CHIPS",
    "RECBENCH_ONEDNN_LINEAR",  # torch's CPU fp32 Linear kernel (recmodels/torch/blocks.py)
    "RECBENCH_KEEP_HOST_MEMORY",  # off: glibc's malloc left alone (recmodels/hostmem.py)
    # glibc's malloc tuning: where one is set, recmodels/hostmem.py leaves malloc alone too
    "MALLOC_ARENA_MAX",
    "MALLOC_MMAP_MAX_",
    "MALLOC_TRIM_THRESHOLD_",
    "MALLOC_MMAP_THRESHOLD_",
    "MALLOC_TOP_PAD_",
    "GLIBC_TUNABLES",
)
# The on/off switches among them (recmodels.envvars.switch): a value they do not take is
# refused when the fingerprint is taken, before a run starts, not in every worker.
SWITCH_ENV_VARS = ("RECBENCH_ONEDNN_LINEAR", "RECBENCH_KEEP_HOST_MEMORY")


# --- memory ----------------------------------------------------------------------------------


def ram_bytes() -> int | None:
    try:
        import psutil

        return int(psutil.virtual_memory().total)
    except Exception:  # psutil missing: a fingerprint without RAM beats no fingerprint
        return None


# --- accelerators -------------------------------------------------------------------------------


def _text(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)  # older pynvml returns bytes


def gpus_from_nvml(nvml: Any) -> list[dict[str, Any]] | None:
    """All NVIDIA GPUs NVML sees (PCI order), or None when NVML cannot initialise (no driver)."""
    try:
        nvml.nvmlInit()
    except Exception:  # NVMLError_LibraryNotFound / DriverNotLoaded: no NVIDIA driver here
        return None
    try:
        driver = _text(nvml.nvmlSystemGetDriverVersion())
        out = []
        for i in range(nvml.nvmlDeviceGetCount()):
            h = nvml.nvmlDeviceGetHandleByIndex(i)
            out.append(
                {
                    "index": i,
                    "name": _text(nvml.nvmlDeviceGetName(h)),
                    "memory_bytes": int(nvml.nvmlDeviceGetMemoryInfo(h).total),
                    "driver": driver,
                }
            )
        return out
    except Exception:
        return None
    finally:
        with contextlib.suppress(Exception):
            nvml.nvmlShutdown()


def gpus_from_torch(cuda: Any) -> list[dict[str, Any]]:
    """GPUs torch.cuda sees (after CUDA_VISIBLE_DEVICES; also ROCm); driver unknown here."""
    try:
        if not cuda.is_available():
            return []
        out = []
        for i in range(cuda.device_count()):
            props = cuda.get_device_properties(i)
            out.append(
                {
                    "index": i,
                    "name": str(props.name),
                    "memory_bytes": int(props.total_memory),
                    "driver": None,
                }
            )
        return out
    except Exception:
        return []


def _default_nvml() -> Any:
    try:
        import pynvml
    except ImportError:
        return None
    return pynvml


def _default_torch_cuda() -> Any:
    # Importing torch costs ~1 s: only do it where a GPU device node says it could pay off.
    if "torch" not in sys.modules:
        if importlib.util.find_spec("torch") is None:
            return None
        if not (Path("/dev/nvidiactl").exists() or Path("/dev/kfd").exists()):
            return None
    try:
        import torch
    except Exception:
        return None
    return torch.cuda


def probe_gpus(nvml: Any = None, torch_cuda: Any = None) -> list[dict[str, Any]]:
    """GPUs via NVML when it initialises, else via torch.cuda, else [].

    ``nvml``/``torch_cuda``: None picks the real module (if importable), False skips the
    source, anything else is used as the module (tests pass fakes).
    """
    if nvml is not False:
        module = _default_nvml() if nvml is None else nvml
        found = gpus_from_nvml(module) if module is not None else None
        if found is not None:
            return found
    if torch_cuda is not False:
        cuda = torch_cuda if torch_cuda is not None else _default_torch_cuda()
        if cuda is not None:
            return gpus_from_torch(cuda)
    return []


def _probe_jax_mode() -> str:
    return os.environ.get("RECBENCH_PROBE_JAX", "auto").strip().lower() or "auto"


def _default_jax_devices() -> Callable[[], Sequence[Any]] | None:
    """``jax.devices`` where probing is allowed and worth it, else None.

    RECBENCH_PROBE_JAX=0 never imports jax; =1 always does; unset (auto) only where libtpu is
    installed: listing devices on a GPU machine would initialise CUDA in this process.
    """
    mode = _probe_jax_mode()
    if mode in ("0", "false", "no") or importlib.util.find_spec("jax") is None:
        return None
    if mode not in ("1", "true", "yes") and importlib.util.find_spec("libtpu") is None:
        return None
    try:
        import jax
    except Exception:
        return None
    return jax.devices


def probe_tpu(jax_devices: Any = None) -> dict[str, Any] | None:
    """``{"device_kind": "TPU v5 lite", "count": 4}`` when JAX's default platform is TPU."""
    devices_fn = _default_jax_devices() if jax_devices is None else jax_devices
    if not devices_fn:
        return None
    try:
        devices = list(devices_fn())
    except Exception:  # no backend could initialise
        return None
    tpus = [d for d in devices if getattr(d, "platform", None) == "tpu"]
    if not tpus:
        return None
    return {"device_kind": str(tpus[0].device_kind), "count": len(tpus)}


# --- software -----------------------------------------------------------------------------------


def package_versions(names: Sequence[str] = VERSIONED_PACKAGES) -> dict[str, str | None]:
    """Installed distribution versions from metadata (no imports); None when not installed."""
    out: dict[str, str | None] = {}
    for name in names:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def _git(repo: Path, *args: str) -> str | None:
    try:
        res = subprocess.run(
            ["git", "-C", str(repo), *args],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):  # git missing or hung
        return None
    return res.stdout if res.returncode == 0 else None


def git_info(repo_dir: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """``{commit, dirty}`` of the recbench checkout; None values when it is not one.

    ``dirty`` counts modified tracked files only: result files and caches written next to the
    code do not make a run "dirty".
    """
    repo = Path(repo_dir) if repo_dir is not None else REPO_DIR
    # An installed (non-editable) package sits in site-packages: not our checkout, even if
    # some enclosing directory happens to be a git repository.
    if not (repo / "pyproject.toml").is_file():
        return {"commit": None, "dirty": None}
    top = _git(repo, "rev-parse", "--show-toplevel")
    if top is None or Path(top.strip()).resolve() != repo.resolve():
        return {"commit": None, "dirty": None}
    head = _git(repo, "rev-parse", "--verify", "--quiet", "HEAD")
    if not head:  # before the first commit no commit names the code
        return {"commit": None, "dirty": None}
    status = _git(repo, "status", "--porcelain", "--untracked-files=no")
    return {
        "commit": head.strip(),
        "dirty": bool(status.strip()) if status is not None else None,
    }


# --- the fingerprint ----------------------------------------------------------------------------


def _slug(text: str, max_len: int = 32) -> str:
    s = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    return s[:max_len].strip("-") or "unknown"


def _cpu_slug(model: str) -> str:
    s = re.sub(r"\((r|tm|c)\)", " ", model, flags=re.I)
    s = re.sub(r"@.*$", " ", s)  # clock speed
    s = re.sub(r"\b(cpu|processor|\d+-core)\b", " ", s, flags=re.I)
    return _slug(" ".join(s.split()[:4]), 32)


def machine_id(env: Mapping[str, Any]) -> str:
    """``<hardware slug>-<6 hex>`` from the hardware fields of ``env`` (see module docstring)."""
    cpu = str(env.get("cpu") or "unknown")
    cores = env.get("cores") or {}
    logical = cores.get("logical")
    ram = env.get("ram_bytes")
    ram_gib = round(ram / GiB) if ram else None  # MemTotal wobbles by MBs across kernels
    gpus = env.get("gpus") or []
    tpu = env.get("tpu")
    versions = env.get("versions") or {}
    hw = {
        "cpu": cpu,
        "isa": env.get("isa"),
        "logical_cores": logical,
        "ram_gib": ram_gib,
        "gpus": sorted(
            (str(g.get("name")), round((g.get("memory_bytes") or 0) / GiB)) for g in gpus
        ),
        "tpu": [tpu.get("device_kind"), tpu.get("count")] if tpu else None,
        "frameworks": [versions.get(k) for k in FRAMEWORK_PACKAGES],
    }
    digest = hashlib.sha1(json.dumps(hw, sort_keys=True).encode()).hexdigest()[:6]
    if tpu:
        slug = f"{_slug(str(tpu.get('device_kind')), 24)}x{tpu.get('count')}"
    elif gpus:
        name, _ = Counter(str(g.get("name")) for g in gpus).most_common(1)[0]
        slug = f"{_slug(name, 28)}x{len(gpus)}"
    else:
        slug = f"{_cpu_slug(cpu)}-{logical or 0}c-{ram_gib or 0}g"
    return f"{slug}-{digest}"


def fingerprint(
    *,
    nvml: Any = None,
    torch_cuda: Any = None,
    jax_devices: Any = None,
    cpuinfo_path: str | os.PathLike[str] = "/proc/cpuinfo",
    ram: int | None = None,
    repo_dir: str | os.PathLike[str] | None = None,
    hostname: str | None = None,
) -> dict[str, Any]:
    """The environment as a JSON-ready dict (the ``env`` of a results header).

    Keys: cpu, isa [sorted ISA feature names] | None (unknown), cores {physical, logical,
    usable}, ram_bytes, gpus [{index, name, memory_bytes,
    driver}], tpu {device_kind, count} | None, os, python, versions {torch, jax, jaxlib,
    recbench, numpy}, git {commit, dirty}, hostname, env_vars, machine_id.
    Every probe argument defaults to the real thing; pass fakes in tests (see probe_gpus,
    probe_tpu). ``jax_devices=False`` skips the TPU probe. Raises InputError where an on/off
    switch (SWITCH_ENV_VARS) has a value it does not take.
    """
    for name in SWITCH_ENV_VARS:
        switch(name)
    env: dict[str, Any] = {
        "cpu": cpu_model(cpuinfo_path),
        "isa": isa_features(cpuinfo_path),
        "cores": core_counts(cpuinfo_path),
        "ram_bytes": ram if ram is not None else ram_bytes(),
        "gpus": probe_gpus(nvml, torch_cuda),
        "tpu": probe_tpu(jax_devices),
        "os": platform.platform(),
        "python": platform.python_version(),
        "versions": package_versions(),
        "git": git_info(repo_dir),
        "hostname": hostname if hostname is not None else socket.gethostname(),
        "env_vars": {k: os.environ[k] for k in RECORDED_ENV_VARS if k in os.environ},
    }
    env["machine_id"] = machine_id(env)
    return env


def fingerprint_key(env: Mapping[str, Any]) -> tuple[Any, ...]:
    """What must match for two results to count as "the same environment" in compare.

    (cpu model, logical cores, usable cores, GPU names (so their count), TPU kind and count,
    torch version, jax version, ISA features, jaxlib version); the fields added later come
    last, so the tuple's head is unchanged. A file written before ISA features were recorded
    has None there and never matches a newer one. Hostname, git commit, driver and OS patch
    level are left out on purpose: the gate compares commits on one machine type, and CI hosts
    are renamed and patched.
    """
    cores = env.get("cores") or {}
    versions = env.get("versions") or {}
    tpu = env.get("tpu")
    return (
        env.get("cpu"),
        cores.get("logical"),
        cores.get("usable"),
        tuple(str(g.get("name")) for g in env.get("gpus") or []),
        (tpu.get("device_kind"), tpu.get("count")) if tpu else None,
        versions.get("torch"),
        versions.get("jax"),
        tuple(env["isa"]) if env.get("isa") is not None else None,
        versions.get("jaxlib"),
    )


def _gib(n: Any) -> str:
    return f"{n / GiB:.1f} GiB" if isinstance(n, (int, float)) else "?"


def format_env(env: Mapping[str, Any]) -> str:
    """A human-readable multi-line block for ``recbench env``."""
    cores = env.get("cores") or {}
    lines = [
        ("machine_id", str(env.get("machine_id"))),
        (
            "cpu",
            f"{env.get('cpu')} ({cores.get('logical')} logical, {cores.get('physical')} "
            f"physical, {cores.get('usable')} usable cores)",
        ),
        ("isa", " ".join(env["isa"]) if env.get("isa") is not None else "unknown"),
        ("ram", _gib(env.get("ram_bytes"))),
    ]
    gpus = env.get("gpus") or []
    if not gpus:
        lines.append(("gpus", "none"))
    for g in gpus:
        driver = f", driver {g['driver']}" if g.get("driver") else ""
        lines.append(
            (f"gpu {g.get('index')}", f"{g.get('name')}, {_gib(g.get('memory_bytes'))}{driver}")
        )
    tpu = env.get("tpu")
    lines.append(("tpu", f"{tpu['device_kind']} x{tpu['count']}" if tpu else "none"))
    lines.append(("os", str(env.get("os"))))
    lines.append(("python", str(env.get("python"))))
    versions = env.get("versions") or {}
    lines.append(
        ("versions", ", ".join(f"{k} {v or 'not installed'}" for k, v in versions.items()))
    )
    git = env.get("git") or {}
    if git.get("commit"):
        dirty = " (dirty)" if git.get("dirty") else ""
        lines.append(("git", f"{git['commit'][:12]}{dirty}"))
    else:
        lines.append(("git", "not a git checkout (or no commit yet)"))
    lines.append(("hostname", str(env.get("hostname"))))
    for k, v in (env.get("env_vars") or {}).items():
        lines.append((k, str(v)))
    width = max(len(k) for k, _ in lines)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in lines)
