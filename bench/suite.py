"""Suite files -> an ordered list of benchmark Points.

A suite is a small TOML file (the shipped ones live in ``bench/suites/``)::

    [suite]                 # optional; name defaults to the file's stem
    name = "quick"
    description = "CPU-sized sweep"

    [measure]               # optional; any Measure field (defaults in Measure below)
    min_time_s = 0.5

    [runner]                # optional
    skip_after_oom = true   # skip points dominated by an OOM'd one (see Point.dominated_by)

    [[grid]]                # one or more; each is a cartesian product of its axes;
    framework = ["torch", "jax"]      # the suite is the union of all grids, de-duplicated
    workload = ["train", "infer"]
    preset = ["tiny", "small"]        # keys of recmodels.config.PRESETS
    batch_size = [32, 128, 512]
    precision = ["fp32", "bf16"]      # fp32 | tf32 | bf16 | fp16 | int8
    block = ["sasrec"]                # optional, default ["sasrec"]   (sasrec | hstu | lstm)
    loss = ["bce"]                    # optional, default ["bce"]      (bce | sampled_softmax |
                                      #                                 full_softmax)
    n_neg = [128]                     # optional, default from the loss (bce 1, sampled 128)
    catalog_size = [24000]            # optional, default the preset's
    seq_len = [50]                    # optional, default the preset's
    device = ["auto"]                 # optional, default ["auto"]; cpu | cuda | cuda:N | tpu | mps;
                                      # KIND:all = JAX data parallel over every such device
    compile = [false]                 # optional; torch.compile (jax always jits)
    optimizer = ["adam"]              # optional, default ["adam"]     (adam | sgd)

    [[exclude]]             # optional; drops a point that matches ALL keys of the table;
    preset = "small"        # a value may be a scalar or a list (matches any element);
    batch_size = [512]      # keys are grid axes, matched against the resolved point

Every grid axis is a list, even with one value. ``framework``, ``workload``, ``preset``,
``batch_size`` and ``precision`` are required in each grid.

Normalisation (so that equal work has one id): jax points always carry ``compile = false``;
full_softmax points carry ``n_neg = 1`` (unused). An infer point keeps its suite's ``loss``
and ``optimizer`` although inference scores the whole catalog and updates nothing.

``device = "auto"`` is resolved while points are made, by the caller's
``device_resolver(framework)`` (the runner maps it to cuda, tpu or cpu); without one it is
``cpu``. Excludes are matched after that, so they name real devices.

``--set`` overrides (``load_suite(..., overrides=[...])``) edit the parsed TOML before
validation: ``measure.min_time_s=0.2``, ``runner.skip_after_oom=false``, ``suite.name=x``,
``grid.batch_size=64,128`` (replaces that axis in every grid; a bare axis such as
``batch_size=64`` means the same). Values: comma lists become lists; ints, floats and
true/false are parsed; anything else is a string.

Execution order: points are grouped by (framework, device), in order of first appearance, so
that one worker process serves a group; within a group they are sorted by (line, params,
batch size), so skip-after-OOM meets the small points of a line first.

Every problem is a one-line ``InputError`` naming the file, the field path
(``grid[1].precision[2]``) and the fix.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import itertools
import json
import os
import re
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from recmodels.config import BLOCKS, LOSSES, PRESETS, GenRecConfig, human, params_total, preset
from recmodels.errors import InputError

if TYPE_CHECKING:
    from bench.hardware import Hardware

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - python 3.10
    import tomli as tomllib

SUITES_DIR = Path(__file__).parent / "suites"

FRAMEWORKS = ("torch", "jax")
WORKLOADS = ("train", "infer")
PRECISIONS = ("fp32", "tf32", "bf16", "fp16", "int8")
OPTIMIZERS = ("adam", "sgd")
DEFAULT_N_NEG = {"bce": 1, "sampled_softmax": 128, "full_softmax": 1}
# tf32 is fp32 storage with a TF32 matmul mode; int8 quantises at the workload, not in config
COMPUTE_DTYPE = {"fp32": "fp32", "tf32": "fp32", "int8": "fp32", "bf16": "bf16", "fp16": "fp16"}
_DEVICE_RE = re.compile(r"(cpu|cuda|tpu|mps)(:\d+|:all)?")
_CHOICES: dict[str, Sequence[str]] = {
    "framework": FRAMEWORKS, "workload": WORKLOADS, "preset": tuple(PRESETS), "block": BLOCKS,
    "loss": LOSSES, "precision": PRECISIONS, "optimizer": OPTIMIZERS,
}
_POSITIVE_INTS = ("n_neg", "catalog_size", "seq_len", "batch_size")
_MAX_GRID_POINTS = 100_000  # a typo guard: no real sweep is this large


def _suggest(word: object, options: Iterable[str]) -> str:
    close = difflib.get_close_matches(str(word), list(options), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _problem(name: str, value: Any, *, allow_auto: bool = False) -> str | None:
    """What is wrong with one value of Point field `name`, or None."""
    if name in _CHOICES:
        choices = _CHOICES[name]
        if isinstance(value, str) and value in choices:
            return None
        options = ", ".join(choices)
        return f"unknown {name} {value!r}{_suggest(value, choices)}; choose one of {options}"
    if name in _POSITIVE_INTS:
        if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
            return None
        whole = isinstance(value, float) and value.is_integer() and value >= 1
        hint = f"; write {int(value)} (no decimal point)" if whole else ""
        return f"expected a positive integer, got {value!r}{hint}"
    if name == "compile":
        return None if isinstance(value, bool) else f"expected true or false, got {value!r}"
    if name == "device":
        ok = isinstance(value, str) and bool(_DEVICE_RE.fullmatch(value))
        if ok or (allow_auto and value == "auto"):
            return None
        auto = ", or auto" if allow_auto else ""
        return (f"expected a device (cpu, cuda, cuda:N, cuda:all, tpu, tpu:all, mps{auto}), "
                f"got {value!r}")
    raise AssertionError(name)


@dataclass(frozen=True, kw_only=True)
class Point:
    """One benchmark measurement: a model config, a workload and where/how to run it."""

    framework: str  # "torch" | "jax"
    workload: str  # "train" (forward+backward+update) | "infer" (score the full catalog)
    preset: str  # a key of recmodels.config.PRESETS
    block: str = "sasrec"  # "sasrec" | "hstu" | "lstm"
    loss: str = "bce"  # train loss; infer keeps it but always scores the whole catalog
    n_neg: int | None = None  # None -> the loss's default (always set after init)
    catalog_size: int | None = None  # None -> the preset's (always set after init)
    seq_len: int | None = None  # None -> the preset's (always set after init)
    batch_size: int
    precision: str  # "fp32" | "tf32" | "bf16" | "fp16" | "int8"
    device: str  # "cpu" | "cuda" | "cuda:N" | "tpu" | "mps" ("auto" is resolved before this)
    compile: bool = False  # torch.compile; jax always jits, so jax points carry False
    optimizer: str = "adam"  # "adam" | "sgd"

    def __post_init__(self) -> None:
        if self.preset not in PRESETS:  # checked first: the defaults below read the preset
            raise InputError(f"point: preset: {_problem('preset', self.preset)}")
        base = PRESETS[self.preset]
        defaults = {"n_neg": DEFAULT_N_NEG.get(self.loss, 1), "catalog_size": base.catalog_size,
                    "seq_len": base.seq_len}
        for name, value in defaults.items():
            if getattr(self, name) is None:
                object.__setattr__(self, name, value)
        for f in dataclasses.fields(self):
            problem = _problem(f.name, getattr(self, f.name))
            if problem:
                raise InputError(f"point: {f.name}: {problem}")
        if self.loss == "full_softmax":
            object.__setattr__(self, "n_neg", 1)  # unused: one value keeps ids unique
        if self.framework == "jax":
            object.__setattr__(self, "compile", False)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Point:
        """The inverse of to_dict (for result files); extra keys are ignored."""
        names = {f.name for f in dataclasses.fields(cls)}
        missing = [n for n in ("framework", "workload", "preset", "batch_size", "precision",
                               "device") if n not in d]
        if missing:
            raise InputError(f"point: missing field(s) {', '.join(missing)} in {dict(d)!r}")
        return cls(**{k: v for k, v in d.items() if k in names})

    @property
    def id(self) -> str:
        canonical = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha1(canonical.encode()).hexdigest()[:12]

    def model_config(self) -> GenRecConfig:
        return preset(self.preset, block=self.block, loss=self.loss, n_neg=self.n_neg,
                      catalog_size=self.catalog_size, seq_len=self.seq_len,
                      compute_dtype=COMPUTE_DTYPE[self.precision])

    @property
    def params_total(self) -> int:
        return params_total(self.model_config())

    def line_key(self) -> tuple[tuple[str, Any], ...]:
        """Everything but batch size and preset: the points along which size grows."""
        return tuple((k, v) for k, v in self.to_dict().items() if k not in ("batch_size", "preset"))

    def dominated_by(self, oom: Point) -> bool:
        """Whether an OOM at `oom` predicts one here: same line, batch and params no smaller."""
        return (oom.line_key() == self.line_key() and oom.batch_size <= self.batch_size
                and oom.params_total <= self.params_total)

    def label(self) -> str:
        """A short human string, e.g. 'torch train tiny/sasrec C=23.7k T=50 B=128 bf16 cpu'."""
        parts = [self.framework, self.workload, f"{self.preset}/{self.block}",
                 f"C={human(self.catalog_size)}", f"T={self.seq_len}", f"B={self.batch_size}",
                 self.precision, self.device]
        if self.loss != "bce":
            parts.append(self.loss + (f":{self.n_neg}" if self.loss == "sampled_softmax" else ""))
        elif self.n_neg != DEFAULT_N_NEG[self.loss]:
            parts.append(f"neg={self.n_neg}")
        if self.compile:
            parts.append("compiled")
        if self.optimizer != "adam":
            parts.append(self.optimizer)
        return " ".join(parts)


GRID_AXES = tuple(f.name for f in dataclasses.fields(Point))
_REQUIRED_AXES = ("framework", "workload", "preset", "batch_size", "precision")
_AXIS_DEFAULTS: dict[str, list[Any]] = {
    "block": ["sasrec"], "loss": ["bce"], "n_neg": [None], "catalog_size": [None],
    "seq_len": [None], "device": ["auto"], "compile": [False], "optimizer": ["adam"],
}


@dataclass(frozen=True)
class Measure:
    """How each point is timed. The timed loop runs until both minimums are met and stops at
    either maximum, whichever comes first."""

    warmup_iters: int = 3  # untimed steps after the first (compiling) one
    min_time_s: float = 1.0
    min_iters: int = 10
    max_iters: int = 1000
    max_time_s: float = 30.0  # caps the timed loop (not warm-up or compile)
    timeout_s: float = 300.0  # the whole point, compile included; past it: status "timeout"

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if f.type == "int":
                lowest = 0 if f.name == "warmup_iters" else 1
                if not isinstance(v, int) or isinstance(v, bool) or v < lowest:
                    kind = "a non-negative" if lowest == 0 else "a positive"
                    raise InputError(f"measure.{f.name}: expected {kind} integer, got {v!r}")
            else:
                if not isinstance(v, (int, float)) or isinstance(v, bool) or not v >= 0:
                    raise InputError(f"measure.{f.name}: expected seconds >= 0, got {v!r}")
                object.__setattr__(self, f.name, float(v))
        if self.max_iters < self.min_iters:
            raise InputError(f"measure.max_iters: {self.max_iters} is below min_iters "
                             f"{self.min_iters}; raise max_iters or lower min_iters")
        if self.max_time_s < self.min_time_s:
            raise InputError(f"measure.max_time_s: {self.max_time_s} is below min_time_s "
                             f"{self.min_time_s}; raise max_time_s or lower min_time_s")
        for name in ("max_time_s", "timeout_s"):
            if getattr(self, name) <= 0:
                raise InputError(f"measure.{name}: must be > 0 seconds")


def order_points(points: Iterable[Point]) -> list[Point]:
    """Group by (framework, device) in order of first appearance; small first in each line."""
    groups: dict[tuple[str, str], list[Point]] = {}
    for p in points:
        groups.setdefault((p.framework, p.device), []).append(p)
    ordered: list[Point] = []
    for members in groups.values():
        ordered += sorted(members, key=lambda p: (p.line_key(), p.params_total, p.batch_size,
                                                  p.preset))
    return ordered


@dataclass
class Suite:
    name: str
    description: str
    path: Path | None
    points: list[Point]  # in execution order (see order_points)
    measure: Measure = field(default_factory=Measure)
    skip_after_oom: bool = True

    @property
    def devices(self) -> dict[str, int]:
        """Points per device, in execution order."""
        counts: dict[str, int] = {}
        for p in self.points:
            counts[p.device] = counts.get(p.device, 0) + 1
        return counts

    def groups(self) -> list[tuple[tuple[str, str], list[Point]]]:
        """[((framework, device), points)], contiguous runs of self.points."""
        out: list[tuple[tuple[str, str], list[Point]]] = []
        for key, run in itertools.groupby(self.points, key=lambda p: (p.framework, p.device)):
            out.append((key, list(run)))
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "description": self.description,
                "path": str(self.path) if self.path else None, "n_points": len(self.points),
                "devices": self.devices, "measure": dataclasses.asdict(self.measure),
                "skip_after_oom": self.skip_after_oom}


# --- hardware and suite lookup ------------------------------------------------------------


def available_suites() -> list[str]:
    return sorted(p.stem for p in SUITES_DIR.glob("*.toml"))


def suite_path(name_or_path: str | os.PathLike[str], hardware: Hardware | None = None) -> Path:
    """A bare name -> bench/suites/<name>.toml ("auto" picks by hardware); else a file path."""
    s = os.fspath(name_or_path)
    if s == "auto":
        from bench.hardware import auto_suite_name, detect_hardware

        s = auto_suite_name(hardware if hardware is not None else detect_hardware())
    if s.endswith(".toml") or "/" in s or os.sep in s:
        path = Path(s)
        if not path.is_file():
            raise InputError(f"{s}: no such suite file; pass an existing .toml path or one of: "
                             + ", ".join(available_suites()))
        return path
    path = SUITES_DIR / f"{s}.toml"
    if not path.is_file():
        raise InputError(f"unknown suite {s!r}{_suggest(s, available_suites())}; available: "
                         + ", ".join([*available_suites(), "auto"]) + " (or a path to a .toml)")
    return path


# --- loading ------------------------------------------------------------------------------

_TABLES = ("suite", "measure", "runner", "grid", "exclude")
_SECTION_KEYS = {
    "measure": tuple(f.name for f in dataclasses.fields(Measure)),
    "runner": ("skip_after_oom",),
    "suite": ("name", "description"),
}
SET_KEYS = (*(f"{s}.{k}" for s, keys in _SECTION_KEYS.items() for k in keys),
            *(f"grid.{a}" for a in GRID_AXES))


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
            raise InputError(f"--set {item}: unknown key {key!r}{_suggest(key, SET_KEYS)}; known: "
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
        else:
            table = raw.setdefault(section, {})
            if isinstance(table, dict):
                table[name] = value
        origin[key] = item
    return origin


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
                raise self.error(f"{name}.{k}", f"unknown key{_suggest(k, keys)}; known: "
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
                    raise self.error(f"{name}[{i}].{k}", f"unknown axis{_suggest(k, GRID_AXES)}; "
                                     "known: " + ", ".join(GRID_AXES))
        return value


_PLURAL = {"compile": "booleans", "device": "device strings", **{k: "positive integers"
           for k in _POSITIVE_INTS}}


def _grid_axis(src: _Source, grid: Mapping[str, Any], i: int, axis: str) -> list[Any]:
    path = f"grid[{i}].{axis}"
    if axis not in grid:
        if axis in _AXIS_DEFAULTS:
            return _AXIS_DEFAULTS[axis]
        raise src.error(path, f"missing; every [[grid]] needs {', '.join(_REQUIRED_AXES)}")
    values, key = grid[axis], f"grid.{axis}"
    if not isinstance(values, list):
        hint = f"; write {axis} = [{json.dumps(values)}]" if not _problem(
            axis, values, allow_auto=True) else ""
        raise src.error(path, f"expected a list of {_PLURAL.get(axis, 'strings')}, "
                        f"got {values!r}{hint}", key)
    if not values:
        raise src.error(path, "empty list; give at least one value or drop the key", key)
    for j, v in enumerate(values):
        problem = _problem(axis, v, allow_auto=True)
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
                problem = _problem(axis, v)
                if problem:
                    where = f"exclude[{i}].{axis}" + (f"[{j}]" if isinstance(value, list) else "")
                    raise src.error(where, problem + (" (excludes match resolved devices)"
                                                      if v == "auto" else ""))
            rule[axis] = values
        rules.append(rule)
    return rules


def parse_suite(raw: dict[str, Any], *, source: str, path: Path | None = None,
                overrides: Iterable[str] = (),
                device_resolver: Callable[[str], str] | None = None) -> Suite:
    """Parsed TOML -> Suite; `source` names the file in error messages."""
    src = _Source(source, apply_overrides(raw, overrides))
    for name in raw:
        if name not in _TABLES:
            raise src.error(f"[{name}]", f"unknown table{_suggest(name, _TABLES)}; known: "
                            + ", ".join(_TABLES))
    head = src.table(raw, "suite", _SECTION_KEYS["suite"])
    for k in head:
        if not isinstance(head[k], str) or (k == "name" and not head[k].strip()):
            raise src.error(f"suite.{k}", f"expected a non-empty string, got {head[k]!r}",
                            f"suite.{k}")
    try:
        measure = Measure(**src.table(raw, "measure", _SECTION_KEYS["measure"]))
    except InputError as e:  # Measure says "measure.<field>: <problem>"
        where, _, problem = str(e).partition(": ")
        raise src.error(where, problem, where) from None
    runner = src.table(raw, "runner", _SECTION_KEYS["runner"])
    skip = runner.get("skip_after_oom", True)
    if not isinstance(skip, bool):
        raise src.error("runner.skip_after_oom", f"expected true or false, got {skip!r}",
                        "runner.skip_after_oom")

    grids = src.tables(raw, "grid")
    if not grids:
        raise src.error("grid", "no [[grid]] table; add at least one (see bench/suite.py)")
    resolve = device_resolver or (lambda framework: "cpu")
    points: dict[Point, None] = {}  # insertion-ordered set: the union, de-duplicated
    for i, grid in enumerate(grids):
        axes = [_grid_axis(src, grid, i, a) for a in GRID_AXES]
        size = 1
        for values in axes:
            size *= len(values)
        if size > _MAX_GRID_POINTS:
            raise src.error(f"grid[{i}]", f"expands to {size} points (limit "
                            f"{_MAX_GRID_POINTS}); split it or shorten its lists")
        for combo in itertools.product(*axes):
            values = dict(zip(GRID_AXES, combo))
            if values["device"] == "auto":
                values["device"] = resolve(values["framework"])
            try:
                point = Point(**values)
            except InputError as e:
                raise src.error(f"grid[{i}]", str(e)) from None
            try:
                point.model_config()  # an impossible config fails here, not in a worker
            except InputError as e:
                raise src.error(f"grid[{i}]", f"{point.label()}: {e}") from None
            points[point] = None

    rules = _exclude_rules(src, raw)
    kept = [p for p in points
            if not any(all(getattr(p, a) in vs for a, vs in r.items()) for r in rules)]
    if not kept:
        raise src.error("exclude", "every point is excluded; loosen the [[exclude]] tables")
    name = head.get("name") or (path.stem if path else source)
    return Suite(name=name, description=head.get("description", ""), path=path,
                 points=order_points(kept), measure=measure, skip_after_oom=skip)


def _display(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def load_suite(name_or_path: str | os.PathLike[str], *, overrides: Iterable[str] = (),
               device_resolver: Callable[[str], str] | None = None,
               hardware: Hardware | None = None) -> Suite:
    """Load a suite by name ("quick", "auto", ...) or .toml path, apply --set overrides, expand
    and order its points. `hardware` (for "auto") defaults to detect_hardware()."""
    path = suite_path(name_or_path, hardware)
    label = _display(path)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as e:
        raise InputError(f"{label}: TOML syntax error: {e}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"{label}: cannot read the suite file: {e}") from None
    return parse_suite(raw, source=label, path=path, overrides=list(overrides),
                       device_resolver=device_resolver)
