"""`recbench train` refuses bad input up front, in one line and exit 2, before any training:
--save paths it would overwrite or cannot use, seeds and learning rates the run cannot take,
data that evaluation cannot score, combinations `recbench run` records unsupported, and runs
whose estimated peak memory is over the RAM available. Then the wording of one epoch."""

import os
import stat

import numpy as np
import pytest

import recmodels.checks as C
import recmodels.train as T
from bench.cli import main
from bench.cli.train import format_train_result
from recmodels import data as D
from recmodels import splits as S
from recmodels.config import preset
from recmodels.curve import Curve


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    path = tmp_path_factory.mktemp("checks") / "small.txt"
    D.save_user_item(D.synthetic(n_users=200, n_items=120, mean_len=10, seed=7), path)
    return path


class Trained(BaseException):
    """Raised where training starts: no handler of the CLI turns it into a refusal."""


@pytest.fixture
def no_training(monkeypatch):
    """Training (the engine's construction, which comes first) fails the test if reached."""
    def refuse(*a, **kw):
        raise Trained("trained before refusing its input")

    monkeypatch.setattr(T, "make_engine", refuse)


def _one_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


# --- --save ------------------------------------------------------------------------------


def test_save_never_overwrites_an_existing_file(small, tmp_path, capsys, no_training):
    results = tmp_path / "run.jsonl"
    results.write_text('{"kind": "run"}\n')
    os.chmod(results, 0o644)
    for target in (small, results):
        before = (target.read_bytes(), stat.S_IMODE(target.stat().st_mode))
        assert main(["train", "--dataset", str(small), "--epochs", "1",
                     "--save", str(target)]) == 2
        err = _one_line(capsys)
        assert "exists and would be overwritten" in err and "choose another path" in err
        assert (target.read_bytes(), stat.S_IMODE(target.stat().st_mode)) == before


@pytest.mark.parametrize("save, message", [
    ("", "--save needs a file path, got an empty string"),
    ("{dir}", "a directory; name a new file"),
    ("{dir}/missing/w.safetensors", "does not exist or is not writable"),
])
def test_save_paths_that_cannot_be_a_new_file_are_refused_up_front(save, message, small,
                                                                   tmp_path, capsys,
                                                                   no_training):
    assert main(["train", "--dataset", str(small), "--epochs", "1",
                 "--save", save.format(dir=tmp_path)]) == 2
    assert message in _one_line(capsys)
    assert os.listdir(tmp_path) == []  # nothing written


def test_saved_weights_are_a_new_file_with_the_umask_mode(small, tmp_path, capsys):
    out = tmp_path / "w.safetensors"
    mask = os.umask(0o022)
    try:
        assert main(["train", "--dataset", str(small), "--epochs", "1", "--save",
                     str(out)]) == 0
    finally:
        os.umask(mask)
    assert stat.S_IMODE(out.stat().st_mode) == 0o644
    assert os.listdir(tmp_path) == ["w.safetensors"]  # no partial file left beside it
    assert f"saved to {out}" in capsys.readouterr().err


def test_a_file_that_appears_during_training_is_kept(small, tmp_path, capsys, monkeypatch):
    out = tmp_path / "w.safetensors"
    real = T.train

    def meanwhile(*args, **kw):  # someone writes the file while the run trains
        result = real(*args, **kw)
        out.write_text("theirs")
        return result

    monkeypatch.setattr(T, "train", meanwhile)
    assert main(["train", "--dataset", str(small), "--epochs", "1", "--save", str(out)]) == 2
    captured = capsys.readouterr()
    assert out.read_text() == "theirs" and os.listdir(tmp_path) == ["w.safetensors"]
    assert "appeared while the run trained and is kept" in captured.err
    assert "HR@10" in captured.out  # the run's result is still shown


# --- seeds, learning rates, unsupported combinations ------------------------------------


