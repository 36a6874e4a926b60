"""Compile modes in the step scenario: compile_mode, compiled_graphs and recompiles in each
record, the recompile flag on the per-point line, and one real torch.compile of a tiny step."""

from __future__ import annotations

import io
from typing import ClassVar

import numpy as np
import pytest

import recmodels.train as T
from bench import results as R
from bench.launch.progress import Progress, describe_record, summary_table
from bench.launch.worker import measure_point
from bench.point import COMPILE_MODES, Measure, Point
from bench.scenarios.compiled import compile_metrics, recompile_flag
from bench.scenarios.step import DeviceCaps, support_reason
from bench.suites.suite import load_suite

MEASURE = Measure(warmup_iters=1, min_time_s=0.0, min_iters=3, max_iters=3, max_time_s=5.0)


def tiny_point(**kw) -> Point:
    base = dict(framework="torch", workload="train", preset="tiny", catalog_size=500,
                seq_len=8, batch_size=4, precision="fp32", device="cpu")
    return Point(**{**base, **kw})


class FakeEngine:
    """The Engine calls a train point makes, with a graph count that grows by ``grow`` from
    the ``grow_at``-th step on (a step that recompiles)."""

    framework = "torch"

    def __init__(self, grow_at: int | None = None, grow: int = 0):
        self.steps, self.grow_at, self.grow = 0, grow_at, grow
        self.modes: list[str] = []

    def compile(self, mode: str = "default") -> None:
        self.modes.append(mode)

    def compiled_graphs(self) -> int:
        if not self.modes:
            return 0
        late = self.grow_at is not None and self.steps >= self.grow_at
        return 2 + (self.grow if late else 0)  # the loss and the forward

    def put(self, batch):
        return batch

    def train_step(self, batch):
        self.steps += 1
        return np.float32(0.5)

    def sync(self, value=None):
        return value

    def all_finite(self) -> bool:
        return True


@pytest.fixture
def fake(monkeypatch):
    """make_engine returns the FakeEngine set on this fixture's list (a fresh one by default)."""
    made: list[FakeEngine] = []

    def make_engine(framework, cfg, **kw):
        assert kw.get("compile", "eager") == "eager"  # the mode comes from engine.compile
        engine = made[0] if made else FakeEngine()
        made.append(engine)
        return engine

    monkeypatch.setattr(T, "make_engine", make_engine)
    return made


def test_the_torch_modes_agree_with_the_engine():
    from recmodels.torch.engine import COMPILE_MODES as ENGINE_MODES

    assert COMPILE_MODES == ENGINE_MODES == T.COMPILE_MODES


def test_an_eager_point_compiles_nothing(fake):
    r = measure_point(tiny_point(), MEASURE)
    assert r["status"] == "ok"
    m = r["metrics"]
    assert (m["compile_mode"], m["compiled_graphs"], m["recompiles"]) == ("eager", 0, 0)
    assert fake[0].modes == [] and "cuda_graphs" not in m and recompile_flag(m) == {}


def test_a_compiled_point_records_its_mode_and_graphs(fake):
    r = measure_point(tiny_point(compile="default"), MEASURE)
    m = r["metrics"]
    assert fake[0].modes == ["default"]
    assert (m["compile_mode"], m["compiled_graphs"], m["recompiles"]) == ("default", 2, 0)
    assert m["cuda_graphs"] is False and "compile_note" not in m and recompile_flag(m) == {}


def test_a_step_that_recompiles_while_timed_is_counted_and_flagged(fake):
    # 1 compile step + 1 warm-up step, then 3 timed: the graphs grow by 3 at the 4th step
    fake.append(FakeEngine(grow_at=4, grow=3))
    r = measure_point(tiny_point(compile="reduce-overhead"), MEASURE)
    m = r["metrics"]
    assert r["status"] == "ok"  # it ran: the flag says what is wrong with its times
    assert (m["compiled_graphs"], m["recompiles"]) == (2, 3)
    assert recompile_flag(m) == {"recompiled": "recompiled 3 times during timing"}
    assert recompile_flag({"recompiles": 1}) == {"recompiled": "recompiled 1 time during timing"}
    assert recompile_flag({"recompiles": None}) == recompile_flag({}) == {}
    # on a CPU, reduce-overhead is inductor without CUDA graphs, and the record says so
    assert m["cuda_graphs"] is False and "without CUDA graphs" in m["compile_note"]


