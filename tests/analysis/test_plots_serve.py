"""Serving figures and the headline's serve table, from hand-made serve records."""

from __future__ import annotations

from pathlib import Path

from bench.analysis.plots import plot_all
from bench.analysis.plots_serve import iter_serve_figures
from bench.analysis.reference import serve_html
from bench.results import ResultsWriter, RunHeader, ServeRecord, load
from bench.scenarios.serve import ServeSpec
from bench.suites.suite import load_suite


def _server_metrics(best: float | None, p99: float) -> dict:
    search = [{"rate_per_s": r, "latency_ms": ms, "met": ms <= 80, "queries": 500}
              for r, ms in ((100, 12.0), (200, 30.0), (300, 400.0), (250, 95.0))]
    return {"scenario": "server", "search": search, "max_rate_per_s": best,
            "achieved_latency_ms": p99, "samples_per_s": best, "energy_j_per_1k_requests": 4.5,
            "energy_provenance": "measured-counter"}


def _file(tmp_path: Path, machine: str, records: list[ServeRecord]) -> Path:
    head = RunHeader(run_id=f"20261205T000000Z-{machine[:4]}", suite="serve",
                     started_at="2026-12-05T00:00:00Z", env={"machine_id": machine}, roofs={})
    with ResultsWriter.create(tmp_path, machine, head.run_id, head) as w:
        for r in records:
            w.write(r)
    return w.path


def test_serve_figures_and_the_reference_serve_table(tmp_path: Path) -> None:
    [ref] = [ServeSpec(**s) for s in load_suite("reference").serve if s["framework"] == "torch"]
    server = ServeRecord.for_point(ref.point(), "ok", metrics=_server_metrics(200.0, 30.0))
    offline = [ServeRecord.for_point({**ref.point(), "scenario": "offline", "max_batch": b},
                                     "ok", metrics={"samples_per_s": 100.0 * b})
               for b in (8, 16, 32)]
    missed = ServeRecord.for_point(ref.point(), "sla-missed", "p99 latency 120 ms > target",
                                   _server_metrics(None, 120.0))
    a = load(_file(tmp_path, "machine-a", [server, *offline]))
    b = load(_file(tmp_path, "machine-b", [missed]))
    figs = {name: fig for name, _, _, fig in iter_serve_figures([a, b])}
    assert set(figs) == {"cpu-torch-rank-serve-latency-rate", "cpu-torch-rank-serve-batch"}
    ax = figs["cpu-torch-rank-serve-latency-rate"].axes[0]
    assert [line.get_ydata()[0] for line in ax.lines if line.get_linestyle() == "--"] == [80.0]
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert "machine-a: max 200 requests/s" in labels and "target 80 ms" in labels
    batch = figs["cpu-torch-rank-serve-batch"].axes[0]
    [line] = [ln for ln in batch.lines if ln.get_label().endswith("offline")]
    assert list(line.get_xdata()) == [8, 16, 32] and list(line.get_ydata()) == [800, 1600, 3200]
    html = serve_html([a, b], ["machine-a", "machine-b"])
    assert "max requests/s within p99 target" in html and "J per 1,000 requests" in html
    assert ">200<" in html and ">4.5<" in html and "sla-missed" in html and ">120<" in html
    assert len(plot_all([a.path], tmp_path / "plots")) == 2  # a serve-only file plots


def test_no_serve_records_no_serve_figures(tmp_path: Path) -> None:
    rec = ServeRecord.for_point(ServeSpec(workload="retrieve").point(), "error", "boom", {})
    f = load(_file(tmp_path, "m", [rec]))
    assert list(iter_serve_figures([f])) == [] and serve_html([f], ["m"]) == ""


def test_prefill_and_decode_against_history_length(tmp_path: Path) -> None:
    from bench.results import PointRecord

    recs = [PointRecord.for_point({"framework": "torch", "workload": "generate", "preset": "tiny",
                                   "seq_len": t, "batch_size": 8, "precision": "fp32",
                                   "device": "cpu"}, "ok",
                                  metrics={"prefill_ms": t / 10, "decode_step_ms": 2.0})
            for t in (50, 200)]
    head = RunHeader(run_id="r", suite="s", started_at="2026-12-05T00:00:00Z",
                     env={"machine_id": "m"}, roofs={})
    with ResultsWriter.create(tmp_path, "m", "r", head) as w:
        for r in recs:
            w.write(r)
    [(name, _, _, fig)] = list(iter_serve_figures([load(w.path)]))
    assert name == "cpu-torch-generate-serve-prefill-decode"
    prefill, decode = fig.axes[0].lines
    assert list(prefill.get_xdata()) == [50, 200] and list(prefill.get_ydata()) == [5.0, 20.0]
    assert list(decode.get_ydata()) == [2.0, 2.0]
