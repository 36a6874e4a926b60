"""Energy: hardware counters first, power sampling as a fallback, estimates clearly labelled.

Every figure carries its provenance (DESIGN.md "Measurement rules"):
``measured-counter``  difference of a cumulative hardware energy counter (NVML, RAPL);
``measured-sampled``  power readings on a background thread, integrated by the trapezoid rule;
``estimated``         arithmetic on an assumed power (TDP); never shown as a measurement;
``unavailable``       nothing to read: every energy field is None, never 0.

Sources share one small interface: an ``EnergyCounter`` has ``read_j()`` (cumulative joules),
a ``PowerSampler`` has ``read_w()`` (instantaneous watts). The sources live one file each
(``nvml.py``, ``rapl.py``); ``energy_meter.py`` picks the ones a device has and measures with
them. The hardware boundary (the pynvml module, the powercap sysfs root, the file reader) is
injected so tests run on fakes.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

MEASURED_COUNTER = "measured-counter"
MEASURED_SAMPLED = "measured-sampled"
ESTIMATED = "estimated"
UNAVAILABLE = "unavailable"
PROVENANCES = (MEASURED_COUNTER, MEASURED_SAMPLED, ESTIMATED, UNAVAILABLE)


@dataclass(frozen=True)
class EnergyResult:
    energy_j: float | None
    mean_power_w: float | None
    duration_s: float | None
    provenance: str
    source: str  # e.g. "nvml:0,1", "rapl:package-0,dram", "estimate:tdp", "none"
    note: str = ""
    by_source_j: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.provenance not in PROVENANCES:
            raise ValueError(f"unknown energy provenance {self.provenance!r}")
        if self.provenance == UNAVAILABLE and (
            self.energy_j is not None or self.mean_power_w is not None
        ):
            raise ValueError("an unavailable energy result carries no energy or power")
        if self.provenance == ESTIMATED and not self.note:
            raise ValueError("an estimate must state its assumption in `note`")

    @property
    def measured(self) -> bool:
        return self.provenance in (MEASURED_COUNTER, MEASURED_SAMPLED)


def unavailable_energy(
    duration_s: float | None = None, note: str = "no energy counter or power sensor"
) -> EnergyResult:
    return EnergyResult(None, None, duration_s, UNAVAILABLE, "none", note)


class EnergyCounter(ABC):
    """A cumulative energy counter; differences of ``read_j`` are joules used."""

    provenance = MEASURED_COUNTER
    name: str

    @abstractmethod
    def read_j(self) -> float: ...


class PowerSampler(ABC):
    """An instantaneous power reading; integrated over time by ``EnergyMeter``."""

    provenance = MEASURED_SAMPLED
    name: str

    @abstractmethod
    def read_w(self) -> float: ...


EnergySource = EnergyCounter | PowerSampler


class SourceUnavailable(RuntimeError):
    """Raised by a source's constructor when the hardware cannot be read."""


def constructs(make: Callable[[], object]) -> bool:
    try:
        make()
    except SourceUnavailable:
        return False
    return True


# --- estimates and derived figures ----------------------------------------------------------


@dataclass(frozen=True)
class EstimatedEnergy:
    """Assumed power x duration. Not a measurement; the caller decides whether to report it."""

    tdp_w: float
    utilization: float = 1.0

    def __post_init__(self) -> None:
        if self.tdp_w <= 0 or not 0 < self.utilization <= 1:
            raise ValueError(f"need tdp_w > 0 and 0 < utilization <= 1, got {self}")

    @property
    def note(self) -> str:
        return (
            f"TDP {self.tdp_w:g} W x utilization {self.utilization:.2f} x duration; "
            "not a measurement"
        )

    def result(self, duration_s: float) -> EnergyResult:
        power = self.tdp_w * self.utilization
        return EnergyResult(
            energy_j=power * duration_s,
            mean_power_w=power,
            duration_s=duration_s,
            provenance=ESTIMATED,
            source="estimate:tdp",
            note=self.note,
        )


def energy_j_per_step(energy_j: float | None, steps: int) -> float | None:
    if energy_j is None or steps <= 0:
        return None
    return energy_j / steps


def energy_j_per_1k_recs(energy_j: float | None, recs: int) -> float | None:
    """Joules per 1000 recommendations (one recommendation = one scored sample)."""
    if energy_j is None or recs <= 0:
        return None
    return energy_j * 1000.0 / recs


def energy_metrics(result: EnergyResult, *, steps: int, recs: int) -> dict[str, Any]:
    """The four energy keys of a point's ``metrics`` in the result schema."""
    return {
        "energy_j_per_step": energy_j_per_step(result.energy_j, steps),
        "energy_j_per_1k_recs": energy_j_per_1k_recs(result.energy_j, recs),
        "mean_power_w": result.mean_power_w,
        "energy_provenance": result.provenance,
    }
