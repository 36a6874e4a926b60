"""DistEngine (recmodels/torch/distributed.py) on 2 real processes (torchrun, gloo) against
the 1-process Engine on the whole batch.

One torchrun launch of 2 ranks runs every case (tests/recmodels/dist_torch_ranks.py), each
rank given its own rows of the global batch; rank files come back as npz. Beside it, a
1-process launch runs FUSED_CASES (FBGEMM's fused row-wise Adagrad, which no Engine has) as
their reference. TorchRec cases on tiny use its real d_model 50, which the table stores 52
wide (FBGEMM needs a multiple of 4): their equality with Engine, and the padding columns
staying exactly 0 on every rank, prove the padding exact.
The global batch gives rank 0 rows with 1-3 items of 8 and rank 1 rows with 6-8,
so a per-rank mean (instead of the global target count) would move the results by far more
than the tolerances (test_wrong_normalisation_is_caught: 8 vs 24 targets; losses off by 0.049
(SGD) and 0.023 (Adam), parameters by 0.015 and 0.006).

Tolerances (fp32; the only legitimate difference is summation order: per-rank partial sums,
then all-reduce, instead of one sum over the batch):
- losses: rtol 1e-5 (measured <= 1.2e-7 absolute on losses ~0.1-1.6).
- SGD parameters after 3 steps (lr 0.1): rtol 1e-5, atol 1e-6 (measured <= 1.2e-7; TorchRec
  tiny, padded: <= 1.5e-8).
- Adam parameters after 3 steps (lr 1e-3): rtol 1e-5, atol 2e-5 = lr/50 (measured <= 5.0e-6
  tiny, 7.4e-6 small). Adam divides each gradient by its own scale, so an element whose
  gradient is zero in exact arithmetic (the attention key bias: softmax ignores a shift),
  hence rounding noise, or tiny (~eps 1e-8) turns a rounding difference into a visible
  fraction of lr.
- Fused row-wise Adagrad table, 2 ranks against 1 process, the tolerance of the dense part's
  optimizer: tiny row-wise with dense Adam (lr 1e-3): atol 2e-5, measured 5.0e-6 (the dense
  Adam's attention biases; the table 7.5e-9); small FSDP2 table-wise with dense SGD (lr 0.1):
  atol 1e-6, measured 1.3e-7 (the table). Losses <= 1.2e-7.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from recmodels import weights
from recmodels.config import preset
from recmodels.errors import InputError
from recmodels.torch import distributed as D
from recmodels.torch.blocks import ONEDNN_ENV, onednn_linear_available
from recmodels.torch.engine import Engine
from recmodels.torch.losses import loss_fn
from tests.recmodels import dist_torch_ranks as ranks

pytestmark = pytest.mark.dist

SCRIPT = Path(ranks.__file__)
TOL = {"sgd": {"rtol": 1e-5, "atol": 1e-6}, "adam": {"rtol": 1e-5, "atol": 2e-5}}
LOSS_RTOL = 1e-5
SGD, ADAM = {"optimizer": "sgd", "lr": 0.1}, {"optimizer": "adam", "lr": 1e-3}


def case(name, preset_name, parallel, sharding, opt, cfg=None, **extra):
    return {"name": name, "preset": preset_name, "parallel": parallel, "sharding": sharding,
            "cfg": cfg or {}, **opt, **extra}


CASES = [
    case("tiny-ddp-adam", "tiny", "ddp", "dense", ADAM, seed_check=True),
    case("tiny-ddp-sgd", "tiny", "ddp", "dense", SGD),
    case("tiny-fsdp2-adam", "tiny", "fsdp2", "dense", ADAM, seed_check=True),
    case("tiny-fsdp2-sgd-lstm", "tiny", "fsdp2", "dense", SGD, {"block": "lstm"}),
    case("tiny-rw-sgd", "tiny", "ddp", "row-wise", SGD, seed_check=True),
    case("tiny-tw-sgd", "tiny", "ddp", "table-wise", SGD),
    case("tiny-rw-sgd-hstu-ss", "tiny", "ddp", "row-wise", SGD,
         {"block": "hstu", "loss": "sampled_softmax", "n_neg": 4, "positions": "left"}),
    case("tiny-rw-sgd-lstm", "tiny", "ddp", "row-wise", SGD, {"block": "lstm"}),
    case("tiny-fsdp2-rw-sgd", "tiny", "fsdp2", "row-wise", SGD),
    case("small-ddp-adam", "small", "ddp", "dense", ADAM),
    case("small-ddp-sgd", "small", "ddp", "dense", SGD),
    case("small-fsdp2-adam", "small", "fsdp2", "dense", ADAM),
    case("small-rw-sgd", "small", "ddp", "row-wise", SGD),
    case("small-tw-sgd", "small", "ddp", "table-wise", SGD),
]
ADAGRAD = {"table_optimizer": "rowwise_adagrad"}
FUSED_CASES = [  # against the same DistEngine on 1 process (no 1-process Engine has it)
    case("tiny-rw-adam-rwadagrad", "tiny", "ddp", "row-wise", ADAM, **ADAGRAD),
    case("small-fsdp2-tw-sgd-rwadagrad", "small", "fsdp2", "table-wise", SGD, **ADAGRAD),
]
BY_NAME = {c["name"]: c for c in CASES + FUSED_CASES}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def file_weights(cfg, seed=0) -> dict[str, np.ndarray]:
    """Engine's init with noise on every tensor (biases too), row 0 of the table zero."""
    rng = np.random.default_rng(seed)
    out = {k: v + rng.normal(0, 0.02, v.shape).astype(np.float32)
           for k, v in Engine(cfg, seed=seed).state_dict().items()}
    out["item_emb.weight"][0] = 0.0
    return out


