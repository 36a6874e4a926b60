"""GenRec in PyTorch, scale-out: DDP, FSDP2 and a TorchRec-sharded item table, under torchrun.

One process per device, started by torchrun (its env: RANK, WORLD_SIZE, LOCAL_RANK,
MASTER_ADDR, MASTER_PORT). Each rank is given its own rows of a global batch of B rows (the
caller slices: rank r holds rows r*B/W to (r+1)*B/W), as the JAX engine's put takes
process-local rows.

- parallel="ddp", sharding="dense": the whole GenRec under DistributedDataParallel
  (https://pytorch.org/docs/stable/notes/ddp.html).
- parallel="fsdp2", sharding="dense": `fully_shard` on every block (or the LSTM), then on the
  root (https://pytorch.org/docs/stable/distributed.fsdp.fully_shard.html).
- sharding="row-wise" | "table-wise": the item table is a TorchRec EmbeddingCollection sharded by
  DistributedModelParallel with that sharding type forced through ParameterConstraints
  (table-wise with one table: the whole table on one rank, looked up by all); the rest
  (pos_emb, blocks, ln_f) is data parallel: DMP wraps it in DDP, or in FSDP2 through a
  DataParallelWrapper with parallel="fsdp2" (https://pytorch.org/torchrec/concepts.html).
  The table's optimizer is FBGEMM's, fused into the backward (split TBE, EmbOptimType;
  https://pytorch.org/FBGEMM/): it updates only the rows a batch looks up (TABLE_OPTIMIZERS);
  the fused twin of `optimizer`, or (table_optimizer="rowwise_adagrad") EXACT_ROWWISE_ADAGRAD,
  which FBGEMM has on CPU too. Seq, pos and neg ids are three features of the one table, so
  the tied output's rows are the same parameters as the input's. FBGEMM's kernels need a
  width divisible by 4: the table is stored table_width(d) wide, the extra columns zero and
  never looked up (see _TableLoss). What cannot run, and why: support_reason.

Loss normalisation: rank r's loss is W * (sum of its per-position losses) / N, N the
all-reduced number of targets (pos != 0) of the global batch. DDP, FSDP2's reduce-scatter and
TorchRec's embedding all-to-all backward (comm_ops.GRADIENT_DIVISION, on by default) all
average gradients over the W ranks, so every gradient is that of the global batch's mean loss,
whatever padding each rank holds: the 1-process Engine's gradient, up to summation order.
"""

from __future__ import annotations

import contextlib
import math
import os
from datetime import timedelta

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn

from recmodels.config import GenRecConfig
from recmodels.errors import InputError
from recmodels.hostmem import keep_host_memory
from recmodels.torch.blocks import DTYPES, attention_mask
from recmodels.torch.engine import make_optimizer, set_matmul_precision
from recmodels.torch.losses import LOSSES
from recmodels.torch.model import GenRec, attention_norm, positions, relative

PARALLELS = ("ddp", "fsdp2")
SHARDINGS = ("dense", "row-wise", "table-wise")
OPTIMIZERS = ("adam", "sgd")
TABLE_CHOICES = ("rowwise_adagrad",)  # table_optimizer besides None (the fused twin)
TABLE = "item_emb"  # the TorchRec table's name ("items" would shadow ModuleDict.items)
TABLE_KEY = f"ec.embeddings.{TABLE}.weight"  # its state_dict key; Engine's is item_emb.weight
FEATURES = ("seq", "pos", "neg")  # three features of the one table: tied input and output
TABLE_OPTIMIZERS = {  # how the table updates: TABLE_OPTIMIZERS[table or optimizer]
    "dense": "dense {opt} (torch.optim; every row, every step)",
    "sgd": "FBGEMM fused EXACT_SGD in backward (only rows the batch touches; equals dense SGD)",
    "adam": "FBGEMM fused ADAM in backward, betas (0.9, 0.98), eps 1e-8 (row-wise lazy: only "
            "rows the batch touches update their moments and weights; bias correction by the "
            "table's step count), so untouched rows differ from dense Adam",
    "rowwise_adagrad": "FBGEMM fused EXACT_ROWWISE_ADAGRAD in backward, eps 1e-8 (one "
                       "accumulator per row: the mean of g^2 over the row's stored width, "
                       "table_width(d)); the dense part with {opt}",
}


