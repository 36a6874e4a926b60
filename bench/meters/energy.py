"""Energy: hardware counters first, power sampling as a fallback, estimates clearly labelled.

Every figure carries its provenance (DESIGN.md "Measurement rules"):
``measured-counter``  difference of a cumulative hardware energy counter (NVML, RAPL);
``measured-sampled``  power readings on a background thread, integrated by the trapezoid rule;
``estimated``         arithmetic on an assumed power (TDP); never shown as a measurement;
``unavailable``       nothing to read: every energy field is None, never 0.

Sources share one small interface: an ``EnergyCounter`` has ``read_j()`` (cumulative joules),
a ``PowerSampler`` has ``read_w()`` (instantaneous watts). The hardware boundary (the pynvml
module, the powercap sysfs root, the file reader) is injected so tests run on fakes.
"""

from __future__ import annotations

import itertools
import os
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType, TracebackType
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


# --- NVML (NVIDIA GPUs) ---------------------------------------------------------------------
# NVML API reference, Device Queries:
#   nvmlDeviceGetTotalEnergyConsumption: "total energy consumption for this GPU in millijoules
#     (mJ) since the driver was last reloaded"; Volta or newer.
#   nvmlDeviceGetPowerUsage: milliwatts; on Ampere (except GA100) and newer it is a 1 s average,
#     so sampling it smooths short phases. That is why it is only the fallback.


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

    @classmethod
    def available(
        cls, indices: Sequence[int] | None = None, nvml: ModuleType | None = None
    ) -> bool:
        return _constructs(lambda: cls(indices, nvml))


class NvmlEnergyCounter(_NvmlGpus, EnergyCounter):
    """Sum of NVML total-energy counters over the given GPUs."""

    _what = "NVML energy counter"

    def read_j(self) -> float:
        get = self._nvml.nvmlDeviceGetTotalEnergyConsumption
        return sum(int(get(h)) for h in self._handles) / 1e3  # mJ -> J

    _read = read_j


class NvmlPowerSampler(_NvmlGpus, PowerSampler):
    """Sum of NVML board power over the given GPUs, in watts."""

    _what = "NVML power"

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


# --- RAPL (CPU package and DRAM) --------------------------------------------------------------
# Linux powercap sysfs (Documentation/ABI/testing/sysfs-class-powercap,
# Documentation/power/powercap/powercap.rst): each zone has `name`, `energy_uj` (cumulative,
# microjoules) and `max_energy_range_uj` (the counter's range; it wraps to 0 past it).
# /sys/class/powercap lists every zone flat: intel-rapl:0 is package 0, intel-rapl:0:N are its
# subzones. core/uncore subzones are inside the package figure and are skipped. A `dram` subzone
# is not: the package domain covers cores and uncore, DRAM is a separate RAPL domain (Intel SDM
# vol. 3B, "RAPL interfaces"), so it is added. `psys` (whole platform, package included) is
# skipped to avoid counting the package twice. intel-rapl-mmio:* duplicates the package zone
# through another interface and is not matched. Since Linux 5.10 energy_uj is root-only
# (CVE-2020-8694), so an unprivileged run finds RAPL unavailable.

RAPL_ROOT = Path("/sys/class/powercap")


def _read_sysfs(path: Path) -> str:
    return path.read_text()


@dataclass
class _RaplZone:
    label: str
    energy_path: Path
    max_range_uj: int
    last_uj: int
    total_uj: int = 0


def _rapl_zone_dirs(root: Path) -> list[tuple[tuple[int, ...], Path]]:
    zones = []
    for path in root.glob("intel-rapl:*"):
        try:
            key = tuple(int(p) for p in path.name.split(":")[1:])
        except ValueError:
            continue
        zones.append((key, path))
    return sorted(zones)


