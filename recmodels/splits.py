"""The leave-one-out split and the batch samplers that train and evaluate the models.

The protocol is SASRec's (Kang & McAuley 2018, https://arxiv.org/abs/1808.09781): per user,
the last item is the test target and the one before it the validation target; training
sequences are left-padded with 0 and get one sampled negative per position; evaluation ranks
the target against 100 sampled items. Training negatives are drawn as SASRec's sampler draws
them: uniformly from the items outside the user's *training* items, so a held-out validation or
test item can be one. Evaluation candidates are drawn uniformly from the items the user never
interacted with (the full sequence, targets included). Everything is vectorised numpy: Python
loops run over batches, never over users or samples.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

from recmodels.data import Interactions
from recmodels.errors import InputError

# ---------------------------------------------------------------------------------------------
# Leave-one-out split


@dataclass(eq=False)
class Split:
    """SASRec's leave-one-out split of ``data``: per user, the last item is the test target,
    the one before it the validation target, the rest is training. Users with fewer than 3
    items keep everything in training and have no targets (0)."""

    data: Interactions  # the full sequences
    train_offsets: np.ndarray  # int64 [n_users + 1]
    train_items: np.ndarray  # int32, CSR over users, time order
    valid_target: np.ndarray  # int32 [n_users], 0 = none
    test_target: np.ndarray  # int32 [n_users], 0 = none
    set_offsets: np.ndarray  # int64 [n_users + 1]: CSR of each user's distinct items
    set_items: np.ndarray  # int32, sorted within a user (what evaluation candidates avoid)
    train_set_offsets: np.ndarray  # int64 [n_users + 1]: CSR of each user's distinct
    train_set_items: np.ndarray  # training items, sorted (what training negatives avoid)
    _padded_cache: dict[int, np.ndarray] = field(default_factory=dict, repr=False)
    _gaps: dict[str, np.ndarray] = field(default_factory=dict, repr=False)

    @property
    def n_users(self) -> int:
        return self.data.n_users

    @property
    def n_items(self) -> int:
        return self.data.n_items

    def train_lengths(self) -> np.ndarray:
        return np.diff(self.train_offsets)


def _csr_offsets(counts: np.ndarray) -> np.ndarray:
    offsets = np.zeros(counts.size + 1, np.int64)
    np.cumsum(counts, out=offsets[1:])
    return offsets


def _distinct(user_of: np.ndarray, items: np.ndarray, n_users: int,
              n_items: int) -> tuple[np.ndarray, np.ndarray]:
    """CSR (offsets, items) of each user's distinct items, sorted within a user."""
    keys = np.unique(user_of * (n_items + 1) + items)
    offsets = _csr_offsets(np.bincount(keys // (n_items + 1), minlength=n_users))
    return offsets, (keys % (n_items + 1)).astype(np.int32)


def leave_one_out(data: Interactions) -> Split:
    n = data.lengths()
    if data.n_actions == 0:
        raise InputError(f"{data.name}: no interactions to split")
    has = n >= 3
    last = np.maximum(data.offsets[1:] - 1, 0)
    test = np.where(has, data.items[last], 0).astype(np.int32)
    valid = np.where(has, data.items[np.maximum(last - 1, 0)], 0).astype(np.int32)
    n_train = n - 2 * has
    user_of = np.repeat(np.arange(data.n_users), n)
    pos = np.arange(data.n_actions) - data.offsets[user_of]
    in_train = pos < n_train[user_of]
    train_items = data.items[in_train]
    set_offsets, set_items = _distinct(user_of, data.items, data.n_users, data.n_items)
    train_set_offsets, train_set_items = _distinct(user_of[in_train], train_items,
                                                   data.n_users, data.n_items)
    return Split(
        data=data,
        train_offsets=_csr_offsets(n_train),
        train_items=train_items,
        valid_target=valid,
        test_target=test,
        set_offsets=set_offsets,
        set_items=set_items,
        train_set_offsets=train_set_offsets,
        train_set_items=train_set_items,
    )


def _padded(split: Split, width: int) -> np.ndarray:
    """[n_users, width] int32: each user's last ``width`` training items, left-padded with 0.
    Built once per width and cached on the split; batches index into it."""
    if width not in split._padded_cache:
        n = split.train_lengths()
        user_of = np.repeat(np.arange(split.n_users), n)
        back = split.train_offsets[1:][user_of] - 1 - np.arange(split.train_items.size)
        m = back < width  # back = 0 is the most recent item
        mat = np.zeros((split.n_users, width), np.int32)
        mat[user_of[m], width - 1 - back[m]] = split.train_items[m]
        split._padded_cache[width] = mat
    return split._padded_cache[width]


def _negatives(split: Split, users: np.ndarray, rng: np.random.Generator, *,
               avoid: str) -> np.ndarray:
    """One uniform item per entry of ``users`` outside the user's training items (``avoid=
    "train"``: SASRec's training sampler) or outside all the user's items (``"all"``:
    evaluation candidates).

    Exact, no rejection: draw a rank r in the user's complement, then the r-th missing item is
    r + 1 + #{own items s_i whose count of missing items below them, s_i - 1 - i, is <= r}.
    Offsetting that per-user count by user * (n_items + 1) makes one global sorted array, so a
    single searchsorted answers every user at once.
    """
    if avoid == "train":
        offsets, owned = split.train_set_offsets, split.train_set_items
    else:
        offsets, owned = split.set_offsets, split.set_items
    n_items = split.n_items
    size = np.diff(offsets)
    if avoid not in split._gaps:
        set_user = np.repeat(np.arange(split.n_users), size)
        local = np.arange(owned.size) - offsets[set_user]
        split._gaps[avoid] = set_user * (n_items + 1) + owned - 1 - local
    free = n_items - size[users]
    if (free == 0).any():
        u = int(users.flat[np.argmax(free == 0)])
        has = ("has every item of the catalog among its training items" if avoid == "train"
               else "has interacted with every item in the catalog")
        raise InputError(f"user row {u} {has}, so no negative can be sampled; drop that user "
                         "or use a larger catalog")
    r = rng.integers(0, free)
    below = np.searchsorted(split._gaps[avoid], users * (n_items + 1) + r, side="right")
    return (r + 1 + below - offsets[users]).astype(np.int32)


# ---------------------------------------------------------------------------------------------
# Batches


def _train_users(split: Split) -> np.ndarray:
    return np.flatnonzero(split.train_lengths() >= 2)  # at least one (input, target) pair


def n_train_batches(split: Split, batch_size: int) -> int:
    return math.ceil(_train_users(split).size / batch_size)


def train_batches(
    split: Split, *, seq_len: int, batch_size: int, n_neg: int = 1, seed: int = 0,
    shuffle: bool = True,
) -> Iterator[dict[str, np.ndarray]]:
    """One epoch of SASRec training batches: every user with >= 2 training items, once.

    ``seq`` [B, T] is the user's last T+1 training items minus the newest, left-padded with 0;
    ``pos`` [B, T] is the item after each input (0 where the input is padding); ``neg``
    [B, T, n_neg] are uniform items outside the user's training items, as SASRec samples them
    (so the validation and test targets can be drawn; 0 where pos is 0).
    The last batch may be smaller. Pass a different seed per epoch.
    """
    if seq_len < 1 or batch_size < 1 or n_neg < 1:
        raise InputError(f"seq_len, batch_size and n_neg must be >= 1, got {seq_len}, "
                         f"{batch_size}, {n_neg}")
    mat = _padded(split, seq_len + 1)
    rng = np.random.default_rng(seed)
    users = _train_users(split)
    if shuffle:
        users = rng.permutation(users)

    def batches() -> Iterator[dict[str, np.ndarray]]:
        for start in range(0, users.size, batch_size):
            u = users[start : start + batch_size]
            rows = mat[u]
            seq = rows[:, :-1]
            pos = np.where(seq > 0, rows[:, 1:], 0)
            b, t = np.nonzero(pos)  # only real positions need negatives
            neg = np.zeros((u.size, seq_len, n_neg), np.int32)
            neg[b, t] = _negatives(split, np.repeat(u[b], n_neg), rng,
                                   avoid="train").reshape(-1, n_neg)
            yield {"seq": np.ascontiguousarray(seq), "pos": pos, "neg": neg}

    return batches()


TRIM_MULTIPLE = 8  # trimmed widths: multiples of 8 (at most T/8 shapes for compilers to see)


def trim_padding(batch: dict[str, np.ndarray], multiple: int = TRIM_MULTIPLE
                 ) -> dict[str, np.ndarray]:
    """A training batch without its leading columns that are padding (seq == 0) in every
    row: ``seq``, ``pos`` [B, T] and ``neg`` [B, T, R] -> [B, T'] and [B, T', R], T' the
    longest row rounded up to a multiple of ``multiple`` (at most T). Views, not copies.

    Left-padded batches of real data are mostly padding (synthetic-games at T 50: ~12% of
    positions are items, the longest row of a batch of 128 ~27 wide), and a padding column
    that no row uses changes no loss or gradient where config.padding_invariant(cfg) holds.
    """
    seq = batch["seq"]
    used = np.flatnonzero((seq != 0).any(axis=0))
    t = seq.shape[1]
    width = t - int(used[0]) if used.size else 1
    width = min(t, -(-width // multiple) * multiple)
    if width == t:
        return batch
    return {k: (v[:, t - width:] if k in ("seq", "pos", "neg") else v) for k, v in batch.items()}


def _which(split: Split, which: str) -> np.ndarray:
    if which not in ("valid", "test"):
        raise InputError(f"which must be 'valid' or 'test', got {which!r}")
    return split.valid_target if which == "valid" else split.test_target


def eval_users(
    split: Split, which: str = "valid", *, max_users: int | None = None, seed: int = 0
) -> np.ndarray:
    """Sorted user rows that have a ``which`` target; at most ``max_users`` of them, sampled
    without replacement by ``seed`` (SASRec evaluates 10,000 random users of larger sets)."""
    users = np.flatnonzero(_which(split, which))
    if max_users is not None and users.size > max_users:
        users = np.sort(np.random.default_rng(seed).choice(users, max_users, replace=False))
    return users


def _eval_inputs(split: Split, users: np.ndarray, which: str, seq_len: int) -> np.ndarray:
    """[B, T] inputs: the last T training items for "valid", the last T of training items plus
    the validation target for "test" (SASRec's protocol)."""
    mat = _padded(split, seq_len + 1)
    if which == "valid":
        return mat[users, 1:]
    return np.concatenate([mat[users, 2:], split.valid_target[users, None]], axis=1)


def eval_batches(
    split: Split, which: str = "valid", *, seq_len: int, batch_size: int, n_neg: int = 100,
    seed: int = 0, max_users: int | None = None,
) -> Iterator[dict[str, np.ndarray]]:
    """Sampled-negative evaluation batches over the users of ``eval_users``.

    ``candidates`` [B, 1 + n_neg] is the target then n_neg uniform items outside the user's item
    set (with replacement, as SASRec); also ``user`` [B], ``seq`` [B, T], ``target`` [B].
    """
    target = _which(split, which)
    if seq_len < 1 or batch_size < 1 or n_neg < 0:
        raise InputError(f"seq_len and batch_size must be >= 1 and n_neg >= 0, got {seq_len}, "
                         f"{batch_size}, {n_neg}")
    users = eval_users(split, which, max_users=max_users, seed=seed)
    rng = np.random.default_rng([seed, 1])  # a stream apart from the user sample's
    _padded(split, seq_len + 1)  # build now so errors and cost come before the first batch

    def batches() -> Iterator[dict[str, np.ndarray]]:
        for start in range(0, users.size, batch_size):
            u = users[start : start + batch_size]
            neg = _negatives(split, np.repeat(u, n_neg), rng, avoid="all").reshape(u.size, n_neg)
            yield {
                "user": u,
                "seq": _eval_inputs(split, u, which, seq_len),
                "candidates": np.concatenate([target[u, None], neg], axis=1),
                "target": target[u],
            }

    return batches()


def seen_items(
    split: Split, users: np.ndarray, which: str = "valid"
) -> tuple[np.ndarray, np.ndarray]:
    """CSR (indptr [len(users) + 1], indices) of the items to mask in full-catalog evaluation:
    each user's whole input history for ``which`` (training items, plus the validation target
    for "test"), distinct and sorted, never including the target itself."""
    target = _which(split, which)
    users = np.asarray(users, np.int64)
    n = split.train_lengths()[users]
    row = np.repeat(np.arange(users.size), n)
    idx = split.train_offsets[users][row] + np.arange(row.size) - _csr_offsets(n)[:-1][row]
    items = split.train_items[idx]
    if which == "test":
        has = split.valid_target[users] > 0
        row = np.concatenate([row, np.flatnonzero(has)])
        items = np.concatenate([items, split.valid_target[users][has]])
    keep = items != target[users][row]  # a target seen before stays rankable
    keys = np.unique(row[keep] * (split.n_items + 1) + items[keep])
    indptr = _csr_offsets(np.bincount(keys // (split.n_items + 1), minlength=users.size))
    return indptr, (keys % (split.n_items + 1)).astype(np.int32)


def popularity(split: Split) -> np.ndarray:
    """int64 [n_items + 1]: training interactions per item (index 0 = 0); the most-popular
    baseline's scores."""
    return np.bincount(split.train_items, minlength=split.n_items + 1).astype(np.int64)
