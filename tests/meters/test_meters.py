"""Meters: step timing and its summary, host/device memory, energy sources and provenance."""

from __future__ import annotations

import math
import mmap
import sys
import time
import types
from pathlib import Path

import numpy as np
import pytest

from bench.meters import (
    DeviceMemoryMeter,
    EnergyMeter,
    EnergyResult,
    EstimatedEnergy,
    HostMemoryMeter,
    NvmlEnergyCounter,
    NvmlPowerSampler,
    RaplCounter,
    StepTimer,
    default_energy_sources,
    energy_j_per_1k_recs,
    energy_j_per_step,
    energy_metrics,
    median_ci_indices,
    nvml_sources,
    rapl_sources,
    stacked,
    summarize,
    torch_cuda_peak_fns,
    unavailable_energy,
)

MS = 1_000_000  # ns per ms


def wait_until(done, timeout_s: float = 20.0, what: str = "") -> None:
    """Poll ``done()`` until it holds: a sampling thread on a loaded machine can fall far
    behind its interval, so a test waits for the samples it needs instead of a fixed time."""
    deadline = time.monotonic() + timeout_s
    while not done():
        if time.monotonic() > deadline:
            raise AssertionError(f"not done after {timeout_s:g} s: {what or done}")
        time.sleep(0.002)

# --- StepTimer ----------------------------------------------------------------------------------


class FakeDevice:
    """A clock in ns that the fake step and sync advance, and a log of what sync saw."""

    def __init__(self, step_ms: list[float], sync_ms: float = 0.0) -> None:
        self.now = 0
        self.step_ms = step_ms  # duration of call i; the last value repeats
        self.sync_ms = sync_ms
        self.calls = 0
        self.synced: list[int] = []

    def clock(self) -> int:
        return self.now

    def step(self) -> int:
        self.now += int(self.step_ms[min(self.calls, len(self.step_ms) - 1)] * MS)
        self.calls += 1
        return self.calls  # the "output" to wait on

    def sync(self, out: int) -> None:
        assert out == self.calls, "sync must wait on the step that just ran"
        self.now += int(self.sync_ms * MS)
        self.synced.append(out)


def test_timer_separates_compile_and_warmup_and_syncs_inside_each_sample() -> None:
    dev = FakeDevice([500.0, 10.0], sync_ms=2.0)
    res = StepTimer(clock_ns=dev.clock).measure(
        dev.step,
        dev.sync,
        warmup_iters=3,
        min_time_s=0.06,
        min_iters=2,
        max_iters=100,
        max_time_s=10.0,
    )
    assert res.compile_s == pytest.approx(0.502)  # first call alone, its sync included
    assert res.warmup_s == pytest.approx(3 * 0.012)
    assert res.warmup_iters == 3
    # Each sample is step + sync: the sync is inside the timed region.
    assert res.samples_ms == [12.0] * 5  # 5 x 12 ms = 60 ms reaches min_time_s
    assert res.stop_reason == "target"
    assert dev.synced == list(range(1, 1 + 1 + 3 + 5))  # every call synced, in order
    assert res.sampled_s == pytest.approx(0.060)


def test_timer_honours_min_iters_max_iters_and_max_time() -> None:
    timer = lambda dev: StepTimer(clock_ns=dev.clock)  # noqa: E731

    dev = FakeDevice([1.0])
    s = timer(dev).sample(
        dev.step, dev.sync, min_time_s=0.0, min_iters=12, max_iters=50, max_time_s=1.0
    )
    assert (len(s.samples_ms), s.stop_reason) == (12, "target")

    dev = FakeDevice([1.0])
    s = timer(dev).sample(
        dev.step, dev.sync, min_time_s=5.0, min_iters=3, max_iters=7, max_time_s=10.0
    )
    assert (len(s.samples_ms), s.stop_reason) == (7, "max_iters")

    dev = FakeDevice([10.0])
    s = timer(dev).sample(
        dev.step, dev.sync, min_time_s=0.5, min_iters=100, max_iters=1000, max_time_s=0.5
    )
    assert (len(s.samples_ms), s.stop_reason) == (50, "max_time")

    with pytest.raises(ValueError):
        timer(dev).sample(dev.step, dev.sync, min_time_s=0, min_iters=5, max_iters=4, max_time_s=1)
    with pytest.raises(ValueError):
        timer(dev).sample(dev.step, dev.sync, min_time_s=2, min_iters=1, max_iters=4, max_time_s=1)


