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


# An energy window lasts at least MIN_WINDOW_S and at least MIN_WINDOW_PERIODS periods of the
# source's counter, so one counter period is at most 1/MIN_WINDOW_PERIODS (5%) of the window.
MIN_WINDOW_S = 0.5
MIN_WINDOW_PERIODS = 20


class EnergyCounter(ABC):
    """A cumulative energy counter; differences of ``read_j`` are joules used.

    ``period_s`` is how often the counter's value moves (NVML ~0.1 s, RAPL ~1 ms): the window
    length and the error bound are stated in these periods. ``power_limit_w()`` is the power
    the hardware enforces (None where unknown): a mean power above it is a measurement fault.
    """

    provenance = MEASURED_COUNTER
    name: str
    period_s: float = 0.1

    @abstractmethod
    def read_j(self) -> float: ...

    def power_limit_w(self) -> float | None:
        return None


class PowerSampler(ABC):
    """An instantaneous power reading; integrated over time by ``EnergyMeter``.

    ``period_s`` is the span the reading averages over (NVML board power: 1 s on Ampere+).
    """

    provenance = MEASURED_SAMPLED
    name: str
    period_s: float = 1.0

    @abstractmethod
    def read_w(self) -> float: ...

    def power_limit_w(self) -> float | None:
        return None


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


# --- the energy window ------------------------------------------------------------------------


@dataclass(frozen=True)
class EnergyWindow:
    """Energy over a window of repeated steps, separate from the timing window.

    ``window_s`` runs from the counter update that opened the window to the one that closed it;
    ``steps_s`` from the opening update to the end of the last (synchronised) step; the device
    is idle for ``tail_s = window_s - steps_s`` while the meter waits for the closing update.
    Energy per step = mean power over the window x ``steps_s`` / ``steps``.

    ``rel_error`` bounds the relative error of the mean power (and so of energy per step)::

        rel_error = (period_s + poll_s + tail_s) / window_s

    period_s: a counter read lags the true energy by less than one period, so two edge reads
    are off by less than one period's energy (an edge aligned to an update lags by less than
    one poll, hence the bound also holds, with room, when alignment timed out); poll_s: the
    time between an update and the meter seeing it; tail_s: idle time that dilutes the mean.
    ``fault`` is set (and ``result`` is then ``unavailable``) when the mean power lies above
    the device's power limit by more than ``rel_error``: such a figure is a measurement fault.
    """

    result: EnergyResult
    steps: int
    window_s: float
    steps_s: float
    rel_error: float | None
    aligned: bool = False
    power_limit_w: float | None = None
    fault: str | None = None

    @property
    def energy_j_per_step(self) -> float | None:
        power = self.result.mean_power_w
        if power is None or self.steps <= 0:
            return None
        return power * self.steps_s / self.steps


def power_limit_fault(
    mean_power_w: float | None, rel_error: float | None, limit_w: float | None
) -> str | None:
    """Why ``mean_power_w`` cannot be true, or None: it exceeds ``limit_w`` beyond its bound
    (mean_power_w / (1 + rel_error) > limit_w)."""
    if mean_power_w is None or limit_w is None or limit_w <= 0:
        return None
    low = mean_power_w / (1 + (rel_error or 0.0))
    if low <= limit_w:
        return None
    return (
        f"mean power {mean_power_w:.0f} W (at least {low:.0f} W within the error bound "
        f"{(rel_error or 0.0):.1%}) exceeds the device power limit {limit_w:.0f} W: a "
        "measurement fault, not a figure"
    )


def window_energy_metrics(window: EnergyWindow, samples_per_step: int) -> dict[str, Any]:
    """A point's energy ``metrics`` from an energy window (a fault leaves every figure null)."""
    per_step = window.energy_j_per_step
    return {
        "energy_j_per_step": per_step,
        "energy_j_per_1k_recs": (
            None if per_step is None or samples_per_step <= 0
            else per_step * 1000.0 / samples_per_step
        ),
        "mean_power_w": window.result.mean_power_w,
        "energy_provenance": window.result.provenance,
        "energy_source": window.result.source,
        "energy_rel_error": window.rel_error if window.result.measured else None,
        "energy_window_s": window.window_s,
        "energy_window_steps": window.steps,
        "energy_aligned": window.aligned,
        "power_limit_w": window.power_limit_w,
        "energy_fault": window.fault,
        "energy_note": window.result.note,
    }
