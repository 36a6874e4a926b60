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
from collections.abc import Callable

from bench.launch.signals import exit_code, stop_signals_as_interrupt
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


def cmd_train(args) -> int:
    from recmodels import weights
    from recmodels.config import parse_overrides
    from recmodels.train import TrainOptions, train

    overrides = {k: v for k, v in {"block": args.block, "loss": args.loss,
                                   "seq_len": args.seq_len, "dropout": args.dropout,
                                   "n_neg": args.n_neg}.items() if v is not None}
    overrides |= parse_overrides(args.set or [])
    if args.save:  # refuse a path that cannot be written before training, not after
        from pathlib import Path

        parent = Path(args.save).resolve().parent
        if not parent.is_dir() or not os.access(parent, os.W_OK):
            raise InputError(f"--save {args.save}: directory {parent} does not exist or is not "
                             "writable; create it or pass another path")
    opts = TrainOptions(framework=args.framework, preset=args.preset, dataset=args.dataset,
                        epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                        precision=args.precision, optimizer=args.optimizer, seed=args.seed,
                        device=args.device, eval=args.eval, eval_users=args.eval_users,
                        overrides=overrides)
    try:
        result, engine = train(opts, return_engine=True)
    except (InputError, KeyboardInterrupt):
        raise
    except Exception:
        reason = _probe_for_train(opts)
        if reason is None:
            raise  # the device runs this kind of step: the failure is the run's own
        raise InputError(f"{reason}; choose another --precision or --block") from None
    ok = result["status"] == "ok"
    if args.save and not ok:
        _err(f"weights not saved to {args.save}: the run diverged")
    elif args.save:
        weights.save(engine.state_dict(), engine.cfg, args.save)
        result["weights"] = str(args.save)
        _err(f"weights saved to {args.save}")
    if args.json:
        _print_json(result)
    else:
        print(format_train_result(result))
    return EXIT_OK if ok else EXIT_CHECK_FAILED  # a diverged run is a failed check


def _probe_for_train(opts) -> str | None:
    """After a training run failed: does a tiny step of its framework, block and precision
    run on its device at all? (bench.scenarios.step.probe; None: it does)."""
    from bench.point import Point
    from bench.scenarios.step import probe
    from recmodels.config import preset
    from recmodels.train import resolve_device

    cfg = preset(opts.preset, **opts.overrides)
    return probe(Point(framework=opts.framework, workload="train", preset=opts.preset,
                       block=cfg.block, precision=opts.precision, batch_size=2,
                       device=resolve_device(opts.framework, opts.device)))


def _format_speed(r: dict) -> str:
    first = f"first epoch {r['first_epoch_s']:.2f} s (includes compilation and warm-up)"
    if r["sequences_per_s"] is None:  # only the first epoch ran
        why = "only one epoch ran" if r["status"] != "ok" else "use --epochs 2 or more"
        return f"  speed      {first}; no steady-state speed from one epoch ({why})"
    return (f"  speed      {r['sequences_per_s']:,.0f} sequences/s, "
            f"{r['seconds_per_epoch']:.2f} s/epoch over epochs 2-{r['steady_epochs'] + 1} "
            f"(training loop incl. batch sampling, evaluation excluded); {first}")


def format_train_result(r: dict) -> str:
    head = (f"{r['framework']} {r['preset']} on {r['dataset']} ({r['epochs']} epochs, "
            f"{r['precision']}, {r['device']})")
    if r["status"] != "ok":
        return "\n".join([head, f"  status     {r['status']}: {r['reason']} "
                                "(no metrics: they are undefined)", _format_speed(r)])
    t, p = r["test"], r["popularity"]["test"]
    return "\n".join([
        head,
        _format_speed(r),
        f"  valid      HR@10 {r['valid']['hr@10']:.4f}  NDCG@10 {r['valid']['ndcg@10']:.4f}",
        f"  test       HR@10 {t['hr@10']:.4f}  NDCG@10 {t['ndcg@10']:.4f}"
        + (f"  AUC {t['auc']:.4f}  acc {t['accuracy']:.4f}  P {t['precision']:.4f}  "
           f"R {t['recall']:.4f}  F1 {t['f1']:.4f}" if "auc" in t else ""),
        f"  popularity HR@10 {p['hr@10']:.4f}  NDCG@10 {p['ndcg@10']:.4f}  "
        f"(most-popular baseline, same users and candidates)",
        f"  protocol   {r['eval_protocol']} on {r['eval_users']} users (leave-one-out)",
    ])


