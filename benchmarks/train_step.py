"""How fast is the reference train step, and how much faster than a base commit's? A benchmark,
not a test.

What is timed: one train step (forward, backward, Adam update) through the stable Engine API,
`Engine.sync(Engine.train_step(batch))` per iteration, on the CPU, for these shapes:

  tiny-games       tiny (catalog 23,715, T 50, dropout 0.5), B 128, bce: the synthetic-games
                   leave-one-out split's training batches (the Amazon Games length distribution,
                   splits.train_batches seed 0, 243 batches, the last one 37 rows), numpy
                   batches fed one after another, cycling through the epoch: what
                   `recbench train --dataset synthetic-games` does each step, so each side's own
                   batch handling (padding trimming, put) is timed, the path users get
  tiny-games-full  the same model on random full-length windows (no padding), put() once
  small-b64        small at quick's shape: catalog 20k, T 50, B 64, dropout 0, full windows,
                   put() once

Variants: `torch` (make_engine's default, whatever that side's default path is),
`torch-eager`, `torch-default`, `torch-reduce-overhead`, `torch-max-autotune` (torch.compile
modes: make_engine(compile=MODE) where a side takes it; a side without it gets its default
engine for eager and Engine.compile() for default, and cannot run the other modes: that
variant is skipped with the reason), and `jax` (jitted). Default: torch, torch-eager,
torch-default, jax.

How: with `--base REV` the base's tree is checked out (`git worktree add --detach`, removed at
exit), and each side (the working tree "new", REV "base") runs each framework in a
persistent child process of its own (torch's OpenMP threads and XLA's thread pool never
share a process), the working tree's benchmarks/train_step_child.py with PYTHONPATH and cwd
the side's tree, answering JSON commands. Both sides load the same batches (written once by
the working tree's code). Per thread count (`--threads 1 2`), the children and a roof child
are pinned to that many cores
(os.sched_setaffinity before torch or JAX start, torch.set_num_threads), so torch and XLA
use that many. Warm-up (engine build, compilation, the first steps, and the epoch's ragged
last batch) is timed apart and reported as warm-up s; then `--rounds` rounds in ABBA order
(per variant: base, new | new, base | ...), `--iters` steps per side and variant each.
The speed-up is base ms / new ms of the per-round medians: the median over rounds, and a
95% t-interval over rounds (of the log ratios, scipy.stats.t, n = rounds).
Per variant also: analytic FLOP/s (the working tree's config.flops_per_step of each step's
batch / its time, median over steps; for tiny-games the count is of the full B x T window,
so a step that trims padding has an upper count, marked *) and its share of the fp32 GEMM
roof, bench.machine.roofs.measure_roofs(["cpu"], ["fp32"], ["torch", "jax"]) measured in a
child with the same cores. Without --base: the working tree's table alone.

    python benchmarks/train_step.py --base d32184b --threads 1 2      # issue 15's A/B
    python benchmarks/train_step.py --base HEAD --shapes tiny-games --variants torch jax
    python benchmarks/train_step.py [--shapes ...] [--variants ...] [--rounds 5] [--iters 10]
                                    [--warmup 3] [--threads 1 2] [--json PATH] [--no-roof]

Exit status: 0 ok, 1 a child process failed, 2 bad input (a bad REV, too few cores, nothing
that both sides can run), 130 interrupted.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

try:  # run as a script: its folder, benchmarks/, is sys.path[0]
    from train_step_child import SHAPES
except ImportError:  # loaded by path (the tests): through the benchmarks package
    from benchmarks.train_step_child import SHAPES

ROOT = Path(__file__).resolve().parents[1]
CHILD = Path(__file__).resolve().with_name("train_step_child.py")
COMPILE_MODES = ("eager", "default", "reduce-overhead", "max-autotune")
VARIANTS = ("torch", *(f"torch-{m}" for m in COMPILE_MODES), "jax")
DEFAULT_VARIANTS = ("torch", "torch-eager", "torch-default", "jax")


class BadInput(Exception):
    """Exit 2 with this one line."""


class ChildFailed(Exception):
    """A child process died or a command failed where it must not: exit 1."""


# --- the parent: sides, rounds, statistics, tables ------------------------------------------


class Side:
    """A child process running train_step_child.py on one tree's recmodels, pinned to
    `cores`."""

    def __init__(self, name: str, tree: Path, cores: list[int], log: Path):
        self.name, self.tree, self.log, self.busy = name, tree, log, False
        n = str(len(cores))
        env = dict(os.environ, PYTHONPATH=str(tree), OMP_NUM_THREADS=n, MKL_NUM_THREADS=n)
        with open(log, "ab") as err:
            self.proc = subprocess.Popen(
                [sys.executable, str(CHILD), "--cores", ",".join(map(str, cores))],
                cwd=tree, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err,
                text=True, start_new_session=True)  # Ctrl-C reaches the parent, which ends it

    def call(self, cmd: str, **kw) -> dict:
        self.busy = True  # stays set if interrupted: close() then kills without asking
        try:
            self.proc.stdin.write(json.dumps({"cmd": cmd, **kw}) + "\n")
            self.proc.stdin.flush()
            line = self.proc.stdout.readline()
        except BrokenPipeError:
            line = ""
        self.busy = False
        if not line:
            raise ChildFailed(f"the {self.name} child ({self.tree}) ended during {cmd!r}: "
                              f"{last_line(self.log)}")
        return json.loads(line)

    def must(self, cmd: str, **kw) -> dict:
        out = self.call(cmd, **kw)
        if not out["ok"]:
            raise ChildFailed(f"the {self.name} child ({self.tree}): {cmd} failed: "
                              f"{out['reason']}")
        return out

    def close(self) -> None:
        with contextlib.suppress(Exception):
            if self.proc.poll() is None and not self.busy:
                self.call("quit")
                self.proc.wait(timeout=10)
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)  # its group: inductor's workers too
            self.proc.wait()


def last_line(log: Path) -> str:
    lines = [s for s in log.read_text(errors="replace").splitlines() if s.strip()]
    return lines[-1].strip() if lines else "(no output)"


def abba(r: int) -> tuple[str, str]:
    """Round r's side order: base, new | new, base | base, new ... (ABBA ABBA)."""
    return ("base", "new") if r % 2 == 0 else ("new", "base")


