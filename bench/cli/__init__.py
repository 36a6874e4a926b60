"""`recbench`: the command-line entry point (also `python -m bench`).

Exit codes: 0 ok, 1 a check failed (parity, regression, a run with no ok point, a diverged
`train` run), 2 bad input (one line on stderr, no traceback; also a device this machine
lacks), 130 interrupted.
`--json` prints one JSON object on stdout; torch, jax, matplotlib load only where needed.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings

from bench.launch.signals import exit_code, stop_signals_as_interrupt
from bench.results.write import out_dir as out_dir  # every command's --out type
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

    from bench.cli.run import add_run_parser  # the run command lives beside this

    add_run_parser(sub)
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
