"""`recbench train`: its command and its text output (bench.cli adds its parser)."""

from __future__ import annotations

import os

from bench.cli import EXIT_BAD_INPUT, EXIT_CHECK_FAILED, EXIT_OK, _err, _print_json
from bench.machine.conditions import PointWindow, unstable_reason
from recmodels.errors import InputError


def cmd_train(args) -> int:
    from recmodels.config import parse_overrides, preset
    from recmodels.train import TrainOptions, resolve_device, train

    overrides = {k: v for k, v in {"block": args.block, "loss": args.loss,
                                   "seq_len": args.seq_len, "dropout": args.dropout,
                                   "n_neg": args.n_neg}.items() if v is not None}
    overrides |= parse_overrides(args.set or [])
    if args.save is not None:  # refuse a path that cannot be written before training, not after
        check_save_path(args.save)
    opts = TrainOptions(framework=args.framework, preset=args.preset, dataset=args.dataset,
                        epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                        precision=args.precision, optimizer=args.optimizer, seed=args.seed,
                        device=args.device, eval=args.eval, eval_users=args.eval_users,
                        compile=args.compile, overrides=overrides,
                        eval_every=args.eval_every, select=args.select, patience=args.patience)
    opts.validate()
    check_supported(opts.framework, resolve_device(opts.framework, opts.device),
                    preset(opts.preset, **overrides).block, opts.precision, opts.compile)
    window = PointWindow(exclude=[os.getpid()])  # what else ran meanwhile (the load)
    try:
        # --save keeps a copy of the weights at the best validation evaluation (train's
        # keep_best): the saved weights are those the reported test metrics belong to
        result, engine = train(opts, return_engine=True, keep_best=bool(args.save))
    except (InputError, KeyboardInterrupt):
        raise
    except Exception:
        reason = _probe_for_train(opts)
        if reason is None:
            raise  # the device runs this kind of step: the failure is the run's own
        raise InputError(f"{reason}; choose another --precision or --block") from None
    # the rule run and ttq flag a point by: others took >= 0.5 cores, or steal reached 10%
    result["conditions"] = window.close()
    why = unstable_reason(None, result["conditions"])
    result["flags"] = {"unstable": why} if why else {}
    ok = result["status"] == "ok"
    if args.save and not ok:
        _err(f"weights not saved to {args.save}: the run diverged")
    elif args.save:
        if not save_new(engine.state_dict(), engine.cfg, args.save):
            _err(f"recbench train: error: --save {args.save}: the file appeared while the run "
                 "trained and is kept; the weights are not saved: choose another path")
            if args.json:
                _print_json(result)
            else:
                print(format_train_result(result))
            return EXIT_BAD_INPUT
        result["weights"] = str(args.save)
        result["weights_epoch"] = result["best_epoch"]
        _err(f"weights of epoch {result['best_epoch']} (best valid {result['select']}) saved "
             f"to {args.save}")
    if args.json:
        _print_json(result)
    else:
        print(format_train_result(result))
    return EXIT_OK if ok else EXIT_CHECK_FAILED  # a diverged run is a failed check


def check_save_path(text: str) -> None:
    """`--save PATH`, before training: a new file in a writable directory. An empty path, a
    directory and an existing file (the dataset, a results file...) are refused: a run never
    overwrites what is there."""
    from pathlib import Path

    if not text.strip():
        raise InputError("--save needs a file path, got an empty string: name a new "
                         ".safetensors file, or leave --save out")
    path = Path(text)
    if path.is_dir() or text.endswith(("/", os.sep)):
        raise InputError(f"--save {text}: a directory; name a new file, e.g. "
                         f"{path / 'weights.safetensors'}")
    if os.path.lexists(path):
        raise InputError(f"--save {text}: the file exists and would be overwritten; choose "
                         "another path or remove it")
    parent = path.resolve().parent
    if not parent.is_dir() or not os.access(parent, os.W_OK):
        raise InputError(f"--save {text}: directory {parent} does not exist or is not "
                         "writable; create it or pass another path")


