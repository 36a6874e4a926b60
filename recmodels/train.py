"""The framework-neutral train / evaluate loop behind `recbench train`.

Both frameworks are driven through the same `Engine` API (torch_model.Engine,
jax_model.Engine), so the loop, the data and the metrics are shared and only the model
code differs. The protocol is SASRec's: leave-one-out, evaluation of the last item against
100 sampled negatives on at most 10,000 users (or the whole catalog with `eval="full"`),
and the most-popular-items baseline on the same users and candidates so that learning is
visible.

Evaluation during training (`eval_every`): validation and test every N epochs and at the last
one, each a point of the result's `curve`; the reported test metrics are those of the best
validation evaluation (SASRec's reference does the same), optionally with early stopping
(`patience`) or a stop the first time validation reaches a target (`target`, for time to
quality). That bookkeeping is recmodels/curve.py's.
"""

from __future__ import annotations

import contextlib
import math
import sys
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass, field

import numpy as np

from recmodels import data as D
from recmodels import metrics as M
from recmodels import splits as S
from recmodels.checks import EVAL_ROWS, check_memory, check_split
from recmodels.config import (
    GenRecConfig,
    preset,
)
from recmodels.curve import SELECT_METRICS, Curve, short
from recmodels.errors import InputError

FRAMEWORKS = ("torch", "jax")
PRECISIONS = ("fp32", "tf32", "bf16", "fp16")
DEVICES = ("auto", "cpu", "cuda", "tpu", "mps")
EVAL_PROTOCOLS = ("sampled", "full")
# torch.compile modes (recmodels.torch.engine.COMPILE_MODES; named here so that validating
# options does not import torch). JAX always jits: its runs take "eager" only.
COMPILE_MODES = ("eager", "default", "reduce-overhead", "max-autotune")
PAPER_EPOCHS = 200  # SASRec trains ~200 epochs on its datasets
SYNTHETIC_EPOCHS = 8
# Non-finite step losses in a row that mean divergence. fp16 loss scaling skips a step whose
# gradients overflow (torch GradScaler, optax.apply_if_finite): one such step is normal.
MAX_NONFINITE_STREAK = 5
MAX_SEED = 2**32 - 1  # numpy's and JAX's seeds: 0 .. 2**32 - 1 (a negative one is a ValueError)


class Diverged(RuntimeError):
    """Training produced non-finite losses, parameters or scores (reason in the message)."""


def divergence(step_losses, streak: int, params_finite: bool) -> tuple[str | None, int]:
    """Why training has diverged ("loss became nan", "parameters became non-finite") or None,
    and the run of non-finite losses to carry into the next epoch. Divergence is non-finite
    parameters, or MAX_NONFINITE_STREAK non-finite losses in a row (a run may span epochs)."""
    first_bad = None  # the epoch's first non-finite loss
    for x in map(float, step_losses):
        if math.isfinite(x):
            streak = 0
            continue
        streak += 1
        first_bad = x if first_bad is None else first_bad
        if streak >= MAX_NONFINITE_STREAK:
            return f"loss became {first_bad}", streak
    if not params_finite:
        return (f"loss became {first_bad}" if first_bad is not None
                else "parameters became non-finite"), streak
    return None, streak