def test_timer_on_the_real_clock() -> None:
    res = StepTimer().measure(
        lambda: time.sleep(0.002),
        lambda _: None,
        warmup_iters=1,
        min_time_s=0.02,
        min_iters=3,
        max_iters=1000,
        max_time_s=5.0,
    )
    assert res.n >= 3 and min(res.samples_ms) >= 2.0
    assert res.summary()["n"] == res.n


# --- summarize ----------------------------------------------------------------------------------


def test_summarize_matches_numpy() -> None:
    x = np.random.default_rng(0).lognormal(mean=1.0, sigma=0.3, size=101)
    s = summarize(x.tolist())
    p = lambda q: float(np.percentile(x, q))  # noqa: E731
    assert s["n"] == 101
    assert s["median"] == pytest.approx(float(np.median(x)))
    assert s["p90"] == pytest.approx(p(90))
    assert s["p99"] == pytest.approx(p(99))
    assert s["iqr"] == pytest.approx(p(75) - p(25))
    assert s["mean"] == pytest.approx(float(x.mean()))
    assert s["std"] == pytest.approx(float(x.std(ddof=1)))
    assert (s["min"], s["max"]) == (float(x.min()), float(x.max()))
    lo, hi, _ = median_ci_indices(101)
    xs = np.sort(x)
    assert (s["ci_low"], s["ci_high"]) == (xs[lo], xs[hi])
    assert s["ci_low"] <= s["median"] <= s["ci_high"]


def _coverage(n: int, lo: int) -> float:
    # P(x_(lo+1) <= median <= x_(n-lo)) = 1 - 2 P(Bin(n, 1/2) <= lo), computed independently.
    return 1 - 2 * sum(math.comb(n, k) for k in range(lo + 1)) / 2**n


@pytest.mark.parametrize(
    ("n", "expected"),
    # 1-based (6, 15) for n=20 and (40, 61) for n=100 are the textbook table values.
    [(6, (0, 5)), (10, (1, 8)), (20, (5, 14)), (100, (39, 60))],
)
def test_median_ci_order_statistics(n: int, expected: tuple[int, int]) -> None:
    lo, hi, coverage = median_ci_indices(n)
    assert (lo, hi) == expected
    assert coverage == pytest.approx(_coverage(n, lo))
    assert coverage >= 0.95
    assert _coverage(n, lo + 1) < 0.95  # the interval is the narrowest that still covers


def test_summarize_tiny_n_has_no_ci_and_says_why() -> None:
    assert median_ci_indices(5) is None
    s = summarize([3.0, 1.0, 2.0, 5.0, 4.0])
    assert (s["ci_low"], s["ci_high"], s["ci_coverage"]) == (None, None, None)
    assert "too small" in s["ci_method"]
    assert s["null_reasons"]["ci_low"] == "needs >= 6 samples, have 5"
    assert summarize([7.0])["std"] is None
    with pytest.raises(ValueError):
        summarize([])


# --- memory -------------------------------------------------------------------------------------


def test_host_memory_meter_sees_a_200_mb_allocation() -> None:
    assert HostMemoryMeter.available()
    # 200 MB of fresh pages from mmap itself, every page touched: malloc may hand back memory
    # the process already holds (an Engine built earlier in this process keeps freed memory,
    # recmodels/hostmem.py), which would not raise RSS
    with HostMemoryMeter(interval_s=0.005) as m, mmap.mmap(-1, 200_000_000) as a:
        base = m.baseline_rss_bytes
        np.frombuffer(a, dtype=np.uint8)[::4096] = 1
        wait_until(lambda: m.n_samples >= 3 and m.peak_rss_bytes >= base + 150_000_000,
                   what="3 samples, one of them with the 200 MB")
    assert m.baseline_rss_bytes is not None and m.peak_rss_bytes is not None
    assert m.peak_rss_bytes >= m.baseline_rss_bytes + 150_000_000
    assert m.n_samples >= 3


