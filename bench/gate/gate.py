"""`recbench gate --base REV`: does the working tree make the models slower than REV?

How it measures (one machine, both sides):

1. ``REV`` is resolved (``git rev-parse``) and checked out with ``git worktree add --detach``
   into a temporary directory, removed afterwards whatever happens (error, Ctrl-C, SIGTERM).
2. Each side is measured by its own fresh ``python -m bench.launch.worker`` (the process
   `recbench run` uses: bench.launch.worker.measure_point, bench.scenarios.step.build), per
   round and per (framework, device) group, with the *current* harness (bench/) and the side's
   own *model code* (recmodels/): the worker starts in an empty directory with PYTHONPATH set to
   a directory of two links, ``bench -> <working tree>/bench`` and ``recmodels ->
   <side>/recmodels``. So the base tree needs no gate (or any newer harness) code, and a harness
   change cannot pass for a model change. The limit: the gate measures what the current harness
   calls through recmodels' API (``make_engine``, ``Engine.train_step`` ...) and the analytic
   cost of recmodels/config.py; if REV's recmodels lacks what the harness calls, its points fail
   (status ``error``), are listed as not compared, and a gate with nothing compared is exit 2.
3. Rounds: in each, every point runs on one side then the other (the order alternates from round
   to round: ABBA), a fixed number of iterations (ci: 30), so machine drift hits both sides and
   every round weighs the same. Samples are pooled per point and side and judged by
   ``bench.gate.compare`` with ``paired=True``: each round's pair is aligned by its median
   before the tests of bench/gate/stats.py, and a verdict must also hold over the rounds (a
   t-interval of the per-round ratios), since samples of one worker process share its luck.
   Default 5 rounds x 30 iterations = 150 samples a side (stats.py: ~120 resolve a 10% change
   with 95% power at 10% per-sample noise), about 3.5 minutes for the ci suite on a 2-core CPU.
4. The base rounds are cached in ``$RECBENCH_CACHE/gate`` (default ``<repo>/.recbench-cache/
   gate``) under ``<base commit 12>-<key 12>``, the key hashing the environment fingerprint
   (``envinfo.fingerprint_key`` and the hostname), the suite file, overrides, rounds and the
   harness sources that shape a measurement; rounds where a base point crashed or timed out
   are not cached. A cached base was not interleaved with the new
   rounds, so drift since then is not cancelled: ``--no-cache`` on a machine that drifts.

NEW is the working tree, uncommitted changes included (the output says so). ``--base HEAD``
on a clean tree is an A/A run: it measures the gate's own false-alarm rate, so it is allowed.

Here: the plan, the base checkout, the cache of base rounds, ``run_gate`` and `recbench gate`;
the per-side import roots and the workers of a round (steps 2 and 3) are bench/gate/rounds.py.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.gate import compare as C
from bench.gate import compare_report as R
from bench.gate import stats
from bench.gate.rounds import _cwd, import_root, run_round
from bench.launch.locks import machine_lock
from bench.results import ResultsFile, ResultsWriter, RunHeader, iso_utc, load
from bench.results.write import out_dir
from bench.suites.suite import Suite
from recmodels.errors import InputError

DEFAULT_ROUNDS = 5  # x 30 iterations a round (bench/suites/ci.toml) = 150 samples a side
CACHE_ENV = "RECBENCH_CACHE"
# Harness sources whose change changes what a measurement means (not compare/plots/report).
_HARNESS = ("gate/gate.py", "gate/rounds.py", "point.py", "suites/suite.py", "suites/axes.py",
            "scenarios/*.py", "launch/*.py", "meters/*.py")
Log = Callable[[str], None]


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def git(repo: Path, *args: str, check: bool = True) -> str:
    """``git -C repo args`` -> stdout; a failure is an InputError with git's own line."""
    try:
        res = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True,
                             timeout=120, check=False)
    except (OSError, subprocess.SubprocessError) as e:
        raise InputError(f"cannot run git ({e}); the gate needs git on PATH") from None
    if check and res.returncode != 0:
        last = (res.stderr.strip().splitlines() or ["failed"])[-1]
        raise InputError(f"git {' '.join(args)}: {last}")
    return res.stdout.rstrip() if res.returncode == 0 else ""  # keep porcelain's first column


def repo_root() -> Path:
    """The checkout the running harness lives in: NEW is its working tree."""
    here = Path(__file__).resolve().parents[2]
    top = git(here, "rev-parse", "--show-toplevel", check=False)
    if not top or Path(top).resolve() != here:
        raise InputError(f"{here} is not a git checkout: recbench gate runs from a clone of the "
                         "project installed with `pip install -e .` (make install)")
    return here


