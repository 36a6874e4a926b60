"""`recbench run`: a suite's points, measured (or listed with --dry-run), and its parser."""

from __future__ import annotations

import argparse
import dataclasses
import os
import shlex
import warnings

from bench.cli import (
    EXIT_CHECK_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    _err,
    _print_json,
    out_dir,
)
from recmodels.errors import InputError


def _run_device(text: str) -> str:
    """`run --device`: one device, or several with commas, checked here so that an error names
    --device (the suite applies it as `--set device=...`)."""
    from bench.point import field_problem

    for item in text.split(","):
        problem = field_problem("device", item.strip(), allow_auto=True)
        if problem:
            raise argparse.ArgumentTypeError(problem)
    return text


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


def add_run_parser(sub) -> None:
    """The `run` subcommand."""
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
