"""`recbench serve`: its command and its parser (bench.cli registers it)."""

from __future__ import annotations

import argparse

from bench.cli import EXIT_CHECK_FAILED, EXIT_OK, _err, _positive_int, _print_json, out_dir
from recmodels.errors import InputError


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
    with machine_lock():  # first: a machine busy measuring refuses before a folder is made
        check_writable(out / R.safe_name(env["machine_id"]))
        run_id = R.make_run_id()
        header = R.RunHeader(run_id=run_id, suite="serve", started_at=R.iso_utc(), env=env,
                             roofs={})
        with R.ResultsWriter.create(out, env["machine_id"], run_id, header) as writer:
            log_root = writer.path.with_suffix("") / "loadgen"  # <run-id>/loadgen/<test>/
            outcome = serve(spec, log_root, progress=lambda m: _err(f"recbench serve: {m}"))
            writer.write(R.ServeRecord.for_point(outcome.point, outcome.status,
                                                 outcome.reason, outcome.metrics))
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


def add_serve_parser(sub) -> None:
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
    s.add_argument("--out", default="results", type=out_dir,
                   help="results directory (default: results)")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_serve)
