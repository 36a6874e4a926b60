"""GenRec in PyTorch, the serving paths: a KV cache, target-aware ranking, beam search.

Mirrors recmodels/jax/kv_cache.py name for name and in the same order.

A history is encoded once (prefill) and its keys and values kept per block; new positions
then attend to them and to themselves (extend). Ranking (HSTU / DLRMv3's M-FALCON, Zhai et
al. 2024 sec. 3.4): K candidates all take the position after the history, each sees the
history and itself, never another candidate, in micro-batches of `chunk`. Generation: beam
search over next items, one cached decode step per generated item after the first.
Appending needs positions that do not move (cfg.positions "left"); ranking works in both modes.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from recmodels.config import RANK_CHUNK, GenRecConfig  # RANK_CHUNK: candidates per micro-batch
from recmodels.torch.blocks import attention_mask
from recmodels.torch.model import GenRec, attention_norm, positions, relative, score_catalog


class KVCache(NamedTuple):
    k: list[torch.Tensor]  # per block [B, h, L, d/h], L = capacity (columns)
    v: list[torch.Tensor]  # per block [B, h, L, d/h]
    pos: torch.Tensor  # [B, L] position row of each column
    valid: torch.Tensor  # [B, L] bool: a real item is there (not padding, not yet written)
    length: int  # columns written (the next one is written at this index)
    norm: int  # HSTU's divisor, fixed when the history was encoded


def check_cacheable(cfg: GenRecConfig, append: bool = False) -> None:
    """ValueError unless the serving paths apply: an attention block, and for appending
    (decode, generate) positions that stay where they are."""
    if cfg.block == "lstm":
        raise ValueError("the serving paths (rank, prefill, decode, generate) need an "
                         "attention block, not lstm")
    if append and cfg.positions != "left":
        raise ValueError("appending to a KV cache needs positions='left' (right-aligned "
                         "positions move with every append)")


def prefill(model: GenRec, seq: torch.Tensor, capacity: int,
            extra: int = 0) -> tuple[torch.Tensor, KVCache]:
    """[B, T] histories -> (last hidden state [B, d], a cache of `capacity` >= T columns).
    extra: positions reserved after the history (right-aligned positions only)."""
    cfg = model.cfg
    check_cacheable(cfg)
    b, t = seq.shape
    pos = positions(seq, cfg, extra).expand(b, t)
    x, mask, rel = model.embed(seq, pos), attention_mask(seq), relative(pos, pos)
    norm = attention_norm(cfg, t + extra)
    ks, vs = [], []
    for blk in model.blocks:
        x, (k, v) = blk(x, mask, rel, norm)
        ks.append(torch.cat([k, k.new_zeros(*k.shape[:2], capacity - t, k.shape[3])], 2))
        vs.append(torch.cat([v, v.new_zeros(*v.shape[:2], capacity - t, v.shape[3])], 2))
    free = seq.new_zeros(b, capacity - t)
    cache = KVCache(ks, vs, torch.cat([pos, free], 1), torch.cat([seq != 0, free.bool()], 1),
                    t, norm)
    return model.ln_f(x)[:, -1], cache


def extend(model: GenRec, cache: KVCache,
           items: torch.Tensor) -> tuple[torch.Tensor, list, list, torch.Tensor]:
    """[B, m] items, all at the position after the cache's last, each attending to the cache
    and to itself -> (hidden states [B, m, d], their keys and values per block, positions
    [B, m]). The cache is not changed."""
    cfg = model.cfg
    b, m = items.shape
    last = cache.pos[:, cache.length - 1]
    pos = (last + 1).clamp(max=cfg.seq_len - 1)[:, None].expand(b, m)
    eye = torch.eye(m, dtype=torch.bool, device=items.device).expand(b, 1, m, m)
    mask = torch.cat([cache.valid[:, None, None, :].expand(b, 1, m, -1), eye], -1)
    rel = relative(pos, torch.cat([cache.pos, pos], 1))
    x, ks, vs = model.embed(items, pos), [], []
    for i, blk in enumerate(model.blocks):
        x, (k, v) = blk(x, mask, rel, cache.norm, (cache.k[i], cache.v[i]))
        ks.append(k)
        vs.append(v)
    return model.ln_f(x), ks, vs, pos


def catalog_scores(model: GenRec, h: torch.Tensor) -> torch.Tensor:
    """[B, d] hidden states -> [B, C+1] scores of every item; column 0 (padding) is -inf."""
    scores = (h @ model.item_emb.weight.T).float()
    scores[:, 0] = float("-inf")
    return scores


def decode(model: GenRec, cache: KVCache, items: torch.Tensor) -> tuple[torch.Tensor, KVCache]:
    """Append one item per row [B] -> (scores over the catalog after it [B, C+1], the cache
    one column longer). Writes column `length` of the keys, values and positions in place
    and copies only `valid`: the cache passed in stays valid (it never reads that column), but
    decoding from it again overwrites what the returned cache holds there."""
    check_cacheable(model.cfg, append=True)
    h, ks, vs, pos = extend(model, cache, items[:, None])
    col = cache.length
    for i in range(len(ks)):
        cache.k[i][:, :, col] = ks[i][:, :, 0]
        cache.v[i][:, :, col] = vs[i][:, :, 0]
    cache.pos[:, col] = pos[:, 0]
    valid = cache.valid.clone()
    valid[:, col] = True
    return catalog_scores(model, h[:, 0]), cache._replace(valid=valid, length=col + 1)


def reorder(cache: KVCache, rows: torch.Tensor) -> KVCache:
    """The cache's rows taken in the order `rows` [B'] (beam search's parents)."""
    return cache._replace(k=[k[rows] for k in cache.k], v=[v[rows] for v in cache.v],
                          pos=cache.pos[rows], valid=cache.valid[rows])


def rank(model: GenRec, seq: torch.Tensor, candidates: torch.Tensor,
         chunk: int = RANK_CHUNK) -> torch.Tensor:
    """[B, T] histories, [B, K] candidates -> [B, K] scores: each candidate's own output state
    (after the history, as if it were the next item) against its embedding."""
    _, cache = prefill(model, seq, seq.shape[1], extra=1)
    table, out = model.item_emb.weight, []
    for part in candidates.split(chunk, dim=1):
        h = extend(model, cache, part)[0]
        out.append(torch.einsum("bkd,bkd->bk", h, table[part]).float())
    return torch.cat(out, 1)


def generate(model: GenRec, seq: torch.Tensor, steps: int, beam: int,
             cached: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Beam search: [B, T] histories -> (items [B, W, S], summed log-probabilities [B, W]),
    best first. cached=False re-encodes every beam's whole sequence at every step (the
    reference the cache must equal)."""
    check_cacheable(model.cfg, append=True)
    b, t = seq.shape
    if cached:
        h, cache = prefill(model, seq, t + steps - 1)
        logits = catalog_scores(model, h)
    else:
        logits = score_catalog(model, seq)
    scores, items = torch.log_softmax(logits, -1).topk(beam, dim=-1)  # [B, W]
    paths = items[..., None]
    if cached:
        cache = reorder(cache, torch.arange(b, device=seq.device).repeat_interleave(beam))
    history = seq.repeat_interleave(beam, 0)
    for _ in range(1, steps):
        if cached:
            logits, cache = decode(model, cache, paths[:, :, -1].reshape(-1))
        else:
            logits = score_catalog(model, torch.cat([history, paths.flatten(0, 1)], 1))
        n = logits.shape[-1]
        total = scores[..., None] + torch.log_softmax(logits, -1).view(b, beam, n)
        scores, idx = total.view(b, -1).topk(beam, dim=-1)
        rows = (torch.arange(b, device=seq.device)[:, None] * beam + idx // n).view(-1)
        paths = torch.cat([paths.flatten(0, 1)[rows].view(b, beam, -1), (idx % n)[..., None]], -1)
        if cached:
            cache = reorder(cache, rows)
    return paths, scores
