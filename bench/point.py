"""What one benchmark measurement is: :class:`Point` (a model config, a workload, where and in
what precision it runs) and :class:`Measure` (how long it is timed), with the vocabulary of
their fields.

The bottom of the harness: suites make Points, scenarios build them, the launcher runs them,
results and comparisons label them; this module imports nothing from ``bench``.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from recmodels.config import BLOCKS, LOSSES, PRESETS, GenRecConfig, human, params_total, preset
from recmodels.errors import InputError

FRAMEWORKS = ("torch", "jax")
# infer is the serving workload `retrieve` (its name in points predates the others);
# rank, generate and update are the other serving paths (README, "Serving").
WORKLOADS = ("train", "infer", "rank", "generate", "update")
SERVING_WORKLOADS = ("rank", "generate", "update")
PRECISIONS = ("fp32", "tf32", "bf16", "fp16", "int8")
OPTIMIZERS = ("adam", "sgd")
# Scale-out (README, "Scale-out"): how the ranks split the work, where the item table lives,
# and what batch_size means. "dp" is DDP in torch and a Mesh's data axis under
# jax.distributed in JAX; "fsdp" is FSDP2's fully_shard (torch).
PARALLELS = ("none", "dp", "fsdp")
SHARDINGS = ("dense", "row-wise", "table-wise")
SCALINGS = ("strong", "weak")
# torch.compile modes (recmodels.torch.engine.COMPILE_MODES, repeated here so that the harness's
# bottom layer need not import torch). "reduce-overhead" adds CUDA graphs on GPUs; JAX always
# jits, so a JAX point carries "eager" and reads "jit" wherever modes are shown (mode_text).
COMPILE_MODES = ("eager", "default", "reduce-overhead", "max-autotune")
# Suite files and result records from before the modes: compile = false / true.
_COMPILE_BOOL = {False: "eager", True: "default"}
DEFAULT_N_NEG = {"bce": 1, "sampled_softmax": 128, "full_softmax": 1}
# tf32 is fp32 storage with a TF32 matmul mode; int8 quantises at the workload, not in config
COMPUTE_DTYPE = {"fp32": "fp32", "tf32": "fp32", "int8": "fp32", "bf16": "bf16", "fp16": "fp16"}
_DEVICE_RE = re.compile(r"(cpu|cuda|tpu|mps)(:\d+|:all)?")
_CHOICES: dict[str, Sequence[str]] = {
    "framework": FRAMEWORKS, "workload": WORKLOADS, "preset": tuple(PRESETS), "block": BLOCKS,
    "loss": LOSSES, "precision": PRECISIONS, "optimizer": OPTIMIZERS,
    "parallel": PARALLELS, "sharding": SHARDINGS, "scaling": SCALINGS,
}
POSITIVE_INT_FIELDS = ("n_neg", "catalog_size", "seq_len", "batch_size", "n_candidates",
                       "gen_steps", "beam_width", "world_size", "nodes")
# Point ids (Point.id): the fields below existed when ids were first written and are always
# hashed, so no id in a file changes; a field added later goes into ID_DEFAULTS with its
# default and is hashed only where it differs. point_id is the one rule: Point.id and the
# results files (bench.results.point_id) both use it. ``compile`` was a boolean when ids were
# first written: "eager" hashes as false and "default" as true (_id_compile), so those points
# keep their ids; the other modes hash as their names.
ID_FIELDS_V1 = ("framework", "workload", "preset", "block", "loss", "n_neg", "catalog_size",
                "seq_len", "batch_size", "precision", "device", "compile", "optimizer")
ID_DEFAULTS: dict[str, Any] = {
    "n_candidates": 2048, "gen_steps": 4, "beam_width": 16,
    "world_size": 1, "nodes": 1, "parallel": "none", "sharding": "dense", "scaling": "strong",
}


def _canonical(value: Any) -> str:
    """Sorted keys, no whitespace; numpy scalars and arrays as Python values."""
    def plain(obj: Any) -> Any:
        tolist = getattr(obj, "tolist", None)
        if callable(tolist):
            return tolist()
        raise TypeError(f"a point field cannot be a {type(obj).__name__}: {obj!r}")

    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      default=plain)


def compile_mode(value: Any) -> Any:
    """A point's ``compile`` as a mode name: the booleans of old suite files and records map to
    "eager" (false) and "default" (true); anything else is returned as it is."""
    return _COMPILE_BOOL[value] if isinstance(value, bool) else value


def mode_text(framework: Any, compile: Any = "eager") -> str:
    """How a point's step ran: "jit" for JAX (it always jits), else the torch.compile mode."""
    return "jit" if framework == "jax" else str(compile_mode(compile))


