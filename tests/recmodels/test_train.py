"""Training learns, both frameworks agree on quality, and the train CLI keeps its contract."""

import json
import subprocess
import sys

import numpy as np
import pytest

from bench.cli import main
from recmodels import data as D
from recmodels import splits as S
from recmodels import weights
from recmodels.train import TrainOptions, train


@pytest.fixture(scope="module")
def learned():
    """The acceptance run: default synthetic data, default epochs, both frameworks."""
    return {fw: train(TrainOptions(framework=fw, seed=0), progress=False, log=lambda s: None)
            for fw in ("torch", "jax")}


@pytest.mark.slow
def test_both_frameworks_learn_what_popularity_cannot(learned):
    for fw, r in learned.items():
        assert r["test"]["hr@10"] - r["popularity"]["test"]["hr@10"] >= 0.15, (fw, r["test"])
        assert r["valid"]["hr@10"] > r["popularity"]["test"]["hr@10"] + 0.15
        assert 0.5 < r["test"]["auc"] <= 1.0
        losses = [h["loss"] for h in r["history"]]
        assert losses[-1] < losses[0]
    gap = abs(learned["torch"]["test"]["hr@10"] - learned["jax"]["test"]["hr@10"])
    assert gap <= 0.03, gap
    # the popularity baseline is scored on the same users and candidates for both
    assert learned["torch"]["popularity"] == learned["jax"]["popularity"]


def test_result_object_has_the_documented_fields(learned):
    r = learned["torch"]
    for key in ("framework", "preset", "dataset", "epochs", "seconds_per_epoch",
                "sequences_per_s"):
        assert key in r
    assert set(r["valid"]) == {"hr@10", "ndcg@10"}
    assert set(r["test"]) == {"hr@10", "ndcg@10", "auc", "accuracy", "precision", "recall", "f1"}
    assert set(r["popularity"]["test"]) == {"hr@10", "ndcg@10"}
    assert r["sequences_per_s"] > 0 and r["eval_users"] == 6000


def _small_dataset(tmp_path):
    data = D.synthetic(n_users=300, n_items=120, mean_len=12, seed=3)
    path = tmp_path / "small.txt"
    D.save_user_item(data, path)
    return path


def test_cli_json_is_one_object_and_weights_load(tmp_path):
    path = _small_dataset(tmp_path)
    out = tmp_path / "w.safetensors"
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "train", "--framework", "jax", "--dataset", str(path),
         "--epochs", "2", "--eval", "full", "--json", "--save", str(out)],
        capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    r = json.loads(proc.stdout)  # stdout is exactly one JSON object
    assert r["framework"] == "jax" and r["epochs"] == 2 and r["eval_protocol"] == "full"
    assert 0 <= r["test"]["hr@10"] <= 1 and "auc" not in r["test"]  # full protocol: ranks only
    assert "epoch 2/2" in proc.stderr  # progress goes to stderr
    tensors, cfg = weights.load(out)
    assert cfg.catalog_size == 120 and tensors["item_emb.weight"].shape == (121, 50)


def test_sgd_and_bf16_run(tmp_path, capsys):
    path = _small_dataset(tmp_path)
    assert main(["train", "--dataset", str(path), "--epochs", "1", "--optimizer", "sgd",
                 "--precision", "bf16", "--block", "hstu", "--loss", "sampled_softmax",
                 "--n-neg", "8", "--seq-len", "16"]) == 0
    out = capsys.readouterr().out
    assert "HR@10" in out and "popularity" in out


