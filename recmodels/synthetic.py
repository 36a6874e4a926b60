"""Synthetic interaction data: sequences a sequence model can learn and a popularity ranking
cannot (``recbench train --dataset synthetic``), and the Amazon Games-shaped variant for speed
tests that need no download. Re-exported by recmodels.data, where loading by name happens."""

from __future__ import annotations

import numpy as np

from recmodels.errors import InputError
from recmodels.formats import Interactions

SYNTHETIC_DEFAULT = dict(n_users=6000, n_items=2000, mean_len=30.0, name="synthetic")
# Amazon Games' shape (users, catalog, mean length) for speed tests that need no download.
GAMES_SHAPED = dict(n_users=31013, n_items=23715, mean_len=287107 / 31013, name="synthetic-games")
SYNTHETIC = {"synthetic": SYNTHETIC_DEFAULT, "synthetic-games": GAMES_SHAPED}


def _draw(cdf: np.ndarray, rng: np.random.Generator, n: int) -> np.ndarray:
    """n indices distributed as the (unnormalised) cumulative weights ``cdf``."""
    idx = np.searchsorted(cdf, rng.random(n) * cdf[-1], side="right")
    return np.minimum(idx, cdf.size - 1)


def synthetic(
    n_users: int = 6000,
    n_items: int = 2000,
    mean_len: float = 30.0,
    seed: int = 0,
    *,
    p_follow: float = 0.7,  # chance the next item comes from the previous item's successors
    n_successors: int = 4,  # successors per item, weights 1/2, 1/4, ... (normalised)
    n_clusters: int = 20,  # taste clusters; each user has one
    p_taste: float = 0.7,  # chance a jump stays inside the user's cluster
    zipf_a: float = 1.0,  # popularity exponent
    min_len: int = 5,
    max_len: int | None = None,  # default 8 * mean_len
    name: str = "synthetic",
) -> Interactions:
    """Sequences with structure a sequence model can learn and a popularity ranking cannot.

    Each item has a fixed table of ``n_successors`` likely next items, drawn uniformly from the
    catalog (so popularity says nothing about them). With probability ``p_follow`` the next item
    comes from the previous item's table; otherwise the user "jumps": to a Zipf-popular item of
    their own taste cluster (``p_taste``) or of the whole catalog. The first item is a jump.
    Lengths are ``min_len`` + geometric, mean ``mean_len``, capped at ``max_len``. Items may
    repeat within a sequence (avoiding that would need a per-user loop). Deterministic by seed.
    """
    if n_users < 1 or n_items < max(n_successors + 1, n_clusters) or mean_len <= min_len:
        raise InputError(f"synthetic: need n_users >= 1, n_items >= max(n_successors + 1, "
                         f"n_clusters) and mean_len > min_len={min_len}; got n_users={n_users}, "
                         f"n_items={n_items}, mean_len={mean_len}")
    rng = np.random.default_rng(seed)
    by_rank = rng.permutation(n_items) + 1  # item of popularity rank r; ids carry no signal
    zipf = np.cumsum(1.0 / np.arange(1, n_items + 1) ** zipf_a)
    # Cluster g holds ranks g, g + G, g + 2G, ...: each is a popularity-ordered slice.
    per = n_items // n_clusters
    members = by_rank[: per * n_clusters].reshape(per, n_clusters).T  # [G, per]
    succ = rng.integers(1, n_items + 1, size=(n_items + 1, n_successors))
    loops = succ == np.arange(n_items + 1)[:, None]
    succ[loops] = succ[loops] % n_items + 1  # no self-transitions
    succ_cdf = np.cumsum(0.5 ** np.arange(n_successors))
    cap = max_len if max_len is not None else int(8 * mean_len)
    lengths = min_len + rng.geometric(1.0 / (mean_len - min_len + 1), n_users) - 1
    lengths = np.minimum(lengths, max(cap, min_len))
    taste = rng.integers(0, n_clusters, n_users)

    def jump() -> np.ndarray:
        local = members[taste, _draw(zipf[:per], rng, n_users)]
        glob = by_rank[_draw(zipf, rng, n_users)]
        return np.where(rng.random(n_users) < p_taste, local, glob)

    seqs = np.empty((n_users, int(lengths.max())), np.int32)
    seqs[:, 0] = jump()
    for t in range(1, seqs.shape[1]):  # a loop over positions; each step is all users at once
        follow = succ[seqs[:, t - 1], _draw(succ_cdf, rng, n_users)]
        seqs[:, t] = np.where(rng.random(n_users) < p_follow, follow, jump())
    mask = np.arange(seqs.shape[1]) < lengths[:, None]
    offsets = np.concatenate(([0], np.cumsum(lengths)))
    return Interactions(offsets, seqs[mask], n_items=n_items, name=name)
