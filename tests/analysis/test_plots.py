"""Figures: each figure's data asserted through matplotlib objects, on committed fixtures.

Fixtures (tests/fixtures/, written by make_fixtures.py): cpu_a (a 400 MiB CPU box with ok,
oom, skipped-after-oom, infeasible, crashed and unsupported points), gpu_b (an H200 box with
cuda points and a few on its CPU), single (one ok point), no_ok (oom + crashed only).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
from matplotlib.figure import Figure

from bench.analysis import plots
from bench.analysis.plotdata import GiB, entries, gain_per_doubling, knee
from bench.analysis.plotstyle import panel_of
from bench.cli import main
from bench.results import load
from recmodels.errors import InputError

FIX = Path(__file__).parents[1] / "fixtures"
MiB = 2**20


@pytest.fixture(scope="module")
def cpu_a():
    return load(FIX / "cpu_a.jsonl")


@pytest.fixture(scope="module")
def gpu_b():
    return load(FIX / "gpu_b.jsonl")


def panel(files, device="cpu", framework="torch", workload="train"):
    return [e for e in entries(files) if panel_of(e) == (device, framework, workload)]


def series_lines(ax):
    return {ln.get_label(): ln.get_xydata() for ln in ax.get_lines() if ln.get_gid() == "series"}


def legend_texts(fig: Figure) -> list[str]:
    return [t.get_text() for t in fig.legends[0].get_texts()]


def metric(file, status=None, **point):
    """The one record of `file` with this status (if given) and these point fields."""
    [rec] = [r for r in file.records if all(r.point.get(k) == v for k, v in point.items())
             and status in (None, r.status)]
    return rec


# --- knee ---------------------------------------------------------------------------------


def test_gain_per_doubling_handles_ladders_that_do_not_double() -> None:
    assert gain_per_doubling(8, 100, 16, 120) == pytest.approx(0.20)
    assert gain_per_doubling(8, 100, 32, 144) == pytest.approx(0.20)  # x4 = two doublings


def test_knee_on_a_synthetic_saturating_curve() -> None:
    b = [8, 16, 32, 64, 128, 256]
    assert knee(b, [100 * min(x, 64) for x in b]) == 64  # flat after 64
    assert knee(b, [100 * x for x in b]) is None  # still growing: knee beyond the sweep
    assert knee(b, [100 * 1.05 ** i for i in range(6)]) == 8  # +5% per doubling from the start
    assert knee(list(reversed(b)), [100 * min(x, 64) for x in reversed(b)]) == 64  # order-free
    # 1.09x per doubling is under 10%: the first batch; 1.11x is not: no knee
    assert knee([1, 4], [100, 100 * 1.09 ** 2]) == 1
    assert knee([1, 4], [100, 100 * 1.11 ** 2]) is None
    assert knee([16], [5.0]) is None
    assert knee([8, 16], [0.0, 5.0]) is None  # no throughput: nothing to compare


# --- one figure at a time -----------------------------------------------------------------


def test_throughput_lines_knee_title_and_legend(cpu_a) -> None:
    fig = plots.throughput_figure(panel([cpu_a]))
    ax = fig.axes[0]
    lines = series_lines(ax)
    assert set(lines) == {"tiny fp32", "tiny bf16", "small fp32"}
    want = [(b, metric(cpu_a, framework="torch", preset="tiny", precision="fp32",
                       batch_size=b).metrics["samples_per_s"]) for b in (8, 32, 128, 512)]
    np.testing.assert_allclose(lines["tiny fp32"], want)
    assert ax.get_xscale() == "log" and ax.get_yscale() == "log"
    # tiny fp32 gains +26% per doubling 8->32, +8.4% 32->128: knee at 32
    knees = [ln.get_xydata()[0] for ln in ax.get_lines() if ln.get_gid() == "knee"]
    assert [tuple(k) for k in knees] == [(32, want[1][1])]
    assert "cpu-box-a" in fig.get_suptitle() and "torch train on cpu" in fig.get_suptitle()
    assert "samples/s" in ax.get_ylabel() and "batch size" in ax.get_xlabel()
    assert "knee: next batch gains < 10% per doubling" in legend_texts(fig)


def test_latency_p50_and_p99(cpu_a) -> None:
    fig = plots.latency_figure(panel([cpu_a], framework="jax"))
    p50, p99 = (series_lines(ax)["tiny"] for ax in fig.axes[:2])  # only what varies
    recs = [metric(cpu_a, framework="jax", batch_size=b, precision="fp32") for b in (8, 32, 128)]
    np.testing.assert_allclose(p50[:, 1], [r.metrics["step_ms"]["median"] for r in recs])
    np.testing.assert_allclose(p99[:, 1], [r.metrics["step_ms"]["p99"] for r in recs])
    assert fig.axes[0].get_ylabel() == "step time (ms)"


def test_memory_capacity_and_failed_markers(cpu_a) -> None:
    fig = plots.memory_figure(panel([cpu_a]))
    left, right = fig.axes[:2]
    caps = [ln.get_ydata()[0] for ln in left.get_lines() if ln.get_gid() == "capacity"]
    assert caps == [pytest.approx(400 * MiB / GiB)]
    by_gid = {c.get_gid(): c.get_offsets() for c in right.collections}
    oom = metric(cpu_a, status="oom")
    infeasible = metric(cpu_a, status="infeasible")
    np.testing.assert_allclose(by_gid["oom"], [[128, oom.metrics["est_mem_bytes"] / GiB]])
    np.testing.assert_allclose(by_gid["infeasible"],
                               [[8, infeasible.metrics["est_mem_bytes"] / GiB]])
    left_oom = {c.get_gid(): c.get_offsets() for c in left.collections}["oom"]
    params = oom.metrics["params_dense"] + oom.metrics["params_embedding"]
    np.testing.assert_allclose(left_oom, [[params, oom.metrics["est_mem_bytes"] / GiB]])
    # ok points at their host RSS (no device counter on a CPU); crashed/skipped not drawn
    tiny = metric(cpu_a, framework="torch", preset="tiny", precision="fp32", batch_size=8)
    assert series_lines(right)["tiny fp32"][0, 1] == pytest.approx(
        tiny.metrics["peak_host_rss_bytes"] / GiB)
    assert set(by_gid) == {"oom", "infeasible"}
    texts = legend_texts(fig)
    # measured (oom) and predicted (infeasible, not run) frontier points are told apart
    assert "oom (measured OOM; at analytic estimate)" in texts
    assert "infeasible (predicted, not run; at analytic estimate)" in texts
    assert "capacity: 0.4 GiB host RAM" in texts
    assert "GiB" in left.get_ylabel() and "parameters" in left.get_xlabel()


def test_gpu_memory_uses_the_device_counter_and_gpu_capacity(gpu_b) -> None:
    fig = plots.memory_figure(panel([gpu_b], device="cuda"))
    right = fig.axes[1]
    caps = [ln.get_ydata()[0] for ln in right.get_lines() if ln.get_gid() == "capacity"]
    assert caps == [pytest.approx(141.0)]
    rec = metric(gpu_b, device="cuda", preset="small", batch_size=2048)
    assert series_lines(right)["small fp32"][-1, 1] == pytest.approx(
        rec.metrics["peak_device_mem_bytes"] / GiB)
    assert "NVIDIA H200 memory" in " ".join(legend_texts(fig))


def test_two_machines_overlay_one_colour_each(cpu_a, gpu_b) -> None:
    items = panel([cpu_a, gpu_b])
    fig = plots.throughput_figure(items)
    ax = fig.axes[0]
    colours = {ln.get_label(): ln.get_color() for ln in ax.get_lines() if ln.get_gid() == "series"}
    assert colours["cpu-box-a: tiny fp32"] == colours["cpu-box-a: small fp32"]
    assert colours["gpu-box-b: tiny fp32"] != colours["cpu-box-a: tiny fp32"]
    # matched by configuration: both machines' tiny fp32 lines share batch sizes 8, 32, 128
    lines = series_lines(ax)
    assert set(lines["gpu-box-b: tiny fp32"][:, 0]) <= set(lines["cpu-box-a: tiny fp32"][:, 0])
    assert "cpu-box-a" in fig.get_suptitle() and "gpu-box-b" in fig.get_suptitle()
    mem = plots.memory_figure(items)
    caps = sorted(ln.get_ydata()[0] for ln in mem.axes[0].get_lines()
                  if ln.get_gid() == "capacity")
    assert caps == [pytest.approx(400 * MiB / GiB), pytest.approx(64.0)]


def test_two_runs_of_one_machine_are_two_sources(tmp_path: Path) -> None:
    lines = (FIX / "single.jsonl").read_text().splitlines()
    header = json.loads(lines[0])
    other = tmp_path / "other.jsonl"
    other.write_text(json.dumps({**header, "run_id": "run-2"}) + "\n" + lines[1] + "\n")
    fig = plots.throughput_figure(entries([load(FIX / "single.jsonl"), load(other)]))
    assert set(series_lines(fig.axes[0])) == {f"single-box / {header['run_id']}: tiny",
                                              "single-box / run-2: tiny"}


def test_utilization_in_percent(cpu_a) -> None:
    fig = plots.utilization_figure(panel([cpu_a]))
    rec = metric(cpu_a, framework="torch", preset="small", batch_size=32)
    assert series_lines(fig.axes[0])["small fp32"][-1, 1] == pytest.approx(
        100 * rec.metrics["utilization"])
    assert "%" in fig.axes[0].get_ylabel()


def test_roofline_roofs_from_the_header(gpu_b) -> None:
    fig = plots.roofline_figure(panel([gpu_b], device="cuda"))
    ax = fig.axes[0]
    roofs = {ln.get_label(): ln.get_xydata() for ln in ax.get_lines() if ln.get_gid() == "roof"}
    assert set(roofs) == {"fp32 roof: 400TFLOP/s, 3.64 TiB/s", "bf16 roof: 800TFLOP/s, 3.64 TiB/s"}
    fp32 = roofs["fp32 roof: 400TFLOP/s, 3.64 TiB/s"]
    assert ax.get_ylabel() == "achieved (TFLOP/s)"
    assert fp32[:, 1].max() == pytest.approx(400)  # the compute roof, in TFLOP/s
    assert fp32[0, 1] == pytest.approx(4e12 * fp32[0, 0] / 1e12)  # bandwidth slope left of it
    rec = metric(gpu_b, device="cuda", preset="tiny", precision="fp32", batch_size=8)
    ai = rec.metrics["flops_per_step"] / rec.metrics["bytes_per_step"]
    offsets = np.concatenate([c.get_offsets() for c in ax.collections])
    assert any(np.allclose(o, [ai, rec.metrics["achieved_flops_per_s"] / 1e12]) for o in offsets)


def test_energy_only_where_measured_or_estimated(cpu_a) -> None:
    fig = plots.energy_figure(panel([cpu_a]))
    lines = series_lines(fig.axes[0])
    # bf16 points have energy_provenance "unavailable": not drawn
    assert set(lines) == {"tiny [measured-counter]", "small [measured-counter]"}
    rec = metric(cpu_a, framework="torch", preset="tiny", precision="fp32", batch_size=8)
    assert lines["tiny [measured-counter]"][0, 1] == rec.metrics["energy_j_per_1k_recs"]
    est = plots.energy_figure(panel([cpu_a], framework="jax"))
    [line] = [ln for ln in est.axes[0].get_lines() if ln.get_gid() == "series"]
    assert line.get_label() == "tiny [estimated]" and line.get_linestyle() == ":"
    assert plots.energy_figure(panel([load(FIX / "single.jsonl")])) is None


def test_precision_and_framework_ratios(cpu_a) -> None:
    fig = plots.precision_figure(panel([cpu_a]))
    [(label, xy)] = series_lines(fig.axes[0]).items()
    assert label == "tiny bf16"
    fp32 = [metric(cpu_a, framework="torch", preset="tiny", precision="fp32", batch_size=b)
            for b in (8, 32, 128)]
    bf16 = [metric(cpu_a, framework="torch", preset="tiny", precision="bf16", batch_size=b)
            for b in (8, 32, 128)]
    np.testing.assert_allclose(xy, [(r.point["batch_size"], r.metrics["samples_per_s"]
                                     / f.metrics["samples_per_s"]) for r, f in zip(bf16, fp32)])
    frameworks = [e for e in entries([cpu_a]) if panel_of(e)[::2] == ("cpu", "train")]
    fig = plots.framework_figure(frameworks)
    xy = series_lines(fig.axes[0])["tiny torch (eager) / jax (jit)"]  # only fp32 has both
    jax = [metric(cpu_a, framework="jax", precision="fp32", batch_size=b) for b in (8, 32, 128)]
    np.testing.assert_allclose(xy[:, 1], [f.metrics["samples_per_s"] / j.metrics["samples_per_s"]
                                          for f, j in zip(fp32, jax)])
    assert [ln.get_ydata()[0] for ln in fig.axes[0].get_lines() if ln.get_gid() == "parity"] == [1]
    assert "torch vs jax (jit) throughput: train on cpu" in fig.get_suptitle()
    assert "jax (jit) (= 1x)" in legend_texts(fig)


def _as_mode(file, mode, framework="torch"):
    """`file`'s records of `framework`, each as if its step ran in torch.compile `mode`, and
    with twice the throughput."""
    return [dataclasses.replace(r, point={**r.point, "compile": mode},
                                metrics={**r.metrics, "samples_per_s":
                                         2 * r.metrics["samples_per_s"]})
            for r in file.records if r.ok and r.point["framework"] == framework]


def test_every_framework_comparison_names_the_mode_of_each_side(cpu_a) -> None:
    both = dataclasses.replace(cpu_a, records=[*cpu_a.records, *_as_mode(cpu_a,
                                                                         "reduce-overhead")])
    frameworks = [e for e in entries([both]) if panel_of(e)[::2] == ("cpu", "train")]
    fig = plots.framework_figure(frameworks)
    lines = series_lines(fig.axes[0])
    assert set(lines) == {"tiny torch (eager) / jax (jit)",
                          "tiny torch (reduce-overhead) / jax (jit)"}
    np.testing.assert_allclose(lines["tiny torch (reduce-overhead) / jax (jit)"][:, 1],
                               2 * lines["tiny torch (eager) / jax (jit)"][:, 1])
    # a torch panel with two modes: its legend names the mode of each line
    fig = plots.throughput_figure(panel([both]))
    assert {"tiny fp32 torch (eager)", "tiny fp32 torch (reduce-overhead)"} <= set(
        series_lines(fig.axes[0]))


def test_single_point_gives_the_figures_that_make_sense() -> None:
    items = entries([load(FIX / "single.jsonl")])
    fig = plots.throughput_figure(items)
    [(label, xy)] = series_lines(fig.axes[0]).items()
    assert label == "tiny" and xy.tolist() == [[16, items[0].metric("samples_per_s")]]
    assert plots.precision_figure(items) is None and plots.framework_figure(items) is None
    assert [ln for ln in fig.axes[0].get_lines() if ln.get_gid() == "knee"] == []


def test_only_failed_points_draw_just_the_memory_figure() -> None:
    figs = list(plots.iter_figures([load(FIX / "no_ok.jsonl")]))
    assert [f.kind for f in figs] == ["memory"]
    oom = {c.get_gid(): c.get_offsets() for c in figs[0].figure.axes[1].collections}["oom"]
    assert oom[0, 0] == 64


# --- plot_all, the CLI and bad input ------------------------------------------------------


def test_plot_all_writes_every_figure(tmp_path: Path, cpu_a, gpu_b) -> None:
    paths = plots.plot_all([cpu_a, gpu_b], tmp_path)
    names = {p.name for p in paths}
    for kind in ("throughput", "latency", "memory", "utilization", "roofline", "energy",
                 "precision"):
        assert f"cpu-torch-train-{kind}.png" in names and f"cuda-torch-train-{kind}.png" in names
    assert "cpu-train-frameworks.png" in names
    assert "cpu-jax-train-precision.png" not in names  # no jax bf16 point to pair with
    assert "cuda-train-frameworks.png" not in names  # no jax on cuda
    for p in paths:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 5000


def test_plot_all_svg(tmp_path: Path) -> None:
    paths = plots.plot_all([FIX / "single.jsonl"], tmp_path, svg=True)
    svgs = [p for p in paths if p.suffix == ".svg"]
    assert svgs and len(svgs) * 2 == len(paths)
    assert all(b"<svg" in p.read_bytes()[:1000] for p in svgs)


def test_cli_plot(tmp_path: Path, capsys) -> None:
    assert main(["plot", str(FIX / "single.jsonl"), "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out.split()
    assert out and all(Path(p).is_file() and Path(p).parent == tmp_path for p in out)


def _bad(tmp_path: Path) -> dict[str, Path]:
    header = json.loads((FIX / "single.jsonl").read_text().splitlines()[0])
    point = (FIX / "single.jsonl").read_text().splitlines()[1]
    (tmp_path / "empty").mkdir()
    newer = tmp_path / "newer.jsonl"
    newer.write_text(json.dumps({**header, "schema_version": 99}) + "\n" + point + "\n")
    corrupt = tmp_path / "corrupt.jsonl"
    corrupt.write_text(json.dumps(header) + "\n{not json\n" + point + "\n")
    return {"empty directory": tmp_path / "empty", "missing": tmp_path / "nope.jsonl",
            "newer schema": newer, "corrupt": corrupt, "no ok records": FIX / "no_ok.jsonl"}


@pytest.mark.parametrize("case", ["empty directory", "missing", "newer schema", "corrupt",
                                  "no ok records"])
def test_bad_input_is_one_line_and_exit_2(tmp_path: Path, capsys, case: str) -> None:
    path = _bad(tmp_path)[case]
    with pytest.raises(InputError):
        plots.plot_all([path, FIX / "single.jsonl"] if case == "newer schema" else [path],
                       tmp_path / "out")
    assert main(["plot", str(path), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("recbench plot: error:") and "\n" not in err and "Traceback" not in err


def test_unwritable_figure_file_is_one_line_and_exit_2(tmp_path: Path, capsys) -> None:
    """A figure that cannot be written (read-only --out, full disk; here a directory in the
    way, since tests run as root) is an InputError, not a traceback."""
    first = next(plots.iter_figures([load(FIX / "single.jsonl")])).name
    (tmp_path / f"{first}.png").mkdir()
    assert main(["plot", str(FIX / "single.jsonl"), "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert "cannot write" in err and "\n" not in err and "Traceback" not in err
