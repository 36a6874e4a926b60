"""GenRec in JAX, scale-out: jax.distributed start-up, the device mesh and its shardings.

Mirrors recmodels/torch/distributed.py in its names (initialize, support_reason,
local_device). Everything here is JAX's own machinery: jax.distributed.initialize (the
coordination service), XLA's CPU collectives over gloo, jax.sharding.Mesh / NamedSharding /
PartitionSpec, and jax.experimental.multihost_utils. Nothing home-made moves data between
processes.

The mesh has two axes, ("data", "model"):

- "dense":    shape (n, 1). Every parameter replicated; batches split over the n devices.
- "row-wise": shape (1, n). The item table `item_emb.weight` [C+1, d] split by rows over
  "model" (n shards; TorchRec's row-wise layout), the dense parameters replicated; batches
  still split over all n devices.

Batches use PartitionSpec(("data", "model")) in both, so every device holds 1/n of the batch
and the dense compute is data parallel either way; the two layouts differ only in where the
item table (and its optimizer state) lives. jit's SPMD partitioner inserts the collectives
(all-reduce of the dense gradients; gathers for the sharded table), which run over gloo
between CPU processes, NCCL between GPUs and ICI on TPUs.

jit inputs must split evenly (JAX raises IndivisibleError otherwise), so the table is padded
with zero rows to a multiple of the "model" axis; the engine slices them off before any use
(see unpad): they get zero gradients, stay zero under Adam and SGD, are never scored, and
state_dict returns the unpadded [C+1, d].
"""

from __future__ import annotations

import math
import os

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from recmodels.config import GenRecConfig

SHARDINGS = ("dense", "row-wise", "table-wise")
TABLE = "item_emb.weight"  # the one parameter row-wise sharding splits
JAX_KINDS = ("cpu", "cuda", "gpu", "tpu")


def initialize(timeout_s: float = 300.0) -> tuple[int, int]:
    """Join the jax.distributed job described by torchrun's environment; idempotent.

    Reads RANK, WORLD_SIZE, MASTER_ADDR (default 127.0.0.1), MASTER_PORT and LOCAL_RANK, as
    torchrun (used here as a plain process launcher) sets them. JAX's coordinator listens on
    MASTER_PORT + 1, because torchrun's own TCPStore already holds MASTER_PORT;
    JAX_COORDINATOR_ADDRESS ("host:port") overrides that. LOCAL_RANK picks this process's
    accelerator (local_device_ids); CPU processes ignore it. CPU collectives go through gloo.
    `timeout_s` bounds the connection, the CPU topology exchange, the heartbeat after which
    a silent peer counts as dead, and the wait for the others at shutdown.

    Must run before anything initialises a JAX backend (jax.devices(), any computation):
    JAX raises RuntimeError otherwise; so does this when RANK or MASTER_PORT is missing.
    WORLD_SIZE unset or 1: a no-op returning (0, 1). Returns (process_index, process_count).
    See https://docs.jax.dev/en/latest/multi_process.html.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1
    if jax.distributed.is_initialized():
        return jax.process_index(), jax.process_count()
    need = ("RANK",) if "JAX_COORDINATOR_ADDRESS" in os.environ else ("RANK", "MASTER_PORT")
    missing = [k for k in need if k not in os.environ]
    if missing:
        raise RuntimeError(f"WORLD_SIZE={world} but {', '.join(missing)} unset: start the "
                           "program with `torchrun --nproc-per-node N ...`")
    rank = int(os.environ["RANK"])
    address = os.environ.get("JAX_COORDINATOR_ADDRESS") or (
        f"{os.environ.get('MASTER_ADDR', '127.0.0.1')}:{int(os.environ['MASTER_PORT']) + 1}")
    local_rank = os.environ.get("LOCAL_RANK")
    timeout = max(1, math.ceil(timeout_s))
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    minutes = max(1, math.ceil(timeout_s / 60))
    jax.config.update("jax_cpu_get_local_topology_timeout_minutes", minutes)
    jax.config.update("jax_cpu_get_global_topology_timeout_minutes", minutes)
    jax.distributed.initialize(
        coordinator_address=address, num_processes=world, process_id=rank,
        local_device_ids=None if local_rank is None else [int(local_rank)],
        cluster_detection_method="deactivate", initialization_timeout=timeout,
        heartbeat_timeout_seconds=timeout, shutdown_timeout_seconds=timeout)
    return jax.process_index(), jax.process_count()


def local_device(devices: list[jax.Device]) -> jax.Device:
    """The first of `devices` that this process drives (under jax.distributed the others
    belong to other processes). Raises ValueError if there is none."""
    mine = [d for d in devices if d.process_index == jax.process_index()]
    if not mine:
        raise ValueError(f"none of {len(devices)} devices belongs to process "
                         f"{jax.process_index()}")
    return mine[0]


def support_reason(sharding: str, cfg: GenRecConfig, device_kind: str) -> str | None:
    """Why this sharding of cfg cannot run under JAX on `device_kind`, or None if it can."""
    if sharding not in SHARDINGS:
        return f"unknown sharding {sharding!r}; expected one of {', '.join(SHARDINGS)}"
    if device_kind not in JAX_KINDS:
        return f"JAX has no {device_kind} backend"
    if sharding == "table-wise":
        return ("table-wise (each table whole on one device) has no NamedSharding "
                "equivalent: jit places every argument on the whole mesh, and GenRec has a "
                "single item table; row-wise splits it over the devices instead")
    if cfg.catalog_size < 1:
        return f"catalog_size {cfg.catalog_size} leaves no item rows to shard"
    return None


def make_mesh(devices: list[jax.Device], sharding: str) -> Mesh:
    """Devices -> Mesh with axes ("data", "model"): (n, 1) for "dense", (1, n) for "row-wise".
    Device order is kept (jax.devices() lists them by process), so each process's devices
    are contiguous along the batch and its local rows are a contiguous block of the global
    batch. Raises ValueError for a sharding support_reason refuses."""
    if sharding not in ("dense", "row-wise"):
        raise ValueError(f"sharding {sharding!r} has no mesh here; use dense or row-wise")
    n = len(devices)
    return Mesh(np.array(devices).reshape((n, 1) if sharding == "dense" else (1, n)),
                ("data", "model"))


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) axis split over every device of the mesh."""
    return NamedSharding(mesh, P(("data", "model")))