# --- parity ------------------------------------------------------------------------------


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


# --- data --------------------------------------------------------------------------------


def cmd_data(args) -> int:
    from recmodels import data as D

    if args.action == "list":
        rows = []
        for spec in D.REGISTRY.values():
            cached = D.cache_path(spec).exists()
            rows.append({"name": spec.name, "users": spec.users, "items": spec.items,
                         "actions": spec.actions, "cached": cached,
                         "path": str(D.cache_path(spec)), "url": spec.url,
                         "description": spec.description})
        synth = [{"name": n, **{k: v for k, v in kw.items() if k != "name"}}
                 for n, kw in D.SYNTHETIC.items()]
        if args.json:
            _print_json({"registry": rows, "synthetic": synth, "cache_dir": str(D.cache_dir())})
            return EXIT_OK
        print(f"cache: {D.cache_dir()}")
        for r in rows:
            print(f"  {r['name']:10s} {r['users']:>8,} users {r['items']:>8,} items "
                  f"{r['actions']:>10,} actions  {'cached' if r['cached'] else 'not fetched'}"
                  f"  {r['description']}")
        for s in synth:
            print(f"  {s['name']:10s} generated: {s['n_users']:,} users, {s['n_items']:,} items, "
                  f"mean length {s['mean_len']:.1f}")
        return EXIT_OK
    if args.action == "fetch":
        if not args.name:
            raise InputError("recbench data fetch needs a dataset name: see recbench data list")
        progress = _download_bar() if sys.stderr.isatty() else None
        path = D.fetch(args.name, progress=progress)
        print(path)
        return EXIT_OK
    if not args.name:
        raise InputError("recbench data info needs a dataset name or path")
    stats = D.load(args.name).stats()
    if args.json:
        _print_json(stats)
    else:
        for k, v in stats.items():
            print(f"{k:12s} {v:,}" if isinstance(v, int) else f"{k:12s} {v:.4g}")
    return EXIT_OK


def _download_bar() -> Callable[[int, int], None]:
    from tqdm import tqdm

    bar = tqdm(unit="B", unit_scale=True, file=sys.stderr)

    def update(done: int, total: int) -> None:
        bar.total = total or None
        bar.n = done
        bar.refresh()

    return update


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
        print(f"roof {key:10s} GEMM {human(gemm, 'FLOP/s') if gemm else 'n/a':>13s}  "
              f"bandwidth {human_bytes(bw, per_s=True) if bw else 'n/a':>10s}  "
              f"({r.get('method') or r.get('reason')})")
    return EXIT_OK


def cmd_run(args) -> int:
    from pathlib import Path

    from bench import results as R
    from bench.launch.locks import machine_lock
    from bench.launch.progress import summary_table
    from bench.launch.runner import check_writable, find_latest, run_suite
    from bench.machine.envinfo import fingerprint
    from bench.machine.hardware import detect_hardware, device_resolver_for
    from bench.suites.suite import load_suite

    hardware = detect_hardware()
    overrides = list(args.set or []) + ([f"device={args.device}"] if args.device else [])
    suite = load_suite(args.suite, overrides=overrides, hardware=hardware,
                       device_resolver=device_resolver_for(hardware))
    if args.dry_run:  # a plan: it may name devices this machine lacks
        return _dry_run(suite, args.json)
    _check_devices(suite, hardware, args.device)  # before any point or output
    env = fingerprint()
    out = Path(args.out)
    resume = None
    if args.resume:
        resume = (find_latest(out, env["machine_id"], suite.name) if args.resume == "latest"
                  else Path(args.resume))
    else:
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
    if not outcome.counts.get("ok"):
        counts = ", ".join(f"{n} {s}" for s, n in outcome.counts.items()) or "no points"
        _err(f"recbench run: no point ran ok ({counts}); the reasons are in {outcome.path}")
        return EXIT_CHECK_FAILED
    return EXIT_OK


# --- serve ---------------------------------------------------------------------------------


