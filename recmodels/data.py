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
import sys
import tempfile
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlparse

from recmodels.errors import InputError
from recmodels.formats import (
    Interactions,
    convert_movielens,
    is_movielens,
    load_user_item,
    save_user_item,
)
from recmodels.registry import REGISTRY, DatasetSpec
from recmodels.synthetic import GAMES_SHAPED, SYNTHETIC, SYNTHETIC_DEFAULT, synthetic

# The formats, the registry and the synthetic data are data's API too (``data.Interactions``,
# ``data.REGISTRY``, ``data.synthetic`` ...).
__all__ = ["GAMES_SHAPED", "REGISTRY", "SYNTHETIC", "SYNTHETIC_DEFAULT", "DatasetSpec",
           "Interactions", "cache_dir", "cache_path", "cache_problem", "check_stats",
           "checksum_problem", "convert_movielens", "fetch", "get_spec", "load",
           "load_user_item", "save_user_item", "sha256_file", "sha256_path", "sha256_seen",
           "synthetic"]

# ---------------------------------------------------------------------------------------------
# The download cache (the registry itself: registry.py)


ProgressFn = Callable[[int, int], None]


def cache_dir() -> Path:
    """Where fetched datasets live: $RECBENCH_CACHE, else ~/.cache/recbench."""
    env = os.environ.get("RECBENCH_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "recbench"


def get_spec(name_or_spec: str | DatasetSpec) -> DatasetSpec:
    if isinstance(name_or_spec, DatasetSpec):
        return name_or_spec
    if name_or_spec in SYNTHETIC:
        raise InputError(f"{name_or_spec!r} is generated on the fly, not downloaded: there is "
                         f"nothing to fetch; pass --dataset {name_or_spec} to use it")
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


def cache_problem(name_or_spec: str | DatasetSpec, *, cache: Path | str | None = None
                  ) -> str | None:
    """Why the cache path cannot hold the entry's file, in one line (what is there, what to
    do), or None: a file is there, or nothing is and fetch() can write it. Something else in
    its place (a directory, a FIFO; a file where the cache directory should be) would
    otherwise read as "not downloaded", and fetch() would download, then fail to rename."""
    spec = get_spec(name_or_spec)
    path = cache_path(spec, cache=cache)
    then = f"then run `{shlex.join(['recbench', 'data', 'fetch', spec.name])}`"
    if path.is_file():
        return None
    if path.exists():
        what = "a directory" if path.is_dir() else "not a regular file"
        return (f"dataset {spec.name!r}: {path} is {what}, not the dataset file: remove or move "
                f"it, {then}")
    # the first ancestor there (a dangling link counts): mkdir cannot go through a non-directory
    there = next((a for a in path.parents if a.exists() or a.is_symlink()), None)
    if there is None or there.is_dir():
        return None
    return (f"dataset {spec.name!r}: cannot use the cache directory {path.parent}: {there} is "
            f"not a directory; remove or move it, or set RECBENCH_CACHE to a directory, {then}")


def sha256_file(path: Path) -> str:
    """The hex sha256 digest of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def sha256_path(name_or_spec: str | DatasetSpec, *, cache: Path | str | None = None) -> Path:
    """Where the sha256 seen for an entry without a registered checksum is recorded, next to
    the file: <cache>/<name>.sha256, in ``sha256sum`` format ("<hex>  <file name>")."""
    spec = get_spec(name_or_spec)
    return cache_path(spec, cache=cache).with_name(f"{spec.name}.sha256")


def sha256_seen(name_or_spec: str | DatasetSpec, *, cache: Path | str | None = None) -> str | None:
    """The sha256 (hex) recorded when a file first passed the statistics check, or None (never
    verified, or a sidecar that is not a sha256 line). It stands until the sidecar is deleted:
    load() and fetch() refuse a file, or a download, with another digest (checksum_problem)."""
    try:
        text = sha256_path(name_or_spec, cache=cache).read_text(encoding="ascii", errors="replace")
    except OSError:
        return None
    digest = text.split()[0].lower() if text.split() else ""
    return digest if len(digest) == 64 and all(c in "0123456789abcdef" for c in digest) else None


def _short(digest: str) -> str:
    return f"{digest[:12]}…"


def _fetch_cmd(spec: DatasetSpec) -> str:
    return shlex.join(["recbench", "data", "fetch", spec.name])


def checksum_problem(name_or_spec: str | DatasetSpec, *, cache: Path | str | None = None,
                     digest: str | None = None) -> str | None:
    """Why the cached file is not the entry's verified file, in one line (both sha256s
    shortened, then the fix), or None: no file there, nothing to compare it with yet (no
    checksum registered and none recorded), or it matches. Against the registered sha256
    where there is one, else the one recorded when a file first passed the statistics check
    (sha256_seen): a file that differs from that changed since it was verified, and the
    first record stands. ``digest``: the file's sha256 where the caller has it already."""
    spec = get_spec(name_or_spec)
    path = cache_path(spec, cache=cache)
    want = spec.sha256 or sha256_seen(spec, cache=cache)
    if want is None or not path.is_file():
        return None
    digest = digest or sha256_file(path)
    if digest == want:
        return None
    fetch_cmd = _fetch_cmd(spec)
    if spec.sha256 is not None:
        return (f"dataset {spec.name!r}: {path} does not match the registered sha256 (sha256 "
                f"{_short(digest)}, registered {_short(want)}); delete it and run `{fetch_cmd}`")
    side = sha256_path(spec, cache=cache)
    return (f"dataset {spec.name!r}: {path} changed since it was first verified (sha256 "
            f"{_short(digest)}, first recorded {_short(want)} in {side}); restore it (delete it "
            f"and run `{fetch_cmd}` to download it again), or delete {side} to verify it anew")