def run_rounds(sides: dict, shape: str, variants: list[str], rounds: int,
               iters: int) -> dict:
    """{variant: {side: {"samples_ms": [[per round]], "batch_index": [[...]], "recompiles"}}}"""
    out = {v: {s: {"samples_ms": [], "batch_index": [], "recompiles": 0} for s in sides}
           for v in variants}
    for r in range(rounds):
        order = abba(r) if "base" in sides else ("new",)
        for v in variants:
            for s in order:
                got = sides[s].must("time", shape=shape, variant=v, iters=iters)
                out[v][s]["samples_ms"].append(got["ms"])
                out[v][s]["batch_index"].append(got["index"])
                out[v][s]["recompiles"] += got["recompiles"]
    return out


def ratio_stats(ratios: list[float]) -> dict:
    """Median of per-round ratios, and a 95% t-interval over rounds of their logs."""
    n = len(ratios)
    out = {"per_round": ratios, "median": statistics.median(ratios), "ci_low": None,
           "ci_high": None, "n": n}
    if n >= 2:
        from scipy.stats import t

        logs = [math.log(x) for x in ratios]
        half = t.ppf(0.975, n - 1) * statistics.stdev(logs) / math.sqrt(n)
        mean = statistics.fmean(logs)
        out["ci_low"], out["ci_high"] = math.exp(mean - half), math.exp(mean + half)
    return out


def summarise(side: dict, flops: list[int], roof: float | None) -> dict:
    """Round medians, the overall median, and analytic FLOP/s against the roof."""
    samples = [x for rnd in side["samples_ms"] for x in rnd]
    index = [i for rnd in side["batch_index"] for i in rnd]
    rate = statistics.median(flops[i] / (ms / 1e3) for i, ms in zip(index, samples))
    return {**side, "round_median_ms": [statistics.median(r) for r in side["samples_ms"]],
            "median_ms": statistics.median(samples), "achieved_flops_per_s": rate,
            "utilization": rate / roof if roof else None}


