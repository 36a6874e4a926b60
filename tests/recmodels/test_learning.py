"""What training does to the weights, checked against an independent computation: gradients
and SGD steps against torch on the same weights, fp16 against fp32, held-out loss, JAX
dropout against its definition, and int8 inference against fp32 scores."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from recmodels import data as D
from recmodels import jax_model as jm
from recmodels import parity
from recmodels import splits as S
from recmodels import torch_model as tm
from recmodels.config import preset
from recmodels.jax import blocks as jax_blocks
from recmodels.jax import model as jax_model_mod

ENGINES = {"torch": tm.Engine, "jax": jm.Engine}


def tiny(**kw):
    return preset("tiny", **{"catalog_size": 300, "seq_len": 12, "dropout": 0.0, **kw})


def arch(name: str) -> dict:
    """"sasrec-reference" -> {"block": "sasrec", "sasrec_layout": "reference"}."""
    block, _, layout = name.partition("-")
    return {"block": block, **({"sasrec_layout": layout} if layout else {})}


def torch_grads(cfg, tensors, batch):
    """Autograd's gradient of the mean loss at `tensors`, one array per state_dict key."""
    model = tm.GenRec(cfg)
    model.load_state_dict({k: torch.from_numpy(v) for k, v in tensors.items()})
    model.train()  # dropout is 0: train mode only matters for the mode flags
    b = {k: torch.from_numpy(np.asarray(v, np.int64)) for k, v in batch.items()}
    tm.loss_fn(model, b).backward()
    return {k: p.grad.numpy().copy() for k, p in model.named_parameters()}


# --- gradients and SGD ---------------------------------------------------------------------


@pytest.mark.parametrize("block, loss", [("sasrec", "bce"), ("hstu", "sampled_softmax"),
                                         ("lstm", "full_softmax"), ("sasrec-reference", "bce")])
def test_every_parameter_gets_the_gradient_torch_computes(block, loss):
    """One JAX SGD step through the Engine (the training path: grad, scaling, optimizer) is
    p - lr * g, with g autograd's gradient in torch on the same weights, for every tensor,
    and no tensor's gradient is zero. lr is large so that lr * g stands far above the fp32
    rounding of p (the layer-norm weights sit at 1)."""
    cfg = tiny(**arch(block), loss=loss, n_neg=4)
    batch = parity.parity_batch(cfg, 8)
    lr = 10.0
    w = tm.Engine(cfg, seed=0).state_dict()
    g_torch = torch_grads(cfg, w, batch)
    je = jm.Engine(cfg, seed=1, optimizer="sgd", lr=lr)
    je.load_state_dict(w)
    je.train_step(batch)
    after = je.state_dict()
    assert set(after) == set(g_torch)
    for k, g in g_torch.items():
        scale = np.abs(g).max()
        assert scale > 0, f"torch: no gradient reaches {k}"
        g_jax = (w[k] - after[k]) / lr
        np.testing.assert_allclose(g_jax, g, rtol=0, atol=1e-3 * scale, err_msg=k)


def test_jax_sgd_matches_torch_sgd_over_two_steps():
    """Plain SGD, two steps on two batches, same weights: JAX's parameters equal torch's.
    (Two steps, so that momentum or any state carried between steps would show.)"""
    cfg = tiny(block="sasrec", loss="sampled_softmax", n_neg=4)
    te = tm.Engine(cfg, seed=0, optimizer="sgd", lr=0.5)
    je = jm.Engine(cfg, seed=1, optimizer="sgd", lr=0.5)
    w0 = te.state_dict()
    je.load_state_dict(w0)
    for seed in (0, 1):
        b = parity.parity_batch(cfg, 8, seed)
        lt, lj = float(te.train_step(b)), float(je.train_step(b))
        assert lj == pytest.approx(lt, rel=1e-5)
    pt, pj = te.state_dict(), je.state_dict()
    for k in w0:
        moved = np.abs(pt[k] - w0[k]).max()
        assert moved > 0, k
        np.testing.assert_allclose(pj[k], pt[k], rtol=0, atol=1e-3 * moved + 1e-7, err_msg=k)


