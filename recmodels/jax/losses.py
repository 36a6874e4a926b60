"""GenRec in JAX, the losses.

Mirrors recmodels/torch/losses.py name for name and in the same order.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from recmodels.config import GenRecConfig
from recmodels.jax.blocks import DTYPES, Params
from recmodels.jax.model import forward

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