class RaplCounter(EnergyCounter):
    """Sum of RAPL package zones plus DRAM zones, wrap-around handled, in joules.

    ``read_j`` is monotonic as long as it is called at least once per counter range (minutes
    to hours depending on the CPU); ``EnergyMeter`` polls counters for that reason.
    """

    def __init__(
        self, root: Path | str = RAPL_ROOT, read_text: Callable[[Path], str] = _read_sysfs
    ) -> None:
        self._read = read_text
        self._lock = threading.Lock()
        self._zones: list[_RaplZone] = []
        try:
            for key, path in _rapl_zone_dirs(Path(root)):
                name = read_text(path / "name").strip()
                top_level = len(key) == 1
                if not (
                    (top_level and (name.startswith("package") or name == "dram"))
                    or (len(key) == 2 and name == "dram")
                ):
                    continue
                label = name if top_level else f"{name}-{key[0]}"
                self._zones.append(
                    _RaplZone(
                        label=label,
                        energy_path=path / "energy_uj",
                        max_range_uj=int(read_text(path / "max_energy_range_uj")),
                        last_uj=int(read_text(path / "energy_uj")),
                    )
                )
        except OSError as e:  # PermissionError on energy_uj for non-root since Linux 5.10
            raise SourceUnavailable(f"RAPL: {e}") from e
        if not any(z.label.startswith("package") for z in self._zones):
            raise SourceUnavailable(f"RAPL: no package zone under {root}")
        # A single socket's DRAM reads "dram", not "dram-0".
        if sum(z.label.startswith("dram") for z in self._zones) == 1:
            for z in self._zones:
                if z.label.startswith("dram"):
                    z.label = "dram"
        self.name = "rapl:" + ",".join(z.label for z in self._zones)

    @classmethod
    def available(
        cls, root: Path | str = RAPL_ROOT, read_text: Callable[[Path], str] = _read_sysfs
    ) -> bool:
        return _constructs(lambda: cls(root, read_text))

    def read_j(self) -> float:
        with self._lock:  # EnergyMeter's poll thread and the caller may both read
            for z in self._zones:
                now = int(self._read(z.energy_path))
                delta = now - z.last_uj
                if delta < 0:  # wrapped past max_energy_range_uj
                    delta += z.max_range_uj
                z.total_uj += delta
                z.last_uj = now
            return sum(z.total_uj for z in self._zones) / 1e6  # uJ -> J


def rapl_sources(
    root: Path | str = RAPL_ROOT, read_text: Callable[[Path], str] = _read_sysfs
) -> list[EnergySource]:
    try:
        return [RaplCounter(root, read_text)]
    except SourceUnavailable:
        return []


def _constructs(make: Callable[[], object]) -> bool:
    try:
        make()
    except SourceUnavailable:
        return False
    return True


# --- choosing sources -------------------------------------------------------------------------


def _nvml_indices_for_cuda(device_index: int | None) -> list[int] | None:
    """Map a CUDA device index to NVML indices through CUDA_VISIBLE_DEVICES.

    NVML ignores CUDA_VISIBLE_DEVICES and numbers GPUs in PCI order; CUDA renumbers the visible
    ones (and orders them fastest-first unless CUDA_DEVICE_ORDER=PCI_BUS_ID). Only an integer
    list is mapped; UUID or MIG entries give [] (unavailable) rather than the wrong GPU.
    """
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is None or not visible.strip():
        return None if device_index is None else [device_index]
    entries = [e.strip() for e in visible.split(",") if e.strip()]
    if not all(e.isdigit() for e in entries):
        return []
    mapped = [int(e) for e in entries]
    if device_index is None:
        return mapped
    return [mapped[device_index]] if 0 <= device_index < len(mapped) else []


def default_energy_sources(
    device_kind: str,
    device_index: int | None = None,
    *,
    nvml: ModuleType | None = None,
    rapl_root: Path | str = RAPL_ROOT,
) -> list[EnergySource]:
    """The measurable energy sources for a device, best first; [] when there are none.

    "cuda": NVML counter (else NVML power sampling) for that GPU, or all visible GPUs when
    ``device_index`` is None. "cpu": RAPL package + DRAM counters. Anything else: [] (TPU has
    no public energy counter or power reading visible from the host VM; Apple's counters need
    `powermetrics` as root).
    """
    if device_kind == "cuda":
        indices = _nvml_indices_for_cuda(device_index)
        if indices == []:
            return []
        return nvml_sources(indices, nvml)
    if device_kind == "cpu":
        return rapl_sources(rapl_root)
    return []


# --- the meter --------------------------------------------------------------------------------


