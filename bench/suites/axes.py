"""A suite file's grid axes: each [[grid]]'s values, the [defaults] table and the built-in
defaults a grid falls back on, and the [[exclude]] rules; every value is checked by
bench.point.field_problem (compile values read as modes, an unknown name gets a did-you-mean).
_Source formats each error of a suite file (here and in suite.py) as one line and checks a
table's keys. The file format: bench/suites/suite.py's docstring."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence
from typing import Any

from bench.point import POSITIVE_INT_FIELDS, Point, compile_mode, field_problem, suggest
from recmodels.errors import InputError

GRID_AXES = tuple(f.name for f in dataclasses.fields(Point))
_REQUIRED_AXES = ("framework", "workload", "preset", "batch_size", "precision")
_AXIS_DEFAULTS: dict[str, list[Any]] = {
    "block": ["sasrec"], "loss": ["bce"], "n_neg": [None], "catalog_size": [None],
    "seq_len": [None], "device": ["auto"], "compile": ["eager"], "optimizer": ["adam"],
    "n_candidates": [2048], "gen_steps": [4], "beam_width": [16],
    "world_size": [1], "nodes": [1], "parallel": ["none"], "sharding": ["dense"],
    "scaling": ["strong"],
}


class _Source:
    """Formats errors as '<file>: <field path>: <problem>' (+ the --set that made the value)."""

    def __init__(self, label: str, origin: Mapping[str, str]) -> None:
        self.label, self.origin = label, origin

    def error(self, path: str, problem: str, key: str | None = None) -> InputError:
        note = f" (from --set {self.origin[key]})" if key in self.origin else ""
        return InputError(f"{self.label}: {path}: {problem}{note}")

    def table(self, raw: Mapping[str, Any], name: str, keys: Sequence[str]) -> dict[str, Any]:
        value = raw.get(name, {})
        if not isinstance(value, dict):
            raise self.error(name, f"expected a table [{name}], got {value!r}")
        for k in value:
            if k not in keys:
                raise self.error(f"{name}.{k}", f"unknown key{suggest(k, keys)}; known: "
                                 + ", ".join(keys))
        return value

    def tables(self, raw: Mapping[str, Any], name: str) -> list[dict[str, Any]]:
        value = raw.get(name, [])
        if not isinstance(value, list) or not all(isinstance(t, dict) for t in value):
            raise self.error(name, f"expected [[{name}]] tables (an array of tables), "
                             f"got {value!r}; write [[{name}]] rather than [{name}]")
        for i, table in enumerate(value):
            for k in table:
                if k not in GRID_AXES:
                    raise self.error(f"{name}[{i}].{k}", f"unknown axis{suggest(k, GRID_AXES)}; "
                                     "known: " + ", ".join(GRID_AXES))
        return value


_PLURAL = {"compile": "compile modes", "device": "device strings", **{k: "positive integers"
           for k in POSITIVE_INT_FIELDS}}


def _grid_axis(src: _Source, grid: Mapping[str, Any], i: int, axis: str,
               defaults: Mapping[str, list[Any]]) -> list[Any]:
    path = f"grid[{i}].{axis}"
    if axis not in grid:
        if axis in defaults:  # this file's [defaults], checked by _defaults
            return defaults[axis]
        if axis in _AXIS_DEFAULTS:
            return _AXIS_DEFAULTS[axis]
        raise src.error(path, f"missing; every [[grid]] needs {', '.join(_REQUIRED_AXES)}")
    return _axis_values(src, grid[axis], path, axis, f"grid.{axis}")


def _defaults(src: _Source, raw: Mapping[str, Any]) -> dict[str, list[Any]]:
    """The [defaults] table: per grid axis, the values of a [[grid]] that does not set it."""
    table = src.table(raw, "defaults", GRID_AXES)
    return {axis: _axis_values(src, values, f"defaults.{axis}", axis)
            for axis, values in table.items()}


def _axis_values(src: _Source, values: Any, path: str, axis: str,
                 key: str | None = None) -> list[Any]:
    """A grid axis's list of values, each checked (field_problem); else a one-line error."""
    if not isinstance(values, list):
        hint = f"; write {axis} = [{json.dumps(values)}]" if not field_problem(
            axis, values, allow_auto=True) else ""
        raise src.error(path, f"expected a list of {_PLURAL.get(axis, 'strings')}, "
                        f"got {values!r}{hint}", key)
    if not values:
        raise src.error(path, "empty list; give at least one value or drop the key", key)
    for j, v in enumerate(values):
        problem = field_problem(axis, v, allow_auto=True)
        if problem:
            raise src.error(f"{path}[{j}]", problem, key)
    return values


def _exclude_rules(src: _Source, raw: Mapping[str, Any]) -> list[dict[str, list[Any]]]:
    rules = []
    for i, table in enumerate(src.tables(raw, "exclude")):
        if not table:
            raise src.error(f"exclude[{i}]", "empty table would drop every point; add keys")
        rule = {}
        for axis, value in table.items():
            values = value if isinstance(value, list) else [value]
            if not values:
                raise src.error(f"exclude[{i}].{axis}", "empty list matches nothing; drop it")
            for j, v in enumerate(values):
                problem = field_problem(axis, v)
                if problem:
                    where = f"exclude[{i}].{axis}" + (f"[{j}]" if isinstance(value, list) else "")
                    raise src.error(where, problem + (" (excludes match resolved devices)"
                                                      if v == "auto" else ""))
            rule[axis] = [compile_mode(v) for v in values] if axis == "compile" else values
        rules.append(rule)
    return rules
