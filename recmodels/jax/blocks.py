"""GenRec in JAX, the layers: attention mask, attention, FFN, the blocks and the LSTM.

Pure functions over a flat params dict.

Mirrors recmodels/torch/blocks.py name for name and in the same order; the params keys equal the
torch state_dict keys and every matrix keeps torch's [out, in] layout, so one safetensors
file loads into either framework.

Shapes: B batch, T sequence length, d model width, h heads, C catalog size, R negatives.
Input sequences are left-padded with item 0, so the most recent item is always at T-1.
Mixed precision mirrors torch.autocast: matmuls run in compute_dtype, LayerNorm and the
losses in fp32, and the residual stream stays fp32.

Every block takes (x, mask, rel, norm, ctx) and returns (y, (k, v)): rel [B|1, 1, T, L+T] is
the relative position of each key to each query (HSTU's bias), norm HSTU's divisor, ctx the
keys and values [B, L, h, d/h] of earlier positions (a KV cache; None: the keys are x's own)
and (k, v) those of x's own positions, for the cache.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

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


# A counter-based hash for dropout masks: lowbias32 (C. Wellons, "Prospecting for hash
# functions", 2018), a full-avalanche 32-bit mixer. The torch side's compiled dropout uses
# SplitMix64 the same way (recmodels/torch/blocks.py keep_mask); JAX without x64 has no
# 64-bit integers, hence the 32-bit mixer, applied twice to mix in both words of the key.
_MIX1, _MIX2 = 0x7FEB352D, 0x846CA68B


def _mix32(z: jax.Array) -> jax.Array:
    z = (z ^ (z >> 16)) * jnp.uint32(_MIX1)
    z = (z ^ (z >> 15)) * jnp.uint32(_MIX2)
    return z ^ (z >> 16)


def keep_mask(shape: tuple[int, ...], rate: float, rng: jax.Array) -> jax.Array:
    """A dropout mask as a pure function of (key, element index): element i is kept when
    mix(mix(i ^ k0) + k1) >= rate * 2^32, k0 and k1 the key's words (P(keep) = 1 - rate to
    2^-32). Elementwise, so XLA fuses it into the ops that use it, forward and backward:
    no random-number state, nothing stored (threefry's bits cost ~20 rounds an element and
    a stored array). Raises ValueError past 2^32 elements (the counter is 32-bit)."""
    n = math.prod(shape)
    if n > 2**32:
        raise ValueError(f"dropout over {n} elements: the mask's counter is 32-bit")
    words = jax.random.key_data(rng) if jnp.issubdtype(rng.dtype, jax.dtypes.prng_key) else rng
    k0, k1 = words.reshape(-1)[:2].astype(jnp.uint32)
    i = jax.lax.iota(jnp.uint32, n).reshape(shape)
    threshold = jnp.uint32(min(round(rate * 2**32), 2**32 - 1))
    return _mix32(_mix32(i ^ k0) + k1) >= threshold


def dropout(x: jax.Array, rate: float, rng: jax.Array | None) -> jax.Array:
    """Inverted dropout with keep_mask; identity when rng is None (evaluation) or rate is 0."""
    if rng is None or rate == 0.0:
        return x
    return jnp.where(keep_mask(x.shape, rate, rng), x / (1.0 - rate), 0).astype(x.dtype)


@jax.custom_vjp
def grad_barrier(x: jax.Array) -> jax.Array:
    """The identity, whose cotangent XLA computes once and stores.

    Without it XLA:CPU fuses the backward residual stream (each later block's LayerNorm and
    residual gradient) into every consumer and recomputes it there: work quadratic in the
    depth (small's backward ran at a fifth of its forward's FLOP rate). An
    optimization_barrier is removed before fusion on CPU; a division is an op XLA's fusion
    will not duplicate, so the cotangent is divided by ones it cannot fold (1 where x is
    finite, NaN where it is not: the loss and every gradient are NaN there already)."""
    return x


def _barrier_fwd(x: jax.Array) -> tuple[jax.Array, jax.Array]:
    return x, jnp.where(jnp.isfinite(x), jnp.ones((), x.dtype), jnp.nan)


def _barrier_bwd(ones: jax.Array, g: jax.Array) -> tuple[jax.Array]:
    return (g / ones,)


grad_barrier.defvjp(_barrier_fwd, _barrier_bwd)


def with_context(k: jax.Array, v: jax.Array,
                 ctx: tuple[jax.Array, jax.Array] | None) -> tuple[jax.Array, ...]:
    """Keys and values [B, T, h, d/h] of x's own positions after those of the cache, if any."""
    if ctx is None:
        return k, v
    return jnp.concatenate([ctx[0], k], axis=1), jnp.concatenate([ctx[1], v], axis=1)


