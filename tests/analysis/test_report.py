"""The HTML report (sections, statuses, env, embedded figures, escaping, a real browser) and
the cross-hardware table (ratios, geometric means, unmatched points)."""

from __future__ import annotations

import math
import os
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest

from bench.analysis import compare_hw, report
from bench.analysis.plotdata import entries
from bench.cli import main
from bench.results import PointRecord, ResultsWriter, RunHeader, load

FIX = Path(__file__).parents[1] / "fixtures"
VOID = {"meta", "img", "br", "hr", "link", "input", "col", "source", "wbr"}


class StrictParser(HTMLParser):
    """html.parser is lenient; this one records unbalanced tags and every src/href."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: list[str] = []
        self.errors: list[str] = []
        self.urls: list[str] = []
        self.tags: list[str] = []
        self.ids: set[str] = set()

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        for k, v in attrs:
            if k in ("src", "href"):
                self.urls.append(v or "")
            if k == "id":
                self.ids.add(v or "")
        if tag not in VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag):
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> closes {self.stack[-1:]}")
        else:
            self.stack.pop()


def parse(page: str) -> StrictParser:
    p = StrictParser()
    p.feed(page)
    p.close()
    assert p.errors == [] and p.stack == [], (p.errors, p.stack)
    return p


@pytest.fixture(scope="module")
def page() -> str:
    return report.build_report([FIX / "cpu_a.jsonl", FIX / "gpu_b.jsonl", FIX / "no_ok.jsonl"])


# --- the report ---------------------------------------------------------------------------


def test_sections_env_roofs_and_valid_html(page: str) -> None:
    p = parse(page)
    assert {"missing", "status", "environment", "roofs", "summary", "figures"} <= p.ids
    for text in ("Fixture CPU A", "NVIDIA H200 (141 GiB, driver 570.1)", "0.4 GiB",
                 "400TFLOP/s", "Best throughput per configuration (batch size aside)",
                 "Largest feasible model and batch per device", "OOM frontier", "Cross-hardware"):
        assert text in page, text
    assert page.startswith("<!DOCTYPE html>")


def test_status_counts_per_file(page: str) -> None:
    rows = re.findall(r"<tr>(.*?)</tr>", page)
    cells = [re.findall(r"<td[^>]*>(.*?)</td>", r) for r in rows]
    by_machine = {c[0]: c for c in cells if len(c) == 11 and c[2] == "fixture"}
    # columns: machine run suite file ok oom infeasible skipped-after-oom unsupported crashed total
    assert by_machine["cpu-box-a"][4:] == ["12", "1", "1", "1", "1", "1", "17"]
    assert by_machine["broken-box"][4:] == ["0", "1", "0", "0", "0", "1", "2"]
    assert "7 point(s) not ok, with reasons" in page


def test_figures_embedded_no_external_urls(page: str) -> None:
    p = parse(page)
    images = [u for u in p.urls if u.startswith("data:image/png;base64,")]
    assert len(images) == p.tags.count("img") >= 15
    assert all(not re.match(r"\s*(https?:)?//", u) for u in p.urls)  # nothing fetched
    assert all(u.startswith(("data:", "#")) for u in p.urls)
    assert "<script" not in page.lower()


def test_text_from_files_is_escaped(page: str) -> None:
    # cpu_a's crashed point has "<script>alert(1)</script>" in its reason
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page


def test_summary_numbers(page: str) -> None:
    # knee of cpu-box-a's torch tiny fp32 line; the oom frontier of its small fp32 line
    # every field of the configuration has its column: block, loss, catalog, T
    assert re.search(r"<td>cpu-box-a</td><td>cpu</td><td>torch \(eager\)</td><td>train</td>"
                     r"<td>tiny</td>"
                     r"<td>sasrec</td><td>bce</td><td>2k</td><td class=\"n\">20</td>"
                     r"<td>fp32</td><td class=\"n\">24,060</td><td class=\"n\">512</td>.*?"
                     r"<td>32</td><td class=\"flag\" title=\"B=128: CV 23% &gt; 10%\">"
                     r"unstable \(1\)</td></tr>", page)
    assert re.search(r"<td>small</td><td>fp32</td><td class=\"n\">32</td><td class=\"n\">128"
                     r"</td><td>oom</td>", page)
    assert "small (3.68M params)" in page  # the largest model that ran on cpu-box-a


def test_missing_is_stated() -> None:
    page = report.build_report([FIX / "single.jsonl", FIX / "no_ok.jsonl"])
    parse(page)
    assert "single-box: no energy measured on this machine: RAPL/NVML unavailable" in page
    assert "broken-box: no ok records (crashed 1, oom 1)" in page
    assert "broken-box: no measured GEMM roof" in page
    assert "Cross-hardware" in page  # two machines


def test_no_ok_records_still_make_a_report(tmp_path: Path, capsys) -> None:
    assert main(["report", str(FIX / "no_ok.jsonl"), "--out", str(tmp_path)]) == 0
    path = Path(capsys.readouterr().out.strip())
    assert path == tmp_path / "report.html"
    page = path.read_text()
    parse(page)
    assert "nothing was measured" in page and "No ok records: nothing ran." in page
    assert page.count("data:image/png;base64,") == 1  # the memory figure: the oom marker


def test_bad_input_exit_2(tmp_path: Path, capsys) -> None:
    (tmp_path / "empty").mkdir()
    for bad in (tmp_path / "empty", tmp_path / "missing.jsonl"):
        assert main(["report", str(bad)]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("recbench report: error:") and "\n" not in err


def _chromium() -> str | None:
    for c in ("/usr/bin/chromium", shutil.which("chromium"), shutil.which("chromium-browser")):
        if c and os.access(c, os.X_OK):
            return c
    return None


@pytest.mark.browser
def test_report_renders_in_headless_chromium(tmp_path: Path) -> None:
    exe = _chromium()
    if exe is None:
        pytest.skip("no chromium on this machine (apt-get install chromium to run this test)")
    path = report.write_report([FIX / "cpu_a.jsonl", FIX / "gpu_b.jsonl"], tmp_path)
    shot = tmp_path / "shot.png"
    proc = subprocess.run(
        [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={shot}",
         "--window-size=1280,2000", path.as_uri()],
        capture_output=True, text=True, timeout=120)
    assert shot.is_file() and shot.stat().st_size > 20_000, proc.stderr[-2000:]
    from matplotlib.image import imread

    pixels = imread(shot)
    assert pixels.std() > 0.05  # not a blank page
    # chromium also logs its own D-Bus noise; only page errors count
    bad = [ln for ln in proc.stderr.splitlines() if "Uncaught" in ln or "net::ERR_" in ln
           or ("ERR_" in ln and "dbus" not in ln)]
    assert bad == []


# --- the cross-hardware table -------------------------------------------------------------

POINT = {"framework": "torch", "workload": "train", "preset": "tiny", "block": "sasrec",
         "loss": "bce", "n_neg": 1, "catalog_size": 1000, "seq_len": 20, "precision": "fp32",
         "compile": False, "optimizer": "adam"}


def _ok(device: str, batch: int, thr: float, mem: float, energy: float | None = None,
        prov: str = "unavailable") -> PointRecord:
    return PointRecord.for_point({**POINT, "batch_size": batch, "device": device}, "ok", metrics={
        "samples_per_s": thr, "step_ms": {"median": batch / thr * 1e3},
        "peak_device_mem_bytes": mem if device == "cuda" else None,
        "peak_host_rss_bytes": mem, "energy_j_per_1k_recs": energy, "energy_provenance": prov})


def _file(tmp_path: Path, machine: str, device: str, records: list[PointRecord]) -> Path:
    header = RunHeader("r-" + machine, "hand", "2026-11-01T00:00:00Z",
                       {"machine_id": machine, "ram_bytes": 2**34, "gpus": []}, {})
    with ResultsWriter.create(tmp_path, machine, header.run_id, header) as w:
        for r in records:
            w.write(r)
    return w.path


@pytest.fixture
def hand(tmp_path: Path) -> tuple[Path, Path]:
    a = _file(tmp_path, "box-a", "cpu", [
        _ok("cpu", 8, 100.0, 1e9, 50.0, "measured-counter"),
        _ok("cpu", 16, 100.0, 2e9, 40.0, "estimated"),
        _ok("cpu", 32, 100.0, 4e9),  # only on A
        PointRecord.for_point({**POINT, "batch_size": 64, "device": "cpu"}, "oom", "OOM"),
    ])
    b = _file(tmp_path, "box-b", "cuda", [
        _ok("cuda", 8, 200.0, 0.5e9, 10.0, "measured-counter"),  # 2x faster, 1/5 energy
        _ok("cuda", 16, 800.0, 1e9, 1.0, "measured-counter"),  # 8x faster
        _ok("cuda", 64, 800.0, 1e9),  # A ran out of memory here: not comparable
        _ok("cuda", 128, 900.0, 1e9),  # only on B
    ])
    return a, b


def test_cross_hardware_ratios_and_geomeans(hand) -> None:
    t = compare_hw.cross_hardware([load(hand[0])], [load(hand[1])])
    assert (t.name_a, t.name_b) == ("box-a", "box-b")
    assert [r.config["batch_size"] for r in t.rows] == [8, 16]
    r8, r16 = t.rows
    assert r8.ratios["samples_per_s"] == pytest.approx(2.0)
    assert r16.ratios["step_ms"] == pytest.approx(1 / 8)
    assert r8.ratios["peak_mem_bytes"] == pytest.approx(0.5)
    assert (r8.a.peak_mem_kind, r8.b.peak_mem_kind) == ("host RSS", "device peak")
    assert r8.ratios["energy_j_per_sample"] == pytest.approx(0.2)
    assert r16.ratios["energy_j_per_sample"] is None  # A's is an estimate: never compared
    assert t.geomeans["samples_per_s"] == pytest.approx(4.0)  # sqrt(2 * 8)
    assert t.geomeans["step_ms"] == pytest.approx(0.25)
    assert t.geomeans["energy_j_per_sample"] == pytest.approx(0.2)
    assert t.counts == {"samples_per_s": 2, "step_ms": 2, "peak_mem_bytes": 2,
                        "energy_j_per_sample": 1}


def test_cross_hardware_lists_every_unmatched_point(hand) -> None:
    t = compare_hw.cross_hardware(hand[0], hand[1])  # paths work too
    assert [u.config["batch_size"] for u in t.only_a] == [32]
    assert [u.config["batch_size"] for u in t.only_b] == [128]
    [nc] = t.not_comparable
    assert (nc.config["batch_size"], nc.a.status, nc.b.status) == (64, "oom", "ok")
    text = compare_hw.format_table(t)
    assert "only in A (box-a): 1" in text and "only in B (box-b): 1" in text
    assert "B=64 fp32: A oom, B ok" in text and "throughput: 4x (n=2" in text
    md = compare_hw.to_markdown(t)
    assert md.count("\n| torch (eager) train") == 2 and "| B/A |" in md
    js = compare_hw.to_json(t)
    assert js["geomean"]["samples_per_s"] == pytest.approx(4.0)
    assert len(js["only_a"]) == len(js["only_b"]) == len(js["not_comparable"]) == 1
    assert not any(isinstance(v, float) and math.isnan(v) for v in js["geomean"].values())


def test_cross_hardware_picks_the_fastest_of_several_devices() -> None:
    a, b = load(FIX / "cpu_a.jsonl"), load(FIX / "gpu_b.jsonl")  # gpu_b: cuda and cpu points
    t = compare_hw.cross_hardware([a], [b])
    assert {r.b.device for r in t.rows} == {"cuda"}
    assert max(r.b.candidates for r in t.rows) == 2
    on_cpu = compare_hw.cross_hardware([a], [b], device_b="cpu")
    assert {r.b.device for r in on_cpu.rows} == {"cpu"} and len(on_cpu.rows) == 3


def test_data_parallel_device_reads_as_each_gpus_capacity(tmp_path: Path) -> None:
    """JAX's `cuda:all` points (data parallel) used to crash the report on int('all')."""
    from bench.analysis.plotdata import capacity_bytes

    env = {"gpus": [{"name": "NVIDIA H200", "memory_bytes": 141 << 30}] * 2}
    assert capacity_bytes(env, "cuda:all") == (141 << 30, "NVIDIA H200 memory (each GPU)")
    assert capacity_bytes(env, "cuda:1") == (141 << 30, "NVIDIA H200 memory")
    rec = _ok("cuda:all", 8, 100.0, 1e9)
    rec.metrics.update(params_dense=1000, params_embedding=1000, peak_device_mem_bytes=1e9)
    path = _file(tmp_path, "box-dp", "cuda:all", [rec])
    rf = load(path)
    rf.header.env["gpus"] = env["gpus"]
    page = report.build_report([rf])
    parse(page)
    assert "cuda:all" in page and "memory (each GPU)" in page


