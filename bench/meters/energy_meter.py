"""EnergyMeter: the energy a device used over a timed window, from the best source it has."""

from __future__ import annotations

import itertools
import os
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType, TracebackType

from bench.meters.energy import (
    MEASURED_COUNTER,
    MEASURED_SAMPLED,
    MIN_WINDOW_PERIODS,
    MIN_WINDOW_S,
    UNAVAILABLE,
    EnergyCounter,
    EnergyResult,
    EnergySource,
    EnergyWindow,
    PowerSampler,
    power_limit_fault,
    unavailable_energy,
)
from bench.meters.nvml import nvml_sources
from bench.meters.rapl import RAPL_ROOT, rapl_sources

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


# --- the energy window ------------------------------------------------------------------------


def min_window_s(sources: Sequence[EnergySource]) -> float:
    """MIN_WINDOW_PERIODS of the slowest counter, and never under MIN_WINDOW_S."""
    periods = [s.period_s for s in sources if isinstance(s, EnergyCounter)]
    return max([MIN_WINDOW_S] + [MIN_WINDOW_PERIODS * p for p in periods])


def _power_limit(sources: Sequence[EnergySource]) -> float | None:
    limits = []
    for s in sources:
        try:
            limits.append(s.power_limit_w())
        except Exception:  # a limit we cannot read is unknown, not a failed measurement
            limits.append(None)
    return None if not limits or None in limits else sum(limits)  # type: ignore[arg-type]


def _read_counters(counters: Sequence[EnergyCounter]) -> list[float]:
    return [c.read_j() for c in counters]


def _await_update(
    counters: Sequence[EnergyCounter],
    clock: Callable[[], float],
    sleep: Callable[[float], object],
    poll_s: float,
    timeout_s: float,
) -> tuple[float, list[float], bool]:
    """Poll until any counter's value changes (or ``timeout_s``): (time, values, moved)."""
    first = _read_counters(counters)
    start = clock()
    while True:
        values = _read_counters(counters)
        now = clock()
        if values != first:
            return now, values, True
        if now - start >= timeout_s:
            return now, values, False
        sleep(poll_s)


def measure_energy_window(
    step: Callable[[], object],
    sync: Callable[[], object] | None,
    sources: Sequence[EnergySource],
    *,
    window_s: float | None = None,
    poll_s: float = 0.001,
    clock: Callable[[], float] = time.perf_counter,
    sleep: Callable[[float], object] = time.sleep,
) -> EnergyWindow:
    """Repeat ``step`` (each followed by ``sync``) for an energy window of at least
    ``window_s`` (default ``min_window_s(sources)``), aligned to counter updates.

    Counters: wait for an update, open the window there, run steps until the window is long
    enough, wait for the next update and close there; a counter that moves on every read
    (RAPL) aligns at once. Power samplers (the fallback) integrate over the same steps. The
    error bound and the power-limit check are described in ``EnergyWindow``.
    """
    sync = sync or (lambda: None)
    want = min_window_s(sources) if window_s is None else window_s
    counters = [s for s in sources if isinstance(s, EnergyCounter)]
    limit = _power_limit(sources)
    if not sources:
        return EnergyWindow(unavailable_energy(), 0, 0.0, 0.0, None)
    if not counters:
        return _sampled_window(step, sync, sources, want, clock, limit)
    period = max(c.period_s for c in counters)
    timeout = max(3 * period, 10 * poll_s)
    sync()
    try:
        t0, e0, aligned0 = _await_update(counters, clock, sleep, poll_s, timeout)
    except Exception as e:
        note = f"energy read failed: {type(e).__name__}: {e}"
        return EnergyWindow(unavailable_energy(note=note), 0, 0.0, 0.0, None)
    steps, t_end = 0, t0
    while steps == 0 or t_end - t0 < want:
        step()
        sync()
        steps += 1
        t_end = clock()
    try:
        t1, e1, aligned1 = _await_update(counters, clock, sleep, poll_s, timeout)
    except Exception as e:
        note = f"energy read failed: {type(e).__name__}: {e}"
        return EnergyWindow(unavailable_energy(t_end - t0, note), steps, t_end - t0,
                            t_end - t0, None)
    window, steps_s = t1 - t0, t_end - t0
    by_source = {c.name: b - a for c, a, b in zip(counters, e0, e1, strict=True)}
    result: EnergyResult
    if any(v < 0 for v in by_source.values()):
        result = unavailable_energy(window, "energy counter went backwards (driver reload?)")
    elif any(v == 0 for v in by_source.values()):
        result = unavailable_energy(window, f"energy counter did not advance in {window:.3g} s")
    else:
        energy = sum(by_source.values())
        aligned = aligned0 and aligned1
        result = EnergyResult(
            energy_j=energy, mean_power_w=energy / window, duration_s=window,
            provenance=MEASURED_COUNTER, source="+".join(by_source),
            note=(f"counter difference over {steps} steps, {window:.3g} s window "
                  + ("aligned to counter updates" if aligned else "not aligned (no update "
                     f"within {timeout:.3g} s)")),
            by_source_j=by_source)
    rel = (period + poll_s + (window - steps_s)) / window if window > 0 else None
    return _checked(EnergyWindow(result, steps, window, steps_s, rel,
                                 aligned0 and aligned1, limit))


def _sampled_window(
    step: Callable[[], object],
    sync: Callable[[], object],
    sources: Sequence[EnergySource],
    want: float,
    clock: Callable[[], float],
    limit: float | None,
) -> EnergyWindow:
    steps = 0
    with EnergyMeter(sources, sync, clock=clock) as meter:
        t0 = clock()
        while steps == 0 or clock() - t0 < want:
            step()
            sync()
            steps += 1
    r = meter.result
    assert r is not None
    window = r.duration_s or 0.0
    period = max(s.period_s for s in sources)
    rel = (period + meter.interval_s) / window if window > 0 and r.measured else None
    return _checked(EnergyWindow(r, steps, window, window, rel, False, limit))


def _checked(window: EnergyWindow) -> EnergyWindow:
    """The window, or its fault: a mean power above the power limit beyond its bound."""
    fault = power_limit_fault(window.result.mean_power_w, window.rel_error, window.power_limit_w)
    if fault is None:
        return window
    r = window.result
    return EnergyWindow(
        unavailable_energy(r.duration_s, f"{fault} ({r.source}: {r.energy_j:.4g} J)"),
        window.steps, window.window_s, window.steps_s, window.rel_error, window.aligned,
        window.power_limit_w, fault)
