"""Text files as every reader here takes them: UTF-8, with or without a byte-order mark;
anything else is refused in one line naming the problem (the user-item and MovieLens formats,
suite TOML, results JSONL). A leaf module: the harness's readers share it with recmodels'."""

from __future__ import annotations

import codecs

from recmodels.errors import InputError

# UTF-32-LE's mark starts with UTF-16-LE's, so it is tried first.
_OTHER_BOMS = ((codecs.BOM_UTF32_LE, "UTF-32"), (codecs.BOM_UTF32_BE, "UTF-32"),
               (codecs.BOM_UTF16_LE, "UTF-16"), (codecs.BOM_UTF16_BE, "UTF-16"))
_TO_UTF8 = "convert it to UTF-8 (e.g. iconv -t UTF-8) and retry"


def strip_bom(label: str, raw: bytes) -> bytes:
    """``raw`` without a UTF-8 byte-order mark; a UTF-16 or UTF-32 mark is an InputError."""
    for bom, name in _OTHER_BOMS:
        if raw.startswith(bom):
            raise InputError(f"{label}: the file is {name} text (it starts with a {name} "
                             f"byte-order mark), not UTF-8; {_TO_UTF8}")
    return raw[len(codecs.BOM_UTF8):] if raw.startswith(codecs.BOM_UTF8) else raw


def utf8_problem(raw: bytes) -> tuple[int, str] | None:
    """(1-based line, what is wrong) where ``raw`` stops being UTF-8 text, or None. A NUL byte
    counts as not text: no text format here has one, and UTF-16 without a mark is full of them."""
    nul = raw.find(b"\0")
    if nul >= 0:
        return raw.count(b"\n", 0, nul) + 1, ("a NUL byte (a binary file, or UTF-16/UTF-32 "
                                               "without a byte-order mark)")
    if raw.isascii():  # the common case, and fast
        return None
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as e:
        return raw.count(b"\n", 0, e.start) + 1, (f"an invalid byte 0x{raw[e.start]:02x} "
                                                   "(Latin-1 or another legacy encoding?)")
    return None


def utf8_text(label: str, raw: bytes) -> bytes:
    """``raw`` checked to be UTF-8 text, without its byte-order mark if it has one; anything
    else is an InputError naming the line and the problem."""
    raw = strip_bom(label, raw)
    problem = utf8_problem(raw)
    if problem is not None:
        line, what = problem
        raise InputError(f"{label}:{line}: not UTF-8 text: {what}; {_TO_UTF8}")
    return raw
