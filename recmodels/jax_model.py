"""GenRec in JAX: pure functions over a flat params dict, optax for the optimizer.

Mirrors torch_model.py name for name and in the same order; the params keys equal the
torch state_dict keys and every matrix keeps torch's [out, in] layout, so one safetensors
file loads into either framework.

Shapes: B batch, T sequence length, d model width, h heads, C catalog size, R negatives.
Input sequences are left-padded with item 0, so the most recent item is always at T-1.
Mixed precision mirrors torch.autocast: matmuls run in compute_dtype, LayerNorm and the
losses in fp32, and the residual stream stays fp32.
"""

from __future__ import annotations

import math
from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from recmodels.config import GenRecConfig

DTYPES = {"fp32": jnp.float32, "bf16": jnp.bfloat16, "fp16": jnp.float16}
INIT_STD = 0.02  # GPT-2's initialiser for every matrix and embedding
Params = dict[str, jax.Array]


def attention_mask(seq: jax.Array) -> jax.Array:
    """[B, T] ids -> [B, 1, T, T] bool, True where query t may attend to key s.

    Causal, and padded keys are hidden. Every position also sees itself, so the rows of
    padded queries are never empty (their outputs are ignored by the loss).
    """
    t = seq.shape[1]
    causal = jnp.tril(jnp.ones((t, t), dtype=bool))
    eye = jnp.eye(t, dtype=bool)
    return (causal & (seq != 0)[:, None, None, :]) | eye


def linear(p: Params, name: str, x: jax.Array, cfg: GenRecConfig) -> jax.Array:
    """torch.nn.Linear: x @ W^T + b, in the compute dtype."""
    cd = DTYPES[cfg.compute_dtype]
    return x.astype(cd) @ p[f"{name}.weight"].astype(cd).T + p[f"{name}.bias"].astype(cd)


def layer_norm(p: Params, name: str, x: jax.Array) -> jax.Array:
    """torch.nn.LayerNorm (eps 1e-5), computed in fp32 as autocast does."""
    x = x.astype(jnp.float32)
    mean = x.mean(-1, keepdims=True)
    var = jnp.square(x - mean).mean(-1, keepdims=True)
    return (x - mean) * jax.lax.rsqrt(var + 1e-5) * p[f"{name}.weight"] + p[f"{name}.bias"]


def dropout(x: jax.Array, rate: float, rng: jax.Array | None) -> jax.Array:
    """Inverted dropout; identity when rng is None (evaluation) or rate is 0."""
    if rng is None or rate == 0.0:
        return x
    keep = jax.random.bernoulli(rng, 1.0 - rate, x.shape)
    return jnp.where(keep, x / (1.0 - rate), 0).astype(x.dtype)


