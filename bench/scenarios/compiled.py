"""What torch.compile built for a point's step, and whether its timed steps recompiled.

A step scenario (bench/scenarios/step.py) reads ``compile_counts`` after warm-up and after the
timed loop; ``compile_metrics`` turns the two readings into the record's metrics
(``compile_mode``, ``compiled_graphs``, ``recompiles``, and ``cuda_graphs`` / ``compile_note``
for compiled torch points) and ``recompile_flag`` into the record's flag. JAX jits its step
once per shape and gives no such count here: its metrics are ``"jit"`` and nulls.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from bench.point import Point, device_kind, mode_text

NO_COUNTS: dict[str, int | None] = {"graphs": None, "cudagraph_skips": None}
# torch.compile modes that wrap the compiled graphs in CUDA graphs on an NVIDIA GPU
# (reduce-overhead; max-autotune turns them on too); elsewhere inductor runs without them.
CUDA_GRAPH_MODES = ("reduce-overhead", "max-autotune")
RECOMPILED = "recompiled"  # the record flag of a point whose timed steps compiled new graphs


def _cudagraph_skips() -> int:
    """Graphs inductor has run without CUDA graphs in this process (its counter; a skip is
    logged with the reason, e.g. a CPU tensor or a mutated input)."""
    from torch._dynamo.utils import counters

    return int(counters["inductor"]["cudagraph_skips"])


def compile_counts(point: Point, engine: Any) -> Callable[[], dict[str, int | None]]:
    """A reader of what torch.compile has built for ``engine`` so far: ``graphs`` (the graphs
    TorchDynamo compiled since Engine.compile, 0 when eager) and, for a CUDA-graph mode on a
    GPU, ``cudagraph_skips`` (graphs inductor ran without CUDA graphs since this call).
    JAX points: None for both (jit compiles once per shape; it has no such count here)."""
    if point.framework != "torch":
        return lambda: dict(NO_COUNTS)
    cuda_graphs = point.compile in CUDA_GRAPH_MODES and device_kind(point.device) == "cuda"
    skips0 = _cudagraph_skips() if cuda_graphs else 0

    def counts() -> dict[str, int | None]:
        return {"graphs": int(engine.compiled_graphs()),
                "cudagraph_skips": _cudagraph_skips() - skips0 if cuda_graphs else None}

    return counts


def compile_metrics(point: Point, warm: dict[str, int | None],
                    timed: dict[str, int | None]) -> dict[str, Any]:
    """The compile metrics of a point from its counts after warm-up (``warm``) and after the
    timed loop (``timed``): ``compile_mode`` (the torch.compile mode, "jit" for JAX),
    ``compiled_graphs`` (after warm-up), ``recompiles`` (graphs added during the timed steps:
    a step that recompiles is a bug, flagged by recompile_flag), and for compiled torch points
    ``cuda_graphs`` (whether the step ran as CUDA graphs) with a ``compile_note`` where a
    CUDA-graph mode ran without them. None where the framework gives no count (JAX)."""
    g0, g1 = warm.get("graphs"), timed.get("graphs")
    out: dict[str, Any] = {"compile_mode": mode_text(point.framework, point.compile),
                           "compiled_graphs": g0,
                           "recompiles": None if g0 is None or g1 is None else g1 - g0}
    if point.framework != "torch" or not point.compiled:
        return out
    kind = device_kind(point.device)
    skips = timed.get("cudagraph_skips")
    out["cuda_graphs"] = point.compile in CUDA_GRAPH_MODES and kind == "cuda" and not skips
    if point.compile in CUDA_GRAPH_MODES and kind != "cuda":
        out["compile_note"] = (f"{point.compile} on {kind}: TorchInductor without CUDA graphs "
                               "(they need an NVIDIA GPU)")
    elif skips:
        out["compile_note"] = (f"inductor ran {skips} graph(s) without CUDA graphs (its "
                               "cudagraph_skips counter; the worker's log says why)")
    return out


def recompile_flag(metrics: dict[str, Any]) -> dict[str, str]:
    """``{"recompiled": "recompiled N times during timing"}`` when the timed steps compiled
    new graphs (metrics ``recompiles`` > 0), else {}. The point stays ok: its step times
    include the recompilations, and the flag says so wherever the point is shown."""
    n = metrics.get("recompiles")
    if not isinstance(n, int) or isinstance(n, bool) or n <= 0:
        return {}
    return {RECOMPILED: f"recompiled {n} time{'s' if n != 1 else ''} during timing"}