@pytest.mark.parametrize("argv, message", [
    (["--seed", "-5"], "seed must be an integer from 0 to 4294967295, got -5"),
    (["--seed", str(2**32)], "seed must be an integer from 0 to 4294967295"),
    (["--lr", "inf"], "lr must be finite, got inf"),
    (["--lr", "nan"], "lr must be > 0, got nan"),
    (["--precision", "tf32", "--device", "cpu"], "tf32 is an NVIDIA tensor-core mode"),
])
def test_bad_options_are_refused_before_training(argv, message, small, capsys, no_training):
    assert main(["train", "--dataset", str(small), "--epochs", "1", *argv]) == 2
    assert message in _one_line(capsys)


def test_ttq_refuses_a_negative_seed_or_tf32_on_cpu_before_any_run(small, tmp_path, capsys,
                                                                   monkeypatch):
    from bench.scenarios import ttq as Q

    def no_runs(*a, **kw):
        raise AssertionError("ran before refusing its input")

    monkeypatch.setattr(Q, "ttq", no_runs)
    base = ["ttq", "--dataset", str(small), "--target", "hr@10=0.5", "--out", str(tmp_path)]
    for argv, message in ((["--seed", "-1"], "seed must be an integer from 0"),
                          (["--seed", str(2**32 - 2), "--runs", "3"], "past the largest"),
                          (["--precision", "tf32", "--device", "cpu"], "tensor-core mode")):
        assert main(base + argv) == 2
        assert message in _one_line(capsys)
    assert os.listdir(tmp_path) == []  # no results file, no folder


# --- what evaluation needs from the data ------------------------------------------------


def test_users_of_two_items_train_but_cannot_be_evaluated(tmp_path, capsys, no_training):
    path = tmp_path / "pairs.txt"
    path.write_text("".join(f"{u} {u % 50 + 1}\n{u} {u % 50 + 2}\n" for u in range(1, 200)))
    assert main(["train", "--dataset", str(path), "--epochs", "1"]) == 2
    err = _one_line(capsys)
    assert "pairs: no user has 3 or more interactions" in err and "longer histories" in err


@pytest.mark.parametrize("protocol", ["sampled", "full"])
def test_a_user_who_has_every_item_is_refused_before_training(protocol, tmp_path, capsys,
                                                             no_training):
    # user 1 has all 6 items (1 to 4 in training); the others 3 or 4 of them
    lines = [f"1 {i}" for i in (1, 2, 3, 4, 5, 6)]
    lines += [f"{u} {i}" for u in range(2, 40) for i in (1, 2, 3, 4)[: 3 + u % 2]]
    path = tmp_path / "every.txt"
    path.write_text("\n".join(lines) + "\n")
    assert main(["train", "--dataset", str(path), "--epochs", "1", "--eval", protocol]) == 2
    err = _one_line(capsys)
    assert "every: 1 user(s) (e.g. user row 0) have interacted with all 6 items" in err
    assert "drop those users" in err


def test_a_user_whose_training_items_cover_the_catalog_is_refused(tmp_path, capsys,
                                                                  no_training):
    lines = [f"1 {i}" for i in (1, 2, 3, 4, 1, 2)] + [f"{u} {i}" for u in range(2, 30)
                                                      for i in (1, 2, 3)]
    path = tmp_path / "cover.txt"
    path.write_text("\n".join(lines) + "\n")
    assert main(["train", "--dataset", str(path), "--epochs", "1"]) == 2
    assert "among their training items" in _one_line(capsys)


def test_an_evaluable_dataset_passes_the_checks(small):
    split = S.leave_one_out(D.load(str(small)))
    C.check_split(split, T.TrainOptions(dataset=str(small)))  # raises nothing


# --- the memory estimate ----------------------------------------------------------------


