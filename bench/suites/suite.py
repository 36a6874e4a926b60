"""Suite files -> an ordered list of benchmark Points.

A suite is a small TOML file (the shipped ones live in ``bench/suites/``)::

    [suite]                 # optional; name defaults to the file's stem
    name = "quick"
    description = "CPU-sized sweep"
    include = ["reference"] # optional; other suites whose points this one adds (see below)

    [measure]               # optional; any Measure field (defaults in Measure below)
    min_time_s = 0.5

    [runner]                # optional
    skip_after_oom = true   # skip points dominated by an OOM'd one (see Point.dominated_by)
    isolation = "point"     # "point": a fresh worker process per point, so its memory figures
                            # do not depend on earlier points; "group": one worker per
                            # (framework, device), faster, memory figures order-dependent
    mem_cap = "auto"        # host-memory cap of the workers (a cgroup, where writable):
                            # "auto" (available memory less a reserve), "off", or "8GiB"
    serve = true            # run the [[serve]] points (its own and included ones'); --set
                            # framework/preset/precision/device/... reach them too

    [defaults]              # optional; axis values for every [[grid]] of this file that does
    compile = ["eager"]     # not set that axis itself (any grid axis; lists, as in a grid).
                            # The one place a suite's default compile mode is set (the GPU
                            # suites: ["reduce-overhead", "eager"], compiled with an eager
                            # baseline beside it); included files keep their own

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
    compile = ["eager"]               # optional, default ["eager"]; the torch.compile mode:
                                      # eager | default | reduce-overhead (CUDA graphs on GPUs)
                                      # | max-autotune; false/true (older files) read as
                                      # eager/default. jax always jits: its points are "eager"
    optimizer = ["adam"]              # optional, default ["adam"]     (adam | sgd)
    parallel = ["dp"]                 # optional, default ["none"] (one process); dp (DDP /
                                      # jax.distributed Mesh) | fsdp (FSDP2): ranks by torchrun
    world_size = [1, 2]               # optional, default [1]; ranks, one device each
    nodes = [1]                       # optional, default [1]; hosts the ranks span
    sharding = ["dense", "row-wise"]  # optional, default ["dense"]; item table: dense |
                                      # row-wise | table-wise (TorchRec; JAX NamedSharding)
    scaling = ["strong", "weak"]      # optional, default ["strong"]; batch_size is the global
                                      # batch (strong) or each rank's (weak)

    [[serve]]               # optional; LoadGen serving points (bench/suites/serve_grid.py)

    [[exclude]]             # optional; drops a point that matches ALL keys of the table;
    preset = "small"        # a value may be a scalar or a list (matches any element);
    batch_size = [512]      # keys are grid axes, matched against the resolved point

Every grid axis is a list, even with one value. ``framework``, ``workload``, ``preset``,
``batch_size`` and ``precision`` are required in each grid.

Normalisation (so that equal work has one id): jax points always carry ``compile = "eager"``
(labels show them as ``jax (jit)``); booleans read as modes (false: eager, true: default), and
eager and default points keep the ids they had as false and true (bench.point.point_id);
full_softmax points carry ``n_neg = 1`` (unused). An infer point keeps its suite's ``loss``
and ``optimizer`` although inference scores the whole catalog and updates nothing.

``device = "auto"`` is resolved while points are made, by the caller's
``device_resolver(framework)`` (the runner maps it to cuda, tpu or cpu); without one it is
``cpu``. Excludes are matched after that, so they name real devices.

``--set`` overrides (``load_suite(..., overrides=[...])``) edit the parsed TOML before
validation: ``measure.min_time_s=0.2``, ``runner.skip_after_oom=false``, ``suite.name=x``,
``grid.batch_size=64,128`` (replaces that axis in every grid; a bare axis such as
``batch_size=64`` means the same). Values: comma lists become lists; ints, floats and
true/false are parsed; anything else is a string. They and the [runner] checks are
bench/suites/sections.py's.

Execution order: points are grouped by (framework, device), in order of first appearance, so
that one worker process serves a group; within a group they are sorted by (line, params,
batch size), so skip-after-OOM meets the small points of a line first.

Includes: ``include`` names suites or .toml paths (relative to this file). The suite is the
union of their points and this file's grids, de-duplicated by point id; an included point keeps
its identity (this file's ``[[exclude]]`` does not reach it) and the ``[measure]`` of its own
file (``Suite.measure_for``), so `reference` points are sampled alike in every suite. ``--set``
grid/measure/runner keys (and ``--device``) reach included files too, ``suite.*`` keys only
this file; ``[runner]`` is this file's. Include cycles and unknown names are errors.

Every problem is a one-line ``InputError`` naming the file, the field path
(``grid[1].precision[2]``) and the fix.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
import sys
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.point import Measure, Point, suggest
from bench.suites.axes import GRID_AXES, _defaults, _exclude_rules, _grid_axis, _Source
from bench.suites.sections import (
    _SECTION_KEYS,
    ISOLATIONS,
    MIN_MEM_CAP_BYTES,
    SET_KEYS,
    SHARED_SERVE_AXES,
    apply_overrides,
    parse_cap,
    runner_settings,
)
from recmodels.errors import InputError
from recmodels.textio import utf8_text

if TYPE_CHECKING:
    from bench.machine.hardware import Hardware

# The [runner] and --set helpers (sections.py) are suite's API too: ``suite.parse_cap``.
__all__ = ["ISOLATIONS", "MIN_MEM_CAP_BYTES", "SET_KEYS", "SHARED_SERVE_AXES", "SUITES_DIR",
           "Suite", "apply_overrides", "available_suites", "load_suite", "order_points",
           "parse_cap", "parse_suite", "suite_path"]

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - python 3.10
    import tomli as tomllib

SUITES_DIR = Path(__file__).parent

_MAX_GRID_POINTS = 100_000  # a typo guard: no real sweep is this large


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
    isolation: str = "point"  # see [runner] above
    mem_cap: int | str = "auto"  # bytes, "auto" or "off" (parse_cap)
    # included points -> the suite they came from and the [measure] of its file
    origin: dict[Point, str] = field(default_factory=dict)
    point_measures: dict[Point, Measure] = field(default_factory=dict)
    serve: list[dict[str, Any]] = field(default_factory=list)  # [[serve]] specs (serve_grid.py)

    def measure_for(self, point: Point) -> Measure:
        """How `point` is timed: its own file's [measure] (see Includes above)."""
        return self.point_measures.get(point, self.measure)

    def included(self) -> dict[str, dict[str, Any]]:
        """{suite name: {"n_points", "measure"}} of the points that came from includes."""
        counts = Counter(self.origin.values())
        return {name: {"n_points": n, "measure": dataclasses.asdict(self.measure_for(
            next(p for p, o in self.origin.items() if o == name)))} for name, n in counts.items()}

    @property
    def devices(self) -> dict[str, int]:
        """Points per device, in execution order."""
        return dict(Counter(p.device for p in self.points))

    def groups(self) -> list[tuple[tuple[str, str], list[Point]]]:
        """[((framework, device), points)], contiguous runs of self.points."""
        runs = itertools.groupby(self.points, key=lambda p: (p.framework, p.device))
        return [(key, list(run)) for key, run in runs]

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "description": self.description,
                "path": str(self.path) if self.path else None, "n_points": len(self.points),
                "devices": self.devices, "measure": dataclasses.asdict(self.measure),
                "skip_after_oom": self.skip_after_oom, "isolation": self.isolation,
                "mem_cap": self.mem_cap, "included": self.included(),
                "n_serve": len(self.serve)}