def compare(results: dict, flops: list[int], roof: float | None) -> dict:
    out = {}
    for v, per in results.items():
        out[v] = {s: summarise(per[s], flops, roof) for s in per}
        if "base" in per:
            out[v]["speedup"] = ratio_stats([b / n for b, n in zip(
                out[v]["base"]["round_median_ms"], out[v]["new"]["round_median_ms"])])
    return out


def fmt(x: float | None, spec: str, none: str = "-") -> str:
    return none if x is None else format(x, spec)


def gflops(flops_per_s: float | None, none: str = "-") -> str:
    return f"{flops_per_s / 1e9:.0f}" if flops_per_s else none


def print_table(shape: str, info: dict, rows: dict, builds: dict, base: str | None) -> None:
    s = SHAPES[shape]
    star = "*" if s["data"] == "synthetic-games" else ""
    feed = (f"{len(info['rows'])} synthetic-games batches cycled, numpy into train_step"
            if star else "one full-window batch, put() once")
    print(f"\n{shape}: {s['preset']}, catalog {s['catalog_size']:,}, T {s['seq_len']}, "
          f"B {s['batch']}, dropout {s['dropout']}; {feed}; "
          f"{info['flops'][0] / 1e9:.2f} GFLOP a full B x T step (analytic)")
    if base is None:
        print(f"{'variant':<22}{'ms/step':>9}{'GFLOP/s' + star:>10}{'% roof':>8}"
              f"{'warm-up s':>11}")
        for v, r in rows.items():
            n = r["new"]
            print(f"{v:<22}{n['median_ms']:9.2f}{n['achieved_flops_per_s'] / 1e9:10.1f}"
                  f"{fmt(n['utilization'] and 100 * n['utilization'], '7.1f'):>8}"
                  f"{builds[v]['new']['warmup_s']:11.1f}")
    else:
        n_rounds = next(iter(rows.values()))["speedup"]["n"]
        print(f"{'variant':<22}{'base ms':>9}{'new ms':>9}{'speed-up':>10}  "
              f"{f'95% CI (n={n_rounds})':<16}{'GFLOP/s' + star + ' b -> n':>17}"
              f"{'% roof b -> n':>15}{'warm-up s b/n':>15}")
        for v, r in rows.items():
            b, n, sp = r["base"], r["new"], r["speedup"]
            ci = (f"[{sp['ci_low']:.2f}, {sp['ci_high']:.2f}]" if sp["ci_low"] is not None
                  else "(one round)")
            gf = (f"{b['achieved_flops_per_s'] / 1e9:.1f} -> "
                  f"{n['achieved_flops_per_s'] / 1e9:.1f}")
            roof = (f"{100 * b['utilization']:.1f} -> {100 * n['utilization']:.1f}"
                    if n["utilization"] else "-")
            warm = f"{builds[v]['base']['warmup_s']:.1f} / {builds[v]['new']['warmup_s']:.1f}"
            print(f"{v:<22}{b['median_ms']:9.2f}{n['median_ms']:9.2f}{sp['median']:9.2f}x  "
                  f"{ci:<16}{gf:>17}{roof:>15}{warm:>15}")
        print(f"speed-up: {base} ms / working tree ms per round (medians of its steps), "
              "median over rounds; torch = each side's make_engine default")
    for v, r in rows.items():
        for side, x in r.items():
            if side != "speedup" and x["recompiles"]:
                print(f"note: {v} ({side}) compiled {x['recompiles']} graph(s) during timed "
                      "steps (recompilation)")
    if star:
        print("* analytic FLOPs of the full B x T window: an upper count for a step that "
              "trims padding")


def git(*args: str) -> str:
    return subprocess.run(["git", "-C", str(ROOT), *args], check=True, capture_output=True,
                          text=True).stdout.strip()


