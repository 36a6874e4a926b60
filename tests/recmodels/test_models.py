"""The two implementations: structure, behaviour, and numerical parity through safetensors."""

import dataclasses
import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch

from recmodels import config as C
from recmodels import jax_model as jm
from recmodels import parity, weights
from recmodels import torch_model as tm
from recmodels.config import BLOCKS, LOSSES, SASREC_LAYOUTS, preset
from recmodels.errors import InputError
from recmodels.jax import engine as jax_engine
from recmodels.jax import losses as jax_losses
from recmodels.torch import engine as torch_engine

ENGINES = {"torch": tm.Engine, "jax": jm.Engine}
# every block, and the sasrec block in its other layout ("sasrec" alone is "prenorm")
ARCHS = (*BLOCKS, "sasrec-reference")


def arch(name: str) -> dict:
    """"sasrec-reference" -> {"block": "sasrec", "sasrec_layout": "reference"}."""
    block, _, layout = name.partition("-")
    return {"block": block, **({"sasrec_layout": layout} if layout else {})}


def tiny(**kw):
    return preset("tiny", **{"catalog_size": 300, "seq_len": 12, "dropout": 0.0, **kw})


@pytest.mark.parametrize("block", ARCHS)
def test_param_names_and_shapes_mirror(block):
    cfg = tiny(**arch(block))
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
@pytest.mark.parametrize("block", ARCHS)
def test_outputs_never_depend_on_later_items(framework, block):
    """Changing the item at position j leaves every output before j as it was and changes
    the output at j (and after)."""
    cfg = tiny(**arch(block))
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
@pytest.mark.parametrize("layout", SASREC_LAYOUTS)
def test_padding_is_invisible_to_sasrec(framework, layout):
    """The same items with 5 padded slots in front or none: equal outputs at the real
    positions (positions count from the right, and padded keys are masked). The reference
    layout takes keys and values from the un-normalised x: padded rows of x must not leak
    either, although (unlike the SASRec code) nothing zeroes them after each block."""
    cfg = tiny(block="sasrec", sasrec_layout=layout)
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