@pytest.fixture(scope="module")
def synthetic_batches():
    split = S.leave_one_out(D.synthetic(n_users=400, n_items=80, mean_len=14, seed=0))
    return list(S.train_batches(split, seq_len=16, batch_size=40, n_neg=1, seed=0))


def test_held_out_loss_improves_alike_in_both_frameworks(synthetic_batches):
    """Users the model never trained on: their loss falls, and by the same amount in JAX as
    in torch trained from the same weights on the same batches (a JAX that trained only
    part of the model would fall less)."""
    held, train = synthetic_batches[0], synthetic_batches[1:]
    cfg = preset("tiny", catalog_size=80, seq_len=16, dropout=0.0, d_model=32, d_ff=32)
    te, je = tm.Engine(cfg, seed=0, lr=5e-3), jm.Engine(cfg, seed=1, lr=5e-3)
    je.load_state_dict(te.state_dict())
    before = te.loss(held)
    assert je.loss(held) == pytest.approx(before, rel=1e-5)
    for _ in range(3):
        for b in train:
            te.train_step(b)
            je.train_step(b)
    after_t, after_j = te.loss(held), je.loss(held)
    assert after_t < 0.85 * before
    assert after_j == pytest.approx(after_t, rel=0.02)


# --- mixed precision -----------------------------------------------------------------------


@pytest.mark.parametrize("framework", ENGINES)
def test_fp16_training_moves_the_weights_like_fp32(framework):
    """fp16 compute with loss scaling trains: the loss falls as in fp32 and every tensor
    moves about as far. (A finite loss alone proves nothing: a step skipped for an
    overflowing gradient returns a finite loss and leaves the weights where they were.)"""
    cfg = tiny()
    batch = parity.parity_batch(cfg, 16)
    runs = {}
    for prec in ("fp32", "fp16"):
        eng = ENGINES[framework](cfg.replace(compute_dtype=prec), seed=0, lr=3e-3)
        w0, before = eng.state_dict(), eng.loss(batch)
        for _ in range(8):
            eng.train_step(batch)
        w1 = eng.state_dict()
        runs[prec] = before, eng.loss(batch), {k: w1[k] - w0[k] for k in w0}
    (b32, a32, m32), (b16, a16, m16) = runs["fp32"], runs["fp16"]
    assert a32 < 0.8 * b32 and b16 == pytest.approx(b32, rel=0.01)
    assert a16 == pytest.approx(a32, rel=0.03)
    for k in m32:
        assert np.abs(m16[k]).max() > 0.5 * np.abs(m32[k]).max(), f"{k} did not train in fp16"
    total = np.sqrt(sum(np.sum((m16[k] - m32[k]) ** 2) for k in m32))
    assert total < 0.1 * np.sqrt(sum(np.sum(m ** 2) for m in m32.values()))


# --- JAX dropout ---------------------------------------------------------------------------


@pytest.mark.parametrize("rate", [0.2, 0.5])
def test_jax_dropout_keep_rate_and_scaling(rate):
    """Each element is kept with probability 1 - rate and scaled by 1 / (1 - rate). With
    200k elements the kept fraction's standard deviation is <= 0.0012; the tolerance is 8x
    that (and the key is fixed, so the draw never changes)."""
    x = jax.random.normal(jax.random.key(1), (400, 500)) + 3.0  # never exactly 0
    out = np.asarray(jm.dropout(x, rate, jax.random.key(0)))
    kept = out != 0
    assert abs(kept.mean() - (1 - rate)) < 0.01
    np.testing.assert_allclose(out[kept], np.asarray(x)[kept] / (1 - rate), rtol=1e-6)
    assert np.asarray(jm.dropout(x, rate, None) == x).all()  # evaluation: identity
    assert np.asarray(jm.dropout(x, 0.0, jax.random.key(0)) == x).all()