def test_host_memory_meter_with_fake_reader_keeps_the_max() -> None:
    values = iter([100, 300, 200])
    last = [200]

    def read() -> int:
        last[0] = next(values, last[0])
        return last[0]

    with HostMemoryMeter(interval_s=0.001, read_rss=read) as m:
        wait_until(lambda: m.n_samples >= 3, what="3 samples")
    assert (m.baseline_rss_bytes, m.peak_rss_bytes) == (100, 300)


def test_device_memory_meter_resets_at_entry_reads_at_exit() -> None:
    log: list[str] = []
    meter = DeviceMemoryMeter(lambda: log.append("reset"), lambda: log.append("read") or 1234)
    with meter as m:
        assert log == ["reset"]
        assert m.peak_bytes is None
    assert log == ["reset", "read"]
    assert m.peak_bytes == 1234
    assert DeviceMemoryMeter.available(lambda: 1)


def test_device_memory_meter_gives_none_without_a_counter() -> None:
    with DeviceMemoryMeter(None, None) as m:
        pass
    assert m.peak_bytes is None
    assert not DeviceMemoryMeter.available(None)
    with DeviceMemoryMeter(None, lambda: None) as m:  # e.g. JAX on CPU: memory_stats() is None
        pass
    assert m.peak_bytes is None


def test_torch_adapter_without_cuda_is_absent() -> None:
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("has CUDA")
    assert torch_cuda_peak_fns() == (None, None)


# --- RAPL ---------------------------------------------------------------------------------------


def _zone(root: Path, zone: str, name: str, energy_uj: int, max_uj: int = 10**12) -> None:
    d = root / zone
    d.mkdir()
    (d / "name").write_text(name + "\n")
    (d / "energy_uj").write_text(f"{energy_uj}\n")
    (d / "max_energy_range_uj").write_text(f"{max_uj}\n")


def _set(root: Path, zone: str, energy_uj: int) -> None:
    (root / zone / "energy_uj").write_text(f"{energy_uj}\n")


@pytest.fixture
def rapl_tree(tmp_path: Path) -> Path:
    (tmp_path / "intel-rapl").mkdir()  # the control type directory, not a zone
    _zone(tmp_path, "intel-rapl:0", "package-0", 1_000_000)
    _zone(tmp_path, "intel-rapl:0:0", "core", 500_000)  # inside package-0
    _zone(tmp_path, "intel-rapl:0:1", "dram", 200_000)  # a separate domain
    _zone(tmp_path, "intel-rapl:1", "package-1", 999_000_000, max_uj=1_000_000_000)
    _zone(tmp_path, "intel-rapl:2", "psys", 0)  # whole platform: includes the packages
    _zone(tmp_path, "intel-rapl-mmio:0", "package-0", 0)  # same package, other interface
    return tmp_path


def _advance_rapl(root: Path) -> None:
    _set(root, "intel-rapl:0", 6_000_000)  # +5 J
    _set(root, "intel-rapl:0:0", 100_500_000)  # +100 J, must not count
    _set(root, "intel-rapl:0:1", 1_200_000)  # +1 J
    _set(root, "intel-rapl:1", 2_000_000)  # wrapped: +1 J to the range, +2 J after: 3 J
    _set(root, "intel-rapl:2", 50_000_000)  # must not count
    _set(root, "intel-rapl-mmio:0", 5_000_000)  # must not count


def test_rapl_counts_packages_and_dram_once_and_handles_wrap(rapl_tree: Path) -> None:
    counter = RaplCounter(rapl_tree)
    assert counter.name == "rapl:package-0,dram,package-1"
    start = counter.read_j()
    _advance_rapl(rapl_tree)
    assert counter.read_j() - start == pytest.approx(9.0)


def test_energy_meter_over_rapl(rapl_tree: Path) -> None:
    sources = default_energy_sources("cpu", rapl_root=rapl_tree)
    with EnergyMeter(sources) as e:
        _advance_rapl(rapl_tree)
    assert e.energy_j == pytest.approx(9.0)
    assert e.provenance == "measured-counter"
    assert e.source == "rapl:package-0,dram,package-1"
    assert e.mean_power_w == pytest.approx(9.0 / e.duration_s)