def causal_self_attention(p: Params, name: str, x: jax.Array, mask: jax.Array,
                          cfg: GenRecConfig, kv: jax.Array | None = None,
                          rng: jax.Array | None = None) -> jax.Array:
    """Multi-head softmax attention (SASRec, Kang & McAuley 2018), softmax in fp32; in the
    reference layout q from x, k and v from kv, dropout on the weights, no output projection.

    Written out rather than jax.nn.dot_product_attention, whose fp16 path asks XLA:CPU for
    an fp16 x fp16 -> fp32 dot it does not support (jax 0.10); XLA fuses this form itself.
    """
    b, t, d = x.shape
    reference = cfg.sasrec_layout == "reference"
    if reference:
        q = linear(p, f"{name}.q", x, cfg)
        k, v = jnp.split(linear(p, f"{name}.kv", kv, cfg), 2, axis=-1)
    else:
        q, k, v = jnp.split(linear(p, f"{name}.qkv", x, cfg), 3, axis=-1)
    q, k, v = (z.reshape(b, t, cfg.n_head, d // cfg.n_head) for z in (q, k, v))
    scores = jnp.einsum("bqhd,bkhd->bhqk", q, k).astype(jnp.float32) / math.sqrt(d // cfg.n_head)
    probs = jax.nn.softmax(jnp.where(mask, scores, -jnp.inf), axis=-1).astype(v.dtype)
    probs = dropout(probs, cfg.dropout if reference else 0.0, rng)
    y = jnp.einsum("bhqk,bkhd->bqhd", probs, v).reshape(b, t, d)  # [B, T, h * d/h]
    return y if reference else linear(p, f"{name}.proj", y, cfg)


def feed_forward(p: Params, name: str, x: jax.Array, cfg: GenRecConfig,
                 rng: jax.Array | None = None) -> jax.Array:
    """Point-wise FFN: d -> d_ff -> d with GELU (exact erf form, as torch's default) in the
    prenorm layout, or ReLU and dropout (reference)."""
    h = linear(p, f"{name}.fc1", x, cfg)
    h = (dropout(jax.nn.relu(h), cfg.dropout, rng) if cfg.sasrec_layout == "reference"
         else jax.nn.gelu(h, approximate=False))
    return linear(p, f"{name}.fc2", h, cfg)


def sasrec_block(p: Params, name: str, x: jax.Array, mask: jax.Array, cfg: GenRecConfig,
                 rng: jax.Array | None) -> jax.Array:
    """prenorm: x + attn(LN(x)), then x + FFN(LN(x)). reference (kang205/SASRec model.py):
    h = LN(x), x = h + attn(q=h, k=v=x), then h = LN(x), h + FFN(h)."""
    reference = cfg.sasrec_layout == "reference"  # prenorm: the 2 keys it always drew
    r = list(jax.random.split(rng, 3 if reference else 2)) if rng is not None else [None] * 3
    if reference:
        h = layer_norm(p, f"{name}.ln1", x)
        h = layer_norm(p, f"{name}.ln2", h + causal_self_attention(p, f"{name}.attn", h, mask,
                                                                     cfg, x, r[0]))
        return h + dropout(feed_forward(p, f"{name}.ffn", h, cfg, r[2]), cfg.dropout, r[1])
    x = x + dropout(causal_self_attention(p, f"{name}.attn", layer_norm(p, f"{name}.ln1", x),
                                          mask, cfg), cfg.dropout, r[0])
    return x + dropout(feed_forward(p, f"{name}.ffn", layer_norm(p, f"{name}.ln2", x), cfg),
                       cfg.dropout, r[1])


def hstu_block(p: Params, name: str, x: jax.Array, mask: jax.Array, cfg: GenRecConfig,
               rng: jax.Array | None) -> jax.Array:
    """HSTU (Zhai et al. 2024, "Actions Speak Louder than Words", eq. 1-3).

    U, V, Q, K = SiLU(LN(x) W_uvqk); A = SiLU(Q K^T + rab) / T on the causal, unpadded
    pairs; y = x + W_o(U * LN(A V)). rab is a learned bias per relative position.
    """
    b, t, d = x.shape
    u, v, q, k = jnp.split(jax.nn.silu(linear(p, f"{name}.uvqk",
                                              layer_norm(p, f"{name}.ln_in", x), cfg)), 4, -1)
    q, k, v = (z.reshape(b, t, cfg.n_head, d // cfg.n_head).transpose(0, 2, 1, 3)
               for z in (q, k, v))
    pos = jnp.arange(t)
    table = p[f"{name}.rel_bias"]
    rab = table[pos[None, :] - pos[:, None] + table.shape[0] // 2]  # [T, T]
    a = jax.nn.silu(q @ k.transpose(0, 1, 3, 2) + rab) * mask / t  # [B,h,T,T]
    av = (a.astype(v.dtype) @ v).transpose(0, 2, 1, 3).reshape(b, t, d)
    y = linear(p, f"{name}.out", u * layer_norm(p, f"{name}.ln_attn", av), cfg)
    return x + dropout(y, cfg.dropout, rng)


def lstm(p: Params, x: jax.Array, cfg: GenRecConfig, rng: jax.Array | None) -> jax.Array:
    """torch.nn.LSTM (batch_first, gate order i, f, g, o) as a lax.scan over time."""
    cd = DTYPES[cfg.compute_dtype]
    b, _, d = x.shape
    for layer in range(cfg.n_layer):
        w_ih, w_hh = (p[f"lstm.weight_{w}_l{layer}"].astype(cd) for w in ("ih", "hh"))
        bias = (p[f"lstm.bias_ih_l{layer}"] + p[f"lstm.bias_hh_l{layer}"]).astype(cd)
        x_gates = x.astype(cd) @ w_ih.T + bias  # all input projections at once: [B, T, 4d]

        def cell(carry, xg, w_hh=w_hh):
            h, c = carry
            i, f, g, o = jnp.split(xg + h.astype(cd) @ w_hh.T, 4, axis=-1)
            c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
            h = jax.nn.sigmoid(o) * jnp.tanh(c)
            return (h, c), h

        zeros = jnp.zeros((b, d), cd)
        _, hs = jax.lax.scan(cell, (zeros, zeros), x_gates.swapaxes(0, 1))
        x = hs.swapaxes(0, 1)
        if layer < cfg.n_layer - 1:  # torch applies dropout between layers only
            x = dropout(x, cfg.dropout, None if rng is None else jax.random.fold_in(rng, layer))
    return x


def forward(p: Params, cfg: GenRecConfig, seq: jax.Array,
            rng: jax.Array | None = None) -> jax.Array:
    """[B, T] item ids -> [B, T, d] hidden states. rng given = training mode (dropout)."""
    t = seq.shape[1]
    rngs = list(jax.random.split(rng, cfg.n_layer + 2)) if rng is not None else [None] * (
        cfg.n_layer + 2)
    valid = (seq != 0)[..., None]
    x = p["item_emb.weight"][seq] * math.sqrt(cfg.d_model)
    if cfg.block == "lstm":
        x = dropout(x, cfg.dropout, rngs[0]) * valid
        x = lstm(p, x, cfg, rngs[1])
    else:
        x = dropout(x + p["pos_emb.weight"][cfg.seq_len - t:], cfg.dropout, rngs[0]) * valid
        mask = attention_mask(seq)
        block = sasrec_block if cfg.block == "sasrec" else hstu_block
        for i in range(cfg.n_layer):
            x = block(p, f"blocks.{i}", x, mask, cfg, rngs[i + 2])
    return layer_norm(p, "ln_f", x)


def init_params(cfg: GenRecConfig, rng: jax.Array) -> Params:
    """Same shapes, names and distributions as GenRec.reset_parameters in torch_model.py."""
    d, f, c = cfg.d_model, cfg.d_ff, cfg.catalog_size
    shapes: dict[str, tuple[int, ...]] = {"item_emb.weight": (c + 1, d)}
    if cfg.block == "lstm":
        for i in range(cfg.n_layer):
            shapes |= {f"lstm.weight_ih_l{i}": (4 * d, d), f"lstm.weight_hh_l{i}": (4 * d, d),
                       f"lstm.bias_ih_l{i}": (4 * d,), f"lstm.bias_hh_l{i}": (4 * d,)}
    else:
        shapes["pos_emb.weight"] = (cfg.seq_len, d)
        for i in range(cfg.n_layer):
            n = f"blocks.{i}"
            if cfg.block == "sasrec":  # the reference layout has q and kv, and no attn.proj
                layers = ({"ln1": (d, d), "attn.q": (d, d), "attn.kv": (2 * d, d)}
                          if cfg.sasrec_layout == "reference" else
                          {"ln1": (d, d), "attn.qkv": (3 * d, d), "attn.proj": (d, d)})
                layers |= {"ln2": (d, d), "ffn.fc1": (f, d), "ffn.fc2": (d, f)}
            else:
                layers = {"ln_in": (d, d), "uvqk": (4 * d, d), "ln_attn": (d, d), "out": (d, d)}
                shapes[f"{n}.rel_bias"] = (2 * cfg.seq_len - 1,)
            for layer, (out_dim, in_dim) in layers.items():
                is_ln = layer.startswith("ln")
                shapes[f"{n}.{layer}.weight"] = (out_dim,) if is_ln else (out_dim, in_dim)
                shapes[f"{n}.{layer}.bias"] = (out_dim,)
    shapes |= {"ln_f.weight": (d,), "ln_f.bias": (d,)}

    pdt = DTYPES[cfg.param_dtype]
    params = {}
    for i, (name, shape) in enumerate(sorted(shapes.items())):
        key = jax.random.fold_in(rng, i)
        if name.startswith("lstm."):
            bound = 1.0 / math.sqrt(d)  # torch.nn.LSTM's own init
            params[name] = jax.random.uniform(key, shape, pdt, -bound, bound)
        elif name.endswith("bias"):
            params[name] = jnp.zeros(shape, pdt)
        elif ".ln" in name or name.startswith("ln_f"):
            params[name] = jnp.ones(shape, pdt)
        else:
            params[name] = (INIT_STD * jax.random.normal(key, shape)).astype(pdt)
    params["item_emb.weight"] = params["item_emb.weight"].at[0].set(0)
    return params


# --- losses: h [B, T, d], pos [B, T], neg [B, T, R]; positions with pos == 0 are ignored.


def bce_loss(h: jax.Array, table: jax.Array, pos: jax.Array, neg: jax.Array,
             cfg: GenRecConfig) -> jax.Array:
    """SASRec's loss: -log sigmoid(s_pos) - sum_r log(1 - sigmoid(s_neg_r)), per position."""
    cd = DTYPES[cfg.compute_dtype]
    s_pos = (h * table[pos]).sum(-1).astype(jnp.float32)  # element-wise: not lowered
    s_neg = jnp.einsum("btd,btrd->btr", h.astype(cd), table[neg].astype(cd)).astype(jnp.float32)
    return jax.nn.softplus(-s_pos) + jax.nn.softplus(s_neg).sum(-1)


def sampled_softmax_loss(h: jax.Array, table: jax.Array, pos: jax.Array, neg: jax.Array,
                         cfg: GenRecConfig) -> jax.Array:
    """Cross-entropy of the positive against R uniform negatives (uniform sampling makes the
    logQ correction a constant, so it is omitted)."""
    cd = DTYPES[cfg.compute_dtype]
    s_pos = (h * table[pos]).sum(-1, keepdims=True).astype(jnp.float32)  # not lowered
    s_neg = jnp.einsum("btd,btrd->btr", h.astype(cd), table[neg].astype(cd))
    logits = jnp.concatenate([s_pos, s_neg.astype(jnp.float32)], axis=-1) / cfg.temperature
    return jax.nn.logsumexp(logits, axis=-1) - logits[..., 0]


def full_softmax_loss(h: jax.Array, table: jax.Array, pos: jax.Array, neg: jax.Array,
                      cfg: GenRecConfig) -> jax.Array:
    """Cross-entropy over the whole catalog; the padding column can never be predicted."""
    cd = DTYPES[cfg.compute_dtype]
    logits = (h.astype(cd) @ table.astype(cd).T).astype(jnp.float32)  # [B, T, C+1]
    logits = logits.at[..., 0].set(-jnp.inf)
    return jax.nn.logsumexp(logits, axis=-1) - jnp.take_along_axis(
        logits, pos[..., None], axis=-1)[..., 0]


LOSSES = {"bce": bce_loss, "sampled_softmax": sampled_softmax_loss,
          "full_softmax": full_softmax_loss}


def loss_fn(p: Params, cfg: GenRecConfig, batch: dict[str, jax.Array],
            rng: jax.Array | None = None) -> jax.Array:
    """Mean loss over the positions that have a target."""
    # h in the parameter dtype, as torch's final LayerNorm returns it under autocast: the
    # losses lower only their matmuls (einsum, @) to compute_dtype, as autocast does, and
    # keep the element-wise positive score in h's dtype.
    h = forward(p, cfg, batch["seq"], rng).astype(DTYPES[cfg.param_dtype])
    per_pos = LOSSES[cfg.loss](h, p["item_emb.weight"], batch["pos"], batch["neg"], cfg)
    mask = batch["pos"] != 0
    # where, not a product: full softmax gives inf at padded positions and inf * 0 is nan
    return jnp.where(mask, per_pos, 0.0).sum() / jnp.maximum(mask.sum(), 1)


# --- scoring


def _last_hidden(p: Params, cfg: GenRecConfig, seq: jax.Array) -> tuple[jax.Array, jax.Array]:
    h = forward(p, cfg, seq)[:, -1].astype(DTYPES[cfg.compute_dtype])
    return h, p["item_emb.weight"].astype(h.dtype)


def score_candidates(p: Params, cfg: GenRecConfig, seq: jax.Array,
                     candidates: jax.Array) -> jax.Array:
    """[B, T] histories, [B, K] candidate ids -> [B, K] scores of the last position."""
    h, table = _last_hidden(p, cfg, seq)
    return jnp.einsum("bd,bkd->bk", h, table[candidates]).astype(jnp.float32)


def score_catalog(p: Params, cfg: GenRecConfig, seq: jax.Array) -> jax.Array:
    """[B, T] histories -> [B, C+1] scores of every item; column 0 (padding) is -inf."""
    h, table = _last_hidden(p, cfg, seq)
    return (h @ table.T).astype(jnp.float32).at[:, 0].set(-jnp.inf)


def recommend(p: Params, cfg: GenRecConfig, seq: jax.Array, k: int,
              exclude_seen: bool = True) -> tuple[jax.Array, jax.Array]:
    """Top-k items for each user over the whole catalog -> (scores [B, k], ids [B, k])."""
    scores = score_catalog(p, cfg, seq)
    if exclude_seen:
        scores = scores.at[jnp.arange(seq.shape[0])[:, None], seq].set(-jnp.inf)
    return jax.lax.top_k(scores, k)


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
