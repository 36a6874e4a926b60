"""Suite files -> Points: shipped suites, grid expansion, excludes, validation, --set, auto
selection, device resolution, ordering, and the Point API."""

from __future__ import annotations

import dataclasses
import itertools
import subprocess
import textwrap
from pathlib import Path

import pytest

from bench.machine.hardware import (
    Hardware,
    auto_suite_name,
    count_nvidia_gpus,
    detect_hardware,
    tpu_device_present,
)
from bench.point import Measure, Point
from bench.suites.suite import apply_overrides, available_suites, load_suite, order_points
from recmodels.config import PRESETS, params_total
from recmodels.errors import InputError

BASE_GRID = """
[[grid]]
framework = ["torch", "jax"]
workload = ["train", "infer"]
preset = ["tiny"]
batch_size = [32, 128]
precision = ["fp32"]
"""


def write(tmp_path: Path, text: str, name: str = "s.toml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def load_error(tmp_path: Path, text: str, **kw) -> str:
    path = write(tmp_path, text)
    with pytest.raises(InputError) as err:
        load_suite(path, **kw)
    msg = str(err.value)
    assert "\n" not in msg and "s.toml" in msg
    return msg


def pt(**kw) -> Point:
    base = dict(framework="torch", workload="train", preset="tiny", batch_size=128,
                precision="fp32", device="cpu")
    return Point(**{**base, **kw})


# --- the shipped suites ---------------------------------------------------------------------


def test_shipped_suites_load_with_expected_sizes():
    assert {"quick", "standard", "full", "ci"} <= set(available_suites())
    names = ("reference", "quick", "standard", "gpu-quick", "full", "ci", "scale")
    sizes = {name: len(load_suite(name).points) for name in names}
    assert sizes == {"reference": 72, "quick": 112, "standard": 352, "gpu-quick": 168,
                     "full": 1284, "ci": 8, "scale": 24}
    # quick, standard, gpu-quick: reference + extras


def test_gpu_suites_run_torch_compiled_beside_an_eager_baseline():
    for name in ("gpu-quick", "full"):
        s = load_suite(name)
        own = [p for p in s.points if p not in s.origin and not p.distributed]
        torch_pts = [p for p in own if p.framework == "torch"]
        compiled = {p for p in torch_pts if p.compile == "reduce-overhead"}
        eager = {dataclasses.replace(p, compile="eager") for p in compiled}
        assert compiled and eager <= set(torch_pts)  # every compiled point has its eager twin
        assert {p.compile for p in own if p.framework == "jax"} == {"eager"}  # shown as jit
        assert all(p.compile == "eager" for p in s.origin)  # the reference points stay eager
        assert all(p.compile == "eager" for p in s.points if p.distributed)
    full = {p.compile for p in load_suite("full").points if p.framework == "torch"}
    assert full == {"eager", "default", "reduce-overhead", "max-autotune"}
    for name in ("quick", "standard", "reference", "ci", "scale"):  # CPU default: eager
        assert {p.compile for p in load_suite(name).points} == {"eager"}


def test_quick_meets_its_minimum_sweep():
    s = load_suite("quick")
    assert {p.preset for p in s.points} >= {"tiny", "small", "base"}
    for preset in ("tiny", "small", "base"):
        combos = {(p.batch_size, p.precision, p.framework, p.workload)
                  for p in s.points if p.preset == preset and p.block == "sasrec"
                  and p.loss == "bce" and p.precision != "int8"}
        assert len({c[0] for c in combos}) >= 3
        assert len(combos) == 3 * 2 * 2 * 2  # every batch x precision x framework x workload
    assert s.measure.warmup_iters == 2 and s.measure.min_iters == 30
    assert {p.device for p in s.points} == {"cpu"}


def test_ci_suite_has_enough_samples_for_the_gate():
    s = load_suite("ci")
    assert s.measure.min_iters >= 30
    assert {(p.preset, p.catalog_size, p.seq_len, p.precision) for p in s.points} == {
        ("tiny", 5000, 50, "fp32")}
    assert {p.batch_size for p in s.points} == {32, 128}


def test_standard_infer_points_carry_one_loss():
    s = load_suite("standard")
    assert {p.loss for p in s.points if p.workload == "infer"} == {"bce"}
    assert {p.loss for p in s.points if p.workload == "train"} == {
        "bce", "sampled_softmax", "full_softmax"}
    assert {p.precision for p in s.points} == {"fp32", "tf32", "bf16", "fp16"}
    extras = [p for p in s.points if p not in s.origin]  # the GPU's own, not reference's
    assert len(extras) == 280 and len(s.origin) == 72
    assert min(p.batch_size for p in extras) == 64
    assert max(p.batch_size for p in extras) == 4096


# --- expansion ------------------------------------------------------------------------------


def test_grid_union_is_deduplicated(tmp_path):
    path = write(tmp_path, BASE_GRID + """
    [[grid]]
    framework = ["torch"]
    workload = ["train"]
    preset = ["tiny"]
    batch_size = [128, 512]
    precision = ["fp32"]
    """)
    s = load_suite(path)
    # 2x2x2 from the first grid plus the one new (torch, train, 512) point
    assert len(s.points) == 9
    assert len({p.id for p in s.points}) == 9
    assert s.name == "s" and s.path == path


def test_defaults_fill_from_preset_and_loss(tmp_path):
    s = load_suite(write(tmp_path, BASE_GRID))
    p = s.points[0]
    assert (p.block, p.loss, p.n_neg, p.optimizer, p.compile) == ("sasrec", "bce", 1, "adam",
                                                                   "eager")
    assert (p.catalog_size, p.seq_len) == (PRESETS["tiny"].catalog_size, PRESETS["tiny"].seq_len)
    assert pt(loss="sampled_softmax").n_neg == 128
    assert pt(loss="full_softmax", n_neg=7).n_neg == 1  # unused: normalised
    assert pt(framework="jax", compile=True).compile == "eager"  # jax always jits
    assert pt(framework="jax", compile="max-autotune").compile == "eager"
    assert pt(compile=True).compile == "default" and pt(compile=False).compile == "eager"
    assert pt(compile=True) == pt(compile="default") and pt(compile="default").compiled
    assert not pt().compiled


def test_exclude_scalar_and_list_values(tmp_path):
    s = load_suite(write(tmp_path, BASE_GRID + """
    [[exclude]]
    framework = "jax"
    batch_size = 128
    [[exclude]]
    workload = "infer"
    batch_size = [32, 128]
    framework = ["torch"]
    """))
    got = {(p.framework, p.workload, p.batch_size) for p in s.points}
    assert got == {("torch", "train", 32), ("torch", "train", 128),
                   ("jax", "train", 32), ("jax", "infer", 32)}


def test_exclude_everything_is_an_error(tmp_path):
    msg = load_error(tmp_path, BASE_GRID + '[[exclude]]\npreset = "tiny"\n')
    assert "every point is excluded" in msg


# --- validation -----------------------------------------------------------------------------


def test_unknown_grid_key_suggests(tmp_path):
    msg = load_error(tmp_path, BASE_GRID + 'precison = ["bf16"]\n')
    assert "grid[0].precison" in msg and "did you mean 'precision'" in msg


def test_unknown_table_and_section_key_suggest(tmp_path):
    msg = load_error(tmp_path, "[mesure]\nmin_time_s = 1\n" + BASE_GRID)
    assert "[mesure]" in msg and "did you mean 'measure'" in msg
    msg = load_error(tmp_path, "[measure]\nmin_itres = 3\n" + BASE_GRID)
    assert "measure.min_itres" in msg and "did you mean 'min_iters'" in msg


def test_wrong_types(tmp_path):
    msg = load_error(tmp_path, BASE_GRID.replace("[32, 128]", '"abc"'))
    assert "grid[0].batch_size: expected a list of positive integers, got 'abc'" in msg
    msg = load_error(tmp_path, BASE_GRID.replace("[32, 128]", "128"))
    assert "write batch_size = [128]" in msg
    msg = load_error(tmp_path, BASE_GRID.replace("[32, 128]", "[32, 1.5]"))
    assert "grid[0].batch_size[1]" in msg and "positive integer" in msg
    msg = load_error(tmp_path, BASE_GRID.replace("[32, 128]", "[32, 0]"))
    assert "grid[0].batch_size[1]" in msg
    msg = load_error(tmp_path, '[measure]\nmin_time_s = "fast"\n' + BASE_GRID)
    assert "measure.min_time_s" in msg and "'fast'" in msg
    msg = load_error(tmp_path, "[runner]\nskip_after_oom = 1\n" + BASE_GRID)
    assert "runner.skip_after_oom" in msg and "true or false" in msg
    msg = load_error(tmp_path, BASE_GRID + "compile = [1]\n")
    assert "grid[0].compile[0]" in msg
    msg = load_error(tmp_path, BASE_GRID + 'compile = ["eager", "reduce_overhead"]\n')
    assert "grid[0].compile[1]" in msg and "did you mean 'reduce-overhead'" in msg
    assert "eager, default, reduce-overhead, max-autotune" in msg
    msg = load_error(tmp_path, BASE_GRID + 'compile = "default"\n')
    assert "grid[0].compile" in msg and 'write compile = ["default"]' in msg
    msg = load_error(tmp_path, '[defaults]\ncompile = ["fast"]\n' + BASE_GRID)
    assert "defaults.compile[0]" in msg and "unknown compile mode 'fast'" in msg
    msg = load_error(tmp_path, '[defaults]\ncompiles = ["eager"]\n' + BASE_GRID)
    assert "defaults.compiles" in msg and "did you mean 'compile'" in msg


def test_compile_modes_and_the_booleans_of_older_files(tmp_path):
    modes = load_suite(write(tmp_path, BASE_GRID + 'compile = ["max-autotune", "eager"]\n'))
    assert {p.compile for p in modes.points if p.framework == "torch"} == {"max-autotune",
                                                                         "eager"}
    assert {p.compile for p in modes.points if p.framework == "jax"} == {"eager"}  # once
    assert len(modes.points) == 12  # 8 torch + 4 jax
    old = load_suite(write(tmp_path, BASE_GRID + "compile = [false, true]\n", "old.toml"))
    new = load_suite(write(tmp_path, BASE_GRID + 'compile = ["eager", "default"]\n', "new.toml"))
    assert old.points == new.points and [p.id for p in old.points] == [p.id for p in new.points]
    assert {p.compile for p in old.points} == {"eager", "default"}
    # an [[exclude]] in either spelling matches
    ex = load_suite(write(tmp_path, BASE_GRID + "compile = [false, true]\n"
                          "[[exclude]]\ncompile = true\n", "ex.toml"))
    assert {p.compile for p in ex.points} == {"eager"} and len(ex.points) == 8


def test_defaults_table_fills_only_the_grids_that_do_not_set_the_axis(tmp_path):
    s = load_suite(write(tmp_path, '[defaults]\ncompile = ["reduce-overhead", "eager"]\n'
                         + BASE_GRID + BASE_GRID.replace('["tiny"]', '["small"]')
                         + 'compile = ["default"]\n'))
    tiny = {p.compile for p in s.points if p.preset == "tiny" and p.framework == "torch"}
    small = {p.compile for p in s.points if p.preset == "small" and p.framework == "torch"}
    assert tiny == {"reduce-overhead", "eager"} and small == {"default"}
    s = load_suite(s.path, overrides=["compile=eager"])  # --set reaches every grid
    assert {p.compile for p in s.points} == {"eager"}


def test_unknown_values(tmp_path):
    msg = load_error(tmp_path, BASE_GRID.replace('["tiny"]', '["tiny", "smal"]'))
    assert "grid[0].preset[1]" in msg and "'smal'" in msg and "did you mean 'small'" in msg
    grid2 = BASE_GRID + BASE_GRID.replace('["fp32"]', '["fp32", "bf16", "fp8"]')
    msg = load_error(tmp_path, grid2)
    assert "grid[1].precision[2]" in msg and "fp8" in msg
    for axis, bad in (("block", "mamba"), ("loss", "hinge"), ("optimizer", "lion"),
                      ("device", "gpu")):
        msg = load_error(tmp_path, BASE_GRID + f'{axis} = ["{bad}"]\n')
        assert f"grid[0].{axis}[0]" in msg and bad in msg
    msg = load_error(tmp_path, BASE_GRID.replace('["torch", "jax"]', '["tensorflow"]'))
    assert "grid[0].framework[0]" in msg
    msg = load_error(tmp_path, BASE_GRID.replace('["train", "infer"]', '["serve"]'))
    assert "grid[0].workload[0]" in msg


def test_empty_list_and_missing_axis(tmp_path):
    msg = load_error(tmp_path, BASE_GRID.replace('["fp32"]', "[]"))
    assert "grid[0].precision: empty list" in msg
    msg = load_error(tmp_path, BASE_GRID.replace('precision = ["fp32"]\n', ""))
    assert "grid[0].precision: missing" in msg
    msg = load_error(tmp_path, '[suite]\nname = "x"\n')
    assert "no [[grid]]" in msg
    msg = load_error(tmp_path, "[grid]\nbatch_size = [1]\n")
    assert "[[grid]]" in msg


def test_exclude_validation(tmp_path):
    msg = load_error(tmp_path, BASE_GRID + "[[exclude]]\nbatch = 128\n")
    assert "exclude[0].batch" in msg and "did you mean 'batch_size'" in msg
    msg = load_error(tmp_path, BASE_GRID + '[[exclude]]\npreset = ["tiny", "hueg"]\n')
    assert "exclude[0].preset[1]" in msg
    msg = load_error(tmp_path, BASE_GRID + '[[exclude]]\ndevice = "auto"\n')
    assert "exclude[0].device" in msg and "resolved" in msg


def test_measure_cross_field_checks(tmp_path):
    msg = load_error(tmp_path, "[measure]\nmin_iters = 50\nmax_iters = 10\n" + BASE_GRID)
    assert "measure.max_iters" in msg and "min_iters" in msg
    with pytest.raises(InputError, match=r"measure\.warmup_iters"):
        Measure(warmup_iters=-1)
    assert Measure(min_time_s=1).min_time_s == 1.0 and isinstance(Measure().max_time_s, float)


def test_toml_syntax_error_names_file_and_line(tmp_path):
    msg = load_error(tmp_path, "[suite]\nname = quick\n" + BASE_GRID)
    assert "TOML syntax error" in msg and "line 2" in msg


def test_unknown_suite_name_lists_available():
    with pytest.raises(InputError) as err:
        load_suite("quik")
    msg = str(err.value)
    assert "did you mean 'quick'" in msg and "standard" in msg and "ci" in msg
    with pytest.raises(InputError, match="no such suite file"):
        load_suite("nowhere/x.toml")


# --- --set overrides ------------------------------------------------------------------------


def test_set_measure_runner_and_suite(tmp_path):
    path = write(tmp_path, BASE_GRID)
    s = load_suite(path, overrides=["measure.min_time_s=0.2", "runner.skip_after_oom=false",
                                    "measure.min_iters=3", "suite.name=mine, really"])
    assert s.measure.min_time_s == 0.2 and s.measure.min_iters == 3
    assert s.skip_after_oom is False
    assert s.name == "mine, really"


def test_set_grid_axis_shorthand_and_lists(tmp_path):
    path = write(tmp_path, BASE_GRID + BASE_GRID.replace('["tiny"]', '["small"]'))
    s = load_suite(path, overrides=["batch_size=64"])
    assert {p.batch_size for p in s.points} == {64}  # every grid
    assert {p.preset for p in s.points} == {"tiny", "small"}
    s = load_suite(path, overrides=["grid.batch_size=16,48", "precision=bf16",
                                    "compile=true,false", "device=cuda:1"])
    assert {p.batch_size for p in s.points} == {16, 48}
    assert {p.precision for p in s.points} == {"bf16"}
    assert {p.compile for p in s.points if p.framework == "torch"} == {"default", "eager"}
    assert {p.device for p in s.points} == {"cuda:1"}


def test_set_errors(tmp_path):
    path = write(tmp_path, BASE_GRID)
    with pytest.raises(InputError, match=r"--set foo=1: unknown key 'foo'; known: measure\."):
        load_suite(path, overrides=["foo=1"])
    with pytest.raises(InputError, match=r"did you mean 'measure\.min_time_s'"):
        load_suite(path, overrides=["measure.min_tim_s=1"])
    with pytest.raises(InputError, match="missing '='"):
        load_suite(path, overrides=["batch_size"])
    with pytest.raises(InputError) as err:  # a bad value names the file, field and the --set
        load_suite(path, overrides=["precision=fp8"])
    msg = str(err.value)
    assert "s.toml" in msg and "grid[0].precision[0]" in msg and "--set precision=fp8" in msg
    set_note = r"measure\.min_time_s: .*\(from --set measure\.min_time_s=a,b\)"
    with pytest.raises(InputError, match=set_note):
        load_suite(path, overrides=["measure.min_time_s=a,b"])


def test_apply_overrides_parses_values():
    raw = {"grid": [{}, {}]}
    origin = apply_overrides(raw, ["seq_len=50", "grid.loss=bce,full_softmax",
                                   "measure.max_time_s=2.5", "runner.skip_after_oom=TRUE"])
    assert raw["grid"] == [{"seq_len": [50], "loss": ["bce", "full_softmax"]}] * 2
    assert raw["measure"] == {"max_time_s": 2.5} and raw["runner"] == {"skip_after_oom": True}
    assert origin["grid.seq_len"] == "seq_len=50"


# --- hardware and auto selection ------------------------------------------------------------


def test_auto_suite_name():
    assert auto_suite_name(Hardware(n_gpus=0, tpu=False)) == "quick"
    assert auto_suite_name(Hardware(n_gpus=1)) == "standard"
    assert auto_suite_name(Hardware(n_gpus=8)) == "standard"
    assert auto_suite_name(Hardware(tpu=True)) == "standard"
    assert auto_suite_name({"n_gpus": 0, "tpu": False}) == "quick"
    assert load_suite("auto", hardware=Hardware()).name == "quick"
    assert load_suite("auto", hardware=Hardware(n_gpus=1)).name == "standard"
    assert load_suite("auto", hardware=Hardware(tpu=True)).name == "standard"


def test_detect_hardware_env_and_injection():
    def gpus(n):
        return lambda: n

    def no_tpu():
        return False

    assert detect_hardware({}, count_gpus=gpus(2), tpu_present=no_tpu) == Hardware(2, False)
    assert detect_hardware({"CUDA_VISIBLE_DEVICES": ""}, count_gpus=gpus(2),
                           tpu_present=no_tpu).n_gpus == 0
    assert detect_hardware({"CUDA_VISIBLE_DEVICES": "1"}, count_gpus=gpus(2),
                           tpu_present=no_tpu).n_gpus == 1
    hw = detect_hardware({"RECBENCH_GPUS": "0", "RECBENCH_TPU": "1"}, count_gpus=gpus(4),
                         tpu_present=no_tpu)
    assert hw == Hardware(0, True)
    with pytest.raises(InputError, match="RECBENCH_GPUS"):
        detect_hardware({"RECBENCH_GPUS": "many"}, count_gpus=gpus(0), tpu_present=no_tpu)


def test_count_nvidia_gpus_parses_nvidia_smi():
    def fake_run(cmd, **kw):
        assert cmd == ["nvidia-smi", "-L"]
        out = "GPU 0: NVIDIA H100 (UUID: GPU-a)\nGPU 1: NVIDIA H100 (UUID: GPU-b)\n"
        return subprocess.CompletedProcess(cmd, 0, stdout=out, stderr="")

    assert count_nvidia_gpus(fake_run) == 2


def test_tpu_heuristic(tmp_path):
    assert tpu_device_present(tmp_path) is False
    (tmp_path / "vfio").mkdir()
    (tmp_path / "vfio" / "vfio").touch()  # the control node alone is not a TPU
    assert tpu_device_present(tmp_path) is False
    (tmp_path / "vfio" / "0").touch()
    assert tpu_device_present(tmp_path) is True
    (tmp_path / "accel0").touch()
    assert tpu_device_present(tmp_path) is True


# --- devices and ordering -------------------------------------------------------------------


def test_device_auto_uses_resolver(tmp_path):
    path = write(tmp_path, BASE_GRID)
    assert {p.device for p in load_suite(path).points} == {"cpu"}
    s = load_suite(path, device_resolver=lambda fw: "cuda" if fw == "torch" else "tpu")
    assert {(p.framework, p.device) for p in s.points} == {("torch", "cuda"), ("jax", "tpu")}
    assert s.devices == {"cuda": 4, "tpu": 4}
    # an explicit device is kept, and resolving can merge it with an "auto" duplicate
    path = write(tmp_path, BASE_GRID + 'device = ["auto", "cuda"]\n')
    s = load_suite(path, device_resolver=lambda fw: "cuda")
    assert len(s.points) == 8
    with pytest.raises(InputError, match=r"grid\[0\]: point: device"):
        load_suite(write(tmp_path, BASE_GRID), device_resolver=lambda fw: "gpu0")


def test_groups_contiguous_and_small_first_within_a_line():
    s = load_suite("quick", device_resolver=lambda fw: "cpu")
    groups = s.groups()
    keys = [k for k, _ in groups]
    assert len(keys) == len(set(keys)) == 2  # each (framework, device) appears once
    assert [p for _, ps in groups for p in ps] == s.points
    for _, ps in groups:
        for _, group in itertools.groupby(ps, key=Point.line_key):
            line = list(group)
            sizes = [(p.params_total, p.batch_size) for p in line]
            assert sizes == sorted(sizes)
            first = line[0]
            if first.block == "sasrec" and first.loss == "bce" and first.precision != "int8":
                assert len(sizes) == 9  # 3 presets x 3 batch sizes


def test_order_points_sorts_by_params_then_batch():
    pts = [pt(preset="base", batch_size=8, catalog_size=1000, seq_len=50),
           pt(preset="tiny", batch_size=64, catalog_size=1000, seq_len=50),
           pt(framework="jax", preset="tiny", batch_size=8),
           pt(preset="tiny", batch_size=8, catalog_size=1000, seq_len=50)]
    ordered = order_points(pts)
    assert [(p.framework, p.preset, p.batch_size) for p in ordered] == [
        ("torch", "tiny", 8), ("torch", "tiny", 64), ("torch", "base", 8), ("jax", "tiny", 8)]


# --- Point ----------------------------------------------------------------------------------


def test_point_id_stable_and_distinct():
    a, b = pt(), pt()
    assert a.id == b.id and len(a.id) == 12 and int(a.id, 16) >= 0
    # sha1 of the sorted-key JSON of to_dict(): the same in every process and version
    assert a.id == "97a4e0472744"
    assert pt(batch_size=64).id != a.id
    assert pt(precision="bf16").id != a.id
    assert pt(device="cuda").id != a.id
    assert Point.from_dict(a.to_dict()) == a and Point.from_dict(a.to_dict()).id == a.id


def test_point_line_key_and_dominance():
    small = pt(preset="tiny", batch_size=64, catalog_size=1000, seq_len=50)
    big = pt(preset="small", batch_size=128, catalog_size=1000, seq_len=50)
    assert small.line_key() == big.line_key()
    assert dict(small.line_key()).keys() == set(small.to_dict()) - {"batch_size", "preset"}
    assert big.dominated_by(small) and not small.dominated_by(big)
    other_line = pt(preset="small", batch_size=128, catalog_size=1000, seq_len=50,
                    precision="bf16")
    assert not other_line.dominated_by(small)
    wider_but_smaller_batch = pt(preset="small", batch_size=32, catalog_size=1000, seq_len=50)
    assert not wider_but_smaller_batch.dominated_by(small)


def test_point_model_config():
    p = pt(preset="small", precision="bf16", catalog_size=5000, seq_len=32, block="hstu",
           loss="sampled_softmax")
    cfg = p.model_config()
    assert (cfg.catalog_size, cfg.seq_len, cfg.block, cfg.loss, cfg.n_neg) == (
        5000, 32, "hstu", "sampled_softmax", 128)
    assert cfg.compute_dtype == "bf16" and cfg.d_model == PRESETS["small"].d_model
    assert cfg.dropout == PRESETS["small"].dropout
    assert p.params_total == params_total(cfg)
    expect = {"fp32": "fp32", "tf32": "fp32", "int8": "fp32", "bf16": "bf16", "fp16": "fp16"}
    for precision, dtype in expect.items():
        assert pt(precision=precision).model_config().compute_dtype == dtype


def test_point_validation_and_label():
    with pytest.raises(InputError, match="point: device"):
        pt(device="auto")
    with pytest.raises(InputError, match="point: preset"):
        pt(preset="huge")
    with pytest.raises(InputError, match="missing field"):
        Point.from_dict({"framework": "torch"})
    assert pt(precision="bf16").label() == ("torch (eager) train tiny/sasrec C=23.7k T=50 B=128 "
                                            "bf16 cpu")
    label = pt(loss="sampled_softmax", compile="reduce-overhead", optimizer="sgd").label()
    assert label.startswith("torch (reduce-overhead) train") and label.endswith(
        "sampled_softmax:128 sgd")
    assert pt(framework="jax", compile=True).label().startswith("jax (jit) train tiny")
