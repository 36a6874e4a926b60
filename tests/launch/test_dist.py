"""Scale-out harness: the point fields, the launcher's pieces, rank 0's reply, scaling
efficiency, the figures. The multi-process runs are in tests/launch/test_dist_run.py."""

from pathlib import Path

import pytest

from bench.analysis.plotdata import entries
from bench.analysis.plots_scale import comm_figure, iter_scale_figures, scaling_figure
from bench.launch.derived import add_scaling, roof_devices
from bench.launch.dist import (
    Rendezvous,
    failure_summary,
    interconnect_jobs,
    own_failure,
    rank_env,
    rank_failures,
    torchrun_argv,
)
from bench.launch.rank import rank0_reply
from bench.point import Point, point_id
from bench.results import PointRecord, ResultsWriter, RunHeader, load
from bench.scenarios.distributed import Group, iterations_for, rank_rows
from bench.scenarios.step import DeviceCaps, analytic_cost, support_reason
from bench.suites.suite import parse_suite
from recmodels.errors import InputError


def dist_point(**kw) -> Point:
    base = dict(framework="torch", workload="train", preset="tiny", catalog_size=200,
                seq_len=8, batch_size=8, precision="fp32", device="cpu", parallel="dp",
                world_size=2)
    return Point(**{**base, **kw})


def test_point_fields_validate_and_keep_old_ids():
    one = Point(framework="torch", workload="train", preset="tiny", batch_size=8,
                precision="fp32", device="cpu")
    d = one.to_dict()
    # an id written before the scale-out fields existed is unchanged
    old = {k: v for k, v in d.items() if k not in ("world_size", "nodes", "parallel",
                                                    "sharding", "scaling")}
    assert one.id == point_id(old)
    with pytest.raises(InputError, match="need a parallel strategy"):
        Point(**{**d, "world_size": 2})
    with pytest.raises(InputError, match="need a parallel strategy"):
        Point(**{**d, "sharding": "row-wise"})
    with pytest.raises(InputError, match="one device per rank"):
        dist_point(device="cuda:all")
    with pytest.raises(InputError, match="does not split over 2 nodes"):
        dist_point(world_size=3, nodes=2)
    with pytest.raises(InputError, match="unknown parallel 'ddp'"):
        dist_point(parallel="ddp")
    weak = dist_point(scaling="weak")
    assert weak.global_batch == 16 and dist_point().global_batch == 8
    # on one rank strong and weak are the same work: one point
    assert dist_point(world_size=1, scaling="weak") == dist_point(world_size=1)
    assert weak.scaling_baseline() == dist_point(world_size=1)
    assert "dp W=2" in weak.label() and "weak" in weak.label()


def test_suite_axes_and_dedupe():
    raw = {"grid": [{"framework": ["torch"], "workload": ["train"], "preset": ["tiny"],
                     "batch_size": [8], "precision": ["fp32"], "parallel": ["dp"],
                     "world_size": [1, 2], "scaling": ["strong", "weak"],
                     "sharding": ["dense", "row-wise"]}]}
    suite = parse_suite(raw, source="t")
    # world 1: strong == weak, so 2 shardings x (1 + 2) scalings
    assert len(suite.points) == 6
    order = [(p.sharding, p.world_size) for p in suite.points]
    for sharding in ("dense", "row-wise"):  # the 1-rank baseline runs before its W=2 points
        ws = [w for s, w in order if s == sharding]
        assert ws[0] == 1
    bad = {"grid": [{**raw["grid"][0], "parallel": ["none"]}]}
    with pytest.raises(InputError, match=r"grid\[0\].*parallel strategy"):
        parse_suite(bad, source="t")


def test_support_reasons_before_launch():
    cpu = DeviceCaps("cpu", count=2)
    assert "train step" in support_reason(dist_point(workload="infer"), cpu)
    assert "does not split evenly" in support_reason(dist_point(batch_size=7), cpu)
    assert "FSDP2" in support_reason(dist_point(framework="jax", parallel="fsdp"), cpu)
    assert "int8" in support_reason(dist_point(precision="int8"), cpu)