def test_rapl_unreadable_or_missing_is_unavailable(rapl_tree: Path) -> None:
    def read_text(path: Path) -> str:
        if path.name == "energy_uj":  # root-only since Linux 5.10 (CVE-2020-8694)
            raise PermissionError(13, "Permission denied", str(path))
        return path.read_text()

    assert RaplCounter.available(rapl_tree)
    assert not RaplCounter.available(rapl_tree, read_text)
    assert rapl_sources(rapl_tree, read_text) == []
    assert default_energy_sources("cpu", rapl_root=rapl_tree / "absent") == []
    with EnergyMeter(rapl_sources(rapl_tree, read_text)) as e:
        pass
    assert e.provenance == "unavailable"
    assert (e.energy_j, e.mean_power_w) == (None, None)
    assert e.duration_s is not None


# --- NVML ---------------------------------------------------------------------------------------


class FakeNVMLError(Exception):
    pass


def fake_pynvml(
    energy_mj: list[int],
    power_mw: list[int],
    *,
    counter: bool = True,
    power: bool = True,
    library: bool = True,
) -> types.SimpleNamespace:
    nv = types.SimpleNamespace(energy_mj=list(energy_mj), power_mw=list(power_mw), power_reads=0)
    nv.NVMLError = FakeNVMLError

    def init() -> None:
        if not library:
            raise FakeNVMLError("NVML Shared Library Not Found")

    def total_energy(h: int) -> int:
        if not counter:
            raise FakeNVMLError("Not Supported")
        return nv.energy_mj[h]

    def power_usage(h: int) -> int:
        if not power:
            raise FakeNVMLError("Not Supported")
        nv.power_reads += 1
        return nv.power_mw[h]

    nv.nvmlInit = init
    nv.nvmlDeviceGetCount = lambda: len(nv.energy_mj)
    nv.nvmlDeviceGetHandleByIndex = lambda i: i
    nv.nvmlDeviceGetTotalEnergyConsumption = total_energy
    nv.nvmlDeviceGetPowerUsage = power_usage
    return nv


def test_nvml_counter_difference_over_two_gpus() -> None:
    nv = fake_pynvml([1_000_000, 5_000_000], [0, 0])
    sources = nvml_sources(None, nv)
    assert [type(s) for s in sources] == [NvmlEnergyCounter]
    with EnergyMeter(sources, sync=lambda: None) as e:
        nv.energy_mj = [1_600_000, 5_150_000]  # +600 J and +150 J, in mJ
    assert e.energy_j == pytest.approx(750.0)
    assert e.provenance == "measured-counter"
    assert e.source == "nvml:0,1"
    assert e.result is not None and e.result.measured


def test_a_counter_that_did_not_move_is_unavailable_not_zero() -> None:
    """NVML's counter steps every 100 ms on an H200: a shorter window often reads no step at
    all, and 0 J per step would be recorded as a measurement."""
    nv = fake_pynvml([1_000_000], [0])
    with EnergyMeter(nvml_sources(None, nv)) as e:
        pass  # no update of the counter inside the window
    assert e.provenance == "unavailable" and e.energy_j is None and e.mean_power_w is None
    assert "did not advance" in e.result.note
    m = energy_metrics(e.result, steps=30, recs=30 * 128)
    assert m["energy_j_per_1k_recs"] is None and m["energy_j_per_step"] is None


def test_nvml_counter_error_falls_back_to_power_sampling() -> None:
    nv = fake_pynvml([0, 0], [150_000, 250_000], counter=False)  # 150 W + 250 W
    sources = nvml_sources([0, 1], nv)
    assert [type(s) for s in sources] == [NvmlPowerSampler]
    with EnergyMeter(sources, interval_s=0.01) as e:
        wait_until(lambda: nv.power_reads >= 2 * 5, what="5 samples of both GPUs")
    assert e.provenance == "measured-sampled"
    assert e.source == "nvml:0,1"
    assert nv.power_reads >= 2 * 5  # the thread sampled, both GPUs each time
    assert e.mean_power_w == pytest.approx(400.0, rel=1e-9)
    assert e.energy_j == pytest.approx(400.0 * e.duration_s, rel=1e-9)