def save_new(tensors: dict, cfg, text: str) -> bool:
    """Write the weights to `text` only if no file is there (False if one appeared since
    check_save_path): written beside it, then hard-linked to the name, which never replaces
    a file. The mode is the umask's, as for any new file."""
    from pathlib import Path

    from recmodels import weights

    path = Path(text)
    part = path.with_name(f".{path.name}.{os.getpid()}.partial")
    weights.save(tensors, cfg, part)
    try:
        mask = os.umask(0)
        os.umask(mask)
        os.chmod(part, 0o666 & ~mask)  # safetensors creates its files 0600
        try:
            os.link(part, path)
        except FileExistsError:
            return False
        except OSError:  # a file system without hard links
            if os.path.lexists(path):
                return False
            os.replace(part, path)
    finally:
        part.unlink(missing_ok=True)
    return True


def check_supported(framework: str, device: str, block: str, precision: str,
                    compile: str = "eager") -> None:
    """Refuse (InputError) a framework, device, block and precision that do not go together,
    by the table `recbench run` records such points `unsupported` with
    (bench.scenarios.step.support_reason): tf32 on a CPU, for one, would run fp32."""
    from bench.point import Point
    from bench.scenarios.step import Unsupported, device_caps, support_reason

    try:
        reason = support_reason(Point(framework=framework, workload="train", preset="tiny",
                                      block=block, precision=precision, batch_size=2,
                                      device=device, compile=compile),
                                device_caps(framework, device))
    except Unsupported as e:
        reason = str(e)
    if reason:
        raise InputError(f"{reason}; choose another --precision or --device")


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
            f"{r['seconds_per_epoch']:.2f} s/epoch over "
            + (f"epochs 2-{r['steady_epochs'] + 1}" if r["steady_epochs"] > 1 else "epoch 2")
            + f" (training loop incl. batch sampling, evaluation excluded); {first}")


def _with_paper(m: dict, paper: dict | None, key: str) -> str:
    value = f"{m[key]:.4f}"
    return f"{value} (paper {paper[key]:.4f})" if paper and key in paper else value


CURVE_ROWS = 12  # a longer curve shows its first and last rows and the best one


def format_curve(r: dict) -> list[str]:
    """The evaluation curve, one row per evaluation (the best marked *), compacted to
    CURVE_ROWS rows with an ellipsis."""
    curve = r.get("curve") or []
    if len(curve) < 2:  # one evaluation: the valid and test lines say it all
        return []
    rows = list(range(len(curve)))
    if len(rows) > CURVE_ROWS:
        best = next((i for i, c in enumerate(curve) if c["epoch"] == r.get("best_epoch")), 0)
        half = CURVE_ROWS // 2
        rows = sorted({*range(half), *range(len(curve) - half, len(curve)), best})
    out = ["  curve      epoch  valid HR@10 NDCG@10   test HR@10 NDCG@10   wall s  (train s, "
           "eval s)"]
    prev = -1
    for i in rows:
        if i != prev + 1:
            out.append("             ...")
        c, prev = curve[i], i
        mark = "*" if c["epoch"] == r.get("best_epoch") else " "
        out.append(f"           {mark}{c['epoch']:5d}        {c['valid']['hr@10']:.4f}  "
                   f"{c['valid']['ndcg@10']:.4f}       {c['test']['hr@10']:.4f}  "
                   f"{c['test']['ndcg@10']:.4f}  {c['wall_s']:7.1f}  ({c['train_s']:.1f}, "
                   f"{c['eval_s']:.1f})")
    return out


def _format_stop(r: dict) -> str | None:
    notes = []
    if r.get("early_stopped_epoch"):
        n = r["patience"]
        notes.append(f"early stop at epoch {r['early_stopped_epoch']} ({n} evaluation"
                     f"{'s' if n != 1 else ''} without a better validation {r['select']})")
    target = r.get("target")
    if target:
        notes.append(f"target valid {target['metric']} >= {target['value']:g} "
                     + (f"reached at epoch {target['reached_epoch']}" if target["reached_epoch"]
                        else "not reached"))
    return f"  stop       {'; '.join(notes)}" if notes else None


