"""GenRec in JAX, the engine: optimisation and the Engine API.

Mirrors recmodels/torch/engine.py name for name and in the same order.
"""

from __future__ import annotations

from functools import partial, wraps
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from recmodels.config import GenRecConfig, padding_invariant
from recmodels.envvars import jax_platforms_problem
from recmodels.errors import InputError
from recmodels.hostmem import keep_host_memory
from recmodels.jax.blocks import Params
from recmodels.jax.distributed import (
    batch_sharding,
    local_device,
    make_mesh,
    pad,
    padded_rows,
    support_reason,
    to_host,
    to_local,
    tree_shardings,
    unpad,
)
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
from recmodels.splits import trim_padding

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
    """Forward, backward and one optimizer step: (state, batch) -> (state, metrics).

    The loss is the mean over every target of the (global) batch, so a batch split over
    devices or processes gives the one-device gradient, however unevenly padded its parts.
    Item-table rows past C+1 (sharding padding, see distributed.py) are sliced off first."""
    rng, step_rng = jax.random.split(state.rng)
    rng_arg = step_rng if cfg.dropout > 0 else None

    scaled = cfg.compute_dtype == "fp16"  # else the scale is 1: no pass over the gradients

    def scaled_loss(p):
        loss = loss_fn(unpad(p, cfg), cfg, batch, rng_arg)
        return (loss * state.loss_scale if scaled else loss), loss

    grads, loss = jax.grad(scaled_loss, has_aux=True)(state.params)
    if scaled:
        grads = jax.tree.map(lambda g: g / state.loss_scale, grads)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    return TrainState(params, opt_state, rng, state.loss_scale), {"loss": loss}


def resolve_devices(device: str) -> list[jax.Device]:
    """'cpu' | 'cuda[:i]' | 'tpu[:i]' -> [this process's device i]; 'KIND:all' -> every device
    of that kind, of every process under jax.distributed (one process: its local devices).
    The caller validates names; a missing backend raises RuntimeError from JAX, or InputError
    where JAX_PLATFORMS is why (recmodels.envvars.jax_platforms_problem)."""
    kind, _, index = device.partition(":")
    if problem := jax_platforms_problem(kind):
        raise InputError(problem)
    backend = {"cuda": "gpu"}.get(kind, kind)
    try:
        if index == "all":
            return jax.devices(backend)
        return [jax.local_devices(backend=backend)[int(index or 0)]]
    except (RuntimeError, AssertionError) as e:  # AssertionError: no listed platform started
        if problem := jax_platforms_problem(failed=e):
            raise InputError(problem) from None
        raise


def on_real_rows(fn):
    """fn(params, ..., cfg=cfg) seeing only the item table's C+1 real rows (see
    distributed.unpad): padded rows are never scored or recommended."""
    @wraps(fn)
    def wrapped(p, *args, cfg, **kwargs):
        return fn(unpad(p, cfg), *args, cfg=cfg, **kwargs)
    return wrapped


