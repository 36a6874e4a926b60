"""Interaction data and the file formats it is read from: SASRec's ``user item`` lines and
MovieLens ratings (``.dat``, ``.csv``, ``u.data``, or the release zip), cleaned the SASRec way
(dedupe, sort by time, drop short users, remap ids). The conventions are in data.py."""

from __future__ import annotations

import codecs
import os
import warnings
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from recmodels.errors import InputError
from recmodels.textio import utf8_text


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
    text = utf8_text(str(path), _read_bytes(path))
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
        return str(path), utf8_text(str(path), _read_bytes(path))
    try:
        with zipfile.ZipFile(path) as z:
            names = [n for n in z.namelist() if n.rsplit("/", 1)[-1] in _RATINGS_FILES]
            if not names:
                raise InputError(f"{path}: no {', '.join(_RATINGS_FILES)} inside this zip")
            label = f"{path}/{names[0]}"
            return label, utf8_text(label, z.read(names[0]))
    except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError) as e:
        raise InputError(f"{path}: a broken or unsupported zip ({e}); download it again") from None


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
    # A header starts with a name (userId,...); any other first line is data, so a bad one is
    # an error naming line 1, never a rating dropped as if it were a header.
    if first.lstrip(b" \t\"'")[:1].isalpha():
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


def is_movielens(path: Path) -> bool:
    if zipfile.is_zipfile(path):
        return True
    with open(path, "rb") as f:
        head = f.read(4096)
    if head.startswith(codecs.BOM_UTF8):
        head = head[len(codecs.BOM_UTF8):]
    line = next((ln for ln in head.splitlines() if ln.strip()), b"")
    return b"::" in line or b"," in line or len(line.split()) == 4
