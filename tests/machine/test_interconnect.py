"""The interconnect roof: nccl-tests' bus-bandwidth arithmetic, and real 2-rank torchrun launches
of the torch (gloo) and JAX (gloo CPU collectives) measurements."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from bench.launch.dist import free_port_pair
from bench.machine.interconnect import (
    DEFAULT_SIZES,
    MiB,
    _counts,
    _elements,
    bus_bandwidth,
    format_interconnect,
    launch_argv,
)

REPO = Path(__file__).resolve().parents[2]


def test_busbw_all_reduce_by_hand() -> None:
    # 1 MiB in 1 ms across 4 ranks: algbw 1,048,576,000 B/s; x 2*3/4 = 1.5 -> 1,572,864,000
    algbw, busbw = bus_bandwidth("all_reduce", MiB, 1e-3, 4)
    assert algbw == pytest.approx(1_048_576_000.0, rel=1e-12)
    assert busbw == pytest.approx(1_572_864_000.0, rel=1e-12)
    # nccl-tests' factor for 8 ranks is 2*7/8 = 1.75; for 2 ranks it is 1 (busbw == algbw)
    a8, b8 = bus_bandwidth("all_reduce", 8000, 2e-6, 8)
    assert a8 == pytest.approx(4e9) and b8 == pytest.approx(7e9)
    a2, b2 = bus_bandwidth("all_reduce", 4096, 1e-4, 2)
    assert b2 == a2 == pytest.approx(40_960_000.0)
    assert bus_bandwidth("all_reduce", 4096, 1e-4, 1)[1] == 0.0  # one rank moves nothing


def test_busbw_all_to_all_by_hand() -> None:
    # (n-1)/n: 8 ranks -> 7/8; 2 ranks -> 1/2
    a8, b8 = bus_bandwidth("all_to_all", 8000, 2e-6, 8)
    assert a8 == pytest.approx(4e9) and b8 == pytest.approx(3.5e9)
    a2, b2 = bus_bandwidth("all_to_all", 65536, 0.5e-3, 2)
    assert a2 == pytest.approx(131_072_000.0) and b2 == pytest.approx(65_536_000.0)


@pytest.mark.parametrize("args", [
    ("broadcast", 4096, 1e-3, 2), ("all_reduce", 0, 1e-3, 2), ("all_reduce", 4096, 0.0, 2),
    ("all_reduce", 4096, float("nan"), 2), ("all_reduce", 4096, 1e-3, 0),
    ("all_to_all", 4096, 1e-3, 2.0), ("all_to_all", -1, 1e-3, 2),
])
def test_busbw_refuses_bad_input(args: tuple) -> None:
    with pytest.raises(ValueError):
        bus_bandwidth(*args)


def test_sizes_and_counts() -> None:
    assert DEFAULT_SIZES[0] == 4096 and DEFAULT_SIZES[-1] == 64 * MiB and len(DEFAULT_SIZES) == 8
    assert _counts(4 * MiB, 5, 20) == (5, 20)
    assert _counts(16 * MiB, 5, 20) == (1, 5)
    assert _counts(64 * MiB, 5, 20) == (1, 3)  # never fewer than 3 timed calls
    assert _elements("all_to_all", 4100, 3) == 1023  # 1025 floats rounded down to 3 | m
    assert _elements("all_reduce", 4100, 3) == 1025


def test_launch_argv_is_torchrun() -> None:
    argv = launch_argv("jax", 2, 29555, "/tmp/x.json", [4096], iters=3)
    assert argv[1:] == ["-m", "torch.distributed.run", "--nproc-per-node", "2",
                        "--master-port", "29555", "-m", "bench.machine.interconnect",
                        "--framework", "jax", "--out", "/tmp/x.json", "--sizes", "4096",
                        "--iters", "3"]
    with pytest.raises(ValueError):
        launch_argv("tf", 2, 29555, "/tmp/x.json")


def test_format_says_loopback_and_unsupported() -> None:
    row = {"bytes": 64 * MiB, "time_us": 50_000.0, "algbw_bytes_per_s": 1.34e9,
           "busbw_bytes_per_s": 1.34e9}
    small = {**row, "bytes": 4096, "time_us": 300.0, "busbw_bytes_per_s": 1.4e7}
    result = {"backend": "gloo", "framework": "torch", "world_size": 2,
              "transport": "loopback (one host)",
              "ops": {"all_reduce": [small, row], "all_to_all": {"unsupported": "no gloo"}}}
    lines = format_interconnect(result)
    assert "gloo, 2 ranks, loopback (one host)" in lines[0]
    assert "not a network" in lines[1]
    assert lines[2] == ("  all-reduce busbw: 1.34 GB/s at 64 MiB, peak 1.34 GB/s at 64 MiB; "
                        "300 us per op at 4 KiB")
    assert lines[3] == "  all-to-all: unsupported (no gloo)"




@pytest.mark.dist
@pytest.mark.parametrize("framework", ["torch", "jax"])
def test_two_rank_launch(framework: str, tmp_path: Path) -> None:
    out = tmp_path / "ic.json"
    argv = launch_argv(framework, 2, free_port_pair(), out, [4096, 65536], warmup=1, iters=3)
    proc = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "not a network" in proc.stdout
    r = json.loads(out.read_text())
    assert r["framework"] == framework and r["backend"] == "gloo" and r["device"] == "cpu"
    assert r["world_size"] == 2 and r["nodes"] == 1 and r["transport"] == "loopback (one host)"
    assert set(r["ops"]) == {"all_reduce", "all_to_all"}
    n = r["world_size"]
    for op, factor in (("all_reduce", 2 * (n - 1) / n), ("all_to_all", (n - 1) / n)):
        rows = r["ops"][op]
        assert [row["bytes"] for row in rows] == [4096, 65536]
        for row in rows:
            assert row["time_us"] > 0 and (row["warmup"], row["iters"]) == (1, 3)
            assert row["algbw_bytes_per_s"] == pytest.approx(row["bytes"] / row["time_us"] * 1e6)
            assert row["busbw_bytes_per_s"] == row["algbw_bytes_per_s"] * factor
            if framework == "jax":
                assert row["compile_s"] > 0
        assert r["peak_busbw_bytes_per_s"][op] == max(x["busbw_bytes_per_s"] for x in rows)
    assert "nccl-tests" in r["method"] and "end" in r["load_average"]
    assert not list(tmp_path.glob(".*.tmp"))  # the atomic write left no temp file


@pytest.fixture
def one_rank_group():
    """A real one-process gloo group in this process (world size 1)."""
    import torch.distributed as dist

    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    yield dist
    dist.destroy_process_group()


def test_unsupported_collective_is_recorded(one_rank_group, monkeypatch) -> None:
    from bench.machine.interconnect import measure_torch

    def refuse(*a, **k):
        raise RuntimeError("ProcessGroupGloo does not support alltoall\nmore")

    monkeypatch.setattr(one_rank_group, "all_to_all_single", refuse)
    r = measure_torch([4096], warmup=0, iters=1)
    assert r["ops"]["all_to_all"] == {
        "unsupported": "RuntimeError: ProcessGroupGloo does not support alltoall"}
    assert r["peak_busbw_bytes_per_s"]["all_to_all"] is None
    (row,) = r["ops"]["all_reduce"]
    assert row["bytes"] == 4096 and row["busbw_bytes_per_s"] == 0.0  # 1 rank: 2(n-1)/n = 0


def test_wrong_values_raise(one_rank_group, monkeypatch) -> None:
    from bench.machine.interconnect import WrongValues, measure_torch

    monkeypatch.setattr(one_rank_group, "all_reduce", lambda t, **k: t.add_(1))
    with pytest.raises(WrongValues, match="all_reduce gave wrong values"):
        measure_torch([4096], warmup=0, iters=1)