def test_no_nvml_is_unavailable(monkeypatch: pytest.MonkeyPatch) -> None:
    assert nvml_sources(None, fake_pynvml([0], [0], library=False)) == []
    assert nvml_sources(None, fake_pynvml([0], [0], counter=False, power=False)) == []
    monkeypatch.setitem(sys.modules, "pynvml", None)  # the package is not installed
    assert not NvmlEnergyCounter.available()
    assert default_energy_sources("cuda", 0) == []
    with EnergyMeter(default_energy_sources("cuda", 0)) as e:
        pass
    assert e.provenance == "unavailable" and e.energy_j is None


def test_cuda_index_maps_through_cuda_visible_devices(monkeypatch: pytest.MonkeyPatch) -> None:
    nv = fake_pynvml([0, 0, 0, 0], [0, 0, 0, 0])
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")
    assert [s.name for s in default_energy_sources("cuda", 1, nvml=nv)] == ["nvml:3"]
    assert [s.name for s in default_energy_sources("cuda", None, nvml=nv)] == ["nvml:2,3"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-1234abcd")  # can't map: no wrong GPU
    assert default_energy_sources("cuda", 0, nvml=nv) == []


def test_tpu_has_no_energy_source() -> None:
    assert default_energy_sources("tpu", 0) == []


def test_energy_meter_read_failure_at_exit_is_unavailable() -> None:
    nv = fake_pynvml([1000], [0])
    with EnergyMeter(nvml_sources(None, nv)) as e:
        nv.nvmlDeviceGetTotalEnergyConsumption = lambda h: (_ for _ in ()).throw(
            FakeNVMLError("GPU is lost")
        )
    assert e.provenance == "unavailable" and e.energy_j is None
    assert "GPU is lost" in e.result.note


# --- estimates and derived figures ----------------------------------------------------------


def test_estimate_is_labelled_and_never_measured() -> None:
    r = EstimatedEnergy(250.0, utilization=0.8).result(2.0)
    assert r.provenance == "estimated"
    assert not r.measured and not r.provenance.startswith("measured")
    assert r.energy_j == pytest.approx(400.0) and r.mean_power_w == pytest.approx(200.0)
    assert "TDP 250 W" in r.note and "not a measurement" in r.note
    with pytest.raises(ValueError):
        EnergyResult(1.0, 1.0, 1.0, "estimated", "estimate:tdp", note="")
    with pytest.raises(ValueError):
        EnergyResult(1.0, None, 1.0, "unavailable", "none")
    with pytest.raises(ValueError):
        EstimatedEnergy(250.0, utilization=0.0)


def test_energy_per_step_and_per_1k_recs() -> None:
    assert energy_j_per_step(50.0, 100) == pytest.approx(0.5)
    assert energy_j_per_1k_recs(50.0, 100 * 256) == pytest.approx(1.953125)
    assert energy_j_per_step(None, 100) is None
    assert energy_j_per_1k_recs(50.0, 0) is None
    m = energy_metrics(unavailable_energy(1.0), steps=10, recs=1000)
    assert m == {
        "energy_j_per_step": None,
        "energy_j_per_1k_recs": None,
        "mean_power_w": None,
        "energy_provenance": "unavailable",
    }
    m = energy_metrics(EstimatedEnergy(100.0).result(10.0), steps=10, recs=1000)
    assert (m["energy_j_per_1k_recs"], m["energy_provenance"]) == (1000.0, "estimated")


# --- stacking -----------------------------------------------------------------------------------


def test_stacked_enters_in_order_and_exits_in_reverse() -> None:
    log: list[str] = []

    class M:
        def __init__(self, tag: str) -> None:
            self.tag = tag

        def __enter__(self) -> M:
            log.append("enter " + self.tag)
            return self

        def __exit__(self, *exc: object) -> None:
            log.append("exit " + self.tag)

    a, b = M("a"), M("b")
    with pytest.raises(RuntimeError), stacked(a, b) as entered:
        assert entered == (a, b)
        raise RuntimeError("a failed point still closes every meter")
    assert log == ["enter a", "enter b", "exit b", "exit a"]