def start(out: Path, cases: list[dict], nproc: int) -> tuple:
    """Write each case's weights file and start one torchrun launch of nproc ranks running
    every case; finish() waits for it."""
    for c in cases:
        cfg = ranks.case_config(c)
        weights.save(file_weights(cfg), cfg, out / f"{c['name']}.safetensors")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc),
           "--master-port", str(free_port()), str(SCRIPT), str(out), json.dumps(cases)]
    root = Path(__file__).resolve().parents[2]
    # torch's own F.linear on both sides: the test is about the distributed engines, and
    # oneDNN's Linear (blocks.linear, tested against F.linear in test_torch_speed) blocks a
    # product of M rows differently from one of M / 2, a summation order that Adam magnifies
    # at near-zero gradients (small's qkv bias: 4e-5 apart after 3 steps)
    env = {**os.environ, "PYTHONPATH": f"{root}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
           ONEDNN_ENV: "0"}
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env=env, cwd=root)
    return proc, out, cases, nproc


def finish(started: tuple) -> dict[str, list[dict]]:
    """{case name: [rank 0's arrays, rank 1's, ...]} of a started launch."""
    proc, out, cases, nproc = started
    try:
        _, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err[-5000:]
    return {c["name"]: [dict(np.load(out / f"{c['name']}.rank{r}.npz", allow_pickle=False))
                        for r in range(nproc)] for c in cases}


def launch(out: Path, cases: list[dict], nproc: int) -> dict[str, list[dict]]:
    return finish(start(out, cases, nproc))


@pytest.fixture(scope="module")
def launches(tmp_path_factory):
    """The 2-rank launch of every case and, beside it, the 1-process launch of FUSED_CASES."""
    two = start(tmp_path_factory.mktemp("dist2"), CASES + FUSED_CASES, 2)
    one = start(tmp_path_factory.mktemp("dist1"), FUSED_CASES, 1)
    try:
        return finish(two), finish(one)
    finally:
        for proc in (two[0], one[0]):
            if proc.poll() is None:
                proc.kill()


@pytest.fixture(scope="module")
def two_ranks(launches):
    return launches[0]


def one_process(c: dict, steps: int = ranks.STEPS):
    """The reference: plain Engine on the whole global batch -> (losses, parameters).
    The batch goes in as put() tensors, so it is computed as the ranks compute it: padded,
    not packed (packing is compared with the padded step in test_models)."""
    cfg = ranks.case_config(c)
    with pytest.MonkeyPatch.context() as mp:  # F.linear, as the ranks run (see start)
        mp.setenv(ONEDNN_ENV, "0")
        onednn_linear_available.cache_clear()
        try:
            return _one_process(c, cfg, steps)
        finally:
            onednn_linear_available.cache_clear()


def _one_process(c: dict, cfg, steps: int):
    engine = Engine(cfg, optimizer=c["optimizer"], lr=c["lr"])
    engine.load_state_dict(file_weights(cfg))
    batch = engine.put(ranks.global_batch(cfg))
    losses = [float(engine.train_step(batch)) for _ in range(steps)]
    return np.array(losses), engine.state_dict()


