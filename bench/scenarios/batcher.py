"""A dynamic batcher: the serving front of one Engine.

Requests queue up as they arrive; one thread takes a batch off the queue when it holds
``max_batch`` requests or when its oldest request has waited ``max_delay_s`` (whichever comes
first), runs it on the device (``run_batch``, which syncs) and answers every request in it
(``respond``). One batch is on the device at a time: a single Engine is a single stream.

A batch that raises is still answered (a failing SUT is a result, not a hang): the error is
kept in ``errors`` and the caller turns it into the record's status.
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np


@dataclass
class BatchStats:
    """What the batcher did: requests seen and answered, batch sizes and device time."""

    issued: list[int] = field(default_factory=list)  # request ids, in arrival order
    answered: list[int] = field(default_factory=list)  # request ids, in answer order
    batch_sizes: list[int] = field(default_factory=list)
    busy_s: float = 0.0  # time inside run_batch, summed
    errors: list[str] = field(default_factory=list)

    def answered_once(self) -> dict[str, int]:
        """Counts behind "every request is answered exactly once"."""
        seen = collections.Counter(self.answered)
        issued = set(self.issued)
        return {
            "issued": len(self.issued),
            "answered": len(self.answered),
            "duplicates": sum(n - 1 for n in seen.values() if n > 1),
            "missing": len(issued - set(seen)),
            "unknown": len(set(seen) - issued),
        }


class DynamicBatcher:
    """Queue -> batches of at most ``max_batch`` requests, held at most ``max_delay_s``."""

    def __init__(self, run_batch: Callable[[np.ndarray], object],
                 respond: Callable[[Sequence[int]], object], *, max_batch: int,
                 max_delay_s: float, clock: Callable[[], float] = time.perf_counter) -> None:
        if max_batch < 1 or max_delay_s < 0:
            raise ValueError("max_batch must be >= 1 and max_delay_s >= 0")
        self._run_batch, self._respond = run_batch, respond
        self.max_batch, self.max_delay_s, self._clock = max_batch, max_delay_s, clock
        self._queue: collections.deque[tuple[int, int, float]] = collections.deque()
        self._cv = threading.Condition()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self.stats = BatchStats()

    def submit(self, requests: Sequence[tuple[int, int]]) -> None:
        """Queue requests given as (request id, sample index); returns at once."""
        now = self._clock()
        with self._cv:
            for rid, index in requests:
                self.stats.issued.append(rid)
                self._queue.append((rid, index, now))
            self._cv.notify()

    def _next_batch(self) -> list[tuple[int, int, float]] | None:
        with self._cv:
            while not self._queue and not self._stopping:
                self._cv.wait()
            if not self._queue:
                return None  # stopping and drained
            deadline = self._queue[0][2] + self.max_delay_s
            while len(self._queue) < self.max_batch and not self._stopping:
                left = deadline - self._clock()
                if left <= 0:
                    break
                self._cv.wait(left)
            n = min(self.max_batch, len(self._queue))
            return [self._queue.popleft() for _ in range(n)]

    def _loop(self) -> None:
        while (batch := self._next_batch()) is not None:
            ids = [rid for rid, _, _ in batch]
            t0 = self._clock()
            try:
                self._run_batch(np.fromiter((i for _, i, _ in batch), np.int64, len(batch)))
            except Exception as e:  # the SUT failed: answer anyway, report it in the record
                if len(self.stats.errors) < 5:
                    self.stats.errors.append(f"{type(e).__name__}: {e}")
            self.stats.busy_s += self._clock() - t0
            self.stats.batch_sizes.append(len(batch))
            self.stats.answered.extend(ids)
            self._respond(ids)

    def start(self) -> DynamicBatcher:
        self._thread = threading.Thread(target=self._loop, name="recbench-batcher", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Answer what is queued, then end the thread."""
        with self._cv:
            self._stopping = True
            self._cv.notify()
        if self._thread is not None:
            self._thread.join()

    def __enter__(self) -> DynamicBatcher:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
