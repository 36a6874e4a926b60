"""The config's validation and the analytic cost model, checked against independent counters."""

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from recmodels import config as C
from recmodels import jax_model as jm
from recmodels import memory as M
from recmodels import torch_model as tm
from recmodels.errors import InputError


def test_tiny_is_the_sasrec_paper_model():
    cfg = C.PRESETS["tiny"]
    assert (cfg.d_model, cfg.n_layer, cfg.n_head, cfg.d_ff, cfg.seq_len) == (50, 2, 1, 50, 50)
    assert cfg.dropout == 0.5 and cfg.loss == "bce" and cfg.n_neg == 1
    # its sizes; the paper code's block is the reference layout, an option (see PRESETS)
    assert cfg.sasrec_layout == "prenorm"


def test_ladder_grows_and_xl_is_about_one_billion_parameters():
    sizes = [C.params_total(C.PRESETS[n]) for n in ("tiny", "small", "base", "large", "xl")]
    assert sizes == sorted(sizes)
    assert 0.9e9 < sizes[-1] < 1.1e9
    assert C.PRESETS["xl"].catalog_size == 200_000


@pytest.mark.parametrize("block, layout", [(b, "prenorm") for b in C.BLOCKS]
                         + [("sasrec", "reference")])
def test_param_counts_equal_both_implementations(block, layout):
    cfg = C.preset("small", block=block, sasrec_layout=layout, catalog_size=777, seq_len=33)
    n_torch = sum(p.numel() for p in tm.GenRec(cfg).parameters())
    n_jax = sum(v.size for v in jm.init_params(cfg, jax.random.key(0)).values())
    assert n_torch == n_jax == C.params_total(cfg)
    positions = 0 if block == "lstm" else cfg.seq_len * cfg.d_model
    emb = (cfg.catalog_size + 1) * cfg.d_model + positions
    assert C.params_embedding(cfg) == emb


@pytest.mark.parametrize("bad, match", [
    (dict(d_model=50, n_head=3), "not divisible by n_head"),
    (dict(block="mamba"), "unknown block"),
    (dict(sasrec_layout="postnorm"), "unknown sasrec_layout"),
    (dict(loss="hinge"), "unknown loss"),
    (dict(compute_dtype="fp8"), "unknown compute_dtype"),
    (dict(n_layer=0), "n_layer must be a positive integer"),
    (dict(dropout=1.0), "dropout"),
    # both trained to NaN (torch) or crashed in optax (JAX) instead of saying so
    (dict(param_dtype="fp16", compute_dtype="fp16"), "param_dtype fp16 is not supported"),
    (dict(param_dtype="bf16", compute_dtype="fp32"), "param_dtype bf16 needs compute_dtype bf16"),
])
def test_impossible_configs_are_input_errors(bad, match):
    with pytest.raises(InputError, match=match):
        C.GenRecConfig(**bad)


def test_unknown_preset_and_field():
    with pytest.raises(InputError, match=r"unknown preset 'huge'.*tiny"):
        C.preset("huge")
    with pytest.raises(InputError, match="unknown config field"):
        C.preset("tiny", widht=3)


def _torch_forward_flops(cfg, batch_size):
    """Forward FLOPs of loss_fn counted by torch's FlopCounterMode. SDPA runs on its math
    backend here: the counter has no formula for the fused CPU kernel, only for the bmm's
    the math backend decomposes into."""
    torch.manual_seed(0)
    model = tm.GenRec(cfg)
    shape = (batch_size, cfg.seq_len)
    batch = {"seq": torch.randint(1, cfg.catalog_size, shape),
             "pos": torch.randint(1, cfg.catalog_size, shape),
             "neg": torch.randint(1, cfg.catalog_size, (*shape, cfg.n_neg))}
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        tm.loss_fn(model, batch)
    return counter.get_total_flops()


@pytest.mark.parametrize("name", ["small", "base"])
@pytest.mark.parametrize("block", ["sasrec", "hstu"])
@pytest.mark.parametrize("loss", C.LOSSES)
def test_forward_flops_match_torch_flop_counter(name, block, loss):
    cfg = C.preset(name, block=block, loss=loss, catalog_size=3000, seq_len=32, n_neg=8)
    counted = _torch_forward_flops(cfg, batch_size=2)
    analytic = C.flops_forward(cfg, 2, "train")
    assert analytic == pytest.approx(counted, rel=0.10)