@pytest.mark.parametrize("block", ["sasrec", "hstu", "lstm", "sasrec-reference"])
def test_jax_dropout_draws_a_new_mask_at_every_site(block, monkeypatch):
    """A training forward pass draws a different mask at every dropout site: the embedding,
    each block's branches (and, in sasrec's reference layout, its attention weights and FFN
    hidden units), or between LSTM layers. (A new set at every step: below.)"""
    cfg = tiny(**arch(block), dropout=0.5)
    params = jm.init_params(cfg, jax.random.key(0))
    seq = jnp.asarray(np.random.default_rng(0).integers(1, 301, (4, 12)), jnp.int32)
    masks = []
    orig = jm.dropout

    def recording(x, rate, rng):
        out = orig(x, rate, rng)
        if rng is not None and rate > 0:  # kept, over the inputs that are not 0 already
            masks.append((np.asarray(out != 0), np.asarray(x != 0)))
        return out

    for module in (jax_blocks, jax_model_mod):  # every module that calls dropout
        monkeypatch.setattr(module, "dropout", recording)
    jm.forward(params, cfg, seq, jax.random.key(1))
    per_block = {"sasrec": 2, "hstu": 1, "sasrec-reference": 3}
    sites = 1 + per_block[block] * cfg.n_layer if block != "lstm" else cfg.n_layer
    assert len(masks) == sites
    for kept, nonzero in masks:
        assert abs(kept[nonzero].mean() - 0.5) < 0.1
    for i in range(len(masks)):
        for j in range(i):
            (a, a_nz), (b, b_nz) = masks[i], masks[j]
            if a.shape == b.shape:  # (attention weights are [B, h, T, T])
                both = a_nz & b_nz
                assert (a[both] != b[both]).mean() > 0.2, (i, j)


def test_jax_dropout_changes_every_step_and_never_at_evaluation():
    """With lr 0 the weights stay put, so two training steps on one batch differ only by
    their dropout masks: their losses must differ. Evaluation (loss, scores) applies no
    dropout: it equals the dropout-free model on the same weights, in both frameworks."""
    cfg = tiny(dropout=0.5)
    batch = parity.parity_batch(cfg, 8)
    je = jm.Engine(cfg, seed=0, optimizer="sgd", lr=0.0)
    w = je.state_dict()
    losses = [float(je.train_step(batch)) for _ in range(3)]
    assert len(set(losses)) == 3, losses
    plain = jm.Engine(cfg.replace(dropout=0.0), seed=5)
    plain.load_state_dict(w)
    te = tm.Engine(cfg, seed=0)  # dropout 0.5 too
    te.load_state_dict(w)
    ref_loss, ref_scores = plain.loss(batch), plain.score_catalog(batch["seq"])[:, 1:]
    assert all(loss != pytest.approx(ref_loss, rel=1e-3) for loss in losses)
    for eng in (je, te):
        assert eng.loss(batch) == pytest.approx(ref_loss, rel=1e-5)
        np.testing.assert_allclose(eng.score_catalog(batch["seq"])[:, 1:], ref_scores,
                                   rtol=0, atol=1e-5)


# --- int8 inference ------------------------------------------------------------------------


@pytest.mark.filterwarnings("ignore:torch.ao.quantization is deprecated:DeprecationWarning")
@pytest.mark.filterwarnings("ignore:torch.quantize_per_tensor:UserWarning")
@pytest.mark.parametrize("block", ["sasrec", "lstm", "sasrec-reference"])
def test_int8_inference_is_quantised_and_close_to_fp32(block):
    """The int8 engine, built as the benchmark builds it (Engine.quantize_int8), runs int8
    kernels and ranks like fp32: every score within 10% of the spread of that user's scores
    (measured: <= 2%), and at least 8 of the fp32 top 10 in its top 10 (measured: 10)."""
    cfg = tiny(**arch(block))
    eng = tm.Engine(cfg, seed=0)
    seq = parity.parity_batch(cfg, 16)["seq"]
    s32 = eng.score_catalog(seq)[:, 1:]
    _, top32 = eng.recommend(seq, 10)
    eng.quantize_int8()
    quantised = [m for m in eng.model.modules()
                 if type(m).__module__.startswith("torch.ao.nn.quantized.dynamic")]
    assert quantised, "no dynamically quantised module in the int8 engine"
    s8 = eng.score_catalog(seq)[:, 1:]
    _, top8 = eng.recommend(seq, 10)
    err = np.abs(s8 - s32).max(axis=1)
    assert err.max() > 0  # int8 arithmetic really ran
    assert (err <= 0.1 * s32.std(axis=1)).all(), err / s32.std(axis=1)
    assert min(len(set(a) & set(b)) for a, b in zip(top32, top8)) >= 8
