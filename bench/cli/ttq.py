"""`recbench ttq`: time to quality, MLPerf Training style (bench/scenarios/ttq.py measures);
its command, its text output and its parser (bench.cli registers it)."""

from __future__ import annotations

import argparse

from bench.cli import EXIT_CHECK_FAILED, EXIT_OK, _err, _positive_int, _print_json, out_dir


def _target(text: str) -> tuple[str, float]:
    from bench.scenarios.ttq import parse_target
    from recmodels.errors import InputError

    try:
        return parse_target(text)
    except InputError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def cmd_ttq(args) -> int:
    import contextlib
    import os
    from pathlib import Path

    from bench import results as R
    from bench.cli.train import check_supported, format_conditions
    from bench.launch.locks import machine_lock
    from bench.launch.runner import check_writable
    from bench.machine.conditions import PointWindow, unstable_reason
    from bench.machine.envinfo import fingerprint
    from bench.scenarios.ttq import TTQSpec, check, ttq
    from recmodels.config import parse_overrides, preset
    from recmodels.errors import InputError
    from recmodels.train import MAX_SEED

    metric, value = args.target
    spec = TTQSpec(dataset=args.dataset, target=metric, target_value=value, runs=args.runs,
                   max_epochs=args.max_epochs, eval_every=args.eval_every,
                   framework=args.framework, preset=args.preset, precision=args.precision,
                   device=args.device, compile=args.compile, batch_size=args.batch_size,
                   lr=args.lr, seed=args.seed, overrides=parse_overrides(args.set or []))
    checked = check(spec)  # options, device and dataset, before any output
    if spec.seed + spec.runs - 1 > MAX_SEED:  # check() validated the first run's seed
        raise InputError(f"seed {spec.seed} with {spec.runs} runs reaches seed "
                         f"{spec.seed + spec.runs - 1}, past the largest, {MAX_SEED}: pass a "
                         "smaller --seed")
    check_supported(spec.framework, checked[1], preset(spec.preset, **spec.overrides).block,
                    spec.precision, spec.compile)  # as `recbench train` refuses them
    env = fingerprint()
    out = Path(args.out)
    folder = out / R.safe_name(env["machine_id"])
    with machine_lock():  # first: a machine busy measuring refuses before anything is made
        created = not folder.exists()
        check_writable(folder)  # a bad --out fails before training
        run_id, started = R.make_run_id(), R.iso_utc()
        try:
            window = PointWindow(exclude=[os.getpid()])  # what else ran meanwhile (the load)
            outcome = ttq(spec, checked=checked,
                          progress=lambda m: _err(f"recbench ttq: {m}"))
            conditions = window.close()
        except BaseException:  # interrupted or failed: no file, and no folder it made
            if created:
                with contextlib.suppress(OSError):
                    folder.rmdir()  # only if empty
            raise
        # The file is written once the runs are done: the record is its only content, so an
        # interrupted ttq leaves no header-only file behind.
        why = unstable_reason(None, conditions)
        header = R.RunHeader(run_id=run_id, suite="ttq", started_at=started, env=env,
                             roofs={})
        with R.ResultsWriter.create(out, env["machine_id"], run_id, header) as writer:
            writer.write(R.TTQRecord.for_point(outcome.point, outcome.status, outcome.reason,
                                               outcome.metrics, conditions=conditions,
                                               flags={"unstable": why} if why else None))
    if args.json:
        _print_json({"results": str(writer.path), "status": outcome.status,
                     "reason": outcome.reason, "point": outcome.point,
                     "metrics": outcome.metrics, "conditions": conditions,
                     "flags": {"unstable": why} if why else {}})
    else:
        print(format_ttq(outcome.point, outcome.status, outcome.reason, outcome.metrics))
        print(format_conditions(conditions))
        if why:
            print(f"  unstable   {why}: the times are not this machine's alone")
        print(f"results: {writer.path}")
    return EXIT_OK if outcome.status == "ok" else EXIT_CHECK_FAILED


def _s(v: float | None, unit: str = " s") -> str:
    return "-" if v is None else f"{v:.1f}{unit}"