def framework_label(framework: Any, compile: Any = "eager") -> str:
    """``"torch (eager)"``, ``"torch (reduce-overhead)"``, ``"jax (jit)"``: a framework as
    every label, legend and table that names one shows it."""
    return f"{framework} ({mode_text(framework, compile)})"


def _id_compile(value: Any) -> Any:
    """The value ``compile`` is hashed as: the boolean it was before the modes, where there
    was one (eager: false, default: true), else the mode's name."""
    mode = compile_mode(value)
    return {"eager": False, "default": True}.get(mode, mode) if isinstance(mode, str) else mode


def point_id(point: Mapping[str, Any], defaults: Mapping[str, Any] | None = None) -> str:
    """Stable id of a sweep point: first 12 hex of sha1 over its canonical JSON.

    Every key of ``defaults`` (:data:`ID_DEFAULTS`) whose value equals its default is dropped
    (compared by JSON: 1 is not 1.0, 0 is not false). A pure function of the point dict:
    ``recbench run --resume`` skips points whose id is already in a file and ``recbench
    compare`` pairs points across files by it, both with ids recomputed from each record's
    point on load. Any other change to a point's fields makes it a different point.
    """
    table = ID_DEFAULTS if defaults is None else defaults
    if "compile" in point:
        point = {**point, "compile": _id_compile(point["compile"])}
    kept = {k: v for k, v in point.items()
            if not (k in table and _canonical(v) == _canonical(table[k]))}
    return hashlib.sha1(_canonical(kept).encode("utf-8")).hexdigest()[:12]


def device_kind(device: str) -> str:
    """``"cuda:1"`` -> ``"cuda"``; ``"cpu:all"`` -> ``"cpu"``."""
    return str(device).split(":")[0]


