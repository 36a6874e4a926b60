"""[[serve]] tables in suite files: parsed into ServeSpecs, included with their suite, errors
one line naming the file and the field; `recbench run` records them as serve lines."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from bench.cli import main
from bench.results import load
from bench.scenarios import serve as S
from bench.scenarios.serve import ServeSpec
from bench.suites import serve_grid
from bench.suites.suite import load_suite
from recmodels.errors import InputError

SERVE = """
[suite]
name = "serve-only"
[[serve]]
framework = ["torch", "jax"]
workload = ["retrieve"]
preset = ["tiny"]
catalog_size = [2000]
seq_len = [20]
scenario = ["offline"]
max_batch = [4, 8]
device = ["auto"]
duration_s = 0.3
min_queries = 100
"""


def _write(tmp_path: Path, text: str, name: str = "s.toml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def test_a_serve_grid_is_a_product_of_its_axes(tmp_path: Path) -> None:
    suite = load_suite(str(_write(tmp_path, SERVE)))
    assert suite.points == []
    assert [(s["framework"], s["max_batch"]) for s in suite.serve] == [
        ("torch", 4), ("torch", 8), ("jax", 4), ("jax", 8)]
    assert {s["device"] for s in suite.serve} == {"cpu"}  # auto resolved
    assert {(s["duration_s"], s["min_queries"]) for s in suite.serve} == {(0.3, 100)}
    ServeSpec(**suite.serve[0]).validate()  # what the runner builds from a spec


def test_serve_specs_come_with_an_included_suite(tmp_path: Path) -> None:
    _write(tmp_path, SERVE, "inc.toml")
    top = _write(tmp_path, """
        [suite]
        include = ["inc.toml"]
        [[grid]]
        framework = ["torch"]
        workload = ["infer"]
        preset = ["tiny"]
        batch_size = [2]
        precision = ["fp32"]
        """)
    suite = load_suite(str(top))
    assert len(suite.points) == 1 and len(suite.serve) == 4


@pytest.mark.parametrize(("table", "message"), [
    ('scenario = ["multistream"]', "serve[0].scenario[0]: unknown scenario 'multistream'"),
    ("percentile = [98]", "serve[0].percentile[0]: unknown percentile 98"),
    ('device = ["gpu"]', "serve[0].device[0]: expected a device"),
    ("max_batch = [0]", "serve[0].max_batch[0]: expected a positive number"),
    ("max_batch = 8", "serve[0].max_batch: expected a non-empty list"),
    ("duration_s = [1, 2]", "serve[0].duration_s: a run setting is one value"),
    ('max_bach = [8]', "did you mean 'max_batch'"),
])
def test_bad_serve_tables_are_one_line(tmp_path: Path, table: str, message: str) -> None:
    path = _write(tmp_path, f'[[serve]]\nframework = ["torch"]\n{table}\n')
    with pytest.raises(InputError) as e:
        load_suite(str(path))
    assert message in str(e.value) and "s.toml: " in str(e.value) and "\n" not in str(e.value)


@pytest.mark.slow
def test_run_records_serve_specs_in_the_results_file(tmp_path: Path, capsys) -> None:
    pytest.importorskip("mlperf_loadgen")
    path = _write(tmp_path, SERVE.replace('"torch", "jax"', '"torch"').replace("[4, 8]", "[4]"))
    rc = main(["run", "--suite", str(path), "--out", str(tmp_path / "out"), "--no-roofs",
               "--json"])
    cap = capsys.readouterr()
    out = json.loads(cap.out)
    assert rc == 0 and out["counts"] == {"ok": 1}
    assert "serve ok: offline retrieve torch tiny on cpu: " in cap.err  # the summary's line
    loaded = load(out["results"])
    [rec] = loaded.serve
    assert loaded.records == [] and rec.point["scenario"] == "offline"
    assert rec.metrics["samples_per_s"] > 0 and rec.metrics["answered"]["missing"] == 0
    assert Path(rec.metrics["loadgen_log_dir"]).is_relative_to(Path(out["results"]).parent)


def test_set_reaches_serve_tables_and_runner_serve_false_drops_them(tmp_path: Path) -> None:
    path = _write(tmp_path, SERVE)
    suite = load_suite(str(path), overrides=["framework=jax", "device=cuda"])
    assert {(s["framework"], s["device"]) for s in suite.serve} == {("jax", "cuda")}
    ref = load_suite("reference", overrides=["runner.serve=false"])
    assert ref.serve == [] and len(ref.points) == 72


def test_the_suite_layer_knows_the_serve_vocabulary_of_the_scenario() -> None:
    """serve_grid.py (suites may not import scenarios) repeats serve.py's choices."""
    assert serve_grid.SCENARIOS == S.SCENARIOS and serve_grid.WORKLOADS == S.WORKLOADS
    assert serve_grid.PERCENTILES == S.PERCENTILES
    fields = {f for f in ServeSpec.__dataclass_fields__}
    assert set(serve_grid.SERVE_AXES) | set(serve_grid.SERVE_SETTINGS) <= fields
