"""A suite's [[serve]] points in the run: each LoadGen run in a fresh worker, recorded as a
``serve`` line of the run's results file (the step points are runner.py's)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from bench import results as R
from bench.launch.channel import STDERR_TAIL_CHARS, Worker, WorkerDied, WorkerTimeout
from bench.launch.memcap import MemoryCap
from bench.suites.suite import Suite


def serve_timeout_s(spec: Any) -> float:
    """Generous: every search run at its duration, draining a backlog, plus start-up."""
    return spec.search_runs * (spec.duration_s * 4 + 30) + 300


def run_serve_specs(suite: Suite, writer: R.ResultsWriter, outcome: Any,
                    memcap: MemoryCap | None, log: Callable[[str], None]) -> None:
    """The suite's [[serve]] specs with no record yet, each in a fresh worker (LoadGen runs
    there, its logs beside the results file), recorded as ``serve`` lines of the same file
    and appended to ``outcome.serve`` (the runner's RunOutcome)."""
    from bench.scenarios.serve import ServeSpec, sut_delay_ms

    done = {r.id for r in writer.serve}
    for fields in suite.serve:
        spec = ServeSpec(**fields)  # the suite checked every field
        point = spec.point(sut_delay_ms())
        if R.point_id(point) in done:
            continue
        log(f"serve: {spec.scenario} {spec.workload} {spec.framework} {spec.preset} on "
            f"{spec.device} ...")
        log_root = writer.path.with_suffix("") / "loadgen" / R.point_id(point)
        worker, reply = None, None
        try:
            worker = Worker(spec.framework, cap=memcap)
            reply = worker.request({"cmd": "serve", "spec": dataclasses.asdict(spec),
                                    "log_root": str(log_root)}, serve_timeout_s(spec))
        except WorkerTimeout:
            reply = {"status": "timeout", "reason": f"no result within {serve_timeout_s(spec):g}"
                     " s; worker killed", "point": point, "metrics": {}}
        except WorkerDied as e:
            tail = e.stderr_tail[-STDERR_TAIL_CHARS:]
            reply = {"status": "crashed", "reason": f"worker {e}" + (f"; stderr: {tail}"
                                                                    if tail else ""),
                     "point": point, "metrics": {}}
        finally:
            if worker is not None:  # a hung or dead worker is killed, a healthy one told to exit
                failed = reply is None or reply["status"] in ("timeout", "crashed")
                worker.kill() if failed else worker.close()
        rec = R.ServeRecord.for_point(reply.get("point") or point, reply["status"],
                                      reply.get("reason"), reply.get("metrics") or {})
        writer.write(rec)
        outcome.serve.append(rec)
        rate = rec.metrics.get("max_rate_per_s")
        log(f"serve: {rec.status}" + (f", max {rate:,.1f} requests/s" if rate else "")
            + (f" ({rec.reason})" if rec.reason else ""))
