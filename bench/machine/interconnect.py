"""The interconnect roof: all-reduce and all-to-all bus bandwidth over message sizes.

Measured with the backend the distributed points use (torch.distributed: gloo on CPU, NCCL on
CUDA; jax.distributed: gloo CPU collectives, XLA's own on GPU/TPU), and reported as nccl-tests
does (github.com/NVIDIA/nccl-tests, doc/PERFORMANCE.md): for a per-rank buffer of S bytes and a
time t per collective, algbw = S / t and busbw = algbw * factor, the factor 2(n-1)/n for
all-reduce and (n-1)/n for all-to-all, so busbw compares with the link's bandwidth whatever n.

Method. Per size and op: a correctness check, warm-up calls, a barrier, then ``iters`` calls
back to back on the same buffer (each waits for the last: in place in torch, chained in JAX),
synchronised at both edges; t = the max over ranks of each rank's mean time per call (nccl-tests'
``-a 3``; its default ``-a 1`` averages the ranks). Above 4 MiB the counts shrink (``_counts``)
so the whole sweep stays in seconds on a CPU; each row says what it ran.

Start it with torchrun (``launch_argv``); rank 0 writes the JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import time
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.machine.conditions import load_average
from recmodels.errors import InputError

OPS = ("all_reduce", "all_to_all")
KiB, MiB = 2**10, 2**20
DEFAULT_SIZES = tuple(4 * KiB * 4**k for k in range(8))  # 4 KiB, 16 KiB, ..., 64 MiB
BIG_BYTES = 4 * MiB  # above this, fewer calls per size (see _counts)
MIN_ITERS = 3
FLOAT32_BYTES = 4


# --- the arithmetic ----------------------------------------------------------------------------

def bus_bandwidth(op: str, bytes_per_rank: int, time_s: float,
                  world_size: int) -> tuple[float, float]:
    """(algbw, busbw) in bytes/s for one collective, per nccl-tests doc/PERFORMANCE.md.

    algbw = S / t, with S the per-rank buffer (bytes) and t the time of the collective.
    busbw = algbw * 2(n-1)/n for all-reduce (a ring moves 2(n-1)/n S per rank: reduce-scatter
    then all-gather), algbw * (n-1)/n for all-to-all (each rank sends all but its own 1/n).
    """
    if op not in OPS:
        raise InputError(f"unknown collective {op!r}; use one of {', '.join(OPS)}")
    if not isinstance(world_size, int) or world_size < 1:
        raise InputError(f"world_size must be an int >= 1, got {world_size!r}")
    if not bytes_per_rank > 0:
        raise InputError(f"bytes_per_rank must be > 0, got {bytes_per_rank!r}")
    if not time_s > 0:  # also refuses NaN
        raise InputError(f"time_s must be > 0, got {time_s!r}")
    n = world_size
    algbw = bytes_per_rank / time_s
    factor = 2 * (n - 1) / n if op == "all_reduce" else (n - 1) / n
    return algbw, algbw * factor


def _counts(nbytes: int, warmup: int, iters: int) -> tuple[int, int]:
    """(warmup, iters) for a size: as given up to 4 MiB, then scaled by 4 MiB / size (at least
    MIN_ITERS, one warm-up), so a 64 MiB loopback all-reduce costs ~10 calls, not 25."""
    if nbytes <= BIG_BYTES:
        return warmup, iters
    return max(1, warmup * BIG_BYTES // nbytes), max(MIN_ITERS, iters * BIG_BYTES // nbytes)


def _elements(op: str, nbytes: int, world_size: int) -> int:
    """float32 elements of a per-rank buffer of ~nbytes (a multiple of n for all-to-all)."""
    quantum = world_size if op == "all_to_all" else 1
    return max(quantum, nbytes // FLOAT32_BYTES // quantum * quantum)


def _row(op: str, elements: int, time_s: float, n: int, warmup: int, iters: int,
         **extra: Any) -> dict[str, Any]:
    nbytes = elements * FLOAT32_BYTES
    algbw, busbw = bus_bandwidth(op, nbytes, time_s, n)
    return {"bytes": nbytes, "time_us": time_s * 1e6, "algbw_bytes_per_s": algbw,
            "busbw_bytes_per_s": busbw, "warmup": warmup, "iters": iters, **extra}


def _transport(backend: str, nodes: int) -> str:
    if nodes > 1:
        return f"network ({nodes} hosts)"
    return "loopback (one host)" if backend == "gloo" else "intra-node (one host)"


def _result(framework: str, backend: str, device: str, n: int, nodes: int,
            ops: dict[str, Any], method: str) -> dict[str, Any]:
    peak = {op: max((r["busbw_bytes_per_s"] for r in rows), default=None)
            if isinstance(rows, list) else None for op, rows in ops.items()}
    return {"backend": backend, "framework": framework, "device": device, "world_size": n,
            "nodes": nodes, "transport": _transport(backend, nodes), "ops": ops,
            "peak_busbw_bytes_per_s": peak, "method": method}


def _method(framework: str, what: str) -> str:
    return (f"{framework}: {what} on a float32 per-rank buffer of S bytes, correctness checked, "
            f"then back-to-back calls synchronised at both edges; t = max over ranks of the mean "
            f"time per call; algbw = S/t, busbw per nccl-tests (2(n-1)/n all-reduce, (n-1)/n "
            f"all-to-all); above {BIG_BYTES // MiB} MiB warm-up and iters scale by "
            f"{BIG_BYTES // MiB} MiB/S (min {MIN_ITERS} iters)")


class WrongValues(RuntimeError):
    """A collective's check call returned the wrong numbers: a broken backend, not a slow one."""


