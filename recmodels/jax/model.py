"""GenRec in JAX, the model: forward, init_params and scoring.

Mirrors recmodels/torch/model.py name for name and in the same order.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from recmodels.config import GenRecConfig
from recmodels.jax.blocks import (
    DTYPES,
    INIT_STD,
    Params,
    attention_mask,
    dropout,
    hstu_block,
    layer_norm,
    lstm,
    sasrec_block,
)


def positions(seq: jax.Array, cfg: GenRecConfig, extra: int = 0) -> jax.Array:
    """[B, T] ids -> [B|1, T] rows of the position table. right: the newest item at
    seq_len-1-extra (extra: positions reserved after it); left: the oldest real item at 0,
    padding at 0, capped at seq_len-1."""
    t = seq.shape[1]
    if cfg.positions == "right":
        if t + extra > cfg.seq_len:
            raise ValueError(f"{t} + {extra} positions do not fit in seq_len {cfg.seq_len}")
        return jnp.arange(cfg.seq_len - t - extra, cfg.seq_len - extra)[None]
    n_pad = (seq == 0).sum(1, keepdims=True)
    return jnp.clip(jnp.arange(t)[None] - n_pad, 0, cfg.seq_len - 1)


def relative(pos_q: jax.Array, pos_k: jax.Array) -> jax.Array:
    """[B|1, T] query and [B|1, L] key positions -> [B|1, 1, T, L] key minus query."""
    return pos_k[:, None, None, :] - pos_q[:, None, :, None]


def attention_norm(cfg: GenRecConfig, t: int) -> int:
    """HSTU's divisor for a sequence of t positions: t (right), seq_len (left)."""
    return t if cfg.positions == "right" else cfg.seq_len


def embed(p: Params, cfg: GenRecConfig, seq: jax.Array, pos: jax.Array | None = None,
          rng: jax.Array | None = None) -> jax.Array:
    """[B, T] item ids (and [B|1, T] position rows) -> [B, T, d] block input."""
    valid = (seq != 0)[..., None]
    x = p["item_emb.weight"][seq] * math.sqrt(cfg.d_model)
    if pos is None:
        return dropout(x, cfg.dropout, rng) * valid
    return dropout(x + p["pos_emb.weight"][pos], cfg.dropout, rng) * valid


def forward(p: Params, cfg: GenRecConfig, seq: jax.Array,
            rng: jax.Array | None = None) -> jax.Array:
    """[B, T] item ids -> [B, T, d] hidden states. rng given = training mode (dropout)."""
    rngs = list(jax.random.split(rng, cfg.n_layer + 2)) if rng is not None else [None] * (
        cfg.n_layer + 2)
    if cfg.block == "lstm":
        x = lstm(p, embed(p, cfg, seq, rng=rngs[0]), cfg, rngs[1])
    else:
        pos = positions(seq, cfg)
        x, mask, rel = embed(p, cfg, seq, pos, rngs[0]), attention_mask(seq), relative(pos, pos)
        norm = attention_norm(cfg, seq.shape[1])
        block = sasrec_block if cfg.block == "sasrec" else hstu_block
        for i in range(cfg.n_layer):
            x, _ = block(p, f"blocks.{i}", x, mask, rel, norm, cfg, rngs[i + 2])
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
