"""Every command line the tool prints as a hint pastes back into a shell (issue 12): each
argument is shell-quoted, so paths with spaces, quotes or non-ASCII survive ``shlex.split``."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest

from bench.cli import EXIT_INTERRUPTED, build_parser, main
from bench.results import ResultsWriter, RunHeader, load
from bench.suites.suite import load_suite
from recmodels.errors import InputError

SUITE = """[suite]
name = "one"
[[grid]]
framework = ["torch"]
workload = ["infer"]
preset = ["tiny"]
catalog_size = [500]
seq_len = [8]
batch_size = [2]
precision = ["fp32"]
"""
AWKWARD = "res int ü 'q' $HOME;"  # spaces, non-ASCII, quotes and shell syntax


def test_the_interrupted_run_hint_pastes(tmp_path: Path, capsys, monkeypatch) -> None:
    from bench.launch import runner

    suite = tmp_path / "my suite ü.toml"
    suite.write_text(SUITE)
    out = tmp_path / AWKWARD
    results = out / "machine" / "run 1.jsonl"
    monkeypatch.setattr(runner, "run_suite",
                        lambda *a, **kw: runner.RunOutcome(path=results, interrupted=True))
    sets = ["measure.min_time_s=0.05", "suite.description=a b 'c' ü"]
    argv = ["run", "--suite", str(suite), "--out", str(out), "--set", sets[0], "--set", sets[1],
            "--device", "cpu", "--no-roofs"]
    assert main(argv) == EXIT_INTERRUPTED
    (line,) = [s for s in capsys.readouterr().err.splitlines() if "continue with: " in s]
    pasted = shlex.split(line.split("continue with: ", 1)[1])
    assert pasted == ["recbench", "run", "--suite", str(suite), "--set", sets[0], "--set",
                      sets[1], "--device", "cpu", "--resume", str(results)]
    again = build_parser().parse_args(pasted[1:])  # and the CLI reads it as the same run
    assert (again.suite, again.set, again.device, again.resume) == (
        str(suite), sets, "cpu", str(results))


def test_the_other_suite_hint_pastes(tmp_path: Path) -> None:
    from bench.launch.runner import resumable_by

    header = RunHeader(run_id="r1", suite=AWKWARD, started_at="2026-01-01T00:00:00Z",
                       env={}, roofs={})
    with ResultsWriter.create(tmp_path, "m", "r1", header) as w:
        path = w.path
    (tmp_path / "one.toml").write_text(SUITE)
    with pytest.raises(InputError, match="resume it with") as err:
        resumable_by(load_suite(tmp_path / "one.toml"), {})(load(path))
    hint = str(err.value).split("resume it with ", 1)[1].split(" or start a new run")[0]
    assert shlex.split(hint) == ["--suite", AWKWARD]
