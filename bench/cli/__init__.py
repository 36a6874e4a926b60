"""`recbench`: the command-line entry point (also `python -m bench`).

Exit codes: 0 ok, 1 a check failed (parity, regression, a run with no ok point, a diverged
`train` run), 2 bad input (one line on stderr, no traceback; also a device this machine
lacks), 130 interrupted.
`--json` prints one JSON object on stdout; torch, jax, matplotlib load only where needed.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shlex
import sys
import warnings

from bench.launch.signals import exit_code, stop_signals_as_interrupt
from bench.results.write import out_dir  # the --out type of every command (re-exported)
from recmodels.config import human, human_bytes
from recmodels.errors import InputError

EXIT_OK, EXIT_CHECK_FAILED, EXIT_BAD_INPUT, EXIT_INTERRUPTED = 0, 1, 2, 130


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (and exit 2) instead of the usage dump."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(EXIT_BAD_INPUT, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _print_json(obj) -> None:
    json.dump(obj, sys.stdout, indent=2, default=str)
    sys.stdout.write("\n")


def _err(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# --- train -------------------------------------------------------------------------------


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _run_device(text: str) -> str:
    """`run --device`: one device, or several with commas, checked here so that an error names
    --device (the suite applies it as `--set device=...`)."""
    from bench.point import field_problem

    for item in text.split(","):
        problem = field_problem("device", item.strip(), allow_auto=True)
        if problem:
            raise argparse.ArgumentTypeError(problem)
    return text


def cmd_parity(args) -> int:
    from recmodels.config import BLOCKS, LOSSES
    from recmodels.parity import STEPS, TOLERANCES, check_preset

    def show(r) -> None:
        if not args.json:
            block = f"{r.block}/{r.layout}" if r.layout else r.block
            print(f"{r.preset:6s} {block:16s} {r.loss:16s} scores {r.scores_max_abs:8.1e}  "
                  f"loss {r.loss_rel:8.1e}  params {r.params_max_abs:8.1e}  "
                  + (f"({r.params_beyond:,} of {r.params_count:,} beyond) "
                     if r.params_beyond else "") +
                  f"{'ok' if r.ok else 'MISMATCH (' + r.worst_param + ')'}", flush=True)

    if not args.json:
        print("max |torch - jax| after loading the same safetensors weights (fp32, dropout off);"
              f" tolerances: scores {TOLERANCES['scores_max_abs']:.0e}, loss (relative) "
              f"{TOLERANCES['loss_rel']:.0e}, params after {STEPS} Adam steps "
              f"{TOLERANCES['params_max_abs']:.0e}")
    results = check_preset(args.preset, blocks=args.block or BLOCKS, losses=args.loss or LOSSES,
                           on_result=show)
    ok = all(r.ok for r in results)
    if args.json:
        from dataclasses import asdict

        _print_json({"preset": args.preset, "ok": ok, "tolerances": TOLERANCES,
                     "results": [asdict(r) | {"ok": r.ok} for r in results]})
    else:
        print("parity ok" if ok else "parity FAILED")
    return EXIT_OK if ok else EXIT_CHECK_FAILED


# --- env and run -------------------------------------------------------------------------


def cmd_env(args) -> int:
    from bench.machine.envinfo import fingerprint, format_env
    from bench.machine.roofs import measure_roofs

    env = fingerprint()
    roofs = {}
    if not args.no_roofs:  # every dtype the suites use on that device, best of both frameworks
        from bench.launch.locks import machine_lock

        both = ("torch", "jax")
        with machine_lock():  # measuring: no other benchmark may share the machine meanwhile
            roofs = measure_roofs(["cpu"], ("fp32", "bf16"), frameworks=both)
            if env.get("gpus"):
                roofs |= measure_roofs(["cuda"], ("fp32", "tf32", "bf16", "fp16"), frameworks=both)
            if env.get("tpu"):
                roofs |= measure_roofs(["tpu"], ("fp32", "bf16"), frameworks=("jax",))
    if args.json:
        _print_json({"env": env, "roofs": roofs})
        return EXIT_OK
    print(format_env(env))
    for key, r in roofs.items():
        gemm, bw = r.get("gemm_flops_per_s"), r.get("mem_bytes_per_s")
        si = human(gemm) if gemm else ""  # "239G" -> "239 GFLOP/s"
        flops = f"{si[:-1]} {si[-1]}FLOP/s" if si[-1:].isalpha() else f"{si} FLOP/s"
        print(f"roof {key:10s} GEMM {flops if gemm else 'n/a':>13s}  "
              f"bandwidth {human_bytes(bw, per_s=True) if bw else 'n/a':>10s}  "
              f"({r.get('method') or r.get('reason')})")
    return EXIT_OK


def cmd_run(args) -> int:
    from pathlib import Path

    from bench import results as R
    from bench.launch.dist import RDZV_ENV, Rendezvous
    from bench.launch.locks import machine_lock
    from bench.launch.progress import summary_table
    from bench.launch.runner import check_writable, find_latest, run_suite
    from bench.machine.envinfo import fingerprint
    from bench.machine.hardware import detect_hardware, device_resolver_for
    from bench.suites.suite import load_suite

    if args.dry_run and args.report:
        raise InputError("--report writes the figures and the report of the points a run "
                         "measured, and --dry-run measures none: drop one of them")
    resume = None
    if args.resume and args.resume != "latest":
        # before any lock: a lock file beside a file that is not there would be left behind
        resume = _existing_results_file(args.resume)
        if args.suite is None:
            args.suite = _suite_of(resume)
    args.suite = args.suite or "auto"
    rdzv = Rendezvous.parse(args.nnodes, args.node_rank, args.rdzv_endpoint)
    if rdzv.nnodes > 1:  # the workers read it (bench/launch/dist.py)
        os.environ[RDZV_ENV] = rdzv.to_env()
    hardware = detect_hardware()
    overrides = list(args.set or []) + ([f"device={args.device}"] if args.device else [])
    suite = load_suite(args.suite, overrides=overrides, hardware=hardware,
                       device_resolver=device_resolver_for(hardware))
    if args.dry_run:  # a plan: it may name devices this machine lacks
        return _dry_run(suite, args.json)
    _check_devices(suite, hardware, args.device)  # before any point or output
    env = fingerprint()
    out = Path(args.out)
    if args.resume == "latest":
        resume = find_latest(out, env["machine_id"], suite.name)
    elif resume is None:
        check_writable(out / R.safe_name(env["machine_id"]))  # before any work or output
    try:
        with machine_lock():  # one measuring command per machine at a time
            outcome = run_suite(suite, out_dir=out, env=env, resume=resume,
                                roofs={} if args.no_roofs else None)
    except R.ResultsWriteError as e:
        raise InputError(f"{e}; free space or lift the limit, then continue with: "
                         f"{resume_command(args, e.path)}") from None
    table = summary_table([*outcome.previous, *outcome.records], end=outcome.end)
    for rec in outcome.serve:  # [[serve]] points: one line each under the step table
        p, m = rec.point, rec.metrics
        rate = m.get("max_rate_per_s") or m.get("samples_per_s")
        table += (f"\nserve {rec.status}: {p.get('scenario')} {p.get('workload')} "
                  f"{p.get('framework')} {p.get('preset')} on {p.get('device')}"
                  + (f": {rate:,.1f} requests/s" if rate else "")
                  + (f" ({rec.reason})" if rec.reason else ""))
    report = None
    if args.report and not outcome.interrupted and outcome.counts.get("ok"):
        from bench.analysis.plots import plot_all
        from bench.analysis.report import write_report

        run_dir = outcome.path.with_suffix("")  # results/<machine-id>/<run-id>/
        plots = plot_all([outcome.path], run_dir / "plots")
        report = write_report([outcome.path], run_dir)
        _err(f"{len(plots)} figures in {run_dir / 'plots'}")
    if args.json:
        _err(table)
        _print_json({"results": str(outcome.path), "counts": dict(outcome.counts),
                     "interrupted": outcome.interrupted,
                     "report": str(report) if report else None})
    else:
        print(table)
        print(f"results: {outcome.path}")
        if report:
            print(f"report:  {report}")
    if outcome.interrupted:
        _err(f"interrupted: {len(outcome.previous) + len(outcome.records)} of "
             f"{len(suite.points)} points recorded; continue with: "
             f"{resume_command(args, outcome.path)}")
        return outcome.exit_code or EXIT_INTERRUPTED
    if outcome.elsewhere:
        _err(f"{outcome.elsewhere} multi-node point(s) ran here too; node 0 wrote them")
    if not outcome.counts.get("ok") and not outcome.elsewhere:
        counts = ", ".join(f"{n} {s}" for s, n in outcome.counts.items()) or "no points"
        _err(f"recbench run: no point ran ok ({counts}); the reasons are in {outcome.path}")
        return EXIT_CHECK_FAILED
    return EXIT_OK


def _existing_results_file(text: str):
    """The file of `--resume FILE`, refused in one line unless it is there."""
    from pathlib import Path

    path = Path(text)
    if path.is_dir():
        raise InputError(f"--resume {text}: a directory; pass a .jsonl results file, or "
                         "--resume alone for this machine's newest run of the suite")
    if not path.is_file():
        raise InputError(f"--resume {text}: no such results file; pass one a run wrote, or "
                         "--resume alone for this machine's newest run of the suite")
    return path


def _suite_of(path) -> str:
    """The suite file a results file's header names (`suite_path`), for `--resume FILE`
    without --suite; refused in one line when the header names none or it is gone."""
    from pathlib import Path

    from bench import results as R
    from bench.suites.suite import available_suites

    with warnings.catch_warnings():  # a truncated last line: the runner warns when it repairs it
        warnings.simplefilter("ignore", R.ResultsWarning)
        header = R.load(path).header
    recorded = header.extra.get("suite_path")
    if isinstance(recorded, str) and recorded and Path(recorded).is_file():
        _err(f"recbench run: resuming suite {header.suite!r} from {recorded} (named in the "
             "results file); pass --suite to resume with another file")
        return recorded
    where = f"its file {recorded} is not there" if recorded else "the file does not name its file"
    hint = f" (e.g. --suite {header.suite})" if header.suite in available_suites() else ""
    raise InputError(f"{path} holds a run of suite {header.suite!r}, but {where}: pass --suite "
                     f"NAME|PATH{hint} to resume it")


# --- serve ---------------------------------------------------------------------------------


def resume_command(args, path) -> str:
    """The `recbench run` line that continues an interrupted run, shell-quoted to paste, with
    absolute paths so it works from any directory."""
    from pathlib import Path

    suite = args.suite
    if suite.endswith(".toml") or os.sep in suite:  # a path, not a shipped suite's name
        suite = str(Path(suite).resolve())
    argv = ["recbench", "run", "--suite", suite]
    for s in args.set or []:
        argv += ["--set", s]
    argv += ["--device", args.device] if args.device else []
    return shlex.join([*argv, "--resume", str(Path(path).resolve())])


def _check_devices(suite, hardware, device: str | None) -> None:
    """Refuse, in one line, a run whose points name a device this machine lacks (the same
    rule as `recbench train --device`), instead of recording every point as an error."""
    from bench.machine.hardware import missing_device

    for name, n in suite.devices.items():
        why = missing_device(name, hardware)
        if why and device:
            raise InputError(f"--device {device}: not available on this machine ({why}); "
                             "use --device cpu, or leave --device out")
        if why:
            raise InputError(f"suite {suite.name!r} has {n} points on {name}, which this "
                             f"machine lacks ({why}); run it where there is one, or pass "
                             "--device cpu")


_ESTIMATE_NOTE = ("est_step_ms is a lower bound, not a prediction: the roofline time of the "
                  "analytic FLOPs and bytes at the datasheet peaks of the device (bench/machine/"
                  "datasheet.py), null without an entry (CPUs, unlisted GPUs, KIND:all, int8). "
                  "est_mem_bytes is the analytic estimate the runner holds against capacity_bytes")


def _dry_run(suite, as_json: bool) -> int:
    if not as_json:
        for p in suite.points:
            print(f"{p.id}  {p.label()}")
        from bench.results import point_id
        from bench.scenarios.serve import ServeSpec

        for spec in map(lambda d: ServeSpec(**d), suite.serve):  # LoadGen, after the steps
            print(f"{point_id(spec.point())}  serve {spec.scenario} {spec.workload} "
                  f"{spec.framework} {spec.preset} on {spec.device}, max batch {spec.max_batch}")
        extra = "".join(f"; {v['n_points']} from {k}" for k, v in suite.included().items())
        serve = f" and {len(suite.serve)} serve points" if suite.serve else ""
        print(f"{len(suite.points)} points{serve} in suite {suite.name!r}{extra}")
        return EXIT_OK
    from bench.machine.envinfo import probe_gpus, probe_tpu, ram_bytes
    from bench.machine.hardware import device_capacity_bytes, roofline_floor_ms
    from bench.point import device_kind
    from bench.results import point_id
    from bench.scenarios.step import analytic_cost
    from recmodels.memory import exceeds_capacity

    kinds = {device_kind(d) for d in suite.devices}
    env = {"gpus": probe_gpus() if "cuda" in kinds else [], "ram_bytes": ram_bytes(),
           "tpu": probe_tpu() if "tpu" in kinds else None}
    rows = []
    for p in suite.points:
        cost = analytic_cost(p)
        est, basis = roofline_floor_ms(p, cost, env)
        cap = device_capacity_bytes(p.device, env)
        rows.append({"id": p.id, "label": p.label(), "point": p.to_dict(),
                     "suite": suite.origin.get(p, suite.name),
                     "measure": dataclasses.asdict(suite.measure_for(p)), **cost,
                     "capacity_bytes": cap,
                     # the runner's rule: the estimate's low end (stated error) over capacity
                     "predicted_infeasible": exceeds_capacity(cost["est_mem_bytes"], cap)
                     if cap else None,
                     "est_step_ms": est, "est_step_basis": basis})
    from bench.scenarios.serve import ServeSpec

    serve = [{"id": point_id(s.point()), "point": s.point(), "spec": dataclasses.asdict(s)}
             for s in (ServeSpec(**d) for d in suite.serve)]
    _print_json({"suite": suite.to_dict(), "note": _ESTIMATE_NOTE, "points": rows,
                 "serve": serve})
    return EXIT_OK


# --- parser ------------------------------------------------------------------------------


def package_version() -> str:
    """The installed recbench version (package metadata), or a note where it is not installed."""
    import importlib.metadata

    try:
        return importlib.metadata.version("recbench")
    except importlib.metadata.PackageNotFoundError:
        return "unknown (not installed: run `pip install -e .` in the checkout)"


def build_parser() -> argparse.ArgumentParser:
    from recmodels.config import BLOCKS, LOSSES, PRESETS
    from recmodels.train import COMPILE_MODES, DEVICES, EVAL_PROTOCOLS, FRAMEWORKS, PRECISIONS

    p = _Parser(prog="recbench", description="Hardware and compute benchmarks for "
                "generative recommenders (a GPT over item IDs) in PyTorch and JAX.")
    p.add_argument("--version", action="version", version=f"recbench {package_version()}")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    t = sub.add_parser("train", help="train and evaluate a reference model")
    t.add_argument("--framework", choices=FRAMEWORKS, default="torch")
    t.add_argument("--preset", choices=list(PRESETS), default="tiny")
    t.add_argument("--dataset", default="synthetic",
                   help="synthetic | synthetic-games | a registry name (recbench data list) | "
                        "a path to a 'user item' or MovieLens ratings file")
    t.add_argument("--epochs", type=_positive_int,
                   help="default: 200 for registry datasets (SASRec), 8 for synthetic")
    t.add_argument("--batch-size", type=_positive_int, default=128)
    t.add_argument("--lr", type=float, default=1e-3)
    t.add_argument("--precision", choices=PRECISIONS, default="fp32")
    t.add_argument("--optimizer", choices=("adam", "sgd"), default="adam")
    t.add_argument("--compile", choices=COMPILE_MODES, default="eager", metavar="MODE",
                   help=f"torch.compile mode of the torch step: {', '.join(COMPILE_MODES)} "
                        "(default eager; reduce-overhead adds CUDA graphs on GPUs). JAX "
                        "always jits: eager only")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--device", default="auto", help=f"one of {', '.join(DEVICES)} (cuda:N ok)")
    t.add_argument("--eval", choices=EVAL_PROTOCOLS, default="sampled",
                   help="sampled: 100 sampled negatives (SASRec); full: whole catalog")
    t.add_argument("--eval-users", type=_positive_int, default=10_000)
    t.add_argument("--block", choices=BLOCKS)
    t.add_argument("--loss", choices=LOSSES)
    t.add_argument("--seq-len", type=_positive_int)
    t.add_argument("--dropout", type=float)
    t.add_argument("--n-neg", type=_positive_int, help="negatives per position")
    t.add_argument("--set", action="append", metavar="FIELD=VALUE",
                   help="override any model config field, e.g. n_head=2 or d_ff=128")
    t.add_argument("--eval-every", type=_positive_int, metavar="N",
                   help="evaluate validation and test every N epochs and at the last (the "
                        "curve); default: after the last epoch only")
    t.add_argument("--select", choices=("hr@10", "ndcg@10"), default="ndcg@10", type=str.lower,
                   help="validation metric that picks the best evaluation, whose test "
                        "metrics are reported (default ndcg@10)")
    t.add_argument("--patience", type=_positive_int, metavar="P",
                   help="stop after P evaluations without a better validation metric")
    t.add_argument("--save", help="write the weights of the best validation evaluation to "
                                  "this .safetensors file")
    t.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    from bench.cli.train import cmd_train  # the train command lives beside this

    t.set_defaults(func=cmd_train)

    q = sub.add_parser("parity", help="check torch and JAX give the same numbers")
    q.add_argument("--preset", choices=list(PRESETS), default="tiny")
    q.add_argument("--block", choices=BLOCKS, action="append", help="repeatable; default all")
    q.add_argument("--loss", choices=LOSSES, action="append", help="repeatable; default all")
    q.add_argument("--json", action="store_true")
    q.set_defaults(func=cmd_parity)

    from bench.cli.data import add_data_parser  # the data command lives beside this

    add_data_parser(sub)

    e = sub.add_parser("env", help="environment fingerprint and measured roofs")
    e.add_argument("--no-roofs", action="store_true", help="skip the GEMM/bandwidth measurement")
    e.add_argument("--json", action="store_true")
    e.set_defaults(func=cmd_env)

    r = sub.add_parser("run", help="run a benchmark suite")
    r.add_argument("--suite",
                   help="auto (picked for this hardware; the default) | a name in bench/suites "
                        "| a .toml path; with --resume FILE, the suite file FILE names")
    r.add_argument("--device", type=_run_device,
                   help="run every point on this device (cpu, cuda, cuda:1, tpu, mps)")
    r.add_argument("--out", default="results", type=out_dir,
                   help="results directory (default: results)")
    r.add_argument("--resume", nargs="?", const="latest", metavar="FILE",
                   help="run only the points with no record in FILE (default: the newest "
                        "results file of this machine and suite)")
    r.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a suite field, e.g. measure.min_time_s=0.2 or batch_size=64,128")
    r.add_argument("--no-roofs", action="store_true", help="do not measure roofs (no utilisation)")
    r.add_argument("--report", action="store_true",
                   help="then write the figures and the HTML report next to the results file")
    r.add_argument("--dry-run", action="store_true", help="list the points and exit")
    r.add_argument("--nnodes", type=int, default=1, metavar="N",
                   help="multi-node points: hosts in the job; run the same command on each")
    r.add_argument("--node-rank", type=int, default=0, metavar="R",
                   help="this host's place among the --nnodes (0 writes the records)")
    r.add_argument("--rdzv-endpoint", metavar="HOST:PORT",
                   help="where multi-node ranks meet (PORT and PORT+1 free on HOST)")
    r.add_argument("--json", action="store_true")
    r.set_defaults(func=cmd_run)
    from bench.cli.serve import add_serve_parser  # the serve command lives beside this

    add_serve_parser(sub)
    from bench.cli.ttq import add_ttq_parser  # the ttq command lives beside this

    add_ttq_parser(sub)

    # Commands that live next to what they drive; each module adds its own subparser (and
    # imports matplotlib, git helpers etc. only when its command runs).
    from bench.analysis import plots, report
    from bench.gate import compare_report, gate

    for module in (plots, report, compare_report, gate):
        module.register_cli(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # usage errors (exit 2) and --help (exit 0)
        return int(e.code or 0)
    try:
        with warnings.catch_warnings():  # a warning is one line, like an error; restored after
            warnings.showwarning = lambda m, *_, **__: _err(f"recbench {args.command}: warning: "
                                                             f"{m}")
            with stop_signals_as_interrupt():  # SIGTERM and SIGHUP act as Ctrl-C
                return args.func(args)
    except InputError as e:
        _err(f"recbench {args.command}: error: {e}")
        return EXIT_BAD_INPUT
    except KeyboardInterrupt as e:
        _err(f"recbench {args.command}: interrupted")
        return exit_code(e)
    except BrokenPipeError:
        return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
