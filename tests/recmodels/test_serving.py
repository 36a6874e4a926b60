"""The serving paths of both frameworks (recmodels/*/kv_cache.py): positions from the oldest
item, rank (M-FALCON) against each candidate run alone, the KV cache against re-encoding
(generation and incremental updates), and torch against JAX."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
import torch

from recmodels import jax_model as jm
from recmodels import parity
from recmodels import torch_model as tm
from recmodels.config import preset
from recmodels.jax import kv_cache as jk
from recmodels.jax import model as jmodel
from recmodels.torch import kv_cache as tk
from recmodels.torch import model as tmodel

ENGINES = {"torch": tm.Engine, "jax": jm.Engine}
ARCHS = ("sasrec", "hstu", "sasrec-reference")
TOL = 1e-5  # fp32, one framework against itself by another path (measured: <= 3e-7)


def tiny(arch="sasrec", **kw):
    block, _, layout = arch.partition("-")
    return preset("tiny", **{"catalog_size": 300, "seq_len": 12, "dropout": 0.0, "n_head": 2,
                             "d_model": 16, "d_ff": 32, "block": block,
                             "sasrec_layout": layout or "prenorm", **kw})


def histories(b=3, t=8, seed=0, c=300):
    seq = np.random.default_rng(seed).integers(1, c + 1, (b, t))
    seq[0, :3] = 0  # a short history, left-padded
    return seq


def to_np(x):
    return x.numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def catalog(eng, seq):
    """Scores of every item after `seq`, re-encoding it whole (the uncached reference)."""
    return eng.score_catalog(seq)[:, 1:]


@pytest.mark.parametrize("framework", ENGINES)
def test_left_positions_count_from_the_oldest_item(framework):
    cfg = tiny(positions="left")
    seq = histories()
    put = torch.from_numpy if framework == "torch" else jnp.asarray
    positions = (tmodel if framework == "torch" else jmodel).positions
    pos = to_np(positions(put(seq), cfg))
    assert pos[0].tolist() == [0, 0, 0, 0, 1, 2, 3, 4] and pos[1].tolist() == list(range(8))
    right = to_np(positions(put(seq), cfg.replace(positions="right")))
    assert right.tolist() == [list(range(4, 12))]
    with pytest.raises(ValueError, match="do not fit"):
        positions(put(seq), cfg.replace(positions="right"), extra=5)


@pytest.mark.parametrize("framework", ENGINES)
@pytest.mark.parametrize("arch", ("sasrec", "hstu"))
def test_appending_moves_no_earlier_output_only_with_left_positions(framework, arch):
    """With positions from the oldest item an appended item leaves every earlier position's
    output as it was (what makes a KV cache valid); right-aligned positions move them all."""
    seq = histories()
    longer = np.concatenate([seq, seq[:, :1] % 300 + 1], 1)
    for positions, same in (("left", True), ("right", False)):
        eng = ENGINES[framework](tiny(arch, positions=positions), seed=0)
        if framework == "torch":
            with torch.no_grad():
                h = eng.model(torch.from_numpy(seq)).numpy()
                h2 = eng.model(torch.from_numpy(longer)).numpy()
        else:
            h = np.asarray(jm.forward(eng.state.params, eng.cfg, jnp.asarray(seq)))
            h2 = np.asarray(jm.forward(eng.state.params, eng.cfg, jnp.asarray(longer)))
        real = seq != 0
        assert (np.abs(h[real] - h2[:, :-1][real]).max() < TOL) == same


@pytest.mark.parametrize("framework", ENGINES)
@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("positions", ("right", "left"))
def test_rank_in_one_pass_equals_each_candidate_alone(framework, arch, positions):
    """Each candidate's score after one pass over history + K candidates (micro-batches of
    4, so 11 candidates take 3) equals its score when it alone follows the history."""
    eng = ENGINES[framework](tiny(arch, positions=positions), seed=0)
    seq, k = histories(), 11
    cand = np.random.default_rng(1).integers(1, 301, (3, k))
    d = eng.put({"seq": seq, "candidates": cand})
    scores = to_np(eng.rank_step(d["seq"], d["candidates"], 4))
    alone = np.stack([eng.score_candidates(np.concatenate([seq, cand[:, [j]]], 1),
                                           cand[:, [j]])[:, 0] for j in range(k)], 1)
    assert scores.shape == (3, k) and scores.dtype == np.float32
    np.testing.assert_allclose(scores, alone, atol=TOL, rtol=0)
    # candidates never see each other: another set around candidate 0 leaves its score
    other = np.random.default_rng(2).integers(1, 301, (3, k))
    other[:, 0] = cand[:, 0]
    d = eng.put({"seq": seq, "candidates": other})
    again = to_np(eng.rank_step(d["seq"], d["candidates"], 4))
    np.testing.assert_allclose(again[:, 0], scores[:, 0], atol=TOL, rtol=0)
    # not the last state's dot product (score_candidates): a different computation
    assert np.abs(scores - eng.score_candidates(seq, cand)).max() > 1e-3


@pytest.mark.parametrize("framework", ENGINES)
@pytest.mark.parametrize("arch", ARCHS)
def test_cached_generation_equals_uncached(framework, arch):
    eng = ENGINES[framework](tiny(arch, positions="left"), seed=0)
    seq = eng.put({"seq": histories()})["seq"]
    items, scores = eng.generate(seq, 4, 3)
    if framework == "torch":
        with torch.inference_mode():
            ref_items, ref_scores = tk.generate(eng.model, seq, 4, 3, cached=False)
    else:
        ref_items, ref_scores = jk.generate(eng.state.params, eng.cfg, seq, 4, 3, cached=False)
    assert to_np(items).shape == (3, 3, 4) and to_np(scores).shape == (3, 3)
    assert (to_np(items) == to_np(ref_items)).all()
    np.testing.assert_allclose(to_np(scores), to_np(ref_scores), atol=TOL, rtol=0)
    assert (np.diff(to_np(scores), axis=1) <= 0).all()  # best first
    assert (to_np(items) > 0).all()  # never the padding item


@pytest.mark.parametrize("framework", ENGINES)
@pytest.mark.parametrize("arch", ARCHS)
def test_update_through_the_cache_equals_reencoding(framework, arch):
    """Appending one interaction by one decode step gives the catalog scores of re-encoding
    the whole history with it, twice in a row; a corrupted cache does not."""
    eng = ENGINES[framework](tiny(arch, positions="left"), seed=0)
    seq = histories()
    new = np.random.default_rng(3).integers(1, 301, (3, 2))
    d = eng.put({"seq": seq, "new": new})
    cache = eng.prefill(d["seq"], room=2)
    for i in range(2):
        scores, cache = eng.decode(cache, d["new"][:, i])
        ref = catalog(eng, np.concatenate([seq, new[:, :i + 1]], 1))
        np.testing.assert_allclose(to_np(scores)[:, 1:], ref, atol=TOL, rtol=0)
        if i == 0:
            broken = cache._replace(v=[v * 0 for v in cache.v])
    assert int(cache.length) == 10
    # the cache passed in stays valid: the same append again gives the same scores
    first = eng.prefill(d["seq"], room=1)
    once, twice = (to_np(eng.decode(first, d["new"][:, 0])[0]) for _ in range(2))
    np.testing.assert_array_equal(once, twice)
    scores, _ = eng.decode(broken, d["new"][:, 1])
    assert np.abs(to_np(scores)[:, 1:] - ref).max() > 1e-4


@pytest.mark.parametrize("framework", ENGINES)
def test_appending_needs_left_positions_and_attention(framework):
    eng = ENGINES[framework](tiny(), seed=0)  # right-aligned positions
    seq = eng.put({"seq": histories()})["seq"]
    with pytest.raises(ValueError, match="positions='left'"):
        eng.prefill(seq)
    with pytest.raises(ValueError, match="positions='left'"):
        eng.generate(seq, 2, 2)
    lstm = ENGINES[framework](tiny(block="lstm", positions="left"), seed=0)
    with pytest.raises(ValueError, match="attention block"):
        lstm.generate(seq, 2, 2)


@pytest.mark.parametrize("arch", ARCHS)
def test_serving_parity_torch_and_jax(arch):
    r = parity.check_serving(tiny(arch, catalog_size=500, seq_len=16))
    assert r["ok"], r
    assert r["generate_items_equal"]


@pytest.mark.parametrize("arch", ("sasrec", "hstu"))
def test_training_parity_with_left_positions(arch):
    """The standard parity check (scores, loss, three Adam steps) in the other position mode."""
    r = parity.check(tiny(arch, positions="left", catalog_size=500, seq_len=16))
    assert r.ok, r