def pad_rows(batch: dict[str, np.ndarray], rows: int) -> dict[str, np.ndarray]:
    """A training batch with empty rows (all padding: no inputs, no targets) appended up to
    `rows`; as given when it has that many already. The loss is a mean over targets, so
    neither it nor any gradient changes."""
    n = len(batch["seq"])
    if n >= rows:
        return batch
    return {k: np.concatenate([v, np.zeros((rows - n, *v.shape[1:]), v.dtype)])
            for k, v in batch.items()}


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

    Several devices ("KIND:all"): data parallel over all of them, and with
    sharding="row-wise" the item table split by rows (layouts: recmodels/jax/distributed.py).
    Under jax.distributed (distributed.initialize first) "KIND:all" spans every process's
    devices and each process runs the same calls: batch arguments are then this process's
    rows of the global batch (the same count on each), results of score_candidates,
    score_catalog and recommend are this process's rows, loss and train_step's loss the
    global mean, and state_dict / load_state_dict full arrays (collectives: every process
    calls them together). Raises ValueError for a sharding support_reason refuses.
    """

    framework = "jax"

    def __init__(self, cfg: GenRecConfig, *, seed: int = 0, optimizer: str = "adam",
                 lr: float = 1e-3, device: str = "cpu", matmul_precision: str = "highest",
                 sharding: str = "dense"):
        reason = support_reason(sharding, cfg, device.partition(":")[0])
        if reason:
            raise ValueError(reason)
        self.cfg, self.sharding = cfg, sharding
        if device.partition(":")[0] == "cpu":
            keep_host_memory()
        self.devices = resolve_devices(device)
        self.device = local_device(self.devices)
        # Batches split along their first axis over every device; parameters and optimizer
        # state replicated but for the item table under row-wise. jit then inserts the
        # collectives (the gradients' all-reduce) itself.
        self.mesh = make_mesh(self.devices, sharding)
        self._replicated = jax.sharding.NamedSharding(self.mesh, jax.sharding.PartitionSpec())
        self._batch = batch_sharding(self.mesh)
        self._rows = padded_rows(cfg, self.mesh)  # C+1, or more to split the rows evenly
        set_matmul_precision(matmul_precision, cfg.compute_dtype)
        tx = make_optimizer(optimizer, lr)
        if cfg.compute_dtype == "fp16":  # a static loss scale can overflow: skip those steps
            tx = optax.apply_if_finite(tx, max_consecutive_errors=10**9)
        self.tx = tx
        init_key, dropout_key = jax.random.split(jax.random.key(seed))
        with jax.default_device(self.device):
            params = pad(init_params(cfg, init_key), self._rows)
        scale = FP16_LOSS_SCALE if cfg.compute_dtype == "fp16" else 1.0
        self._state_shardings = tree_shardings(
            TrainState(params, jax.eval_shape(tx.init, params), dropout_key, 0.0), self.mesh)
        self._init_opt = jax.jit(tx.init, out_shardings=self._state_shardings.opt_state)
        # Placed on the mesh, like the state a jitted step returns: otherwise the second
        # step sees different input placement and compiles again. device_put takes host
        # values onto every process's devices, but not key arrays: the key is drawn there.
        params = jax.device_put(params, self._state_shardings.params)
        dropout_key = jax.jit(lambda: jax.random.split(jax.random.key(seed))[1],
                              out_shardings=self._replicated)()
        self.state = TrainState(params, self._init_opt(params), dropout_key,
                                jax.device_put(jnp.float32(scale), self._replicated))
        self._rows_seen = 0  # the most rows a numpy training batch has had (pad_rows)
        # Trim padding columns only where one process holds the whole batch: processes
        # trimming their own rows could disagree on the width of the global batch.
        self._trim = padding_invariant(cfg) and len(self.mesh.local_devices) == len(self.devices)
        self._train_step = jax.jit(partial(train_step, cfg=cfg, tx=tx), donate_argnums=0,
                                   out_shardings=(self._state_shardings, self._replicated))
        self._loss = jax.jit(partial(on_real_rows(loss_fn), cfg=cfg))
        self._score_candidates = jax.jit(partial(on_real_rows(score_candidates), cfg=cfg))
        self._score_catalog = jax.jit(partial(on_real_rows(score_catalog), cfg=cfg))
        self._recommend = jax.jit(partial(on_real_rows(recommend), cfg=cfg), static_argnames="k")
        self._rank = jax.jit(partial(on_real_rows(rank), cfg=cfg), static_argnames="chunk")
        self._prefill = jax.jit(
            lambda p, seq, room: prefill(unpad(p, cfg), cfg, seq, seq.shape[1] + room)[1],
            static_argnames="room")
        self._decode = jax.jit(partial(on_real_rows(decode), cfg=cfg))
        self._generate = jax.jit(partial(on_real_rows(generate), cfg=cfg),
                                 static_argnames=("steps", "beam"))

    def put(self, batch: dict[str, np.ndarray]) -> dict[str, jax.Array]:
        """This process's rows of a batch -> global int32 arrays split over every device
        (jax.make_array_from_process_local_data; one process: all rows, a device_put).
        Raises ValueError if the rows do not split evenly over this process's devices."""
        n = len(self.mesh.local_devices)
        for v in batch.values():
            if len(v) % n:
                raise ValueError(f"batch of {len(v)} does not split evenly over {n} devices")
        return {k: jax.make_array_from_process_local_data(self._batch,
                                                          np.asarray(v, dtype=np.int32))
                for k, v in batch.items()}

    def train_step(self, batch: dict) -> jax.Array:
        """One step on a batch of numpy arrays or of put() arrays (as given). Numpy batches
        lose their leading all-padding columns where that changes nothing (one process
        only; splits.trim_padding: at most T/8 widths, one compiled program each), and a
        batch with fewer rows than the largest seen (an epoch's last) gains empty rows up to
        it, which change no loss or gradient (no targets), so it reuses that program."""
        if isinstance(next(iter(batch.values())), np.ndarray):
            if self._trim:
                batch = trim_padding(batch)
            batch = pad_rows(batch, self._rows_seen)
            self._rows_seen = len(batch["seq"])  # this process's rows, as put() takes them
            batch = self.put(batch)
        self.state, metrics = self._train_step(self.state, batch)
        return metrics["loss"]

    def loss(self, batch: dict[str, np.ndarray]) -> float:
        return float(self._loss(self.state.params, batch=self.put(batch)))

    def score_candidates(self, seq: np.ndarray, candidates: np.ndarray) -> np.ndarray:
        d = self.put({"seq": seq, "cand": candidates})
        return to_local(self._score_candidates(self.state.params, seq=d["seq"],
                                               candidates=d["cand"]), self.mesh)

    def score_catalog(self, seq: np.ndarray) -> np.ndarray:
        return to_local(self._score_catalog(self.state.params, seq=self.put({"seq": seq})["seq"]),
                        self.mesh)

    def infer_step(self, seq: jax.Array, k: int = 10) -> tuple[jax.Array, jax.Array]:
        """Top-k over the whole catalog for device-resident histories, left on the device."""
        return self._recommend(self.state.params, seq=seq, k=k)

    def recommend(self, seq: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        scores, ids = self.infer_step(self.put({"seq": seq})["seq"], k)
        return to_local(scores, self.mesh).astype(np.float32), to_local(ids, self.mesh)

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
        """Full fp32 arrays on every process, the item table [C+1, d] without padding."""
        out = {k: to_host(v).astype(np.float32, copy=False) for k, v in self.state.params.items()}
        out["item_emb.weight"] = out["item_emb.weight"][: self.cfg.catalog_size + 1]
        return out

    def load_state_dict(self, tensors: dict[str, np.ndarray]) -> None:
        own = self.state.params
        missing = sorted(set(own) ^ set(tensors))
        if missing:
            raise KeyError(f"state dict keys do not match the model: {missing[:5]}")
        with jax.default_device(self.device):
            params = pad({k: jnp.asarray(tensors[k], own[k].dtype) for k in own}, self._rows)
        params = jax.device_put(params, self._state_shardings.params)
        # Fresh optimizer state, as in torch: a loaded model's next step starts Adam anew.
        self.state = self.state._replace(params=params, opt_state=self._init_opt(params))
