"""The sides of a `recbench gate` round: per-side import roots, and the workers that measure them.

Each side is measured by its own fresh ``python -m bench.launch.worker`` (the process `recbench
run` uses) whose PYTHONPATH starts with the side's import root, a directory of two links:
``bench -> <working tree>/bench`` and ``recmodels -> <side>/recmodels`` (``import_root``); the
worker starts in a directory that holds neither (``_cwd``), so PYTHONPATH decides. ``run_round``
runs every point of a suite once per side, alternating sides point by point, each side in its
own worker per (framework, device) group; a worker that times out or dies becomes the point's
record, as in ``bench.launch.runner.run_suite``. The plan, the base checkout, the cache and the
verdict: bench/gate/gate.py.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

from bench.launch.channel import STDERR_TAIL_CHARS, Worker, WorkerDied, WorkerTimeout
from bench.point import Measure, Point
from bench.results import PointRecord, ResultsWriter
from bench.suites.suite import Suite


def import_root(where: Path, bench_dir: Path, models_dir: Path) -> Path:
    """A directory whose ``bench`` and ``recmodels`` are links to the given packages."""
    where.mkdir(parents=True, exist_ok=True)
    for name, target in (("bench", bench_dir), ("recmodels", models_dir)):
        (where / name).symlink_to(target.resolve(), target_is_directory=True)
    return where


@contextlib.contextmanager
def _cwd(path: Path) -> Iterator[None]:
    """A worker is ``python -m bench.launch.worker``, which puts its cwd first on sys.path: start it
    from a directory that holds no ``bench`` or ``recmodels``, so PYTHONPATH decides."""
    before = Path.cwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(before)


def _measure(workers: dict[str, Worker | None], side: str, root: Path, point: Point,
             measure: Measure) -> PointRecord:
    """One point on one side's worker (started if needed); faults become records, as in
    ``bench.launch.runner.run_suite``."""
    try:
        if workers.get(side) is None:
            workers[side] = Worker(point.framework, env={"PYTHONPATH": _pythonpath(root)})
        reply = workers[side].request(  # type: ignore[union-attr]
            {"cmd": "run", "point": point.to_dict(), "measure": measure.__dict__},
            measure.timeout_s)
    except WorkerTimeout:
        stuck = workers.pop(side, None)  # None: it never said it was ready
        if stuck is not None:
            stuck.kill()
        return PointRecord.for_point(point.to_dict(), "timeout", "no result within "
                                     f"measure.timeout_s = {measure.timeout_s:g} s")
    except WorkerDied as e:
        dead = workers.pop(side, None)  # None: it died before it said it was ready
        if dead is not None:
            dead.kill()  # reap it and close its stderr file
        tail = e.stderr_tail[-STDERR_TAIL_CHARS:]
        return PointRecord.for_point(point.to_dict(), "crashed",
                                     f"worker {e}" + (f"; stderr: {tail}" if tail else ""))
    return PointRecord.for_point(point.to_dict(), reply["status"], reply.get("reason"),
                                 reply.get("metrics") or {}, reply.get("samples_ms") or [])


def _pythonpath(root: Path) -> str:
    path = os.environ.get("PYTHONPATH")
    return str(root) + (os.pathsep + path if path else "")


def run_round(suite: Suite, roots: dict[str, Path], writers: dict[str, ResultsWriter],
              order: list[str]) -> None:
    """Every point of ``suite`` once per side, alternating sides point by point, each side
    in its own fresh worker per (framework, device) group."""
    for _, points in suite.groups():
        workers: dict[str, Worker | None] = {}
        try:
            for point in points:
                for side in order:
                    writers[side].write(_measure(workers, side, roots[side], point,
                                                 suite.measure_for(point)))
        except BaseException:  # Ctrl-C, SIGTERM: a worker may be mid-point, so no polite
            for w in workers.values():  # exit (close() waits up to 30 s for one)
                if w is not None:
                    w.kill()
            raise
        for w in workers.values():
            if w is not None:
                w.close()