def _latency_ms(text: str) -> float:
    """"80ms", "80 ms", "0.08s", "80000us" or a bare number (ms) -> milliseconds."""
    import re

    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*(ms|s|us|µs)?\s*", text)
    if not m or float(m.group(1)) <= 0:
        raise argparse.ArgumentTypeError(f"expected a latency like 80ms, 0.08s or 80, got "
                                         f"{text!r}")
    scale = {"s": 1e3, "us": 1e-3, "µs": 1e-3}.get(m.group(2) or "ms", 1.0)
    return float(m.group(1)) * scale


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


def cmd_serve(args) -> int:
    """One LoadGen measurement of an Engine behind the batcher, in this process (LoadGen's
    threads call back into the batcher, which shares the Engine), recorded like a run point."""
    from pathlib import Path

    from bench import results as R
    from bench.launch.locks import machine_lock
    from bench.launch.runner import check_writable
    from bench.machine.envinfo import fingerprint
    from bench.scenarios.serve import ServeSpec, serve

    spec = ServeSpec(framework=args.framework, workload=args.workload, preset=args.preset,
                     catalog_size=args.catalog_size, seq_len=args.seq_len,
                     n_candidates=args.candidates, gen_steps=args.gen_steps,
                     beam_width=args.beam_width, precision=args.precision, device=args.device,
                     scenario=args.scenario, max_batch=args.max_batch,
                     max_delay_ms=args.max_delay_ms, target_latency_ms=args.target_latency,
                     percentile=args.percentile, rate_per_s=args.rate,
                     duration_s=args.duration, min_queries=args.min_queries,
                     search_runs=args.search_runs)
    spec.validate()
    from bench.machine.hardware import detect_hardware, missing_device

    why = missing_device(spec.device, detect_hardware())
    if why:
        raise InputError(f"--device {spec.device}: not available on this machine ({why}); "
                         "use --device cpu")
    env = fingerprint()
    out = Path(args.out)
    check_writable(out / R.safe_name(env["machine_id"]))
    run_id = R.make_run_id()
    header = R.RunHeader(run_id=run_id, suite="serve", started_at=R.iso_utc(), env=env,
                         roofs={})
    with machine_lock(), R.ResultsWriter.create(out, env["machine_id"], run_id,
                                                header) as writer:
        log_root = writer.path.with_suffix("") / "loadgen"  # <run-id>/loadgen/<test>/
        outcome = serve(spec, log_root, progress=lambda m: _err(f"recbench serve: {m}"))
        writer.write(R.ServeRecord.for_point(outcome.point, outcome.status, outcome.reason,
                                             outcome.metrics))
    m = outcome.metrics
    if args.json:
        _print_json({"results": str(writer.path), "status": outcome.status,
                     "reason": outcome.reason, "point": outcome.point, "metrics": m})
    else:
        lat = m["latency_ms"]
        fmt = lambda v: "-" if v is None else f"{v:.1f}"  # noqa: E731
        print(f"{spec.scenario} {spec.workload} {spec.framework} {spec.preset}: "
              f"{outcome.status}" + (f" ({outcome.reason})" if outcome.reason else ""))
        if m["max_rate_per_s"] is not None:
            print(f"max rate within p{spec.percentile:g} <= {spec.target_latency_ms:g} ms: "
                  f"{m['max_rate_per_s']:,.1f} requests/s ({m['search_method']}, "
                  f"{len(m['search'])} runs)")
        print(f"{m['requests']:,} requests, {fmt(m['samples_per_s'])} requests/s; latency ms "
              f"p50 {fmt(lat['p50'])} p90 {fmt(lat['p90'])} p99 {fmt(lat['p99'])} "
              f"p99.9 {fmt(lat['p99_9'])}")
        energy = m["energy_j_per_1k_requests"]
        print(f"energy: {'-' if energy is None else f'{energy:.2f} J per 1,000 requests'} "
              f"({m['energy_provenance']})")
        print(f"results: {writer.path}")
    return EXIT_OK if outcome.status == "ok" else EXIT_CHECK_FAILED


