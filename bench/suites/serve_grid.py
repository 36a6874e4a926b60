"""``[[serve]]`` tables of a suite file -> :class:`~bench.scenarios.serve.ServeSpec` s.

A serve table is a grid like ``[[grid]]``: every axis a list, the table the cartesian product;
the run settings (how long LoadGen runs) are scalars::

    [[serve]]
    framework = ["torch", "jax"]
    workload = ["rank"]               # retrieve | rank | generate
    preset = ["tiny"]
    n_candidates = [256]              # K per ranked request
    scenario = ["server"]             # server | offline | singlestream
    target_latency_ms = [80]          # server: p`percentile` target
    max_batch = [32]                  # the dynamic batcher's largest batch (sweepable)
    max_delay_ms = [2]                # and how long a request waits for a batch to fill
    duration_s = 10                   # each LoadGen run's minimum duration (MLPerf: 600)
    min_queries = 500

Optional axes default to ServeSpec's defaults (bench/scenarios/serve.py); ``device =
["auto"]`` is resolved like a grid's. Each spec is a dict of ServeSpec's fields: the suite
layer does not import scenarios, so the runner builds the ServeSpec. `recbench run` runs
them after the step points, each in a worker process, and writes their records into the
same results file.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable, Mapping
from typing import Any

from bench.point import field_problem, suggest
from recmodels.config import PRESETS
from recmodels.errors import InputError

# The serve vocabulary, as bench/scenarios/serve.py defines it (suites may not import
# scenarios; tests/suites/test_serve_grid.py checks the two agree). A spec is a dict of
# ServeSpec's fields; the runner builds the ServeSpec.
SCENARIOS = ("server", "offline", "singlestream")
WORKLOADS = ("retrieve", "rank", "generate")
PERCENTILES = (50.0, 90.0, 95.0, 97.0, 99.0, 99.9)
SERVE_AXES = ("framework", "workload", "preset", "catalog_size", "seq_len", "n_candidates",
              "gen_steps", "beam_width", "precision", "device", "scenario", "max_batch",
              "max_delay_ms", "target_latency_ms", "percentile")
SERVE_SETTINGS = ("duration_s", "min_queries", "search_runs", "rate_per_s")
_KNOWN = (*SERVE_AXES, *SERVE_SETTINGS)
_CHOICES: dict[str, tuple[Any, ...]] = {"scenario": SCENARIOS, "workload": WORKLOADS,
                                        "preset": tuple(PRESETS), "percentile": PERCENTILES}
_POSITIVE = ("catalog_size", "seq_len", "n_candidates", "gen_steps", "beam_width", "max_batch",
             "target_latency_ms",
             "duration_s", "min_queries", "search_runs", "rate_per_s")


def value_problem(name: str, value: Any) -> str | None:
    """What is wrong with one value of a serve field, or None."""
    if name in ("framework", "precision", "device"):
        return field_problem(name, value, allow_auto=name == "device")
    if name in _CHOICES:
        choices = _CHOICES[name]
        if value in choices and not isinstance(value, bool):
            return None
        names = [f"{c:g}" if isinstance(c, float) else str(c) for c in choices]
        return (f"unknown {name} {value!r}{suggest(str(value), names)}; "
                f"choose one of {', '.join(names)}")
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if name in _POSITIVE and not (number and value > 0):
        return f"expected a positive number, got {value!r}"
    if name == "max_delay_ms" and not (number and value >= 0):
        return f"expected a number of milliseconds >= 0, got {value!r}"
    return None


def serve_specs(raw: Mapping[str, Any], error: Callable[[str, str], InputError],
                resolve: Callable[[str], str]) -> list[dict[str, Any]]:
    """The specs (dicts of ServeSpec fields) of every ``[[serve]]`` table, de-duplicated, in
    file order. ``error(path, problem)`` makes the suite's one-line error (it names the file)."""
    tables = raw.get("serve", [])
    if not isinstance(tables, list) or not all(isinstance(t, dict) for t in tables):
        raise error("serve", "expected [[serve]] tables (an array of tables)")
    specs: dict[str, dict[str, Any]] = {}
    for i, table in enumerate(tables):
        for k in table:
            if k not in _KNOWN:
                raise error(f"serve[{i}].{k}", f"unknown key{suggest(k, _KNOWN)}; known: "
                            + ", ".join(_KNOWN))
        axes: dict[str, list[Any]] = {}
        for axis in SERVE_AXES:
            if axis not in table:
                continue
            values = table[axis]
            if not isinstance(values, list) or not values:
                raise error(f"serve[{i}].{axis}", f"expected a non-empty list, got {values!r}")
            for j, v in enumerate(values):
                problem = value_problem(axis, v)
                if problem:
                    raise error(f"serve[{i}].{axis}[{j}]", problem)
            axes[axis] = values
        settings = {}
        for k in SERVE_SETTINGS:
            if k not in table:
                continue
            if isinstance(table[k], list):
                raise error(f"serve[{i}].{k}", "a run setting is one value, not a list")
            problem = value_problem(k, table[k])
            if problem:
                raise error(f"serve[{i}].{k}", problem)
            settings[k] = table[k]
        for combo in itertools.product(*axes.values()):
            spec = {**dict(zip(axes, combo)), **settings}
            if spec.get("device", "auto") == "auto":
                spec["device"] = resolve(spec.get("framework", "torch"))
            specs.setdefault(json.dumps(spec, sort_keys=True), spec)
    return list(specs.values())
