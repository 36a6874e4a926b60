"""GenRec in PyTorch, the losses.

Mirrors recmodels/jax/losses.py name for name and in the same order.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from recmodels.config import GenRecConfig
from recmodels.torch.blocks import Packing
from recmodels.torch.model import GenRec

# --- losses: h [B, T, d], pos [B, T], neg [B, T, R]; positions with pos == 0 are ignored.
# The table's rows are looked up with F.embedding, table[ids] in effect: its backward adds the
# rows' gradients into the table's with one scatter-add, where indexing's backward
# (index_put_ with accumulate) took ~4x as long on CPU (2.8 against 0.75 ms for small's
# 3,200 rows of 256).


def bce_loss(h: torch.Tensor, table: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor,
             cfg: GenRecConfig) -> torch.Tensor:
    """SASRec's loss: -log sigmoid(s_pos) - sum_r log(1 - sigmoid(s_neg_r)), per position."""
    s_pos = (h * F.embedding(pos, table)).sum(-1).float()
    s_neg = torch.einsum("btd,btrd->btr", h, F.embedding(neg, table)).float()
    return F.softplus(-s_pos) + F.softplus(s_neg).sum(-1)


def sampled_softmax_loss(h: torch.Tensor, table: torch.Tensor, pos: torch.Tensor,
                         neg: torch.Tensor, cfg: GenRecConfig) -> torch.Tensor:
    """Cross-entropy of the positive against R uniform negatives (uniform sampling makes the
    logQ correction a constant, so it is omitted)."""
    s_pos = (h * F.embedding(pos, table)).sum(-1, keepdim=True)
    s_neg = torch.einsum("btd,btrd->btr", h, F.embedding(neg, table))
    logits = torch.cat([s_pos, s_neg], dim=-1).float() / cfg.temperature
    return torch.logsumexp(logits, dim=-1) - logits[..., 0]


def full_softmax_loss(h: torch.Tensor, table: torch.Tensor, pos: torch.Tensor,
                      neg: torch.Tensor, cfg: GenRecConfig) -> torch.Tensor:
    """Cross-entropy over the whole catalog; the padding column can never be predicted."""
    logits = (h @ table.T).float()  # [B, T, C+1]
    logits[..., 0] = float("-inf")
    return torch.logsumexp(logits, dim=-1) - logits.gather(-1, pos.unsqueeze(-1)).squeeze(-1)


LOSSES = {"bce": bce_loss, "sampled_softmax": sampled_softmax_loss,
          "full_softmax": full_softmax_loss}


def loss_fn(model: GenRec, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Mean loss over the positions that have a target. A batch with ``tok`` [N] (the flat
    indices of every position with an item or a target, see Engine.train_step) is computed
    packed: only those positions, the same loss (blocks.Packing)."""
    pos, neg = batch["pos"], batch["neg"]
    if "tok" in batch:
        seq, tok = batch["seq"], batch["tok"]
        h = model(seq, Packing(tok, seq.shape[0], seq.shape[1]))[None]  # [1, N, d]
        pos = pos.reshape(-1).index_select(0, tok)[None]
        neg = neg.reshape(-1, neg.shape[-1]).index_select(0, tok)[None]
    else:
        h = model(batch["seq"])
    per_pos = LOSSES[model.cfg.loss](h, model.item_emb.weight, pos, neg, model.cfg)
    mask = pos != 0
    # where, not a product: full softmax gives inf at padded positions and inf * 0 is nan
    return torch.where(mask, per_pos, 0.0).sum() / mask.sum().clamp(min=1)
