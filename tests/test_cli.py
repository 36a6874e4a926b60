"""The CLI contract of the small subcommands: --json is one object, exit codes, help."""

import json
import subprocess
import sys

import pytest

from bench.cli import main


def _json(capsys):
    return json.loads(capsys.readouterr().out)


def test_env_json_is_one_object(capsys):
    assert main(["env", "--no-roofs", "--json"]) == 0
    out = _json(capsys)
    assert out["roofs"] == {} and out["env"]["machine_id"] and out["env"]["ram_bytes"] > 0


def test_data_list_and_info(capsys):
    assert main(["data", "list", "--json"]) == 0
    listing = _json(capsys)
    assert [r["name"] for r in listing["registry"]] == ["games"]
    assert listing["registry"][0]["actions"] == 287_107
    assert main(["data", "info", "synthetic", "--json"]) == 0
    assert _json(capsys)["users"] == 6000


def test_train_refuses_an_unwritable_save_path_before_training(tmp_path, capsys):
    assert main(["train", "--save", str(tmp_path / "missing" / "w.safetensors")]) == 2
    err = capsys.readouterr().err
    assert "--save" in err and len(err.strip().splitlines()) == 1
    assert "epoch" not in err  # refused before any training


def test_data_fetch_without_a_name_is_exit_2(capsys):
    assert main(["data", "fetch"]) == 2
    assert "dataset name" in capsys.readouterr().err


def test_parity_json_reports_tolerances_and_passes(capsys):
    assert main(["parity", "--preset", "tiny", "--block", "hstu", "--loss", "bce",
                 "--json"]) == 0
    out = _json(capsys)
    assert out["ok"] is True and out["tolerances"]["scores_max_abs"] == 1e-4
    (r,) = out["results"]
    assert r["block"] == "hstu" and r["scores_max_abs"] < 1e-4


def test_parity_failure_exits_1(capsys, monkeypatch):
    from recmodels import torch_model

    orig = torch_model.GenRec.forward
    monkeypatch.setattr(torch_model.GenRec, "forward", lambda self, seq: orig(self, seq) * 1.01)
    assert main(["parity", "--preset", "tiny", "--block", "sasrec", "--loss", "bce"]) == 1
    assert "parity FAILED" in capsys.readouterr().out


@pytest.mark.parametrize("argv", [["--help"], ["run", "--help"], ["gate", "--help"]])
def test_help_exits_0(argv, capsys):
    assert main(argv) == 0
    assert "usage: recbench" in capsys.readouterr().out


def test_entry_point_module_runs():
    proc = subprocess.run([sys.executable, "-m", "bench", "data", "list"], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0 and "games" in proc.stdout