def resolve_commit(repo: Path, rev: str) -> str:
    sha = git(repo, "rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}", check=False)
    if not sha:
        raise InputError(f"base revision {rev!r} does not exist in {repo} (git rev-parse "
                         "failed); fetch it first, e.g. git fetch origin main")
    return sha


@dataclass
class Plan:
    """What one gate run measures."""

    repo: Path
    base_rev: str
    base_commit: str
    head_commit: str
    suite: str  # a name in bench/suites or an absolute .toml path
    overrides: list[str]
    rounds: int
    dirty: list[str] = field(default_factory=list)  # `git status --porcelain` paths
    same_models: bool = False  # recmodels/ identical on both sides: an A/A run

    def notes(self) -> list[str]:
        new = f"working tree at {self.head_commit[:10]}"
        if self.dirty:
            shown = ", ".join(self.dirty[:5]) + (" ..." if len(self.dirty) > 5 else "")
            new += f" + uncommitted changes ({len(self.dirty)} files: {shown})"
        out = [f"gate: base {self.base_rev} = {self.base_commit[:10]}; new = {new}",
               f"{self.rounds} rounds, sides alternating point by point (ABBA); each side: the "
               "working tree's harness (bench/) with its own model code (recmodels/); change "
               "and CI from round-aligned samples, confirmed over rounds"]
        if self.same_models:
            out.append("recmodels/ is identical on both sides: an A/A run (measures the noise)")
        return out


def load_gate_suite(name: str, overrides: list[str]) -> Suite:
    """The suite as `recbench run` loads it ("auto" devices resolved for this machine)."""
    from bench.machine.hardware import detect_hardware, device_resolver_for
    from bench.suites.suite import load_suite

    hardware = detect_hardware()
    return load_suite(name, overrides=overrides, hardware=hardware,
                      device_resolver=device_resolver_for(hardware))


def make_plan(args: argparse.Namespace) -> Plan:
    from bench.suites.suite import suite_path

    repo = repo_root()
    overrides = list(args.set or [])
    if args.framework:
        overrides.append("framework=" + ",".join(dict.fromkeys(args.framework)))
    suite = args.suite
    if suite.endswith(".toml") or os.sep in suite:
        suite = str(suite_path(suite).resolve())  # the rounds run in another directory
    load_gate_suite(suite, overrides)  # a bad suite or --set fails here, before any work
    base = resolve_commit(repo, args.base)
    head = resolve_commit(repo, "HEAD")
    # Tracked edits anywhere, and new files where code is imported from (not results/, caches).
    status = git(repo, "status", "--porcelain", "--untracked-files=all")
    dirty = [line[3:] for line in status.splitlines() if line.strip() and (
        not line.startswith("??") or line[3:].startswith(("recmodels/", "bench/")))]
    same = (not git(repo, "diff", "--name-only", base, "--", "recmodels")
            and not any(p.startswith("recmodels/") for p in dirty))
    return Plan(repo, args.base, base, head, suite, overrides, args.rounds, dirty, same)


# --- the base checkout (import roots and rounds: bench/gate/rounds.py) ----------------------


@contextlib.contextmanager
def base_worktree(repo: Path, commit: str) -> Iterator[Path]:
    """``git worktree add --detach`` REV into a temp dir; removed on exit, also on errors."""
    tmp = Path(tempfile.mkdtemp(prefix="recbench-gate-"))
    tree = tmp / "base"
    try:
        git(repo, "worktree", "add", "--detach", "--quiet", str(tree), commit)
        if not (tree / "recmodels" / "__init__.py").is_file():
            raise InputError(f"base {commit[:10]} has no recmodels package: nothing to measure")
        yield tree
    finally:
        git(repo, "worktree", "remove", "--force", str(tree), check=False)
        shutil.rmtree(tmp, ignore_errors=True)
        git(repo, "worktree", "prune", check=False)


# --- cache -----------------------------------------------------------------------------------


def cache_dir(repo: Path) -> Path:
    root = os.environ.get(CACHE_ENV)
    return (Path(root) if root else repo / ".recbench-cache") / "gate"


