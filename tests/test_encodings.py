"""Byte-order marks and encodings, in every reader (issue 12): a UTF-8 file with a BOM reads as
the same file without one, and a file in an encoding the reader does not take (UTF-16/UTF-32,
Latin-1 bytes, binary) is refused in one line naming the problem, never read with a loss.

Readers: user-item and MovieLens (.dat, .csv, zip) in recmodels/formats.py, suite TOML in
bench/suites/suite.py, results JSONL in bench/results/read.py; each also through the CLI."""

from __future__ import annotations

import codecs
import json
import zipfile
from pathlib import Path

import pytest

from bench.cli import main
from bench.results import ResultsWriter, load
from bench.suites.suite import load_suite
from recmodels import data as D
from recmodels.errors import InputError

FIX = Path(__file__).parent / "fixtures"
BOM = codecs.BOM_UTF8

# Six ratings of one user: a BOM misread as a header letter drops the first and leaves five.
RATINGS_DAT = "".join(f"1::{10 * i}::5::{i}\n" for i in range(1, 7))
RATINGS_CSV = "userId,movieId,rating,timestamp\n" + "".join(
    f"1,{10 * i},4.5,{i}\n" for i in range(1, 7))
USER_ITEM = "".join(f"1 {i}\n" for i in range(1, 7)) + "2 3\n2 4\n"


def _ratings_zip(path: Path, member: bytes) -> Path:
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("ml-1m/ratings.dat", member)
    return path


# name -> (suffix, text, writer of the bytes into a path); every case has 6 actions of user 1.
DATASETS = {
    "user-item": (".txt", USER_ITEM, None),
    "movielens-dat": (".dat", RATINGS_DAT, None),
    "movielens-csv": (".csv", RATINGS_CSV, None),
    "movielens-zip": (".zip", RATINGS_DAT, _ratings_zip),
}


def _write(tmp_path: Path, kind: str, raw: bytes, stem: str = "f") -> Path:
    suffix, _, make = DATASETS[kind]
    path = tmp_path / f"{stem}{suffix}"
    if make is None:
        path.write_bytes(raw)
        return path
    return make(path, raw)


def _one_line_error(capsys) -> str:
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert captured.out == "" and "\n" not in err and "Traceback" not in err, captured
    return err


def _latin1(text: str) -> bytes:
    """``text`` with a Latin-1 'é' (0xe9, not UTF-8) put on its second line."""
    lines = text.encode().split(b"\n")
    lines[1] = lines[1] + b" \xe9" if b"," not in lines[1] else lines[1] + b"\xe9"
    return b"\n".join(lines)


WRONG = {  # name -> (bytes from the UTF-8 text, what the message must say)
    "utf-16": (lambda t: t.encode("utf-16"), "UTF-16"),
    "utf-16-be": (lambda t: codecs.BOM_UTF16_BE + t.encode("utf-16-be"), "UTF-16"),
    "utf-32": (lambda t: t.encode("utf-32"), "UTF-32"),
    "utf-16-no-bom": (lambda t: t.encode("utf-16-le"), "NUL byte"),
    "latin-1": (_latin1, "not UTF-8 text: an invalid byte 0xe9"),
    "binary": (lambda t: bytes(range(256)) * 8, "NUL byte"),
    "binary-no-nul": (lambda t: bytes(range(128, 256)) * 8, "not UTF-8"),
}


# --------------------------------------------------------------------------- data files


