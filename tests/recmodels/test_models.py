"""The two implementations: structure, behaviour, and numerical parity through safetensors."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch

from recmodels import jax_model as jm
from recmodels import parity, weights
from recmodels import torch_model as tm
from recmodels.config import BLOCKS, LOSSES, preset
from recmodels.errors import InputError

ENGINES = {"torch": tm.Engine, "jax": jm.Engine}


def tiny(**kw):
    return preset("tiny", **{"catalog_size": 300, "seq_len": 12, "dropout": 0.0, **kw})


@pytest.mark.parametrize("block", BLOCKS)
def test_param_names_and_shapes_mirror(block):
    cfg = tiny(block=block)
    sd = {k: tuple(v.shape) for k, v in tm.GenRec(cfg).state_dict().items()}
    jp = {k: tuple(v.shape) for k, v in jm.init_params(cfg, jax.random.key(0)).items()}
    assert sd == jp
    assert np.all(np.asarray(jm.init_params(cfg, jax.random.key(0))["item_emb.weight"][0]) == 0)
    assert torch.all(tm.GenRec(cfg).item_emb.weight[0] == 0)


def random_weights(cfg, seed=0, std=0.2):
    """Every parameter random (biases and LayerNorm shifts too), so that no term of the model
    is zero by construction: a padded key's value or a position's bias then shows if it leaks."""
    rng = np.random.default_rng(seed)
    out = {}
    for k, v in tm.GenRec(cfg).state_dict().items():
        w = rng.normal(0.0, std, v.shape).astype(np.float32)
        if k.endswith("weight") and (".ln" in k or k.startswith("ln_f")):
            w += 1.0
        out[k] = w
    out["item_emb.weight"][0] = 0.0
    return out


def hidden_states(framework, cfg, tensors, seq):
    """[B, T] ids -> [B, T, d] hidden states of every position, in evaluation mode."""
    seq = np.asarray(seq)
    if framework == "jax":
        params = {k: jnp.asarray(v) for k, v in tensors.items()}
        return np.asarray(jm.forward(params, cfg, jnp.asarray(seq, jnp.int32)))
    model = tm.GenRec(cfg)
    model.load_state_dict({k: torch.from_numpy(v) for k, v in tensors.items()})
    model.eval()
    with torch.no_grad():
        return model(torch.from_numpy(seq.astype(np.int64))).numpy()


@pytest.mark.parametrize("framework", ENGINES)
def test_attention_mask_matches_brute_force(framework):
    """Query q sees key k iff k <= q and k is not padding; every query sees itself."""
    seq = np.random.default_rng(0).integers(1, 9, (3, 7))
    seq[0, :3] = 0
    seq[1, :6] = 0
    seq[2, [0, 4]] = 0  # a gap inside the sequence too
    b, t = seq.shape
    want = np.zeros((b, 1, t, t), bool)
    for i in range(b):
        for q in range(t):
            for k in range(t):
                want[i, 0, q, k] = k == q or (k < q and seq[i, k] != 0)
    mod = jm if framework == "jax" else tm
    conv = jnp.asarray if framework == "jax" else torch.from_numpy
    got = np.asarray(mod.attention_mask(conv(seq)))
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("framework", ENGINES)
@pytest.mark.parametrize("block", BLOCKS)
def test_outputs_never_depend_on_later_items(framework, block):
    """Changing the item at position j leaves every output before j as it was and changes
    the output at j (and after)."""
    cfg = tiny(block=block)
    w = random_weights(cfg)
    seq = np.random.default_rng(0).integers(1, 301, (2, 12))
    seq[:, :4] = 0
    j = 8
    later = seq.copy()
    later[:, j] = later[:, j] % 300 + 1
    h, h2 = hidden_states(framework, cfg, w, seq), hidden_states(framework, cfg, w, later)
    np.testing.assert_allclose(h2[:, :j], h[:, :j], rtol=0, atol=1e-5)
    assert (np.abs(h2[:, j] - h[:, j]).max(axis=-1) > 1e-2).all()
    assert (np.abs(h2[:, -1] - h[:, -1]).max(axis=-1) > 1e-4).all()


@pytest.mark.parametrize("framework", ENGINES)
def test_padding_is_invisible_to_sasrec(framework):
    """The same items with 5 padded slots in front or none: equal outputs at the real
    positions (positions count from the right, and padded keys are masked)."""
    cfg = tiny(block="sasrec")
    w = random_weights(cfg)
    seq = np.random.default_rng(1).integers(1, 301, (2, 12))
    seq[:, :5] = 0
    padded = hidden_states(framework, cfg, w, seq)
    bare = hidden_states(framework, cfg, w, seq[:, 5:])
    np.testing.assert_allclose(padded[:, 5:], bare, rtol=0, atol=1e-5)
    # the check has teeth: one real item less (a sixth pad) does change the outputs
    shorter = seq.copy()
    shorter[:, 5] = 0
    assert np.abs(hidden_states(framework, cfg, w, shorter)[:, 6:] - padded[:, 6:]).max() > 1e-2


@pytest.mark.parametrize("framework", ENGINES)
def test_padding_is_invisible_to_hstu(framework):
    """HSTU divides by the padded length T, so the padded and bare sequences differ by
    design; instead change the relative-position biases that only (real query, padded key)
    pairs use: the real positions' outputs must not move."""
    cfg = tiny(block="hstu")
    w = random_weights(cfg)
    t, n_pad = cfg.seq_len, 5
    n_real = t - n_pad
    seq = np.random.default_rng(2).integers(1, 301, (2, t))
    seq[:, :n_pad] = 0
    # offset k - q of bias entry i is i - (T - 1); real pairs use offsets -(n_real-1)..0
    offsets = np.arange(2 * t - 1) - (t - 1)
    only_padded_keys = offsets <= -n_real
    w2 = {k: v.copy() for k, v in w.items()}
    for i in range(cfg.n_layer):
        w2[f"blocks.{i}.rel_bias"][only_padded_keys] += 3.0
    h, h2 = hidden_states(framework, cfg, w, seq), hidden_states(framework, cfg, w2, seq)
    np.testing.assert_allclose(h2[:, n_pad:], h[:, n_pad:], rtol=0, atol=1e-5)
    # the same change reaches the real positions when a (causal) real key uses those offsets
    full = np.random.default_rng(3).integers(1, 301, (2, t))
    moved = hidden_states(framework, cfg, w2, full) - hidden_states(framework, cfg, w, full)
    assert np.abs(moved[:, -1]).max() > 1e-3


