"""Evaluation during training: the curve, best-validation selection, early stop, a target stop,
the best weights kept for --save, and the paper's settings and figures for registry data."""

import json

import numpy as np
import pytest

import recmodels.train as T
from bench.cli import main
from bench.cli.train import format_train_result
from recmodels import data as D
from recmodels.train import TrainOptions, train


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    path = tmp_path_factory.mktemp("curve") / "small.txt"
    D.save_user_item(D.synthetic(n_users=200, n_items=80, mean_len=10, seed=5), path)
    return str(path)


def _opts(small, **kw):
    return TrainOptions(framework="torch", dataset=small, **kw)


def _quiet(opts, **kw):
    return train(opts, progress=False, log=lambda s: None, **kw)


def plant(monkeypatch, valid, test=None, on_valid=None):
    """Replace evaluate by planted figures: the k-th validation evaluation gives valid[k]
    ((hr, ndcg)), the k-th test evaluation test[k] (default: valid's figures / 2)."""
    calls = {"valid": 0, "test": 0}

    def fake(engine, split, which, *, protocol, batch_size, max_users, seed, pop=None):
        k = calls[which]
        calls[which] += 1
        if which == "valid" and on_valid:
            on_valid(engine)
        hr, ndcg = valid[k] if which == "valid" else (test[k] if test else
                                                      (valid[k][0] / 2, valid[k][1] / 2))
        model = {"hr@10": hr, "ndcg@10": ndcg}
        if which == "test":
            model |= {"auc": 0.5 + k / 100, "accuracy": 0.5, "precision": 0.1, "recall": 0.2,
                      "f1": 0.1}
        out = {"model": model, "n_users": 42}
        if pop is not None:
            out["popularity"] = {"hr@10": 0.01, "ndcg@10": 0.005}
        return out

    monkeypatch.setattr(T, "evaluate", fake)
    return calls


def test_the_curve_has_every_nth_epoch_and_the_last_with_growing_times(small):
    r = _quiet(_opts(small, epochs=5, eval_every=2))
    assert [c["epoch"] for c in r["curve"]] == [2, 4, 5]
    for a, b in zip(r["curve"], r["curve"][1:], strict=False):
        assert b["wall_s"] > a["wall_s"] and b["train_s"] > a["train_s"]
        assert b["eval_s"] > a["eval_s"]
    last = r["curve"][-1]
    assert r["train_s"] == last["train_s"] == pytest.approx(sum(h["seconds"] for h in
                                                                r["history"]))
    assert r["eval_s"] == last["eval_s"] > 0
    assert r["wall_s"] >= last["wall_s"] >= r["train_s"] + r["eval_s"]
    assert r["setup_s"] > 0 and r["total_s"] >= r["setup_s"] + r["wall_s"]
    for c in r["curve"]:
        assert set(c["valid"]) == set(c["test"]) == {"hr@10", "ndcg@10"}
    best = max(r["curve"], key=lambda c: c["valid"]["ndcg@10"])
    assert r["best_epoch"] == best["epoch"] and r["valid"] == best["valid"]
    assert {k: r["test"][k] for k in ("hr@10", "ndcg@10")} == best["test"]
    json.dumps(r, allow_nan=False)
    # the default evaluates once, after the last epoch, as before
    once = _quiet(_opts(small, epochs=2))
    assert [c["epoch"] for c in once["curve"]] == [2] and once["best_epoch"] == 2
    assert once["eval_every"] is None and once["select"] == "ndcg@10"


PLANTED = [(0.10, 0.05), (0.30, 0.25), (0.50, 0.20), (0.20, 0.24), (0.25, 0.22)]


@pytest.mark.parametrize("select, best", [("ndcg@10", 2), ("hr@10", 3)])
def test_best_validation_selection_picks_the_planted_epoch(small, monkeypatch, select, best):
    plant(monkeypatch, PLANTED)
    r = _quiet(_opts(small, epochs=5, eval_every=1, select=select))
    assert r["best_epoch"] == best and r["select"] == select
    assert [c["epoch"] for c in r["curve"]] == [1, 2, 3, 4, 5]
    assert r["valid"] == dict(zip(("hr@10", "ndcg@10"), PLANTED[best - 1], strict=True))
    hr, ndcg = PLANTED[best - 1]
    assert r["test"]["hr@10"] == hr / 2 and r["test"]["ndcg@10"] == ndcg / 2
    assert r["test"]["auc"] == 0.5 + (best - 1) / 100  # the whole test dict of that epoch
    assert r["popularity"] == {"test": {"hr@10": 0.01, "ndcg@10": 0.005}}
    assert r["early_stopped_epoch"] is None
    text = format_train_result(r)
    assert f"best       epoch {best} by valid {select}" in text
    starred = [line for line in text.splitlines() if line.strip().startswith("*")]
    assert len(starred) == 1 and starred[0].split()[1] == str(best)


