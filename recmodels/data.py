"""Datasets: registry and download cache, loading by name or path, and a synthetic generator
(the file formats are in formats.py; the split and the batch samplers in splits.py).

The protocol is SASRec's (Kang & McAuley 2018, https://arxiv.org/abs/1808.09781, and its code at
github.com/kang205/SASRec): leave-one-out split, left-padded sequences, one sampled negative per
position for training, 100 sampled negatives per user for evaluation.

Conventions every caller relies on:

- Item ids are 1..n_items; 0 is padding everywhere (sequences, targets, negatives).
- A user is a row index 0..n_users-1 of ``Interactions`` and ``Split`` (the ``user`` of a batch).
- Loaders remap raw ids to contiguous ids in *sorted raw-id order*. Files whose ids are already
  1..N (all of SASRec's) keep them: item k in the file is item k here, user k is row k-1.
- Training negatives are drawn as SASRec's sampler draws them: uniformly from the items
  outside the user's training items, so a held-out validation or test item can be one.
  Evaluation candidates are drawn from the items the user never interacted with (the full
  sequence, targets included).
- Everything is vectorised numpy. Python loops run over sequence positions, batches or file
  chunks, never over users or samples.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import shlex
import tempfile
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import numpy as np

from recmodels.errors import InputError
from recmodels.formats import (
    Interactions,
    convert_movielens,
    is_movielens,
    load_user_item,
    save_user_item,
)

# The formats are data's API too (``data.Interactions``, ``data.load_user_item`` ...).
__all__ = ["GAMES_SHAPED", "REGISTRY", "SYNTHETIC", "SYNTHETIC_DEFAULT", "DatasetSpec",
           "Interactions", "cache_dir", "cache_path", "convert_movielens", "fetch", "get_spec",
           "load", "load_user_item", "save_user_item", "sha256_file", "synthetic"]

# ---------------------------------------------------------------------------------------------
# Registry and download cache


@dataclass(frozen=True)
class DatasetSpec:
    name: str  # registry key; also the cache file's stem
    url: str  # where fetch() downloads it from
    sha256: str  # hex digest of the file at url
    size_bytes: int  # size of the file at url
    users: int  # expected statistics after load()
    items: int
    actions: int
    format: str  # "user-item" (SASRec's "user item" lines) or "movielens" (raw ratings file)
    description: str
    citation: str


REGISTRY: dict[str, DatasetSpec] = {
    "games": DatasetSpec(
        name="games",
        url="https://raw.githubusercontent.com/kang205/SASRec/master/data/Video.txt",
        sha256="b7376fe24430743f411dc7f567285657b2adb3f74361cc7ba0aee94f3024b651",
        size_bytes=3_187_124,
        users=31_013,
        items=23_715,
        actions=287_107,
        format="user-item",
        description="Amazon Video Games reviews as item sequences, as preprocessed for SASRec "
        "(the paper reports HR@10 0.7410, NDCG@10 0.5360 with 100 sampled negatives)",
        citation="Kang & McAuley, Self-Attentive Sequential Recommendation, ICDM 2018; "
        "McAuley et al., Image-based Recommendations on Styles and Substitutes, SIGIR 2015",
    ),
}

ProgressFn = Callable[[int, int], None]


def cache_dir() -> Path:
    """Where fetched datasets live: $RECBENCH_CACHE, else ~/.cache/recbench."""
    env = os.environ.get("RECBENCH_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "recbench"


def get_spec(name_or_spec: str | DatasetSpec) -> DatasetSpec:
    if isinstance(name_or_spec, DatasetSpec):
        return name_or_spec
    if name_or_spec not in REGISTRY:
        raise InputError(
            f"unknown dataset {name_or_spec!r}; known datasets: {', '.join(sorted(REGISTRY))}"
        )
    return REGISTRY[name_or_spec]


def cache_path(name_or_spec: str | DatasetSpec, *, cache: Path | str | None = None) -> Path:
    """The file fetch() writes: <cache>/<name><suffix of the url>, e.g. games.txt."""
    spec = get_spec(name_or_spec)
    suffix = Path(urlparse(spec.url).path).suffix
    return Path(cache if cache is not None else cache_dir()) / f"{spec.name}{suffix}"


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def fetch(
    name_or_spec: str | DatasetSpec,
    *,
    cache: Path | str | None = None,
    progress: ProgressFn | None = None,
) -> Path:
    """Download a registered dataset once and verify it; return its path in the cache.

    A cached file whose sha256 matches is used as is. Otherwise the download streams into a
    temporary file in the cache directory, is checked against the registry's size and sha256,
    and only then renamed over the destination, so a failed or corrupt download never replaces
    a previous file. ``progress(bytes_done, bytes_total)`` is called after every chunk.
    """
    spec = get_spec(name_or_spec)
    dest = cache_path(spec, cache=cache)
    if dest.is_file() and sha256_file(dest) == spec.sha256:
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    tmp = Path(tmp_name)
    try:
        h, done = hashlib.sha256(), 0
        with os.fdopen(fd, "wb") as out:
            try:
                with urllib.request.urlopen(spec.url, timeout=60) as resp:
                    total = int(resp.headers.get("Content-Length") or spec.size_bytes)
                    while chunk := resp.read(1 << 16):
                        out.write(chunk)
                        h.update(chunk)
                        done += len(chunk)
                        if progress is not None:
                            progress(done, total)
            except (urllib.error.URLError, http.client.HTTPException, ConnectionError,
                    TimeoutError) as e:
                if isinstance(e, urllib.error.HTTPError):
                    reason = f"HTTP {e.code} {e.reason}"
                else:
                    reason = getattr(e, "reason", None) or e
                raise InputError(
                    f"could not fetch {spec.url} ({reason}); check the network, or download "
                    f"the file by hand and place it at {dest}"
                ) from None
        actual = h.hexdigest()
        if actual != spec.sha256 or done != spec.size_bytes:
            raise InputError(
                f"download of {spec.url} is corrupt or changed upstream: expected sha256 "
                f"{spec.sha256} ({spec.size_bytes} bytes), got {actual} ({done} bytes); retry, "
                f"or place a verified copy at {dest}"
            )
        os.replace(tmp, dest)  # atomic within one directory
    finally:
        tmp.unlink(missing_ok=True)
    return dest


def load(name_or_path: str | os.PathLike, *, cache: Path | str | None = None) -> Interactions:
    """A dataset by registry name (from the cache), synthetic name, or file path.

    ``"synthetic"`` and ``"synthetic-games"`` build ``synthetic(**SYNTHETIC_DEFAULT)`` and
    ``synthetic(**GAMES_SHAPED)``. A path is sniffed: a zip, or a first line with ``::``, ``,``
    or four fields, is a MovieLens ratings file (see convert_movielens); anything else is
    SASRec's ``user item`` format.
    """
    key = os.fspath(name_or_path)
    if key in SYNTHETIC:
        return synthetic(**SYNTHETIC[key])
    if key in REGISTRY:
        spec, path = REGISTRY[key], cache_path(key, cache=cache)
        fetch_cmd = shlex.join(["recbench", "data", "fetch", key])
        if not path.is_file():
            raise InputError(f"dataset {key!r} is not downloaded (expected at {path}); "
                             f"run `{fetch_cmd}`")
        if sha256_file(path) != spec.sha256:
            raise InputError(f"{path} does not match the registry's sha256 for {key!r}; "
                             f"delete it and run `{fetch_cmd}`")
        data = load_user_item(path) if spec.format == "user-item" else convert_movielens(path)
        data.name = spec.name
        return data
    path = Path(key)
    if not path.is_file():
        known = ", ".join([*sorted(REGISTRY), *SYNTHETIC])
        raise InputError(f"no dataset {key!r}: not a file and not a known name ({known})")
    return convert_movielens(path) if is_movielens(path) else load_user_item(path)


# ---------------------------------------------------------------------------------------------
# Synthetic data


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
