"""GenRec in JAX, the serving paths: a KV cache, target-aware ranking, beam search.

Mirrors recmodels/torch/kv_cache.py name for name and in the same order.

A history is encoded once (prefill) and its keys and values kept per block; new positions
then attend to them and to themselves (extend). Ranking (HSTU / DLRMv3's M-FALCON, Zhai et
al. 2024 sec. 3.4): K candidates all take the position after the history, each sees the
history and itself, never another candidate, in micro-batches of `chunk`. Generation: beam
search over next items, one cached decode step per generated item after the first.
Appending needs positions that do not move (cfg.positions "left"); ranking works in both modes.
The cache is [B, L, h, d/h] per block (JAX's attention layout; torch's is [B, h, L, d/h]).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from recmodels.config import RANK_CHUNK, GenRecConfig  # RANK_CHUNK: candidates per micro-batch
from recmodels.jax.blocks import (
    DTYPES,
    Params,
    attention_mask,
    hstu_block,
    layer_norm,
    sasrec_block,
)
from recmodels.jax.model import attention_norm, embed, positions, relative, score_catalog


class KVCache(NamedTuple):
    k: tuple[jax.Array, ...]  # per block [B, L, h, d/h], L = capacity (columns)
    v: tuple[jax.Array, ...]  # per block [B, L, h, d/h]
    pos: jax.Array  # [B, L] position row of each column
    valid: jax.Array  # [B, L] bool: a real item is there (not padding, not yet written)
    length: jax.Array  # int32 []: columns written (the next one is written at this index)
    norm: jax.Array  # int32 []: HSTU's divisor, fixed when the history was encoded


def check_cacheable(cfg: GenRecConfig, append: bool = False) -> None:
    """ValueError unless the serving paths apply: an attention block, and for appending
    (decode, generate) positions that stay where they are."""
    if cfg.block == "lstm":
        raise ValueError("the serving paths (rank, prefill, decode, generate) need an "
                         "attention block, not lstm")
    if append and cfg.positions != "left":
        raise ValueError("appending to a KV cache needs positions='left' (right-aligned "
                         "positions move with every append)")


def _blocks(cfg: GenRecConfig):
    return sasrec_block if cfg.block == "sasrec" else hstu_block


def prefill(p: Params, cfg: GenRecConfig, seq: jax.Array, capacity: int,
            extra: int = 0) -> tuple[jax.Array, KVCache]:
    """[B, T] histories -> (last hidden state [B, d], a cache of `capacity` >= T columns).
    extra: positions reserved after the history (right-aligned positions only)."""
    check_cacheable(cfg)
    b, t = seq.shape
    pos = jnp.broadcast_to(positions(seq, cfg, extra), (b, t))
    x, mask, rel = embed(p, cfg, seq, pos), attention_mask(seq), relative(pos, pos)
    norm = attention_norm(cfg, t + extra)
    ks, vs = [], []
    free = ((0, 0), (0, capacity - t), (0, 0), (0, 0))
    for i in range(cfg.n_layer):
        x, (k, v) = _blocks(cfg)(p, f"blocks.{i}", x, mask, rel, norm, cfg, None)
        ks.append(jnp.pad(k, free))
        vs.append(jnp.pad(v, free))
    cache = KVCache(tuple(ks), tuple(vs), jnp.pad(pos, ((0, 0), (0, capacity - t))),
                    jnp.pad(seq != 0, ((0, 0), (0, capacity - t))), jnp.int32(t),
                    jnp.int32(norm))
    return layer_norm(p, "ln_f", x)[:, -1], cache


def extend(p: Params, cfg: GenRecConfig, cache: KVCache,
           items: jax.Array) -> tuple[jax.Array, list, list, jax.Array]:
    """[B, m] items, all at the position after the cache's last, each attending to the cache
    and to itself -> (hidden states [B, m, d], their keys and values per block, positions
    [B, m]). The cache is not changed."""
    b, m = items.shape
    last = cache.pos[:, cache.length - 1]
    pos = jnp.broadcast_to(jnp.minimum(last + 1, cfg.seq_len - 1)[:, None], (b, m))
    eye = jnp.broadcast_to(jnp.eye(m, dtype=bool), (b, 1, m, m))
    l_cache = cache.valid.shape[1]
    mask = jnp.concatenate([jnp.broadcast_to(cache.valid[:, None, None, :], (b, 1, m, l_cache)),
                            eye], -1)
    rel = relative(pos, jnp.concatenate([cache.pos, pos], 1))
    x, ks, vs = embed(p, cfg, items, pos), [], []
    for i in range(cfg.n_layer):
        x, (k, v) = _blocks(cfg)(p, f"blocks.{i}", x, mask, rel, cache.norm, cfg, None,
                                 (cache.k[i], cache.v[i]))
        ks.append(k)
        vs.append(v)
    return layer_norm(p, "ln_f", x), ks, vs, pos


def catalog_scores(p: Params, cfg: GenRecConfig, h: jax.Array) -> jax.Array:
    """[B, d] hidden states -> [B, C+1] scores of every item; column 0 (padding) is -inf."""
    h = h.astype(DTYPES[cfg.compute_dtype])
    return (h @ p["item_emb.weight"].astype(h.dtype).T).astype(jnp.float32).at[:, 0].set(
        -jnp.inf)


def decode(p: Params, cfg: GenRecConfig, cache: KVCache,
           items: jax.Array) -> tuple[jax.Array, KVCache]:
    """Append one item per row [B] -> (scores over the catalog after it [B, C+1], the cache
    one column longer). A new cache: the one passed in stays valid."""
    check_cacheable(cfg, append=True)
    h, ks, vs, pos = extend(p, cfg, cache, items[:, None])
    col = cache.length

    def put(buf, new):
        return jax.lax.dynamic_update_slice_in_dim(buf, new.astype(buf.dtype), col, axis=1)

    cache = KVCache(tuple(put(k, n) for k, n in zip(cache.k, ks)),
                    tuple(put(v, n) for v, n in zip(cache.v, vs)),
                    put(cache.pos, pos), put(cache.valid, jnp.ones_like(pos, bool)),
                    col + 1, cache.norm)
    return catalog_scores(p, cfg, h[:, 0]), cache


def reorder(cache: KVCache, rows: jax.Array) -> KVCache:
    """The cache's rows taken in the order `rows` [B'] (beam search's parents)."""
    return cache._replace(k=tuple(k[rows] for k in cache.k), v=tuple(v[rows] for v in cache.v),
                          pos=cache.pos[rows], valid=cache.valid[rows])


def rank(p: Params, cfg: GenRecConfig, seq: jax.Array, candidates: jax.Array,
         chunk: int = RANK_CHUNK) -> jax.Array:
    """[B, T] histories, [B, K] candidates -> [B, K] scores: each candidate's own output state
    (after the history, as if it were the next item) against its embedding."""
    _, cache = prefill(p, cfg, seq, seq.shape[1], extra=1)
    cd = DTYPES[cfg.compute_dtype]
    table, out = p["item_emb.weight"].astype(cd), []
    for start in range(0, candidates.shape[1], chunk):
        part = candidates[:, start:start + chunk]
        h = extend(p, cfg, cache, part)[0].astype(cd)
        out.append(jnp.einsum("bkd,bkd->bk", h, table[part]).astype(jnp.float32))
    return jnp.concatenate(out, 1)


def generate(p: Params, cfg: GenRecConfig, seq: jax.Array, steps: int, beam: int,
             cached: bool = True) -> tuple[jax.Array, jax.Array]:
    """Beam search: [B, T] histories -> (items [B, W, S], summed log-probabilities [B, W]),
    best first. cached=False re-encodes every beam's whole sequence at every step (the
    reference the cache must equal)."""
    check_cacheable(cfg, append=True)
    b, t = seq.shape
    if cached:
        h, cache = prefill(p, cfg, seq, t + steps - 1)
        logits = catalog_scores(p, cfg, h)
    else:
        logits = score_catalog(p, cfg, seq)
    scores, items = jax.lax.top_k(jax.nn.log_softmax(logits, -1), beam)  # [B, W]
    paths = items[..., None]
    if cached:
        cache = reorder(cache, jnp.repeat(jnp.arange(b), beam))
    history = jnp.repeat(seq, beam, axis=0)
    for _ in range(1, steps):
        if cached:
            logits, cache = decode(p, cfg, cache, paths[:, :, -1].reshape(-1))
        else:
            logits = score_catalog(p, cfg, jnp.concatenate([history, paths.reshape(b * beam, -1)],
                                                           1))
        n = logits.shape[-1]
        total = scores[..., None] + jax.nn.log_softmax(logits, -1).reshape(b, beam, n)
        scores, idx = jax.lax.top_k(total.reshape(b, -1), beam)
        rows = (jnp.arange(b)[:, None] * beam + idx // n).reshape(-1)
        paths = jnp.concatenate([paths.reshape(b * beam, -1)[rows].reshape(b, beam, -1),
                                 (idx % n)[..., None]], -1)
        if cached:
            cache = reorder(cache, rows)
    return paths, scores
