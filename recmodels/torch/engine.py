"""GenRec in PyTorch, the engine: optimisation and the Engine API.

Mirrors recmodels/jax/engine.py name for name and in the same order.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn

from recmodels.config import GenRecConfig, padding_invariant
from recmodels.hostmem import keep_host_memory
from recmodels.splits import trim_padding
from recmodels.torch.blocks import DTYPES
from recmodels.torch.kv_cache import (
    RANK_CHUNK,
    KVCache,
    check_cacheable,
    decode,
    generate,
    prefill,
    rank,
)
from recmodels.torch.losses import loss_fn
from recmodels.torch.model import GenRec, recommend, score_candidates, score_catalog

COMPILE_MODES = ("eager", "default", "reduce-overhead", "max-autotune")
CUDA_GRAPH_MODES = ("reduce-overhead", "max-autotune")  # inductor replays CUDA graphs

# --- optimisation


def make_optimizer(model: GenRec, name: str = "adam", lr: float = 1e-3,
                   fused: bool = False) -> torch.optim.Optimizer:
    """Adam with SASRec's betas (0.9, 0.98), or plain SGD. fused: torch's one-kernel Adam
    (CPU and CUDA; the same update, one pass over each tensor instead of ~10)."""
    if name == "adam":
        return torch.optim.Adam(model.parameters(), lr=lr, betas=(0.9, 0.98), eps=1e-8,
                                fused=fused or None)
    if name == "sgd":
        return torch.optim.SGD(model.parameters(), lr=lr)
    raise ValueError(f"unknown optimizer {name!r}")


def train_step(model: GenRec, opt: torch.optim.Optimizer, batch: dict[str, torch.Tensor],
               autocast_dtype: torch.dtype | None = None,
               scaler: torch.amp.GradScaler | None = None, loss=loss_fn) -> torch.Tensor:
    """Forward, backward and one optimizer step; returns the (unsynchronised) loss.
    `loss`: loss_fn or a torch.compile of it (Engine.compile)."""
    opt.zero_grad(set_to_none=True)
    with torch.autocast(batch["seq"].device.type, dtype=autocast_dtype,
                        enabled=autocast_dtype is not None):
        loss = loss(model, batch)
    if scaler is not None:  # fp16 needs loss scaling; bf16 and fp32 do not
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
    else:
        loss.backward()
        opt.step()
    return loss.detach()


def set_matmul_precision(mode: str) -> None:
    """'highest': fp32 matmuls are fp32; 'tf32': CUDA may use TF32 tensor cores for them.
    (Process-wide, like the framework settings it wraps; no effect on CPU.)"""
    torch.backends.cuda.matmul.allow_tf32 = mode == "tf32"
    torch.backends.cudnn.allow_tf32 = mode == "tf32"


def packed(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The batch and ``tok`` [N]: the flat indices of its positions with an item or a target,
    which loss_fn then computes packed (blocks.Packing)."""
    used = (batch["seq"] != 0) | (batch["pos"] != 0)
    return {**batch, "tok": np.flatnonzero(used)}


def prepare(batch: dict[str, np.ndarray], cfg: GenRecConfig, compile_mode: str,
            device_type: str) -> dict[str, np.ndarray]:
    """A numpy training batch as Engine.train_step computes it. Where config.padding_invariant
    holds: trimmed (splits.trim_padding; compiled, to widths in steps of 8 so a compiler sees
    few sizes) and packed, except under CUDA graphs (CUDA_GRAPH_MODES on "cuda"), which are
    recorded per size: the token count, new at every batch, would re-record them every step,
    so those step on the trimmed [B, T'] batch unpacked."""
    if not padding_invariant(cfg):
        return batch
    batch = trim_padding(batch, 1 if compile_mode == "eager" else 8)
    if compile_mode in CUDA_GRAPH_MODES and device_type == "cuda":
        return batch
    return packed(batch)


def compiled_graphs() -> int:
    """Graphs TorchDynamo has compiled in this process (its unique_graphs counter)."""
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


