"""Metrics the runner derives from a point's reply and the run, without running anything:
utilisation against the run's measured roofs (and the datasheet peak), and a distributed
point's speedup and scaling efficiency against its one-rank point in the same file."""

from __future__ import annotations

from typing import Any

from bench.machine.hardware import devices_spanned
from bench.machine.roofs import ROOF_DTYPES
from bench.point import Point, device_kind


def add_utilization(metrics: dict[str, Any], point: Point, roofs: dict[str, Any],
                    env: dict[str, Any]) -> None:
    """Achieved FLOP/s and bytes/s against the measured roofs and, where known, the
    datasheet peak. A missing roof leaves the ratio null, never 0. Roofs are measured on one
    device, so a ``KIND:all`` point is held to ``roof_devices`` times them (and to no
    datasheet peak)."""
    from bench.machine.datasheet import datasheet_for_env

    dtype = ROOF_DTYPES.get(point.precision)
    kind, n = device_kind(point.device), roof_devices(point, env)
    roof = roofs.get(f"{kind}/{dtype}") or {}
    flops, bw = roof.get("gemm_flops_per_s"), roof.get("mem_bytes_per_s")
    flops, bw = (flops * n if flops else None), (bw * n if bw else None)
    metrics["roof_devices"] = n
    metrics["roof_flops_per_s"] = flops
    metrics["utilization"] = metrics["achieved_flops_per_s"] / flops if flops else None
    metrics["bandwidth_utilization"] = metrics["achieved_bytes_per_s"] / bw if bw else None
    # KIND:all has no datasheet peak (roofs.datasheet_for_env): one chip's is not the step's
    all_devices = point.device.endswith(":all") or n > 1
    sheet = datasheet_for_env(env, point.device) if dtype and not all_devices else None
    peak = (sheet or {}).get("flops_per_s", {}).get(dtype)
    metrics["datasheet_flops_per_s"] = peak
    metrics["utilization_datasheet"] = metrics["achieved_flops_per_s"] / peak if peak else None


def roof_devices(point: Point, env: dict[str, Any]) -> int:
    """How many measured roofs a point's step may use: its ranks' devices (GPUs, TPU chips;
    CPU ranks of one host share that host's roof, so a CPU point counts its nodes), or
    ``devices_spanned`` for a one-process point."""
    if point.distributed:
        return point.nodes if device_kind(point.device) == "cpu" else point.world_size
    return devices_spanned(point.device, env)


def add_scaling(metrics: dict[str, Any], point: Point, throughput: dict[str, float],
                unstable: set[str] | frozenset[str] = frozenset()) -> None:
    """Speedup and scaling efficiency of a multi-rank point against the same point on one
    rank (``Point.scaling_baseline``) measured in the same results file: speedup = samples/s
    / the baseline's; efficiency = speedup / ``scaling_devices``, the devices the point has
    for the baseline's one: its ranks on GPUs and TPUs, its hosts on CPUs (CPU ranks of one
    host split the cores the one-rank baseline used all of, so their ideal is the baseline's
    throughput). Ideal 1.0 for strong scaling (fixed global batch) and weak scaling (fixed
    per-rank batch) alike. Null without a baseline."""
    if not point.distributed or point.world_size == 1:
        return
    base_id = point.scaling_baseline().id
    base = throughput.get(base_id)
    mine = metrics.get("samples_per_s")
    devices = roof_devices(point, {})
    metrics["scaling_baseline_id"] = base_id
    metrics["scaling_devices"] = devices
    metrics["speedup"] = mine / base if base and mine else None
    metrics["scaling_efficiency"] = mine / (devices * base) if base and mine else None
    if base_id in unstable:
        metrics["scaling_note"] = ("the one-rank baseline was flagged unstable: speedup and "
                                   "efficiency are uncertain")