def cache_key(plan: Plan, env: dict[str, Any]) -> str:
    """``<base commit 12>-<12 hex>``: what must match for base rounds to be reused."""
    from bench.machine.envinfo import fingerprint_key
    from bench.suites.suite import suite_path

    bench_dir = Path(__file__).resolve().parents[1]
    sources = sorted(p for pat in _HARNESS for p in bench_dir.glob(pat))
    blob = {"fingerprint": fingerprint_key(env), "hostname": env.get("hostname"),
            "suite": suite_path(plan.suite).read_text(encoding="utf-8"),
            "overrides": plan.overrides, "rounds": plan.rounds,
            "harness": {str(p.relative_to(bench_dir)): hashlib.sha1(p.read_bytes()).hexdigest()
                        for p in sources}}
    digest = hashlib.sha1(json.dumps(blob, sort_keys=True, default=str).encode()).hexdigest()
    return f"{plan.base_commit[:12]}-{digest[:12]}"


def load_cached(entry: Path, rounds: int) -> list[ResultsFile] | None:
    """The cached base rounds in round order (round-2 before round-10), or None."""
    files = [entry / f"round-{i}.jsonl" for i in range(1, rounds + 1)]
    if len(list(entry.glob("round-*.jsonl"))) != rounds or not all(f.is_file() for f in files):
        return None
    try:
        return [load(f) for f in files]
    except InputError:
        return None


def store_cached(entry: Path, files: list[Path]) -> None:
    """Write the entry under a temporary name, then rename: readers never see half of one."""
    tmp = entry.with_name(f"{entry.name}.tmp-{os.getpid()}")
    tmp.mkdir(parents=True, exist_ok=True)
    for i, f in enumerate(files, 1):
        shutil.copyfile(f, tmp / f"round-{i}.jsonl")
    shutil.rmtree(entry, ignore_errors=True)
    tmp.rename(entry)


# --- the gate ------------------------------------------------------------------------------


def _header(plan: Plan, suite: Suite, env: dict[str, Any], side: str, r: int) -> RunHeader:
    git_side = ({"commit": plan.base_commit, "dirty": False} if side == "base" else
                {"commit": plan.head_commit, "dirty": bool(plan.dirty)})
    return RunHeader(run_id=f"{side}-round-{r}", suite=suite.name, started_at=iso_utc(),
                     env={**env, "git": git_side}, roofs={},
                     extra={"gate": {"side": side, "round": r, "base_rev": plan.base_rev},
                            "measure": suite.measure.__dict__})


def run_gate(plan: Plan, *, use_cache: bool = True, out: Path | None = None,
             threshold: float = 0.05, alpha: float = 0.01, accept_analytic: bool = False,
             log: Log = _stderr) -> C.Comparison:
    """Measure both sides in interleaved rounds and compare them (see the module docstring)."""
    from bench.machine.envinfo import fingerprint

    suite = load_gate_suite(plan.suite, plan.overrides)
    env = fingerprint()
    entry = cache_dir(plan.repo) / cache_key(plan, env)
    cached = load_cached(entry, plan.rounds) if use_cache else None
    notes = plan.notes()
    sides = ["new"] if cached else ["base", "new"]
    work = Path(tempfile.mkdtemp(prefix="recbench-gate-runs-"))
    paths: dict[str, list[Path]] = {s: [] for s in sides}
    try:
        with contextlib.ExitStack() as stack:
            roots = {"new": import_root(work / "new", plan.repo / "bench",
                                        plan.repo / "recmodels")}
            if cached:
                notes.append(f"base: {plan.rounds} cached rounds from {entry} (measured "
                             "earlier, not interleaved with these; --no-cache to remeasure)")
                log(f"gate: base {plan.base_commit[:10]} from the cache ({entry})")
            else:
                tree = stack.enter_context(base_worktree(plan.repo, plan.base_commit))
                roots["base"] = import_root(work / "base", plan.repo / "bench",
                                            tree / "recmodels")
            stack.enter_context(_cwd(work))
            for r in range(1, plan.rounds + 1):
                t0 = time.monotonic()
                writers = {s: stack.enter_context(ResultsWriter.create(
                    work / "results", s, f"round-{r}", _header(plan, suite, env, s, r)))
                    for s in sides}
                run_round(suite, roots, writers, sides if r % 2 else sides[::-1])
                for s, w in writers.items():
                    w.close()
                    paths[s].append(w.path)
                log(f"gate: round {r}/{plan.rounds}: {len(suite.points)} points x "
                    f"{len(sides)} sides in {time.monotonic() - t0:.1f} s")
        base = cached or [load(p) for p in paths["base"]]
        # A crash or timeout can be the machine's (another job, the OOM killer): caching it
        # would keep that point uncompared in every later gate against this base.
        if not cached and use_cache and not any(
                r.status in ("crashed", "timeout") for f in base for r in f.records):
            store_cached(entry, paths["base"])
        new = [load(p) for p in paths["new"]]
        if out is not None:
            for side, files in (("base", [f.path for f in base]), ("new", paths["new"])):
                (out / side).mkdir(parents=True, exist_ok=True)
                for stale in (out / side).glob("round-*.jsonl"):  # an earlier gate's rounds
                    stale.unlink()  # would be pooled with these by `compare DIR/base DIR/new`
                for i, f in enumerate(files, 1):
                    shutil.copyfile(f, out / side / f"round-{i}.jsonl")
        c = C.compare_results(base, new, threshold=threshold, alpha=alpha, paired=True,
                              accept_analytic=accept_analytic)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    n = sorted({p.metric("step_ms").verdict["n_base"] for p in c.points  # type: ignore
                if p.metric("step_ms") and p.metric("step_ms").verdict})  # type: ignore
    if n:
        notes.append(f"samples a side per point: {n[0]}" + (f" to {n[-1]}" if len(n) > 1 else ""))
    c.notes = notes
    c.base_desc = f"{plan.base_rev} ({plan.base_commit[:10]})"
    c.new_desc = "working tree" + (" (with uncommitted changes)" if plan.dirty else
                                   f" ({plan.head_commit[:10]})")
    return c


