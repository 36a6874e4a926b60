"""Time-to-quality presentation, from hand-made ttq records: the figure (one line per series,
each run's curve, the target, the time to target, the paper's line), the report's table
(numbers, did-not-converge), the cross-machine ratio, and files without ttq records."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from bench.analysis import compare_hw, report
from bench.analysis.compare_ttq import ttq_across
from bench.analysis.plots import iter_figures, plot_all
from bench.analysis.plots_ttq import (
    LEGEND_WIDTH,
    iter_ttq_figures,
    median_run_index,
    ttq_series,
)
from bench.analysis.report_ttq import ttq_rows
from bench.results import PointRecord, ResultsFile, ResultsWriter, RunHeader, TTQRecord, load

FIX = Path(__file__).parents[1] / "fixtures"
PAPER = {"hr@10": 0.7410, "ndcg@10": 0.5360}


def _point(framework: str = "torch", precision: str = "fp32", target: str = "hr@10",
           value: float = 0.6, dataset: str = "games", **extra: Any) -> dict[str, Any]:
    return {"framework": framework, "preset": "tiny", "dataset": dataset,
            "precision": precision, "device": "cpu",
            "compile": "jit" if framework == "jax" else "eager", "target": target,
            "target_value": value, "runs": 3, "max_epochs": 20, "eval_every": 1,
            "batch_size": 128, "seed": 0, **extra}


def _run(seed: int, wall: float, status: str = "converged", top: float = 0.65) -> dict:
    """A run evaluated at 4 epochs, quality rising linearly to ``top`` at ``wall`` seconds."""
    curve = [{"epoch": i, "wall_s": wall * i / 4, "train_s": 0.8 * wall * i / 4,
              "eval_s": 0.2 * wall * i / 4,
              "valid": {"hr@10": top * i / 4, "ndcg@10": top * i / 8},
              "test": {"hr@10": top * i / 4 - 0.01, "ndcg@10": top * i / 8}}
             for i in range(1, 5)]
    return {"seed": seed, "status": status, "wall_s": wall, "setup_s": 0.5,
            "train_s": 0.8 * wall, "eval_s": 0.2 * wall, "epochs": 4, "energy_j": None,
            "reached": curve[-1]["valid"], "test": curve[-1]["test"], "curve": curve}


def _ok(walls: tuple[float, ...], point: dict[str, Any], energy: float | None = None,
        paper: dict | None = PAPER) -> TTQRecord:
    runs = [_run(i, w) for i, w in enumerate(walls)]
    kept = sorted(walls)[1:-1]
    return TTQRecord.for_point(point, "ok", metrics={
        "time_to_target_s": sum(kept) / len(kept),
        "score_rule": "mean of 1 runs without the fastest and the slowest",
        "setup_s": 1.5, "train_s": 0.8 * sum(walls), "eval_s": 0.2 * sum(walls),
        "train_share": 0.8, "eval_share": 0.2, "epochs_to_target": 4,
        "energy_to_target_j": energy,
        "energy_provenance": "measured-counter" if energy else "unavailable",
        "converged": len(walls), "paper_quality": paper, "runs": runs,
        "kept_runs": [walls.index(w) for w in kept]})


def _dnc(point: dict[str, Any]) -> TTQRecord:
    runs = [_run(0, 30.0), _run(1, 50.0, "did-not-converge", 0.4),
            _run(2, 52.0, "did-not-converge", 0.45)]
    return TTQRecord.for_point(point, "did-not-converge", "2 of 3 runs did not reach hr@10 0.6 "
                               "in 20 epochs", metrics={
                                   "time_to_target_s": None, "score_rule": "mean ...",
                                   "train_share": 0.8, "eval_share": 0.2,
                                   "epochs_to_target": None, "energy_to_target_j": None,
                                   "energy_provenance": "unavailable", "converged": 1,
                                   "paper_quality": None, "runs": runs})


def _file(tmp_path: Path, machine: str, records: list[PointRecord], cpu: str = "Test CPU",
          run: str = "20261205T000000Z-0001") -> ResultsFile:
    head = RunHeader(run_id=run, suite="ttq", started_at="2026-12-05T00:00:00Z",
                     env={"machine_id": machine, "cpu": cpu, "cores": {"usable": 4}}, roofs={})
    with ResultsWriter.create(tmp_path, machine, head.run_id, head) as w:
        for r in records:
            w.write(r)
    return load(w.path)


@pytest.fixture()
def two(tmp_path: Path) -> tuple[ResultsFile, ResultsFile]:
    a = _file(tmp_path, "machine-a", [
        _ok((10.0, 12.0, 20.0), _point()),  # score 12
        _ok((6.0, 8.0, 9.0), _point("jax")),  # score 8
        _dnc(_point(precision="bf16")),
    ])
    b = _file(tmp_path, "machine-b", [
        _ok((3.0, 4.0, 30.0), _point(), energy=250.0),  # score 4: B/A 1/3
        _ok((1.0, 2.0, 3.0), _point("jax", target="ndcg@10", value=0.3)),
    ], cpu="Other CPU")
    return a, b


# --- the figure -----------------------------------------------------------------------------


def test_one_line_per_series_each_run_target_and_time_to_target(two) -> None:
    a, b = two
    figs = {name: fig for name, _, fig in iter_ttq_figures([a, b])}
    assert set(figs) == {"ttq-games-hr@10", "ttq-games-ndcg@10"}
    ax = figs["ttq-games-hr@10"].axes[0]
    medians = [ln for ln in ax.lines if ln.get_gid() == "median-run"]
    labels = sorted(ln.get_label().split(": median")[0] for ln in medians)
    # one thick line per machine/framework (mode)/precision; machines named: two share it
    assert labels == sorted(["machine-a: torch (eager) fp32", "machine-a: jax (jit) fp32",
                             "machine-a: torch (eager) bf16", "machine-b: torch (eager) fp32"])
    # every run drawn once: 4 records x 3 runs, one thick and two thin each
    assert len([ln for ln in ax.lines if ln.get_gid() == "run"]) == 8
    # the median run of machine-a torch fp32 is its 12 s run (seed 1): curve ends there
    [m] = [ln for ln in medians if ln.get_label().startswith("machine-a: torch (eager) fp32")]
    assert "seed 1" in m.get_label() and list(m.get_xdata()) == [3.0, 6.0, 9.0, 12.0]
    assert list(m.get_ydata()) == pytest.approx([0.1625, 0.325, 0.4875, 0.65])
    [target] = [ln for ln in ax.lines if ln.get_gid() == "target"]
    assert list(target.get_ydata()) == [0.6, 0.6]
    assert target.get_label() == "target: validation HR@10 >= 0.6"
    [paper] = [ln for ln in ax.lines if ln.get_gid() == "paper"]
    assert paper.get_ydata()[0] == 0.741 and "0.7410" in paper.get_label()
    marks = {ln.get_label().split(": time")[0]: (ln.get_xdata()[0], ln.get_ydata()[0])
             for ln in ax.lines if ln.get_gid() == "time-to-target"}
    assert marks == {"machine-a: torch (eager) fp32": (12.0, 0.6),
                     "machine-a: jax (jit) fp32": (8.0, 0.6),
                     "machine-b: torch (eager) fp32": (4.0, 0.6)}
    [dnc] = [ln for ln in ax.lines if ln.get_gid() == "did-not-converge"]
    assert dnc.get_label() == ("machine-a: torch (eager) bf16: did not converge "
                               "(1 of 3 runs reached it)")
    texts = [t.get_text() for t in figs["ttq-games-hr@10"].legends[0].get_texts()]
    assert max(len(line) for t in texts for line in t.split("\n")) <= LEGEND_WIDTH  # wrapped
    legend = [t.replace("\n", " ") for t in texts]
    assert "machine-b: torch (eager) fp32: time to target 4 s (mean of 1 runs without the " \
           "fastest and the slowest)" in legend
    title = figs["ttq-games-hr@10"].get_suptitle()
    assert "validation HR@10" in title and "machine-a (Test CPU (4 cores))" in title


def test_median_run_counts_a_missed_target_as_slowest() -> None:
    runs = [{"status": "converged", "wall_s": 5.0}, {"status": "did-not-converge",
                                                     "wall_s": 1.0},
            {"status": "converged", "wall_s": 9.0}]
    assert median_run_index(runs) == 2  # order: 5, 9, then the one that missed
    assert median_run_index(runs[:2]) == 0 and median_run_index([]) is None


def test_one_machine_legend_names_no_machine(tmp_path: Path) -> None:
    f = _file(tmp_path, "m", [_ok((1.0, 2.0, 3.0), _point()),
                              _ok((1.0, 2.0, 3.0), _point("jax"))])
    [series] = ttq_series([f]).values()
    assert [s.name for s in series] == ["torch (eager) fp32", "jax (jit) fp32"]


def test_recbench_plot_writes_the_ttq_file(two, tmp_path: Path) -> None:
    a, b = two
    paths = plot_all([a, b], tmp_path / "plots")
    names = sorted(p.name for p in paths)
    assert names == ["ttq-games-hr-10.png", "ttq-games-ndcg-10.png"]
    assert all(p.stat().st_size > 10_000 for p in paths)
    kinds = {nf.kind for nf in iter_figures([a])}
    assert kinds == {"time to quality"}


def test_a_file_of_one_did_not_converge_record_still_plots(tmp_path: Path) -> None:
    f = _file(tmp_path, "m", [_dnc(_point())])
    [path] = plot_all([f], tmp_path / "plots")
    assert path.name == "ttq-games-hr-10.png"


# --- the report -----------------------------------------------------------------------------


def _cells(row: list[Any]) -> list[str]:
    return [str(getattr(c, "text", c)) for c in row]


def test_report_table_numbers_and_did_not_converge(two) -> None:
    a, b = two
    from bench.analysis.plots_ttq import ttq_entries

    rows = {(r[0], r[2], r[4], r[6]): r for r in map(_cells, ttq_rows(ttq_entries([a, b])))}
    torch_a = rows[("machine-a", "torch (eager)", "fp32", "HR@10 >= 0.6")]
    assert torch_a[7] == "12 s" and torch_a[9] == "3 of 3"
    assert torch_a[8] == "mean of 1 runs without the fastest and the slowest"
    assert torch_a[10:14] == ["80.0%", "20.0%", "not measured (unavailable)", "4"]
    assert torch_a[14] == "HR@10 0.7410, NDCG@10 0.5360" and torch_a[15] == "ok"
    assert rows[("machine-b", "torch (eager)", "fp32", "HR@10 >= 0.6")][12] == \
        "250 J (measured-counter)"
    dnc = rows[("machine-a", "torch (eager)", "bf16", "HR@10 >= 0.6")]
    assert dnc[7] == "did not converge" and dnc[8] == "-" and dnc[9] == "1 of 3"
    assert dnc[14] == "none recorded"
    assert dnc[15].startswith("did-not-converge: 2 of 3 runs did not reach")

    page = report.build_report([a, b])
    assert 'id="time-to-quality"' in page and 'href="#time-to-quality"' in page
    assert "5 time-to-quality record(s)" in page
    assert "time-to-quality records only (3; recbench ttq)" in page
    section = page.split('id="time-to-quality"')[1].split("</section>")[0]
    from bench.analysis.report_ttq import run_rows

    scored = [(r[5], r[7]) for r in run_rows(ttq_entries([a])) if r[1] == "torch (eager)"
              and r[2] == "fp32"]
    assert scored == [(0, "no (dropped)"), (1, "yes"), (2, "no (dropped)")]
    assert ">did not converge<" in section and ">12 s<" in section
    assert section.count("<tr>") == 1 + 5 + 1 + 15 + 1 + 4  # head, records, runs, across


def test_cross_machine_ratio(two) -> None:
    a, b = two
    t = ttq_across([("machine-a", [a]), ("machine-b", [b])])
    rows = {r.label: r for r in t.rows}
    torch = rows["games HR@10>=0.6 torch (eager) tiny fp32 B=128 eval/1 epoch"]
    assert [s.time_to_target_s for s in torch.sides] == [12.0, 4.0]
    assert torch.ratios[1] == pytest.approx(1 / 3)
    jax = rows["games HR@10>=0.6 jax (jit) tiny fp32 B=128 eval/1 epoch"]
    assert jax.sides[1] is None and jax.ratios == [1.0, None]
    bf16 = rows["games HR@10>=0.6 torch (eager) tiny bf16 B=128 eval/1 epoch"]
    assert bf16.sides[0].status == "did-not-converge" and bf16.ratios == [None, None]
    assert len(t.rows) == 4  # the ndcg@10 record of B is its own work

    text = compare_hw.format_table(compare_hw.cross_hardware([a], [b]))
    line = next(x for x in text.splitlines() if x.startswith("games HR@10>=0.6 torch (eager) "
                                                             "tiny fp32"))
    assert re.split(r"\s{2,}", line)[1:] == ["12 s", "3 of 3", "4 s", "3 of 3", "0.333x"]
    assert "no point is ok on both sides" not in text  # ttq only: no empty step part
    md = compare_hw.to_markdown(compare_hw.cross_hardware([a], [b]))
    assert "| 12 s | 3 of 3 | 4 s | 3 of 3 | 0.333x |" in md
    js = compare_hw.to_json(compare_hw.cross_hardware([a], [b]))
    assert js["ttq"]["base"] == "machine-a"

    page = report.build_report([a, b])
    across = page.split("<h3>Across machines</h3>")[1].split("</table>")[0]
    assert "machine-b/machine-a time" in across and ">0.333x<" in across


def test_seed_runs_and_cap_do_not_split_work_but_batch_size_does(tmp_path: Path) -> None:
    a = _file(tmp_path, "a", [_ok((1.0, 2.0, 3.0), _point())])
    b = _file(tmp_path, "b", [_ok((1.0, 4.0, 9.0), _point(seed=7, runs=5, max_epochs=50)),
                              _ok((1.0, 1.0, 1.0), _point(batch_size=256))])
    t = ttq_across([("a", [a]), ("b", [b])])
    assert [r.ratios for r in t.rows] == [[1.0, 2.0], [None, None]]


# --- without ttq records ----------------------------------------------------------------------


def test_files_without_ttq_records_show_no_ttq(tmp_path: Path) -> None:
    files = [load(FIX / "cpu_a.jsonl"), load(FIX / "gpu_b.jsonl")]
    assert not any(f.ttq for f in files)
    page = report.build_report(files)
    assert "time-to-quality" not in page and "Time to quality" not in page
    assert "time to quality" not in {nf.kind for nf in iter_figures(files)}
    t = compare_hw.cross_hardware([files[0]], [files[1]])
    assert t.ttq is None and "ttq" not in compare_hw.to_json(t)
    assert "time to quality" not in compare_hw.format_table(t)
    # one machine with ttq records is not a cross-machine comparison
    one = _file(tmp_path, "solo", [_ok((1.0, 2.0, 3.0), _point())])
    assert ttq_across([("solo", [one]), ("cpu", [files[0]])]) is None
    assert "Across machines" not in report.build_report([one, files[0]])


def test_recbench_compare_cross_hardware_of_ttq_only_files(two, capsys) -> None:
    """Two machines' results holding only ttq records: the CLI prints the ttq table (it once
    refused them as having 'no point in common')."""
    from bench.cli import main

    a, b = two
    assert main(["compare", str(a.path), str(b.path), "--cross-hardware"]) == 0
    out = capsys.readouterr().out
    assert "0.333x" in out and "no point in common" not in out


def test_one_machines_files_are_one_source(tmp_path: Path) -> None:
    """Each `recbench ttq` writes its own file: two of one machine are one machine in the
    figure (no machine or run id in the legend), not two sources."""
    a = _file(tmp_path, "machine-a", [_ok((10.0, 12.0, 20.0), _point())])
    b = _file(tmp_path, "machine-a", [_ok((6.0, 8.0, 9.0), _point("jax"))],
              run="20261205T000001Z-0002")
    [series] = ttq_series([a, b]).values()
    assert sorted(s.name for s in series) == ["jax (jit) fp32", "torch (eager) fp32"]


def test_each_target_value_gets_its_own_figure(tmp_path: Path) -> None:
    """Two targets of one dataset and metric: two figures (stems carry the value), each with
    one dashed target line; a differing epoch cap is named in the legend, not a bare number."""
    a = _file(tmp_path, "machine-a", [
        _ok((10.0, 12.0, 20.0), {**_point(), "max_epochs": 4}),
        _ok((6.0, 8.0, 9.0), {**_point(value=0.7), "max_epochs": 4}),
        _ok((7.0, 9.0, 11.0), {**_point(value=0.7), "max_epochs": 8}),
    ])
    figs = {name: (panel, fig) for name, panel, fig in iter_ttq_figures([a])}
    assert set(figs) == {"ttq-games-hr@10-0.6", "ttq-games-hr@10-0.7"}
    assert figs["ttq-games-hr@10-0.7"][0] == "HR@10 >= 0.7 on games"
    ax = figs["ttq-games-hr@10-0.7"][1].axes[0]
    assert len([ln for ln in ax.lines if ln.get_gid() == "target"]) == 1
    names = sorted(ln.get_label().split(": median")[0] for ln in ax.lines
                   if ln.get_gid() == "median-run")
    assert names == ["torch (eager) fp32 cap 4 epochs", "torch (eager) fp32 cap 8 epochs"]
