"""What the hardware cannot do is found out, not crashed into: a tiny probe step decides
whether a failing point's kind of step runs on the device at all."""

from typing import ClassVar

import pytest

from bench import results as R
from bench.launch import runner
from bench.point import Point
from bench.scenarios import step
from bench.suites.suite import load_suite
from tests.launch.test_runner import RUN_ENV, write_suite


def lstm_fp16_runs_here() -> str | None:
    """Ground truth for this CPU: oneDNN's LSTM under fp16 autocast, run directly."""
    import torch

    lstm = torch.nn.LSTM(8, 8, batch_first=True)
    try:
        with torch.autocast("cpu", dtype=torch.float16):
            lstm(torch.randn(2, 4, 8))
    except RuntimeError as e:
        return str(e)
    return None


def test_a_failing_tiny_step_is_the_reason_and_a_passing_one_is_none(monkeypatch):
    point = Point(framework="torch", workload="train", preset="small", block="hstu",
                  precision="bf16", device="cpu", batch_size=256)
    assert step.probe(point) is None  # runs here: the probe says nothing
    built = []

    def broken_build(p, caps=None):
        built.append(p)
        raise RuntimeError("could not create a primitive descriptor for the HSTU primitive\n"
                           "second line")

    monkeypatch.setattr(step, "build", broken_build)
    reason = step.probe(point)
    assert "hstu in bf16 on cpu" in reason and "a tiny probe step failed" in reason
    assert "primitive descriptor" in reason and "second line" not in reason
    (tiny,) = built  # the probe is tiny whatever the point's size
    assert (tiny.preset, tiny.batch_size, tiny.seq_len, tiny.catalog_size) == ("tiny", 2, 4, 16)
    assert step.probe_key(tiny) == step.probe_key(point)
    # the support table answers first, without building anything
    int8_train = Point(**{**point.to_dict(), "precision": "int8"})
    assert "CPU inference only" in step.probe(int8_train) and len(built) == 1


def test_the_real_probe_agrees_with_this_cpu():
    truth = lstm_fp16_runs_here()
    for workload in ("train", "infer"):
        reason = step.probe(Point(framework="torch", workload=workload, preset="tiny",
                                  block="lstm", precision="fp16", device="cpu", batch_size=8))
        print(workload, reason)
        if truth is None:
            assert reason is None
        else:
            assert "lstm in fp16 on cpu" in reason and truth.splitlines()[0][:60] in reason


GRID = """
[[grid]]
framework = ["torch"]
workload = ["infer"]
preset = ["tiny"]
block = ["lstm", "sasrec"]
catalog_size = [500]
seq_len = [8]
batch_size = [2, 4]
precision = ["fp32"]
"""


class ErrorWorker:
    """A worker whose lstm points fail (as a missing kernel would) and sasrec points run."""

    requested: ClassVar[list[str]] = []

    def __init__(self, framework, env=None, cap=None):
        pass

    def request(self, msg, timeout_s):
        point = Point.from_dict(msg["point"])
        ErrorWorker.requested.append(point.label())
        if point.block == "lstm":
            return {"status": "error", "reason": "RuntimeError: no LSTM kernel"}
        return {"status": "ok", "samples_ms": [1.0] * 3,
                "metrics": {"step_ms": {"median": 1.0, "n": 3}, "samples_per_s": 1e3,
                            "achieved_flops_per_s": 1e9, "achieved_bytes_per_s": 1e9}}

    def close(self):
        pass

    kill = close