def add_worktree(rev: str, where: Path) -> str:
    try:
        sha = git("rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}")
    except subprocess.CalledProcessError:
        raise BadInput(f"--base {rev!r} is not a commit in {ROOT}") from None
    try:
        git("worktree", "add", "--detach", str(where), sha)
    except subprocess.CalledProcessError as e:
        raise BadInput(f"git worktree add of {rev} failed: "
                       f"{(e.stderr.strip().splitlines() or ['?'])[-1]}") from None
    return sha


def remove_worktree(where: Path) -> None:
    with contextlib.suppress(subprocess.CalledProcessError):
        git("worktree", "remove", "--force", str(where))
    shutil.rmtree(where, ignore_errors=True)
    with contextlib.suppress(subprocess.CalledProcessError):
        git("worktree", "prune")


def start(name: str, tree: Path, cores: list[int], tmp: Path, stack) -> Side:
    side = Side(name, tree, cores, tmp / f"{name}-{len(cores)}t.log")
    stack.callback(side.close)
    hello = side.must("hello")
    if not Path(hello["recmodels"]).resolve().is_relative_to(tree.resolve()):
        raise ChildFailed(f"the {name} child imported {hello['recmodels']}, not {tree}'s")
    if hello["missing"]:
        raise BadInput(f"{name} ({tree}) lacks {', '.join(hello['missing'])}")
    return side


class Router:
    """One side's children, one per framework, started at their first use: torch's OpenMP
    threads and XLA's thread pool never share a process (on a pinned core, a pool that spins
    after its own step takes time from the other framework's next one). Commands that name a
    variant go to its framework's child; "drop" goes to every child; the rest to torch's."""

    def __init__(self, name: str, tree: Path, cores: list[int], tmp: Path, stack):
        self.name, self.tree, self.cores, self.tmp, self.stack = name, tree, cores, tmp, stack
        self.kids: dict[str, Side] = {}

    def kid(self, framework: str) -> Side:
        if framework not in self.kids:
            self.kids[framework] = start(f"{self.name}-{framework}", self.tree, self.cores,
                                         self.tmp, self.stack)
        return self.kids[framework]

    def call(self, cmd: str, **kw) -> dict:
        if kw.get("variant"):
            return self.kid("jax" if kw["variant"] == "jax" else "torch").call(cmd, **kw)
        if cmd == "drop":
            for k in self.kids.values():
                k.must(cmd, **kw)
            return {"ok": True}
        return self.kid("torch").call(cmd, **kw)

    def must(self, cmd: str, **kw) -> dict:
        out = self.call(cmd, **kw)
        if not out.get("ok"):
            raise ChildFailed(f"{self.name}: {cmd} failed: {out.get('reason')}")
        return out


def build_all(sides: dict, shape: str, variants: list[str], path: str, warmup: int,
              labels: dict) -> tuple[dict, dict]:
    """Build and warm up every variant on every side; a side that cannot: skipped on all."""
    builds, skipped = {}, {}
    for v in variants:
        got = {}
        for s, side in sides.items():
            out = side.call("build", shape=shape, variant=v, path=path, warmup=warmup)
            if not out["ok"]:
                skipped[v] = f"{labels[s]} cannot run it: {out['reason']}"
                break
            got[s] = out
        if v in skipped:
            print(f"skipped {v} ({shape}): {skipped[v]}")
            for s in got:
                sides[s].must("drop", shape=shape, variant=v)
        else:
            builds[v] = got
    return builds, skipped


