"""Re-read a result file's energy under the energy-window rules (bench/meters/energy.py).

Files written before the energy window took energy over the timed phase only, unaligned to
the counter's updates. Such a figure is off by less than one counter period's energy, so its
relative error bound is ``period_s / window_s`` with ``window_s = energy_j_per_step x
len(step samples) / mean_power_w``. A point whose mean power exceeds the board's power limit
(the datasheet's, since those files record none) beyond that bound is a measurement fault.
Reads JSON lines directly: ``machine/`` may not import ``results/``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from bench.machine.datasheet import datasheet_power_limit
from bench.machine.roofs import parse_device

NVML_PERIOD_S = 0.1  # NvmlEnergyCounter.period_s (meters may not be imported from machine)


@dataclass(frozen=True)
class EnergyAudit:
    point_id: str
    label: str
    mean_power_w: float
    window_s: float
    rel_error: float
    power_limit_w: float | None
    status: str  # "ok", "above-limit-within-bound" or "fault"

    @property
    def lowest_w(self) -> float:
        """The lowest mean power consistent with the reading and its bound."""
        return self.mean_power_w / (1 + self.rel_error)


def _label(point: dict) -> str:
    keys = ("scenario", "framework", "mode", "preset", "batch_size", "dtype", "device")
    return " ".join(str(point.get(k)) for k in keys if point.get(k) is not None)


def audit_energy(path: Path | str, period_s: float = NVML_PERIOD_S) -> list[EnergyAudit]:
    """Every ok point of a result file with a counter energy reading, re-judged."""
    gpus: list[dict] = []
    out = []
    for line in Path(path).read_text().splitlines():
        rec = json.loads(line) if line.strip() else {}
        if rec.get("kind") == "run":
            gpus = (rec.get("env") or {}).get("gpus") or []
        m = rec.get("metrics") or {}
        power, per_step = m.get("mean_power_w"), m.get("energy_j_per_step")
        n = len(rec.get("samples_ms") or []) or (m.get("step_ms") or {}).get("n")
        if rec.get("kind") != "point" or rec.get("status") != "ok" or not power or not per_step:
            continue
        window = m.get("energy_window_s") or per_step * n / power
        rel = m.get("energy_rel_error") or period_s / window
        point = rec.get("point") or {}
        kind, index = parse_device(str(point.get("device", "cuda:0")))
        name = gpus[index]["name"] if kind == "cuda" and index < len(gpus) else None
        found = datasheet_power_limit(name) if name else None
        limit = m.get("power_limit_w") or (found[0] if found else None)
        status = "ok"
        if limit is not None and power > limit:
            status = "fault" if power / (1 + rel) > limit else "above-limit-within-bound"
        out.append(EnergyAudit(str(rec.get("id")), _label(point), power, window, rel, limit,
                               status))
    return out
