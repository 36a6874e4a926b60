"""GenRec in JAX, the engine: optimisation and the Engine API.

Mirrors recmodels/torch/engine.py name for name and in the same order.
"""

from __future__ import annotations

from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from recmodels.config import GenRecConfig
from recmodels.jax.blocks import Params
from recmodels.jax.kv_cache import (
    RANK_CHUNK,
    KVCache,
    check_cacheable,
    decode,
    generate,
    prefill,
    rank,
)
from recmodels.jax.losses import loss_fn
from recmodels.jax.model import init_params, recommend, score_candidates, score_catalog

# --- optimisation


def make_optimizer(name: str = "adam", lr: float = 1e-3) -> optax.GradientTransformation:
    """Adam with SASRec's betas (0.9, 0.98), or plain SGD."""
    if name == "adam":
        return optax.adam(lr, b1=0.9, b2=0.98, eps=1e-8)
    if name == "sgd":
        return optax.sgd(lr)
    raise ValueError(f"unknown optimizer {name!r}")


class TrainState(NamedTuple):
    params: Params
    opt_state: optax.OptState
    rng: jax.Array
    loss_scale: jax.Array  # 1.0 unless fp16 compute (static scale; see train_step)


FP16_LOSS_SCALE = 2.0**12  # keeps small fp16 gradients from flushing to zero


def train_step(state: TrainState, batch: dict[str, jax.Array], *, cfg: GenRecConfig,
               tx: optax.GradientTransformation) -> tuple[TrainState, dict[str, jax.Array]]:
    """Forward, backward and one optimizer step: (state, batch) -> (state, metrics)."""
    rng, step_rng = jax.random.split(state.rng)
    rng_arg = step_rng if cfg.dropout > 0 else None

    def scaled_loss(p):
        loss = loss_fn(p, cfg, batch, rng_arg)
        return loss * state.loss_scale, loss

    grads, loss = jax.grad(scaled_loss, has_aux=True)(state.params)
    grads = jax.tree.map(lambda g: g / state.loss_scale, grads)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    return TrainState(params, opt_state, rng, state.loss_scale), {"loss": loss}


def resolve_devices(device: str) -> list[jax.Device]:
    """'cpu' | 'cuda[:i]' | 'tpu[:i]' -> [that device]; 'KIND:all' -> every local device of
    that kind (data parallel). The caller validates names; a missing backend raises
    RuntimeError from JAX."""
    kind, _, index = device.partition(":")
    devices = jax.devices({"cuda": "gpu"}.get(kind, kind))
    return devices if index == "all" else [devices[int(index or 0)]]


def set_matmul_precision(mode: str, compute_dtype: str = "fp32") -> None:
    """'highest': fp32 matmuls are fp32 (XLA's GPU default would use TF32); 'tf32': allow
    TF32. Low-precision compute keeps XLA's default, which is what those dtypes need (CPU
    rejects 'highest' for fp16 dots). Process-wide, like the framework setting it wraps."""
    if compute_dtype != "fp32":
        mode = "default"
    jax.config.update("jax_default_matmul_precision",
                      {"tf32": "tensorfloat32", "highest": "highest"}.get(mode, "default"))