def run(args, tmp: Path, stack) -> dict:
    avail = sorted(os.sched_getaffinity(0))
    if max(args.threads) > len(avail):
        raise BadInput(f"--threads {max(args.threads)}: this process may use "
                       f"{len(avail)} core(s)")
    report = {"benchmark": "benchmarks/train_step.py",
              "new": {"tree": str(ROOT), "head": git("rev-parse", "HEAD"),
                      "recmodels_dirty": bool(git("status", "--porcelain", "--", "recmodels"))},
              "base": None, "args": dict(vars(args)),
              "runs": []}
    trees = {"new": ROOT}
    labels = {"new": "the working tree"}
    if args.base:
        where = tmp / "base"
        report["base"] = {"rev": args.base, "commit": add_worktree(args.base, where),
                          "tree": str(where)}
        stack.callback(remove_worktree, where)
        trees["base"], labels["base"] = where, f"{args.base} ({report['base']['commit'][:9]})"
    batch_info: dict[str, dict] = {}
    measured = 0
    for n in args.threads:
        cores = avail[:n]
        with contextlib.ExitStack() as local:
            roof_entry = None
            if not args.no_roof:
                roofer = start("roof", ROOT, cores, tmp, local)
                roof_entry = roofer.must("roof")["roof"]
                roofer.close()  # before the sides start: nothing else runs beside it
            roof = roof_entry and roof_entry["gemm_flops_per_s"]
            by_fw = (roof_entry or {}).get("by_framework", {})
            each = ", ".join(f"{fw} {gflops(r['gemm_flops_per_s'])}" for fw, r in by_fw.items())
            print(f"\n=== {n} thread(s), cores {cores}: fp32 GEMM roof "
                  + (f"{gflops(roof)} GFLOP/s" if roof else "not measured")
                  + (f" (the best of {each})" if each else ""))
            sides = {s: Router(s, trees[s], cores, tmp, local) for s in ("base", "new")
                     if s in trees}
            entry = {"threads": n, "cores": cores, "roof": roof_entry, "shapes": {}}
            report["runs"].append(entry)
            for shape in args.shapes:
                path = str(tmp / f"{shape}.npz")
                if shape not in batch_info:
                    batch_info[shape] = sides["new"].must("batches", shape=shape, path=path)
                info = batch_info[shape]
                builds, skipped = build_all(sides, shape, args.variants, path, args.warmup,
                                            labels)
                rows = {}
                if builds:
                    res = run_rounds(sides, shape, list(builds), args.rounds, args.iters)
                    rows = compare(res, info["flops"], roof)
                    print_table(shape, info, rows, builds, labels.get("base"))
                    measured += len(rows)
                for s in sides.values():
                    s.must("drop", shape=shape)
                entry["shapes"][shape] = {
                    "config": SHAPES[shape], "flops_per_step": info["flops"],
                    "flops_note": ("analytic FLOPs of each batch's full B x T window"
                                   if SHAPES[shape]["data"] == "synthetic-games" else None),
                    "skipped": skipped,
                    "variants": {v: {**rows[v], "build": builds[v]} for v in rows}}
    if not measured:
        raise BadInput("nothing measured: every variant was skipped (reasons above)")
    return report


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 epilog="Shapes, variants and the method: see the module's "
                                        "docstring (python -m pydoc benchmarks/train_step.py)",
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--base", metavar="REV", help="A/B against this commit's model code")
    ap.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    ap.add_argument("--variants", nargs="+", default=list(DEFAULT_VARIANTS), choices=VARIANTS)
    ap.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--iters", type=int, default=10, help="steps per side, variant and round")
    ap.add_argument("--warmup", type=int, default=3, help="warm-up steps before round 1")
    ap.add_argument("--json", metavar="PATH", help="write every sample and ratio here")
    ap.add_argument("--no-roof", action="store_true", help="skip the roof measurement")
    args = ap.parse_args(argv)
    for name in ("rounds", "iters"):
        if getattr(args, name) < 1:
            ap.error(f"--{name} must be >= 1")
    if args.warmup < 0:
        ap.error("--warmup must be >= 0")
    if min(args.threads) < 1:
        ap.error("--threads must be >= 1")
    args.threads = sorted(set(args.threads))
    if args.json:  # checked now, not after minutes of measuring
        folder = Path(args.json).resolve().parent
        if not folder.is_dir() or not os.access(folder, os.W_OK):
            ap.error(f"--json {args.json}: {folder} is not a writable folder")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)

    def on_term(*_):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    tmp = Path(tempfile.mkdtemp(prefix="recbench-train-step-"))
    try:
        with contextlib.ExitStack() as stack:
            report = run(args, tmp, stack)
        if args.json:
            Path(args.json).write_text(json.dumps(report, indent=1) + "\n")
            print(f"\nwrote {args.json}")
        return 0
    except BadInput as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except ChildFailed as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