# --- hardware and suite lookup ------------------------------------------------------------


def available_suites() -> list[str]:
    return sorted(p.stem for p in SUITES_DIR.glob("*.toml"))


def suite_path(name_or_path: str | os.PathLike[str], hardware: Hardware | None = None) -> Path:
    """A bare name -> bench/suites/<name>.toml ("auto" picks by hardware); else a file path."""
    s = os.fspath(name_or_path)
    if s == "auto":
        from bench.machine.hardware import auto_suite_name, detect_hardware

        s = auto_suite_name(hardware if hardware is not None else detect_hardware())
    if s.endswith(".toml") or "/" in s or os.sep in s:
        path = Path(s)
        if not path.is_file():
            raise InputError(f"{s}: no such suite file; pass an existing .toml path or one of: "
                             + ", ".join(available_suites()))
        return path
    path = SUITES_DIR / f"{s}.toml"
    if not path.is_file():
        raise InputError(f"unknown suite {s!r}{suggest(s, available_suites())}; available: "
                         + ", ".join([*available_suites(), "auto"]) + " (or a path to a .toml)")
    return path


# --- loading ------------------------------------------------------------------------------

_TABLES = ("suite", "measure", "runner", "defaults", "grid", "exclude",
           "serve")  # [[serve]]: serve_grid.py


