"""`[suite] include`: the reference suite inside every auto suite, union and de-duplication,
each point's own [measure], excludes and --set across includes, cycles and unknown names."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from bench.machine.hardware import Hardware, device_resolver_for
from bench.suites.suite import load_suite
from recmodels.errors import InputError

GRID = """
[[grid]]
framework = ["torch"]
workload = ["infer"]
preset = ["tiny"]
batch_size = {batches}
precision = ["fp32"]
"""


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / f"{name}.toml"
    path.write_text(textwrap.dedent(text))
    return path


@pytest.mark.parametrize("hardware", [Hardware(), Hardware(n_gpus=1), Hardware(n_gpus=8),
                                      Hardware(tpu=True)], ids=["cpu", "cuda", "cuda8", "tpu"])
def test_every_auto_suite_holds_every_reference_point(hardware):
    resolve = device_resolver_for(hardware)
    reference = load_suite("reference", device_resolver=resolve)
    auto = load_suite("auto", hardware=hardware, device_resolver=resolve)
    ref_ids = {p.id for p in reference.points}
    assert len(ref_ids) == 72 and ref_ids <= {p.id for p in auto.points}
    assert len(auto.points) > len(reference.points)  # plus the device's extras
    for p in reference.points:  # timed as reference.toml says, whatever the auto suite's own
        assert auto.measure_for(p) == reference.measure and auto.origin[p] == "reference"
    if hardware.n_gpus:  # on a GPU the reference points run on the GPU
        assert {p.device for p in reference.points} == {"cuda"}
    if hardware.tpu:
        assert {p.device for p in reference.points if p.framework == "jax"} == {"tpu"}


def test_gpu_quick_holds_the_reference_points_on_a_gpu():
    resolve = device_resolver_for(Hardware(n_gpus=1))
    ids = {p.id for p in load_suite("gpu-quick", device_resolver=resolve).points}
    assert {p.id for p in load_suite("reference", device_resolver=resolve).points} <= ids


def test_include_is_a_union_keeping_each_files_measure(tmp_path):
    write(tmp_path, "base", "[measure]\nmin_iters = 7\n" + GRID.format(batches=[1, 2]))
    top = write(tmp_path, "top", '[suite]\ninclude = ["base.toml"]\n[measure]\nmin_iters = 3\n'
                + GRID.format(batches=[2, 4, 8]) + '[[exclude]]\nbatch_size = [1, 4]\n')
    s = load_suite(top)
    # B=2 is in both: counted once, as included; the exclude reaches only this file's grids
    assert sorted(p.batch_size for p in s.points) == [1, 2, 8]
    assert {p.batch_size: s.measure_for(p).min_iters for p in s.points} == {1: 7, 2: 7, 8: 3}
    assert s.measure.min_iters == 3 and s.included() == {
        "base": {"n_points": 2, "measure": {**s.included()["base"]["measure"], "min_iters": 7}}}
    assert s.to_dict()["included"]["base"]["n_points"] == 2


def test_a_suite_may_be_only_includes_and_set_reaches_them(tmp_path):
    write(tmp_path, "base", GRID.format(batches=[1, 2]))
    top = write(tmp_path, "top", '[suite]\nname = "top"\ninclude = ["base.toml"]\n')
    s = load_suite(top, overrides=["batch_size=8", "device=cuda", "measure.min_iters=4",
                                   "suite.name=renamed"])
    assert [(p.batch_size, p.device) for p in s.points] == [(8, "cuda")]
    assert s.name == "renamed" and s.origin[s.points[0]] == "base"  # suite.* stays on top
    assert s.measure_for(s.points[0]).min_iters == 4


def test_nested_includes_keep_the_innermost_origin(tmp_path):
    write(tmp_path, "a", GRID.format(batches=[1]))
    write(tmp_path, "b", '[suite]\ninclude = ["a.toml"]\n' + GRID.format(batches=[2]))
    s = load_suite(write(tmp_path, "c", '[suite]\ninclude = ["b.toml"]\n'))
    assert {p.batch_size: s.origin[p] for p in s.points} == {1: "a", 2: "b"}


@pytest.mark.parametrize("files, message", [
    ({"top": '[suite]\ninclude = ["top.toml"]\n'}, "include cycle top.toml -> top.toml"),
    ({"top": '[suite]\ninclude = ["mid.toml"]\n', "mid": '[suite]\ninclude = ["top.toml"]\n'},
     "include cycle top.toml -> mid.toml -> top.toml"),
    ({"top": '[suite]\ninclude = ["refrence"]\n'}, "unknown suite 'refrence' (did you mean "
     "'reference'?)"),
    ({"top": '[suite]\ninclude = ["nope.toml"]\n'}, "nope.toml: no such suite file"),
    ({"top": '[suite]\ninclude = "reference"\n'}, "expected a list of suite names"),
    ({"top": '[suite]\ninclude = ["auto"]\n'}, "'auto' depends on the machine"),
])
def test_include_errors_are_one_line_naming_the_file(tmp_path, files, message):
    for name, text in files.items():
        write(tmp_path, name, text)
    with pytest.raises(InputError) as err:
        load_suite(tmp_path / "top.toml")
    text = str(err.value)
    assert message in text and "\n" not in text and ".toml: suite.include" in text


def test_an_error_inside_an_included_file_names_that_file(tmp_path):
    write(tmp_path, "bad", GRID.format(batches=[0]))
    with pytest.raises(InputError, match=r"bad\.toml: grid\[0\]\.batch_size\[0\]"):
        load_suite(write(tmp_path, "top", '[suite]\ninclude = ["bad.toml"]\n'))