def sasrec_in_numpy(cfg, w, seq):
    """The sasrec trunk written out from its definition in float64 numpy, either layout.

    prenorm: x + W_o attn(LN1 x), then x + FFN_GELU(LN2 x). reference (kang205/SASRec
    model.py and modules.py): h = LN1 x; x = h + attn(q = h W_q, k = x W_k, v = x W_v) with
    no W_o; h = LN2 x; x = h + FFN_ReLU(h). Biases on every projection in both."""
    w = {k: v.astype(np.float64) for k, v in w.items()}
    d, n_head = cfg.d_model, cfg.n_head
    reference = cfg.sasrec_layout == "reference"
    b, t = seq.shape
    # causal, padded keys hidden, every query sees itself (so no row is empty)
    allowed = np.tril(np.ones((t, t), bool)) & (seq[:, None, None, :] != 0)
    allowed |= np.eye(t, dtype=bool)

    def ln(name, x):
        z = (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + 1e-5)
        return z * w[f"{name}.weight"] + w[f"{name}.bias"]

    def lin(name, x):
        return x @ w[f"{name}.weight"].T + w[f"{name}.bias"]

    def heads(z):
        return z.reshape(b, t, n_head, d // n_head).transpose(0, 2, 1, 3)

    def attn(name, q_in, kv_in):
        if reference:
            q, (k, v) = lin(f"{name}.q", q_in), np.split(lin(f"{name}.kv", kv_in), 2, -1)
        else:
            q, k, v = np.split(lin(f"{name}.qkv", q_in), 3, -1)
        s = np.where(allowed, heads(q) @ heads(k).transpose(0, 1, 3, 2) / np.sqrt(d // n_head),
                     -np.inf)
        p = np.exp(s - s.max(-1, keepdims=True))
        y = ((p / p.sum(-1, keepdims=True)) @ heads(v)).transpose(0, 2, 1, 3).reshape(b, t, d)
        return y if reference else lin(f"{name}.proj", y)

    erf = np.vectorize(math.erf)
    x = (w["item_emb.weight"][seq] * np.sqrt(d) + w["pos_emb.weight"]) * (seq != 0)[..., None]
    for i in range(cfg.n_layer):
        n = f"blocks.{i}"
        if reference:
            h = ln(f"{n}.ln1", x)
            h = ln(f"{n}.ln2", h + attn(f"{n}.attn", h, x))
            x = h + lin(f"{n}.ffn.fc2", np.maximum(lin(f"{n}.ffn.fc1", h), 0.0))
        else:
            h = ln(f"{n}.ln1", x)
            x = x + attn(f"{n}.attn", h, h)
            h = lin(f"{n}.ffn.fc1", ln(f"{n}.ln2", x))
            x = x + lin(f"{n}.ffn.fc2", 0.5 * h * (1.0 + erf(h / np.sqrt(2.0))))
    return ln("ln_f", x)


@pytest.mark.parametrize("framework", ENGINES)
@pytest.mark.parametrize("layout", SASREC_LAYOUTS)
def test_sasrec_layouts_compute_their_definition(framework, layout):
    """Both frameworks' hidden states equal the layout's formula written out in numpy (two
    heads, random weights and biases, padding in front and a gap inside)."""
    cfg = tiny(block="sasrec", sasrec_layout=layout, n_head=2)
    w = random_weights(cfg)
    seq = np.random.default_rng(4).integers(1, 301, (3, 12))
    seq[0, :4] = 0
    seq[1, [2, 7]] = 0
    got = hidden_states(framework, cfg, w, seq)
    np.testing.assert_allclose(got, sasrec_in_numpy(cfg, w, seq), rtol=0, atol=2e-4)
    # the two layouts are different functions: the check would see one standing in for the other
    other = cfg.replace(sasrec_layout="prenorm" if layout == "reference" else "reference")
    assert np.abs(sasrec_in_numpy(other, random_weights(other), seq) - got).max() > 0.1


def test_reference_layout_has_no_output_projection():
    """The SASRec code's attention: W_q on LN(x) and W_k, W_v on x (here attn.q and attn.kv),
    no output projection: n_layer * (d^2 + d) parameters fewer than prenorm, and 2 d^2 FLOPs
    per position and layer fewer."""
    ref, pre = tiny(sasrec_layout="reference"), tiny()
    keys = set(tm.GenRec(ref).state_dict())
    assert {"blocks.0.attn.q.weight", "blocks.0.attn.kv.weight", "blocks.1.attn.kv.bias"} <= keys
    assert not any(".proj." in k or ".qkv." in k for k in keys)
    d, n = ref.d_model, ref.n_layer
    count = sum(p.numel() for p in tm.GenRec(ref).parameters())
    assert count == C.params_total(ref) == C.params_total(pre) - n * (d * d + d)
    fwd = C.flops_forward(pre, 4, "infer") - C.flops_forward(ref, 4, "infer")
    assert fwd == 4 * ref.seq_len * n * 2 * d * d
    # the figure: in tiny (d = d_ff = 50) the projection is 16% of the dense parameters
    assert 1 - C.params_dense(ref) / C.params_dense(pre) == pytest.approx(0.164, abs=1e-3)


@pytest.mark.parametrize("framework", ENGINES)
@pytest.mark.parametrize("layout", SASREC_LAYOUTS)
def test_attention_and_ffn_dropout_only_in_the_reference_layout(framework, layout):
    """The SASRec code drops attention weights and the FFN's hidden units; prenorm drops
    neither (its dropout sits on the embedding and on each residual branch)."""
    cfg = tiny(sasrec_layout=layout, dropout=0.5)
    x = np.random.default_rng(0).normal(size=(2, cfg.seq_len, cfg.d_model)).astype(np.float32)
    seq = np.ones((2, cfg.seq_len), np.int64)
    if framework == "torch":
        xt, mask = torch.from_numpy(x), tm.attention_mask(torch.from_numpy(seq))
        torch.manual_seed(0)
        outs = []
        for module, args in ((tm.CausalSelfAttention(cfg), (xt, mask, xt)),
                             (tm.FeedForward(cfg), (xt,))):
            with torch.no_grad():
                outs.append([np.asarray(out[0] if isinstance(out, tuple) else out)
                             for out in (module.train(mode)(*args) for mode in (False, True))])
    else:
        p = jm.init_params(cfg, jax.random.key(0))
        xj, mask, key = jnp.asarray(x), jm.attention_mask(jnp.asarray(seq)), jax.random.key(1)
        outs = [[np.asarray(jm.causal_self_attention(p, "blocks.0.attn", xj, mask, cfg, xj, r)[0])
                 for r in (None, key)],
                [np.asarray(jm.feed_forward(p, "blocks.0.ffn", xj, cfg, r)) for r in (None, key)]]
    for evaluation, training in outs:
        changed = np.abs(training - evaluation).max() > 1e-3
        assert changed == (layout == "reference")


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


@pytest.mark.parametrize("block", ARCHS)
@pytest.mark.parametrize("loss", LOSSES)
def test_parity_tiny_every_block_and_loss(block, loss):
    r = parity.check(preset("tiny", **arch(block), loss=loss, catalog_size=500, n_neg=4),
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
    monkeypatch.setattr(tm.GenRec, "forward",
                        lambda self, seq, packing=None: orig(self, seq, packing) * 1.001)
    assert not parity.check(preset("small", catalog_size=500, seq_len=32), steps=1).ok


def test_parity_loss_check_fires_on_a_loss_mismatch(monkeypatch):
    """A torch loss 0.1% too large: the loss check fires while scores and parameters agree
    (Adam's step does not depend on the gradient's scale)."""
    cfg = preset("tiny", catalog_size=500, seq_len=16)
    orig = tm.loss_fn
    monkeypatch.setattr(torch_engine, "loss_fn", lambda model, batch: orig(model, batch) * 1.001)
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

    monkeypatch.setattr(jax_engine, "make_optimizer", wrong_betas)
    tol = parity.TOLERANCES
    one = parity.check(cfg, steps=1)
    assert one.params_max_abs <= tol["params_max_abs"], one  # why one step is not enough
    r = parity.check(cfg)
    assert not r.ok
    assert r.params_max_abs > 5 * tol["params_max_abs"], r
    assert r.scores_max_abs <= tol["scores_max_abs"]  # the weights before training agree


def test_parity_allows_a_few_relu_kinks_only_with_a_relu():
    """With a ReLU (the reference layout) a few parameter elements may end beyond the
    tolerance (see recmodels/parity.py: a pre-activation within rounding of 0 takes a
    gradient on one side only); a smooth model a millionth of them (a near-zero gradient whose
    sign flips), all within 3 lr; many, or large ones, fail."""
    base = dict(preset="small", block="sasrec", loss="bce", scores_max_abs=1e-6, loss_torch=1.0,
                loss_jax=1.0, loss_rel=0.0, worst_param="w", params_count=1_000_000)

    def result(layout, max_abs, beyond):
        return parity.ParityResult(**base, layout=layout, params_max_abs=max_abs,
                                   params_beyond=beyond)

    assert result("reference", 1.7e-3, 100).ok  # 1 in 10,000, within 3 lr
    assert not result("prenorm", 1.7e-3, 100).ok  # GELU: smooth, 1 in 10,000 is too many
    assert not result("reference", 1.7e-3, 101).ok
    assert not result("reference", 3.1e-3, 1).ok
    assert result("prenorm", parity.TOLERANCES["params_max_abs"], 0).ok
    # a smooth model: one in a million elements whose gradient is near zero may stray, as
    # far as a sign flip takes Adam in 3 steps (within 3 lr)
    assert result("prenorm", 1.1e-4, 1).ok
    assert not result("prenorm", 1.1e-4, 2).ok
    assert result("prenorm", 2.1e-3, 1).ok
    assert not result("prenorm", 3.1e-3, 1).ok


def test_parity_with_a_relu_still_catches_wrong_adam_betas(monkeypatch):
    """The ReLU allowance does not hide an optimizer that differs: wrong betas move most
    elements of the reference layout's parameters apart, far beyond the allowed share."""
    cfg = preset("tiny", sasrec_layout="reference", catalog_size=500, seq_len=16)
    monkeypatch.setattr(jax_engine, "make_optimizer",
                        lambda name="adam", lr=1e-3: optax.adam(lr, b1=0.5, b2=0.999, eps=1e-8))
    r = parity.check(cfg)
    assert not r.ok
    assert r.params_beyond > 100 * parity.TOLERANCES["params_relu_frac"] * r.params_count, r


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


def test_weights_files_carry_the_layout_and_old_files_load_as_prenorm(tmp_path):
    """A file written before `sasrec_layout` existed has no such field in its config: it
    loads as prenorm, the only layout there was. A reference file loads as reference in
    either framework, and its tensors do not fit a prenorm model."""
    ref = tiny(sasrec_layout="reference")
    te = tm.Engine(ref, seed=0)
    tensors, saved = weights.load(weights.save(te.state_dict(), ref, tmp_path / "r.safetensors"))
    assert saved == ref and set(tensors) == set(te.state_dict())
    je = jm.Engine(saved, seed=3)
    je.load_state_dict(tensors)
    seq = parity.parity_batch(ref, 4)["seq"]
    np.testing.assert_allclose(je.score_catalog(seq)[:, 1:], te.score_catalog(seq)[:, 1:],
                               rtol=0, atol=1e-4)
    with pytest.raises(KeyError, match="attn"):
        jm.Engine(tiny(), seed=0).load_state_dict(tensors)
    with pytest.raises((KeyError, RuntimeError), match="attn"):
        tm.Engine(tiny(), seed=0).load_state_dict(tensors)

    from safetensors.numpy import save_file

    old = {k: v for k, v in dataclasses.asdict(tiny()).items() if k != "sasrec_layout"}
    pre = tm.Engine(tiny(), seed=0).state_dict()
    save_file(pre, str(tmp_path / "old.safetensors"),
              metadata={weights.CONFIG_KEY: json.dumps(old)})
    tensors, saved = weights.load(tmp_path / "old.safetensors")
    assert saved.sasrec_layout == "prenorm" and saved == tiny()
    jm.Engine(saved, seed=0).load_state_dict(tensors)


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
    monkeypatch.setattr(jax_losses, "forward", lambda p, cfg, seq, rng=None: jnp.asarray(h))
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        lt = float(tm.loss_fn(te.model, te.put(batch)))
    params = {"item_emb.weight": jnp.asarray(table)}
    lj = float(jm.loss_fn(params, cfg, {k: jnp.asarray(v) for k, v in batch.items()}))
    assert lj == pytest.approx(lt, rel=2e-6)
