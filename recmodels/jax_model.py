"""GenRec in JAX: the public names of recmodels/jax/ (blocks, model, losses, kv_cache,
engine), re-exported so `from recmodels import jax_model as jm; jm.Engine` keeps working.

The code lives in the package, mirrored module by module with recmodels/torch/. A monkeypatch
must target the module that uses a name (e.g. recmodels.jax.engine.make_optimizer), not this
one.
"""

import jax  # noqa: F401  (tests reach jax.lax through this module)

from recmodels.jax.blocks import (
    DTYPES,
    INIT_STD,
    Params,
    attention_mask,
    causal_self_attention,
    dropout,
    feed_forward,
    grad_barrier,
    hstu_block,
    keep_mask,
    layer_norm,
    linear,
    lstm,
    sasrec_block,
)
from recmodels.jax.engine import (
    FP16_LOSS_SCALE,
    Engine,
    TrainState,
    keep_host_memory,
    make_optimizer,
    pad_rows,
    resolve_devices,
    set_matmul_precision,
    train_step,
)
from recmodels.jax.kv_cache import KVCache, decode, generate, prefill, rank
from recmodels.jax.losses import LOSSES, bce_loss, full_softmax_loss, loss_fn, sampled_softmax_loss
from recmodels.jax.model import (
    forward,
    init_params,
    positions,
    recommend,
    score_candidates,
    score_catalog,
)

__all__ = ["DTYPES", "FP16_LOSS_SCALE", "INIT_STD", "LOSSES", "Engine", "KVCache", "Params",
           "TrainState", "attention_mask", "bce_loss", "causal_self_attention", "decode",
           "dropout", "feed_forward", "forward", "full_softmax_loss", "generate", "grad_barrier",
           "hstu_block", "init_params", "keep_host_memory", "keep_mask", "layer_norm", "linear",
           "loss_fn", "lstm", "make_optimizer", "pad_rows", "positions", "prefill", "rank",
           "recommend", "resolve_devices",
           "sampled_softmax_loss", "sasrec_block", "score_candidates", "score_catalog",
           "set_matmul_precision", "train_step"]