@pytest.mark.parametrize("argv, message", [
    (["train", "--preset", "huge"], "invalid choice: 'huge'"),
    (["train", "--precision", "fp8"], "invalid choice: 'fp8'"),
    (["train", "--set", "n_head=3"], "not divisible by n_head"),
    (["train", "--set", "d_model=abc"], "takes an integer"),
    (["train", "--dataset", "nosuch"], "nosuch"),
    (["train", "--device", "cuda"], "not available"),
    (["train", "--epochs", "0"], "positive integer"),
    (["train", "--device", "cpu:all"], "training runs on one device"),
    (["train", "--device", "cuda:x"], "training runs on one device"),
    (["train", "--set", "param_dtype=fp16"], "param_dtype fp16 is not supported"),
])
def test_bad_input_is_one_line_and_exit_2(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1 and "Traceback" not in err


def test_histories_too_short_to_train_on_are_exit_2(tmp_path, capsys):
    short = tmp_path / "short.txt"
    short.write_text("1 1\n1 2\n1 3\n2 2\n2 3\n2 4\n")  # 3 items a user: all held out
    assert main(["train", "--dataset", str(short), "--epochs", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert "no training pair" in err and len(err.splitlines()) == 1


def test_malformed_dataset_line_is_exit_2(tmp_path, capsys):
    bad = tmp_path / "bad.txt"
    bad.write_text("1 2\n1 3\n2 x\n")
    assert main(["train", "--dataset", str(bad), "--epochs", "1"]) == 2
    err = capsys.readouterr().err
    assert "bad.txt:3" in err and len(err.strip().splitlines()) == 1


def test_popularity_baseline_uses_training_counts():
    split = S.leave_one_out(D.synthetic(n_users=200, n_items=50, mean_len=10, seed=1))
    pop = S.popularity(split)
    assert pop[0] == 0 and pop.sum() == len(split.train_items)
    assert np.argmax(pop) >= 1


# --- divergence: a result with a status, not a traceback ---------------------------------


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    return str(_small_dataset(tmp_path_factory.mktemp("small")))


def _quiet(fw, dataset, **kw):
    return TrainOptions(framework=fw, dataset=dataset, **kw)


def test_divergence_rule_tolerates_skipped_steps_but_not_runs_of_them():
    from recmodels.train import MAX_NONFINITE_STREAK as N
    from recmodels.train import divergence

    nan, inf = float("nan"), float("inf")
    assert divergence([1.0, nan, 0.9, nan], 0, params_finite=True) == (None, 1)
    assert divergence([1.0] + [nan] * N, 0, params_finite=True) == ("loss became nan", N)
    assert divergence([inf] * N, 0, params_finite=True)[0] == "loss became inf"
    # a run of non-finite losses carries over from the previous epoch
    assert divergence([nan] * (N - 1), 0, params_finite=True) == (None, N - 1)
    assert divergence([nan], N - 1, params_finite=True)[0] == "loss became nan"
    # non-finite parameters are divergence at once; the loss that made them is named
    assert divergence([1.0, 0.9], 0, params_finite=False)[0] == "parameters became non-finite"
    assert divergence([1.0, nan], 0, params_finite=False)[0] == "loss became nan"


@pytest.mark.parametrize("fw", ["torch", "jax"])
def test_a_diverged_run_stops_and_is_a_result_with_null_metrics(fw, small):
    logs = []
    r = train(_quiet(fw, small, epochs=3, lr=1e8), progress=False, log=logs.append)
    assert r["status"] == "diverged" and r["reason"] == "loss became nan at epoch 1"
    assert r["diverged_epoch"] == 1 and len(r["history"]) == 1  # stopped at that epoch
    assert r["history"][0]["loss"] is None
    assert r["valid"] is None and r["test"] is None and r["popularity"] is None
    assert "loss became nan at epoch 1: diverged" in logs
    json.dumps(r, allow_nan=False)  # strict JSON: no NaN anywhere in the object


@pytest.mark.parametrize("fw", ["torch", "jax"])
def test_fp16_steps_that_loss_scaling_skips_are_not_divergence(fw, small, monkeypatch):
    import recmodels.train as T

    real = T.make_engine

    def overflowing(*args, **kw):  # a loss scale so large that every fp16 backward overflows
        engine = real(*args, **kw)
        if fw == "torch":
            import torch

            engine.scaler = torch.amp.GradScaler("cpu", init_scale=2.0**40)
        else:
            import jax
            import jax.numpy as jnp

            scale = jax.device_put(jnp.float32(2.0**40), engine._replicated)
            engine.state = engine.state._replace(loss_scale=scale)
        return engine

    monkeypatch.setattr(T, "make_engine", overflowing)
    r, engine = train(_quiet(fw, small, epochs=2, precision="fp16"), progress=False,
                      log=lambda s: None, return_engine=True)
    fresh = real(fw, engine.cfg, device="cpu").state_dict()
    assert all(np.array_equal(v, fresh[k]) for k, v in engine.state_dict().items())  # skipped
    assert r["status"] == "ok" and r["reason"] is None and r["diverged_epoch"] is None
    assert 0 <= r["test"]["hr@10"] <= 1


def test_nan_scores_in_evaluation_are_divergence_too(small, monkeypatch):
    import recmodels.train as T

    real = T.make_engine

    def nan_scores(*args, **kw):
        engine = real(*args, **kw)
        engine.score_candidates = lambda seq, cand: np.full(cand.shape, np.nan, np.float32)
        return engine

    monkeypatch.setattr(T, "make_engine", nan_scores)
    r = train(_quiet("torch", small, epochs=1), progress=False, log=lambda s: None)
    assert r["status"] == "diverged" and r["diverged_epoch"] == 1 and r["test"] is None
    assert r["reason"] == "scores became nan in valid evaluation after epoch 1"


def test_cli_diverged_run_prints_its_object_and_exits_1(small, capsys):
    assert main(["train", "--dataset", small, "--epochs", "2", "--lr", "1e8", "--json"]) == 1
    out, err = capsys.readouterr()
    r = json.loads(out)  # still exactly one JSON object on stdout
    assert r["status"] == "diverged" and r["diverged_epoch"] == 1 and r["test"] is None
    assert "loss became nan at epoch 1: diverged" in err and "Traceback" not in err
    assert main(["train", "--framework", "jax", "--dataset", small, "--epochs", "2",
                 "--lr", "1e8"]) == 1
    out, err = capsys.readouterr()
    assert "diverged" in out and "HR@10" not in out and "Traceback" not in err


# --- speed: steady state apart from the first (compiling) epoch ---------------------------


@pytest.mark.parametrize("fw", ["torch", "jax"])
def test_speed_is_steady_state_only_and_null_from_one_epoch(fw, small):
    from bench.cli.train import format_train_result

    one = train(_quiet(fw, small, epochs=1), progress=False, log=lambda s: None)
    assert one["seconds_per_epoch"] is None and one["sequences_per_s"] is None
    assert one["steady_epochs"] == 0 and "one epoch" in one["speed_note"]
    assert one["first_epoch_s"] == one["history"][0]["seconds"] > 0
    speed = next(s for s in format_train_result(one).splitlines() if "speed" in s)
    assert "sequences/s" not in speed and "first epoch" in speed and "compil" in speed

    three = train(_quiet(fw, small, epochs=3), progress=False, log=lambda s: None)
    secs = [h["seconds"] for h in three["history"]]
    assert three["first_epoch_s"] == secs[0] and three["steady_epochs"] == 2
    assert three["seconds_per_epoch"] == pytest.approx(np.mean(secs[1:]))
    assert three["sequences_per_s"] == pytest.approx(
        three["sequences_per_epoch"] / three["seconds_per_epoch"])
    speed = next(s for s in format_train_result(three).splitlines() if "speed" in s)
    assert "sequences/s" in speed and "first epoch" in speed
