"""Tests for recmodels.data: loaders, cleaning, synthetic structure, split, samplers, download."""

from __future__ import annotations

import dataclasses
import hashlib
import http.server
import re
import socket
import threading
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from recmodels import data as D
from recmodels import formats
from recmodels import splits as S
from recmodels.errors import InputError


def _interactions(seqs: list[list[int]], n_items: int, name: str = "hand") -> D.Interactions:
    offsets = np.cumsum([0] + [len(s) for s in seqs])
    return D.Interactions(offsets, np.array([i for s in seqs for i in s]), n_items, name)


def _rows(data: D.Interactions) -> list[list[int]]:
    return [data.items[a:b].tolist() for a, b in zip(data.offsets[:-1], data.offsets[1:])]


# --------------------------------------------------------------------------- user-item files


def test_user_item_round_trip_and_stats(tmp_path: Path) -> None:
    data = _interactions([[3, 1, 2], [5, 4, 3, 2, 1], [2, 2]], n_items=5)
    D.save_user_item(data, tmp_path / "x.txt")
    assert (tmp_path / "x.txt").read_text().splitlines()[:4] == ["1 3", "1 1", "1 2", "2 5"]
    back = D.load_user_item(tmp_path / "x.txt")
    assert _rows(back) == _rows(data) and back.n_items == 5 and back.name == "x"
    assert back.items.dtype == np.int32 and back.offsets.dtype == np.int64
    assert back.stats() == {"users": 3, "items": 5, "actions": 10, "mean_len": 10 / 3,
                            "median_len": 3.0, "max_len": 5, "density": 10 / 15}


def test_user_item_non_contiguous_users_and_ids(tmp_path: Path) -> None:
    # User 10's lines are interleaved with user 3's; ids have gaps; blank line, tabs and CRLF.
    (tmp_path / "f.txt").write_bytes(b"10 7\r\n3\t5\n\n10 2\n3 9\n10 7")
    data = D.load_user_item(tmp_path / "f.txt")
    # sorted remap: users 3 -> row 0, 10 -> row 1; items 2, 5, 7, 9 -> 1, 2, 3, 4
    assert _rows(data) == [[2, 4], [3, 1, 3]] and data.n_items == 4


@pytest.mark.parametrize(
    ("text", "line"),
    [(b"1 2\n1 x\n", 2), (b"1 2\n1 2 3\n", 2), (b"1 2\n\n3 0\n", 3), (b"1 -2\n", 1),
     (b"1 2\n2 1.5\n", 2), (b"7\n", 1), (b"1 2\n1 12345678901234567890\n", 2)],
)
def test_user_item_malformed_line(tmp_path: Path, text: bytes, line: int) -> None:
    path = tmp_path / "bad.txt"
    path.write_bytes(text)
    with pytest.raises(InputError, match=rf"bad\.txt:{line}: expected '<user> <item>'") as e:
        D.load_user_item(path)
    assert "\n" not in str(e.value)


