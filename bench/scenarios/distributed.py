"""Scale-out points, the rank's side: join the job torchrun started, build this rank's share of
a distributed train step, and exchange small JSON values between ranks.

A distributed point (``Point.parallel`` "dp" or "fsdp") is a train step over
``Point.global_batch`` sequences split evenly over ``world_size`` ranks, one device each:

  torch  recmodels.torch.distributed.DistEngine: DDP or FSDP2 for the dense part; the item
         table a parameter like the rest (sharding "dense") or a TorchRec EmbeddingCollection
         sharded row-wise / table-wise by DistributedModelParallel
  jax    recmodels.jax.engine.Engine over every device of every process (jax.distributed):
         a Mesh whose batch axis spans them; the table replicated ("dense") or its rows
         sharded with NamedSharding ("row-wise")

Every rank draws the same global batch (seeded) and keeps its rows, so the negatives of a
sample are the same at every world size. The process group (or JAX's distributed runtime)
is the frameworks' own; the exchanges below ride on their collectives (torch.distributed
all_gather, jax.experimental.multihost_utils.process_allgather) and carry JSON, never pickle.

Launching is bench/launch/dist.py's; timing is bench/launch/rank.py's.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from bench.point import Point, device_kind
from bench.scenarios.step import (
    TORCH_PARALLEL,
    DeviceCaps,
    Unsupported,
    Workload,
    analytic_cost,
    distributed_reason,
    peak_fns,
    random_batch,
    tokens_per_user,
    train_closures,
)

# --- the job ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Group:
    """This process's place in the job: ``rank`` of ``world`` (torch's process group or JAX's
    distributed runtime, per ``framework``)."""

    framework: str
    rank: int
    world: int

    def allgather_array(self, arr: np.ndarray) -> np.ndarray:
        """[...] on every rank -> [world, ...] on every rank (same shape and dtype each)."""
        if self.world == 1:
            return arr[None]
        if self.framework == "torch":
            import torch
            import torch.distributed as dist

            t = torch.from_numpy(np.ascontiguousarray(arr))
            out = [torch.empty_like(t) for _ in range(self.world)]
            dist.all_gather(out, t)
            return np.stack([o.numpy() for o in out])
        from jax.experimental import multihost_utils

        return np.asarray(multihost_utils.process_allgather(arr, tiled=False))

    def allgather_json(self, value: Any) -> list[Any]:
        """A JSON value from every rank, in rank order, on every rank."""
        data = np.frombuffer(json.dumps(value).encode(), dtype=np.uint8)
        sizes = self.allgather_array(np.array([data.size], dtype=np.int64))[:, 0]
        padded = np.zeros(int(sizes.max()), dtype=np.uint8)
        padded[:data.size] = data
        rows = self.allgather_array(padded)
        return [json.loads(bytes(row[:n]).decode()) for row, n in zip(rows, sizes)]

    def broadcast_json(self, value: Any) -> Any:
        """Rank 0's JSON value on every rank."""
        return self.allgather_json(value)[0]

    def leave(self) -> None:
        """Leave the job together: a barrier, then the framework's own teardown (torch's
        destroy_process_group, jax.distributed.shutdown). A rank that simply exits while its
        process group's threads run can abort ("terminate called without an active
        exception"), which torchrun then reports as the job's failure."""
        if self.framework == "torch":
            import torch.distributed as dist

            if dist.is_initialized():
                dist.barrier()
                dist.destroy_process_group()
        elif self.world > 1:
            import jax

            self.allgather_array(np.zeros(1, dtype=np.int32))  # a barrier
            jax.distributed.shutdown()


def join(framework: str, timeout_s: float) -> Group:
    """Join the job whose ranks torchrun started (its env: RANK, WORLD_SIZE, MASTER_ADDR,
    MASTER_PORT); every collective of the job times out after ``timeout_s``."""
    if framework == "torch":
        from recmodels.torch.distributed import init_process_group

        rank, world = init_process_group(timeout_s=timeout_s)
    else:
        from recmodels.jax.distributed import initialize

        rank, world = initialize(timeout_s=timeout_s)
    return Group(framework, rank, world)


# --- this rank's step ------------------------------------------------------------------------


def rank_rows(global_batch: dict[str, np.ndarray], rank: int, world: int
              ) -> dict[str, np.ndarray]:
    """This rank's contiguous share of each [B, ...] array of the global batch."""
    n = len(next(iter(global_batch.values())))
    per = n // world
    return {k: v[rank * per:(rank + 1) * per] for k, v in global_batch.items()}


def make_rank_engine(point: Point) -> Any:
    """The point's distributed engine on this rank's device."""
    cfg = point.model_config()
    matmul = "tf32" if point.precision == "tf32" else "highest"
    kind = device_kind(point.device)
    if point.framework == "torch":
        from recmodels.torch.distributed import DistEngine, local_device

        return DistEngine(cfg, parallel=TORCH_PARALLEL[point.parallel], sharding=point.sharding,
                          optimizer=point.optimizer, device=local_device(kind),
                          matmul_precision=matmul)
    from recmodels.jax.engine import Engine

    return Engine(cfg, optimizer=point.optimizer, device=f"{kind}:all",
                  sharding=point.sharding, matmul_precision=matmul)


def build_rank(point: Point, group: Group, caps: DeviceCaps) -> Workload:
    """This rank's share of the point's train step (raises Unsupported with the reason)."""
    reason = distributed_reason(point, caps)
    if reason:
        raise Unsupported(reason)
    cfg = point.model_config()
    engine = make_rank_engine(point)
    local = rank_rows(random_batch(cfg, point.global_batch), group.rank, group.world)
    step, planned, check = train_closures(engine, engine.put(local))
    return Workload(point=point, step=step, sync=engine.sync,
                    samples_per_step=point.global_batch,
                    tokens_per_step=point.global_batch * tokens_per_user(point, cfg),
                    cost=analytic_cost(point), peak_fns=peak_fns(point, engine),
                    planned_mem_bytes=planned,
                    check=check, engine=engine)


def build_twin(point: Point, group: Group) -> Workload:
    """The compute-only twin of this rank's step: the same model on one process and this
    rank's device, at the per-rank batch, with no collective anywhere (a plain Engine). Its
    time against the distributed step's is the exposed communication (and sharding) cost."""
    from recmodels.train import make_engine

    cfg = point.model_config()
    kind = device_kind(point.device)
    device = kind
    if point.framework == "torch" and kind == "cuda":
        from recmodels.torch.distributed import local_device

        device = local_device(kind)
    engine = make_engine(point.framework, cfg, device=device, optimizer=point.optimizer,
                         precision=point.precision)
    local = rank_rows(random_batch(cfg, point.global_batch), group.rank, group.world)
    step, _, check = train_closures(engine, engine.put(local))
    return Workload(point=point, step=step, sync=engine.sync,
                    samples_per_step=len(local["seq"]), tokens_per_step=0, cost={},
                    peak_fns=(None, None), check=check, engine=engine)


def iterations_for(step_ms: float, min_time_s: float, min_iters: int, max_iters: int,
                   max_time_s: float) -> int:
    """How many timed steps every rank runs (the same count on each: a collective step
    cannot stop on one rank's clock): enough for min_time_s, within the iteration bounds
    and max_time_s."""
    step_s = max(step_ms, 1e-3) / 1e3
    n = max(min_iters, math.ceil(min_time_s / step_s))
    n = min(n, max_iters, max(1, math.floor(max_time_s / step_s)))
    return max(1, n)