@dataclass
class TrainOptions:
    framework: str = "torch"
    preset: str = "tiny"
    dataset: str = "synthetic"
    epochs: int | None = None  # None: PAPER_EPOCHS for registry data, else SYNTHETIC_EPOCHS
    batch_size: int = 128
    lr: float = 1e-3
    precision: str = "fp32"
    optimizer: str = "adam"
    seed: int = 0
    device: str = "auto"
    eval: str = "sampled"
    eval_users: int = 10_000  # SASRec evaluates on a random 10,000 users when there are more
    compile: str = "eager"  # torch.compile mode (COMPILE_MODES); JAX always jits
    overrides: dict = field(default_factory=dict)  # GenRecConfig fields (block, loss, seq_len...)
    eval_every: int | None = None  # evaluate every N epochs and at the last; None: last only
    select: str = "ndcg@10"  # the validation metric that picks the best evaluation
    patience: int | None = None  # stop after P evaluations without a better one; None: never
    target: tuple[str, float] | None = None  # (metric, value): stop once validation reaches it

    def validate(self) -> None:
        checks = [("framework", FRAMEWORKS), ("precision", PRECISIONS), ("device", DEVICES),
                  ("eval", EVAL_PROTOCOLS), ("optimizer", ("adam", "sgd")),
                  ("compile", COMPILE_MODES)]
        for name, allowed in checks:
            value = getattr(self, name)
            base = value.split(":")[0] if name == "device" else value
            if base not in allowed:
                raise InputError(f"unknown {name} {value!r}: choose one of {', '.join(allowed)}")
        if self.framework == "jax" and self.compile != "eager":
            raise InputError(f"compile {self.compile!r} is a torch.compile mode, and JAX always "
                             "jits its step: leave compile at eager for framework jax")
        index = self.device.partition(":")[2]
        if ":" in self.device and not index.isdigit():  # e.g. cuda:all (data parallel) or cuda:x
            raise InputError(f"bad device {self.device!r}: training runs on one device, "
                             "written KIND or KIND:N (e.g. cuda:1)")
        for name in ("batch_size", "eval_users"):
            if getattr(self, name) < 1:
                raise InputError(f"{name} must be a positive integer, got {getattr(self, name)}")
        if self.epochs is not None and self.epochs < 1:
            raise InputError(f"epochs must be a positive integer, got {self.epochs}")
        if not self.lr > 0 or not math.isfinite(self.lr):  # nan and inf: a diverged run
            raise InputError(f"lr must be {'finite' if self.lr > 0 else '> 0'}, got {self.lr}: "
                             "pass a positive learning rate such as --lr 1e-3 (the default, "
                             "SASRec's)")
        if not 0 <= self.seed <= MAX_SEED:
            raise InputError(f"seed must be an integer from 0 to {MAX_SEED}, got {self.seed}: "
                             "pass a non-negative seed such as --seed 0")
        for name in ("eval_every", "patience"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise InputError(f"{name} must be a positive integer, got {getattr(self, name)}")
        if self.select not in SELECT_METRICS:
            raise InputError(f"unknown selection metric {self.select!r}: choose one of "
                             f"{', '.join(SELECT_METRICS)}")
        if self.target is not None:
            metric, value = self.target
            if metric not in SELECT_METRICS or not 0 < value <= 1:
                raise InputError(f"bad target {metric}={value}: write hr@10=X or ndcg@10=X "
                                 "with 0 < X <= 1")


def resolve_device(framework: str, device: str) -> str:
    """'auto' -> the best device the framework sees; a named device must exist."""
    kind = device.split(":")[0]
    if framework == "torch":
        import torch

        have = {"cpu": True, "cuda": torch.cuda.is_available(),
                "mps": torch.backends.mps.is_available(), "tpu": False}
        if kind == "auto":
            return "cuda" if have["cuda"] else "mps" if have["mps"] else "cpu"
    else:
        import jax

        from recmodels.envvars import jax_platforms_problem

        if kind != "auto" and (problem := jax_platforms_problem(kind)):
            raise InputError(problem)
        try:
            backend = jax.default_backend()  # "cpu" | "gpu" | "tpu"
        except (RuntimeError, AssertionError) as e:  # AssertionError: no listed platform started
            if problem := jax_platforms_problem(failed=e):
                raise InputError(problem) from None
            raise
        have = {"cpu": True, "cuda": backend == "gpu", "tpu": backend == "tpu", "mps": False}
        if kind == "auto":
            return {"gpu": "cuda", "tpu": "tpu"}.get(backend, "cpu")
    if not have.get(kind, False):
        raise InputError(f"device {device!r} is not available to {framework} on this machine: "
                         "use --device auto or cpu")
    index = device.partition(":")[2]
    if index and kind in ("cuda", "tpu"):  # an index past the last device fails deep inside
        if framework == "torch":
            count = torch.cuda.device_count()
        else:
            count = len(jax.devices({"cuda": "gpu"}.get(kind, kind)))
        if int(index) >= count:
            raise InputError(f"device {device!r} does not exist: {framework} sees {count} "
                             f"{kind} device(s), {kind}:0 to {kind}:{count - 1}")
    return device


def make_engine(framework: str, cfg: GenRecConfig, *, device: str, seed: int = 0,
                optimizer: str = "adam", lr: float = 1e-3, precision: str = "fp32",
                compile: str = "eager"):
    """An Engine of either framework; `precision` tf32 allows TF32 for fp32 matmuls;
    `compile` a torch.compile mode for torch (torch_model.COMPILE_MODES; JAX always jits)."""
    kw = {}
    if framework == "torch":
        from recmodels.torch_model import Engine

        kw["compile"] = compile
    else:
        from recmodels.jax_model import Engine
    return Engine(cfg, seed=seed, optimizer=optimizer, lr=lr, device=device,
                  matmul_precision="tf32" if precision == "tf32" else "highest", **kw)


def compute_dtype(precision: str) -> str:
    """Training precision -> the model's matmul dtype (tf32 keeps fp32 storage)."""
    return {"bf16": "bf16", "fp16": "fp16"}.get(precision, "fp32")


def evaluate(engine, split: S.Split, which: str, *, protocol: str, batch_size: int,
             max_users: int, seed: int, pop: np.ndarray | None = None) -> dict:
    """HR/NDCG@10 (and classification metrics for the sampled protocol) of the engine, and
    of the most-popular baseline when `pop` is given, on the same users and candidates.
    Raises Diverged when the model's scores contain NaN (the metrics are then undefined)."""
    cfg = engine.cfg
    model_acc, pop_acc = M.RankAccumulator(), M.RankAccumulator()

    def checked(scores: np.ndarray) -> np.ndarray:
        if np.isnan(scores).any():
            raise Diverged(f"scores became nan in {which} evaluation")
        return scores

    rows = max(batch_size, EVAL_ROWS)
    for b in S.eval_batches(split, which, seq_len=cfg.seq_len, batch_size=rows, seed=seed,
                            max_users=max_users):
        if protocol == "sampled":
            model_acc.add_sampled(checked(engine.score_candidates(b["seq"], b["candidates"])))
            if pop is not None:
                pop_acc.add_sampled(pop[b["candidates"]].astype(np.float64))
        else:
            indptr, indices = S.seen_items(split, b["user"], which)
            model_acc.add_full(checked(engine.score_catalog(b["seq"])), b["target"], indptr,
                               indices)
            if pop is not None:
                pop_scores = np.broadcast_to(pop.astype(np.float64), (len(b["target"]), len(pop)))
                pop_acc.add_full(pop_scores, b["target"], indptr, indices)
    out = {"model": model_acc.result(ks=(10,)), "n_users": len(model_acc)}
    if pop is not None:
        out["popularity"] = pop_acc.result(ks=(10,))
    return out


def paper_figures(dataset: str) -> tuple[dict, dict]:
    """(paper_quality, settings) of a registry dataset: the quality its paper reports
    ({"hr@10", "ndcg@10"}) and the GenRecConfig fields the paper set for it (seq_len,
    dropout); ({}, {}) for synthetic data and files."""
    spec = D.REGISTRY.get(dataset)
    if spec is None:
        return {}, {}
    return (dict(getattr(spec, "paper_quality", None) or {}),
            dict(getattr(spec, "settings", None) or {}))


def train(opts: TrainOptions, *, log: Callable[[str], None] | None = None,
          progress: bool | None = None, return_engine: bool = False, keep_best: bool = False,
          window: Callable[[object], AbstractContextManager] | None = None,
          epoch_log: bool = True):
    """Train on the dataset's leave-one-out split, evaluate, and return the result object
    (and the trained engine when `return_engine`). A run that diverges (see `divergence`)
    stops at that epoch and is still a result: status "diverged", the reason and the epoch,
    and null metrics.

    Evaluation (validation, then test) runs every `opts.eval_every` epochs and after the last
    one; each is a point of `curve`. `valid` and `test` are those of the best validation
    evaluation by `opts.select` (`best_epoch`; the earliest wins a tie). Times: `train_s` is
    the training loops', `eval_s` the evaluations', `wall_s` from the first training step to
    the end of the last evaluation (both included); `setup_s` (data loading, engine
    construction) comes before it.
    `keep_best`: keep a copy of the weights at each new best evaluation (in `eval_s`) and put
    them back into the engine at the end (its optimizer state is then fresh), so the returned
    engine holds the weights the reported test metrics belong to.
    `window(engine)`: a context manager (an energy meter) entered just before the first
    training step and left after the last evaluation, the span `wall_s` times.
    `epoch_log`: log a line per epoch (a line per evaluation is always logged)."""
    opts.validate()
    log = log or (lambda s: print(s, file=sys.stderr, flush=True))
    device = resolve_device(opts.framework, opts.device)
    t0 = time.perf_counter()
    data = D.load(opts.dataset)
    split = S.leave_one_out(data)
    check_split(split, opts)  # what training and evaluation need, before either runs
    paper, settings = paper_figures(opts.dataset)
    # The paper's per-dataset settings are defaults: the user's own overrides win.
    cfg = preset(opts.preset, **{"catalog_size": data.n_items,
                                 "compute_dtype": compute_dtype(opts.precision),
                                 **settings, **opts.overrides})
    if cfg.catalog_size < data.n_items:
        raise InputError(f"catalog_size {cfg.catalog_size} is smaller than the dataset's "
                         f"{data.n_items} items: drop the catalog_size override")
    check_memory(cfg, opts, split, device, keep_best)  # before the engine takes any of it
    engine = make_engine(opts.framework, cfg, device=device, seed=opts.seed,
                         optimizer=opts.optimizer, lr=opts.lr, precision=opts.precision,
                         compile=opts.compile)
    epochs = opts.epochs or (PAPER_EPOCHS if opts.dataset in D.REGISTRY else SYNTHETIC_EPOCHS)
    n_batches = S.n_train_batches(split, opts.batch_size)
    st = data.stats()
    every = opts.eval_every
    log(f"{opts.framework} {opts.preset} ({cfg.block}, {cfg.loss}, {opts.precision}) on "
        f"{data.name}: {st['users']} users, {st['items']} items, {st['actions']} actions; "
        f"{epochs} epoch{'s' if epochs != 1 else ''} x {n_batches} batches of "
        f"{opts.batch_size} on {device}; evaluation "
        + (f"every {every} epoch{'s' if every != 1 else ''} and at the last" if every
           else "after the last epoch"))
    if settings:
        mine = {k: opts.overrides[k] for k in settings if k in opts.overrides}
        log(f"paper settings for {data.name}: "
            + " ".join(f"{k}={v}" for k, v in settings.items()) + " (as defaults"
            + (f"; your overrides win: {' '.join(f'{k}={v}' for k, v in mine.items())})"
               if mine else ")"))
    use_bar = sys.stderr.isatty() if progress is None else progress

    pop = S.popularity(split)
    kw = {"protocol": opts.eval, "batch_size": opts.batch_size, "max_users": opts.eval_users}
    epoch_s, history, n_seqs, streak, reason = [], [], 0, 0, None
    curve = Curve(opts.select, patience=opts.patience, target=opts.target, keep_best=keep_best)
    popularity = None
    train_s = eval_s = 0.0
    with window(engine) if window else contextlib.nullcontext():
        t_start = time.perf_counter()
        setup_s = t_start - t0
        for epoch in range(1, epochs + 1):
            batches = S.train_batches(split, seq_len=cfg.seq_len, batch_size=opts.batch_size,
                                      n_neg=cfg.n_neg, seed=opts.seed * 100_003 + epoch)
            if use_bar:
                from tqdm import tqdm

                batches = tqdm(batches, total=n_batches, desc=f"epoch {epoch}/{epochs}",
                               leave=False, file=sys.stderr)
            start = time.perf_counter()
            losses, n_seqs = [], 0
            for batch in batches:
                losses.append(engine.train_step(batch))  # stays on the device: no sync per step
                n_seqs += len(batch["seq"])
            step_losses = np.array([float(x) for x in engine.sync(losses)])
            epoch_s.append(time.perf_counter() - start)
            train_s += epoch_s[-1]
            why, streak = divergence(step_losses, streak, engine.all_finite())
            finite = step_losses[np.isfinite(step_losses)]
            # The mean of the steps that ran: a step fp16 loss scaling skipped has no loss.
            loss = float(finite.mean()) if len(finite) and not why else None
            skipped = len(step_losses) - len(finite)
            history.append({"epoch": epoch, "loss": loss, "nonfinite_steps": skipped,
                            "seconds": epoch_s[-1]})
            if epoch_log or why:
                log(f"epoch {epoch}/{epochs}  loss {'nan' if loss is None else f'{loss:.4f}'}  "
                    f"{epoch_s[-1]:.2f} s  {n_seqs / epoch_s[-1]:,.0f} seq/s"
                    + (f"  ({skipped} non-finite step losses)" if skipped and not why else ""))
            if why:
                reason = f"{why} at epoch {epoch}"
                break
            if not (epoch == epochs or (every and epoch % every == 0)):
                continue
            e0 = time.perf_counter()
            try:
                v = evaluate(engine, split, "valid", seed=opts.seed + 1, **kw)
                # the same users and candidates at every evaluation (fixed seeds), so the
                # popularity baseline is scored once
                t = evaluate(engine, split, "test", seed=opts.seed + 2,
                             pop=pop if popularity is None else None, **kw)
            except Diverged as e:
                eval_s += time.perf_counter() - e0
                reason = f"{e} after epoch {epoch}"
                break
            if popularity is None:
                popularity = {"test": short(t["popularity"])}
            valid = short(v["model"])
            improved = curve.select_best(epoch, valid, t, engine)  # keep_best's copy: eval_s
            eval_s += time.perf_counter() - e0
            curve.add(epoch, valid, t, wall_s=time.perf_counter() - t_start, train_s=train_s,
                      eval_s=eval_s)
            log(curve.line(epochs, improved))
            stop = curve.stop()
            if stop:
                log(stop)
                break
        wall_s = time.perf_counter() - t_start

    # The first epoch includes JIT compilation and warm-up: it is reported on its own
    # (first_epoch_s), and the steady-state speed comes only from the epochs after it.
    steady = epoch_s[1:]
    sec_per_epoch = float(np.mean(steady)) if steady else None
    if steady:
        speed_note = ("wall time of the training loop incl. batch sampling, mean over epochs "
                      f"2-{len(epoch_s)}; the first epoch (first_epoch_s) includes compilation "
                      "and is left out; evaluation excluded")
    else:
        speed_note = ("one epoch only: its time (first_epoch_s) includes compilation and "
                      "warm-up, so there is no steady-state speed (there is from 2 epochs on)")
    valid = test = test_users = None
    if reason is None:
        valid, test, test_users = curve.best["valid"], curve.best["test"], curve.test_users
        log(curve.best_line(popularity))
        curve.restore_best(engine)
    else:
        popularity = None
        log(f"{reason}: diverged")
    result = {
        "framework": opts.framework,
        "preset": opts.preset,
        "dataset": data.name,
        "device": device,
        "precision": opts.precision,
        "compile": "jit" if opts.framework == "jax" else opts.compile,  # as bench.point shows it
        "optimizer": opts.optimizer,
        "seed": opts.seed,
        "status": "ok" if reason is None else "diverged",
        "reason": reason,
        "diverged_epoch": None if reason is None else len(history),
        "epochs": epochs,
        "epochs_run": len(history),
        "batch_size": opts.batch_size,
        "sequences_per_epoch": n_seqs,
        "first_epoch_s": epoch_s[0],
        "steady_epochs": len(steady),
        "seconds_per_epoch": sec_per_epoch,
        "sequences_per_s": n_seqs / sec_per_epoch if sec_per_epoch else None,
        "speed_note": speed_note,
        "eval_protocol": f"{opts.eval}" + ("-100" if opts.eval == "sampled" else ""),
        "eval_users": test_users,
        "eval_every": every,
        **curve.summary(diverged=reason is not None),
        "valid": valid,
        "test": test,
        "popularity": popularity,
        "paper_quality": paper or None,
        "paper_settings": settings or None,
        "curve": curve.points,
        "setup_s": setup_s,
        "train_s": train_s,
        "eval_s": eval_s,
        "wall_s": wall_s,
        "time_note": "wall_s runs from the first training step to the end of the last "
                     "evaluation (compilation and evaluation included); train_s is the "
                     "training loops' share, eval_s the evaluations'; setup_s (data loading, "
                     "engine construction) comes before it",
        "dataset_stats": st,
        "config": asdict(cfg),
        "history": history,
        "total_s": time.perf_counter() - t0,
    }
    return (result, engine) if return_engine else result
