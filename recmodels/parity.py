"""Numerical parity between the PyTorch and JAX implementations.

Same weights (one safetensors file written by torch, read by JAX), same batches, fp32,
dropout off: the catalog scores, the loss (before training and at every step), and every
parameter after STEPS Adam steps on STEPS different batches must agree within TOLERANCES.
The two frameworks order their float reductions differently, so bit-equality is not
expected. Measured on CPU for `small` (all blocks and losses, sasrec in both layouts): scores
within 1.9e-6, loss within 2.5e-7 (relative), params within 4.4e-5 after 3 steps of lr 1e-3
(`tiny`: 5e-6), but for a few elements of the ReLU layout (below).
Adam divides by the root of its second moment, so a weight whose gradient is near zero can
move by a good fraction of lr differently on the two sides: the parameter tolerance is a
tenth of lr, and a smooth model may have a millionth of its elements beyond it
(`params_smooth_frac`), none beyond 3 lr. Those are the weights whose few gradient
contributions nearly cancel, so any change in summation order moves them, and where the
sum's sign flips the two sides step in opposite directions (up to 2 lr a step apart): `small`
at catalog 500, T 32 had its worst item-table element at 9.7e-5 before the torch step was
packed (blocks.Packing) and fused (fused Adam), at 1.07e-4 after (each change alone puts it
beyond 1e-4), and at 2.1e-3 once torch's CPU Linear layers ran through oneDNN (blocks.linear):
one element of 3.3M each time, all others within 4.4e-5. The share is the guard: wrong betas
or a wrong update move most elements by ~lr and still fail.

Why several steps: a first Adam step moves each weight by about lr * sign(grad) whatever
the betas, so one step cannot tell Adam's moments apart; from the second step on, with a
new batch (a new gradient), the update mixes the gradients by beta1 and beta2, and wrong
betas move the weights by ~lr more or less than they should.

ReLU (sasrec_layout="reference") is not differentiable at 0: once the first steps have moved
the two sides' weights ~1e-5 apart, an FFN unit whose pre-activation lies that close to 0
at some position takes that position's gradient on one side only, and the weights of that
unit whose gradient was near zero then step by ~lr in different directions. Measured for
`small` (sampled and full softmax): 109 and 103 of 3.46M elements beyond 1e-4, at most 1.7e-3
(with GELU in its place: all within 1.5e-5). So with a ReLU a few elements may lie beyond
the tolerance (at most a `params_relu_frac` share, none beyond 3 lr); smooth models get none.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from recmodels import weights
from recmodels.config import BLOCKS, LOSSES, SASREC_LAYOUTS, GenRecConfig, preset

LR = 1e-3
STEPS = 3  # Adam steps before the parameters are compared, each on its own batch
TOLERANCES = {
    "scores_max_abs": 1e-4,  # catalog scores of the last position (logits)
    "loss_rel": 1e-5,  # relative difference of the mean loss, before and at every step
    "params_max_abs": 1e-4,  # any parameter after STEPS Adam steps (lr 1e-3)
    "params_relu_frac": 1e-4,  # share of elements beyond params_max_abs allowed with a ReLU
    "params_smooth_frac": 1e-6,  # the same share without one (none beyond 3 LR either way)
}


@dataclass
class ParityResult:
    preset: str
    block: str
    loss: str
    scores_max_abs: float
    loss_torch: float
    loss_jax: float
    loss_rel: float
    params_max_abs: float
    worst_param: str
    steps: int = STEPS
    # the smallest, over parameter tensors, of the largest change a tensor saw in torch over
    # the steps: far above params_max_abs when every tensor trained, so that the parameter
    # comparison is not two unmoved copies agreeing
    params_moved_min: float = 0.0
    layout: str = ""  # the sasrec block's layout ("prenorm" | "reference"); "" for the others
    params_beyond: int = 0  # parameter elements beyond params_max_abs after the steps
    params_count: int = 0  # parameter elements compared

    @property
    def relu(self) -> bool:
        return self.layout == "reference"

    @property
    def ok(self) -> bool:
        limit = 3 * LR  # a sign flip of a near-zero gradient, see the module docstring
        share = TOLERANCES["params_relu_frac" if self.relu else "params_smooth_frac"]
        params_ok = self.params_max_abs <= TOLERANCES["params_max_abs"] or (
            self.params_max_abs <= limit and self.params_beyond <= share * self.params_count)
        return (self.scores_max_abs <= TOLERANCES["scores_max_abs"]
                and self.loss_rel <= TOLERANCES["loss_rel"] and params_ok)


def parity_batch(cfg: GenRecConfig, batch_size: int = 8, seed: int = 0) -> dict[str, np.ndarray]:
    """A training batch with left padding of random lengths and random targets."""
    rng = np.random.default_rng(seed)
    b, t, c = batch_size, cfg.seq_len, cfg.catalog_size
    seq = rng.integers(1, c + 1, (b, t))
    lengths = rng.integers(1, t + 1, b)
    seq[np.arange(t)[None, :] < (t - lengths)[:, None]] = 0
    pos = np.roll(seq, -1, axis=1)
    pos[:, -1] = rng.integers(1, c + 1, b)
    pos[seq == 0] = 0
    neg = rng.integers(1, c + 1, (b, t, cfg.n_neg))
    neg[pos == 0] = 0
    return {"seq": seq, "pos": pos, "neg": neg}


def check(cfg: GenRecConfig, *, name: str = "", batch_size: int = 8, seed: int = 0,
          steps: int = STEPS) -> ParityResult:
    """Run one parity check for `cfg` (dropout is switched off: it draws different masks)."""
    from recmodels import jax_model, torch_model

    cfg = cfg.replace(dropout=0.0, param_dtype="fp32", compute_dtype="fp32")
    batches = [parity_batch(cfg, batch_size, seed + i) for i in range(max(steps, 1))]
    batch = batches[0]
    te = torch_model.Engine(cfg, seed=seed, lr=LR)
    je = jax_model.Engine(cfg, seed=seed, lr=LR)
    with tempfile.TemporaryDirectory() as tmp:  # through the file, as users share weights
        path = weights.save(te.state_dict(), cfg, Path(tmp) / "w.safetensors")
        tensors, saved_cfg = weights.load(path)
    assert saved_cfg == cfg
    je.load_state_dict(tensors)

    s_t, s_j = te.score_catalog(batch["seq"])[:, 1:], je.score_catalog(batch["seq"])[:, 1:]
    l_t, l_j = te.loss(batch), je.loss(batch)
    loss_rel = abs(l_t - l_j) / max(abs(l_t), 1e-12)
    for b in batches[:steps]:  # the same batches, in the same order, on both sides
        step_t, step_j = float(te.train_step(b)), float(je.train_step(b))
        loss_rel = max(loss_rel, abs(step_t - step_j) / max(abs(step_t), 1e-12))
    p_t, p_j = te.state_dict(), je.state_dict()
    diffs = {k: float(np.abs(p_t[k] - p_j[k]).max()) for k in p_t}
    beyond = sum(int((np.abs(p_t[k] - p_j[k]) > TOLERANCES["params_max_abs"]).sum()) for k in p_t)
    worst = max(diffs, key=diffs.get)
    moved = min(float(np.abs(p_t[k] - tensors[k]).max()) for k in p_t)
    return ParityResult(
        preset=name, block=cfg.block, loss=cfg.loss,
        layout=cfg.sasrec_layout if cfg.block == "sasrec" else "",
        params_beyond=beyond, params_count=sum(v.size for v in p_t.values()),
        scores_max_abs=float(np.abs(s_t - s_j).max()),
        loss_torch=l_t, loss_jax=l_j, loss_rel=loss_rel,
        params_max_abs=diffs[worst], worst_param=worst, steps=steps, params_moved_min=moved,
    )


def check_preset(name: str, *, blocks=BLOCKS, losses=LOSSES, layouts=SASREC_LAYOUTS,
                 catalog_size: int | None = 2000, batch_size: int = 8,
                 on_result=None) -> list[ParityResult]:
    """Every block x loss of a preset, the sasrec block in each of `layouts`. The catalog is
    cut to 2,000 items by default: parity does not depend on C, and a 100k-row table only
    makes the check slow."""
    results = []
    for block in blocks:
        for layout in layouts if block == "sasrec" else (None,):
            for loss in losses:
                overrides = {"block": block, "loss": loss, "n_neg": 1 if loss == "bce" else 16}
                if layout:
                    overrides["sasrec_layout"] = layout
                if catalog_size:
                    overrides["catalog_size"] = catalog_size
                r = check(preset(name, **overrides), name=name, batch_size=batch_size)
                results.append(r)
                if on_result:
                    on_result(r)
    return results


# The serving paths (recmodels/*/kv_cache.py), same weights, fp32: rank's scores in the
# config's own positions and from the oldest item, the catalog scores after one cached
# decode step (an incremental history update), and beam search's items and log-probabilities.
SERVING_TOLERANCES = {
    "rank_max_abs": 1e-5,  # candidate scores (logits), both position modes
    "decode_max_abs": 1e-5,  # catalog scores after appending one item through the cache
    "generate_logp_max_abs": 1e-5,  # beam log-probabilities (summed over the steps)
}


def check_serving(cfg: GenRecConfig, *, batch_size: int = 4, n_candidates: int = 24,
                  chunk: int = 10, steps: int = 3, beam: int = 4, seed: int = 0) -> dict:
    """torch against JAX on rank, decode and generate; ok: within SERVING_TOLERANCES and
    beam search picked the same items."""
    from recmodels import jax_model, torch_model

    cfg = cfg.replace(dropout=0.0, param_dtype="fp32", compute_dtype="fp32")
    seq = parity_batch(cfg, batch_size, seed)["seq"][:, 1:]  # room for the candidate
    rng = np.random.default_rng(seed)
    cand = rng.integers(1, cfg.catalog_size + 1, (batch_size, n_candidates))
    out = {"rank_max_abs": 0.0}
    for positions in ("right", "left"):
        c = cfg.replace(positions=positions)
        te, je = torch_model.Engine(c, seed=seed), jax_model.Engine(c, seed=seed)
        je.load_state_dict(te.state_dict())
        t_in, j_in = te.put({"seq": seq, "candidates": cand}), je.put({"seq": seq,
                                                                      "candidates": cand})
        s_t = te.rank_step(t_in["seq"], t_in["candidates"], chunk).numpy()
        s_j = np.asarray(je.rank_step(j_in["seq"], j_in["candidates"], chunk))
        out["rank_max_abs"] = max(out["rank_max_abs"], float(np.abs(s_t - s_j).max()))
    items = {"t": t_in["candidates"][:, 0], "j": j_in["candidates"][:, 0]}
    d_t = te.decode(te.prefill(t_in["seq"], room=1), items["t"])[0].numpy()[:, 1:]
    d_j = np.asarray(je.decode(je.prefill(j_in["seq"], room=1), items["j"])[0])[:, 1:]
    g_t, lp_t = te.generate(t_in["seq"], steps, beam)
    g_j, lp_j = je.generate(j_in["seq"], steps, beam)
    out |= {"decode_max_abs": float(np.abs(d_t - d_j).max()),
            "generate_logp_max_abs": float(np.abs(lp_t.numpy() - np.asarray(lp_j)).max()),
            "generate_items_equal": bool((g_t.numpy() == np.asarray(g_j)).all())}
    out["ok"] = out["generate_items_equal"] and all(
        out[k] <= tol for k, tol in SERVING_TOLERANCES.items())
    return out