@pytest.mark.parametrize("layout", C.SASREC_LAYOUTS)
def test_sasrec_flops_match_torch_flop_counter_closely(layout):
    """0.1%, not the 10% above: the reference layout's missing output projection is 2d^2 of
    the ~8d^2 + 4d d_ff + 4Td per position and layer, which 10% would not see."""
    cfg = C.preset("small", sasrec_layout=layout, catalog_size=3000, seq_len=32)
    counted = _torch_forward_flops(cfg, batch_size=2)
    assert C.flops_forward(cfg, 2, "train") == pytest.approx(counted, rel=1e-3)


@pytest.mark.parametrize("block", C.BLOCKS)
def test_forward_flops_match_xla_cost_analysis(block, monkeypatch):
    # XLA's cost analysis counts a while loop's body once, so the LSTM's time loop is
    # unrolled for the count; torch's counter cannot see the fused CPU LSTM kernel at all.
    monkeypatch.setattr(jm.jax.lax, "scan", partial(jax.lax.scan, unroll=True))
    cfg = C.preset("small", block=block, loss="full_softmax", catalog_size=3000, seq_len=32)
    params = jm.init_params(cfg, jax.random.key(0))
    rng = np.random.default_rng(0)
    batch = {k: jnp.asarray(rng.integers(1, 3000, (2, 32, 1) if k == "neg" else (2, 32)),
                            jnp.int32) for k in ("seq", "pos", "neg")}
    cost = jax.jit(partial(jm.loss_fn, cfg=cfg)).lower(params, batch=batch).compile()
    analysis = cost.cost_analysis()
    counted = (analysis[0] if isinstance(analysis, list) else analysis)["flops"]
    # XLA also counts element-wise work (norms, activations, softmax): a few % above.
    assert C.flops_forward(cfg, 2, "train") == pytest.approx(counted, rel=0.10)


def test_train_step_is_three_forwards_and_infer_scores_the_catalog():
    cfg = C.PRESETS["small"]
    assert C.flops_per_step(cfg, 64, "train") == 3 * C.flops_forward(cfg, 64, "train")
    head = 64 * 2 * cfg.d_model * (cfg.catalog_size + 1)
    trunk = C.flops_forward(cfg.replace(catalog_size=1), 64, "infer") - 64 * 2 * cfg.d_model * 2
    assert C.flops_per_step(cfg, 64, "infer") == trunk + head
    with pytest.raises(InputError, match="unknown workload"):
        C.flops_forward(cfg, 1, "serve")


def test_memory_estimate_counts_adam_state_and_grows_with_batch():
    # (the estimate against measurements: tests/recmodels/test_memory_estimate.py)
    cfg = C.PRESETS["base"]
    n = C.params_total(cfg)
    small, large = M.memory_estimate(cfg, 64), M.memory_estimate(cfg, 512)
    assert small.weights_bytes == 4 * n and small.optimizer_bytes == 8 * n
    assert large.activations_bytes == pytest.approx(8 * small.activations_bytes, rel=1e-6)
    infer = M.memory_estimate(cfg, 64, "infer")
    assert infer.grads_bytes == infer.optimizer_bytes == 0 and infer.total_bytes < small.total_bytes
    sgd = M.memory_estimate(cfg, 64, optimizer="sgd")
    assert sgd.optimizer_bytes == 0
    full = M.memory_estimate(cfg.replace(loss="full_softmax"), 64)
    extra = full.activations_bytes - small.activations_bytes
    assert extra > 64 * cfg.seq_len * cfg.catalog_size * 4


def test_bytes_per_step_is_at_least_the_weights():
    for workload in ("train", "infer"):
        cfg = C.PRESETS["small"]
        weights = M.memory_estimate(cfg, 32, workload).weights_bytes
        assert C.bytes_per_step(cfg, 32, workload) > weights


def test_human():
    assert C.human(1_234_567) == "1.23M"
    assert C.human(999) == "999"
    assert C.human(2.5e12, "FLOP") == "2.5TFLOP"


def test_human_bytes_is_binary():
    assert C.human_bytes(1.5 * 2**30) == "1.5 GiB"
    assert C.human_bytes(3.87 * 2**40, per_s=True) == "3.87 TiB/s"
    assert C.human_bytes(216e9) == "201 GiB"  # the runner's infeasible reasons: never "216GB"
    assert C.human_bytes(512) == "512 B"


