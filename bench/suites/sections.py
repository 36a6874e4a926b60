"""The settings sections of a suite file and the ``--set`` overrides that edit them: the keys of
[suite], [measure] and [runner], the checks of [runner]'s values (``runner_settings``,
``parse_cap``), and ``apply_overrides``, which edits the parsed TOML before validation (the keys
it takes are ``SET_KEYS``: every section key but ``include``, and every grid axis, which reaches
every [[grid]] and, where a [[serve]] table shares it, that table too). The file format:
bench/suites/suite.py's docstring."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable, Mapping
from typing import Any

from bench.point import Measure, suggest
from bench.suites.axes import GRID_AXES, _Source
from recmodels.errors import InputError

# --- [runner] -------------------------------------------------------------------------------

ISOLATIONS = ("point", "group")
MIN_MEM_CAP_BYTES = 512 << 20  # a framework's import alone is ~160 (JAX) to ~250 MiB (torch)
_SIZE_UNITS = {"": 1, "b": 1, "k": 2**10, "kib": 2**10, "m": 2**20, "mib": 2**20, "g": 2**30,
               "gib": 2**30, "t": 2**40, "tib": 2**40}


def parse_cap(value: object) -> int | str:
    """``runner.mem_cap``: "auto", "off", a byte count, or a size such as "8GiB" or "512m"
    (binary units). Returns "auto", "off" or bytes; raises InputError for anything else."""
    if isinstance(value, int) and not isinstance(value, bool):
        n = value
    else:
        text = str(value).strip().lower()
        if text in ("auto", "off"):
            return text
        m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([a-z]*)", text)
        if not m or m.group(2) not in _SIZE_UNITS:
            raise InputError(f"runner.mem_cap: {value!r} is not a size; write auto, off, or a "
                             "size such as 8GiB or 512MiB")
        n = int(float(m.group(1)) * _SIZE_UNITS[m.group(2)])
    if n < MIN_MEM_CAP_BYTES:
        raise InputError(f"runner.mem_cap: {value!r} is below 512 MiB: a worker holds ~160-250 "
                         "MiB once JAX or torch is imported, before any point; raise it or "
                         "write off")
    return n


def runner_settings(src: _Source, runner: Mapping[str, Any]) -> tuple[bool, str, int | str]:
    """[runner]'s skip_after_oom, isolation and mem_cap (parse_cap), checked, with their
    defaults; ``runner.serve`` is parse_suite's."""
    skip = runner.get("skip_after_oom", True)
    if not isinstance(skip, bool):
        raise src.error("runner.skip_after_oom", f"expected true or false, got {skip!r}",
                        "runner.skip_after_oom")
    isolation = runner.get("isolation", "point")
    if isolation not in ISOLATIONS:
        raise src.error("runner.isolation", f"expected one of {', '.join(ISOLATIONS)}, got "
                        f"{isolation!r}", "runner.isolation")
    try:
        mem_cap = parse_cap(runner.get("mem_cap", "auto"))
    except InputError as e:
        raise src.error("runner.mem_cap", str(e).partition(": ")[2], "runner.mem_cap") from None
    return skip, isolation, mem_cap


# --- --set overrides ------------------------------------------------------------------------

# the keys of each [section] a suite file may have (parse_suite checks them too)
_SECTION_KEYS = {
    "measure": tuple(f.name for f in dataclasses.fields(Measure)),
    "runner": ("skip_after_oom", "isolation", "mem_cap", "serve"),
    "suite": ("name", "description", "include"),
}
SHARED_SERVE_AXES = ("framework", "preset", "precision", "device", "catalog_size", "seq_len")
SET_KEYS = (*(f"{s}.{k}" for s, keys in _SECTION_KEYS.items() for k in keys
              if k != "include"), *(f"grid.{a}" for a in GRID_AXES))


def _parse_scalar(text: str) -> Any:
    low = text.lower()
    if low in ("true", "false"):
        return low == "true"
    for parse in (int, float):
        try:
            return parse(text)
        except ValueError:
            pass
    return text


def apply_overrides(raw: dict[str, Any], overrides: Iterable[str]) -> dict[str, str]:
    """Apply `--set key=value` strings to parsed TOML in place; returns key -> the --set text."""
    origin: dict[str, str] = {}
    for item in overrides:
        if "=" not in item:
            raise InputError(f"--set {item}: missing '='; write KEY=VALUE, "
                             "e.g. --set measure.min_time_s=0.2")
        key, _, text = (s.strip() for s in item.partition("="))
        if "." not in key and key in GRID_AXES:
            key = f"grid.{key}"
        if key not in SET_KEYS:
            raise InputError(f"--set {item}: unknown key {key!r}{suggest(key, SET_KEYS)}; known: "
                             + ", ".join(SET_KEYS) + " (grid axes may omit 'grid.')")
        section, name = key.split(".", 1)
        if section == "suite":  # verbatim: a description may hold commas
            value: Any = text
        else:
            items = [_parse_scalar(t.strip()) for t in text.split(",")]
            value = items if section == "grid" or len(items) > 1 else items[0]
        if section == "grid":
            grids = raw.get("grid")
            for grid in grids if isinstance(grids, list) else []:
                if isinstance(grid, dict):
                    grid[name] = value
            # axes that mean the same for a [[serve]] table reach it too (--device cuda)
            serves = raw.get("serve") if name in SHARED_SERVE_AXES else None
            for table in serves if isinstance(serves, list) else []:
                if isinstance(table, dict):
                    table[name] = value
        else:
            table = raw.setdefault(section, {})
            if isinstance(table, dict):
                table[name] = value
        origin[key] = item
    return origin