def _check_outputs(args: argparse.Namespace) -> None:
    """--markdown FILE must be a file in an existing directory; --out DIR must be creatable."""
    if args.markdown:
        md = Path(args.markdown)
        if md.is_dir() or not md.parent.is_dir():
            raise InputError(f"--markdown {md}: expected a file in an existing directory")
    if args.out:
        try:
            Path(args.out).mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise InputError(f"--out {args.out}: cannot create the directory "
                             f"({e.strerror or e}); pass a writable DIR") from None


MIN_ROUNDS = 2  # one round cannot confirm a verdict (stats.py: it must hold over the rounds)


def cmd_gate(args: argparse.Namespace) -> int:
    threshold = stats.parse_threshold(args.threshold)
    alpha = R.parse_alpha(args.alpha)
    if args.rounds < MIN_ROUNDS:
        # A single round's samples share one slice of the machine's state: on a shared VM an
        # unchanged tree read +9% and +775% in single rounds. The verdict must hold across
        # rounds, which needs two or more.
        raise InputError(f"--rounds {args.rounds}: a verdict needs at least {MIN_ROUNDS} rounds "
                         f"to be confirmed across rounds (default {DEFAULT_ROUNDS})")
    _check_outputs(args)  # before minutes of measuring, not after
    plan = make_plan(args)
    # SIGTERM (a cancelled CI job) cleans up like Ctrl-C: bench.cli runs every command inside
    # bench/launch/signals.py's handlers. The machine lock keeps other measuring commands out.
    with machine_lock():
        c = run_gate(plan, use_cache=not args.no_cache,
                     out=Path(args.out) if args.out else None, threshold=threshold,
                     alpha=alpha, accept_analytic=args.accept_analytic_changes)
    if args.markdown:
        try:
            Path(args.markdown).write_text(R.format_markdown(c, "recbench gate"),
                                           encoding="utf-8")
        except OSError as e:
            raise InputError(f"--markdown {args.markdown}: cannot write it ({e.strerror or e})"
                             ) from None
    if args.json:
        json.dump(c.to_json(), sys.stdout, indent=2, default=str)
        sys.stdout.write("\n")
    else:
        print(R.format_text(c))
    return c.exit_code


def register_cli(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("gate", help="regression gate: working tree vs a base revision",
                       description=__doc__.split("\n\n")[0])
    p.add_argument("--base", required=True, metavar="REV",
                   help="git revision to compare against (e.g. origin/main, HEAD~1)")
    p.add_argument("--suite", default="ci", help="suite name or .toml path (default ci)")
    p.add_argument("--rounds", type=int, default=DEFAULT_ROUNDS,
                   help=f"interleaved rounds per side (default {DEFAULT_ROUNDS})")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="suite override passed to both sides, e.g. batch_size=32")
    p.add_argument("--framework", action="append", choices=("torch", "jax"),
                   help="only this framework (same as --set framework=...)")
    R.add_verdict_args(p)
    p.add_argument("--markdown", metavar="FILE", help="also write a PR-comment Markdown report")
    p.add_argument("--json", action="store_true", help="one JSON object on stdout")
    p.add_argument("--out", metavar="DIR", type=out_dir,
                   help="keep the rounds' result files in DIR/base and DIR/new")
    p.add_argument("--no-cache", action="store_true",
                   help="measure the base even if a cached measurement matches")
    p.set_defaults(func=cmd_gate)