@pytest.mark.parametrize("name", [c["name"] for c in CASES])
def test_two_ranks_equal_one_process(two_ranks, name):
    c, (r0, r1) = BY_NAME[name], two_ranks[name]
    losses, params = one_process(c)
    np.testing.assert_allclose(r0["loss"], losses, rtol=LOSS_RTOL)
    for k, v in params.items():
        np.testing.assert_allclose(r0[f"param/{k}"], v, **TOL[c["optimizer"]], err_msg=k)
        np.testing.assert_array_equal(r1[f"param/{k}"], r0[f"param/{k}"])  # on every rank
    assert float(r0["init_diff"]) == 0.0 and bool(r0["keys_match"]) and bool(r0["all_finite"])
    if "seed_diff" in r0:  # same seed, no file: Engine's own init, on any world size
        assert float(r0["seed_diff"]) == 0.0
    assert float(r0["pad_max"]) == float(r1["pad_max"]) == 0.0  # tiny's padding stays zero
    lazy = c["sharding"] != "dense" and c["optimizer"] == "adam"
    assert ("lazy" in str(r0["table_update"])) == lazy


@pytest.mark.parametrize("name", [c["name"] for c in FUSED_CASES])
def test_fused_rowwise_adagrad_two_ranks_equal_one(launches, name):
    """FBGEMM's EXACT_ROWWISE_ADAGRAD for the table (it has CPU kernels), the dense part with
    torch's optimizer: TorchRec on 2 ranks against the same DistEngine on 1 process (torchrun
    --nproc-per-node 1), after STEPS steps on the unequal-padding batch. Padded against padded:
    the per-row state is the mean of g^2 over the stored width table_width(d) (52 for tiny's
    50), so neither equals row-wise Adagrad on an unpadded [C+1, d] table."""
    c, (r0, r1), (one,) = BY_NAME[name], launches[0][name], launches[1][name]
    np.testing.assert_allclose(r0["loss"], one["loss"], rtol=LOSS_RTOL)
    for k in one:
        if k.startswith("param/"):
            np.testing.assert_allclose(r0[k], one[k], **TOL[c["optimizer"]], err_msg=k)
            np.testing.assert_array_equal(r1[k], r0[k])
    for r in (r0, r1, one):
        assert float(r["init_diff"]) == 0.0 and bool(r["keys_match"]) and bool(r["all_finite"])
        assert float(r["pad_max"]) == 0.0 and "ROWWISE_ADAGRAD" in str(r["table_update"])
    assert not np.array_equal(one["param/item_emb.weight"], file_weights(
        ranks.case_config(c))["item_emb.weight"])  # the table did train


@pytest.mark.parametrize("name", ["tiny-fsdp2-adam", "small-rw-sgd", "tiny-tw-sgd",
                                  "tiny-fsdp2-rw-sgd", "small-ddp-sgd",
                                  "small-fsdp2-tw-sgd-rwadagrad"])
def test_each_rank_holds_its_share(two_ranks, name):
    """What each rank holds: FSDP2 splits the dense parameters and TorchRec the table over
    the ranks (their local elements add up to one copy); DDP keeps a copy on every rank."""
    c, (r0, r1) = BY_NAME[name], two_ranks[name]
    split_dense, split_table = c["parallel"] == "fsdp2", c["sharding"] != "dense"
    rows, d = r0["param/item_emb.weight"].shape
    dense = sum(v.size for k, v in r0.items() if k.startswith("param/")) - rows * d
    table = rows * (D.table_width(d) if split_table else d)  # TorchRec stores it padded
    expect = (dense if split_dense else 2 * dense) + \
        (table if split_table or split_dense else 2 * table)
    local = [int(r["local_elems"]) for r in (r0, r1)]
    assert sum(local) == expect
    if c["sharding"] == "table-wise" and not split_dense:  # one table: all on one rank
        assert sorted(local) == [dense, dense + table]
    elif split_dense or split_table:
        assert max(local) < dense + table


def test_no_comm_twin_only_for_ddp(two_ranks):
    for name, (r0, _) in two_ranks.items():
        dense_ddp = BY_NAME[name]["parallel"] == "ddp" and BY_NAME[name]["sharding"] == "dense"
        assert ("no_comm_loss" in r0) == dense_ddp, name
        if dense_ddp:
            assert np.isfinite(r0["no_comm_loss"])


