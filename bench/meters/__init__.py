"""Meters for time, memory and energy: each a context manager with ``available()``.

No framework code lives in a meter: the caller passes ``sync`` / peak-memory callables.
Stack meters with ``stacked``::

    with stacked(HostMemoryMeter(), DeviceMemoryMeter(reset, read), EnergyMeter(srcs, sync)) as (
        host, dev, energy,
    ):
        timing = StepTimer().sample(step, sync_out, ...)
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextlib import AbstractContextManager
from typing import Any

from bench.meters.energy import (
    ESTIMATED,
    MEASURED_COUNTER,
    MEASURED_SAMPLED,
    MIN_WINDOW_PERIODS,
    MIN_WINDOW_S,
    PROVENANCES,
    UNAVAILABLE,
    EnergyCounter,
    EnergyResult,
    EnergySource,
    EnergyWindow,
    EstimatedEnergy,
    PowerSampler,
    SourceUnavailable,
    energy_j_per_1k_recs,
    energy_j_per_step,
    energy_metrics,
    power_limit_fault,
    unavailable_energy,
    window_energy_metrics,
)
from bench.meters.energy_meter import (
    EnergyMeter,
    default_energy_sources,
    measure_energy_window,
    min_window_s,
)
from bench.meters.memory import (
    DeviceMemoryMeter,
    HostMemoryMeter,
    current_rss_bytes,
    jax_peak_fns,
    process_peak_rss_bytes,
    torch_cuda_peak_fns,
)
from bench.meters.nvml import NvmlEnergyCounter, NvmlPowerSampler, nvml_sources
from bench.meters.rapl import RaplCounter, rapl_sources
from bench.meters.timing import (
    SampleResult,
    StepTimer,
    TimingResult,
    WarmupResult,
    median_ci_indices,
    summarize,
)


@contextlib.contextmanager
def stacked(*meters: AbstractContextManager[Any]) -> Iterator[tuple[Any, ...]]:
    """Enter meters in order in one ExitStack, exit them in reverse; yield what they entered.

    Put the meter whose edges matter most (energy, with its device sync) last, so it sits
    innermost and the others' start/stop work falls outside its window.
    """
    with contextlib.ExitStack() as stack:
        yield tuple(stack.enter_context(m) for m in meters)


__all__ = [
    "ESTIMATED",
    "MEASURED_COUNTER",
    "MEASURED_SAMPLED",
    "MIN_WINDOW_PERIODS",
    "MIN_WINDOW_S",
    "PROVENANCES",
    "UNAVAILABLE",
    "DeviceMemoryMeter",
    "EnergyCounter",
    "EnergyMeter",
    "EnergyResult",
    "EnergySource",
    "EnergyWindow",
    "EstimatedEnergy",
    "HostMemoryMeter",
    "NvmlEnergyCounter",
    "NvmlPowerSampler",
    "PowerSampler",
    "RaplCounter",
    "SampleResult",
    "SourceUnavailable",
    "StepTimer",
    "TimingResult",
    "WarmupResult",
    "current_rss_bytes",
    "default_energy_sources",
    "energy_j_per_1k_recs",
    "energy_j_per_step",
    "energy_metrics",
    "jax_peak_fns",
    "measure_energy_window",
    "median_ci_indices",
    "min_window_s",
    "nvml_sources",
    "power_limit_fault",
    "process_peak_rss_bytes",
    "rapl_sources",
    "stacked",
    "summarize",
    "torch_cuda_peak_fns",
    "unavailable_energy",
    "window_energy_metrics",
]