def test_rendezvous_parse_and_env():
    assert Rendezvous.parse(1, 0, None) == Rendezvous()
    r = Rendezvous.parse(2, 1, "node0.example:29500")
    assert (r.nnodes, r.node_rank, r.host, r.port) == (2, 1, "node0.example", 29500)
    assert Rendezvous.from_env(r.to_env()) == r
    assert Rendezvous.from_env("") == Rendezvous()
    with pytest.raises(InputError, match="--rdzv-endpoint"):
        Rendezvous.parse(2, 0, "host:99999")
    with pytest.raises(InputError, match="--node-rank 2"):
        Rendezvous.parse(2, 2, "h:1")
    with pytest.raises(InputError, match="--nnodes 2 needs --rdzv-endpoint"):
        Rendezvous.parse(2, 0, None)
    with pytest.raises(InputError, match="--nnodes 0: the hosts"):
        Rendezvous.parse(0, 0, None)
    with pytest.raises(InputError, match="add --nnodes"):
        Rendezvous.parse(1, 0, "h:1")
    argv = torchrun_argv(["-m", "x"], nproc_per_node=4, rdzv=r, port=29500)
    assert argv[1:3] == ["-m", "torch.distributed.run"]
    assert "--nnodes=2" in argv and "--node-rank=1" in argv and "--max-restarts=0" in argv
    assert "--master-addr=node0.example" in argv and argv[-2:] == ["-m", "x"]


def test_rank_env_splits_cores(monkeypatch):
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(range(8)))
    monkeypatch.setenv("RECBENCH_PARENT_PID", "1")
    env = rank_env(dist_point(), 2)
    assert env["OMP_NUM_THREADS"] == "4" and "RECBENCH_PARENT_PID" not in env
    assert rank_env(dist_point(world_size=1), 1)["OMP_NUM_THREADS"] == "8"


TORCHRUN_LOG = """
torch.distributed.elastic.multiprocessing.errors.ChildFailedError:
============================================================
bench.launch.rank FAILED
------------------------------------------------------------
Failures:
[1]:
  time      : 2026-12-05_02:26:09
  host      : localhost
  rank      : 0 (local_rank: 0)
  exitcode  : 1 (pid: 26456)
------------------------------------------------------------
Root Cause (first observed failure):
[0]:
  time      : 2026-12-05_02:26:09
  host      : localhost
  rank      : 1 (local_rank: 1)
  exitcode  : -9 (pid: 26457)
  error_file: <N/A>
============================================================
"""


def test_failure_summary_names_the_root_cause():
    assert failure_summary(TORCHRUN_LOG) == "rank 1 killed by signal SIGKILL"
    assert rank_failures(TORCHRUN_LOG) == {0: 1, 1: -9}
    stopped = TORCHRUN_LOG.replace("exitcode  : 1 (pid", "exitcode  : -15 (pid")
    assert failure_summary(stopped) == "rank 1 killed by signal SIGKILL"  # not the SIGTERM
    # JAX's survivor outlived the SIGTERM and got SIGKILL too: the root cause is rank 1
    both = TORCHRUN_LOG.replace("exitcode  : 1 (pid", "exitcode  : -9 (pid")
    assert failure_summary(both) == "rank 1 killed by signal SIGKILL"
    lost = {0: {"status": "error", "reason": "RuntimeError: Connection reset by peer"}}
    assert own_failure(lost, {0: 1, 1: -9}) is None  # rank 1 was killed: crashed, not error
    oom = {1: {"status": "oom", "reason": "MemoryError"}}
    assert own_failure({**lost, **oom}, {0: 1, 1: 1})["reason"] == "rank 1: MemoryError"
    assert own_failure(lost, {0: 1, 1: 1})["status"] == "error"  # nothing better known
    assert "did not attribute" in failure_summary("Traceback: nothing useful")
    assert failure_summary("Root Cause\n rank : 3\n exitcode : 2") == "rank 3 exited with status 2"