def _includes(src: _Source, head: Mapping[str, Any], path: Path | None,
              overrides: Sequence[str], device_resolver: Callable[[str], str] | None,
              stack: tuple[Path, ...],
              serve: list[Any] | None = None) -> tuple[dict[Point, str], dict[Point, Measure]]:
    """The points of the suites named in [suite] include, with their origin and measure;
    their serve specs are appended to ``serve``."""
    names = head.get("include", [])
    if not isinstance(names, list) or not all(isinstance(n, str) and n.strip() for n in names):
        raise src.error("suite.include", f"expected a list of suite names or .toml paths, got "
                        f"{names!r}; write include = [\"reference\"]")
    inherited = [o for o in overrides if not o.partition("=")[0].strip().startswith("suite.")]
    origin: dict[Point, str] = {}
    measures: dict[Point, Measure] = {}
    for j, name in enumerate(names):
        where = f"suite.include[{j}]"
        if name == "auto":
            raise src.error(where, "'auto' depends on the machine; name a suite")
        relative = name.endswith(".toml") or "/" in name or os.sep in name
        if relative and path is not None and not Path(name).is_absolute():
            name = str(path.parent / name)
        try:
            inc = suite_path(name)
        except InputError as e:
            raise src.error(where, str(e)) from None
        chain = [*stack, *([path] if path else [])]
        if inc.resolve() in {p.resolve() for p in chain}:
            cycle = " -> ".join(p.name for p in [*chain, inc])
            raise src.error(where, f"include cycle {cycle}; drop one of the includes")
        sub = _load_file(inc, overrides=inherited, device_resolver=device_resolver,
                         stack=tuple(chain))
        for p in sub.points:  # the first include that has a point names its origin
            origin.setdefault(p, sub.origin.get(p, sub.name))
            measures.setdefault(p, sub.measure_for(p))
        if serve is not None:
            serve += [sp for sp in sub.serve if sp not in serve]
    return origin, measures


def parse_suite(raw: dict[str, Any], *, source: str, path: Path | None = None,
                overrides: Iterable[str] = (),
                device_resolver: Callable[[str], str] | None = None,
                _stack: tuple[Path, ...] = ()) -> Suite:
    """Parsed TOML -> Suite; `source` names the file in error messages."""
    overrides = list(overrides)
    src = _Source(source, apply_overrides(raw, overrides))
    for name in raw:
        if name not in _TABLES:
            raise src.error(f"[{name}]", f"unknown table{suggest(name, _TABLES)}; known: "
                            + ", ".join(_TABLES))
    head = src.table(raw, "suite", _SECTION_KEYS["suite"])
    for k in head:
        if k == "include":
            continue
        if not isinstance(head[k], str) or (k == "name" and not head[k].strip()):
            raise src.error(f"suite.{k}", f"expected a non-empty string, got {head[k]!r}",
                            f"suite.{k}")
    measure_table = src.table(raw, "measure", _SECTION_KEYS["measure"])  # names the file
    try:
        measure = Measure(**measure_table)
    except InputError as e:  # Measure says "measure.<field>: <problem>"
        where, _, problem = str(e).partition(": ")
        raise src.error(where, problem, where) from None
    runner = src.table(raw, "runner", _SECTION_KEYS["runner"])
    skip, isolation, mem_cap = runner_settings(src, runner)

    from bench.suites.serve_grid import serve_specs

    serve: list[Any] = []
    origin, measures = _includes(src, head, path, overrides, device_resolver, _stack, serve)
    resolve = device_resolver or (lambda framework: "cpu")
    serve += [sp for sp in serve_specs(raw, src.error, resolve) if sp not in serve]
    run_serve = runner.get("serve", True)
    if not isinstance(run_serve, bool):
        raise src.error("runner.serve", f"expected true or false, got {run_serve!r}",
                        "runner.serve")
    if not run_serve:  # this file's [runner] (or --set runner.serve=false) drops them all
        serve = []
    grids = src.tables(raw, "grid")
    defaults = _defaults(src, raw)
    if not grids and not origin and not serve:
        raise src.error("grid", "no [[grid]] table; add at least one, or include a suite "
                        "(see bench/suites/suite.py)")
    points: dict[Point, None] = {}  # insertion-ordered set: the union, de-duplicated
    for i, grid in enumerate(grids):
        axes = [_grid_axis(src, grid, i, a, defaults) for a in GRID_AXES]
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
    own = [p for p in points if p not in origin]  # an included point stays included
    kept = [p for p in own
            if not any(all(getattr(p, a) in vs for a, vs in r.items()) for r in rules)]
    if own and not kept:
        raise src.error("exclude", "every point is excluded; loosen the [[exclude]] tables")
    name = head.get("name") or (path.stem if path else source)
    return Suite(name=name, description=head.get("description", ""), path=path,
                 points=order_points([*origin, *kept]), measure=measure,
                 skip_after_oom=skip, isolation=isolation, mem_cap=mem_cap, origin=origin,
                 point_measures=measures, serve=serve)


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
    return _load_file(suite_path(name_or_path, hardware), overrides=list(overrides),
                      device_resolver=device_resolver)


def _load_file(path: Path, *, overrides: Sequence[str],
               device_resolver: Callable[[str], str] | None,
               stack: tuple[Path, ...] = ()) -> Suite:
    label = _display(path)
    try:
        text = path.read_bytes()
    except OSError as e:
        raise InputError(f"{label}: cannot read the suite file: {e.strerror or e}") from None
    try:  # UTF-8, a byte-order mark allowed (TOML itself does not allow one)
        raw = tomllib.loads(utf8_text(label, text).decode("utf-8"))
    except tomllib.TOMLDecodeError as e:
        raise InputError(f"{label}: TOML syntax error: {e}") from None
    return parse_suite(raw, source=label, path=path, overrides=overrides,
                       device_resolver=device_resolver, _stack=stack)