def test_user_item_chunk_boundaries(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(0)
    pairs = np.column_stack([np.repeat(np.arange(1, 51), 4), rng.integers(1, 30, 200)])
    path = tmp_path / "c.txt"
    path.write_text("".join(f"{u} {i}\n" for u, i in pairs))
    whole = D.load_user_item(path)
    monkeypatch.setattr(formats, "_CHUNK_BYTES", 7)  # a chunk per line or two
    chunked = D.load_user_item(path)
    assert np.array_equal(whole.items, chunked.items)
    assert np.array_equal(whole.offsets, chunked.offsets)
    path.write_text("".join(f"{u} {i}\n" for u, i in pairs[:150]) + "5 five\n")
    with pytest.raises(InputError, match=r"c\.txt:151:"):
        D.load_user_item(path)


def test_user_item_empty_or_missing(tmp_path: Path) -> None:
    (tmp_path / "e.txt").write_bytes(b"\n\n")
    with pytest.raises(InputError, match="no interactions"):
        D.load_user_item(tmp_path / "e.txt")
    with pytest.raises(InputError, match="cannot read"):
        D.load_user_item(tmp_path / "missing.txt")


# --------------------------------------------------------------------------- MovieLens

# (user, item, rating, timestamp). User 1: out of time order, item 20 rated twice (the later one
# goes). User 2 has only 4 distinct items and is dropped, taking item 99 (nobody else's) along.
# User 3 has a timestamp tie, which keeps file order (31 before 30).
ML_ROWS = [
    (1, 10, 5, 300), (1, 20, 3, 100), (2, 99, 1, 50), (1, 30, 4, 200), (1, 20, 2, 400),
    (3, 31, 4, 10), (3, 30, 4, 10), (1, 40, 1, 500), (2, 10, 2, 60), (1, 50, 4, 600),
    (3, 10, 5, 5), (2, 20, 3, 70), (3, 40, 2, 20), (3, 50, 3, 30), (2, 30, 1, 80),
    (2, 30, 5, 90), (1, 31, 2, 700),
]
# items 10, 20, 30, 31, 40, 50 -> 1..6; user 1 in time order: 20 30 10 40 50 31
ML_EXPECTED = [[2, 3, 1, 5, 6, 4], [1, 4, 3, 5, 6]]


def test_convert_movielens_dat_csv_zip(tmp_path: Path) -> None:
    dat = "".join(f"{u}::{i}::{r}::{t}\n" for u, i, r, t in ML_ROWS)
    (tmp_path / "ml-x").mkdir()
    (tmp_path / "ml-x" / "ratings.dat").write_text(dat)
    csv = "userId,movieId,rating,timestamp\n" + "".join(
        f"{u},{i},{r}.5,{t}\n" for u, i, r, t in ML_ROWS)
    (tmp_path / "ratings.csv").write_text(csv)
    with zipfile.ZipFile(tmp_path / "ml-z.zip", "w") as z:
        z.writestr("ml-z/ratings.dat", dat)
    for path in (tmp_path / "ml-x" / "ratings.dat", tmp_path / "ratings.csv",
                 tmp_path / "ml-z.zip"):
        data = D.convert_movielens(path)
        assert _rows(data) == ML_EXPECTED and data.n_items == 6, path
        assert _rows(D.load(path)) == ML_EXPECTED  # load() sniffs the format
    assert D.convert_movielens(tmp_path / "ml-x" / "ratings.dat").name == "ml-x"
    assert D.convert_movielens(tmp_path / "ml-x" / "ratings.dat", min_len=4).n_users == 3


def test_convert_movielens_malformed_line_counts_header(tmp_path: Path) -> None:
    path = tmp_path / "ratings.csv"
    path.write_text("userId,movieId,rating,timestamp\n1,2,3.0,4\n1,b,3.0,4\n")
    with pytest.raises(InputError, match=r"ratings\.csv:3: expected .*'1,b,3\.0,4'"):
        D.convert_movielens(path)


# --------------------------------------------------------------------------- load() and names


def test_load_names_and_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(InputError, match="games"):
        D.load("nope")
    with pytest.raises(InputError, match="recbench data fetch games"):
        D.load("games", cache=tmp_path)
    with pytest.raises(InputError, match="known datasets: beauty, games, ml-1m, steam"):
        D.fetch("nope")
    payload = b"1 1\n1 2\n2 2\n"
    spec = D.DatasetSpec("tiny", "http://127.0.0.1:9/tiny.txt", hashlib.sha256(payload)
                         .hexdigest(), len(payload), 2, 2, 3, "user-item", "", "")
    monkeypatch.setitem(D.REGISTRY, "tiny", spec)
    (tmp_path / "tiny.txt").write_bytes(payload)
    data = D.load("tiny", cache=tmp_path)
    assert (data.name, data.n_users, data.n_items, data.n_actions) == ("tiny", 2, 2, 3)
    (tmp_path / "tiny.txt").write_bytes(payload + b"3 1\n")
    with pytest.raises(InputError, match="sha256"):
        D.load("tiny", cache=tmp_path)
    assert D.load("synthetic").name == "synthetic"


def test_cache_dir_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("RECBENCH_CACHE", str(tmp_path))
    assert D.cache_dir() == tmp_path
    assert D.cache_path("games") == tmp_path / "games.txt"
    monkeypatch.delenv("RECBENCH_CACHE")
    assert D.cache_dir() == Path.home() / ".cache" / "recbench"


# --------------------------------------------------------------------------- synthetic


def test_synthetic_deterministic_and_shaped() -> None:
    a = D.synthetic(n_users=500, n_items=300, mean_len=12, seed=3)
    b = D.synthetic(n_users=500, n_items=300, mean_len=12, seed=3)
    c = D.synthetic(n_users=500, n_items=300, mean_len=12, seed=4)
    assert np.array_equal(a.items, b.items) and np.array_equal(a.offsets, b.offsets)
    assert not np.array_equal(a.items[:100], c.items[:100])
    n = a.lengths()
    assert (a.n_users, a.n_items, a.name) == (500, 300, "synthetic")
    assert n.min() >= 5 and abs(n.mean() - 12) < 1.5 and n.std() > 3
    assert a.items.min() >= 1 and a.items.max() <= 300
    assert D.GAMES_SHAPED["n_users"] == 31013 and D.GAMES_SHAPED["n_items"] == 23715
    with pytest.raises(InputError, match="mean_len"):
        D.synthetic(n_users=10, n_items=100, mean_len=4)


def _hr10(scores: np.ndarray) -> float:
    # mid-rank ties, as recmodels.metrics: rank = #greater + 0.5 * #tied among the negatives
    t = scores[:, :1]
    rank = (scores[:, 1:] > t).sum(1) + 0.5 * (scores[:, 1:] == t).sum(1)
    return float((rank < 10).mean())


def test_synthetic_is_learnable_by_sequence_not_popularity() -> None:
    split = S.leave_one_out(D.synthetic(n_users=2000, n_items=1000, mean_len=20, seed=0))
    n = split.n_items + 1
    # first-order Markov: count (previous item -> next item) pairs in training
    user = np.repeat(np.arange(split.n_users), split.train_lengths())
    same = user[1:] == user[:-1]
    prev, nxt = split.train_items[:-1][same].astype(np.int64), split.train_items[1:][same]
    keys, counts = np.unique(prev * n + nxt, return_counts=True)
    batch = next(S.eval_batches(split, "test", seq_len=50, batch_size=10**6, seed=0))
    query = batch["seq"][:, -1:].astype(np.int64) * n + batch["candidates"]
    at = np.minimum(np.searchsorted(keys, query), keys.size - 1)
    markov = np.where(keys[at] == query, counts[at], 0)
    hr_markov = _hr10(markov)
    hr_pop = _hr10(S.popularity(split)[batch["candidates"]])
    assert hr_markov > 0.6 and hr_markov - hr_pop > 0.3, (hr_markov, hr_pop)


# --------------------------------------------------------------------------- split


def test_leave_one_out_hand_case() -> None:
    data = _interactions([[1, 2, 3, 4, 5], [6, 2, 6], [3, 4], [7]], n_items=7)
    split = S.leave_one_out(data)
    train = [split.train_items[a:b].tolist()
             for a, b in zip(split.train_offsets[:-1], split.train_offsets[1:])]
    assert train == [[1, 2, 3], [6], [3, 4], [7]]
    assert split.valid_target.tolist() == [4, 2, 0, 0]
    assert split.test_target.tolist() == [5, 6, 0, 0]
    sets = [split.set_items[a:b].tolist()
            for a, b in zip(split.set_offsets[:-1], split.set_offsets[1:])]
    assert sets == [[1, 2, 3, 4, 5], [2, 6], [3, 4], [7]]
    assert S.popularity(split).tolist() == [0, 1, 1, 2, 1, 0, 1, 1]


# --------------------------------------------------------------------------- train batches


def test_train_batches_padding_alignment_and_epoch() -> None:
    data = _interactions([[1, 2, 3, 4, 5], [6, 2, 6], [3, 4], [7], [1, 2, 3, 4, 5, 6, 7]], 9)
    split = S.leave_one_out(data)  # train: [1 2 3], [6], [3 4], [7], [1 2 3 4 5]
    (b,) = S.train_batches(split, seq_len=4, batch_size=8, seed=0, shuffle=False)
    assert b["seq"].tolist() == [[0, 0, 1, 2], [0, 0, 0, 3], [1, 2, 3, 4]]
    assert b["pos"].tolist() == [[0, 0, 2, 3], [0, 0, 0, 4], [2, 3, 4, 5]]
    assert b["neg"].shape == (3, 4, 1) and b["seq"].dtype == np.int32
    assert ((b["neg"][..., 0] > 0) == (b["pos"] > 0)).all()
    (b,) = S.train_batches(split, seq_len=2, batch_size=8, seed=0, shuffle=False)
    assert b["seq"][2].tolist() == [3, 4] and b["pos"][2].tolist() == [4, 5]  # truncated left
    # shuffled epochs: every eligible user once, last batch partial, order set by the seed
    big = S.leave_one_out(D.synthetic(n_users=301, n_items=200, mean_len=8, seed=1))
    eligible = int((big.train_lengths() >= 2).sum())
    batches = list(S.train_batches(big, seq_len=6, batch_size=64, n_neg=3, seed=5))
    assert len(batches) == S.n_train_batches(big, 64) == -(-eligible // 64)
    assert [len(x["seq"]) for x in batches][-1] == eligible - 64 * (len(batches) - 1)
    again = list(S.train_batches(big, seq_len=6, batch_size=64, n_neg=3, seed=5))
    other = list(S.train_batches(big, seq_len=6, batch_size=64, n_neg=3, seed=6))
    assert all(np.array_equal(x["neg"], y["neg"]) for x, y in zip(batches, again))
    assert not np.array_equal(batches[0]["seq"], other[0]["seq"])
    assert batches[0]["neg"].shape == (64, 6, 3)


def _half_catalog(n_users: int = 400, n_items: int = 20) -> S.Split:
    # every user holds 10 of 20 items (distinct, random order): collisions are the common case
    rng = np.random.default_rng(0)
    seqs = np.argsort(rng.random((n_users, n_items)), axis=1)[:, : n_items // 2] + 1
    return S.leave_one_out(_interactions(seqs.tolist(), n_items))


def test_training_negatives_avoid_training_items_and_are_uniform() -> None:
    split = _half_catalog()
    trained = np.zeros((split.n_users, split.n_items + 1), bool)
    for u in range(split.n_users):
        trained[u, split.train_items[split.train_offsets[u]:split.train_offsets[u + 1]]] = True
    counts = np.zeros((split.n_users, split.n_items + 1))
    rows = np.arange(split.n_users)
    for b in S.train_batches(split, seq_len=8, batch_size=400, n_neg=4, seed=0, shuffle=False):
        pos, neg = b["pos"], b["neg"]
        assert (neg[pos > 0] > 0).all() and (neg[pos == 0] == 0).all()
        assert not trained[rows[:, None, None], neg][pos > 0].any()
        np.add.at(counts, (np.broadcast_to(rows[:, None, None], neg.shape)[pos > 0],
                           neg[pos > 0]), 1)
    # uniform over each user's 12 items outside its 8 training items (its 2 held-out targets
    # included, as SASRec's sampler draws them): per item, observed draws match expectation
    expected = counts.sum(1, keepdims=True) / 12 * ~trained
    assert counts[trained].sum() == 0
    assert np.allclose(counts.sum(0)[1:], expected.sum(0)[1:], rtol=0.1)
    held_out = np.zeros_like(trained)
    held_out[rows, split.valid_target] = held_out[rows, split.test_target] = True
    assert np.allclose(counts[held_out].sum() / counts.sum(), 2 / 12, rtol=0.1)


def test_held_out_items_can_be_training_negatives_but_never_candidates() -> None:
    """SASRec's sampler excludes only a user's training items: with a 6-item catalog, a user
    who trained on 1 2 3 gets negatives from 4 (validation), 5 (test) and 6. Evaluation
    candidates still avoid every item the user has, so only 6 is left for them."""
    split = S.leave_one_out(_interactions([[1, 2, 3, 4, 5]] * 200, n_items=6))
    drawn = np.concatenate([b["neg"][b["pos"] > 0].ravel() for b in S.train_batches(
        split, seq_len=4, batch_size=200, n_neg=10, seed=1)])  # 4,000 draws
    assert drawn.size == 4000 and set(np.unique(drawn).tolist()) == {4, 5, 6}
    assert np.allclose(np.bincount(drawn, minlength=7)[4:] / drawn.size, 1 / 3, atol=0.03)
    for which in ("valid", "test"):
        (b,) = S.eval_batches(split, which, seq_len=4, batch_size=200, n_neg=20, seed=2)
        assert (b["candidates"][:, 1:] == 6).all()


def test_negatives_impossible_when_user_owns_catalog() -> None:
    # training negatives: impossible only when the training items cover the catalog
    split = S.leave_one_out(_interactions([[1, 2, 3, 4, 1, 2], [1, 2, 3, 4]], n_items=4))
    with pytest.raises(InputError, match="every item of the catalog among its training"):
        next(iter(S.train_batches(split, seq_len=3, batch_size=2, shuffle=False)))
    split = S.leave_one_out(_interactions([[1, 2, 3, 4], [1, 2, 3]], n_items=4))
    next(iter(S.train_batches(split, seq_len=3, batch_size=2, shuffle=False)))  # 3, 4 are free
    with pytest.raises(InputError, match="every item"):  # but not for evaluation candidates
        next(iter(S.eval_batches(split, "test", seq_len=3, batch_size=2)))


# --------------------------------------------------------------------------- evaluation


def test_eval_batches_inputs_and_candidates() -> None:
    split = _half_catalog()
    for which, target in (("valid", split.valid_target), ("test", split.test_target)):
        seen = 0
        for b in S.eval_batches(split, which, seq_len=9, batch_size=150, n_neg=50, seed=1):
            u, cand = b["user"], b["candidates"]
            assert cand.shape == (u.size, 51) and (cand[:, 0] == b["target"]).all()
            assert (b["target"] == target[u]).all()
            sets = [set(split.data.items[split.data.offsets[x]:split.data.offsets[x + 1]])
                    for x in u]
            assert all(not set(c[1:]) & s for c, s in zip(cand.tolist(), sets))
            seen += u.size
        assert seen == split.n_users
    hand = S.leave_one_out(_interactions([[1, 2, 3, 4, 5], [6, 7], [1, 8, 9]], n_items=12))
    (v,) = S.eval_batches(hand, "valid", seq_len=3, batch_size=8, n_neg=2)
    (t,) = S.eval_batches(hand, "test", seq_len=3, batch_size=8, n_neg=2)
    assert v["user"].tolist() == [0, 2] and t["user"].tolist() == [0, 2]  # user 1: no target
    assert v["seq"].tolist() == [[1, 2, 3], [0, 0, 1]] and v["target"].tolist() == [4, 8]
    assert t["seq"].tolist() == [[2, 3, 4], [0, 1, 8]] and t["target"].tolist() == [5, 9]


def test_eval_users_sampling_is_deterministic() -> None:
    split = _half_catalog()
    a = S.eval_users(split, "test", max_users=100, seed=7)
    assert a.size == 100 and np.array_equal(a, S.eval_users(split, "test", max_users=100,
                                                            seed=7))
    assert not np.array_equal(a, S.eval_users(split, "test", max_users=100, seed=8))
    batches = list(S.eval_batches(split, "test", seq_len=4, batch_size=64, max_users=100,
                                  seed=7))
    assert np.array_equal(np.concatenate([b["user"] for b in batches]), a)


def test_seen_items_excludes_target() -> None:
    # user 0: train [1 2 1], valid 3, test 1 (the test target was seen before)
    split = S.leave_one_out(_interactions([[1, 2, 1, 3, 1], [4, 5, 6], [7]], n_items=8))
    indptr, idx = S.seen_items(split, np.array([0, 1, 2]), "test")
    assert indptr.tolist() == [0, 2, 4, 5] and idx.tolist() == [2, 3, 4, 5, 7]
    indptr, idx = S.seen_items(split, np.array([1, 0]), "valid")
    assert indptr.tolist() == [0, 1, 3] and idx.tolist() == [4, 1, 2]


# --------------------------------------------------------------------------- download


class _Server:
    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.hits = 0
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                outer.hits += 1
                body = outer.files.get(self.path)
                self.send_response(200 if body is not None else 404)
                self.send_header("Content-Length", str(len(body or b"")))
                self.end_headers()
                self.wfile.write(body or b"")

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True).start()


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> Iterator[_Server]:
    for var in ("http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    s = _Server()
    yield s
    s.httpd.shutdown()
    s.httpd.server_close()


def _spec(url: str, payload: bytes) -> D.DatasetSpec:
    return D.DatasetSpec("toy", url, hashlib.sha256(payload).hexdigest(), len(payload),
                         users=1, items=1, actions=1, format="user-item", description="",
                         citation="")


def test_fetch_downloads_once(server: _Server, tmp_path: Path) -> None:
    payload = bytes(range(256)) * 1000  # several chunks
    server.files["/toy.txt"] = payload
    spec = _spec(server.url + "/toy.txt", payload)
    calls: list[tuple[int, int]] = []
    path = D.fetch(spec, cache=tmp_path, progress=lambda done, total: calls.append((done, total)))
    assert path == tmp_path / "toy.txt" and path.read_bytes() == payload
    assert calls[-1] == (len(payload), len(payload)) and len(calls) > 1
    assert D.fetch(spec, cache=tmp_path) == path and server.hits == 1  # cached: no request
    assert sorted(p.name for p in tmp_path.iterdir()) == ["toy.txt"]


def test_fetch_bad_hash_keeps_previous_file(server: _Server, tmp_path: Path) -> None:
    good = b"1 1\n" * 100
    server.files["/toy.txt"] = b"1 2\n" * 100  # what the server now sends: not what we expect
    spec = _spec(server.url + "/toy.txt", good)
    sent = hashlib.sha256(server.files["/toy.txt"]).hexdigest()
    with pytest.raises(InputError, match=f"expected sha256 {spec.sha256}.*got {sent}"):
        D.fetch(spec, cache=tmp_path)
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "toy.txt").write_bytes(b"old copy")  # e.g. a previous release's file
    with pytest.raises(InputError, match="sha256"):
        D.fetch(spec, cache=tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == ["toy.txt"]
    assert (tmp_path / "toy.txt").read_bytes() == b"old copy"
    with pytest.raises(InputError, match="404"):
        D.fetch(dataclasses.replace(spec, url=server.url + "/gone.txt"), cache=tmp_path)


def test_fetch_unreachable(tmp_path: Path) -> None:
    with socket.socket() as s:  # a port nobody listens on once this socket closes
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    spec = _spec(f"http://127.0.0.1:{port}/toy.txt", b"x")
    with pytest.raises(InputError, match=r"could not fetch http://127\.0\.0\.1.*place it at "
                       + re.escape(str(tmp_path / "toy.txt"))) as e:
        D.fetch(spec, cache=tmp_path)
    assert "\n" not in str(e.value) and list(tmp_path.iterdir()) == []