def test_a_tie_keeps_the_earlier_evaluation(small, monkeypatch):
    plant(monkeypatch, [(0.1, 0.3), (0.2, 0.3)])
    assert _quiet(_opts(small, epochs=2, eval_every=1))["best_epoch"] == 1


def test_early_stop_after_patience_evaluations_without_improvement(small, monkeypatch):
    calls = plant(monkeypatch, PLANTED + [(0.9, 0.9)] * 5)
    r = _quiet(_opts(small, epochs=10, eval_every=1, patience=2))
    # ndcg peaks at epoch 2; epochs 3 and 4 do not beat it: stop after epoch 4
    assert r["early_stopped_epoch"] == 4 and r["epochs_run"] == 4 and r["epochs"] == 10
    assert len(r["history"]) == 4 and r["best_epoch"] == 2 and calls["valid"] == 4
    text = format_train_result(r)
    assert "early stop at epoch 4 (2 evaluations without a better validation ndcg@10)" in text
    assert "(4 of 10 epochs run, " in text.splitlines()[0]


def test_a_target_stops_training_the_first_time_validation_reaches_it(small, monkeypatch):
    plant(monkeypatch, PLANTED)
    r = _quiet(_opts(small, epochs=5, eval_every=1, target=("hr@10", 0.3)))
    assert r["target"] == {"metric": "hr@10", "value": 0.3, "reached_epoch": 2}
    assert r["epochs_run"] == 2 and [c["epoch"] for c in r["curve"]] == [1, 2]
    missed = _quiet(_opts(small, epochs=3, eval_every=1, target=("ndcg@10", 0.9)))
    assert missed["target"]["reached_epoch"] is None and missed["epochs_run"] == 3


def test_keep_best_puts_the_best_evaluations_weights_back(small, monkeypatch):
    seen = []
    plant(monkeypatch, PLANTED[:4], on_valid=lambda engine: seen.append(engine.state_dict()))
    r, engine = _quiet(_opts(small, epochs=4, eval_every=1), return_engine=True, keep_best=True)
    assert r["best_epoch"] == 2
    final = engine.state_dict()
    assert all(np.array_equal(v, seen[1][k]) for k, v in final.items())  # epoch 2's weights
    assert not all(np.array_equal(v, seen[3][k]) for k, v in final.items())


def test_cli_save_names_the_best_epoch(small, monkeypatch, tmp_path, capsys):
    plant(monkeypatch, PLANTED[:3])
    out = tmp_path / "w.safetensors"
    assert main(["train", "--dataset", small, "--epochs", "3", "--eval-every", "1",
                 "--select", "hr@10", "--save", str(out), "--json"]) == 0
    stdout, err = capsys.readouterr()
    r = json.loads(stdout)
    assert r["weights_epoch"] == r["best_epoch"] == 3 and out.is_file()
    assert "weights of epoch 3 (best valid hr@10)" in err


@pytest.mark.parametrize("argv, message", [
    (["--eval-every", "0"], "positive integer"),
    (["--patience", "-1"], "positive integer"),
    (["--select", "auc"], "invalid choice: 'auc'"),
])
def test_bad_curve_options_are_exit_2(argv, message, capsys):
    assert main(["train", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_registry_settings_are_defaults_under_the_users_overrides(small, monkeypatch):
    monkeypatch.setattr(T, "paper_figures", lambda name: ({"hr@10": 0.7410, "ndcg@10": 0.5360},
                                                          {"seq_len": 16, "dropout": 0.3}))
    logs = []
    r = train(_opts(small, epochs=1, overrides={"dropout": 0.1}), progress=False,
              log=logs.append)
    assert r["config"]["seq_len"] == 16 and r["config"]["dropout"] == 0.1
    assert ("paper settings for small: seq_len=16 dropout=0.3 (as defaults; your overrides "
            "win: dropout=0.1)") in logs
    assert r["paper_quality"] == {"hr@10": 0.7410, "ndcg@10": 0.5360}
    text = format_train_result(r)
    assert f"HR@10 {r['test']['hr@10']:.4f} (paper 0.7410)" in text
    assert f"NDCG@10 {r['test']['ndcg@10']:.4f} (paper 0.5360)" in text


def test_paper_figures_come_from_the_registry_entry():
    quality, settings = T.paper_figures("games")
    spec = D.REGISTRY["games"]
    assert quality == dict(getattr(spec, "paper_quality", {}) or {})
    assert settings == dict(getattr(spec, "settings", {}) or {})
    assert T.paper_figures("synthetic") == ({}, {})
