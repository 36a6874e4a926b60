"""benchmarks/train_step.py's A/B plumbing: round order, ratio statistics, skipping what a side
cannot run, the compile-API detection (train_step_child.py), bad input; one short real A/B
against HEAD (slow)."""

import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
from scipy import stats

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "train_step.py"
_spec = importlib.util.spec_from_file_location("train_step_benchmark", SCRIPT)
ts = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(ts)
_child_spec = importlib.util.spec_from_file_location(
    "train_step_child_benchmark", SCRIPT.with_name("train_step_child.py"))
child = importlib.util.module_from_spec(_child_spec)
_child_spec.loader.exec_module(child)


class FakeSide:
    """A side answering the child protocol with planted step times (ms per round)."""

    must = ts.Side.must

    def __init__(self, name, log, ms=None, cannot=()):
        self.name, self.tree, self.log = name, Path(f"/fake/{name}"), log
        self.ms, self.cannot, self.rounds = ms or {}, cannot, {}

    def call(self, cmd, **kw):
        self.log.append((self.name, cmd, kw.get("variant")))
        if cmd == "build" and kw["variant"] in self.cannot:
            return {"ok": False, "unsupported": True, "reason": "takes no mode"}
        if cmd == "build":
            return {"ok": True, "warmup_s": 1.5, "warmup_steps": 3}
        if cmd == "time":
            v = kw["variant"]
            r = self.rounds[v] = self.rounds.get(v, -1) + 1
            return {"ok": True, "ms": [self.ms[v][r]] * kw["iters"],
                    "index": list(range(kw["iters"])), "recompiles": 0}
        return {"ok": True}


def test_rounds_run_in_abba_order_per_variant():
    log = []
    ms = {"a": [1.0] * 4, "b": [1.0] * 4}
    sides = {"base": FakeSide("base", log, ms), "new": FakeSide("new", log, ms)}
    ts.run_rounds(sides, "tiny-games", ["a", "b"], rounds=4, iters=2)
    order = [(s, v) for s, cmd, v in log if cmd == "time"]
    assert [s for s, v in order if v == "a"] == ["base", "new", "new", "base",
                                                 "base", "new", "new", "base"]
    assert order[:4] == [("base", "a"), ("new", "a"), ("base", "b"), ("new", "b")]
    assert [ts.abba(r) for r in range(3)] == [("base", "new"), ("new", "base"), ("base", "new")]


def test_no_base_times_the_working_tree_alone():
    log = []
    sides = {"new": FakeSide("new", log, {"a": [3.0, 4.0]})}
    res = ts.run_rounds(sides, "small-b64", ["a"], rounds=2, iters=3)
    assert res["a"]["new"]["samples_ms"] == [[3.0] * 3, [4.0] * 3]
    rows = ts.compare(res, flops=[6e9, 6e9, 6e9], roof=4e12)
    assert "speedup" not in rows["a"]
    assert rows["a"]["new"]["median_ms"] == 3.5


def test_speedup_is_base_over_new_per_round_with_a_t_interval_over_rounds():
    log = []
    base = FakeSide("base", log, {"torch": [20.0, 22.0, 18.0, 20.0]})
    new = FakeSide("new", log, {"torch": [10.0, 10.0, 10.0, 10.0]})
    res = ts.run_rounds({"base": base, "new": new}, "tiny-games", ["torch"], 4, 5)
    sp = ts.compare(res, flops=[1e9] * 5, roof=None)["torch"]["speedup"]
    assert sp["per_round"] == pytest.approx([2.0, 2.2, 1.8, 2.0])
    assert sp["median"] == pytest.approx(2.0) and sp["n"] == 4
    logs = [math.log(x) for x in (2.0, 2.2, 1.8, 2.0)]
    m, se = sum(logs) / 4, stats.tstd(logs) / 2
    half = stats.t.ppf(0.975, 3) * se
    assert sp["ci_low"] == pytest.approx(math.exp(m - half))
    assert sp["ci_high"] == pytest.approx(math.exp(m + half))
    assert sp["ci_low"] < 2.0 < sp["ci_high"]
    one = ts.ratio_stats([1.5])
    assert one["median"] == 1.5 and one["ci_low"] is None and one["n"] == 1
    assert ts.ratio_stats([3.0, 3.0])["ci_low"] == pytest.approx(3.0)