def _torch_serving_flops(cfg, workload, b, k, s, w, chunk):
    """FLOPs of one serving step counted by FlopCounterMode (SDPA on its math backend)."""
    from recmodels.torch import kv_cache as tk

    torch.manual_seed(0)
    model = tm.GenRec(cfg).eval()
    hist = C.serving_history(cfg, workload, s)
    seq = torch.randint(1, cfg.catalog_size, (b, hist))
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH):
        if workload == "update":
            cache = tk.prefill(model, seq, cfg.seq_len)[1]
        with FlopCounterMode(display=False) as counter:
            if workload == "rank":
                tk.rank(model, seq, torch.randint(1, cfg.catalog_size, (b, k)), chunk)
            elif workload == "generate":
                tk.generate(model, seq, s, w)
            else:
                tk.decode(model, cache, seq[:, 0])
    return counter.get_total_flops()


@pytest.mark.parametrize("block", ["sasrec", "hstu"])
@pytest.mark.parametrize("workload", ["rank", "generate", "update"])
def test_serving_flops_match_torch_flop_counter(block, workload):
    """The serving steps as kv_cache.py runs them: rank with 3 micro-batches (the last one
    short), generate's prefill and S-1 decode steps over B x W beams, update's one step."""
    cfg = C.preset("small", block=block, catalog_size=3000, seq_len=32, positions="left")
    kw = dict(n_candidates=40, gen_steps=4, beam_width=3, chunk=16)
    counted = _torch_serving_flops(cfg, workload, 2, 40, 4, 3, 16)
    analytic = C.flops_per_step(cfg, 2, workload, **kw)
    assert analytic == pytest.approx(counted, rel=0.02)
    parts = C.flops_serving(cfg, 2, workload, **kw)
    assert sum(parts.values()) == analytic and parts["decode"] > 0


def test_serving_cost_grows_with_its_axes_and_counts_the_cache():
    cfg = C.preset("small", positions="left")
    f = C.flops_per_step
    assert f(cfg, 4, "rank", n_candidates=4096) > 1.9 * f(cfg, 4, "rank", n_candidates=2048)
    wide, narrow = (C.flops_serving(cfg, 4, "generate", beam_width=w) for w in (32, 16))
    assert wide["decode"] == 2 * narrow["decode"] and wide["prefill"] == narrow["prefill"]
    # the KV cache's gain: one decode step against re-encoding the history (infer)
    assert f(cfg, 4, "infer") > 50 * f(cfg, 4, "update") / 4
    cache = C.kv_cache_bytes(cfg, 4, cfg.seq_len)
    assert cache == 2 * 4 * 4 * 200 * 256 * 4
    assert C.bytes_per_step(cfg, 4, "update") > cache
    with pytest.raises(InputError, match="attention block"):
        f(cfg.replace(block="lstm"), 4, "rank")


@pytest.mark.parametrize("block", ["sasrec", "hstu"])
@pytest.mark.parametrize("workload", ["rank", "update"])
def test_serving_flops_match_xla_cost_analysis(block, workload):
    from recmodels.jax import kv_cache as jk

    cfg = C.preset("small", block=block, catalog_size=3000, seq_len=32, positions="left")
    params = jm.init_params(cfg, jax.random.key(0))
    hist = C.serving_history(cfg, workload)
    seq = jnp.asarray(np.random.default_rng(0).integers(1, 3000, (2, hist)), jnp.int32)
    if workload == "rank":
        cand = jnp.asarray(np.random.default_rng(1).integers(1, 3000, (2, 40)), jnp.int32)
        lowered = jax.jit(partial(jk.rank, cfg=cfg, chunk=16)).lower(params, seq=seq,
                                                                   candidates=cand)
    else:
        cache = jk.prefill(params, cfg, seq, cfg.seq_len)[1]
        lowered = jax.jit(partial(jk.decode, cfg=cfg)).lower(params, cache=cache,
                                                             items=seq[:, 0])
    analysis = lowered.compile().cost_analysis()
    counted = (analysis[0] if isinstance(analysis, list) else analysis)["flops"]
    analytic = C.flops_per_step(cfg, 2, workload, n_candidates=40, chunk=16)
    assert analytic == pytest.approx(counted, rel=0.10)  # XLA adds element-wise work