class Engine:
    """The small API both frameworks expose: train a step, score, recommend, save/load.

    Takes and returns numpy arrays at its edges; `put` moves a batch to the device once so a
    benchmark can time the step alone.
    """

    framework = "torch"

    def __init__(self, cfg: GenRecConfig, *, seed: int = 0, optimizer: str = "adam",
                 lr: float = 1e-3, device: str = "cpu", matmul_precision: str = "highest",
                 compile: str = "eager"):
        self.cfg = cfg
        self.device = torch.device(device)
        if self.device.type == "cpu":  # the step's buffers reused, not faulted in anew
            keep_host_memory()
        set_matmul_precision(matmul_precision)
        torch.manual_seed(seed)
        self.model = GenRec(cfg).to(self.device, DTYPES[cfg.param_dtype])
        self.optimizer, self.lr = optimizer, lr
        self.fused = self.device.type in ("cpu", "cuda")
        self.opt = make_optimizer(self.model, optimizer, lr, self.fused)
        self.compile_mode, self._loss, self._graphs0 = "eager", loss_fn, 0
        mixed = cfg.compute_dtype != cfg.param_dtype
        self.autocast_dtype = DTYPES[cfg.compute_dtype] if mixed else None
        self.scaler = (torch.amp.GradScaler(self.device.type)
                       if mixed and cfg.compute_dtype == "fp16" else None)
        if compile != "eager":
            self.compile(compile)

    def put(self, batch: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
        """numpy arrays -> contiguous int64 tensors on the device. Compiled, their batch and
        length dimensions are marked dynamic: training widths, token counts and an epoch's
        (or an evaluation's) smaller last batch then share one graph."""
        out = {k: torch.from_numpy(np.ascontiguousarray(v, dtype=np.int64)).to(self.device,
                                                                         non_blocking=True)
               for k, v in batch.items()}
        if self.compile_mode != "eager":
            for v in out.values():
                for dim in range(min(v.dim(), 2)):
                    torch._dynamo.maybe_mark_dynamic(v, dim)
        return out

    def train_step(self, batch: dict) -> torch.Tensor:
        """One step on a batch of numpy arrays or of put() tensors (computed as given).
        Numpy batches, where config.padding_invariant holds, lose their leading all-padding
        columns (splits.trim_padding) and are computed packed (blocks.Packing): the same loss
        and update at a fraction of the work on real, mostly padded histories."""
        self.model.train()
        if isinstance(next(iter(batch.values())), np.ndarray):
            batch = self.put(prepare(batch, self.cfg, self.compile_mode, self.device.type))
        graphs = self.compile_mode in CUDA_GRAPH_MODES and self.device.type == "cuda"
        if graphs:  # a new iteration of the CUDA graph trees: earlier outputs may be reused
            torch.compiler.cudagraph_mark_step_begin()
        loss = train_step(self.model, self.opt, batch, self.autocast_dtype, self.scaler,
                          self._loss)
        return loss.clone() if graphs else loss  # kept across steps (the train loop's list)

    def _eval(self, fn, *args):
        self.model.eval()
        with torch.inference_mode(), torch.autocast(self.device.type, dtype=self.autocast_dtype,
                                                    enabled=self.autocast_dtype is not None):
            return fn(self.model, *args)

    def loss(self, batch: dict[str, np.ndarray]) -> float:
        return float(self._eval(loss_fn, self.put(batch)))

    def score_candidates(self, seq: np.ndarray, candidates: np.ndarray) -> np.ndarray:
        d = self.put({"seq": seq, "cand": candidates})
        return self._eval(score_candidates, d["seq"], d["cand"]).cpu().numpy()

    def score_catalog(self, seq: np.ndarray) -> np.ndarray:
        return self._eval(score_catalog, self.put({"seq": seq})["seq"]).cpu().numpy()

    def infer_step(self, seq: torch.Tensor, k: int = 10) -> tuple[torch.Tensor, torch.Tensor]:
        """Top-k over the whole catalog for device-resident histories, left on the device."""
        return self._eval(recommend, seq, k)

    def recommend(self, seq: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        scores, ids = self.infer_step(self.put({"seq": seq})["seq"], k)
        return scores.float().cpu().numpy(), ids.cpu().numpy()

    # The serving API (recbench serve): device arrays in, device arrays out, no host sync.

    def rank_step(self, seq: torch.Tensor, candidates: torch.Tensor,
                  chunk: int = RANK_CHUNK) -> torch.Tensor:
        """[B, T] histories, [B, K] candidate ids -> [B, K] float32 scores (M-FALCON)."""
        return self._eval(rank, seq, candidates, chunk)

    def prefill(self, seq: torch.Tensor, room: int = 16) -> KVCache:
        """Encode [B, T] histories once into a KV cache with `room` columns to append to."""
        check_cacheable(self.cfg, append=True)
        return self._eval(lambda m, s: prefill(m, s, s.shape[1] + room)[1], seq)

    def decode(self, cache: KVCache, items: torch.Tensor) -> tuple[torch.Tensor, KVCache]:
        """Append one item per row [B] -> (scores over the catalog [B, C+1], the cache)."""
        return self._eval(decode, cache, items)

    def generate(self, seq: torch.Tensor, steps: int = 4,
                 beam: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
        """Beam search with the KV cache -> (items [B, W, S], log-probabilities [B, W])."""
        return self._eval(generate, seq, steps, beam)

    def compile(self, mode: str = "default") -> None:
        """torch.compile the training loss (model, loss and their backward: one graph each)
        and the model's forward for scoring, in `mode` (COMPILE_MODES; "reduce-overhead"
        adds CUDA graphs on GPUs, "max-autotune" searches GEMM kernels too). state_dict keys
        are unchanged. Compilation happens at the first call of each; count graphs with
        compiled_graphs(). Raises ValueError for an unknown mode."""
        if mode not in COMPILE_MODES:
            raise ValueError(f"unknown compile mode {mode!r}: choose one of "
                             f"{', '.join(COMPILE_MODES)}")
        if mode == "eager":
            return
        kw = {} if mode == "default" else {"mode": mode}
        self._graphs0 = compiled_graphs()
        self._loss = torch.compile(loss_fn, **kw)
        self.model.compile(**kw)
        self.compile_mode = mode

    def compiled_graphs(self) -> int:
        """Graphs torch.compile has built in this process since compile() (0 when eager):
        a count that grows after warm-up means steps are recompiling."""
        return compiled_graphs() - self._graphs0 if self.compile_mode != "eager" else 0

    def quantize_int8(self) -> None:
        """Dynamic int8 quantisation of the Linear and LSTM weights, for CPU inference
        (torch.ao.quantization.quantize_dynamic; the tied catalog scoring stays fp32)."""
        self.model = torch.ao.quantization.quantize_dynamic(
            self.model, {nn.Linear, nn.LSTM}, dtype=torch.qint8)

    def planned_memory_bytes(self, batch: dict | None = None, seq: torch.Tensor | None = None,
                             k: int = 10) -> None:
        """Eager PyTorch plans no memory ahead of time (the JAX engine's XLA plan has no
        counterpart here): None."""
        return None

    def sync(self, value=None):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        elif self.device.type == "mps":
            torch.mps.synchronize()
        return value

    def all_finite(self) -> bool:
        """Whether every parameter is finite (one reduction, one read back): a diverged run
        has non-finite parameters, a step that fp16 loss scaling skipped does not."""
        return bool(torch.stack([torch.isfinite(p).all() for p in self.model.parameters()]).all())

    def state_dict(self) -> dict[str, np.ndarray]:
        # .copy(): on CPU .numpy() shares memory with the live parameters
        return {k: v.detach().float().cpu().numpy().copy()
                for k, v in self.model.state_dict().items()}

    def load_state_dict(self, tensors: dict[str, np.ndarray]) -> None:
        own = self.model.state_dict()
        self.model.load_state_dict({k: torch.tensor(np.asarray(v), dtype=own[k].dtype)
                                    for k, v in tensors.items()})
        # Fresh optimizer state, as in JAX: a loaded model's next step starts Adam anew.
        self.opt = make_optimizer(self.model, self.optimizer, self.lr, self.fused)
