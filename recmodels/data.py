"""Datasets: registry and download cache, loaders and a synthetic generator (the split and the
batch samplers are in splits.py).

The protocol is SASRec's (Kang & McAuley 2018, https://arxiv.org/abs/1808.09781, and its code at
github.com/kang205/SASRec): leave-one-out split, left-padded sequences, one sampled negative per
position for training, 100 sampled negatives per user for evaluation.

Conventions every caller relies on:

- Item ids are 1..n_items; 0 is padding everywhere (sequences, targets, negatives).
- A user is a row index 0..n_users-1 of ``Interactions`` and ``Split`` (the ``user`` of a batch).
- Loaders remap raw ids to contiguous ids in *sorted raw-id order*. Files whose ids are already
  1..N (all of SASRec's) keep them: item k in the file is item k here, user k is row k-1.
- Negatives are drawn uniformly from the items the user never interacted with (the full
  sequence, targets included). SASRec's code excludes only the training items; excluding the
  targets too keeps a held-out item from ever being sampled as its own negative.
- Everything is vectorised numpy. Python loops run over sequence positions, batches or file
  chunks, never over users or samples.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import tempfile
import urllib.error
import urllib.request
import warnings
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import numpy as np

from recmodels.errors import InputError

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


# ---------------------------------------------------------------------------------------------
# Interactions and loaders


@dataclass
class Interactions:
    """Users' item sequences in CSR form: user u's items, oldest first, are
    ``items[offsets[u]:offsets[u + 1]]``."""

    offsets: np.ndarray  # int64 [n_users + 1], offsets[0] = 0
    items: np.ndarray  # int32 [n_actions], ids in 1..n_items
    n_items: int  # catalog size (items that never occur still count)
    name: str

    def __post_init__(self) -> None:
        self.offsets = np.ascontiguousarray(self.offsets, dtype=np.int64)
        self.items = np.ascontiguousarray(self.items, dtype=np.int32)
        self.n_items = int(self.n_items)
        o = self.offsets
        if o.ndim != 1 or o.size < 1 or o[0] != 0 or o[-1] != self.items.size or (
            np.diff(o) < 0).any():
            raise InputError(f"{self.name}: offsets must be a CSR index over items")
        if self.items.size and (self.items.min() < 1 or self.items.max() > self.n_items):
            raise InputError(f"{self.name}: item ids must lie in 1..n_items={self.n_items}")

    @property
    def n_users(self) -> int:
        return self.offsets.size - 1

    @property
    def n_actions(self) -> int:
        return self.items.size

    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def stats(self) -> dict:
        n = self.lengths()
        return {
            "users": self.n_users,
            "items": self.n_items,
            "actions": self.n_actions,
            "mean_len": float(n.mean()) if n.size else 0.0,
            "median_len": float(np.median(n)) if n.size else 0.0,
            "max_len": int(n.max()) if n.size else 0,
            "density": self.n_actions / max(1, self.n_users * self.n_items),
        }


_CHUNK_BYTES = 1 << 24  # parse in slices so the per-byte index arrays stay small
_USER_ITEM = "expected '<user> <item>' (two positive integers)"
_MOVIELENS = "expected 'user item rating timestamp' separated by '::', ',' or whitespace"


def _bad_line(label: str, text: bytes, line: int, expect: str) -> InputError:
    got = text.split(b"\n")[line - 1].rstrip(b"\r")[:80].decode("utf-8", "replace")
    return InputError(f"{label}:{line}: {expect}, got {got!r}; fix or delete that line")


def _parse_chunk(
    chunk: bytes, line0: int, n_fields: int, keep: tuple[int, ...]
) -> tuple[np.ndarray, np.ndarray] | int:
    """Rows of ``keep`` columns (int64) and their 1-based line numbers, or the first bad line."""
    b = np.frombuffer(chunk, np.uint8)
    is_nl = b == 10
    is_sep = is_nl | (b == 32) | (b == 9) | (b == 13)
    line_of = np.cumsum(is_nl, dtype=np.int32) - is_nl  # 0-based line of each byte
    tok = ~is_sep
    starts = np.flatnonzero(tok & np.concatenate(([True], is_sep[:-1])))
    ends = np.flatnonzero(tok & np.concatenate((is_sep[1:], [True]))) + 1
    per_line = np.bincount(line_of[starts], minlength=int(is_nl.sum()) + 1)
    if starts.size == 0:  # blank lines only (fromstring would invent a value for these)
        return np.zeros((0, len(keep)), np.int64), np.zeros(0, np.int64)
    bad = (per_line != 0) & (per_line != n_fields)
    if bad.any():
        return line0 + int(np.argmax(bad))
    # Every non-blank line has n_fields tokens, so a token's column is its index mod n_fields.
    kept = np.isin(np.arange(starts.size) % n_fields, keep)
    # int64 holds any 18-digit number exactly; longer is not an id anyone uses.
    too_long = kept & (ends - starts > 18)
    if too_long.any():
        return line0 + int(line_of[starts[np.argmax(too_long)]])
    mark = np.zeros(b.size + 1, np.int8)  # +1 at a kept token's start, -1 after its end
    mark[starts[kept]] += 1
    mark[ends[kept]] -= 1
    in_kept = np.cumsum(mark[:-1], dtype=np.int8) > 0
    not_digit = in_kept & ((b < 48) | (b > 57))
    if not_digit.any():
        return line0 + int(line_of[np.argmax(not_digit)])
    if not kept.all():  # blank the other columns (e.g. a float rating) so only ints remain
        b = b.copy()
        b[tok & ~in_kept] = 32
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a short read must fail loudly, not truncate
        values = np.fromstring(b.tobytes(), dtype=np.int64, sep=" ")
    if values.size != int(kept.sum()):
        raise RuntimeError(f"parsed {values.size} numbers, expected {int(kept.sum())}")
    rows = values.reshape(-1, len(keep))
    return rows, line0 + np.flatnonzero(per_line == n_fields)


def _parse_table(
    label: str, text: bytes, n_fields: int, keep: tuple[int, ...], expect: str,
    *, source: bytes | None = None, first_line: int = 1,
) -> tuple[np.ndarray, np.ndarray]:
    """Parse lines of ``n_fields`` whitespace-separated tokens (blank lines skipped) into int64
    ``[rows, len(keep)]`` plus each row's 1-based line number in ``source`` (default ``text``).
    Kept columns must be unsigned decimal integers; the others are not looked at."""
    rows, lines, start, line0 = [], [], 0, first_line
    while start < len(text):
        stop = min(start + _CHUNK_BYTES, len(text))
        nl = text.find(b"\n", stop - 1)
        end = len(text) if nl < 0 else nl + 1
        chunk = text[start:end]
        parsed = _parse_chunk(chunk, line0, n_fields, keep)
        if isinstance(parsed, int):
            src = source if source is not None else text
            raise _bad_line(label, src, parsed, expect)
        rows.append(parsed[0])
        lines.append(parsed[1])
        line0 += chunk.count(b"\n")
        start = end
    if not rows or sum(r.shape[0] for r in rows) == 0:
        raise InputError(f"{label}: no interactions found; {expect} on each line")
    return np.concatenate(rows), np.concatenate(lines)


def _group(users: np.ndarray, items: np.ndarray, name: str) -> Interactions:
    """(user, item) pairs in time order -> Interactions, ids remapped densely in sorted order."""
    _, u = np.unique(users, return_inverse=True)
    item_ids, i = np.unique(items, return_inverse=True)
    order = np.argsort(u, kind="stable")  # stable: each user's items keep their time order
    offsets = np.zeros(int(u.max()) + 2, np.int64)
    np.cumsum(np.bincount(u), out=offsets[1:])
    return Interactions(offsets, i[order] + 1, n_items=item_ids.size, name=name)


def load_user_item(path: str | os.PathLike) -> Interactions:
    """Load SASRec's format: one ``user item`` pair per line, each user's lines in time order.

    Ids are positive integers, remapped to contiguous ids in sorted raw order (an identity for
    files that already use 1..N). A user's lines need not be adjacent: a stable sort by user
    keeps their relative (time) order. Repeated (user, item) pairs are kept, as SASRec does.
    """
    path = Path(path)
    text = _read_bytes(path)
    rows, lines = _parse_table(str(path), text, 2, (0, 1), _USER_ITEM)
    zero = (rows == 0).any(axis=1)  # "-" already failed the digit check
    if zero.any():
        raise _bad_line(str(path), text, int(lines[np.argmax(zero)]), _USER_ITEM)
    return _group(rows[:, 0], rows[:, 1], name=path.stem)


def save_user_item(data: Interactions, path: str | os.PathLike) -> None:
    """Write ``data`` in SASRec's format (users 1..n_users in order, items in time order)."""
    users = np.repeat(np.arange(1, data.n_users + 1), data.lengths())
    np.savetxt(Path(path), np.column_stack([users, data.items]), fmt="%d")