def format_train_result(r: dict) -> str:
    run = r.get("epochs_run", r["epochs"])
    head = (f"{r['framework']} ({r.get('compile', 'eager')}) {r['preset']} on {r['dataset']} "
            + (f"({r['epochs']} epoch{'s' if r['epochs'] != 1 else ''}, " if run == r["epochs"]
               else f"({run} of {r['epochs']} epochs run, ")
            + f"{r['precision']}, {r['device']})")
    if r["status"] != "ok":
        return "\n".join([head, f"  status     {r['status']}: {r['reason']} "
                                "(no metrics: they are undefined)", _format_speed(r),
                           *_format_load(r)])
    t, p = r["test"], r["popularity"]["test"]
    paper = r.get("paper_quality")
    lines = [head, _format_speed(r)]
    if "eval_s" in r:
        n = len(r.get("curve") or [])
        lines.append(f"  time       {r['wall_s']:.1f} s from the first step: training "
                     f"{r['train_s']:.1f} s, {n} evaluation{'s' if n != 1 else ''} "
                     f"{r['eval_s']:.1f} s; setup {r['setup_s']:.1f} s before it")
    lines += format_curve(r)
    if r.get("best_epoch") is not None and len(r.get("curve") or []) > 1:
        lines.append(f"  best       epoch {r['best_epoch']} by valid {r['select']}: the valid "
                     "and test figures below are that evaluation's")
    stop = _format_stop(r)
    lines += [stop] if stop else []
    lines += [
        f"  valid      HR@10 {r['valid']['hr@10']:.4f}  NDCG@10 {r['valid']['ndcg@10']:.4f}",
        f"  test       HR@10 {_with_paper(t, paper, 'hr@10')}  "
        f"NDCG@10 {_with_paper(t, paper, 'ndcg@10')}"
        + (f"  AUC {t['auc']:.4f}  acc {t['accuracy']:.4f}  P {t['precision']:.4f}  "
           f"R {t['recall']:.4f}  F1 {t['f1']:.4f}" if "auc" in t else ""),
        f"  popularity HR@10 {p['hr@10']:.4f}  NDCG@10 {p['ndcg@10']:.4f}  "
        f"(most-popular baseline, same users and candidates)",
        f"  protocol   {r['eval_protocol']} on {r['eval_users']} users (leave-one-out)"
        + ("; paper: SASRec's reported figures on this dataset" if paper else ""),
    ]
    return "\n".join(lines + _format_load(r))


def format_conditions(c: dict) -> str:
    """The machine's load over the whole measurement (bench.machine.conditions.PointWindow)."""
    def avg(v):
        return "-" if not v else f"{v[0]:.2f}"

    others = c.get("others_cpu_cores")
    busiest = ", ".join(f"{b['name']} {b['cpu_cores']:.2f}" for b in (c.get("busiest") or [])[:3]
                        if b["cpu_cores"] >= 0.05)
    return (f"  conditions load average (1 min) {avg(c.get('load_avg_before'))} before, "
            f"{avg(c.get('load_avg_after'))} after; other processes used "
            + ("-" if others is None else f"{others:.2f}") + " cores on average"
            + (f" ({busiest})" if busiest else "")
            + ("" if c.get("steal") is None else f"; CPU steal {c['steal']:.1%}"))


def _format_load(r: dict) -> list[str]:
    """The conditions line and, where the run was disturbed, the unstable line."""
    if not r.get("conditions"):
        return []
    why = (r.get("flags") or {}).get("unstable")
    return [format_conditions(r["conditions"])] + (
        [f"  unstable   {why}: the times are not this machine's alone"] if why else [])


# --- parity ------------------------------------------------------------------------------
