"""The SASRec registry entries without a checksum: statistics verified on fetch and load, the
sha256 seen recorded, wrong files refused (library, in-process CLI and `python -m bench`).
Files are generated here; downloads come from a loopback server (tests/recmodels/test_data.py)."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench.cli import main
from recmodels import data as D
from recmodels.errors import InputError
from tests.recmodels import test_data
from tests.recmodels.test_data import _Server

ROOT = Path(__file__).resolve().parents[2]
server = test_data.server  # the loopback HTTP server fixture, proxies out of the way


def _sasrec_file(users: int, items: int, per_user: int) -> bytes:
    """SASRec 'user item' lines: users 1..users with per_user actions each, every item 1..items
    used at least once (needs users * per_user >= items)."""
    assert users * per_user >= items
    lines = [f"{u} {(u * per_user + k) % items + 1}"
             for u in range(1, users + 1) for k in range(per_user)]
    return ("\n".join(lines) + "\n").encode()


def _spec(url: str, users: int, items: int, actions: int, tolerance: int = 0) -> D.DatasetSpec:
    return D.DatasetSpec("toy", url, None, None, users=users, items=items, actions=actions,
                         format="user-item", description="toy", citation="none",
                         paper_quality={"hr@10": 0.5, "ndcg@10": 0.25},
                         settings={"seq_len": 7, "dropout": 0.3}, actions_tolerance=tolerance)


GOOD = _sasrec_file(3, 4, 4)  # 3 users, 4 items, 12 actions


def test_registry_holds_the_sasrec_papers_figures() -> None:
    g, m, b, s = (D.REGISTRY[n] for n in ("games", "ml-1m", "beauty", "steam"))
    assert g.sha256 == "b7376fe24430743f411dc7f567285657b2adb3f74361cc7ba0aee94f3024b651"
    assert (g.size_bytes, g.users, g.items, g.actions_range) == (
        3_187_124, 31_013, 23_715, (287_107, 287_107))
    assert g.paper_quality == {"hr@10": 0.7410, "ndcg@10": 0.5360}
    assert g.settings == {"seq_len": 50, "dropout": 0.5} and g.actions_label == "287,107"
    assert (m.users, m.items, m.actions_range, m.actions_label) == (
        6_040, 3_416, (950_000, 1_050_000), "~1.0M")
    assert m.paper_quality == {"hr@10": 0.8245, "ndcg@10": 0.5905}
    assert m.settings == {"seq_len": 200, "dropout": 0.2}
    assert (b.users, b.items, b.actions_range) == (52_024, 57_289, (350_000, 450_000))
    assert b.paper_quality == {"hr@10": 0.4854, "ndcg@10": 0.3219}
    assert (s.users, s.items, s.actions_range) == (334_730, 13_047, (3_650_000, 3_750_000))
    assert s.paper_quality == {"hr@10": 0.8729, "ndcg@10": 0.6306}
    for spec, file in ((m, "ml-1m.txt"), (b, "Beauty.txt"), (s, "Steam.txt")):
        assert spec.url == f"https://raw.githubusercontent.com/kang205/SASRec/master/data/{file}"
        assert spec.sha256 is None and spec.size_bytes is None
        assert "Kang & McAuley" in spec.citation and "Table III" in spec.citation
        if spec is not m:
            assert spec.settings == {"seq_len": 50, "dropout": 0.5}


def test_check_stats_interval_is_inclusive(tmp_path: Path) -> None:
    files = {}
    for per_user in (3, 4, 5):  # 9, 12, 15 actions
        files[per_user] = tmp_path / f"{per_user}.txt"
        files[per_user].write_bytes(_sasrec_file(3, 4, per_user))
    for actions, accepted in ((13, (4,)), (14, (5,))):  # 12..14 and 13..15 (± 1)
        spec = _spec("http://unused/toy.txt", 3, 4, actions=actions, tolerance=1)
        for per_user, path in files.items():
            data = D.load_user_item(path)
            if per_user in accepted:
                D.check_stats(spec, data, source="x", fix="y")
                continue
            with pytest.raises(InputError, match=rf"actions expected {actions - 1}\.\.{actions + 1}"
                               rf" \(the paper's ~{actions}\), got {3 * per_user}; y$"):
                D.check_stats(spec, data, source="x", fix="y")
    exact = _spec("http://unused/toy.txt", 3, 4, actions=13)
    with pytest.raises(InputError, match=r"\): actions expected 13, got 12; y$"):
        D.check_stats(exact, D.load_user_item(files[4]), source="x", fix="y")


def test_fetch_without_checksum_verifies_statistics_and_records_sha(
        server: _Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    server.files["/toy.txt"] = GOOD
    spec = _spec(server.url + "/toy.txt", 3, 4, actions=10, tolerance=5)  # 12 in 5..15
    logs: list[str] = []
    path = D.fetch(spec, cache=tmp_path, log=logs.append)
    digest = hashlib.sha256(GOOD).hexdigest()
    assert path == tmp_path / "toy.txt" and path.read_bytes() == GOOD
    assert (tmp_path / "toy.sha256").read_text() == f"{digest}  toy.txt\n"
    assert D.sha256_seen(spec, cache=tmp_path) == digest
    (line,) = logs
    assert "no checksum is registered" in line and "verified by its statistics" in line
    assert f"sha256 seen {digest}" in line and "3 users, 4 items, ~10 actions" in line
    assert D.fetch(spec, cache=tmp_path, log=logs.append) == path  # cached: no request, no log
    assert server.hits == 1 and len(logs) == 1
    monkeypatch.setitem(D.REGISTRY, "toy", spec)
    data = D.load("toy", cache=tmp_path, log=logs.append)
    assert (data.name, data.n_users, data.n_items, data.n_actions) == ("toy", 3, 4, 12)
    assert len(logs) == 1  # already verified: nothing to say


def test_fetch_wrong_statistics_is_refused_and_not_kept(server: _Server, tmp_path: Path) -> None:
    server.files["/toy.txt"] = GOOD  # 3 users, 4 items, 12 actions
    spec = _spec(server.url + "/toy.txt", users=5, items=4, actions=100, tolerance=50)
    sent = hashlib.sha256(GOOD).hexdigest()
    with pytest.raises(InputError) as e:
        D.fetch(spec, cache=tmp_path, log=lambda s: None)
    msg = str(e.value)
    assert msg.startswith(f"dataset 'toy': download of {spec.url} does not have the statistics")
    assert "users expected 5, got 3; actions expected 50..150 (the paper's ~100), got 12;" in msg
    assert "items expected" not in msg and f"(sha256 {sent}, {len(GOOD)} bytes) was not kept" in msg
    assert f"place a copy with these statistics at {tmp_path / 'toy.txt'}" in msg
    assert "\n" not in msg and list(tmp_path.iterdir()) == []
    # A file already in the cache is not replaced by a download that fails the check.
    (tmp_path / "toy.txt").write_bytes(b"old copy\n")
    logs: list[str] = []
    with pytest.raises(InputError, match="users expected 5, got 3"):
        D.fetch(spec, cache=tmp_path, log=logs.append)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["toy.txt"]
    assert (tmp_path / "toy.txt").read_bytes() == b"old copy\n"
    assert len(logs) == 1 and "old copy" in logs[0]  # why the cached file was not used


def test_fetch_unreadable_download_is_refused(server: _Server, tmp_path: Path) -> None:
    server.files["/toy.txt"] = b"<html>rate limited</html>\n"
    spec = _spec(server.url + "/toy.txt", 3, 4, 12)
    with pytest.raises(InputError, match=r"dataset 'toy': download of .* is not a readable "
                                         r"user-item file \(.*expected '<user> <item>'.*\); "
                                         r"the download .* was not kept"):
        D.fetch(spec, cache=tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_fetch_checks_a_hand_placed_file_before_downloading(server: _Server,
                                                            tmp_path: Path) -> None:
    spec = _spec(server.url + "/toy.txt", 3, 4, 12)  # the server has no file: a 404
    (tmp_path / "toy.txt").write_bytes(GOOD)
    logs: list[str] = []
    assert D.fetch(spec, cache=tmp_path, log=logs.append) == tmp_path / "toy.txt"
    assert server.hits == 0 and "verified by its statistics" in logs[0]
    assert D.sha256_seen(spec, cache=tmp_path) == hashlib.sha256(GOOD).hexdigest()


def test_load_checks_a_hand_placed_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = _spec("http://127.0.0.1:9/toy.txt", 3, 4, 12)
    monkeypatch.setitem(D.REGISTRY, "toy", spec)
    (tmp_path / "toy.txt").write_bytes(_sasrec_file(2, 4, 6))  # 2 users, 4 items, 12 actions
    logs: list[str] = []
    with pytest.raises(InputError) as e:
        D.load("toy", cache=tmp_path, log=logs.append)
    assert str(e.value) == (
        f"dataset 'toy': {tmp_path / 'toy.txt'} does not have the statistics registered for it "
        "(no checksum is registered, so they are checked): users expected 3, got 2; delete or "
        "replace that file, then run `recbench data fetch toy`")
    assert logs == [] and not (tmp_path / "toy.sha256").exists()
    (tmp_path / "toy.txt").write_bytes(GOOD)
    assert D.load("toy", cache=tmp_path, log=logs.append).n_users == 3
    assert len(logs) == 1 and "verified by its statistics" in logs[0]
    assert D.sha256_seen("toy", cache=tmp_path) == hashlib.sha256(GOOD).hexdigest()
    D.load("toy", cache=tmp_path, log=logs.append)
    assert len(logs) == 1  # first load only
    (tmp_path / "toy.txt").write_bytes(_sasrec_file(3, 3, 4))  # changed after it was verified
    with pytest.raises(InputError, match="changed since it was first verified"):
        D.load("toy", cache=tmp_path)


def _changed(path: Path, now: bytes, first: bytes) -> str:
    side = path.with_name("toy.sha256")
    return (f"dataset 'toy': {path} changed since it was first verified (sha256 "
            f"{hashlib.sha256(now).hexdigest()[:12]}…, first recorded "
            f"{hashlib.sha256(first).hexdigest()[:12]}… in {side}); restore it (delete it and run "
            f"`recbench data fetch toy` to download it again), or delete {side} to verify it anew")


def test_the_first_recorded_sha256_stands(server: _Server, tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """A verified file edited afterwards is refused by load and fetch, even where the edit keeps
    the statistics, and its first sha256 is never overwritten; deleting the record verifies
    the file anew."""
    server.files["/toy.txt"] = GOOD
    spec = _spec(server.url + "/toy.txt", 3, 4, 12, tolerance=2)
    monkeypatch.setitem(D.REGISTRY, "toy", spec)
    path, side = tmp_path / "toy.txt", tmp_path / "toy.sha256"
    D.fetch(spec, cache=tmp_path, log=lambda s: None)
    record = side.read_bytes()
    edited = GOOD + b"1 2\n"  # 13 actions: still within the statistics
    path.write_bytes(edited)
    logs: list[str] = []
    for call in (lambda: D.load("toy", cache=tmp_path, log=logs.append),
                 lambda: D.fetch(spec, cache=tmp_path, log=logs.append)):
        with pytest.raises(InputError) as e:
            call()
        assert str(e.value) == _changed(path, edited, GOOD)
    assert logs == [] and server.hits == 1  # no download over the edit
    assert side.read_bytes() == record and path.read_bytes() == edited
    assert D.checksum_problem(spec, cache=tmp_path) == _changed(path, edited, GOOD)
    # restored by fetching again: the download is checked against the first record too
    path.unlink()
    server.files["/toy.txt"] = edited  # changed upstream
    with pytest.raises(InputError) as e:
        D.fetch(spec, cache=tmp_path, log=logs.append)
    assert str(e.value) == (
        f"dataset 'toy': download of {spec.url} has sha256 "
        f"{hashlib.sha256(edited).hexdigest()[:12]}…, not the "
        f"{hashlib.sha256(GOOD).hexdigest()[:12]}… first recorded in {side}: it changed "
        f"upstream since it was first verified; the download was not kept; delete {side} to "
        "verify it anew")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["toy.sha256"]
    server.files["/toy.txt"] = GOOD
    assert D.fetch(spec, cache=tmp_path, log=logs.append).read_bytes() == GOOD
    assert logs == [] and side.read_bytes() == record  # as first verified: nothing to say
    # the fix the message gives: delete the record, and the edited file is verified anew
    path.write_bytes(edited)
    side.unlink()
    assert D.load("toy", cache=tmp_path, log=logs.append).n_actions == 13
    assert len(logs) == 1 and "verified by its statistics" in logs[0]
    assert D.sha256_seen(spec, cache=tmp_path) == hashlib.sha256(edited).hexdigest()


def test_cli_data_info_on_an_edited_file_is_one_line_exit_2_and_keeps_the_record(
        tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RECBENCH_CACHE", str(tmp_path))
    monkeypatch.setitem(D.REGISTRY, "toy", _spec("http://127.0.0.1:9/toy.txt", 3, 4, 12))
    path = tmp_path / "toy.txt"
    path.write_bytes(GOOD)
    assert main(["data", "info", "toy"]) == 0
    capsys.readouterr()
    record = (tmp_path / "toy.sha256").read_bytes()
    edited = GOOD.replace(b"1 ", b"2 ", 1)  # same users, items and actions
    path.write_bytes(edited)
    assert main(["data", "info", "toy"]) == 2
    out, err = capsys.readouterr()
    assert (out, err) == ("", f"recbench data: error: {_changed(path, edited, GOOD)}\n")
    assert (tmp_path / "toy.sha256").read_bytes() == record
    assert main(["data", "list", "--json"]) == 0
    row = {r["name"]: r for r in json.loads(capsys.readouterr().out)["registry"]}["toy"]
    assert row["checksum_problem"] == _changed(path, edited, GOOD) and row["problem"] is None
    assert main(["data", "list"]) == 0
    assert (f"12 actions  cached, changed since verified (below)\n"
            f"           {_changed(path, edited, GOOD)}\n") in capsys.readouterr().out


JUNK = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR"  # a binary file where the dataset should be


def test_fetch_over_a_junk_cached_file_says_it_downloads_it_again(
        server: _Server, tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch) -> None:
    server.files["/toy.txt"] = GOOD
    monkeypatch.setenv("RECBENCH_CACHE", str(tmp_path))
    monkeypatch.setitem(D.REGISTRY, "toy", _spec(server.url + "/toy.txt", 3, 4, 12))
    path = tmp_path / "toy.txt"
    path.write_bytes(JUNK)
    assert main(["data", "fetch", "toy"]) == 0
    out, err = capsys.readouterr()
    assert out == f"{path}\n" and path.read_bytes() == GOOD
    first, second = err.strip().splitlines()
    assert first.startswith(f"dataset 'toy': {path} is not a readable user-item file ({path}:")
    assert "not UTF-8 text" in first and first.endswith("); downloading it again")
    assert "retry" not in first and "convert it" not in first
    assert "verified by its statistics" in second


def test_load_of_a_junk_cached_file_says_to_fetch_it_again(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(D.REGISTRY, "toy", _spec("http://127.0.0.1:9/toy.txt", 3, 4, 12))
    path = tmp_path / "toy.txt"
    for junk, why in ((JUNK, "not UTF-8 text"), (b"<html>rate limited</html>\n",
                                                 "expected '<user> <item>'")):
        path.write_bytes(junk)
        with pytest.raises(InputError) as e:
            D.load("toy", cache=tmp_path)
        msg = str(e.value)
        assert msg.startswith(f"dataset 'toy': {path} is not a readable user-item file ({path}:")
        assert why in msg and msg.endswith("); delete it and run `recbench data fetch toy`")
        assert "fix or delete that line" not in msg and "retry" not in msg and "\n" not in msg
    assert not (tmp_path / "toy.sha256").exists()


def test_cli_data_list_says_a_registered_sha256_does_not_match(
        tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RECBENCH_CACHE", str(tmp_path))
    path = tmp_path / "games.txt"
    path.write_bytes(GOOD)
    want = (f"dataset 'games': {path} does not match the registered sha256 (sha256 "
            f"{hashlib.sha256(GOOD).hexdigest()[:12]}…, registered b7376fe24430…); delete it "
            "and run `recbench data fetch games`")
    assert main(["data", "list", "--json"]) == 0
    row = json.loads(capsys.readouterr().out)["registry"][0]
    assert (row["name"], row["cached"], row["checksum_problem"]) == ("games", True, want)
    assert main(["data", "list"]) == 0
    out = capsys.readouterr().out
    assert ("287,107 actions  cached, sha256 does not match (below)\n"
            f"           {want}\n") in out
    assert "sha256 registered" not in out.split("  ml-1m")[0]
    with pytest.raises(InputError) as e:
        D.load("games")
    assert str(e.value) == want


# --------------------------------------------------------------------------- CLI


def test_cli_fetch_wrong_statistics_is_exit_2(server: _Server, tmp_path: Path, capsys,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    server.files["/toy.txt"] = GOOD
    monkeypatch.setenv("RECBENCH_CACHE", str(tmp_path))
    monkeypatch.setitem(D.REGISTRY, "toy", _spec(server.url + "/toy.txt", 3, 5, 12))
    assert main(["data", "fetch", "toy"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("recbench data: error: dataset 'toy': download of ")
    assert "items expected 5, got 4;" in err and len(err.splitlines()) == 1
    assert list(tmp_path.iterdir()) == []


_RUN = ("import json, os, runpy, sys; from recmodels import data as D; "
        "D.REGISTRY['toy'] = D.DatasetSpec(**json.loads(os.environ['TOY_SPEC'])); "
        "sys.argv = ['bench', *sys.argv[1:]]; runpy.run_module('bench', run_name='__main__')")


def _python_m_bench(args: list[str], spec: D.DatasetSpec, cache: Path):
    """`python -m bench ARGS` with one more registry entry (a spec can't cross processes)."""
    env = {k: v for k, v in os.environ.items() if k.lower() not in ("http_proxy", "all_proxy")}
    env |= {"RECBENCH_CACHE": str(cache), "TOY_SPEC": json.dumps(spec.__dict__)}
    return subprocess.run([sys.executable, "-c", _RUN, *args], capture_output=True, text=True,
                          timeout=120, env=env, cwd=ROOT)


def test_python_m_bench_data_fetch(server: _Server, tmp_path: Path) -> None:
    server.files["/toy.txt"] = GOOD
    bad = _python_m_bench(["data", "fetch", "toy"],
                          _spec(server.url + "/toy.txt", 4, 4, 100, tolerance=10), tmp_path)
    assert bad.returncode == 2 and bad.stdout == "" and len(bad.stderr.splitlines()) == 1
    assert ("users expected 4, got 3; actions expected 90..110 (the paper's ~100), got 12;"
            in bad.stderr)
    assert list(tmp_path.iterdir()) == []
    good = _python_m_bench(["data", "fetch", "toy"], _spec(server.url + "/toy.txt", 3, 4, 12),
                           tmp_path)
    assert good.returncode == 0 and good.stdout.strip() == str(tmp_path / "toy.txt")
    assert "no checksum is registered" in good.stderr
    assert "verified by its statistics" in good.stderr
    assert (tmp_path / "toy.sha256").read_text().split()[0] == hashlib.sha256(GOOD).hexdigest()


def test_cli_data_list_shows_paper_figures_and_sha_seen(server: _Server, tmp_path: Path, capsys,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RECBENCH_CACHE", str(tmp_path))
    server.files["/toy.txt"] = GOOD
    spec = _spec(server.url + "/toy.txt", 3, 4, 12)
    monkeypatch.setitem(D.REGISTRY, "toy", spec)
    D.fetch("toy", log=lambda s: None)
    digest = hashlib.sha256(GOOD).hexdigest()
    assert main(["data", "list", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)["registry"]}
    assert list(rows) == ["games", "ml-1m", "beauty", "steam", "toy"]
    m = rows["ml-1m"]
    assert (m["users"], m["items"], m["actions_min"], m["actions_max"]) == (
        6_040, 3_416, 950_000, 1_050_000)
    assert m["paper_quality"] == {"hr@10": 0.8245, "ndcg@10": 0.5905}
    assert m["settings"] == {"seq_len": 200, "dropout": 0.2}
    assert (m["checksum"], m["sha256"], m["sha256_seen"], m["cached"]) == (
        "none", None, None, False)
    assert rows["games"]["checksum"] == "registered" and rows["games"]["sha256"].startswith("b73")
    assert rows["toy"]["sha256_seen"] == digest and rows["toy"]["cached"] is True
    assert main(["data", "list"]) == 0
    out = capsys.readouterr().out
    assert "  ml-1m       6,040 users   3,416 items    ~1.0M actions  not fetched, no checksum\n" \
           "           paper: HR@10 0.8245  NDCG@10 0.5905 at seq_len 200, dropout 0.2\n" in out
    assert "paper: HR@10 0.8729  NDCG@10 0.6306 at seq_len 50, dropout 0.5" in out
    assert "287,107 actions  not fetched, sha256 registered" in out
    assert f"12 actions  cached, sha256 seen {digest[:12]}…" in out
    assert max(len(line) for line in out.splitlines()[1:]) <= 100  # [0]: the cache dir


def test_fetching_synthetic_data_says_it_is_generated(capsys) -> None:
    from bench.cli import main

    assert main(["data", "fetch", "synthetic-games"]) == 2
    err = capsys.readouterr().err.strip()
    assert "generated on the fly" in err and "--dataset synthetic-games" in err
    assert len(err.splitlines()) == 1


# --------------------------------------------------------------------------- the cache path


def _tree(root: Path) -> dict[str, bytes | None]:
    """Every path under root with its bytes (None for a directory): what a refusal must keep."""
    return {str(p.relative_to(root)): None if p.is_dir() else p.read_bytes()
            for p in sorted(root.rglob("*"))}


def test_something_else_at_the_cache_path_is_named_and_kept(
        server: _Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    server.files["/toy.txt"] = GOOD
    spec = _spec(server.url + "/toy.txt", 3, 4, 12)
    monkeypatch.setitem(D.REGISTRY, "toy", spec)
    assert D.cache_problem(spec, cache=tmp_path) is None  # nothing there: fetch writes it
    (tmp_path / "toy.txt").mkdir()
    (tmp_path / "toy.txt" / "notes.txt").write_bytes(b"mine\n")
    before = _tree(tmp_path)
    want = (f"dataset 'toy': {tmp_path / 'toy.txt'} is a directory, not the dataset file: "
            "remove or move it, then run `recbench data fetch toy`")
    assert D.cache_problem("toy", cache=tmp_path) == want
    for call in (lambda: D.load("toy", cache=tmp_path), lambda: D.fetch(spec, cache=tmp_path)):
        with pytest.raises(InputError) as e:
            call()
        assert str(e.value) == want
    assert server.hits == 0 and _tree(tmp_path) == before  # no download, no .part, no sidecar
    (tmp_path / "toy.txt" / "notes.txt").unlink()
    (tmp_path / "toy.txt").rmdir()
    os.mkfifo(tmp_path / "toy.txt")  # load must not try to read it (it would block)
    with pytest.raises(InputError, match=r"toy\.txt is not a regular file, not the dataset file: "
                                         r"remove or move it, then run `recbench data fetch toy`$"):
        D.load("toy", cache=tmp_path)
    with pytest.raises(InputError, match="is not a regular file"):
        D.fetch(spec, cache=tmp_path)  # os.replace would have replaced the FIFO
    assert server.hits == 0 and (tmp_path / "toy.txt").is_fifo()
    (tmp_path / "toy.txt").unlink()
    assert D.fetch(spec, cache=tmp_path, log=lambda s: None).read_bytes() == GOOD
    assert D.cache_problem(spec, cache=tmp_path) is None  # a file there


def test_a_file_where_the_cache_directory_should_be_is_named_and_kept(
        server: _Server, tmp_path: Path) -> None:
    server.files["/toy.txt"] = GOOD
    spec = _spec(server.url + "/toy.txt", 3, 4, 12)
    (tmp_path / "cache").write_bytes(b"not a folder\n")
    for cache in (tmp_path / "cache", tmp_path / "cache" / "deeper"):
        with pytest.raises(InputError) as e:
            D.fetch(spec, cache=cache)
        assert str(e.value) == (
            f"dataset 'toy': cannot use the cache directory {cache}: {tmp_path / 'cache'} is not "
            "a directory; remove or move it, or set RECBENCH_CACHE to a directory, then run "
            "`recbench data fetch toy`")
    assert server.hits == 0 and _tree(tmp_path) == {"cache": b"not a folder\n"}


def test_cli_a_directory_at_the_cache_path_is_one_line_and_exit_2(
        server: _Server, tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch) -> None:
    server.files["/toy.txt"] = GOOD
    monkeypatch.setenv("RECBENCH_CACHE", str(tmp_path))
    monkeypatch.setitem(D.REGISTRY, "toy", _spec(server.url + "/toy.txt", 3, 4, 12))
    for name in ("toy", "games"):
        (tmp_path / f"{name}.txt").mkdir()
        (tmp_path / f"{name}.txt" / "notes.txt").write_bytes(b"mine\n")
    before = _tree(tmp_path)
    problem = {name: f"dataset {name!r}: {tmp_path / f'{name}.txt'} is a directory, not the "
                     f"dataset file: remove or move it, then run `recbench data fetch {name}`"
               for name in ("toy", "games")}
    for name, argv in (("toy", ["data", "info", "toy"]), ("toy", ["data", "info", "toy", "--json"]),
                       ("toy", ["data", "fetch", "toy"]), ("games", ["data", "info", "games"]),
                       ("games", ["train", "--dataset", "games", "--epochs", "1"])):
        assert main(argv) == 2, argv
        out, err = capsys.readouterr()
        assert (out, err) == ("", f"recbench {argv[0]}: error: {problem[name]}\n"), argv
    assert server.hits == 0 and _tree(tmp_path) == before
    assert main(["data", "list", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)["registry"]}
    assert (rows["toy"]["problem"], rows["toy"]["cached"]) == (problem["toy"], False)
    assert rows["games"]["problem"] == problem["games"] and rows["ml-1m"]["problem"] is None
    assert main(["data", "list"]) == 0
    out = capsys.readouterr().out
    assert ("287,107 actions  cache path blocked (below)\n"
            f"           {problem['games']}\n"
            "           paper: HR@10 0.7410  NDCG@10 0.5360 at seq_len 50, dropout 0.5\n") in out
    assert f"12 actions  cache path blocked (below)\n           {problem['toy']}\n" in out
    assert _tree(tmp_path) == before


def test_python_m_bench_fetch_over_a_directory_is_exit_2_and_keeps_it(server: _Server,
                                                                      tmp_path: Path) -> None:
    server.files["/toy.txt"] = GOOD
    (tmp_path / "toy.txt").mkdir()
    (tmp_path / "toy.txt" / "notes.txt").write_bytes(b"mine\n")
    r = _python_m_bench(["data", "fetch", "toy"], _spec(server.url + "/toy.txt", 3, 4, 12),
                        tmp_path)
    assert r.returncode == 2 and r.stdout == "" and len(r.stderr.splitlines()) == 1
    assert r.stderr.startswith(f"recbench data: error: dataset 'toy': {tmp_path / 'toy.txt'} "
                               "is a directory, not the dataset file")
    assert server.hits == 0 and _tree(tmp_path) == {"toy.txt": None,
                                                    "toy.txt/notes.txt": b"mine\n"}


# --------------------------------------------------------------------------- data info


def test_cli_data_info_shows_the_registry_row_as_data_list_does(
        tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RECBENCH_CACHE", str(tmp_path))
    monkeypatch.setitem(D.REGISTRY, "toy", _spec("http://127.0.0.1:9/toy.txt", 3, 4, 12))
    (tmp_path / "toy.txt").write_bytes(GOOD)
    digest = hashlib.sha256(GOOD).hexdigest()
    assert main(["data", "info", "toy", "--json"]) == 0  # the first load records the sha256
    info = json.loads(capsys.readouterr().out)
    assert (info["users"], info["items"], info["actions"]) == (3, 4, 12)  # the file's
    assert main(["data", "list", "--json"]) == 0
    listed = {r["name"]: r for r in json.loads(capsys.readouterr().out)["registry"]}["toy"]
    assert info["registry"] == listed and listed["sha256_seen"] == digest
    assert (listed["paper_quality"], listed["settings"]) == ({"hr@10": 0.5, "ndcg@10": 0.25},
                                                             {"seq_len": 7, "dropout": 0.3})
    assert main(["data", "info", "toy"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("users        3\nitems        4\nactions      12\n")
    assert (f"registry            3 users       4 items       12 actions  cached, sha256 seen "
            f"{digest[:12]}…\n"
            "             paper: HR@10 0.5000  NDCG@10 0.2500 at seq_len 7, dropout 0.3\n"
            "paper: Kang & McAuley, SASRec, ICDM 2018") in out
    assert main(["data", "list"]) == 0  # the same two figures' lines, under the name
    listing = capsys.readouterr().out
    assert (f"  toy             3 users       4 items       12 actions  cached, sha256 seen "
            f"{digest[:12]}…\n"
            "           paper: HR@10 0.5000  NDCG@10 0.2500 at seq_len 7, dropout 0.3\n") in listing
    assert main(["data", "info", "synthetic", "--json"]) == 0  # not a registry dataset
    assert "registry" not in json.loads(capsys.readouterr().out)
    assert main(["data", "info", "synthetic"]) == 0
    assert "registry" not in capsys.readouterr().out
