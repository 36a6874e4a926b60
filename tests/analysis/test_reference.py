"""The report's headline (reference points, machines side by side), the best-throughput table
keyed by the full configuration, and what the figures must never do: hide an unstable point,
draw int8 under a roof it has no, reuse a colour and marker, call a training sample a
recommendation. On the ref_cpu / ref_gpu fixtures (make_fixtures.py)."""

from __future__ import annotations

import html
import re
from pathlib import Path

import pytest

from bench.analysis import plots, reference, report
from bench.analysis.htmlbits import fmt
from bench.analysis.plotdata import entries
from bench.analysis.plotstyle import UNSTABLE_NOTE, Series, Styler, panel_of
from bench.results import load

FIX = Path(__file__).parents[1] / "fixtures"


@pytest.fixture(scope="module")
def ref_cpu():
    return load(FIX / "ref_cpu.jsonl")


@pytest.fixture(scope="module")
def ref_gpu():
    return load(FIX / "ref_gpu.jsonl")


@pytest.fixture(scope="module")
def headline(ref_cpu, ref_gpu) -> str:
    files = [ref_cpu, ref_gpu, load(FIX / "gpu_b.jsonl")]
    names = ["ref-cpu-box", "ref-gpu-box", "gpu-box-b"]
    return reference.headline_html(files, entries(files), names)


def rows(fragment: str) -> dict[str, list[str]]:
    """Table rows by their first cell, cells unescaped."""
    out = {}
    for r in re.findall(r"<tr>(.*?)</tr>", fragment):
        cells = [html.unescape(c) for c in re.findall(r"<t[dh][^>]*>(.*?)</t[dh]>", r)]
        out.setdefault(cells[0], cells[1:])
    return out


def rec(file, **point):
    [r] = [r for r in file.records if all(r.point.get(k) == v for k, v in point.items())]
    return r


def test_reference_points_found_by_every_field_but_the_device(ref_cpu, ref_gpu) -> None:
    ref = reference.match(reference.load_reference(), entries([ref_cpu, ref_gpu]))
    assert len(ref.keys) == 72 and ref.shape == "sasrec, bce, neg=1, C=20k, T=50, eager, adam"
    assert set(ref.matched) == {("ref-cpu-box", "cpu"), ("ref-gpu-box", "cuda")}
    cpu = ref.matched[("ref-cpu-box", "cpu")].values()
    # the LSTM point and the int8 point are not reference points; the oom one is
    assert sorted((e.point["framework"], e.batch_size, e.point["precision"], e.status)
                  for e in cpu) == [("jax", 256, "fp32", "oom"), ("torch", 16, "bf16", "ok"),
                                    ("torch", 16, "fp32", "ok"), ("torch", 16, "fp32", "ok"),
                                    ("torch", 64, "fp32", "ok")]
    assert len(ref.matched[("ref-gpu-box", "cuda")]) == 5


def test_headline_machines_side_by_side(headline: str, ref_cpu, ref_gpu) -> None:
    train, infer = headline.split("<h3>")[1:3]
    assert re.search(r'<th></th><th colspan="7">ref-cpu-box \[cpu\]</th>'
                     r'<th colspan="7">ref-gpu-box \[cuda\]</th>', train)
    t = rows(train)
    assert t["point"][:7] == ["samples/s", "p50 step ms (n samples)", "% of measured roof",
                              "% of datasheet peak", "J per 1,000 training samples",
                              "energy provenance (error bound)", "samples/s per W"]
    c = rec(ref_cpu, framework="torch", workload="train", batch_size=16, precision="fp32",
            block="sasrec").metrics
    g = rec(ref_gpu, workload="train", batch_size=16, precision="fp32").metrics
    assert t["torch (eager) tiny B=16 fp32"] == [
        fmt(c["samples_per_s"]), f'{fmt(c["step_ms"]["median"])} (n={c["step_ms"]["n"]})',
        f"{c['utilization']:.1%}", "-",
        fmt(c["energy_j_per_1k_recs"]), "measured-counter (no error bound recorded)",
        fmt(c["samples_per_s"] / 50.0),
        fmt(g["samples_per_s"]), f'{fmt(g["step_ms"]["median"])} (n={g["step_ms"]["n"]})',
        f"{g['utilization']:.1%}",
        f"{g['utilization_datasheet']:.1%}", fmt(g["energy_j_per_1k_recs"]),
        "measured-counter (±5%)", fmt(g["samples_per_s"] / 300.0)]
    c64 = rec(ref_cpu, batch_size=64).metrics
    assert t["torch (eager) tiny B=64 fp32"][0] == f"{fmt(c64['samples_per_s'])} [unstable]"
    assert re.search(r'<td class="n flag" title="CV 23% &gt; 10%">[\d,.]+ \[unstable\]</td>',
                     train)
    assert t["torch (eager) tiny B=16 bf16"][4:7] == ["-", "unavailable", "-"]
    assert t["torch (eager) tiny B=256 fp32"][:7] == ["not run", *["-"] * 6]  # only on the GPU
    jax = t["jax (jit) tiny B=256 fp32"]
    assert jax[0] == "oom" and jax[7] == "not run"
    assert "lstm" not in headline and "int8" not in headline
    i = rows(infer)
    assert "recommendations/s" in i["point"] and "J per 1,000 recommendations" in i["point"]
    assert i["torch (eager) tiny B=16 fp32"][5] == "estimated (no error bound recorded)"
    assert "CV 23% &gt; 10%" in headline.split("</table>")[-1]  # the reasons under the tables