def format_ttq(p: dict, status: str, reason: str | None, m: dict) -> str:
    paper = m.get("paper_quality") or {}
    lines = [f"ttq {p['framework']} ({p['compile']}) {p['preset']} on {p['dataset']} "
             f"({p['precision']}, {p['device']}): target valid {p['target']} >= "
             f"{p['target_value']:g}, {p['runs']} run{'s' if p['runs'] != 1 else ''}, cap "
             f"{p['max_epochs']} epoch{'s' if p['max_epochs'] != 1 else ''}, evaluation every "
             f"{p['eval_every']}"]
    for r in m["runs"]:
        reached = r.get("reached") or {}
        test = r.get("test") or {}
        q = (f"; valid {p['target']} {reached[p['target']]:.4f}, test HR@10 "
             f"{test['hr@10']:.4f}" + (f" (paper {paper['hr@10']:.4f})" if "hr@10" in paper
                                       else "")
             + f" NDCG@10 {test['ndcg@10']:.4f}"
             + (f" (paper {paper['ndcg@10']:.4f})" if "ndcg@10" in paper else "")
             if reached and test else "")
        lines.append(f"  seed {r['seed']:<4d} {r['status']:16s} epoch {r['epochs']:>3d}  "
                     f"{_s(r['wall_s'])} (training {_s(r['train_s'])}, evaluation "
                     f"{_s(r['eval_s'])}; setup {_s(r['setup_s'])} before){q}")
    if status != "ok":
        lines.append(f"  status     {status}: {reason}")
        return "\n".join(lines)
    lines.append(f"  time to target  {_s(m['time_to_target_s'])}: {m['score_rule']}")
    if m["train_share"] is not None:
        other = 1 - m["train_share"] - m["eval_share"]
        lines.append(f"  shares     training {m['train_share']:.0%}, evaluation "
                     f"{m['eval_share']:.0%}, other {other:.0%} of the wall time (scored "
                     f"runs); {m['epochs_to_target']:.1f} epochs to target; setup "
                     f"{_s(m['setup_s'])} before the first step")
    energy = m["energy_to_target_j"]
    lines.append(f"  energy     {'-' if energy is None else f'{energy:,.0f} J to target'} "
                 f"({m['energy_provenance']}" + (f": {m['energy_note']}" if m.get("energy_note")
                                                 else "") + ")")
    return "\n".join(lines)


def add_ttq_parser(sub) -> None:
    from recmodels.config import PRESETS
    from recmodels.train import COMPILE_MODES, DEVICES, FRAMEWORKS, PRECISIONS

    s = sub.add_parser("ttq", help="time to a quality target over N seeded training runs "
                                   "(MLPerf Training's score)")
    s.add_argument("--dataset", required=True,
                   help="synthetic | synthetic-games | a registry name (recbench data list) | "
                        "a path to a 'user item' or MovieLens ratings file")
    s.add_argument("--target", type=_target, required=True, metavar="METRIC=X",
                   help="validation target: hr@10=X or ndcg@10=X, 0 < X <= 1")
    s.add_argument("--runs", type=_positive_int, default=5,
                   help="seeded runs, seed, seed+1, ... (default 5, as MLPerf)")
    s.add_argument("--max-epochs", type=_positive_int, metavar="E",
                   help="the cap: a run that has not reached the target then did not "
                        "converge (default 200 for registry datasets, as the paper; 30 else)")
    s.add_argument("--eval-every", type=_positive_int, default=1, metavar="N",
                   help="evaluate every N epochs (default 1)")
    s.add_argument("--framework", choices=FRAMEWORKS, default="torch")
    s.add_argument("--preset", choices=list(PRESETS), default="tiny")
    s.add_argument("--precision", choices=PRECISIONS, default="fp32")
    s.add_argument("--device", default="auto", help=f"one of {', '.join(DEVICES)} (cuda:N ok)")
    s.add_argument("--batch-size", type=_positive_int, default=128)
    s.add_argument("--lr", type=float, default=1e-3)
    s.add_argument("--compile", choices=COMPILE_MODES, default="eager", metavar="MODE",
                   help="torch.compile mode (JAX always jits: eager only)")
    s.add_argument("--set", action="append", metavar="FIELD=VALUE",
                   help="override a model config field, e.g. dropout=0.2")
    s.add_argument("--seed", type=int, default=0, help="the first run's seed (default 0)")
    s.add_argument("--out", default="results", type=out_dir,
                   help="results directory (default: results)")
    s.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    s.set_defaults(func=cmd_ttq)