def _unreadable(e: InputError) -> str:
    """A reader's one-line error without its closing advice (after its last "; "), which
    fits a file the user edits, not a cached download: the caller gives the fix."""
    return str(e).rsplit("; ", 1)[0]


def check_stats(spec: DatasetSpec, data: Interactions, *, source: str, fix: str) -> None:
    """Raise InputError unless ``data`` has the entry's statistics: users and items exactly,
    actions within ``spec.actions_range``. The message is one line: the dataset, ``source``
    (what was checked), each mismatching figure expected vs got, then ``fix``."""
    lo, hi = spec.actions_range
    bad = [f"{what} expected {want:,}, got {got:,}"
           for what, want, got in (("users", spec.users, data.n_users),
                                   ("items", spec.items, data.n_items)) if want != got]
    if not lo <= data.n_actions <= hi:
        want = (f"{lo:,}..{hi:,} (the paper's {spec.actions_label})" if spec.actions_tolerance
                else f"{spec.actions:,}")
        bad.append(f"actions expected {want}, got {data.n_actions:,}")
    if bad:
        raise InputError(f"dataset {spec.name!r}: {source} does not have the statistics "
                         f"registered for it (no checksum is registered, so they are checked): "
                         f"{'; '.join(bad)}; {fix}")


def _read(spec: DatasetSpec, path: Path) -> Interactions:
    data = load_user_item(path) if spec.format == "user-item" else convert_movielens(path)
    data.name = spec.name
    return data


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _record_seen(spec: DatasetSpec, path: Path, digest: str, log: Callable[[str], None]) -> None:
    """Write the sidecar (atomically) and say the file was verified by its statistics."""
    side = path.with_name(f"{spec.name}.sha256")
    what = (f"dataset {spec.name!r}: no checksum is registered, so {path} was verified by its "
            f"statistics ({spec.users:,} users, {spec.items:,} items, {spec.actions_label} "
            f"actions, as the paper gives them); sha256 seen {digest}")
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{side.name}.", suffix=".part", dir=side.parent)
        with os.fdopen(fd, "w", encoding="ascii") as f:
            f.write(f"{digest}  {path.name}\n")
        os.replace(tmp, side)
    except OSError as e:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        log(f"{what} (not recorded: cannot write {side}: {e.strerror})")
        return
    log(f"{what}, recorded in {side}")