def test_machine_without_reference_points_gets_a_line(headline: str) -> None:
    assert re.search(r"<li>gpu-box-b \(Fixture CPU B.*?\): no reference points in these "
                     r"results \(suite fixture\)", headline)
    assert "<li>ref-cpu-box [cpu] (Fixture CPU E (4 cores), 16.0 GiB RAM): 5 of 72 reference " \
           "points, 4 ok</li>" in headline
    alone = report.build_report([FIX / "cpu_a.jsonl"])
    section = alone.split('<section id="reference">')[1].split("</section>")[0]
    assert "cpu-box-a (Fixture CPU A" in section and "<table>" not in section
    broken = reference.Reference({}, "", error="no suite 'nope'")
    assert "could not be loaded: no suite" in reference.headline_html([], [], [], broken)


def test_best_throughput_is_keyed_by_the_full_configuration(ref_cpu) -> None:
    best = {tuple(map(str, r[2:10])): r for r in report.best_throughput_rows(entries([ref_cpu]))}
    # the LSTM block at tiny is its own row, not "torch train tiny fp32"; the framework cell
    # names the mode the step ran in
    assert ("torch (eager)", "train", "tiny", "lstm", "bce", "20k", "50", "fp32") in best
    sasrec = best[("torch (eager)", "train", "tiny", "sasrec", "bce", "20k", "50", "fp32")]
    assert sasrec[12] == 64 and sasrec[-1].text == "unstable (1)"
    int8 = best[("torch (eager)", "infer", "tiny", "sasrec", "bce", "20k", "50", "int8")]
    assert int8[14] == "20" and int8[15] == "no roof"  # n (samples) next to the median


def test_report_bytes_are_binary(ref_cpu, ref_gpu) -> None:
    page = report.build_report([ref_cpu, ref_gpu])
    tables = page.split('<section id="roofs">')[1].split('<section id="figures">')[0]
    assert "27.9 GiB/s" in tables and "3.64 TiB/s" in tables  # 3e10 and 4e12 B/s
    assert not re.search(r"\d ?[kMGTP]B\b", tables)


# --- figures ------------------------------------------------------------------------------


def panel(files, device="cpu", framework="torch", workload="train"):
    return [e for e in entries(files) if panel_of(e) == (device, framework, workload)]


def test_unstable_points_are_hollow_with_a_legend_note() -> None:
    cpu_a = load(FIX / "cpu_a.jsonl")
    fig = plots.throughput_figure(panel([cpu_a]))
    ax = fig.axes[0]
    [line] = [ln for ln in ax.get_lines() if ln.get_label() == "tiny fp32"]
    assert list(line.get_markevery()) == [0, 1, 3]  # B=128 (index 2) is not drawn filled
    [mark] = [ln for ln in ax.get_lines() if ln.get_gid() == "unstable"]
    thr = rec(cpu_a, framework="torch", preset="tiny", batch_size=128, precision="fp32").metrics
    assert mark.get_xydata().tolist() == [[128, thr["samples_per_s"]]]
    assert mark.get_markerfacecolor() == "white" and mark.get_marker() == line.get_marker()
    assert mark.get_markeredgecolor() == line.get_color()
    assert UNSTABLE_NOTE in [t.get_text() for t in fig.legends[0].get_texts()]
    stable = plots.throughput_figure(panel([load(FIX / "gpu_b.jsonl")], device="cuda"))
    assert UNSTABLE_NOTE not in [t.get_text() for t in stable.legends[0].get_texts()]