def test_iterations_agree_within_bounds():
    assert iterations_for(10.0, 1.0, 5, 1000, 30.0) == 100
    assert iterations_for(1000.0, 1.0, 5, 1000, 30.0) == 5  # min_iters
    assert iterations_for(0.01, 1.0, 5, 50, 30.0) == 50  # max_iters
    assert iterations_for(10_000.0, 1.0, 5, 1000, 30.0) == 3  # max_time_s caps min_iters


def test_rank_rows_are_contiguous_shares():
    batch = {"seq": [[i] for i in range(8)], "pos": list(range(8))}
    import numpy as np

    batch = {k: np.asarray(v) for k, v in batch.items()}
    assert rank_rows(batch, 1, 2)["pos"].tolist() == [4, 5, 6, 7]
    assert rank_rows(batch, 0, 4)["seq"].tolist() == [[0], [1]]


def test_group_exchange_on_one_rank():
    g = Group("torch", 0, 1)
    assert g.allgather_json({"a": [1, 2]}) == [{"a": [1, 2]}]
    assert g.broadcast_json(7) == 7


def test_rank0_reply_takes_the_slowest_rank():
    p = dist_point()
    ranks = [{"samples_ms": [10.0, 12.0, 11.0], "twin_ms": 6.0, "peak_host_rss_bytes": 100,
              "peak_device_mem_bytes": None, "compile_s": 1.0, "warmup_s": 0.1},
             {"samples_ms": [11.0, 10.0, 13.0], "twin_ms": 8.0, "peak_host_rss_bytes": 300,
              "peak_device_mem_bytes": None, "compile_s": 2.0, "warmup_s": 0.2}]
    reply = rank0_reply(p, ranks, analytic_cost(p), None, {})
    m = reply["metrics"]
    assert reply["samples_ms"] == [11.0, 12.0, 13.0]
    assert m["step_ms"]["median"] == 12.0
    assert m["samples_per_s"] == pytest.approx(8 / 0.012)
    assert m["samples_per_s_per_rank"] == pytest.approx(4 / 0.012)
    assert m["comm_share"] == pytest.approx(1 - 8.0 / 12.0)  # the slowest twin
    assert m["peak_host_rss_bytes"] == 300 and m["peak_host_rss_bytes_per_rank"] == [100, 300]
    assert m["peak_device_mem_bytes"] is None and m["compile_s"] == 2.0
    assert m["energy_provenance"] == "unavailable" and m["energy_j_per_step"] is None
    assert "estimate" in m["comm_share_method"]


def test_scaling_efficiency_against_the_one_rank_point():
    base = dist_point(world_size=1, device="cuda")
    m = {"samples_per_s": 150.0}
    add_scaling(m, dist_point(device="cuda"), {base.id: 100.0})
    assert m["speedup"] == pytest.approx(1.5) and m["scaling_efficiency"] == pytest.approx(0.75)
    weak = {"samples_per_s": 190.0}  # weak: the baseline has the per-rank batch
    add_scaling(weak, dist_point(scaling="weak", device="cuda"), {base.id: 100.0})
    assert weak["scaling_efficiency"] == pytest.approx(0.95)
    # two CPU ranks on one host share its cores: one device, the ideal is the baseline's
    cpu = {"samples_per_s": 96.0}
    add_scaling(cpu, dist_point(), {dist_point(world_size=1).id: 100.0})
    assert cpu["scaling_devices"] == 1 and cpu["scaling_efficiency"] == pytest.approx(0.96)
    assert "scaling_note" not in cpu
    shaky = {"samples_per_s": 1000.0}
    add_scaling(shaky, dist_point(), {dist_point(world_size=1).id: 100.0},
                {dist_point(world_size=1).id})
    assert "baseline was flagged unstable" in shaky["scaling_note"]
    base = dist_point(world_size=1)
    none = {"samples_per_s": 150.0}
    add_scaling(none, dist_point(), {})
    assert none["scaling_efficiency"] is None and none["scaling_baseline_id"] == base.id
    untouched = {"samples_per_s": 1.0}
    add_scaling(untouched, base, {})
    assert "scaling_efficiency" not in untouched