def suggest(word: object, options: Iterable[str]) -> str:
    close = difflib.get_close_matches(str(word), list(options), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def field_problem(name: str, value: Any, *, allow_auto: bool = False) -> str | None:
    """What is wrong with one value of Point field `name`, or None."""
    if name in _CHOICES:
        choices = _CHOICES[name]
        if isinstance(value, str) and value in choices:
            return None
        options = ", ".join(choices)
        return f"unknown {name} {value!r}{suggest(value, choices)}; choose one of {options}"
    if name in POSITIVE_INT_FIELDS:
        if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
            return None
        whole = isinstance(value, float) and value.is_integer() and value >= 1
        hint = f"; write {int(value)} (no decimal point)" if whole else ""
        return f"expected a positive integer, got {value!r}{hint}"
    if name == "compile":
        if isinstance(value, bool) or (isinstance(value, str) and value in COMPILE_MODES):
            return None
        return (f"unknown compile mode {value!r}{suggest(value, COMPILE_MODES)}; choose one of "
                f"{', '.join(COMPILE_MODES)} (or false = eager, true = default)")
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
    workload: str  # train | infer (serving's retrieve) | rank | generate | update
    preset: str  # a key of recmodels.config.PRESETS
    block: str = "sasrec"  # "sasrec" | "hstu" | "lstm"
    loss: str = "bce"  # train loss; infer keeps it but always scores the whole catalog
    n_neg: int | None = None  # None -> the loss's default (always set after init)
    catalog_size: int | None = None  # None -> the preset's (always set after init)
    seq_len: int | None = None  # None -> the preset's (always set after init)
    batch_size: int
    precision: str  # "fp32" | "tf32" | "bf16" | "fp16" | "int8"
    device: str  # "cpu" | "cuda" | "cuda:N" | "tpu" | "mps" ("auto" is resolved before this)
    # torch.compile mode (COMPILE_MODES; true/false read as "default"/"eager"); jax always
    # jits, so jax points carry "eager" (shown as "jit")
    compile: str = "eager"
    optimizer: str = "adam"  # "adam" | "sgd"
    n_candidates: int = 2048  # K: candidates ranked per user (workload "rank")
    gen_steps: int = 4  # S: items generated per user (workload "generate")
    beam_width: int = 16  # W: beams kept at each step (workload "generate")
    # Scale-out: ranks (processes, one device each) over `nodes` hosts, launched by torchrun.
    world_size: int = 1
    nodes: int = 1
    parallel: str = "none"  # "none" (one process) | "dp" (DDP / Mesh data axis) | "fsdp"
    sharding: str = "dense"  # item table: "dense" (a parameter like the rest: replicated by
    #   dp, sharded by fsdp) | "row-wise" | "table-wise" (TorchRec; JAX: NamedSharding rows)
    scaling: str = "strong"  # batch_size is the global batch ("strong") or per rank ("weak")

    def __post_init__(self) -> None:
        if self.preset not in PRESETS:  # checked first: the defaults below read the preset
            raise InputError(f"point: preset: {field_problem('preset', self.preset)}")
        base = PRESETS[self.preset]
        defaults = {"n_neg": DEFAULT_N_NEG.get(self.loss, 1), "catalog_size": base.catalog_size,
                    "seq_len": base.seq_len}
        for name, value in defaults.items():
            if getattr(self, name) is None:
                object.__setattr__(self, name, value)
        for f in dataclasses.fields(self):
            problem = field_problem(f.name, getattr(self, f.name))
            if problem:
                raise InputError(f"point: {f.name}: {problem}")
        if self.loss == "full_softmax":
            object.__setattr__(self, "n_neg", 1)  # unused: one value keeps ids unique
        object.__setattr__(self, "compile", compile_mode(self.compile))
        if self.framework == "jax":
            object.__setattr__(self, "compile", "eager")
        self._check_scale_out()

    def _check_scale_out(self) -> None:
        if self.parallel == "none":
            if self.world_size != 1 or self.nodes != 1 or self.sharding != "dense":
                raise InputError(
                    f"point: world_size {self.world_size}, nodes {self.nodes}, sharding "
                    f"{self.sharding!r} need a parallel strategy: set parallel to 'dp' or "
                    "'fsdp' (parallel 'none' is one process, dense)")
        elif self.device.endswith(":all"):
            raise InputError(f"point: device {self.device!r}: a multi-process point runs one "
                             f"device per rank; write {self.device.split(':')[0]!r}")
        if self.world_size % self.nodes:
            raise InputError(f"point: world_size {self.world_size} does not split over "
                             f"{self.nodes} nodes; use a multiple of nodes")
        if self.world_size == 1:  # strong and weak are the same computation on one rank
            object.__setattr__(self, "scaling", "strong")

    @property
    def compiled(self) -> bool:
        """Whether the step runs under torch.compile (any mode but eager)."""
        return self.compile != "eager"

    @property
    def global_batch(self) -> int:
        """Sequences per step over all ranks: batch_size (strong) or batch_size x ranks."""
        return self.batch_size * (self.world_size if self.scaling == "weak" else 1)

    @property
    def distributed(self) -> bool:
        """Whether the point runs as ranks launched by torchrun (even a world of 1)."""
        return self.parallel != "none"

    def scaling_baseline(self) -> Point:
        """The same point on one rank, the base of its scaling efficiency: the global batch
        of strong scaling, the per-rank batch of weak scaling (batch_size either way)."""
        return dataclasses.replace(self, world_size=1, nodes=1, scaling="strong")

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
        """:func:`point_id` of :meth:`to_dict`."""
        return point_id(self.to_dict())

    def model_config(self) -> GenRecConfig:
        """The serving workloads that append (generate, update) count positions from the
        oldest item, as a KV cache needs; rank keeps the preset's right-aligned ones."""
        positions = "left" if self.workload in ("generate", "update") else "right"
        return preset(self.preset, block=self.block, loss=self.loss, n_neg=self.n_neg,
                      catalog_size=self.catalog_size, seq_len=self.seq_len,
                      compute_dtype=COMPUTE_DTYPE[self.precision], positions=positions)

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
        """A short human string, e.g. 'torch (eager) train tiny/sasrec C=23.7k T=50 B=128 bf16
        cpu': the framework with the mode its step runs in (framework_label)."""
        parts = [framework_label(self.framework, self.compile), self.workload,
                 f"{self.preset}/{self.block}",
                 f"C={human(self.catalog_size)}", f"T={self.seq_len}", f"B={self.batch_size}",
                 self.precision, self.device]
        if self.loss != "bce":
            parts.append(self.loss + (f":{self.n_neg}" if self.loss == "sampled_softmax" else ""))
        elif self.n_neg != DEFAULT_N_NEG[self.loss]:
            parts.append(f"neg={self.n_neg}")
        if self.optimizer != "adam":
            parts.append(self.optimizer)
        if self.workload == "rank":
            parts.append(f"K={self.n_candidates}")
        if self.workload == "generate":
            parts.append(f"S={self.gen_steps} W={self.beam_width}")
        if self.distributed:
            nodes = f"/{self.nodes}n" if self.nodes > 1 else ""
            parts.append(f"{self.parallel} W={self.world_size}{nodes}")
            if self.sharding != "dense":
                parts.append(self.sharding)
            if self.scaling == "weak":
                parts.append("weak")
        return " ".join(parts)



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