@pytest.mark.parametrize("probe_fails", [True, False])
def test_the_runner_probes_only_after_a_failure_and_remembers_the_verdict(
        tmp_path, monkeypatch, probe_fails):
    probed = []

    def fake_probe(point, cap=None, timeout_s=300.0):
        probed.append(step.probe_key(point))
        return "torch cannot run lstm here (a tiny probe step failed: ...)" if probe_fails \
            else None

    monkeypatch.setattr(runner, "Worker", ErrorWorker)
    monkeypatch.setattr(runner, "probe_in_worker", fake_probe)
    ErrorWorker.requested = []
    suite = load_suite(write_suite(tmp_path, GRID))
    out = runner.run_suite(suite, out_dir=tmp_path / "out", env=RUN_ENV, roofs={},
                           log=lambda s: None)
    recs = {Point.from_dict(r.point).label(): r for r in R.load(out.path).records}
    lstm = [r for label, r in recs.items() if "/lstm" in label]
    sasrec = [r for label, r in recs.items() if "/sasrec" in label]
    assert all(r.status == "ok" for r in sasrec)
    if probe_fails:
        assert probed == [("torch", "cpu", "lstm", "fp32", "infer")]  # once for the kind
        assert [r.status for r in lstm] == ["unsupported", "unsupported"]
        assert all("tiny probe step failed" in r.reason for r in lstm)
        assert lstm[0].extra["point_failure"] == "RuntimeError: no LSTM kernel"
        assert sum("/lstm" in x for x in ErrorWorker.requested) == 1  # B=4 never ran
    else:  # the tiny step runs: the failure is the point's own
        assert [r.status for r in lstm] == ["error", "error"] and len(probed) == 2


def test_train_refuses_what_this_cpu_cannot_run_in_one_line(capsys):
    from bench.cli import main

    truth = lstm_fp16_runs_here()
    if truth is None:
        pytest.skip("this CPU runs an fp16 LSTM: nothing to refuse")
    rc = main(["train", "--block", "lstm", "--precision", "fp16", "--epochs", "1", "--json"])
    out, err = capsys.readouterr()
    errors = [s for s in err.splitlines() if "error:" in s]
    assert rc == 2 and out == "" and "Traceback" not in err
    assert len(errors) == 1 and "lstm in fp16 on cpu" in errors[0]
    assert "choose another --precision or --block" in errors[0]


def test_jax_platforms_without_the_points_device_is_the_unsupported_reason(monkeypatch):
    """JAX_PLATFORMS=cuda on a point for the CPU: jax has no such device, and the record says
    that JAX_PLATFORMS is why (not that jax cannot run the step on the CPU)."""
    import jax

    from bench.launch.worker import measure_point
    from bench.point import Measure

    jax.devices()  # jax started here first: JAX_PLATFORMS is read when its backends start
    monkeypatch.setenv("JAX_PLATFORMS", "cuda")
    point = Point(framework="jax", workload="infer", preset="tiny", catalog_size=500,
                  seq_len=8, batch_size=4, precision="fp32", device="cpu")
    with pytest.raises(step.Unsupported, match=r"^JAX_PLATFORMS='cuda' does not list cpu"):
        step.device_caps("jax", "cpu")
    rec = measure_point(point, Measure(warmup_iters=1, min_time_s=0.0, min_iters=3,
                                       max_iters=3, max_time_s=5.0))
    assert rec["status"] == "unsupported"
    assert rec["reason"].startswith("JAX_PLATFORMS='cuda' does not list cpu, so jax has no cpu "
                                    "device: unset JAX_PLATFORMS")
    assert step.probe(point) == rec["reason"]  # the reason as it is, not "a probe step failed"
    torch_point = Point(**{**point.to_dict(), "framework": "torch"})
    assert step.probe(torch_point) is None  # torch does not read it


def test_jax_platforms_jax_cannot_start_is_named(monkeypatch):
    import jax

    if any(d.platform == "gpu" for d in jax.devices()):
        pytest.skip("a GPU is here")
    monkeypatch.setenv("JAX_PLATFORMS", "cuda")
    with pytest.raises(step.Unsupported, match=r"^JAX_PLATFORMS='cuda': jax could not start the "
                                               r"platforms it lists \(RuntimeError: "):
        step.device_caps("jax", "cuda")