@pytest.mark.parametrize("opt", ["sgd", "adam"])
def test_wrong_normalisation_is_caught(opt):
    """Per-rank means averaged over 2 ranks (DDP's default with a mean loss) move the loss
    and the parameters by more than the tolerances, on the test's batch."""
    c = BY_NAME[f"tiny-ddp-{opt}"]
    cfg = ranks.case_config(c)
    engine = Engine(cfg, optimizer=c["optimizer"], lr=c["lr"])
    engine.load_state_dict(file_weights(cfg))
    batch = engine.put(ranks.global_batch(cfg))
    halves = [{k: v[i * 4:(i + 1) * 4] for k, v in batch.items()} for i in range(2)]
    counts = [int((h["pos"] != 0).sum()) for h in halves]
    assert counts[1] >= 3 * counts[0]  # the unequal padding the test relies on
    wrong_losses = []
    for _ in range(ranks.STEPS):
        engine.opt.zero_grad()
        loss = sum(loss_fn(engine.model, h) for h in halves) / 2
        loss.backward()
        engine.opt.step()
        wrong_losses.append(loss.item())
    losses, params = one_process(c)
    assert np.abs(np.array(wrong_losses) - losses).max() > 100 * LOSS_RTOL * losses.max()
    worst = max(float(np.abs(engine.state_dict()[k] - v).max()) for k, v in params.items())
    assert worst > 10 * TOL[opt]["atol"]


def test_support_reason():
    tiny = preset("tiny")  # d_model 50: TorchRec stores it 52 wide
    assert D.support_reason("ddp", "dense", tiny, "cpu", "adam") is None
    assert D.support_reason("fsdp2", "dense", tiny, "cpu", "sgd") is None
    assert D.support_reason("fsdp2", "row-wise", tiny, "cpu", "sgd") is None
    assert D.support_reason("ddp", "table-wise", tiny.replace(block="lstm"), "cpu", "sgd") is None
    assert "Adam" in D.support_reason("ddp", "row-wise", tiny, "cpu", "adam")
    assert D.support_reason("ddp", "row-wise", tiny, "cpu", "adam", "rowwise_adagrad") is None
    assert "TorchRec" in D.support_reason("ddp", "dense", tiny, "cpu", "sgd", "rowwise_adagrad")
    assert "unknown table_optimizer" in D.support_reason("ddp", "row-wise", tiny, "cpu", "sgd",
                                                         "adagrad")
    assert "full_softmax" in D.support_reason("ddp", "row-wise", tiny.replace(
        loss="full_softmax"), "cpu", "sgd")
    assert "fp16" in D.support_reason("ddp", "row-wise", tiny.replace(compute_dtype="fp16"),
                                      "cpu", "sgd")
    assert "fp32" in D.support_reason("ddp", "row-wise", tiny.replace(param_dtype="bf16",
                                                                          compute_dtype="bf16"),
                                      "cpu", "sgd")
    assert "unknown parallel" in D.support_reason("tp", "dense", tiny, "cpu", "sgd")
    assert "unknown sharding" in D.support_reason("ddp", "column-wise", tiny, "cpu", "sgd")
    assert "unknown optimizer" in D.support_reason("ddp", "dense", tiny, "cpu", "lamb")
    assert "unknown device" in D.support_reason("ddp", "dense", tiny, "tpu", "sgd")
    if not torch.cuda.is_available():
        assert "CUDA" in D.support_reason("ddp", "dense", tiny, "cuda", "sgd")
    assert [D.table_width(d) for d in (48, 49, 50, 52, 256)] == [48, 52, 52, 52, 256]


def test_outside_torchrun(monkeypatch):
    for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(k, raising=False)
    if not torch.distributed.is_initialized():
        with pytest.raises(RuntimeError, match="torchrun"):
            D.init_process_group()
    monkeypatch.setenv("LOCAL_RANK", "3")
    assert D.local_device("cuda") == "cuda:3" and D.local_device("cpu") == "cpu"
    with pytest.raises(InputError):
        D.local_device("tpu")


@pytest.mark.gpu
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 CUDA devices (NCCL)")
def test_fused_adam_two_ranks_equal_one(tmp_path):
    """FBGEMM's fused (lazy) Adam has no CPU kernel: TorchRec row-wise on 2 GPUs against the
    same on 1 process (both lazy, so they must agree; neither equals dense Adam)."""
    c = case("gpu-rw-adam", "small", "ddp", "row-wise", ADAM, device="cuda")
    for sub in ("one", "two"):
        (tmp_path / sub).mkdir()
    one, two = launch(tmp_path / "one", [c], 1), launch(tmp_path / "two", [c], 2)
    np.testing.assert_allclose(two[c["name"]][0]["loss"], one[c["name"]][0]["loss"],
                               rtol=LOSS_RTOL)
    for k in one[c["name"]][0]:
        if k.startswith("param/"):
            np.testing.assert_allclose(two[c["name"]][0][k], one[c["name"]][0][k],
                                       **TOL["adam"], err_msg=k)