class EnergyMeter:
    """Energy used between ``__enter__`` and ``__exit__`` by the given sources, summed.

    ``sync()`` (optional, no arguments) is called at both edges so the device's queued work
    falls inside the window. Counters are read at the edges and polled every ``counter_poll_s``
    (catches RAPL wrap-around in long runs); power samplers are read every ``interval_s`` and
    integrated with the trapezoid rule. With no sources the result is "unavailable". NVML's
    counter moves in steps (every 100 ms on an H200), so windows under ~1 s read coarsely, and
    a counter that did not move at all in the window is "unavailable", never 0 J.
    """

    def __init__(
        self,
        sources: Sequence[EnergySource] = (),
        sync: Callable[[], object] | None = None,
        *,
        interval_s: float = 0.05,
        counter_poll_s: float = 1.0,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self._counters = [s for s in sources if isinstance(s, EnergyCounter)]
        self._samplers = [s for s in sources if isinstance(s, PowerSampler)]
        if len(self._counters) + len(self._samplers) != len(sources):
            raise TypeError("energy sources must be EnergyCounter or PowerSampler instances")
        self._sync = sync
        self.interval_s = interval_s
        self.counter_poll_s = counter_poll_s
        self._clock = clock
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._samples: list[tuple[float, list[float]]] = []
        self._start_j: list[float] = []
        self._t0 = 0.0
        self._errors: list[str] = []
        self._start_failed = False
        self.result: EnergyResult | None = None

    @staticmethod
    def available(device_kind: str, device_index: int | None = None) -> bool:
        return bool(default_energy_sources(device_kind, device_index))

    # Fields of the result, so the meter reads like the other meters after exit.
    @property
    def energy_j(self) -> float | None:
        return self.result.energy_j if self.result else None

    @property
    def mean_power_w(self) -> float | None:
        return self.result.mean_power_w if self.result else None

    @property
    def duration_s(self) -> float | None:
        return self.result.duration_s if self.result else None

    @property
    def provenance(self) -> str:
        return self.result.provenance if self.result else UNAVAILABLE

    @property
    def source(self) -> str:
        return self.result.source if self.result else "none"

    def _read_power(self) -> list[float]:
        return [s.read_w() for s in self._samplers]

    def _run(self) -> None:
        tick = self.interval_s if self._samplers else self.counter_poll_s
        next_poll = self._clock() + self.counter_poll_s
        while not self._stop.wait(tick):
            now = self._clock()
            try:
                if self._samplers:
                    self._samples.append((now, self._read_power()))
                if self._counters and now >= next_poll:
                    for c in self._counters:
                        c.read_j()
                    next_poll = now + self.counter_poll_s
            except Exception as e:  # a failed read drops one sample; the edges decide validity
                self._errors.append(f"{type(e).__name__}: {e}")

    def __enter__(self) -> EnergyMeter:
        self.result = None
        self._samples, self._errors, self._start_failed = [], [], False
        if self._sync is not None:
            self._sync()
        self._t0 = self._clock()
        try:
            self._start_j = [c.read_j() for c in self._counters]
            if self._samplers:
                self._samples.append((self._t0, self._read_power()))
        except Exception as e:  # the hardware said no; report unavailable, not a crash
            self._errors.append(f"{type(e).__name__}: {e}")
            self._start_failed = True
        if self._counters or self._samplers:
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name="energy-meter", daemon=True)
            self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._sync is not None and exc_type is None:
            self._sync()
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        t1 = self._clock()
        self.result = self._finish(t1)

    def _finish(self, t1: float) -> EnergyResult:
        duration = t1 - self._t0
        if not (self._counters or self._samplers):
            return unavailable_energy(duration)
        if self._start_failed:
            return unavailable_energy(duration, f"energy read failed: {self._errors[0]}")
        by_source: dict[str, float] = {}
        try:
            for c, start in zip(self._counters, self._start_j, strict=True):
                by_source[c.name] = c.read_j() - start
            if self._samplers:
                self._samples.append((t1, self._read_power()))
        except Exception as e:
            return unavailable_energy(duration, f"energy read failed: {type(e).__name__}: {e}")
        if any(v < 0 for v in by_source.values()):
            return unavailable_energy(duration, "energy counter went backwards (driver reload?)")
        stalled = [name for name, v in by_source.items() if v == 0]
        if stalled:  # a powered device uses energy: 0 J means no counter update in the window
            return unavailable_energy(
                duration, f"energy counter {', '.join(stalled)} did not advance in "
                f"{duration:.3g} s: the window is shorter than the counter's update interval "
                "(raise measure.min_time_s)")
        for i, s in enumerate(self._samplers):
            by_source[s.name] = _trapezoid([(t, w[i]) for t, w in self._samples])
        energy = sum(by_source.values())
        names = [c.name for c in self._counters] + [s.name for s in self._samplers]
        if self._samplers:
            provenance = MEASURED_SAMPLED  # the weakest part names the whole
            note = f"trapezoid over {len(self._samples)} power samples, ~{self.interval_s} s apart"
        else:
            provenance = MEASURED_COUNTER
            note = "difference of cumulative energy counters"
        if self._errors:
            note += f"; {len(self._errors)} reads failed ({self._errors[0]})"
        return EnergyResult(
            energy_j=energy,
            mean_power_w=energy / duration if duration > 0 else None,
            duration_s=duration,
            provenance=provenance,
            source="+".join(names),
            note=note,
            by_source_j=by_source,
        )


def _trapezoid(samples: Sequence[tuple[float, float]]) -> float:
    pts = sorted(samples)
    return sum((w0 + w1) / 2 * (t1 - t0) for (t0, w0), (t1, w1) in itertools.pairwise(pts))


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