def test_a_run_over_the_ram_available_is_refused_with_its_estimate(small, capsys,
                                                                   monkeypatch, no_training):
    monkeypatch.setattr(C, "available_ram_bytes", lambda: 256 * 2**20)
    assert main(["train", "--dataset", str(small), "--epochs", "1", "--seq-len", "2000"]) == 2
    err = _one_line(capsys)
    assert "estimated peak memory" in err and "an analytic estimate" in err
    assert "exceeds the 256 MiB of RAM available" in err
    assert "lower --seq-len (evaluation scores 200 histories of seq_len a batch)" in err


def test_the_estimate_follows_what_the_run_holds(small):
    split = S.leave_one_out(D.load(str(small)))
    opts = T.TrainOptions(dataset=str(small))

    def parts(**kw):
        return C.memory_parts(preset("tiny", catalog_size=120, **kw), opts, split, "cpu")

    short, long = parts(seq_len=50), parts(seq_len=2000)
    # training batches are trimmed to the longest history (padding_invariant): seq_len beyond
    # it costs the training step nothing, while evaluation scores full-length histories
    assert long["train"] == short["train"]
    assert long["eval"] > 50 * short["eval"] and long["eval_rows"] == 200
    assert long["host"] >= 4 * split.n_users * 2001
    lstm = parts(seq_len=2000, block="lstm")  # not padding-invariant: the full width trains
    assert lstm["train"] > 10 * parts(seq_len=50, block="lstm")["train"]


def test_the_machine_ram_lets_ordinary_runs_through(small):
    split = S.leave_one_out(D.load(str(small)))
    cfg = preset("tiny", catalog_size=120)
    C.check_memory(cfg, T.TrainOptions(dataset=str(small)), split, "cpu")  # raises nothing
    assert C.available_ram_bytes() > 0


# --- wording ------------------------------------------------------------------------------


def test_one_epoch_and_one_evaluation_are_singular(small):
    r = T.train(T.TrainOptions(dataset=str(small), epochs=1), progress=False,
                log=lambda s: None)
    head = format_train_result(r).splitlines()[0]
    assert "(1 epoch, fp32, cpu)" in head and "1 epochs" not in head
    curve = Curve("ndcg@10", patience=1)
    t = {"model": {"hr@10": 0.1, "ndcg@10": 0.05}, "n_users": 1}
    for epoch, ndcg in ((1, 0.2), (2, 0.1)):
        valid = {"hr@10": 0.3, "ndcg@10": ndcg}
        curve.select_best(epoch, valid, t, engine=None)
        curve.add(epoch, valid, t, wall_s=1.0, train_s=1.0, eval_s=0.0)
    assert curve.stop() == ("early stop at epoch 2: 1 evaluation without a better valid "
                            "ndcg@10 than epoch 1's")
    assert np.isfinite(r["test"]["hr@10"])


# --- the load on the machine ----------------------------------------------------------------


@pytest.mark.parametrize("others, flagged", [(0.8, True), (0.1, False)])
def test_a_run_disturbed_by_other_processes_is_flagged_unstable(small, capsys, monkeypatch,
                                                                others, flagged):
    """The rule run and ttq use: others taking >= 0.5 cores flags the run unstable, in the
    text (with the conditions line) and in the JSON's flags; a quiet run has none."""
    import json

    from bench.machine import conditions

    monkeypatch.setattr(conditions.PointWindow, "close", lambda self: {
        "wall_s": 3.0, "load_avg_before": [2.0], "load_avg_after": [2.0], "steal": 0.0,
        "others_cpu_cores": others, "busiest": [{"name": "pytest", "cpu_cores": others}]})
    assert main(["train", "--dataset", str(small), "--epochs", "1"]) == 0
    text = capsys.readouterr().out
    assert f"other processes used {others:.2f} cores on average" in text  # conditions line
    assert ("unstable   other processes used 0.80 cores" in text) is flagged
    assert main(["train", "--dataset", str(small), "--epochs", "1", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["conditions"]["others_cpu_cores"] == others
    assert bool(result["flags"].get("unstable")) is flagged