def table_width(d: int) -> int:
    """The TorchRec table's stored width: d rounded up to FBGEMM's multiple of 4."""
    return -(-d // 4) * 4


def init_process_group(timeout_s: float = 300.0) -> tuple[int, int]:
    """Join torchrun's process group (its env: RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT,
    LOCAL_RANK) and return (rank, world_size). Idempotent.

    gloo on a CPU-only machine. With CUDA, cuda:LOCAL_RANK becomes the current device and
    the group is "cpu:gloo,cuda:nccl": NCCL for CUDA tensors, gloo for CPU ones (so CPU points
    still run on a GPU machine). Every collective times out after timeout_s seconds.
    Raises RuntimeError when torchrun's variables are missing.
    """
    if dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    missing = [k for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
               if k not in os.environ]
    if missing:
        raise RuntimeError(f"no torchrun environment ({', '.join(missing)} unset): start the "
                           "program with `torchrun --nproc-per-node N ...`")
    backend, kw = "gloo", {}
    if torch.cuda.is_available():
        backend, kw["device_id"] = "cpu:gloo,cuda:nccl", torch.device(local_device("cuda"))
        torch.cuda.set_device(kw["device_id"])
    dist.init_process_group(backend, timeout=timedelta(seconds=timeout_s), **kw)
    return dist.get_rank(), dist.get_world_size()


def local_device(kind: str) -> str:
    """This process's device: "cpu", or f"cuda:{LOCAL_RANK}" (one GPU per process)."""
    if kind == "cpu":
        return "cpu"
    if kind == "cuda":
        return f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}"
    raise InputError(f"no distributed engine for device kind {kind!r}: choose cpu or cuda")


def support_reason(parallel: str, sharding: str, cfg: GenRecConfig, device_kind: str,
                   optimizer: str, table_optimizer: str | None = None) -> str | None:
    """Why this combination cannot run here, or None when it can."""
    for name, value, known in (("parallel", parallel, PARALLELS), ("sharding", sharding,
                               SHARDINGS), ("optimizer", optimizer, OPTIMIZERS),
                               ("device", device_kind, ("cpu", "cuda")),
                               ("table_optimizer", table_optimizer or TABLE_CHOICES[0],
                                TABLE_CHOICES)):
        if value not in known:
            return f"unknown {name} {value!r}: choose one of {', '.join(known)}"
    if device_kind == "cuda" and not torch.cuda.is_available():
        return "no CUDA device on this machine"
    if sharding == "dense":
        return (f"table_optimizer {table_optimizer!r} is FBGEMM's, for a TorchRec-sharded "
                "table (sharding row-wise or table-wise)" if table_optimizer else None)
    if cfg.loss == "full_softmax":
        return ("full_softmax scores every item (h . E^T over the whole table), which a "
                "sharded table only serves as per-id lookups; use bce or sampled_softmax")
    if cfg.param_dtype != "fp32":
        return "the TorchRec table is kept in fp32 here (param_dtype must be fp32)"
    if cfg.compute_dtype == "fp16":
        return ("fp16 needs loss scaling, and the table's optimizer runs inside backward, "
                "before a GradScaler could unscale or skip it")
    if (table_optimizer or optimizer) == "adam" and device_kind == "cpu":
        return ("FBGEMM's CPU embedding kernels have no fused Adam (EXACT_SGD, EXACT_ADAGRAD, "
                "EXACT_ROWWISE_ADAGRAD only); use optimizer = sgd, or a GPU (from Python: "
                "DistEngine(table_optimizer='rowwise_adagrad'))")
    return None


