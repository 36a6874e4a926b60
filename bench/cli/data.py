"""`recbench data`: list, fetch and inspect datasets; its command and its parser (bench.cli
registers it). The registry, the cache and the checks are recmodels/data.py's."""

from __future__ import annotations

import sys
from collections.abc import Callable

from bench.cli import EXIT_OK, _err, _print_json
from recmodels.errors import InputError

PAPER_NOTE = (
    "paper: Kang & McAuley, SASRec, ICDM 2018 (statistics: Table II; HR@10 / NDCG@10: Table III,\n"
    "       leave-one-out, 100 sampled negatives). No checksum: the file's statistics are checked\n"
    "       on fetch and load, and the sha256 seen is recorded. URLs and descriptions: --json")


def registry_row(spec) -> dict:
    """A registry dataset as one JSON-ready row: statistics (the paper's; actions as an interval
    where the paper rounds them), paper quality and settings, checksum state
    (``checksum_problem``: why the cached file is not the verified one, one line, or None),
    cache state (``problem``: why the cache path cannot hold the file, one line, or None)."""
    from recmodels import data as D

    path = D.cache_path(spec)
    cached = path.is_file()
    checksum_problem = D.checksum_problem(spec) if cached else None  # hashes the file
    lo, hi = spec.actions_range
    return {
        "name": spec.name, "users": spec.users, "items": spec.items,
        "actions": spec.actions, "actions_min": lo, "actions_max": hi,
        "actions_label": spec.actions_label,
        "paper_quality": dict(spec.paper_quality), "settings": dict(spec.settings),
        "checksum": "registered" if spec.sha256 else "none",
        "sha256": spec.sha256, "size_bytes": spec.size_bytes,
        # the digest recorded when the cached file passed the statistics check
        "sha256_seen": D.sha256_seen(spec) if cached and spec.sha256 is None else None,
        "checksum_problem": checksum_problem,
        "cached": cached, "problem": D.cache_problem(spec), "path": str(path), "url": spec.url,
        "description": spec.description, "citation": spec.citation,
    }


def registry_rows() -> list[dict]:
    """``registry_row`` of every registry dataset, in registry order."""
    from recmodels import data as D

    return [registry_row(spec) for spec in D.REGISTRY.values()]


def _state(r: dict) -> str:
    """Cache and checksum state, for the text table."""
    if r["problem"]:
        return "cache path blocked (below)"
    if r["checksum_problem"]:
        return ("cached, sha256 does not match (below)" if r["checksum"] == "registered"
                else "cached, changed since verified (below)")
    if r["checksum"] == "registered":
        return f"{'cached' if r['cached'] else 'not fetched'}, sha256 registered"
    if not r["cached"]:
        return "not fetched, no checksum"
    if r["sha256_seen"]:
        return f"cached, sha256 seen {r['sha256_seen'][:12]}…"
    return "cached, not yet verified (no checksum)"


def _paper_line(r: dict) -> str:
    q, s = r["paper_quality"], r["settings"]
    quality = (f"paper: HR@10 {q['hr@10']:.4f}  NDCG@10 {q['ndcg@10']:.4f}"
               if {"hr@10", "ndcg@10"} <= q.keys() else "no paper figures")
    settings = ", ".join(f"{k} {v}" for k, v in s.items())
    return f"{quality}{f' at {settings}' if settings else ''}"


def _row_lines(r: dict, head: str, width: int) -> list[str]:
    """A registry row as text: ``head`` (left-aligned in ``width``) before the statistics and
    the state, then the cache or checksum problem if any, then the paper's figures, indented
    to match."""
    problem = r["problem"] or r["checksum_problem"]
    lines = [f"{r['users']:>8,} users {r['items']:>7,} items {r['actions_label']:>8s} actions  "
             f"{_state(r)}", *([problem] if problem else []), _paper_line(r)]
    return [f"{head if i == 0 else '':{width}s} {line}" for i, line in enumerate(lines)]


def cmd_data(args) -> int:
    from recmodels import data as D

    if args.action == "list":
        rows = registry_rows()
        synth = [{"name": n, **{k: v for k, v in kw.items() if k != "name"}}
                 for n, kw in D.SYNTHETIC.items()]
        if args.json:
            _print_json({"registry": rows, "synthetic": synth, "cache_dir": str(D.cache_dir())})
            return EXIT_OK
        print(f"cache: {D.cache_dir()}")
        for r in rows:
            print("\n".join(_row_lines(r, f"  {r['name']}", 10)))
        for s in synth:
            print(f"  {s['name']:8s} generated: {s['n_users']:,} users, {s['n_items']:,} items, "
                  f"mean length set to {s['mean_len']:.1f}")
        print(PAPER_NOTE)
        return EXIT_OK
    if args.action == "fetch":
        if not args.name:
            raise InputError("recbench data fetch needs a dataset name: see recbench data list")
        progress = _download_bar() if sys.stderr.isatty() else None
        path = D.fetch(args.name, progress=progress, log=_err)
        print(path)
        return EXIT_OK
    if not args.name:
        raise InputError("recbench data info needs a dataset name or path")
    stats = D.load(args.name, log=_err).stats()
    # a registry dataset: the paper's figures beside the file's, as `data list` gives them
    row = registry_row(D.REGISTRY[args.name]) if args.name in D.REGISTRY else None
    if args.json:
        _print_json(stats | ({"registry": row} if row else {}))
        return EXIT_OK
    for k, v in stats.items():
        print(f"{k:12s} {v:,}" if isinstance(v, int) else f"{k:12s} {v:.4g}")
    if row:
        print("\n".join(_row_lines(row, "registry", 12)))
        print(PAPER_NOTE)
    return EXIT_OK


def _download_bar() -> Callable[[int, int], None]:
    from tqdm import tqdm

    bar = tqdm(unit="B", unit_scale=True, file=sys.stderr)

    def update(done: int, total: int) -> None:
        bar.total = total or None
        bar.n = done
        bar.refresh()

    return update


def add_data_parser(sub) -> None:
    d = sub.add_parser("data", help="list, fetch and inspect datasets")
    d.add_argument("action", choices=("list", "fetch", "info"))
    d.add_argument("name", nargs="?", help="registry name, synthetic name, or a file path")
    d.add_argument("--json", action="store_true")
    d.set_defaults(func=cmd_data)