def test_oom_frontier_keeps_lines_of_one_preset_apart(tmp_path: Path) -> None:
    """Two catalog sizes of one preset are two lines: the small catalog's B=64 must not read
    as 'largest ok batch' next to the large catalog's OOM at B=16."""
    def rec(batch: int, catalog: int, status: str = "ok") -> PointRecord:
        point = {**POINT, "batch_size": batch, "device": "cpu", "catalog_size": catalog}
        if status != "ok":
            return PointRecord.for_point(point, status, "OOM", metrics={"est_mem_bytes": 2**30})
        return PointRecord.for_point(point, "ok", metrics={"samples_per_s": 10.0 * batch})

    path = _file(tmp_path, "box-f", "cpu", [rec(8, 1000), rec(64, 1000), rec(8, 10**6),
                                            rec(16, 10**6, "oom")])
    rows = report.frontier_rows(report.entries([load(path)]))
    assert rows == [["box-f", "cpu", "torch (eager)", "train", "tiny C=1M", "fp32", 8, 16, "oom",
                     "measured", "1.00 GiB"]]


def test_oom_frontier_marks_predicted_and_measured_points_apart(tmp_path: Path) -> None:
    """An oom is a measured frontier; infeasible and skipped-after-oom were never run: their
    frontier is predicted, and the table and the page say which is which."""
    def rec(batch: int, catalog: int, status: str = "ok") -> PointRecord:
        point = {**POINT, "batch_size": batch, "device": "cpu", "catalog_size": catalog}
        if status != "ok":
            return PointRecord.for_point(point, status, "why", metrics={"est_mem_bytes": 2**31})
        return PointRecord.for_point(point, "ok", metrics={"samples_per_s": 10.0 * batch})

    path = _file(tmp_path, "box-g", "cpu", [
        rec(8, 1000), rec(16, 1000, "oom"), rec(32, 1000, "skipped-after-oom"),
        rec(8, 10**5), rec(16, 10**5, "infeasible"), rec(8, 10**6, "skipped-after-oom")])
    rows = report.frontier_rows(report.entries([load(path)]))
    kinds = {row[4]: (row[7], row[8], row[9]) for row in rows}
    assert kinds == {"tiny C=1k": (16, "oom", "measured"),
                     "tiny C=100k": (16, "infeasible", "predicted (estimate over capacity)"),
                     "tiny C=1M": (8, "skipped-after-oom",
                                   "predicted (a smaller point ran out of memory)")}


def test_page_says_which_frontier_points_are_measured(page: str) -> None:
    assert "<th>frontier</th>" in page
    assert re.search(r"<td>oom</td><td>measured</td>", page)
    assert "predicted where it was not run: infeasible (the analytic estimate, less its " \
        "stated error of 25% or 200 MiB, is over capacity)" in page


def test_report_shows_n_next_to_the_median(tmp_path: Path) -> None:
    rec = PointRecord.for_point({**POINT, "batch_size": 8, "device": "cpu"}, "ok", metrics={
        "samples_per_s": 100.0, "step_ms": {"median": 80.0, "p90": 90.0, "p99": None, "n": 37,
                                            "null_reasons": {"p99": "needs >= 100, have 37"}}})
    [row] = report.best_throughput_rows(entries([load(_file(tmp_path, "box", "cpu", [rec]))]))
    i = row.index("80")
    assert row[i + 1] == "37"
    page = report.build_report([_file(tmp_path / "b", "box-b", "cpu", [rec])])
    assert "<th>n (samples)</th>" in page
