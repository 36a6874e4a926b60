"""What `recbench train` checks before it trains: that evaluation can score the data, and that
the run's estimated peak memory fits the RAM available. Each refusal is an InputError naming
the dataset or the estimate and the fix (the CLI prints it as one line, exit 2)."""

from __future__ import annotations

from typing import Any

import numpy as np

from recmodels import splits as S
from recmodels.config import DTYPE_BYTES, GenRecConfig, human_bytes, padding_invariant, params_total
from recmodels.errors import InputError

# opts below is recmodels.train.TrainOptions (train imports this module, so not the reverse)
EVAL_ROWS = 256  # evaluate() scores at least this many users a batch


def check_split(split: S.Split, opts: Any) -> None:
    """Before training: what the epochs and the evaluations need from the data, refused with
    InputError (the dataset and the fix) where it is missing: a training pair, a held-out
    item to evaluate, and a negative to sample for every user that training or evaluation
    (either protocol: splits.eval_batches draws candidates) draws one for (splits._negatives
    would fail there, mid-run)."""
    name, n_items = split.data.name, split.n_items
    if S.n_train_batches(split, 1) == 0:  # else the epochs run no step and the "trained"
        raise InputError(                  # model's metrics are those of its initial weights
            f"{name}: no user has 4 or more interactions, so the leave-one-out split "
            "leaves no training pair (each user gives its last two items to validation and "
            "test); use a dataset with longer histories")
    if not split.valid_target.any():  # else evaluation has no user to score
        raise InputError(
            f"{name}: no user has 3 or more interactions, so the leave-one-out split holds "
            "out no validation or test item to evaluate on (it takes a user's last two); use "
            "a dataset with longer histories")
    users = S._train_users(split)
    full = users[np.diff(split.train_set_offsets)[users] == n_items]
    if full.size:
        raise InputError(
            f"{name}: {full.size} user(s) (e.g. user row {full[0]}) have all {n_items} items "
            "of the catalog among their training items, so training cannot sample a negative "
            "for them; drop those users or use a dataset with a larger catalog")
    seen = np.diff(split.set_offsets)  # evaluation batches draw 100 negatives in both protocols
    for which, seed in (("valid", opts.seed + 1), ("test", opts.seed + 2)):  # as train's
        users = S.eval_users(split, which, max_users=opts.eval_users, seed=seed)
        full = users[seen[users] == n_items]
        if full.size:
            raise InputError(
                f"{name}: {full.size} user(s) (e.g. user row {full[0]}) have interacted with "
                f"all {n_items} items, so evaluation cannot draw the negatives it ranks "
                "their held-out item against; drop those users or use a dataset with a larger "
                "catalog")


def available_ram_bytes() -> int:
    """Host memory available now (psutil: free plus reclaimable), what a run can still use."""
    import psutil

    return int(psutil.virtual_memory().available)


def memory_parts(cfg: GenRecConfig, opts: Any, split: S.Split,
                 device: str, keep_best: bool = False) -> dict[str, int]:
    """Analytic peak memory of a training run, in bytes (recmodels.memory's estimate of its
    steps; an estimate, not a measurement): "train", the training step at its batch size and
    the width its batches really have (leading all-padding columns are trimmed where
    config.padding_invariant holds: the longest training history, rounded up to 8);
    "eval", an evaluation batch of max(batch_size, 256) histories at the full seq_len
    (evaluation trims nothing) with the weights, optimizer state and (torch) gradients the
    engine still holds; "host", the host arrays beside them (the split's padded histories
    [users, seq_len + 1] int32, an evaluation batch's inputs, keep_best's copy of the
    weights). "*_activations": the share of train and eval that the batch drives;
    "eval_rows": the histories an evaluation batch scores."""
    from recmodels.memory import memory_estimate

    kind, fw = device.split(":")[0], opts.framework
    n_train = S._train_users(split).size
    width = cfg.seq_len
    if padding_invariant(cfg):
        longest = int(split.train_lengths().max()) - 1  # the newest training item is a target
        width = min(cfg.seq_len, -(-max(longest, 1) // 8) * 8)
    step = memory_estimate(cfg.replace(seq_len=width), min(opts.batch_size, n_train), "train",
                           opts.optimizer, fw, kind)
    rows = min(max(opts.batch_size, EVAL_ROWS), int(np.count_nonzero(split.valid_target)),
               opts.eval_users)
    # sampled: 101 candidates a user are scored, not the catalog (the table's weights are
    # counted below, with what the engine holds through evaluation)
    scoring = cfg if opts.eval == "full" else cfg.replace(catalog_size=100)
    infer = memory_estimate(scoring, rows, "infer", opts.optimizer, fw, kind)
    n, pb = params_total(cfg), DTYPE_BYTES[cfg.param_dtype]
    held = n * pb * (1 + (2 if opts.optimizer == "adam" else 0) + (1 if fw == "torch" else 0))
    evaluation = infer.total_bytes - params_total(scoring) * pb + held
    host = 4 * (split.n_users * (cfg.seq_len + 1) + 2 * rows * cfg.seq_len) \
        + (4 * n if keep_best else 0)
    return {"train": step.total_bytes, "eval": evaluation, "host": host,
            "train_activations": step.activations_bytes,
            "eval_activations": infer.activations_bytes, "eval_rows": rows}


def check_memory(cfg: GenRecConfig, opts: Any, split: S.Split, device: str,
                 keep_best: bool = False) -> None:
    """Refuse (InputError) a run whose estimated peak memory exceeds the RAM available: the
    larger of the training step and an evaluation, plus the host arrays, on a CPU (or MPS:
    unified memory); the host arrays alone on other devices. The rule is the runner's
    (memory.exceeds_capacity): even the low end of the estimate's stated error is over."""
    from recmodels.memory import error_band, exceeds_capacity

    parts = memory_parts(cfg, opts, split, device, keep_best)
    on_host = device.split(":")[0] in ("cpu", "mps")
    total = (max(parts["train"], parts["eval"]) if on_host else 0) + parts["host"]
    ram = available_ram_bytes()
    if not exceeds_capacity(total, ram):
        return
    model = "use a smaller --preset (the weights and optimizer state dominate)"
    if not on_host or parts["host"] >= max(parts["train"], parts["eval"]):
        fix = "lower --seq-len (the histories are held at seq_len items per user)"
    elif parts["eval"] > parts["train"]:
        fix = (("lower --seq-len or --batch-size" if opts.batch_size > EVAL_ROWS
                else "lower --seq-len")
               + f" (evaluation scores {parts['eval_rows']} histories of seq_len a batch)"
               if 2 * parts["eval_activations"] > parts["eval"] else model)
    else:
        fix = ("lower --batch-size or --seq-len"
               if 2 * parts["train_activations"] > parts["train"] else model)
    what = (f"training step {human_bytes(parts['train'])}, evaluation "
            f"{human_bytes(parts['eval'])}, " if on_host else "") + "host arrays"
    raise InputError(
        f"estimated peak memory {human_bytes(total)} ({what} {human_bytes(parts['host'])}; "
        f"an analytic estimate, at least {human_bytes(error_band(total)[0])} within its "
        f"stated error) exceeds the {human_bytes(ram)} of RAM available: {fix}")
