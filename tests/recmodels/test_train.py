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
    (["train", "--set", "d_model=abc"], "takes a int"),
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