def param_sharding(mesh: Mesh, name: str) -> NamedSharding:
    """The item table by rows over "model" when that axis has several devices; everything
    else, and the table under "dense", replicated."""
    split = name == TABLE and mesh.shape["model"] > 1
    return NamedSharding(mesh, P("model", None) if split else P())


def tree_shardings(tree, mesh: Mesh):
    """A sharding for each leaf of a params-shaped or optimizer-state pytree: a leaf whose
    path holds the item table's key (the parameter, or Adam's mu / nu for it) is sharded
    like the table, everything else (counters, the rng, the loss scale) replicated."""
    def one(path, _):
        name = TABLE if any(getattr(k, "key", None) == TABLE for k in path) else ""
        return param_sharding(mesh, name)
    return jax.tree_util.tree_map_with_path(one, tree)


def padded_rows(cfg: GenRecConfig, mesh: Mesh) -> int:
    """C+1 rounded up to a multiple of the "model" axis, so the table's rows split evenly."""
    m = mesh.shape["model"]
    return -(-(cfg.catalog_size + 1) // m) * m


def pad(params: dict, rows: int) -> dict:
    """The item table with zero rows appended up to `rows` (a copy when it grows)."""
    table = params[TABLE]
    if table.shape[0] == rows:
        return params
    return {**params, TABLE: jnp.pad(table, ((0, rows - table.shape[0]), (0, 0)))}


def unpad(params: dict, cfg: GenRecConfig) -> dict:
    """The item table's real rows [C+1, d] only; the same dict when there is no padding.
    Used inside jit: the slice's gradient is zero on the padded rows."""
    table = params[TABLE]
    if table.shape[0] == cfg.catalog_size + 1:
        return params
    return {**params, TABLE: table[: cfg.catalog_size + 1]}


def to_host(x: jax.Array) -> np.ndarray:
    """The whole of a (possibly multi-process) array as numpy on this process. A collective
    when other processes hold parts of it: every process must call it, in the same order."""
    if x.is_fully_addressable or x.is_fully_replicated:
        return np.asarray(x)
    return multihost_utils.process_allgather(x, tiled=True)


def to_local(x: jax.Array, mesh: Mesh) -> np.ndarray:
    """This process's rows of a batch-major result, as numpy (one process: all of them)."""
    return np.asarray(multihost_utils.global_array_to_host_local_array(
        x, mesh, P(("data", "model"))))