def fetch(
    name_or_spec: str | DatasetSpec,
    *,
    cache: Path | str | None = None,
    progress: ProgressFn | None = None,
    log: Callable[[str], None] | None = None,
) -> Path:
    """Download a registered dataset once and verify it; return its path in the cache.

    The download streams into a temporary file in the cache directory, is verified, and only
    then renamed over the destination, so a failed, corrupt or wrong download never replaces a
    previous file and is not kept. Verified means: the registry's sha256 and size where the
    entry has them; otherwise (``sha256`` None) the file's statistics (``check_stats``), after
    which the sha256 seen is recorded in ``sha256_path`` and ``log`` (default: stderr) says the
    file was verified by statistics; once recorded, that sha256 stands (a later download must
    have it too). A cached file is used as is when its sha256 matches the registry's, or,
    without one, the sha256 recorded when a file first passed the statistics check; an
    unverified cached file (e.g. placed by hand) is checked the same way, and downloaded again
    if it fails (``log`` says why it was not used). ``progress(bytes_done, bytes_total)`` is
    called after every chunk (total 0 where neither the server nor the registry gives a size).

    Raises InputError (one line) when something else sits at the cache path (``cache_problem``:
    checked before downloading, and left as it is), when a cached file changed since it was
    verified (``checksum_problem``: left as it is), when the server cannot be reached, or when
    the download's sha256 / size / statistics are not the registered ones (each expected vs got)
    or its sha256 is not the one recorded.
    """
    spec = get_spec(name_or_spec)
    if problem := cache_problem(spec, cache=cache):  # before any download: nothing replaced
        raise InputError(problem)
    log = log or _stderr
    dest = cache_path(spec, cache=cache)
    seen = sha256_seen(spec, cache=cache) if spec.sha256 is None else None
    if dest.is_file():
        digest = sha256_file(dest)
        if digest in (spec.sha256, seen):
            return dest
        if seen is not None:  # verified once, changed since: the user's edit is not replaced
            raise InputError(checksum_problem(spec, cache=cache, digest=digest))
        if spec.sha256 is None:  # placed by hand: verified by its statistics, as a download
            try:
                data = _read(spec, dest)
            except InputError as e:
                log(f"dataset {spec.name!r}: {dest} is not a readable {spec.format} file "
                    f"({_unreadable(e)}); downloading it again")
            else:
                try:
                    check_stats(spec, data, source=str(dest), fix="downloading it again")
                except InputError as e:
                    log(str(e))
                else:
                    _record_seen(spec, dest, digest, log)
                    return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    tmp = Path(tmp_name)
    try:
        h, done = hashlib.sha256(), 0
        with os.fdopen(fd, "wb") as out:
            try:
                with urllib.request.urlopen(spec.url, timeout=60) as resp:
                    total = int(resp.headers.get("Content-Length") or spec.size_bytes or 0)
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
        if spec.sha256 is not None and (actual != spec.sha256 or done != spec.size_bytes):
            size = f"{spec.size_bytes} bytes" if spec.size_bytes is not None else "size unknown"
            raise InputError(
                f"download of {spec.url} is corrupt or changed upstream: expected sha256 "
                f"{spec.sha256} ({size}), got {actual} ({done} bytes); retry, "
                f"or place a verified copy at {dest}"
            )
        if seen is not None and actual != seen:
            side = sha256_path(spec, cache=cache)
            raise InputError(
                f"dataset {spec.name!r}: download of {spec.url} has sha256 {_short(actual)}, not "
                f"the {_short(seen)} first recorded in {side}: it changed upstream since it was "
                f"first verified; the download was not kept; delete {side} to verify it anew")
        if spec.sha256 is None:
            fix = (f"the download (sha256 {actual}, {done:,} bytes) was not kept; check that "
                   f"{spec.url} is the paper's file (it may have changed upstream), or place a "
                   f"copy with these statistics at {dest}")
            if spec.size_bytes is not None and done != spec.size_bytes:
                raise InputError(f"dataset {spec.name!r}: download of {spec.url} has "
                                 f"{done:,} bytes, expected {spec.size_bytes:,}; {fix}")
            try:
                data = _read(spec, tmp)
            except InputError as e:
                raise InputError(f"dataset {spec.name!r}: download of {spec.url} is not a "
                                 f"readable {spec.format} file ({e}); {fix}") from None
            check_stats(spec, data, source=f"download of {spec.url}", fix=fix)
        os.replace(tmp, dest)  # atomic within one directory
    finally:
        tmp.unlink(missing_ok=True)
    if spec.sha256 is None and seen is None:
        _record_seen(spec, dest, actual, log)
    return dest


def load(
    name_or_path: str | os.PathLike,
    *,
    cache: Path | str | None = None,
    log: Callable[[str], None] | None = None,
) -> Interactions:
    """A dataset by registry name (from the cache), synthetic name, or file path.

    ``"synthetic"`` and ``"synthetic-games"`` build ``synthetic(**SYNTHETIC_DEFAULT)`` and
    ``synthetic(**GAMES_SHAPED)``. A path is sniffed: a zip, or a first line with ``::``, ``,``
    or four fields, is a MovieLens ratings file (see convert_movielens); anything else is
    SASRec's ``user item`` format.

    A registry name must be fetched (or its file placed at ``cache_path``). An entry with a
    sha256 is checked against it; one without has its statistics checked on every load (free:
    the file is parsed anyway), and the first time a file passes, its sha256 is recorded next
    to it and ``log`` (default: stderr) says it was verified by statistics; from then on a file
    with another sha256 is refused (``checksum_problem``), never recorded anew. Raises
    InputError (one line) for a missing file or something else in its place
    (``cache_problem``), a wrong sha256, a file that is not readable, or wrong statistics (each
    expected vs got).
    """
    key = os.fspath(name_or_path)
    if key in SYNTHETIC:
        return synthetic(**SYNTHETIC[key])
    if key in REGISTRY:
        spec, path = REGISTRY[key], cache_path(key, cache=cache)
        fetch_cmd = _fetch_cmd(spec)
        if problem := cache_problem(spec, cache=cache):
            raise InputError(problem)
        if not path.is_file():
            raise InputError(f"dataset {key!r} is not downloaded (expected at {path}); "
                             f"run `{fetch_cmd}`")
        digest = sha256_file(path)
        if problem := checksum_problem(spec, cache=cache, digest=digest):
            raise InputError(problem)
        try:
            data = _read(spec, path)
        except InputError as e:  # the reader's fix is for a file of one's own: this is a cache
            raise InputError(f"dataset {key!r}: {path} is not a readable {spec.format} file "
                             f"({_unreadable(e)}); delete it and run `{fetch_cmd}`") from None
        if spec.sha256 is None:
            check_stats(spec, data, source=str(path),
                        fix=f"delete or replace that file, then run `{fetch_cmd}`")
            if sha256_seen(spec, cache=cache) is None:  # the first record stands
                _record_seen(spec, path, digest, log or _stderr)
        return data
    path = Path(key)
    if not path.is_file():
        known = ", ".join([*sorted(REGISTRY), *SYNTHETIC])
        raise InputError(f"no dataset {key!r}: not a file and not a known name ({known})")
    return convert_movielens(path) if is_movielens(path) else load_user_item(path)