@pytest.mark.parametrize("framework", ENGINES)
@pytest.mark.parametrize("loss", LOSSES)
def test_training_reduces_loss_on_a_fixed_batch(framework, loss):
    cfg = tiny(loss=loss, n_neg=4)
    eng = ENGINES[framework](cfg, seed=0, lr=3e-3)
    batch = parity.parity_batch(cfg, batch_size=16)
    before = eng.loss(batch)
    for _ in range(30):
        eng.train_step(batch)
    assert eng.loss(batch) < 0.7 * before


@pytest.mark.parametrize("framework", ENGINES)
def test_recommend_excludes_history_and_padding(framework):
    cfg = tiny()
    eng = ENGINES[framework](cfg, seed=0)
    seq = np.random.default_rng(3).integers(1, 301, (4, 12))
    seq[:, :2] = 0
    scores, ids = eng.recommend(seq, 20)
    assert ids.shape == (4, 20) and (ids != 0).all()
    assert all(not set(ids[i]) & set(seq[i]) for i in range(4))
    assert (np.diff(scores, axis=1) <= 0).all()
    full = eng.score_catalog(seq)
    cand = np.concatenate([ids[:, :1], seq[:, -3:]], axis=1)
    np.testing.assert_allclose(eng.score_candidates(seq, cand)[:, 0], full[np.arange(4), ids[:, 0]],
                               rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("framework", ENGINES)
@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_steps_are_finite_and_close_to_fp32(framework, precision):
    cfg = tiny()
    batch = parity.parity_batch(cfg, batch_size=8)
    ref = ENGINES[framework](cfg, seed=0).loss(batch)
    eng = ENGINES[framework](cfg.replace(compute_dtype=precision), seed=0)
    low = eng.loss(batch)
    assert low == pytest.approx(ref, rel=0.05)
    assert np.isfinite(float(eng.sync(eng.train_step(batch))))


@pytest.mark.parametrize("block", BLOCKS)
@pytest.mark.parametrize("loss", LOSSES)
def test_parity_tiny_every_block_and_loss(block, loss):
    r = parity.check(preset("tiny", block=block, loss=loss, catalog_size=500, n_neg=4),
                     name="tiny")
    assert r.ok, r
    # the parameters were compared after several steps, and every tensor trained far beyond
    # the tolerance (two unmoved copies would agree trivially)
    assert r.steps == parity.STEPS >= 2
    assert r.params_moved_min > 5 * parity.TOLERANCES["params_max_abs"], r


def test_parity_small_and_detects_a_mismatch(monkeypatch):
    r = parity.check(preset("small", catalog_size=500, seq_len=32), name="small")
    assert r.ok, r
    # A perturbed torch LayerNorm must be caught: parity is a real check.
    orig = tm.GenRec.forward
    monkeypatch.setattr(tm.GenRec, "forward", lambda self, seq: orig(self, seq) * 1.001)
    assert not parity.check(preset("small", catalog_size=500, seq_len=32), steps=1).ok


def test_parity_loss_check_fires_on_a_loss_mismatch(monkeypatch):
    """A torch loss 0.1% too large: the loss check fires while scores and parameters agree
    (Adam's step does not depend on the gradient's scale)."""
    cfg = preset("tiny", catalog_size=500, seq_len=16)
    orig = tm.loss_fn
    monkeypatch.setattr(tm, "loss_fn", lambda model, batch: orig(model, batch) * 1.001)
    r = parity.check(cfg)
    tol = parity.TOLERANCES
    assert not r.ok
    assert r.loss_rel > 10 * tol["loss_rel"]
    assert r.scores_max_abs <= tol["scores_max_abs"] and r.params_max_abs <= tol["params_max_abs"]


def test_parity_param_check_fires_on_wrong_adam_betas(monkeypatch):
    """JAX Adam with betas (0.5, 0.999) instead of (0.9, 0.98): invisible after one step
    (a first Adam step is ~lr * sign(grad) whatever the betas), caught after STEPS steps."""
    cfg = preset("tiny", catalog_size=500, seq_len=16)
    orig = jm.make_optimizer

    def wrong_betas(name="adam", lr=1e-3):
        if name == "adam":
            return optax.adam(lr, b1=0.5, b2=0.999, eps=1e-8)
        return orig(name, lr)

    monkeypatch.setattr(jm, "make_optimizer", wrong_betas)
    tol = parity.TOLERANCES
    one = parity.check(cfg, steps=1)
    assert one.params_max_abs <= tol["params_max_abs"], one  # why one step is not enough
    r = parity.check(cfg)
    assert not r.ok
    assert r.params_max_abs > 5 * tol["params_max_abs"], r
    assert r.scores_max_abs <= tol["scores_max_abs"]  # the weights before training agree


def test_weights_round_trip_and_bad_file(tmp_path):
    cfg = tiny(block="hstu")
    te = tm.Engine(cfg, seed=0)
    path = weights.save(te.state_dict(), cfg, tmp_path / "w.safetensors")
    tensors, saved = weights.load(path)
    assert saved == cfg and set(tensors) == set(te.state_dict())
    je = jm.Engine(cfg, seed=5)
    je.load_state_dict(tensors)
    te2 = tm.Engine(cfg, seed=7)
    te2.load_state_dict(je.state_dict())
    for k, v in te.state_dict().items():
        np.testing.assert_array_equal(v, te2.state_dict()[k])
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    with pytest.raises(InputError, match="not a readable safetensors file"):
        weights.load(bad)
    # `recbench train --save` to a missing directory: one line after training, no traceback
    with pytest.raises(InputError, match=r"cannot write .*no_such_dir"):
        weights.save(te.state_dict(), cfg, tmp_path / "no_such_dir" / "w.safetensors")
    from safetensors.numpy import save_file

    for meta in ('{"d_model": 50, "future_field": 1}', "not json", '{"n_head": 7}'):
        save_file({"a": np.zeros(2, np.float32)}, str(bad), metadata={weights.CONFIG_KEY: meta})
        with pytest.raises(InputError, match="config saved in this file"):
            weights.load(bad)


@pytest.mark.parametrize("loss", LOSSES)
def test_mixed_precision_losses_mirror_autocast(loss, monkeypatch):
    """Given the same hidden states, JAX's bf16 losses equal torch's under autocast: only the
    matmuls (einsum, @) are lowered, the element-wise positive score stays fp32."""
    cfg = tiny(loss=loss, n_neg=4, compute_dtype="bf16")
    batch = parity.parity_batch(cfg, batch_size=4)
    rng = np.random.default_rng(0)
    h = rng.normal(0, 1, (4, cfg.seq_len, cfg.d_model)).astype(np.float32)
    table = rng.normal(0, 1, (cfg.catalog_size + 1, cfg.d_model)).astype(np.float32)
    table[0] = 0
    te = tm.Engine(cfg, seed=0)
    with torch.no_grad():
        te.model.item_emb.weight.copy_(torch.from_numpy(table))
    monkeypatch.setattr(tm.GenRec, "forward", lambda self, seq: torch.from_numpy(h))
    monkeypatch.setattr(jm, "forward", lambda p, cfg, seq, rng=None: jnp.asarray(h))
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        lt = float(tm.loss_fn(te.model, te.put(batch)))
    params = {"item_emb.weight": jnp.asarray(table)}
    lj = float(jm.loss_fn(params, cfg, {k: jnp.asarray(v) for k, v in batch.items()}))
    assert lj == pytest.approx(lt, rel=2e-6)
