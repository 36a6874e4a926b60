"""The two implementations: structure, behaviour, and numerical parity through safetensors."""

import jax
import jax.numpy as jnp
import numpy as np
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


@pytest.mark.parametrize("framework", ENGINES)
@pytest.mark.parametrize("block", BLOCKS)
def test_causal_and_padding_invariant(framework, block):
    """An output never depends on later items, nor on what sits left of the padding."""
    cfg = tiny(block=block)
    eng = ENGINES[framework](cfg, seed=0)
    seq = np.random.default_rng(0).integers(1, 301, (2, 12))
    seq[:, :4] = 0
    later = seq.copy()
    later[:, -1] = (later[:, -1] % 300) + 1  # change the last item only
    h = eng.score_catalog(seq[:, :-1].copy())  # history without the last item...
    h2 = eng.score_catalog(later[:, :-1].copy())
    np.testing.assert_array_equal(h, h2)
    s_full, s_later = eng.score_catalog(seq), eng.score_catalog(later)
    assert not np.allclose(s_full[:, 1:], s_later[:, 1:])  # ...but the last item matters


@pytest.mark.parametrize("framework", ENGINES)
def test_padded_keys_are_masked(framework):
    """Attention ignores padded positions: results do not depend on pad length when the
    items sit at the same positions (positions are absolute from the right)."""
    cfg = tiny(seq_len=12)
    eng = ENGINES[framework](cfg, seed=1)
    seq = np.zeros((1, 12), dtype=np.int64)
    seq[0, -3:] = [5, 6, 7]
    scores = eng.score_catalog(seq)
    assert np.isfinite(scores[:, 1:]).all() and scores[0, 0] == -np.inf


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
    assert r.params_max_abs > 0 or r.scores_max_abs >= 0  # the comparison ran on real numbers


def test_parity_small_and_detects_a_mismatch(monkeypatch):
    r = parity.check(preset("small", catalog_size=500, seq_len=32), name="small")
    assert r.ok, r
    # A perturbed torch LayerNorm must be caught: parity is a real check.
    orig = tm.GenRec.forward
    monkeypatch.setattr(tm.GenRec, "forward", lambda self, seq: orig(self, seq) * 1.001)
    assert not parity.check(preset("small", catalog_size=500, seq_len=32)).ok


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