def test_roof_devices_and_memory_estimate_per_rank():
    env = {"gpus": [{}] * 8}
    assert roof_devices(dist_point(), env) == 1  # two CPU ranks share one host's roof
    assert roof_devices(dist_point(world_size=4, nodes=2), env) == 2
    assert roof_devices(dist_point(device="cuda", world_size=4), env) == 4
    big = dict(catalog_size=1_000_000, batch_size=64)
    dense = analytic_cost(dist_point(**big))["est_mem_bytes"]
    rows = analytic_cost(dist_point(**big, sharding="row-wise"))["est_mem_bytes"]
    assert rows < 0.7 * dense  # half the table's rows (and their Adam state) per rank
    assert analytic_cost(dist_point(scaling="weak"))["flops_per_step"] == \
        2 * analytic_cost(dist_point())["flops_per_step"]


def test_interconnect_jobs_from_points(monkeypatch):
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(range(4)))
    pts = [dist_point(), dist_point(world_size=4), dist_point(framework="jax"),
           dist_point(world_size=1), dist_point(world_size=4, nodes=2),
           dist_point(world_size=8), dist_point(framework="jax", parallel="fsdp", world_size=4),
           dist_point(device="cuda", world_size=4)]
    # 8 ranks on a 4-core host, 2 per node, JAX's FSDP, GPUs the env lacks: nothing to measure
    assert interconnect_jobs(pts, {"gpus": [{}, {}]}) == {("torch", "cpu"): 4,
                                                          ("jax", "cpu"): 2}


def _rec(point: Point, thr: float | None, status: str = "ok", **metrics) -> PointRecord:
    m = {"samples_per_s": thr, "step_ms": {"median": 1.0}, **metrics}
    return PointRecord.for_point(point.to_dict(), status, None if status == "ok" else "x",
                                 metrics=m if status == "ok" else {})


def _results(tmp_path: Path, records, interconnect=None) -> Path:
    header = RunHeader("r-1", "hand", "2026-12-01T00:00:00Z", {"machine_id": "box"}, {},
                       extra={"interconnect": interconnect or {}})
    with ResultsWriter.create(tmp_path, "box", header.run_id, header) as w:
        for r in records:
            w.write(r)
    return w.path


BUSBW = {"torch/cpu/2": {
    "framework": "torch", "backend": "gloo", "device": "cpu", "world_size": 2,
    "transport": "loopback (one host)",
    "ops": {"all_reduce": [{"bytes": 4096, "busbw_bytes_per_s": 1e7},
                           {"bytes": 65536, "busbw_bytes_per_s": 1e8}],
            "all_to_all": {"unsupported": "gloo has no all_to_all here"}}}}