def _trunk(m: nn.Module, seq: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
    """GenRec.forward after the item lookup: [B, T] ids and their [B, T, d] table rows (zero
    at padding) -> [B, T, d] hidden states. Mirrors GenRec.embed and GenRec.forward."""
    cfg = m.cfg
    valid = (seq != 0).unsqueeze(-1)
    x = items * math.sqrt(cfg.d_model)
    if cfg.block == "lstm":
        x, _ = m.lstm(m.drop(x) * valid)
    else:
        pos = positions(seq, cfg)
        x, mask, rel = m.drop(x + m.pos_emb(pos)) * valid, attention_mask(seq), relative(pos, pos)
        norm = attention_norm(cfg, seq.shape[1])
        for blk in m.blocks:
            x, _ = blk(x, mask, rel, norm)
    return m.ln_f(x)


class _DenseLoss(GenRec):
    """GenRec whose forward is the summed loss, so DDP and FSDP2 see every use of the tied
    table inside one forward. Same parameters and state_dict keys as GenRec."""

    def forward(self, seq, pos, neg):
        """[B, T], [B, T], [B, T, R] ids -> sum over targets (pos != 0) of the loss."""
        per_pos = LOSSES[self.cfg.loss](super().forward(seq), self.item_emb.weight, pos, neg,
                                        self.cfg)
        return torch.where(pos != 0, per_pos, 0.0).sum()


class _TableLoss(nn.Module):
    """GenRec with the item table as a TorchRec EmbeddingCollection (on the meta device until
    DMP shards it) and GenRec's other modules, under their own names.

    The table is stored table_width(d) wide (FBGEMM needs a multiple of 4; tiny's d is 50),
    its extra columns zero: forward slices every looked-up row to its first d columns, so the
    extra columns' gradient is exactly zero and they stay zero under every fused optimizer
    here: EXACT_SGD (w -= lr * 0), Adam (zero grad -> zero moments -> zero update) and
    row-wise Adagrad (update lr * 0 / (sqrt(state) + eps)). Row-wise Adagrad's state, the
    mean of g^2 over the stored width, does see the padding: d/width of the unpadded mean."""

    def __init__(self, base: GenRec):
        super().__init__()
        from torchrec import EmbeddingCollection, EmbeddingConfig

        self.cfg = cfg = base.cfg
        self.ec = EmbeddingCollection(device=torch.device("meta"), tables=[EmbeddingConfig(
            name=TABLE, embedding_dim=table_width(cfg.d_model),
            num_embeddings=cfg.catalog_size + 1, feature_names=list(FEATURES))])
        for name, child in base.named_children():
            if name != "item_emb":
                self.add_module(name, child)

    def forward(self, seq, pos, neg):
        """As _DenseLoss. Only real ids are looked up: seq's non-padding ids, and pos and neg
        at target positions, so padding sends no gradient (nor a lazy Adam touch) to any row.
        The loss then runs on the n targets with a table of their 1 + R looked-up rows."""
        from torchrec import KeyedJaggedTensor

        valid, target, r = seq != 0, pos != 0, neg.shape[-1]
        kjt = KeyedJaggedTensor(
            keys=list(FEATURES),
            values=torch.cat([seq[valid], pos[target], neg[target].reshape(-1)]),
            lengths=torch.cat([valid.sum(1), target.sum(1), target.sum(1) * r]))
        d = self.cfg.d_model
        rows = {k: v.values()[:, :d] for k, v in self.ec(kjt).items()}  # [ids, d], unpadded
        items = torch.zeros(*seq.shape, d, device=seq.device)
        items[valid] = rows["seq"]
        h = _trunk(self, seq, items)[target][None]  # [1, n, d]
        table = torch.cat([rows["pos"], rows["neg"]])  # [n + n R, d]
        n = rows["pos"].shape[0]
        idx = torch.arange(n * (1 + r), device=seq.device)
        return LOSSES[self.cfg.loss](h, table, idx[None, :n],
                                     idx[n:].view(1, n, r), self.cfg).sum()


def _fully_shard(model: nn.Module, ignored: set[nn.Parameter] | None = None) -> nn.Module:
    """FSDP2: each block (or the LSTM) one unit, the root (embeddings, ln_f) another."""
    from torch.distributed.fsdp import fully_shard

    for module in (model.lstm,) if model.cfg.block == "lstm" else model.blocks:
        fully_shard(module)
    return fully_shard(model, ignored_params=ignored)


def _fsdp2_wrapper():
    """TorchRec's DataParallelWrapper that puts the dense part under FSDP2 instead of DDP,
    leaving the sharded table's parameters to TorchRec."""
    from torchrec.distributed.model_parallel import DataParallelWrapper

    class FSDP2Wrapper(DataParallelWrapper):
        def wrap(self, dmp, env, device):
            module = dmp._dmp_wrapped_module
            _fully_shard(module.to(device), set(module.ec.parameters()))

    return FSDP2Wrapper()


class DistEngine:
    """Engine's training API on W processes: train a step on a global batch, each rank given
    its own rows of it; save/load full weights. Construct it on every rank (it joins
    torchrun's process group); every method but put and sync is a collective, so all ranks
    call them in the same order.

    Raises InputError when support_reason names a reason. `no_comm` exists only for
    parallel="ddp", sharding="dense". With dropout 0, a step equals Engine's step on the
    whole global batch (fp32: summation order aside), for DDP and FSDP2 with either optimizer
    and for TorchRec with sgd; TorchRec's fused Adam is lazy (table_update says how the table
    updates). table_optimizer: None, the table's optimizer is the fused twin of `optimizer`;
    "rowwise_adagrad", FBGEMM's EXACT_ROWWISE_ADAGRAD (eps 1e-8) for the table, `optimizer`
    for the rest (a sharded table only).
    """

    framework = "torch"

    def __init__(self, cfg: GenRecConfig, *, parallel: str = "ddp", sharding: str = "dense",
                 seed: int = 0, optimizer: str = "adam", lr: float = 1e-3, device: str = "cpu",
                 matmul_precision: str = "highest", table_optimizer: str | None = None):
        self.rank, self.world = init_process_group()
        kind = torch.device(device).type
        reason = support_reason(parallel, sharding, cfg, kind, optimizer, table_optimizer)
        if reason:
            raise InputError(f"{parallel}/{sharding}/{optimizer} on {kind}: {reason}")
        self.cfg, self.parallel, self.sharding, self.seed = cfg, parallel, sharding, seed
        self.optimizer, self.lr, self.table_optimizer = optimizer, lr, table_optimizer
        self.device = torch.device(local_device(kind) if device == "cuda" else device)
        if self.device.type == "cpu":  # as Engine: the step's buffers reused (hostmem.py)
            keep_host_memory()
        set_matmul_precision(matmul_precision)
        mixed = cfg.compute_dtype != cfg.param_dtype
        self.autocast_dtype = DTYPES[cfg.compute_dtype] if mixed else None
        self.scaler = (torch.amp.GradScaler(self.device.type)
                       if mixed and cfg.compute_dtype == "fp16" else None)
        table = "dense" if sharding == "dense" else table_optimizer or optimizer
        self.table_update = TABLE_OPTIMIZERS[table].format(opt={"adam": "Adam",
                                                                "sgd": "SGD"}[optimizer])
        if parallel == "ddp" and sharding == "dense":
            self.no_comm = self._no_comm  # only DDP has a compute-only twin (no_sync)
        self._comm = True
        self._build(None)

    def _build(self, tensors: dict[str, np.ndarray] | None) -> None:
        """Seeded init as Engine's (or `tensors`), then shard; a fresh optimizer."""
        torch.manual_seed(self.seed)
        dtype = DTYPES[self.cfg.param_dtype]
        base = (_DenseLoss if self.sharding == "dense" else GenRec)(self.cfg).to(dtype=dtype)
        if tensors is not None:
            own = base.state_dict()
            base.load_state_dict({k: torch.tensor(np.asarray(v), dtype=own[k].dtype)
                                  for k, v in tensors.items()})
        cuda_ids = [self.device] if self.device.type == "cuda" else None
        if self.sharding == "dense":
            self.model = base.to(self.device)
            if self.parallel == "ddp":
                self.wrapped = nn.parallel.DistributedDataParallel(self.model,
                                                                   device_ids=cuda_ids)
            else:
                self.wrapped = _fully_shard(self.model)
            self.opt = make_optimizer(self.model, self.optimizer, self.lr)
        else:
            self._shard_table(base)
        # Each rank's dropout masks from its own stream (the init above is the same on all).
        torch.manual_seed(self.seed + 1 + self.rank)

    def _shard_table(self, base: GenRec) -> None:
        """DMP over _TableLoss: the plan forces the sharding type and the fused kernel; the
        full table, zero-padded to table_width(d), is then loaded, each rank keeping its shard
        (TorchRec slices it)."""
        from fbgemm_gpu.split_embedding_configs import EmbOptimType
        from torchrec.distributed.comm_ops import get_gradient_division
        from torchrec.distributed.embedding import EmbeddingCollectionSharder
        from torchrec.distributed.model_parallel import DistributedModelParallel
        from torchrec.distributed.planner import (
            EmbeddingShardingPlanner,
            ParameterConstraints,
            Topology,
        )

        if not get_gradient_division():  # the W in train_step's loss assumes averaging
            raise RuntimeError("torchrec.distributed.comm_ops.set_gradient_division(False) "
                               "makes the table's gradients W times those of the dense part")
        fused = {"optimizer": EmbOptimType.EXACT_SGD, "learning_rate": self.lr}
        if self.table_optimizer == "rowwise_adagrad":
            fused.update(optimizer=EmbOptimType.EXACT_ROWWISE_ADAGRAD, eps=1e-8)
        elif self.optimizer == "adam":
            fused.update(optimizer=EmbOptimType.ADAM, beta1=0.9, beta2=0.98, eps=1e-8)
        sharders = [EmbeddingCollectionSharder(fused_params=fused)]
        constraints = {TABLE: ParameterConstraints(
            sharding_types=[self.sharding.replace("-", "_")], compute_kernels=["fused"])}
        planner = EmbeddingShardingPlanner(constraints=constraints, topology=Topology(
            world_size=self.world, local_world_size=int(os.environ.get("LOCAL_WORLD_SIZE",
                                                                       self.world)),
            compute_device=self.device.type))
        module = _TableLoss(base)
        plan = planner.collective_plan(module, sharders, dist.GroupMember.WORLD)
        self.wrapped = DistributedModelParallel(
            module, device=self.device, plan=plan, sharders=sharders,
            data_parallel_wrapper=_fsdp2_wrapper() if self.parallel == "fsdp2" else None)
        pad = table_width(self.cfg.d_model) - self.cfg.d_model
        self.wrapped.load_state_dict({TABLE_KEY: nn.functional.pad(
            base.item_emb.weight.detach(), (0, pad))}, strict=False)
        dense = [p for k, p in self.wrapped.named_parameters() if not k.startswith("ec.")]
        self.model = self.wrapped.module
        self.opt = make_optimizer(nn.ParameterList(dense), self.optimizer, self.lr)

    def put(self, batch: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
        """This rank's rows of the global batch ("seq" [b, T], "pos" [b, T], "neg" [b, T, R],
        b = B/W: rows rank*B/W to (rank+1)*B/W, sliced by the caller), on this rank's device."""
        return {k: torch.from_numpy(np.asarray(v, dtype=np.int64)).to(self.device)
                for k, v in batch.items()}

    def train_step(self, batch: dict) -> torch.Tensor:
        """One step on the global batch, given this rank's rows of it (numpy, or put's
        tensors) -> the global batch's mean loss (detached, on the device, unsynchronised)."""
        self.wrapped.train()
        if isinstance(next(iter(batch.values())), np.ndarray):
            batch = self.put(batch)
        n = (batch["pos"] != 0).sum()
        work = dist.all_reduce(n, async_op=True) if self._comm else None
        self.opt.zero_grad(set_to_none=True)
        with torch.autocast(self.device.type, dtype=self.autocast_dtype,
                            enabled=self.autocast_dtype is not None):
            local_sum = self.wrapped(batch["seq"], batch["pos"], batch["neg"])
        if work is not None:
            work.wait()
        else:
            n = n * self.world  # compute-only twin: this rank's count stands for each rank's
        loss = local_sum * (self.world / n.clamp(min=1))
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.step(self.opt)
            self.scaler.update()
        else:
            loss.backward()
            self.opt.step()
        total = loss.detach()
        if self._comm:
            dist.all_reduce(total)
        return total / self.world

    @contextlib.contextmanager
    def _no_comm(self):
        """Steps without any collective (DDP.no_sync, no count or loss all-reduce): the
        compute-only twin of a step, for timing. Ranks' weights then drift apart."""
        self._comm = False
        try:
            with self.wrapped.no_sync():
                yield
        finally:
            self._comm = True

    def sync(self, value=None):
        """Wait for this rank's queued device work (CUDA); returns value."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return value

    def all_finite(self) -> bool:
        """Whether every parameter on every rank is finite (one all-reduce)."""
        local = [p.to_local() if hasattr(p, "to_local") else p
                 for p in self.wrapped.parameters()]
        ok = torch.stack([torch.isfinite(p).all() for p in local]).all().to(torch.int32)
        dist.all_reduce(ok, op=dist.ReduceOp.MIN)
        return bool(ok)

    def state_dict(self) -> dict[str, np.ndarray]:
        """Full parameters under Engine's keys, as fp32 numpy arrays, on every rank (a
        collective: call it on all ranks). Shards are gathered with FSDP2's full_tensor or
        TorchRec's ShardedTensor.gather to rank 0 and a broadcast."""
        out = {}
        for k, v in self.wrapped.state_dict().items():
            if k.startswith("module."):  # DDP's prefix
                k = k[len("module."):]
            if hasattr(v, "full_tensor"):  # FSDP2's DTensor
                v = v.full_tensor()
            elif hasattr(v, "local_shards"):  # TorchRec's ShardedTensor
                full = torch.empty(v.size(), dtype=v.dtype, device=self.device)
                v.gather(dst=0, out=full if self.rank == 0 else None)
                dist.broadcast(full, 0)
                k, v = "item_emb.weight", full[:, :self.cfg.d_model]  # without the padding
            out[k] = v.detach().float().cpu().numpy().copy()
        return out

    def load_state_dict(self, tensors: dict[str, np.ndarray]) -> None:
        """Full tensors under Engine's keys (the same on every rank; the table [C+1, d]); each
        rank keeps its shard. Rebuilds the model, so every optimizer state starts fresh (the
        fused table optimizer's too). Raises RuntimeError on missing or unexpected keys."""
        self._build(tensors)
