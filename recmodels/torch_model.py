"""GenRec in PyTorch: the public names of recmodels/torch/ (blocks, model, losses, kv_cache,
engine), re-exported so `from recmodels import torch_model as tm; tm.GenRec` keeps working.

The code lives in the package, mirrored module by module with recmodels/jax/. A monkeypatch
must target the module that uses a name (e.g. recmodels.torch.engine.loss_fn), not this one.
"""

from recmodels.torch.blocks import (
    DTYPES,
    INIT_STD,
    CausalSelfAttention,
    FeedForward,
    HSTUBlock,
    SASRecBlock,
    attention_mask,
)
from recmodels.torch.engine import (
    COMPILE_MODES,
    Engine,
    make_optimizer,
    set_matmul_precision,
    train_step,
)
from recmodels.torch.kv_cache import KVCache, decode, generate, prefill, rank
from recmodels.torch.losses import (
    LOSSES,
    bce_loss,
    full_softmax_loss,
    loss_fn,
    sampled_softmax_loss,
)
from recmodels.torch.model import GenRec, positions, recommend, score_candidates, score_catalog

__all__ = ["COMPILE_MODES", "DTYPES", "INIT_STD", "LOSSES", "CausalSelfAttention", "Engine",
           "FeedForward", "GenRec", "HSTUBlock", "KVCache", "SASRecBlock", "attention_mask",
           "bce_loss", "decode", "full_softmax_loss", "generate", "loss_fn", "make_optimizer",
           "positions", "prefill", "rank", "recommend", "sampled_softmax_loss", "score_candidates",
           "score_catalog", "set_matmul_precision", "train_step"]