def test_scale_figures_from_records(tmp_path):
    recs = [_rec(dist_point(world_size=1), 100.0),
            _rec(dist_point(), 150.0, scaling_efficiency=0.75, comm_share=0.2),
            _rec(dist_point(scaling="weak"), 190.0, scaling_efficiency=0.95, comm_share=0.1),
            _rec(dist_point(world_size=4), None, status="crashed")]
    f = load(_results(tmp_path, recs, BUSBW))
    items = entries([f])
    fig = scaling_figure(items)
    assert fig is not None and len(fig.axes) == 2  # strong and weak panels
    strong = fig.axes[0]
    ideal = next(ln for ln in strong.get_lines() if ln.get_linestyle() == ":")
    assert list(ideal.get_ydata()) == [100.0, 100.0, 100.0]  # CPU ranks of one host
    gpu = [_rec(dist_point(world_size=w, device="cuda"), t) for w, t in ((1, 100.0), (2, 190.0))]
    (tmp_path / "gpu").mkdir()
    gfig = scaling_figure(entries([load(_results(tmp_path / "gpu", gpu))]))
    gideal = next(ln for ln in gfig.axes[0].get_lines() if ln.get_linestyle() == ":")
    assert list(gideal.get_ydata()) == [100.0, 200.0]  # one GPU per rank
    weak_line = next(ln for ln in fig.axes[1].get_lines() if ln.get_marker() == "o")
    assert list(weak_line.get_xdata()) == [1, 2]  # from the one-rank point it is held to
    crossed = [ln for ln in strong.get_lines() if ln.get_marker() == "x"]
    assert [list(ln.get_xdata()) for ln in crossed] == [[4]]
    comm = comm_figure(items)
    assert comm is not None
    names = [name for name, *_ in iter_scale_figures(items, [f])]
    assert names == ["cpu-torch-train-scaling", "cpu-torch-train-comm", "interconnect-cpu"]


def test_no_scale_figures_without_distributed_points(tmp_path):
    one = Point(framework="torch", workload="train", preset="tiny", batch_size=8,
                precision="fp32", device="cpu")
    f = load(_results(tmp_path, [_rec(one, 10.0)]))
    assert list(iter_scale_figures(entries([f]), [f])) == []


def test_report_scale_section(tmp_path):
    from bench.analysis.report import build_report
    from bench.analysis.report_scale import shards_needed

    env_header = {"machine_id": "box", "ram_bytes": 2**34, "gpus": []}
    header = RunHeader("r-2", "hand", "2026-12-01T00:00:00Z", env_header, {},
                       extra={"interconnect": {**BUSBW, "jax/cpu/2": {"reason": "timed out"}}})
    recs = [_rec(dist_point(world_size=1), 100.0),
            _rec(dist_point(), 150.0, scaling_efficiency=0.75, comm_share=0.2, speedup=1.5)]
    with ResultsWriter.create(tmp_path, "box", header.run_id, header) as w:
        for r in recs:
            w.write(r)
    page = build_report([w.path])
    assert "Scale-out" in page and "75%" in page and "20%" in page
    assert "not measured: timed out" in page and "all-reduce" in page
    assert "Catalogs that need a sharded item table" in page
    # 16 GiB of host RAM: tiny fits at 100k items; a billion-row Adam table needs shards
    p = dist_point(world_size=1, parallel="none")
    assert shards_needed(Point.from_dict({**p.to_dict(), "catalog_size": 10**5}), 2**34) == 1
    k = shards_needed(Point.from_dict({**p.to_dict(), "catalog_size": 10**9}), 2**34)
    assert k is not None and k >= 8


def test_agreed_samples_reach_min_time_in_rounds():
    from bench.launch.rank import agreed_samples
    from bench.meters import StepTimer
    from bench.point import Measure

    clock = [0]

    def fake_clock() -> int:
        return clock[0]

    def step():
        clock[0] += 40_000_000  # 40 ms a step
        return None

    timer = StepTimer(clock_ns=fake_clock)
    m = Measure(warmup_iters=1, min_time_s=1.0, min_iters=5, max_iters=100, max_time_s=10.0)
    # the warm-up said 100 ms a step: 10 steps agreed first, 0.4 s; then rounds to 1 s
    samples = agreed_samples(timer, step, lambda v: v, Group("torch", 0, 1), m, 100.0)
    assert sum(samples) >= 1000.0 and len(samples) == 25
    capped = Measure(warmup_iters=1, min_time_s=1.0, min_iters=5, max_iters=12, max_time_s=10.0)
    assert len(agreed_samples(timer, step, lambda v: v, Group("torch", 0, 1), capped,
                              100.0)) == 12