class Engine:
    """The small API both frameworks expose: train a step, score, recommend, save/load.

    Takes and returns numpy arrays at its edges; `put` moves a batch to the device once so a
    benchmark can time the step alone.
    """

    framework = "jax"

    def __init__(self, cfg: GenRecConfig, *, seed: int = 0, optimizer: str = "adam",
                 lr: float = 1e-3, device: str = "cpu", matmul_precision: str = "highest"):
        self.cfg = cfg
        self.devices = resolve_devices(device)
        self.device = self.devices[0]
        # Data parallel over several devices: parameters and optimizer state replicated,
        # batches split along their first axis; jit then all-reduces the gradients itself.
        mesh = jax.sharding.Mesh(np.array(self.devices), ("data",))
        self._replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
        self._batch = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
        set_matmul_precision(matmul_precision, cfg.compute_dtype)
        tx = make_optimizer(optimizer, lr)
        if cfg.compute_dtype == "fp16":  # a static loss scale can overflow: skip those steps
            tx = optax.apply_if_finite(tx, max_consecutive_errors=10**9)
        self.tx = tx
        init_key, dropout_key = jax.random.split(jax.random.key(seed))
        with jax.default_device(self.device):
            params = init_params(cfg, init_key)
            scale = FP16_LOSS_SCALE if cfg.compute_dtype == "fp16" else 1.0
            state = TrainState(params, tx.init(params), dropout_key, jnp.float32(scale))
        # Committed to the device, like the state a jitted step returns: otherwise the
        # second step sees different input placement and compiles again.
        self.state = jax.device_put(state, self._replicated)
        self._train_step = jax.jit(partial(train_step, cfg=cfg, tx=tx), donate_argnums=0)
        self._loss = jax.jit(partial(loss_fn, cfg=cfg))
        self._score_candidates = jax.jit(partial(score_candidates, cfg=cfg))
        self._score_catalog = jax.jit(partial(score_catalog, cfg=cfg))
        self._recommend = jax.jit(partial(recommend, cfg=cfg), static_argnames="k")
        self._rank = jax.jit(partial(rank, cfg=cfg), static_argnames="chunk")
        self._prefill = jax.jit(lambda p, seq, room: prefill(p, cfg, seq, seq.shape[1] + room)[1],
                                static_argnames="room")
        self._decode = jax.jit(partial(decode, cfg=cfg))
        self._generate = jax.jit(partial(generate, cfg=cfg), static_argnames=("steps", "beam"))

    def put(self, batch: dict[str, np.ndarray]) -> dict[str, jax.Array]:
        n = len(self.devices)
        for v in batch.values():
            if len(v) % n:
                raise ValueError(f"batch of {len(v)} does not split evenly over {n} devices")
        return {k: jax.device_put(np.asarray(v, dtype=np.int32), self._batch)
                for k, v in batch.items()}

    def train_step(self, batch: dict) -> jax.Array:
        if isinstance(next(iter(batch.values())), np.ndarray):
            batch = self.put(batch)
        self.state, metrics = self._train_step(self.state, batch)
        return metrics["loss"]

    def loss(self, batch: dict[str, np.ndarray]) -> float:
        return float(self._loss(self.state.params, batch=self.put(batch)))

    def score_candidates(self, seq: np.ndarray, candidates: np.ndarray) -> np.ndarray:
        d = self.put({"seq": seq, "cand": candidates})
        return np.asarray(self._score_candidates(self.state.params, seq=d["seq"],
                                                 candidates=d["cand"]))

    def score_catalog(self, seq: np.ndarray) -> np.ndarray:
        return np.asarray(self._score_catalog(self.state.params, seq=self.put({"seq": seq})["seq"]))

    def infer_step(self, seq: jax.Array, k: int = 10) -> tuple[jax.Array, jax.Array]:
        """Top-k over the whole catalog for device-resident histories, left on the device."""
        return self._recommend(self.state.params, seq=seq, k=k)

    def recommend(self, seq: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        scores, ids = self.infer_step(self.put({"seq": seq})["seq"], k)
        return np.asarray(scores, dtype=np.float32), np.asarray(ids)

    # The serving API (recbench serve): device arrays in, device arrays out, no host sync.

    def rank_step(self, seq: jax.Array, candidates: jax.Array,
                  chunk: int = RANK_CHUNK) -> jax.Array:
        """[B, T] histories, [B, K] candidate ids -> [B, K] float32 scores (M-FALCON)."""
        return self._rank(self.state.params, seq=seq, candidates=candidates, chunk=chunk)

    def prefill(self, seq: jax.Array, room: int = 16) -> KVCache:
        """Encode [B, T] histories once into a KV cache with `room` columns to append to."""
        check_cacheable(self.cfg, append=True)
        return self._prefill(self.state.params, seq, room=room)

    def decode(self, cache: KVCache, items: jax.Array) -> tuple[jax.Array, KVCache]:
        """Append one item per row [B] -> (scores over the catalog [B, C+1], the cache)."""
        return self._decode(self.state.params, cache=cache, items=items)

    def generate(self, seq: jax.Array, steps: int = 4,
                 beam: int = 16) -> tuple[jax.Array, jax.Array]:
        """Beam search with the KV cache -> (items [B, W, S], log-probabilities [B, W])."""
        return self._generate(self.state.params, seq=seq, steps=steps, beam=beam)

    def planned_memory_bytes(self, batch: dict[str, jax.Array] | None = None,
                             seq: jax.Array | None = None, k: int = 10) -> int:
        """XLA's buffer plan for the train step (batch given) or the infer step (seq given):
        arguments + outputs + temporaries - donated aliases. Exact for the compiled program;
        the allocator's fragmentation comes on top."""
        if batch is not None:
            lowered = self._train_step.lower(self.state, batch)
        else:
            lowered = self._recommend.lower(self.state.params, seq=seq, k=k)
        m = lowered.compile().memory_analysis()
        return int(m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes
                   - m.alias_size_in_bytes)

    def sync(self, value=None):
        return jax.block_until_ready(value)

    def all_finite(self) -> bool:
        """Whether every parameter is finite (one reduction, one read back): a diverged run
        has non-finite parameters, a step that fp16 loss scaling skipped does not."""
        return bool(jnp.stack([jnp.isfinite(v).all() for v in self.state.params.values()]).all())

    def state_dict(self) -> dict[str, np.ndarray]:
        return {k: np.asarray(v, dtype=np.float32) for k, v in self.state.params.items()}

    def load_state_dict(self, tensors: dict[str, np.ndarray]) -> None:
        own = self.state.params
        missing = sorted(set(own) ^ set(tensors))
        if missing:
            raise KeyError(f"state dict keys do not match the model: {missing[:5]}")
        params = {k: jnp.asarray(tensors[k], own[k].dtype) for k in own}
        # Fresh optimizer state, as in torch: a loaded model's next step starts Adam anew.
        self.state = jax.device_put(
            self.state._replace(params=params, opt_state=self.tx.init(params)),
            self._replicated)
