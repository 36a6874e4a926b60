"""Host RSS and device peak memory meters.

The meters are framework-free: the device meter takes ``reset_peak`` / ``read_peak`` callables.
The two adapters at the bottom (``torch_cuda_peak_fns``, ``jax_peak_fns``) are the only place
that touches a framework, and they import it lazily.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable
from types import TracebackType
from typing import Any

ReadPeak = Callable[[], "int | None"]
ResetPeak = Callable[[], object]


def _psutil_rss_reader(pid: int | None, include_children: bool) -> Callable[[], int]:
    import psutil  # lazy: the hardware boundary stays at the edge

    proc = psutil.Process(pid)

    def read() -> int:
        rss = proc.memory_info().rss
        if include_children:
            for child in proc.children(recursive=True):
                # A child that exits between listing and reading holds no memory.
                with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
                    rss += child.memory_info().rss
        return int(rss)

    return read


def process_peak_rss_bytes(status_path: str = "/proc/self/status") -> int | None:
    """The kernel's high-water mark of this process's resident set (``VmHWM``, Linux
    proc(5)), or None where there is none. Exact, unlike a sampled peak, but it covers the
    process's whole life: it is a point's own figure only in a process made for that point."""
    try:
        with open(status_path, encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024  # reported in kB
    except (OSError, ValueError, IndexError):
        return None
    return None


def current_rss_bytes() -> int | None:
    """This process's resident set now (psutil), or None without psutil."""
    try:
        import psutil
    except ImportError:
        return None
    return int(psutil.Process().memory_info().rss)


class HostMemoryMeter:
    """Peak resident set size of a process, sampled on a background thread.

    A sampled peak is a lower bound: a spike shorter than ``interval_s`` can fall between two
    samples. The thread is woken every ``interval_s`` and holds the GIL only for one
    ``/proc`` read, so its cost to the measured code is small but not zero.
    """

    def __init__(
        self,
        interval_s: float = 0.01,
        *,
        pid: int | None = None,
        include_children: bool = False,
        read_rss: Callable[[], int] | None = None,
    ) -> None:
        if interval_s <= 0:
            raise ValueError(f"interval_s must be > 0, got {interval_s}")
        self.interval_s = interval_s
        self._read = read_rss or _psutil_rss_reader(pid, include_children)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.baseline_rss_bytes: int | None = None
        self.peak_rss_bytes: int | None = None
        self.n_samples = 0

    @staticmethod
    def available() -> bool:
        try:
            import psutil  # noqa: F401
        except ImportError:
            return False
        return True

    def _take(self) -> None:
        rss = self._read()
        self.n_samples += 1
        if self.peak_rss_bytes is None or rss > self.peak_rss_bytes:
            self.peak_rss_bytes = rss

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._take()

    def __enter__(self) -> HostMemoryMeter:
        self.baseline_rss_bytes = self._read()
        self.peak_rss_bytes = self.baseline_rss_bytes
        self.n_samples = 1
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="host-rss-meter", daemon=True)
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        self._take()  # one last read so a peak held at the very end is seen


class DeviceMemoryMeter:
    """Framework peak-memory counter: reset at entry, read at exit.

    ``peak_bytes`` is None when there is no counter (``read_peak`` None or returning None);
    a device that cannot report memory reports nothing, never 0.
    """

    def __init__(self, reset_peak: ResetPeak | None, read_peak: ReadPeak | None) -> None:
        self._reset = reset_peak
        self._read = read_peak
        self.peak_bytes: int | None = None

    @staticmethod
    def available(read_peak: ReadPeak | None) -> bool:
        return read_peak is not None

    def __enter__(self) -> DeviceMemoryMeter:
        self.peak_bytes = None
        if self._reset is not None:
            self._reset()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._read is not None:
            value = self._read()
            self.peak_bytes = None if value is None else int(value)


# Framework adapters: the only framework code in bench.meters.


def torch_cuda_peak_fns(device: Any = None) -> tuple[ResetPeak | None, ReadPeak | None]:
    """(reset, read) for torch's CUDA caching allocator, or (None, None) without CUDA.

    Reads ``torch.cuda.max_memory_allocated``: bytes held by tensors at the peak, which is
    what JAX's ``peak_bytes_in_use`` also counts. Memory the allocator caches but no tensor
    uses (``max_memory_reserved``) is left out. Docs: pytorch.org/docs/stable/cuda.html.
    """
    import torch

    if not torch.cuda.is_available():
        return None, None
    dev = torch.device("cuda") if device is None else torch.device(device)
    if dev.type != "cuda":
        return None, None

    def reset() -> None:
        torch.cuda.reset_peak_memory_stats(dev)

    def read() -> int:
        return int(torch.cuda.max_memory_allocated(dev))

    return reset, read


def jax_peak_fns(device: Any = None) -> tuple[ResetPeak | None, ReadPeak | None]:
    """(None, read) from ``device.memory_stats()["peak_bytes_in_use"]``.

    JAX has no public way to reset the peak, so it is the process's peak so far (compilation
    and warm-up included); run each point in a fresh process for a per-point figure.
    ``memory_stats()`` is None on CPU, and then ``read`` returns None.
    """
    import jax

    dev = jax.devices()[0] if device is None else device

    def read() -> int | None:
        stats = dev.memory_stats()
        if not stats or "peak_bytes_in_use" not in stats:
            return None
        return int(stats["peak_bytes_in_use"])

    return None, read
