"""The JAX train step's fast paths (issue 15): counter-hash dropout masks, the residual
stream's gradient barrier, numpy batches trimmed of padding columns and padded with empty
rows, one compiled program per width, and the host-memory setting."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from recmodels import jax_model as jm
from recmodels.config import preset
from recmodels.splits import TRIM_MULTIPLE


def tiny(**kw):
    return preset("tiny", **{"catalog_size": 300, "seq_len": 24, "dropout": 0.0, **kw})


def left_padded_batch(cfg, rows, lengths, seed=0):
    """Numpy training rows with `lengths` items each (left-padded), as train_batches gives."""
    rng = np.random.default_rng(seed)
    seq = np.zeros((rows, cfg.seq_len), np.int32)
    pos = np.zeros_like(seq)
    for r, n in zip(range(rows), lengths):
        items = rng.integers(1, cfg.catalog_size + 1, n + 1)
        seq[r, cfg.seq_len - n:] = items[:-1]
        pos[r, cfg.seq_len - n:] = items[1:]
    neg = np.where(pos[..., None] > 0, rng.integers(1, cfg.catalog_size + 1, (*pos.shape, 1)), 0)
    return {"seq": seq, "pos": pos, "neg": neg.astype(np.int32)}


def test_keep_mask_rate_independence_and_determinism():
    key = jax.random.key(3)
    m = np.asarray(jm.keep_mask((400, 500), 0.3, key), np.float32)
    assert abs(m.mean() - 0.7) < 0.005  # 200k draws: sd 0.001
    # neighbours along either axis, and another key's mask, are uncorrelated
    assert abs(np.corrcoef(m[:, :-1].ravel(), m[:, 1:].ravel())[0, 1]) < 0.01
    assert abs(np.corrcoef(m[:-1].ravel(), m[1:].ravel())[0, 1]) < 0.01
    other = np.asarray(jm.keep_mask((400, 500), 0.3, jax.random.split(key)[0]), np.float32)
    assert abs(np.corrcoef(m.ravel(), other.ravel())[0, 1]) < 0.01
    assert (np.asarray(jm.keep_mask((400, 500), 0.3, key)) == m.astype(bool)).all()
    assert np.asarray(jm.keep_mask((64,), 0.0, key)).all()


def test_grad_barrier_is_the_identity_for_values_and_gradients():
    x = jax.random.normal(jax.random.key(0), (4, 5, 6))

    def f(x, barrier):
        y = jnp.tanh(x) * 3
        y = jm.grad_barrier(y) if barrier else y
        return (jnp.sin(y) * y).sum()

    assert float(f(x, True)) == float(f(x, False))
    g_with, g_without = (np.asarray(jax.grad(f)(x, b)) for b in (True, False))
    np.testing.assert_array_equal(g_with, g_without)
    bad = x.at[1, 2, 3].set(jnp.nan)
    assert np.isnan(np.asarray(jax.grad(f)(bad, True))[1, 2, 3])


def test_numpy_batches_are_trimmed_and_padded_without_changing_the_step():
    """A left-padded numpy batch with fewer rows than seen before trains as the full-width
    put() batch with those rows alone (dropout off; SGD, so that the parameters move by the
    gradients, which differ only in summation order: Adam's first steps would amplify that
    to ~lr where a gradient is ~0)."""
    cfg = tiny()
    full = left_padded_batch(cfg, 8, [5, 9, 3, 12, 7, 2, 10, 4], seed=1)
    small = left_padded_batch(cfg, 5, [3, 6, 2, 9, 4], seed=2)  # longest 9: width 16 of 24
    a, b = (jm.Engine(cfg, seed=4, optimizer="sgd", lr=0.1) for _ in range(2))
    a.train_step(full)  # numpy: trimmed to 16 columns
    b.train_step(b.put(full))  # device arrays: as given, 24 columns
    loss_a = float(a.train_step(small))  # 5 rows: padded to 8
    loss_b = float(b.train_step(b.put(small)))
    assert loss_a == pytest.approx(loss_b, rel=1e-6, abs=1e-7)
    for k, v in a.state_dict().items():
        np.testing.assert_allclose(v, b.state_dict()[k], rtol=1e-5, atol=1e-7, err_msg=k)


def test_one_program_per_width_and_none_for_a_short_last_batch():
    cfg = tiny(dropout=0.5)
    eng = jm.Engine(cfg)
    widths = set()
    for i, longest in enumerate([3, 20, 7, 16, 24, 11, 5, 18]):
        batch = left_padded_batch(cfg, 8, [longest] + [2] * 7, seed=i)
        widths.add(min(cfg.seq_len, -(-longest // TRIM_MULTIPLE) * TRIM_MULTIPLE))
        eng.train_step(batch)
    compiled = eng._train_step._cache_size()
    assert compiled == len(widths) == 3  # 8, 16, 24
    eng.train_step(left_padded_batch(cfg, 3, [20, 4, 9], seed=9))  # an epoch's last batch
    assert eng._train_step._cache_size() == compiled


def test_rows_pad_with_empty_rows_only_up_to_the_most_seen():
    batch = {"seq": np.ones((3, 4), np.int32), "pos": np.ones((3, 4), np.int32),
             "neg": np.ones((3, 4, 1), np.int32)}
    assert jm.pad_rows(batch, 3) is batch and jm.pad_rows(batch, 0) is batch
    padded = jm.pad_rows(batch, 5)
    assert {k: v.shape[0] for k, v in padded.items()} == {"seq": 5, "pos": 5, "neg": 5}
    assert not padded["seq"][3:].any() and not padded["pos"][3:].any()
    assert padded["neg"].dtype == np.int32
