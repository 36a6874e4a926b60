"""The CLI contract of the small subcommands: --json is one object, exit codes, help."""

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

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
    assert [r["name"] for r in listing["registry"]] == ["games", "ml-1m", "beauty", "steam"]
    assert listing["registry"][0]["actions"] == 287_107
    assert main(["data", "info", "synthetic", "--json"]) == 0
    assert _json(capsys)["users"] == 6000


def test_train_refuses_an_unwritable_save_path_before_training(tmp_path, capsys):
    assert main(["train", "--save", str(tmp_path / "missing" / "w.safetensors")]) == 2
    err = capsys.readouterr().err
    assert "--save" in err and len(err.strip().splitlines()) == 1
    assert "epoch" not in err  # refused before any training


@pytest.mark.parametrize("argv, message", [
    (["train", "--compile", "reduce_overhead"], "invalid choice: 'reduce_overhead'"),
    (["train", "--framework", "jax", "--compile", "default"], "JAX always jits"),
])
def test_train_compile_bad_values_are_one_line_and_exit_2(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1 and "epoch" not in err


def test_train_compile_mode_reaches_the_torch_engine_and_the_result(tmp_path, capsys,
                                                                    monkeypatch):
    import recmodels.train as T
    from recmodels import data as D

    path = tmp_path / "small.txt"
    D.save_user_item(D.synthetic(n_users=60, n_items=40, mean_len=8, seed=3), path)
    asked = []

    def make_engine(framework, cfg, **kw):  # the mode as asked; eager here, to stay fast
        asked.append(kw.get("compile"))
        return real(framework, cfg, **{**kw, "compile": "eager"})

    real = T.make_engine
    monkeypatch.setattr(T, "make_engine", make_engine)
    assert main(["train", "--dataset", str(path), "--epochs", "1", "--compile",
                 "reduce-overhead", "--json"]) == 0
    assert asked == ["reduce-overhead"] and _json(capsys)["compile"] == "reduce-overhead"
    assert main(["train", "--dataset", str(path), "--epochs", "1"]) == 0
    assert asked[-1] == "eager" and "torch (eager) tiny on" in capsys.readouterr().out
    assert T.TrainOptions(framework="jax").compile == "eager"  # JAX's default is valid


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
    monkeypatch.setattr(torch_model.GenRec, "forward",
                        lambda self, seq, packing=None: orig(self, seq, packing) * 1.01)
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


# --- --version ---------------------------------------------------------------------------


def test_version_prints_the_package_version(capsys, monkeypatch):
    import importlib.metadata

    from bench.cli import package_version

    assert main(["--version"]) == 0
    out = capsys.readouterr().out.strip()
    assert out == f"recbench {importlib.metadata.version('recbench')}"

    def missing(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "version", missing)
    assert package_version().startswith("unknown (not installed")


# --- run: devices, exit codes, the dry-run plan ------------------------------------------

ONE_POINT = """[suite]
name = "one"
[measure]
warmup_iters = 1
min_time_s = 0.05
min_iters = 3
max_iters = 10
max_time_s = 2.0
[[grid]]
framework = ["torch"]
workload = ["infer"]
preset = ["tiny"]
catalog_size = [500]
seq_len = [8]
batch_size = [2, 4]
precision = ["fp32"]
"""


@pytest.fixture
def one_point(tmp_path):
    path = tmp_path / "one.toml"
    path.write_text(ONE_POINT)
    return path


@pytest.mark.parametrize("gpus, argv, message", [
    ("0", ["--device", "cuda"], "--device cuda: not available on this machine (no NVIDIA GPU"),
    ("2", ["--device", "cuda:2"], "--device cuda:2: not available on this machine (2 GPU(s) "
     "here, cuda:0 to cuda:1)"),
    ("0", ["--device", "tpu"], "no TPU found"),
    ("0", ["--set", "device=cuda"], "suite 'one' has 2 points on cuda, which this machine "
     "lacks"),
])
def test_run_refuses_a_missing_device_before_any_point(one_point, tmp_path, capsys, monkeypatch,
                                                      gpus, argv, message):
    monkeypatch.setenv("RECBENCH_GPUS", gpus)
    monkeypatch.setenv("RECBENCH_TPU", "0")
    out = tmp_path / "out"
    assert main(["run", "--suite", str(one_point), "--out", str(out), "--no-roofs", *argv]) == 2
    captured = capsys.readouterr()
    assert message in captured.err and len(captured.err.strip().splitlines()) == 1
    assert captured.out == "" and not out.exists()  # nothing measured, nothing written


def test_a_shipped_suite_on_a_missing_device_is_refused(capsys, monkeypatch):
    monkeypatch.setenv("RECBENCH_GPUS", "0")
    assert main(["run", "--suite", "gpu-quick"]) == 2
    err = capsys.readouterr().err
    assert "suite 'gpu-quick' has 96 points on cuda" in err and "--device cpu" in err


def test_a_run_with_no_ok_point_exits_1(one_point, tmp_path, capsys, monkeypatch):
    from bench.launch import runner

    real = runner.analytic_cost
    # a 1 TiB estimate against a 1-byte device: infeasible beyond the estimate's stated error
    monkeypatch.setattr(runner, "analytic_cost", lambda p: {**real(p), "est_mem_bytes": 1 << 40})
    monkeypatch.setattr(runner, "device_capacity_bytes", lambda device, env: 1)
    rc = main(["run", "--suite", str(one_point), "--out", str(tmp_path), "--no-roofs",
               "--json"])
    captured = capsys.readouterr()
    assert rc == 1 and json.loads(captured.out)["counts"] == {"infeasible": 2}
    assert "no point ran ok (2 infeasible)" in captured.err


def test_dry_run_json_is_one_object_with_costs_and_honest_estimates(capsys, monkeypatch):
    monkeypatch.setenv("RECBENCH_GPUS", "0")
    monkeypatch.setenv("RECBENCH_TPU", "0")
    assert main(["run", "--suite", "quick", "--dry-run", "--json"]) == 0
    plan = _json(capsys)
    assert plan["suite"]["name"] == "quick" and plan["suite"]["n_points"] == 112
    assert plan["suite"]["included"]["reference"]["n_points"] == 72
    rows = plan["points"]
    assert len(rows) == 112 and len({r["id"] for r in rows}) == 112
    assert sum(r["suite"] == "reference" for r in rows) == 72
    r = rows[0]
    assert r["label"] and r["point"]["device"] == "cpu" and r["flops_per_step"] > 0
    assert r["est_mem_bytes"] > 0 and r["capacity_bytes"] > 0
    from bench.suites.suite import load_suite

    assert r["predicted_infeasible"] is False  # each point carries its own file's [measure]:
    assert r["measure"] == dataclasses.asdict(load_suite(r["suite"]).measure)
    # a CPU has no datasheet entry: no step time is made up
    assert all(x["est_step_ms"] is None and x["est_step_basis"] is None for x in rows)
    assert "lower bound" in plan["note"]


def test_dry_run_json_estimates_a_known_gpu_from_its_datasheet(capsys, monkeypatch):
    from bench.machine import envinfo

    monkeypatch.setenv("RECBENCH_GPUS", "1")  # plan for a GPU: "auto" resolves to cuda
    monkeypatch.setattr(envinfo, "probe_gpus", lambda: [
        {"index": 0, "name": "NVIDIA H200", "memory_bytes": 141 << 30, "driver": "x"}])
    assert main(["run", "--suite", "reference", "--dry-run", "--json",
                 "--set", "precision=bf16,int8", "--set", "framework=torch"]) == 0
    rows = _json(capsys)["points"]
    bf16 = [r for r in rows if r["point"]["precision"] == "bf16"]
    int8 = [r for r in rows if r["point"]["precision"] == "int8"]
    assert bf16 and int8 and all(r["point"]["device"] == "cuda" for r in rows)
    for r in bf16:
        assert r["est_step_ms"] == pytest.approx(1e3 * max(
            r["flops_per_step"] / 989.5e12, r["bytes_per_step"] / 4.8e12))
        assert r["est_step_basis"].startswith("lower bound:") and "H200" in r["est_step_basis"]
    assert all(r["est_step_ms"] is None for r in int8)  # no int8 peak in the table


def test_dry_run_text_lists_points_and_the_reference_share(capsys):
    assert main(["run", "--suite", "quick", "--dry-run", "--device", "cpu"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 115  # and the reference's two [[serve]] points
    assert lines[-1] == "112 points and 2 serve points in suite 'quick'; 72 from reference"


def test_run_reference_suite_end_to_end(tmp_path, capsys):
    """`recbench run --suite reference` works; --set shrinks it to one point here."""
    rc = main(["run", "--suite", "reference", "--out", str(tmp_path), "--no-roofs", "--json",
               "--device", "cpu", "--set", "framework=torch", "--set", "workload=infer",
               "--set", "preset=tiny", "--set", "batch_size=4", "--set", "precision=fp32",
               "--set", "measure.min_time_s=0.05", "--set", "measure.max_time_s=1",
               "--set", "runner.serve=false"])
    assert rc == 0
    out = _json(capsys)
    assert out["counts"] == {"ok": 1}
    header = json.loads(Path(out["results"]).read_text().splitlines()[0])
    assert header["suite"] == "reference" and header["included"] == {}


def test_a_warning_is_one_line_naming_the_command(tmp_path, capsys):
    """A truncated last line is skipped with a warning: one line, no source path or code."""
    path = tmp_path / "run.jsonl"
    path.write_text('{"kind": "run", "schema_version": 1, "run_id": "x", "suite": "s", '
                    '"started_at": "2026-01-01T00:00:00Z", "env": {}, "roofs": {}}\n{"kind": "po')
    assert main(["report", str(path), "--out", str(tmp_path / "rep")]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"recbench report: warning: {path}:2: skipped a truncated last line (12 "
                   "bytes); the run was probably interrupted"]


def test_a_non_positive_lr_is_one_line_naming_the_fix(capsys):
    assert main(["train", "--lr", "0"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "lr must be > 0, got 0.0" in err and "--lr 1e-3" in err


# --- bad input of run, serve and compare: one line naming the option, nothing written ---------


@pytest.mark.parametrize("argv", [["--threshold", "-5%"], ["--threshold=-5%"],
                                  ["--threshold", "-0.5%"]])
@pytest.mark.parametrize("command", [["compare", "base.jsonl", "new.jsonl"],
                                     ["gate", "--base", "HEAD"]])
def test_a_negative_threshold_says_what_a_threshold_is(capsys, command, argv):
    assert main([*command, *argv]) == 2
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert captured.out == "" and len(err.splitlines()) == 1 and "Traceback" not in err
    assert err.startswith(f"recbench {command[0]}: error: threshold '-")
    assert "is negative: a threshold is the smallest change of a metric that counts" in err
    assert "a percentage >= 0 such as --threshold 5%" in err


@pytest.mark.parametrize("suite", ["one", "reference"])  # reference: its [[serve]] tables too
def test_a_bad_run_device_is_named_as_device_not_set(one_point, capsys, suite):
    suite = str(one_point) if suite == "one" else suite
    assert main(["run", "--suite", suite, "--device", "foo", "--dry-run"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--set" not in err
    assert err.startswith("recbench run: error: argument --device: expected a device (cpu, ")
    assert err.endswith("got 'foo' (see recbench run --help)")
    assert main(["run", "--suite", suite, "--device", "cpu,cuda:x", "--dry-run"]) == 2
    assert "--device: expected a device" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [
    ["run", "--no-roofs"], ["serve", "--duration", "0.1"],
    ["ttq", "--dataset", "synthetic", "--target", "hr@10=0.5"],
    ["plot", "results"], ["report", "results"], ["gate", "--base", "HEAD"],
])
@pytest.mark.parametrize("out", ["", " "])
def test_an_empty_out_is_refused_before_anything_is_written(tmp_path, capsys, monkeypatch, argv,
                                                            out):
    monkeypatch.chdir(tmp_path)
    assert main([*argv, "--out", out]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert f"recbench {argv[0]}: error: argument --out: expected a directory, got an empty " \
           "string" in err
    assert list(tmp_path.iterdir()) == []  # nothing in the current directory


def test_dry_run_with_report_is_refused(capsys):
    assert main(["run", "--suite", "quick", "--dry-run", "--json", "--report"]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and len(captured.err.strip().splitlines()) == 1
    assert "--report" in captured.err and "--dry-run" in captured.err


@pytest.mark.parametrize("name", ["none.jsonl", "a-directory"])
def test_resuming_a_file_that_is_not_there_makes_no_lock(one_point, tmp_path, capsys, name):
    (tmp_path / "a-directory").mkdir()
    out = tmp_path / "out"
    before = sorted(tmp_path.rglob("*"))
    assert main(["run", "--suite", str(one_point), "--out", str(out), "--no-roofs",
                 "--resume", str(tmp_path / name)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith(f"recbench run: error: --resume "
                                                         f"{tmp_path / name}: ")
    assert sorted(tmp_path.rglob("*")) == before  # no none.jsonl.lock, no out/


@pytest.fixture
def infeasible(monkeypatch):
    """Every point infeasible (the runner decides; no worker starts): fast whole runs."""
    from bench.launch import runner

    real = runner.analytic_cost
    monkeypatch.setattr(runner, "analytic_cost", lambda p: {**real(p), "est_mem_bytes": 1 << 40})
    monkeypatch.setattr(runner, "device_capacity_bytes", lambda device, env: 1)


def test_resume_without_suite_takes_the_suite_file_its_header_names(tmp_path, capsys,
                                                                     infeasible):
    suite = tmp_path / "mini.toml"
    suite.write_text(ONE_POINT.replace('name = "one"', 'name = "mini"')
                     .replace("batch_size = [2, 4]", "batch_size = [2]"))
    out = tmp_path / "out"
    assert main(["run", "--suite", str(suite), "--out", str(out), "--no-roofs", "--json"]) == 1
    path = Path(_json(capsys)["results"])
    suite.write_text(suite.read_text().replace("batch_size = [2]", "batch_size = [2, 4]"))

    assert main(["run", "--out", str(out), "--no-roofs", "--json", "--resume", str(path)]) == 1
    captured = capsys.readouterr()
    assert json.loads(captured.out)["results"] == str(path)
    assert (f"recbench run: resuming suite 'mini' from {suite.resolve()} (named in the "
            "results file)") in captured.err
    assert "holds a run of suite" not in captured.err
    from bench import results as R

    assert [r.point["batch_size"] for r in R.load(path).records] == [2, 4]

    suite.rename(tmp_path / "moved.toml")  # the header's suite file is gone: --suite, please
    before = path.read_bytes()
    assert main(["run", "--out", str(out), "--no-roofs", "--resume", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "pass --suite NAME|PATH to resume it" in err
    assert f"holds a run of suite 'mini', but its file {suite.resolve()} is not there" in err
    assert path.read_bytes() == before
