"""``[[serve]]`` tables of a suite file -> :class:`~bench.scenarios.serve.ServeSpec` s.

A serve table is a grid like ``[[grid]]``: every axis a list, the table the cartesian product;
the run settings (how long LoadGen runs) are scalars::

    [[serve]]
    framework = ["torch", "jax"]
    workload = ["rank"]               # retrieve | rank
    preset = ["tiny"]
    n_candidates = [256]              # K per ranked request
    scenario = ["server"]             # server | offline | singlestream
    target_latency_ms = [80]          # server: p`percentile` target
    max_batch = [32]                  # the dynamic batcher's largest batch (sweepable)
    max_delay_ms = [2]                # and how long a request waits for a batch to fill
    duration_s = 10                   # each LoadGen run's minimum duration (MLPerf: 600)
    min_queries = 500

Optional axes default to ServeSpec's defaults; ``device = ["auto"]`` is resolved like a
grid's. `recbench run` runs these after the step points, each in a worker process, and writes
their records into the same results file.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Callable, Mapping
from typing import Any

from bench.point import suggest
from bench.scenarios.serve import ServeSpec
from recmodels.errors import InputError

SERVE_AXES = ("framework", "workload", "preset", "catalog_size", "seq_len", "n_candidates",
              "precision", "device", "scenario", "max_batch", "max_delay_ms",
              "target_latency_ms", "percentile")
SERVE_SETTINGS = ("duration_s", "min_queries", "search_runs", "rate_per_s")
_KNOWN = (*SERVE_AXES, *SERVE_SETTINGS)
assert set(_KNOWN) <= {f.name for f in dataclasses.fields(ServeSpec)}


def serve_specs(raw: Mapping[str, Any], error: Callable[[str, str], InputError],
                resolve: Callable[[str], str]) -> list[ServeSpec]:
    """The specs of every ``[[serve]]`` table, de-duplicated, in file order.

    ``error(path, problem)`` makes the suite's one-line error (it names the file)."""
    tables = raw.get("serve", [])
    if not isinstance(tables, list) or not all(isinstance(t, dict) for t in tables):
        raise error("serve", "expected [[serve]] tables (an array of tables)")
    specs: dict[str, ServeSpec] = {}
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
            axes[axis] = values
        for k in SERVE_SETTINGS:
            if isinstance(table.get(k), list):
                raise error(f"serve[{i}].{k}", "a run setting is one value, not a list")
        settings = {k: table[k] for k in SERVE_SETTINGS if k in table}
        for combo in itertools.product(*axes.values()):
            values = dict(zip(axes, combo))
            if values.get("device", "auto") == "auto":
                values["device"] = resolve(values.get("framework", "torch"))
            try:
                spec = ServeSpec(**values, **settings)
                spec.validate()
                key = repr(spec)
            except (InputError, TypeError) as e:
                raise error(f"serve[{i}]", str(e)) from None
            specs.setdefault(key, spec)
    return list(specs.values())
