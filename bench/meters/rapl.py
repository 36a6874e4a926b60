"""CPU energy: the RAPL package and DRAM counters of Linux powercap sysfs."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from bench.meters.energy import (
    EnergyCounter,
    EnergySource,
    SourceUnavailable,
    constructs,
)

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
    to hours depending on the CPU); ``EnergyMeter`` polls counters for that reason. RAPL
    updates about every millisecond, so an energy window aligns to an update at once.
    """

    period_s = 0.001

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
        return constructs(lambda: cls(root, read_text))

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