def test_series_distinct_in_colour_and_marker() -> None:
    one = [Series("a", f"s{i}", []) for i in range(13)]
    st = Styler(one)
    assert len({st(s)["color"] for s in one}) == len({st(s)["marker"] for s in one}) == 13
    two = one[:6] + [Series("b", f"s{i}", []) for i in range(6)]
    st = Styler(two)
    assert len({(st(s)["color"], st(s)["marker"], st(s)["linestyle"]) for s in two}) == 12
    assert st(two[0])["marker"] == st(two[6])["marker"]  # one configuration: one marker
    assert st(two[0])["color"] != st(two[6])["color"]  # one colour per machine


def test_energy_is_per_training_sample_or_per_recommendation(ref_gpu) -> None:
    train = plots.energy_figure(panel([ref_gpu], device="cuda"))
    assert train.axes[0].get_ylabel() == "energy per 1,000 training samples (J)"
    assert "Energy per 1,000 training samples" in train.get_suptitle()
    infer = plots.energy_figure(panel([ref_gpu], device="cuda", workload="infer"))
    assert infer.axes[0].get_ylabel() == "energy per 1,000 recommendations (J)"


def test_int8_is_never_drawn_against_a_roof(ref_cpu) -> None:
    items = panel([ref_cpu], workload="infer")
    assert {e.point["precision"] for e in items} == {"fp32", "int8"}
    fig = plots.roofline_figure(items)
    ax = fig.axes[0]
    fp32 = rec(ref_cpu, workload="infer", precision="fp32").metrics
    int8 = rec(ref_cpu, workload="infer", precision="int8").metrics
    drawn = [tuple(o) for c in ax.collections for o in c.get_offsets()]
    assert drawn == [pytest.approx((fp32["flops_per_step"] / fp32["bytes_per_step"],
                                    fp32["achieved_flops_per_s"] / 1e9))]
    assert all(int8["achieved_flops_per_s"] / 1e9 not in ln.get_ydata()
               for ln in ax.get_lines())
    [note] = [t for t in ax.texts if t.get_gid() == "roofline-note"]
    assert note.get_text() == "int8 points not drawn: no measured int8 GEMM roof"
    assert [r.get_label() for r in ax.get_lines() if r.get_gid() == "roof"] == [
        "fp32 roof: 200GFLOP/s, 27.9 GiB/s"]
    util = plots.utilization_figure(items)
    assert [ln.get_label() for ln in util.axes[0].get_lines() if ln.get_gid() == "series"] \
        == ["tiny"]


def test_utilization_against_the_datasheet_peak(ref_gpu) -> None:
    fig = plots.utilization_figure(panel([ref_gpu], device="cuda"))
    roof, sheet = fig.axes[:2]
    g = rec(ref_gpu, workload="train", batch_size=16, precision="bf16").metrics
    line = {ln.get_label(): ln.get_xydata() for ln in sheet.get_lines()
            if ln.get_gid() == "series"}["tiny bf16"]
    assert line.tolist() == [[16, pytest.approx(100 * g["utilization_datasheet"])]]
    assert "datasheet peak" in sheet.get_ylabel() and "measured GEMM roof" in roof.get_ylabel()


def test_cross_hardware_table_marks_unstable_points() -> None:
    from bench.analysis import compare_hw

    t = compare_hw.cross_hardware(FIX / "cpu_a.jsonl", FIX / "gpu_b.jsonl")
    [row] = [r for r in t.rows if r.a.unstable]
    assert (row.config["batch_size"], row.config["precision"]) == (128, "fp32")
    text = compare_hw.format_table(t)
    assert "T=20 B=128 fp32 !" in text
    assert "torch (eager) train tiny/sasrec C=2k T=20 B=128 fp32: A unstable (CV 23% > 10%)" \
        in text