def causal_self_attention(p: Params, name: str, x: jax.Array, mask: jax.Array,
                          cfg: GenRecConfig, kv: jax.Array | None = None,
                          rng: jax.Array | None = None,
                          ctx: tuple[jax.Array, jax.Array] | None = None):
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
    keys, values = with_context(k, v, ctx)
    scores = (jnp.einsum("bqhd,bkhd->bhqk", q, keys).astype(jnp.float32)
              / math.sqrt(d // cfg.n_head))
    probs = jax.nn.softmax(jnp.where(mask, scores, -jnp.inf), axis=-1).astype(v.dtype)
    probs = dropout(probs, cfg.dropout if reference else 0.0, rng)
    y = jnp.einsum("bhqk,bkhd->bqhd", probs, values).reshape(b, t, d)  # [B, T, h * d/h]
    return (y if reference else linear(p, f"{name}.proj", y, cfg)), (k, v)


def feed_forward(p: Params, name: str, x: jax.Array, cfg: GenRecConfig,
                 rng: jax.Array | None = None) -> jax.Array:
    """Point-wise FFN: d -> d_ff -> d with GELU (exact erf form, as torch's default) in the
    prenorm layout, or ReLU and dropout (reference). (jax.nn.gelu's erfc form, not
    x/2 (1 + erf(x/sqrt 2)): XLA:CPU stores erf's result apart, +270 MiB at B=1024, T=100.)"""
    h = linear(p, f"{name}.fc1", x, cfg)
    h = (dropout(jax.nn.relu(h), cfg.dropout, rng) if cfg.sasrec_layout == "reference"
         else jax.nn.gelu(h, approximate=False))
    return linear(p, f"{name}.fc2", h, cfg)


def sasrec_block(p: Params, name: str, x: jax.Array, mask: jax.Array, rel: jax.Array,
                 norm: int, cfg: GenRecConfig, rng: jax.Array | None,
                 ctx: tuple[jax.Array, jax.Array] | None = None):
    """prenorm: x + attn(LN(x)), then x + FFN(LN(x)). reference (kang205/SASRec model.py):
    h = LN(x), x = h + attn(q=h, k=v=x), then h = LN(x), h + FFN(h)."""
    reference = cfg.sasrec_layout == "reference"  # prenorm: the 2 keys it always drew
    x = grad_barrier(x)
    r = list(jax.random.split(rng, 3 if reference else 2)) if rng is not None else [None] * 3
    if reference:
        h = layer_norm(p, f"{name}.ln1", x)
        a, kv = causal_self_attention(p, f"{name}.attn", h, mask, cfg, x, r[0], ctx)
        h = layer_norm(p, f"{name}.ln2", h + a)
        return h + dropout(feed_forward(p, f"{name}.ffn", h, cfg, r[2]), cfg.dropout, r[1]), kv
    a, kv = causal_self_attention(p, f"{name}.attn", layer_norm(p, f"{name}.ln1", x), mask, cfg,
                                  ctx=ctx)
    x = grad_barrier(x + dropout(a, cfg.dropout, r[0]))
    return x + dropout(feed_forward(p, f"{name}.ffn", layer_norm(p, f"{name}.ln2", x), cfg),
                       cfg.dropout, r[1]), kv


def hstu_block(p: Params, name: str, x: jax.Array, mask: jax.Array, rel: jax.Array,
               norm: int, cfg: GenRecConfig, rng: jax.Array | None,
               ctx: tuple[jax.Array, jax.Array] | None = None):
    """HSTU (Zhai et al. 2024, "Actions Speak Louder than Words", eq. 1-3).

    U, V, Q, K = SiLU(LN(x) W_uvqk); A = SiLU(Q K^T + rab) / n on the causal, unpadded
    pairs; y = x + W_o(U * LN(A V)). rab is a learned bias per relative position; n is the
    padded length T with right-aligned positions, the table's length seq_len with positions
    from the oldest item (then a position's output does not depend on later ones).
    """
    b, t, d = x.shape
    x = grad_barrier(x)
    u, v, q, k = jnp.split(jax.nn.silu(linear(p, f"{name}.uvqk",
                                              layer_norm(p, f"{name}.ln_in", x), cfg)), 4, -1)
    q, k, v = (z.reshape(b, t, cfg.n_head, d // cfg.n_head) for z in (q, k, v))
    q, keys, values = (z.transpose(0, 2, 1, 3) for z in (q, *with_context(k, v, ctx)))
    table = p[f"{name}.rel_bias"]
    rab = table[rel + table.shape[0] // 2]  # [B|1, 1, T, L+T]
    a = jax.nn.silu(q @ keys.transpose(0, 1, 3, 2) + rab) * mask / norm  # [B, h, T, L+T]
    av = (a.astype(v.dtype) @ values).transpose(0, 2, 1, 3).reshape(b, t, d)
    y = linear(p, f"{name}.out", u * layer_norm(p, f"{name}.ln_attn", av), cfg)
    return x + dropout(y, cfg.dropout, rng), (k, v)


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
