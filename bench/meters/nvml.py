"""NVIDIA GPU energy: NVML's cumulative energy counter, its board power as the fallback."""

from __future__ import annotations

from collections.abc import Sequence
from types import ModuleType
from typing import Any

from bench.meters.energy import (
    EnergyCounter,
    EnergySource,
    PowerSampler,
    SourceUnavailable,
    constructs,
)

# --- NVML (NVIDIA GPUs) ---------------------------------------------------------------------
# NVML API reference, Device Queries:
#   nvmlDeviceGetTotalEnergyConsumption: "total energy consumption for this GPU in millijoules
#     (mJ) since the driver was last reloaded"; Volta or newer.
#   nvmlDeviceGetPowerUsage: milliwatts; on Ampere (except GA100) and newer it is a 1 s average,
#     so sampling it smooths short phases. That is why it is only the fallback.
#   nvmlDeviceGetEnforcedPowerLimit: "the effective power limit that the driver enforces",
#     milliwatts; nvmlDeviceGetPowerManagementLimit (the configured limit, mW) where the first
#     is not supported. The counter moves about every 100 ms (measured on an H200).


def _load_pynvml(nvml: ModuleType | None) -> ModuleType:
    if nvml is not None:
        return nvml
    try:
        import pynvml
    except ImportError as e:
        raise SourceUnavailable(f"nvidia-ml-py is not installed: {e}") from e
    return pynvml


def _nvml_handles(nvml: ModuleType, indices: Sequence[int] | None) -> tuple[list[int], list[Any]]:
    try:
        nvml.nvmlInit()  # reference-counted by NVML, so repeated inits are cheap and safe
        idx = list(range(nvml.nvmlDeviceGetCount())) if indices is None else list(indices)
        return idx, [nvml.nvmlDeviceGetHandleByIndex(i) for i in idx]
    except nvml.NVMLError as e:  # includes NVMLError_LibraryNotFound: no driver
        raise SourceUnavailable(f"NVML: {e}") from e


class _NvmlGpus:
    """The GPUs an NVML source reads (NVML indices, PCI order), probed once when built."""

    _what = "NVML"

    def __init__(
        self, indices: Sequence[int] | None = None, nvml: ModuleType | None = None
    ) -> None:
        self._nvml = _load_pynvml(nvml)
        idx, self._handles = _nvml_handles(self._nvml, indices)
        if not idx:
            raise SourceUnavailable("NVML: no GPUs")
        self.name = "nvml:" + ",".join(str(i) for i in idx)
        try:
            self._read()  # NOT_SUPPORTED before Volta (energy), or on some virtualised GPUs
        except self._nvml.NVMLError as e:
            raise SourceUnavailable(f"{self._what}: {e}") from e

    def _read(self) -> float:
        raise NotImplementedError

    def power_limit_w(self) -> float | None:
        """Sum of the GPUs' enforced power limits in watts, or None where NVML cannot say."""
        total = 0.0
        for h in self._handles:
            for fn in ("nvmlDeviceGetEnforcedPowerLimit", "nvmlDeviceGetPowerManagementLimit"):
                get = getattr(self._nvml, fn, None)
                try:
                    mw = int(get(h)) if get is not None else None
                except self._nvml.NVMLError:
                    mw = None
                if mw:
                    total += mw / 1e3
                    break
            else:
                return None
        return total

    @classmethod
    def available(
        cls, indices: Sequence[int] | None = None, nvml: ModuleType | None = None
    ) -> bool:
        return constructs(lambda: cls(indices, nvml))


class NvmlEnergyCounter(_NvmlGpus, EnergyCounter):
    """Sum of NVML total-energy counters over the given GPUs."""

    _what = "NVML energy counter"
    period_s = 0.1

    def read_j(self) -> float:
        get = self._nvml.nvmlDeviceGetTotalEnergyConsumption
        return sum(int(get(h)) for h in self._handles) / 1e3  # mJ -> J

    _read = read_j


class NvmlPowerSampler(_NvmlGpus, PowerSampler):
    """Sum of NVML board power over the given GPUs, in watts."""

    _what = "NVML power"
    period_s = 1.0  # a 1 s average on Ampere (except GA100) and newer

    def read_w(self) -> float:
        get = self._nvml.nvmlDeviceGetPowerUsage
        return sum(int(get(h)) for h in self._handles) / 1e3  # mW -> W

    _read = read_w


def nvml_sources(
    indices: Sequence[int] | None = None, nvml: ModuleType | None = None
) -> list[EnergySource]:
    """The energy counter if every GPU has one, else power sampling, else nothing."""
    for cls in (NvmlEnergyCounter, NvmlPowerSampler):
        try:
            return [cls(indices, nvml)]
        except SourceUnavailable:
            continue
    return []
