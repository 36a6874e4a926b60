"""One rank of a distributed point: ``python -m bench.launch.rank --point JSON --measure JSON
--out DIR``, started by torchrun (bench/launch/dist.py), never by hand.

Every rank builds its share of the step (bench/scenarios/distributed.py), warms up, and runs
the SAME number of timed steps: rank 0 picks the count from its warm-up and broadcasts it (a
collective step cannot stop on one rank's clock). Per iteration the step time is the slowest
rank's (a synchronous data-parallel step ends when its last rank does). After the timed loop
each rank times its compute-only twin (the same model on one process at the per-rank batch,
no collective). Rank 0 writes ``DIR/rank0.json``; a rank that fails on its own (out of
memory, an exception) writes ``DIR/rank<N>.json`` with its status and exits 1, which makes
torchrun stop the others. A rank ends with its torchrun agent (PR_SET_PDEATHSIG), so nothing
outlives a killed launcher.

RECBENCH_RANK_FAULT="[MATCH@]R:S" (tests): rank R kills itself with SIGKILL at its S-th step
(warm-up included), in every point or in those whose label contains MATCH.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import traceback
from pathlib import Path
from typing import Any

from bench import meters
from bench.point import Measure, Point, device_kind

RANK_FAULT_ENV = "RECBENCH_RANK_FAULT"


def _with_fault(step, rank: int, label: str):
    match, _, rule = os.environ.get(RANK_FAULT_ENV, "").rpartition("@")
    who, _, at = rule.partition(":")
    if match and match not in label:
        return step
    if not (who.isdigit() and at.isdigit() and int(who) == rank):
        return step
    calls = [0]

    def faulty():
        calls[0] += 1
        if calls[0] >= int(at):
            os.kill(os.getpid(), signal.SIGKILL)
        return step()

    return faulty


def _median(samples: list[float]) -> float:
    return sorted(samples)[len(samples) // 2]


def agreed_samples(timer: Any, step: Any, sync: Any, group: Any, measure: Measure,
                   per_step_ms: float) -> list[float]:
    """Timed steps, the same number on every rank, in rounds: rank 0 picks each round's count
    (from its warm-up, then from the median so far) until the samples reach min_time_s and
    min_iters, or a maximum (max_iters, max_time_s) stops them; every rank gets the count by
    a broadcast between rounds, outside the timed steps."""
    from bench.scenarios.distributed import iterations_for

    samples: list[float] = []
    n = int(group.broadcast_json(iterations_for(per_step_ms, measure.min_time_s,
                                                measure.min_iters, measure.max_iters,
                                                measure.max_time_s)))
    while n > 0:
        samples += timer.sample(step, sync, min_time_s=0.0, min_iters=n, max_iters=n,
                                max_time_s=measure.timeout_s).samples_ms
        spent_s = sum(samples) / 1e3
        more = 0
        if (spent_s < measure.min_time_s and len(samples) < measure.max_iters
                and spent_s < measure.max_time_s):
            more = iterations_for(_median(samples), measure.min_time_s - spent_s, 1,
                                  measure.max_iters - len(samples),
                                  measure.max_time_s - spent_s)
        n = int(group.broadcast_json(more))
    return samples


def measure_rank(point: Point, measure: Measure, group: Any) -> dict[str, Any] | None:
    """Time this rank's share of ``point``; rank 0 gets the point's reply, others None."""
    from bench.launch.worker import thread_settings
    from bench.scenarios.distributed import build_rank, build_twin
    from bench.scenarios.step import DeviceCaps

    caps = DeviceCaps(device_kind(point.device), count=point.world_size)
    timer = meters.StepTimer()
    with meters.HostMemoryMeter() as host:
        workload = build_rank(point, group, caps)
        try:
            step = _with_fault(workload.step, group.rank, point.label())
            reset_peak, read_peak = workload.peak_fns
            with meters.DeviceMemoryMeter(reset_peak, read_peak) as dev:
                warm = timer.warmup(step, workload.sync, warmup_iters=measure.warmup_iters)
                per_step_ms = (warm.warmup_s / measure.warmup_iters if measure.warmup_iters
                               else warm.compile_s) * 1e3
                samples_ms = agreed_samples(timer, step, workload.sync, group, measure,
                                            per_step_ms)
            workload.check()  # every rank: a JAX check is itself a collective
            planned = workload.planned_mem_bytes()
            cost = workload.cost
            table_update = getattr(workload.engine, "table_update", None)
        finally:
            workload.close()
    twin = build_twin(point, group)
    try:
        timer.warmup(twin.step, twin.sync, warmup_iters=1)
        twin_ms = _median(timer.sample(twin.step, twin.sync, min_time_s=0.0,
                                       min_iters=min(len(samples_ms), 20),
                                       max_iters=min(len(samples_ms), 20),
                                       max_time_s=measure.timeout_s).samples_ms)
    finally:
        twin.close()
    mine = {"samples_ms": samples_ms, "twin_ms": twin_ms,
            "peak_host_rss_bytes": host.peak_rss_bytes, "peak_device_mem_bytes": dev.peak_bytes,
            "compile_s": warm.compile_s, "warmup_s": warm.warmup_s}
    ranks = group.allgather_json(mine)
    if group.rank != 0:
        return None
    threads = thread_settings(point.framework)
    return rank0_reply(point, ranks, cost, planned, {**threads, "table_update": table_update})


UNMEASURED_ENERGY = {  # the energy fields of a point, stated as not measured
    "energy_j_per_step": None, "energy_j_per_1k_recs": None, "mean_power_w": None,
    "energy_provenance": meters.UNAVAILABLE, "energy_source": "none",
    "energy_note": "not measured for multi-process points: their ranks share one host's "
                   "counters or span hosts, and no energy window is agreed between ranks yet",
}


def rank0_reply(point: Point, ranks: list[dict[str, Any]], cost: dict[str, Any],
                planned: int | None, extra: dict[str, Any]) -> dict[str, Any]:
    """The point's reply from every rank's figures: per-iteration step time the slowest
    rank's; memory the largest rank's (each rank's kept); the exposed communication share
    ``1 - twin / step`` from the slowest twin and the median step."""
    samples = [max(col) for col in zip(*(r["samples_ms"] for r in ranks))]
    summary = meters.summarize(samples)
    median_s = summary["median"] / 1e3
    twin_ms = max(r["twin_ms"] for r in ranks)
    per_rank_host = [r["peak_host_rss_bytes"] for r in ranks]
    per_rank_dev = [r["peak_device_mem_bytes"] for r in ranks]
    metrics = {
        "step_ms": summary,
        "samples_per_s": point.global_batch / median_s,
        "tokens_per_s": point.global_batch * point.seq_len / median_s,
        "samples_per_s_per_rank": point.global_batch / point.world_size / median_s,
        "compile_s": max(r["compile_s"] for r in ranks),
        "warmup_s": max(r["warmup_s"] for r in ranks),
        **cost,
        "achieved_flops_per_s": cost["flops_per_step"] / median_s,
        "achieved_bytes_per_s": cost["bytes_per_step"] / median_s,
        "peak_device_mem_bytes": max(per_rank_dev) if None not in per_rank_dev else None,
        "peak_device_mem_bytes_per_rank": per_rank_dev,
        "planned_device_mem_bytes": planned,
        "peak_host_rss_bytes": max(per_rank_host) if None not in per_rank_host else None,
        "peak_host_rss_bytes_per_rank": per_rank_host,
        "host_mem_scope": "per-rank-process",
        "compute_twin_ms": twin_ms,
        "comm_share": max(0.0, 1.0 - twin_ms / summary["median"]),
        "comm_share_method": (
            "estimate: 1 - t_twin / t_step, t_twin the slowest rank's median step of the same "
            "model on one process at the per-rank batch with no collective (compute-only "
            "twin), t_step the distributed step's median; communication that overlaps "
            "compute is not in it"),
        **UNMEASURED_ENERGY,
        "stop_reason": f"{len(samples)} steps, their number agreed by every rank",
        "ranks": point.world_size,
        **extra,  # thread settings; table_update: what updates the item table (TorchRec)
    }
    return {"status": "ok", "reason": None, "metrics": metrics, "samples_ms": samples}


def _write(path: Path, reply: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(reply, default=str), encoding="utf-8")
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    from bench.launch.worker import _short_error, end_with_parent, is_oom
    from bench.scenarios.distributed import join
    from bench.scenarios.step import Unsupported

    ap = argparse.ArgumentParser(prog="python -m bench.launch.rank")
    ap.add_argument("--point", required=True)
    ap.add_argument("--measure", required=True)
    ap.add_argument("--out", required=True, type=Path)
    args = ap.parse_args(argv)
    end_with_parent(os.getppid())  # the torchrun agent: die with it
    rank = int(os.environ.get("RANK", "0"))
    point = Point.from_dict(json.loads(args.point))
    measure = Measure(**json.loads(args.measure))
    try:
        group = join(point.framework, measure.timeout_s)
        # torchrun stops survivors with SIGTERM; JAX's runtime takes SIGTERM as a preemption
        # notice and runs on (30 s until torchrun's SIGKILL): end at once instead
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        reply = measure_rank(point, measure, group)
    except Unsupported as e:
        _write(args.out / f"rank{rank}.json", {"status": "unsupported", "reason": str(e)})
        return 1
    except Exception as e:
        status = "oom" if is_oom(e) else "error"
        detail = "".join(traceback.format_exception(e)[-6:])
        print(detail, file=sys.stderr, flush=True)
        _write(args.out / f"rank{rank}.json", {"status": status, "reason": _short_error(e),
                                               "extra": {"traceback": detail}})
        return 1
    if reply is not None:
        _write(args.out / "rank0.json", reply)
    group.leave()  # a failure here is torchrun's to report: the result is written
    return 0


if __name__ == "__main__":
    sys.exit(main())