def test_the_runner_flags_a_recompiling_point_on_its_line_and_in_the_summary(tmp_path,
                                                                             monkeypatch):
    from bench.launch import runner

    class RecompilingWorker:
        replies: ClassVar[dict[str, int]] = {}

        def __init__(self, framework, env=None, cap=None):
            pass

        def request(self, msg, timeout_s):
            p = Point.from_dict(msg["point"])
            return {"status": "ok", "samples_ms": [1.0, 1.0, 1.0],
                    "metrics": {"step_ms": {"median": 1.0, "n": 3}, "samples_per_s": 1e3,
                                "achieved_flops_per_s": 1e9, "achieved_bytes_per_s": 1e9,
                                "compile_mode": p.compile, "compiled_graphs": 2,
                                "recompiles": 2 if p.batch_size == 8 else 0}}

        def close(self):
            pass

        kill = close

    monkeypatch.setattr(runner, "Worker", RecompilingWorker)
    path = tmp_path / "t.toml"
    path.write_text('[[grid]]\nframework = ["torch"]\nworkload = ["train"]\npreset = ["tiny"]\n'
                    'catalog_size = [500]\nseq_len = [8]\nbatch_size = [4, 8]\n'
                    'precision = ["fp32"]\ncompile = ["default"]\n')
    stream = io.StringIO()
    out = runner.run_suite(load_suite(path), out_dir=tmp_path / "out",
                           env={"machine_id": "m", "ram_bytes": 24 << 30, "gpus": []},
                           roofs={}, progress=Progress(2, stream, bar=False),
                           log=lambda s: None)
    recs = {r.point["batch_size"]: r for r in out.records}
    assert recs[8].ok and recs[8].flags["recompiled"] == "recompiled 2 times during timing"
    assert recs[4].ok and "recompiled" not in recs[4].flags
    lines = stream.getvalue().splitlines()
    assert "torch (default) train tiny" in lines[0] + lines[1]
    assert sum("recompiled 2 times during timing" in ln for ln in lines) == 1
    table = summary_table(out.records)
    assert "recompiled: torch (default) train tiny/sasrec C=500 T=8 B=8" in table
    (stored,) = [r for r in R.load(out.path).records if r.point["batch_size"] == 8]
    assert stored.flags == recs[8].flags and stored.point["compile"] == "default"


def test_describe_record_names_the_compile_note():
    rec = R.PointRecord.for_point(tiny_point(compile="reduce-overhead").to_dict(), "ok",
                                  metrics={"step_ms": {"median": 2.0, "n": 3},
                                           "samples_per_s": 2e3, "achieved_flops_per_s": 1e9,
                                           "compile_note": "reduce-overhead on cpu: TorchInductor"
                                                           " without CUDA graphs"},
                                  flags={"recompiled": "recompiled 1 time during timing"})
    text = describe_record(rec)
    assert "recompiled 1 time during timing" in text and "without CUDA graphs" in text


def test_compile_metrics_per_framework_device_and_mode():
    counts = {"graphs": 2, "cudagraph_skips": 0}
    jax = compile_metrics(tiny_point(framework="jax"), {"graphs": None}, {"graphs": None})
    assert jax == {"compile_mode": "jit", "compiled_graphs": None, "recompiles": None}
    gpu = compile_metrics(tiny_point(device="cuda", compile="reduce-overhead"), counts, counts)
    assert gpu["cuda_graphs"] is True and "compile_note" not in gpu
    skipped = compile_metrics(tiny_point(device="cuda", compile="reduce-overhead"), counts,
                              {"graphs": 2, "cudagraph_skips": 2})
    assert skipped["cuda_graphs"] is False and "2 graph(s) without CUDA graphs" in \
        skipped["compile_note"]
    plain = compile_metrics(tiny_point(device="cuda", compile="default"), counts, counts)
    assert plain["cuda_graphs"] is False and "compile_note" not in plain
    tuned = compile_metrics(tiny_point(compile="max-autotune"), counts, counts)
    assert "max-autotune on cpu" in tuned["compile_note"]


@pytest.mark.parametrize("mode", ["default", "reduce-overhead", "max-autotune", True])
def test_the_unsupported_rules_hold_for_every_compiled_mode(mode):
    cpu = DeviceCaps("cpu")
    assert "not compiled" in support_reason(tiny_point(workload="rank", compile=mode), cpu)
    assert "run eager" in support_reason(tiny_point(parallel="dp", world_size=2, compile=mode),
                                         cpu)
    lstm = tiny_point(workload="infer", block="lstm", precision="int8", compile=mode)
    assert "quantised LSTM" in support_reason(lstm, cpu)
    for eager in ("eager", False):  # eager is no compile at all
        assert support_reason(tiny_point(workload="rank", compile=eager), cpu) is None
        assert support_reason(Point(**{**lstm.to_dict(), "compile": eager}), cpu) is None


def test_a_real_compile_of_a_tiny_step_on_cpu():
    """torch.compile for real (one test: ~10-30 s): reduce-overhead on a CPU compiles with
    inductor, says it has no CUDA graphs, and a fixed-shape step does not recompile."""
    r = measure_point(tiny_point(compile="reduce-overhead"), MEASURE)
    assert r["status"] == "ok", r.get("reason")
    m = r["metrics"]
    assert m["compile_mode"] == "reduce-overhead" and m["compiled_graphs"] >= 1
    assert m["recompiles"] == 0 and m["compile_s"] > 0
    assert m["cuda_graphs"] is False and "without CUDA graphs" in m["compile_note"]