def test_flop_rate_uses_each_steps_batch_and_the_roof():
    side = {"samples_ms": [[10.0, 10.0], [20.0]], "batch_index": [[0, 1], [0]],
            "recompiles": 0}
    got = ts.summarise(side, flops=[2e9, 1e9], roof=4e11)
    # 2e11, 1e11 and 1e11 FLOP/s: median 1e11, a quarter of the roof
    assert got["achieved_flops_per_s"] == pytest.approx(1e11)
    assert got["utilization"] == pytest.approx(0.25)
    assert got["round_median_ms"] == [10.0, 20.0] and got["median_ms"] == 10.0


def test_a_variant_one_side_cannot_run_is_skipped_on_both(capsys):
    log = []
    sides = {"base": FakeSide("base", log),
             "new": FakeSide("new", log, cannot=("torch-reduce-overhead",))}
    builds, skipped = ts.build_all(sides, "tiny-games", ["torch", "torch-reduce-overhead"],
                                   "x.npz", 3, {"base": "B", "new": "the working tree"})
    assert list(builds) == ["torch"]
    assert skipped == {"torch-reduce-overhead": "the working tree cannot run it: takes no mode"}
    assert ("base", "drop", "torch-reduce-overhead") in log
    assert "skipped torch-reduce-overhead (tiny-games)" in capsys.readouterr().out


class OldEngine:
    def __init__(self):
        self.compiled = None

    def compile(self):
        self.compiled = "default"


class NewEngine(OldEngine):
    def compile(self, mode="default"):
        self.compiled = mode


def old_make_engine(framework, cfg, *, device, seed=0):
    return OldEngine()


def new_make_engine(framework, cfg, *, device, seed=0, compile="eager"):
    eng = NewEngine()
    if compile != "eager":
        eng.compile(compile)
    return eng


def test_compile_variants_use_what_each_side_has():
    assert child.make_variant("torch-reduce-overhead", None,
                              new_make_engine).compiled == "reduce-overhead"
    assert child.make_variant("torch-eager", None, new_make_engine).compiled is None
    assert child.make_variant("torch-default", None, old_make_engine).compiled == "default"
    assert child.make_variant("torch-eager", None, old_make_engine).compiled is None
    assert child.make_variant("torch", None, old_make_engine).compiled is None
    with pytest.raises(child.Unsupported, match="takes no mode"):
        child.make_variant("torch-max-autotune", None, old_make_engine)


def test_a_bad_rev_is_one_line_and_exit_2():
    p = subprocess.run([sys.executable, str(SCRIPT), "--base", "no-such-rev-0", "--no-roof"],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 2
    assert p.stderr.strip().splitlines() == [
        f"error: --base 'no-such-rev-0' is not a commit in {ROOT}"]


@pytest.mark.slow
def test_short_real_ab_against_head(tmp_path):
    out = tmp_path / "ab.json"
    p = subprocess.run(
        [sys.executable, str(SCRIPT), "--base", "HEAD", "--rounds", "1", "--iters", "2",
         "--shapes", "tiny-games", "--threads", "1", "--variants", "torch", "jax",
         "--no-roof", "--json", str(out)],
        capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert p.returncode == 0, p.stderr
    report = json.loads(out.read_text())
    shape = report["runs"][0]["shapes"]["tiny-games"]
    assert set(shape["variants"]) == {"torch", "jax"}
    for v in shape["variants"].values():
        assert v["speedup"]["n"] == 1 and v["speedup"]["median"] > 0
        assert [len(r) for r in v["base"]["samples_ms"]] == [2]
        assert v["base"]["batch_index"] == v["new"]["batch_index"]  # the same batches
    assert len(shape["flops_per_step"]) == 243
    assert "speed-up" in p.stdout and "jax" in p.stdout
    tree = report["base"]["tree"]  # the worktree is gone again
    assert not Path(tree).exists()
    assert tree not in subprocess.run(["git", "-C", str(ROOT), "worktree", "list"],
                                      capture_output=True, text=True).stdout