def _add_serve_parser(sub) -> None:
    from bench.point import FRAMEWORKS, PRECISIONS
    from bench.scenarios.serve import PERCENTILES, SCENARIOS, WORKLOADS
    from recmodels.config import PRESETS

    s = sub.add_parser("serve", help="serve an Engine behind a dynamic batcher under LoadGen")
    s.add_argument("--scenario", choices=SCENARIOS, default="server")
    s.add_argument("--workload", choices=WORKLOADS, default="rank")
    s.add_argument("--framework", choices=FRAMEWORKS, default="torch")
    s.add_argument("--preset", choices=list(PRESETS), default="tiny")
    s.add_argument("--catalog-size", type=_positive_int)
    s.add_argument("--seq-len", type=_positive_int)
    s.add_argument("--candidates", type=_positive_int, default=256, help="K per ranked request")
    s.add_argument("--gen-steps", type=_positive_int, default=4,
                   help="generate: S items per request")
    s.add_argument("--beam-width", type=_positive_int, default=16,
                   help="generate: W beams per request")
    s.add_argument("--precision", choices=PRECISIONS, default="fp32")
    s.add_argument("--device", default="cpu")
    s.add_argument("--max-batch", type=_positive_int, default=32)
    s.add_argument("--max-delay-ms", type=float,
                   help="longest wait for a batch to fill (default 2 for server, else 0)")
    s.add_argument("--target-latency", type=_latency_ms, default=80.0, metavar="LATENCY",
                   help="server: latency target, e.g. 80ms (default)")
    s.add_argument("--percentile", type=float, choices=PERCENTILES, default=99.0)
    s.add_argument("--rate", type=_positive_float,
                   help="server: one run at this many requests/s instead of the search")
    s.add_argument("--duration", type=_positive_float, default=5.0, metavar="SECONDS",
                   help="minimum duration of each LoadGen run (MLPerf: 600)")
    s.add_argument("--min-queries", type=_positive_int, default=200)
    s.add_argument("--search-runs", type=_positive_int, default=8)
    s.add_argument("--out", default="results", help="results directory (default: results)")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_serve)


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
    from recmodels.train import DEVICES, EVAL_PROTOCOLS, FRAMEWORKS, PRECISIONS

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
    t.add_argument("--save", help="write the trained weights to this .safetensors file")
    t.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    t.set_defaults(func=cmd_train)

    q = sub.add_parser("parity", help="check torch and JAX give the same numbers")
    q.add_argument("--preset", choices=list(PRESETS), default="tiny")
    q.add_argument("--block", choices=BLOCKS, action="append", help="repeatable; default all")
    q.add_argument("--loss", choices=LOSSES, action="append", help="repeatable; default all")
    q.add_argument("--json", action="store_true")
    q.set_defaults(func=cmd_parity)

    d = sub.add_parser("data", help="list, fetch and inspect datasets")
    d.add_argument("action", choices=("list", "fetch", "info"))
    d.add_argument("name", nargs="?", help="registry name, synthetic name, or a file path")
    d.add_argument("--json", action="store_true")
    d.set_defaults(func=cmd_data)

    e = sub.add_parser("env", help="environment fingerprint and measured roofs")
    e.add_argument("--no-roofs", action="store_true", help="skip the GEMM/bandwidth measurement")
    e.add_argument("--json", action="store_true")
    e.set_defaults(func=cmd_env)

    r = sub.add_parser("run", help="run a benchmark suite")
    r.add_argument("--suite", default="auto",
                   help="auto (picked for this hardware) | a name in bench/suites | a .toml path")
    r.add_argument("--device", help="run every point on this device (cpu, cuda, cuda:1, tpu, mps)")
    r.add_argument("--out", default="results", help="results directory (default: results)")
    r.add_argument("--resume", nargs="?", const="latest", metavar="FILE",
                   help="run only the points with no record in FILE (default: the newest "
                        "results file of this machine and suite)")
    r.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a suite field, e.g. measure.min_time_s=0.2 or batch_size=64,128")
    r.add_argument("--no-roofs", action="store_true", help="do not measure roofs (no utilisation)")
    r.add_argument("--report", action="store_true",
                   help="then write the figures and the HTML report next to the results file")
    r.add_argument("--dry-run", action="store_true", help="list the points and exit")
    r.add_argument("--json", action="store_true")
    r.set_defaults(func=cmd_run)
    _add_serve_parser(sub)

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