@pytest.mark.parametrize("kind", DATASETS)
def test_a_utf8_bom_reads_as_the_same_data(tmp_path: Path, capsys, kind: str) -> None:
    text = DATASETS[kind][1]
    plain = D.load(_write(tmp_path, kind, text.encode(), "plain"))
    path = _write(tmp_path, kind, BOM + text.encode(), "bom")
    with_bom = D.load(path)
    assert plain.stats() == with_bom.stats() and plain.items.tolist() == with_bom.items.tolist()
    assert with_bom.lengths()[0] == 6  # the first line's rating is kept
    assert main(["data", "info", str(path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["actions"] == plain.n_actions


def test_the_issue_example_counts_six_actions(tmp_path: Path, capsys) -> None:
    path = tmp_path / "bom.dat"
    path.write_bytes(b"\xef\xbb\xbf1::10::5::1\n1::20::5::2\n1::30::5::3\n1::40::5::4\n"
                     b"1::50::5::5\n1::60::5::6\n")
    assert main(["data", "info", str(path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["actions"] == 6


@pytest.mark.parametrize("wrong", WRONG)
@pytest.mark.parametrize("kind", DATASETS)
def test_a_wrong_encoding_is_refused_in_one_line(tmp_path: Path, capsys, kind: str,
                                                 wrong: str) -> None:
    encode, says = WRONG[wrong]
    path = _write(tmp_path, kind, encode(DATASETS[kind][1]))
    with pytest.raises(InputError, match=says) as err:
        D.load(path)
    assert "\n" not in str(err.value) and str(path) in str(err.value)
    assert main(["data", "info", str(path), "--json"]) == 2
    err_line = _one_line_error(capsys)
    assert err_line.startswith("recbench data: error:") and says in err_line


@pytest.mark.parametrize("first", ["1::1O::5::1", "1,1O,4.5,1", "x1::10::5::1"])
def test_a_bad_first_data_line_is_not_taken_for_a_header(tmp_path: Path, first: str) -> None:
    """Only a line that starts with a name (userId, ...) is a header; any other first line
    that does not parse is an error naming line 1, not a rating silently dropped."""
    sep = "," if "," in first else "::"
    rest = "".join(f"1{sep}{10 * i}{sep}5{sep}{i}\n" for i in range(2, 8))
    path = tmp_path / ("r.csv" if sep == "," else "r.dat")
    path.write_text(first + "\n" + rest)
    if first.startswith("x"):  # a name: a header (then six ratings remain)
        assert D.load(path).n_actions == 6
        return
    with pytest.raises(InputError, match=rf"{path.name}:1: expected"):
        D.load(path)


def test_a_broken_zip_is_one_line(tmp_path: Path, capsys) -> None:
    path = _ratings_zip(tmp_path / "ml.zip", RATINGS_DAT.encode() * 50)
    raw = bytearray(path.read_bytes())
    at = raw.find(b"1::")  # stored uncompressed: corrupt a byte of the member's data
    raw[at] ^= 0x01
    path.write_bytes(bytes(raw))
    assert main(["data", "info", str(path), "--json"]) == 2
    assert "ml.zip" in _one_line_error(capsys)


# --------------------------------------------------------------------------- suite TOML

SUITE = """# a suite read with and without a byte-order mark
[suite]
name = "enc"
[[grid]]
framework = ["torch"]
workload = ["infer"]
preset = ["tiny"]
catalog_size = [500]
seq_len = [8]
batch_size = [2, 4]
precision = ["fp32"]
"""


def test_a_suite_with_a_utf8_bom_loads(tmp_path: Path, capsys) -> None:
    plain, bom = tmp_path / "plain.toml", tmp_path / "with bom.toml"
    plain.write_bytes(SUITE.encode())
    bom.write_bytes(BOM + SUITE.encode())
    assert [p.id for p in load_suite(bom).points] == [p.id for p in load_suite(plain).points]
    assert main(["run", "--suite", str(bom), "--dry-run"]) == 0
    assert "2 points in suite 'enc'" in capsys.readouterr().out


@pytest.mark.parametrize("wrong", WRONG)
def test_a_suite_in_a_wrong_encoding_is_refused_in_one_line(tmp_path: Path, capsys,
                                                            wrong: str) -> None:
    encode, says = WRONG[wrong]
    path = tmp_path / "s.toml"
    text = SUITE.replace("with and without", "avec é et sans") if wrong == "latin-1" else SUITE
    path.write_bytes(text.encode("latin-1") if wrong == "latin-1" else encode(text))
    with pytest.raises(InputError, match=says):
        load_suite(path)
    assert main(["run", "--suite", str(path), "--dry-run"]) == 2
    err = _one_line_error(capsys)
    assert err.startswith("recbench run: error:") and says in err and "s.toml" in err


# --------------------------------------------------------------------------- results JSONL


def test_results_with_a_utf8_bom_load_compare_and_resume(tmp_path: Path, capsys) -> None:
    raw = (FIX / "single.jsonl").read_bytes()
    path = tmp_path / "bom.jsonl"
    path.write_bytes(BOM + raw)
    plain, with_bom = load(FIX / "single.jsonl"), load(path)
    assert with_bom.header == plain.header and with_bom.records == plain.records
    assert main(["compare", str(FIX / "single.jsonl"), str(path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)
    with ResultsWriter.open_append(path) as w:  # a resumed run appends after it
        w.write(plain.records[0])
    assert load(path).records == [*plain.records, plain.records[0]]


@pytest.mark.parametrize("wrong", WRONG)
def test_results_in_a_wrong_encoding_are_refused_in_one_line(tmp_path: Path, capsys,
                                                             wrong: str) -> None:
    encode, says = WRONG[wrong]
    text = (FIX / "single.jsonl").read_text()
    path = tmp_path / "bad.jsonl"
    if wrong == "latin-1":  # a non-UTF-8 byte inside the header's JSON string
        raw = text.encode().replace(b'"Fixture CPU C"', b'"Fixture CPU \xe9"', 1)
    else:
        raw = encode(text)
    path.write_bytes(raw)
    before = path.read_bytes()
    with pytest.raises(InputError, match=says):
        load(path)
    with pytest.raises(InputError, match=says):
        ResultsWriter.open_append(path)
    assert path.read_bytes() == before  # a refused file is never repaired or appended to
    assert main(["compare", str(path), str(FIX / "single.jsonl")]) == 2
    err = _one_line_error(capsys)
    assert err.startswith("recbench compare: error:") and says in err and "bad.jsonl" in err


def test_a_non_utf8_middle_line_of_results_names_the_line(tmp_path: Path) -> None:
    lines = (FIX / "cpu_a.jsonl").read_bytes().split(b"\n")
    lines[2] = lines[2].replace(b'"ok"', b'"ok\xe9"', 1)
    path = tmp_path / "mid.jsonl"
    path.write_bytes(b"\n".join(lines))
    with pytest.raises(InputError, match=r"mid\.jsonl:3: .*not UTF-8"):
        load(path)
