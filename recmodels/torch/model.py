"""GenRec in PyTorch, the model: GenRec and scoring.

Mirrors recmodels/jax/model.py name for name and in the same order.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from recmodels.config import GenRecConfig
from recmodels.torch.blocks import (
    INIT_STD,
    Dropout,
    HSTUBlock,
    Packing,
    SASRecBlock,
    attention_mask,
)


def positions(seq: torch.Tensor, cfg: GenRecConfig, extra: int = 0) -> torch.Tensor:
    """[B, T] ids -> [B|1, T] rows of the position table. right: the newest item at
    seq_len-1-extra (extra: positions reserved after it); left: the oldest real item at 0,
    padding at 0, capped at seq_len-1."""
    t = seq.shape[1]
    if cfg.positions == "right":
        if t + extra > cfg.seq_len:
            raise ValueError(f"{t} + {extra} positions do not fit in seq_len {cfg.seq_len}")
        return torch.arange(cfg.seq_len - t - extra, cfg.seq_len - extra, device=seq.device)[None]
    n_pad = (seq == 0).sum(1, keepdim=True)
    return (torch.arange(t, device=seq.device)[None] - n_pad).clamp(0, cfg.seq_len - 1)


def relative(pos_q: torch.Tensor, pos_k: torch.Tensor) -> torch.Tensor:
    """[B|1, T] query and [B|1, L] key positions -> [B|1, 1, T, L] key minus query."""
    return pos_k[:, None, None, :] - pos_q[:, None, :, None]


def attention_norm(cfg: GenRecConfig, t: int) -> int:
    """HSTU's divisor for a sequence of t positions: t (right), seq_len (left)."""
    return t if cfg.positions == "right" else cfg.seq_len


class GenRec(nn.Module):
    """Item embedding (+ positions) -> blocks (or LSTM) -> final LN; output tied to items."""

    def __init__(self, cfg: GenRecConfig):
        super().__init__()
        self.cfg = cfg
        d = cfg.d_model
        self.item_emb = nn.Embedding(cfg.catalog_size + 1, d, padding_idx=0)
        if cfg.block == "lstm":
            # The pre-transformer baseline: embedding -> LSTM -> softmax over the catalog.
            self.lstm = nn.LSTM(d, d, num_layers=cfg.n_layer, batch_first=True,
                                dropout=cfg.dropout if cfg.n_layer > 1 else 0.0)
        else:
            self.pos_emb = nn.Embedding(cfg.seq_len, d)
            block = SASRecBlock if cfg.block == "sasrec" else HSTUBlock
            self.blocks = nn.ModuleList(block(cfg) for _ in range(cfg.n_layer))
        self.ln_f = nn.LayerNorm(d)
        self.drop = Dropout(cfg.dropout)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for name, p in self.named_parameters():
            if name.startswith("lstm."):
                bound = 1.0 / math.sqrt(self.cfg.d_model)  # torch.nn.LSTM's own init
                nn.init.uniform_(p, -bound, bound)
            elif name.endswith("bias") or name.endswith("rel_bias"):
                nn.init.zeros_(p)
            elif ".ln" in name or name.startswith("ln_f"):
                nn.init.ones_(p)
            else:
                nn.init.normal_(p, std=INIT_STD)
        with torch.no_grad():
            self.item_emb.weight[0].zero_()

    def embed(self, seq: torch.Tensor, pos: torch.Tensor | None = None) -> torch.Tensor:
        """[B, T] item ids (and [B|1, T] position rows) -> [B, T, d] block input; also
        [N] ids and [N] positions -> [N, d]."""
        valid = (seq != 0).unsqueeze(-1)
        x = self.item_emb(seq) * math.sqrt(self.cfg.d_model)
        if pos is None:
            return self.drop(x) * valid
        return self.drop(x + self.pos_emb(pos)) * valid

    def forward(self, seq: torch.Tensor, packing: Packing | None = None) -> torch.Tensor:
        """[B, T] item ids -> [B, T, d] hidden states; with a packing (training, where
        config.padding_invariant holds) -> [N, d], the states of its tokens only."""
        if self.cfg.block == "lstm":
            x, _ = self.lstm(self.embed(seq))
            return self.ln_f(x)
        pos = positions(seq, self.cfg)
        mask, rel = attention_mask(seq), relative(pos, pos)
        norm = attention_norm(self.cfg, seq.shape[1])
        if packing is None:
            x = self.embed(seq, pos)
        else:
            pos_tok = pos.expand(seq.shape).reshape(-1).index_select(0, packing.tok)
            x = self.embed(seq.reshape(-1).index_select(0, packing.tok), pos_tok)
        for blk in self.blocks:
            x, _ = blk(x, mask, rel, norm, packing=packing)
        return self.ln_f(x)


# --- scoring


def score_candidates(model: GenRec, seq: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
    """[B, T] histories, [B, K] candidate ids -> [B, K] scores of the last position."""
    h = model(seq)[:, -1]
    return torch.einsum("bd,bkd->bk", h, model.item_emb.weight[candidates]).float()


def score_catalog(model: GenRec, seq: torch.Tensor) -> torch.Tensor:
    """[B, T] histories -> [B, C+1] scores of every item; column 0 (padding) is -inf."""
    scores = (model(seq)[:, -1] @ model.item_emb.weight.T).float()
    scores[:, 0] = float("-inf")
    return scores


def recommend(model: GenRec, seq: torch.Tensor, k: int,
              exclude_seen: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k items for each user over the whole catalog -> (scores [B, k], ids [B, k])."""
    scores = score_catalog(model, seq)
    if exclude_seen:
        scores = scores.scatter(1, seq, float("-inf"))
    return torch.topk(scores, k, dim=-1)