def _short(e: BaseException) -> str:
    line = (str(e).strip().splitlines() or [""])[0]
    return f"{type(e).__name__}: {line}"[:200]


# --- torch.distributed -------------------------------------------------------------------------

def measure_torch(sizes_bytes: Sequence[int] = DEFAULT_SIZES, *, warmup: int = 5,
                  iters: int = 20, device: str = "cpu") -> dict[str, Any]:
    """Run in every rank of an initialised torch.distributed process group; same result on all."""
    import torch
    import torch.distributed as dist

    n, rank = dist.get_world_size(), dist.get_rank()
    dev = torch.device("cuda", torch.cuda.current_device()) if device == "cuda" else \
        torch.device(device)
    sync = (lambda: torch.cuda.synchronize(dev)) if dev.type == "cuda" else (lambda: None)

    calls = {"all_reduce": lambda x, out: dist.all_reduce(x),  # in place, SUM
             "all_to_all": lambda x, out: dist.all_to_all_single(out, x)}

    def check(op: str, x: Any, out: Any, call: Any) -> None:
        m = x.numel()
        x.fill_(rank + 1)
        call(x, out)
        sync()
        if op == "all_reduce":
            ok = bool((x == n * (n + 1) / 2).all())
        else:  # chunk j of the output came from rank j, which sent j + 1
            want = torch.arange(1, n + 1, device=dev, dtype=x.dtype).repeat_interleave(m // n)
            ok = bool(torch.equal(out, want))
        if not ok:
            raise WrongValues(f"{op} gave wrong values on rank {rank}")
        x.zero_()  # zeros: repeated in-place sums stay finite

    ops: dict[str, Any] = {}
    for op, call in calls.items():
        rows: list[dict[str, Any]] = []
        for nbytes in sizes_bytes:
            m = _elements(op, nbytes, n)
            w, k = _counts(m * FLOAT32_BYTES, warmup, iters)
            x = torch.empty(m, dtype=torch.float32, device=dev)
            out = torch.empty_like(x) if op == "all_to_all" else None
            try:
                check(op, x, out, call)
            except WrongValues:
                raise
            except Exception as e:  # e.g. a backend without this collective
                ops[op] = {"unsupported": _short(e)}
                break
            for _ in range(w):
                call(x, out)
            sync()
            dist.barrier()
            t0 = time.perf_counter()
            for _ in range(k):
                call(x, out)
            sync()
            t = torch.tensor([(time.perf_counter() - t0) / k], dtype=torch.float64, device=dev)
            dist.all_reduce(t, op=dist.ReduceOp.MAX)
            rows.append(_row(op, m, float(t.item()), n, w, k))
        else:
            ops[op] = rows

    hosts: list[Any] = [None] * n
    dist.all_gather_object(hosts, socket.gethostname())
    what = "dist.all_reduce (in place, SUM) and dist.all_to_all_single"
    return _result("torch", str(dist.get_backend()), dev.type, n, len(set(hosts)), ops,
                   _method("torch", what))


# --- jax.distributed ---------------------------------------------------------------------------

def measure_jax(sizes_bytes: Sequence[int] = DEFAULT_SIZES, *, warmup: int = 5,
                iters: int = 20) -> dict[str, Any]:
    """Run in every process of an initialised jax.distributed runtime; one Mesh axis over all
    devices, n = jax.device_count(), S = one device's shard. Rows carry ``compile_s``."""
    import jax
    import numpy as np
    from jax.experimental import multihost_utils
    from jax.sharding import Mesh, NamedSharding
    from jax.sharding import PartitionSpec as P

    devices = jax.devices()
    n, platform = len(devices), devices[0].platform
    mesh = Mesh(np.array(devices), ("x",))
    sharding = NamedSharding(mesh, P("x"))
    bodies = {"all_reduce": lambda v: jax.lax.psum(v, "x"),
              "all_to_all": lambda v: jax.lax.all_to_all(v, "x", 0, 0, tiled=True)}

    def slowest(t: float) -> float:
        return float(np.max(multihost_utils.process_allgather(np.array([t]))))

    def shards(m: int, value: Any) -> Any:  # device d's shard: m copies of value(d)
        return jax.make_array_from_callback((n * m,), sharding, lambda idx: np.full(
            m, value((idx[0].start or 0) // m), np.float32))

    ops: dict[str, Any] = {}
    for op, body in bodies.items():
        rows: list[dict[str, Any]] = []
        for nbytes in sizes_bytes:
            m = _elements(op, nbytes, n)
            w, k = _counts(m * FLOAT32_BYTES, warmup, iters)
            f = jax.jit(jax.shard_map(body, mesh=mesh, in_specs=P("x"), out_specs=P("x")))
            probe = shards(m, lambda d: d + 1)
            t0 = time.perf_counter()
            try:
                compiled = f.lower(probe).compile()
                compile_s = time.perf_counter() - t0
                out = compiled(probe)
            except Exception as e:  # a backend without this collective
                ops[op] = {"unsupported": _short(e)}
                break
            # all-reduce: every element sums 1..n; all-to-all: chunk j came from device j
            want = (np.full(m, n * (n + 1) / 2) if op == "all_reduce"
                    else np.arange(m) // (m // n) + 1.0)
            if not all(np.array_equal(np.asarray(s.data), want) for s in out.addressable_shards):
                raise WrongValues(f"{op} gave wrong values in process {jax.process_index()}")
            compile_s = slowest(compile_s)
            x = shards(m, lambda d: 0)  # zeros: chained sums stay finite
            for _ in range(w):
                x = compiled(x)
            jax.block_until_ready(x)
            multihost_utils.sync_global_devices(f"interconnect {op} {nbytes}")
            t0 = time.perf_counter()
            for _ in range(k):
                x = compiled(x)  # chained: each call needs the last one's output
            jax.block_until_ready(x)
            t = slowest((time.perf_counter() - t0) / k)
            rows.append(_row(op, m, t, n, w, k, compile_s=compile_s))
        else:
            ops[op] = rows

    host = np.array([zlib.crc32(socket.gethostname().encode())], dtype=np.int64)
    nodes = len(set(np.asarray(multihost_utils.process_allgather(host)).ravel().tolist()))
    backend = (str(jax.config.jax_cpu_collectives_implementation) if platform == "cpu"
               else f"xla-{platform}")
    what = "jit(shard_map) of lax.psum and lax.all_to_all(tiled) over a 1-D Mesh of all devices"
    return _result("jax", backend, platform, n, nodes, ops, _method("jax", what))


# --- the human view ----------------------------------------------------------------------------

def _size(nbytes: int) -> str:
    for unit, scale in (("MiB", MiB), ("KiB", KiB)):
        if nbytes >= scale:
            return f"{nbytes / scale:g} {unit}"
    return f"{nbytes} B"


def format_interconnect(result: dict[str, Any]) -> list[str]:
    """Short lines: per op, busbw at the largest size, the peak, and the smallest size's time."""
    where = f"{result['backend']}, {result['world_size']} ranks, {result['transport']}"
    lines = [f"interconnect ({result['framework']} {where}; busbw per nccl-tests, GB/s = 1e9 B/s)"]
    if result["transport"].startswith("loopback"):
        lines.append("  one host over loopback: a bound on the collective software, not a network")
    for op, rows in result["ops"].items():
        label = op.replace("_", "-")
        if not isinstance(rows, list) or not rows:
            lines.append(f"  {label}: unsupported ({(rows or {}).get('unsupported', 'no sizes')})")
            continue
        big, small = rows[-1], rows[0]
        best = max(rows, key=lambda r: r["busbw_bytes_per_s"])
        lines.append(
            f"  {label} busbw: {big['busbw_bytes_per_s'] / 1e9:.3g} GB/s at {_size(big['bytes'])}"
            f", peak {best['busbw_bytes_per_s'] / 1e9:.3g} GB/s at {_size(best['bytes'])}"
            f"; {small['time_us']:.0f} us per op at {_size(small['bytes'])}")
    return lines


# --- the launchable entry point ----------------------------------------------------------------

def launch_argv(framework: str, nproc: int, port: int, out: str | os.PathLike[str],
                sizes: Sequence[int] | None = None, *, warmup: int | None = None,
                iters: int | None = None) -> list[str]:
    """The torchrun command line that runs this module on ``nproc`` local ranks (JAX's
    coordinator listens on ``port + 1``)."""
    if framework not in ("torch", "jax"):
        raise InputError(f"unknown framework {framework!r}; use torch or jax")
    argv = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(int(nproc)),
            "--master-port", str(int(port)), "-m", "bench.machine.interconnect",
            "--framework", framework, "--out", str(out)]
    if sizes:
        argv += ["--sizes", *(str(int(s)) for s in sizes)]
    if warmup is not None:
        argv += ["--warmup", str(int(warmup))]
    if iters is not None:
        argv += ["--iters", str(int(iters))]
    return argv


def _write_atomic(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(obj, indent=1) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.machine.interconnect",
                                description="all-reduce / all-to-all busbw; start with torchrun")
    p.add_argument("--framework", choices=("torch", "jax"), required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--sizes", type=int, nargs="+", default=list(DEFAULT_SIZES),
                   help="per-rank bytes")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--iters", type=int, default=20)
    p.add_argument("--timeout-s", type=int, default=300)
    a = p.parse_args(argv)
    if a.iters < 1 or a.warmup < 0 or min(a.sizes) < 1:
        p.error("--iters >= 1, --warmup >= 0 and --sizes > 0 please")
    env = os.environ
    load_start = load_average()
    rank, world = int(env.get("RANK", 0)), int(env.get("WORLD_SIZE", 1))
    if a.framework == "torch":
        import datetime

        import torch
        import torch.distributed as dist

        cuda = torch.cuda.is_available()
        if cuda:
            torch.cuda.set_device(int(env.get("LOCAL_RANK", 0)))
        dist.init_process_group("nccl" if cuda else "gloo",
                                timeout=datetime.timedelta(seconds=a.timeout_s))
        try:
            result = measure_torch(a.sizes, warmup=a.warmup, iters=a.iters,
                                   device="cuda" if cuda else "cpu")
        finally:
            dist.destroy_process_group()
    else:
        import jax

        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        addr = f"{env.get('MASTER_ADDR', '127.0.0.1')}:{int(env.get('MASTER_PORT', 29500)) + 1}"
        jax.distributed.initialize(coordinator_address=addr, num_processes=world,
                                   process_id=rank, initialization_timeout=a.timeout_s)
        try:
            result = measure_jax(a.sizes, warmup=a.warmup, iters=a.iters)
        finally:
            jax.distributed.shutdown()
    if rank == 0:  # others' load on this host skews a loopback figure: keep it beside it
        result["load_average"] = {"start": load_start, "end": load_average()}
        _write_atomic(a.out, result)
        print("\n".join(format_interconnect(result)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