def _read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as e:
        raise InputError(f"cannot read {path}: {e.strerror}; check the path") from None


_RATINGS_FILES = ("ratings.dat", "ratings.csv", "u.data")


def _read_ratings(path: Path) -> tuple[str, bytes]:
    """A ratings file's label and bytes; a MovieLens zip is searched for its ratings member."""
    if not zipfile.is_zipfile(path):
        return str(path), _read_bytes(path)
    with zipfile.ZipFile(path) as z:
        names = [n for n in z.namelist() if n.rsplit("/", 1)[-1] in _RATINGS_FILES]
        if not names:
            raise InputError(f"{path}: no {', '.join(_RATINGS_FILES)} inside this zip")
        return f"{path}/{names[0]}", z.read(names[0])


def convert_movielens(path: str | os.PathLike, *, min_len: int = 5) -> Interactions:
    """Clean a raw MovieLens ratings file into sequences, the way SASRec's data was made.

    Reads ``ratings.dat`` (``u::i::r::t``), ``ratings.csv`` (header ``userId,movieId,rating,
    timestamp``), ``u.data`` (tab separated) or a MovieLens zip holding one of them. Sorts each
    user's ratings by timestamp (ties keep file order), keeps only the first rating of a
    repeated (user, item), drops users left with fewer than ``min_len`` items, and remaps users
    and the surviving items to contiguous ids in sorted raw order. Ratings are ignored: every
    rating is an interaction.
    """
    path = Path(path)
    label, source = _read_ratings(path)
    first = source[: source.find(b"\n")] if b"\n" in source else source
    text, first_line = source, 1
    if b"::" in first:
        text = source.replace(b"::", b" ")
    elif b"," in first:
        text = source.replace(b",", b" ")
    if any(chr(c).isalpha() for c in first):  # a header line
        cut = text.find(b"\n") + 1 if b"\n" in text else len(text)
        text, first_line = text[cut:], 2
    rows, _ = _parse_table(
        label, text, 4, (0, 1, 3), _MOVIELENS, source=source, first_line=first_line
    )
    _, user = np.unique(rows[:, 0], return_inverse=True)
    order = np.lexsort((rows[:, 2], user))  # by user, then time; lexsort is stable
    user, item = user[order], rows[order, 1]
    _, item_idx = np.unique(item, return_inverse=True)
    # np.unique's return_index is the first occurrence, i.e. the earliest rating of a pair.
    _, first_seen = np.unique(user * (int(item_idx.max()) + 1) + item_idx, return_index=True)
    keep = np.sort(first_seen)
    user, item = user[keep], item[keep]
    long_enough = np.bincount(user)[user] >= min_len
    if not long_enough.any():
        raise InputError(f"{label}: no user has {min_len} or more distinct items; "
                         "is this the full ratings file?")
    name = path.parent.name if path.stem in ("ratings", "u") and path.parent.name else path.stem
    return _group(user[long_enough], item[long_enough], name=name)


def _is_movielens(path: Path) -> bool:
    if zipfile.is_zipfile(path):
        return True
    with open(path, "rb") as f:
        head = f.read(4096)
    line = next((ln for ln in head.splitlines() if ln.strip()), b"")
    return b"::" in line or b"," in line or len(line.split()) == 4


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
        if not path.is_file():
            raise InputError(f"dataset {key!r} is not downloaded (expected at {path}); "
                             f"run `recbench data fetch {key}`")
        if sha256_file(path) != spec.sha256:
            raise InputError(f"{path} does not match the registry's sha256 for {key!r}; "
                             f"delete it and run `recbench data fetch {key}`")
        data = load_user_item(path) if spec.format == "user-item" else convert_movielens(path)
        data.name = spec.name
        return data
    path = Path(key)
    if not path.is_file():
        known = ", ".join([*sorted(REGISTRY), *SYNTHETIC])
        raise InputError(f"no dataset {key!r}: not a file and not a known name ({known})")
    return convert_movielens(path) if _is_movielens(path) else load_user_item(path)


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
