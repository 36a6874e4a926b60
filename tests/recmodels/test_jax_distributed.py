"""JAX scale-out: jax.distributed over 2 CPU processes, and row-wise item-table sharding.

The multi-process test starts tests/recmodels/dist_jax_ranks.py with torchrun (as a plain
launcher: 2 processes, 1 CPU device each, gloo collectives) and compares what rank 0 writes
with the one-process Engine on the same global batch, from the same safetensors weights.
The batch is padded unequally: rank 0's rows hold 2 targets each, rank 1's 8, so a loss
normalised per rank (mean of the ranks' means) would differ from the global mean, and
test_tolerances_can_fail shows by how much.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import optax
import pytest

from bench.launch.dist import free_port_pair
from recmodels import weights
from recmodels.config import preset
from recmodels.jax import distributed as dist
from recmodels.jax.engine import Engine, make_optimizer
from recmodels.jax.losses import loss_fn
from recmodels.jax.model import init_params

ROOT = Path(__file__).resolve().parents[2]
RANKS = Path(__file__).with_name("dist_jax_ranks.py")
STEPS, BATCH, SEQ_LEN = 3, 8, 8
CATALOG = 200  # C+1 = 201 rows: odd, so row-wise over 2 devices pads the table to 202
# tiny with bce (gathers from the sharded table), small with full_softmax (the loss over
# every row: a padded row that leaked in would change it).
PRESETS = {"tiny": {"loss": "bce"}, "small": {"loss": "full_softmax"}}
OPTIMIZERS = {"adam": 1e-3, "sgd": 0.1}  # SGD's lr large enough that its steps show
# Tolerances (fp32; the sums run in another order over 2 devices). Measured maxima over the
# 8 two-process cases: losses 9.5e-7; SGD parameters 1.2e-7; Adam's relative update error
# 1.9e-4 and its largest element difference 1.7e-4 (small, in elements whose gradient is
# near roundoff, which Adam divides by its own size); Adam's key biases 5.9e-4 (compare).
LOSS_TOL = 1e-5  # absolute, on losses of ~1-6
SGD_TOL = 2e-6  # absolute, on any parameter element after 3 steps
ADAM_REL_TOL = 1e-3  # per tensor: |got - ref| / |ref - initial| (Frobenius norms)
ADAM_ABS_TOL = 5e-4  # absolute, on any element: half of one Adam step (lr)


def config(name):
    return preset(name, catalog_size=CATALOG, seq_len=SEQ_LEN, dropout=0.0, **PRESETS[name])


def random_weights(cfg, seed=0, std=0.1):
    """Every parameter random (biases and LayerNorm too), row 0 of the table zero."""
    rng = np.random.default_rng(seed)
    shapes = jax.eval_shape(lambda key: init_params(cfg, key), jax.random.key(0))
    out = {}
    for k, s in shapes.items():
        w = rng.normal(0.0, std, s.shape).astype(np.float32)
        out[k] = w + 1.0 if k.endswith("weight") and (".ln" in k or k.startswith("ln_f")) else w
    out["item_emb.weight"][0] = 0.0
    return out


def unequal_batch(cfg, seed=0):
    """[8, T] batch: rows 0-3 (rank 0) left-padded to 2 items, rows 4-7 (rank 1) full."""
    rng = np.random.default_rng(seed)
    t, c = cfg.seq_len, cfg.catalog_size
    seq = rng.integers(1, c + 1, (BATCH, t))
    seq[: BATCH // 2, : t - 2] = 0
    pos = np.roll(seq, -1, axis=1)
    pos[:, -1] = rng.integers(1, c + 1, BATCH)
    pos[seq == 0] = 0
    neg = rng.integers(1, c + 1, (BATCH, t, cfg.n_neg))
    neg[pos == 0] = 0
    return {"seq": seq, "pos": pos, "neg": neg}


def compare(got_loss, got, ref_loss, ref, initial, cfg, optimizer) -> dict[str, float]:
    """How far a run (per-step losses, final params) is from the reference run.

    Adam's attention key biases are left out of "abs" and "rel" and reported as "key_bias":
    their gradient is zero in exact arithmetic (softmax ignores a shift common to every
    key's score), so it is all roundoff, and Adam, which divides a gradient by its own size,
    turns roundoff into steps of up to lr."""
    d, out = cfg.d_model, {"loss": float(np.abs(got_loss - ref_loss).max()), "abs": 0.0,
                           "rel": 0.0, "key_bias": 0.0}
    for k in ref:
        a, b, a0 = got[k], ref[k], initial[k]
        if optimizer == "adam" and k.endswith("attn.qkv.bias"):
            out["key_bias"] = max(out["key_bias"], float(np.abs(a - b)[d:2 * d].max()))
            a, b, a0 = (np.concatenate([x[:d], x[2 * d:]]) for x in (a, b, a0))
        out["abs"] = max(out["abs"], float(np.abs(a - b).max()))
        moved = float(np.linalg.norm(b - a0))
        if moved > 0:
            out["rel"] = max(out["rel"], float(np.linalg.norm(a - b)) / moved)
    return out


def within(m: dict[str, float], optimizer: str) -> bool:
    if optimizer == "sgd":
        return m["loss"] < LOSS_TOL and m["abs"] < SGD_TOL
    return (m["loss"] < LOSS_TOL and m["abs"] < ADAM_ABS_TOL and m["rel"] < ADAM_REL_TOL
            and m["key_bias"] <= STEPS * OPTIMIZERS["adam"])


def load_inputs(folder: Path, name: str):
    """(weights, config, global batch) of a preset, as the ranks read them."""
    tensors, cfg = weights.load(folder / f"weights-{name}.safetensors")
    with np.load(folder / f"batch-{name}.npz", allow_pickle=False) as f:
        return tensors, cfg, {k: f[k] for k in f.files}


def reference(folder: Path, name: str, optimizer: str):
    """One process, one device: (per-step losses [STEPS], final params, top-10 ids [B, 10],
    the final params' loss)."""
    tensors, cfg, batch = load_inputs(folder, name)
    e = Engine(cfg, optimizer=optimizer, lr=OPTIMIZERS[optimizer], device="cpu")
    e.load_state_dict(tensors)
    losses = np.array([float(e.train_step(batch)) for _ in range(STEPS)])
    return losses, e.state_dict(), e.recommend(batch["seq"], 10)[1], e.loss(batch)


def per_rank_mean_run(folder: Path, name: str, optimizer: str):
    """The reference run with the bug a test must catch: each rank's mean loss, averaged
    over the ranks, instead of the mean over every target of the global batch."""
    tensors, cfg, batch = load_inputs(folder, name)
    halves = [{k: v[s] for k, v in batch.items()}
              for s in (slice(0, BATCH // 2), slice(BATCH // 2, None))]

    def objective(p):
        return (loss_fn(p, cfg, halves[0]) + loss_fn(p, cfg, halves[1])) / 2

    tx = make_optimizer(optimizer, OPTIMIZERS[optimizer])
    params = {k: jax.numpy.asarray(v) for k, v in tensors.items()}
    opt_state, losses = tx.init(params), []
    grad = jax.jit(jax.value_and_grad(objective))
    for _ in range(STEPS):
        loss, g = grad(params)
        updates, opt_state = tx.update(g, opt_state, params)
        params, losses = optax.apply_updates(params, updates), [*losses, float(loss)]
    return np.array(losses), {k: np.asarray(v) for k, v in params.items()}


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Path:
    """A folder with each preset's random weights (safetensors) and unequally padded batch."""
    folder = tmp_path_factory.mktemp("jax-dist")
    for name in PRESETS:
        cfg = config(name)
        weights.save(random_weights(cfg), cfg, folder / f"weights-{name}.safetensors")
        np.savez(folder / f"batch-{name}.npz", **unequal_batch(cfg))
    return folder


@pytest.fixture(scope="module")
def references(inputs) -> dict:
    return {(name, opt): reference(inputs, name, opt) for name in PRESETS for opt in OPTIMIZERS}




@pytest.mark.dist
def test_two_processes_match_one(inputs, request):
    """Every preset x sharding x optimizer in one torchrun launch, against one process."""
    cases = [{"key": f"{name}/{sh}/{opt}", "preset": name, "sharding": sh, "optimizer": opt,
              "lr": lr} for name in PRESETS for sh in ("dense", "row-wise")
             for opt, lr in OPTIMIZERS.items()]
    (inputs / "cases.json").write_text(json.dumps({"steps": STEPS, "cases": cases}))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    env.pop("XLA_FLAGS", None)  # one CPU device per process
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
           "--master-port", str(free_port_pair()), str(RANKS), str(inputs)]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        refs = request.getfixturevalue("references")  # computed while the ranks run
        log, _ = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, log[-8000:]
    with np.load(inputs / "out.npz", allow_pickle=False) as f:
        out = {k: f[k] for k in f.files}
    assert int(out["process_count"]) == 2 and int(out["device_count"]) == 2
    assert int(out["local_device_count"]) == 1
    for case in cases:
        key, opt = case["key"], case["optimizer"]
        tensors, cfg, _ = load_inputs(inputs, case["preset"])
        ref_loss, ref, ids, eval_loss = refs[case["preset"], opt]
        got = {k.removeprefix(f"{key}/param/"): v for k, v in out.items()
               if k.startswith(f"{key}/param/")}
        assert got.keys() == ref.keys()
        assert got["item_emb.weight"].shape == (CATALOG + 1, cfg.d_model)
        m = compare(out[f"{key}/loss"], got, ref_loss, ref, tensors, cfg, opt)
        print(key, {k: f"{v:.1e}" for k, v in m.items()})
        assert within(m, opt), (key, m)
        assert (out[f"{key}/recommend"] == ids).all(), key
        assert abs(float(out[f"{key}/eval_loss"]) - eval_loss) < LOSS_TOL, key
        assert bool(out[f"{key}/all_finite"]), key
        rows = out[f"{key}/table_rows"]
        if case["sharding"] == "row-wise":  # 201 rows padded to 202, 101 on each process
            assert int(out[f"{key}/table_global_rows"]) == 202 and list(rows) == [101, 101]
        else:
            assert list(rows) == [CATALOG + 1] * 2


@pytest.mark.parametrize("name", PRESETS)
def test_tolerances_can_fail(inputs, references, name):
    """Normalising per rank (each rank's mean loss, then their mean) instead of over every
    target puts losses and parameters far outside the tolerances above: 2 targets per row on
    rank 0 against 8 on rank 1 weight rank 0's targets 4 times as much."""
    tensors, cfg, _ = load_inputs(inputs, name)
    for opt in OPTIMIZERS:
        ref_loss, ref, *_ = references[name, opt]
        m = compare(*per_rank_mean_run(inputs, name, opt), ref_loss, ref, tensors, cfg, opt)
        print(name, opt, {k: f"{v:.1e}" for k, v in m.items()})
        assert m["loss"] > 10 * LOSS_TOL
        assert (m["abs"] > 10 * SGD_TOL if opt == "sgd" else m["rel"] > 10 * ADAM_REL_TOL)


ROW_WISE_SCRIPT = r"""
import json
import numpy as np
from recmodels.jax.engine import Engine
from tests.recmodels.test_jax_distributed import (CATALOG, STEPS, compare, config,
                                                  random_weights, unequal_batch)

cfg = config("tiny")
tensors, batch = random_weights(cfg), unequal_batch(cfg)
one = Engine(cfg, device="cpu")
two = Engine(cfg, device="cpu:all", sharding="row-wise")
losses = []
for e in (one, two):
    e.load_state_dict(tensors)
    losses.append(np.array([float(e.train_step(batch)) for _ in range(STEPS)]))
table = two.state.params["item_emb.weight"]
padded = np.asarray(table)[CATALOG + 1:]
sd_two = two.state_dict()
ids_one, ids_two = one.recommend(batch["seq"], CATALOG)[1], two.recommend(batch["seq"], CATALOG)[1]
print(json.dumps({
    "n_devices": len(two.devices),
    "metrics": compare(losses[1], sd_two, losses[0], one.state_dict(), tensors, cfg, "adam"),
    "table_rows": [s.data.shape[0] for s in table.addressable_shards],
    "padded_rows": len(padded), "padded_abs_max": float(np.abs(padded).max()),
    "state_dict_rows": sd_two["item_emb.weight"].shape[0],
    "catalog_shape": list(two.score_catalog(batch["seq"]).shape),
    "same_topk": bool((ids_one == ids_two).all()), "max_id": int(ids_two.max()),
}))
"""


def test_row_wise_on_two_local_devices_matches_one():
    """One process, 2 fake CPU devices: the 1-process case of the same sharded Engine."""
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2",
           "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-c", ROW_WISE_SCRIPT], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    print(r["metrics"])
    assert r["n_devices"] == 2 and r["table_rows"] == [101, 101]
    assert within(r["metrics"], "adam"), r["metrics"]
    # the padded row stays zero through Adam, and is never scored nor recommended
    assert r["padded_rows"] == 1 and r["padded_abs_max"] == 0.0
    assert r["state_dict_rows"] == CATALOG + 1
    assert r["catalog_shape"] == [BATCH, CATALOG + 1]
    assert r["same_topk"] and r["max_id"] <= CATALOG


def test_support_reason_and_mesh():
    cfg = config("tiny")
    assert dist.support_reason("dense", cfg, "cpu") is None
    assert dist.support_reason("row-wise", cfg, "cuda") is None
    assert "NamedSharding" in dist.support_reason("table-wise", cfg, "cpu")
    assert "unknown sharding" in dist.support_reason("column-wise", cfg, "cpu")
    assert "no mps backend" in dist.support_reason("dense", cfg, "mps")
    with pytest.raises(ValueError, match="NamedSharding"):
        Engine(cfg, sharding="table-wise")
    devices = jax.devices()
    assert dist.make_mesh(devices, "dense").shape == {"data": len(devices), "model": 1}
    assert dist.make_mesh(devices, "row-wise").shape == {"data": 1, "model": len(devices)}
    assert dist.local_device(devices) == devices[0]


def test_initialize_without_world_is_a_no_op(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert dist.initialize() == (0, 1)
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert dist.initialize() == (0, 1)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.delenv("RANK", raising=False)
    with pytest.raises(RuntimeError, match="RANK"):
        dist.initialize()
    assert not jax.distributed.is_initialized()
