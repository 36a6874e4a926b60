"""Point -> a runnable step, its device sync and its analytic cost, through recmodels' API.

Nothing here knows a model's internals: a workload is an `Engine` (recmodels.torch_model or
recmodels.jax_model) plus a fixed, device-resident batch, and one step is
  train: Engine.train_step(batch)   forward, backward, optimizer step
  infer: Engine.infer_step(seq, k)  forward over the histories, score the last position
                                    against the whole catalog, top-k (serving's `retrieve`)
  rank: Engine.rank_step(seq, cand) a history of T-1 and K candidates after it (M-FALCON)
  generate: Engine.generate(seq, S, W)  beam search, KV cache: prefill of a T-S+1 history,
                                    then S-1 decode steps; prefill_ms and decode_step_ms are
                                    timed apart as extra metrics (TTFT and TPOT)
  update: Engine.decode(cache, item)  one interaction appended to a cached history of T-1;
                                    reencode_ms times the uncached answer (the history and
                                    the item encoded again) as an extra metric
The inputs are full-length random sequences (no padding): the worst case of a length-T
history, with a uniform gather pattern over the item table. A train step that diverges times
arithmetic on NaN: `Workload.check`, run once after the timed loop, raises Diverged for it.
"""

from __future__ import annotations

import dataclasses
import gc
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from bench.point import SERVING_WORKLOADS, Point, device_kind
from bench.scenarios.compiled import NO_COUNTS, compile_counts
from recmodels import config as C
from recmodels.errors import InputError
from recmodels.memory import memory_estimate

TOP_K = 10


class Unsupported(Exception):
    """The point cannot run here by design (reason in the message); recorded, not raised."""


@dataclass(frozen=True)
class DeviceCaps:
    """What a device can do, as far as the precision matrix cares."""

    kind: str  # cpu | cuda | tpu | mps
    name: str = ""
    compute_capability: tuple[int, int] | None = None  # NVIDIA only
    count: int = 1  # devices the point spans ("KIND:all" is data parallel over all of them)

    @property
    def ampere_or_newer(self) -> bool:
        return self.compute_capability is not None and self.compute_capability >= (8, 0)



def prepare_jax_process() -> None:
    """Set glibc's malloc for XLA:CPU's per-step buffers (recmodels.hostmem.keep_host_memory)
    before a worker's first JAX computation: the setting reaches only threads that have not
    allocated yet, and probes and roofs run before a point's Engine."""
    from recmodels.hostmem import keep_host_memory

    keep_host_memory()


def support_reason(point: Point, caps: DeviceCaps) -> str | None:
    """Why `point` cannot run on a device with `caps`, or None when it can."""
    fw, kind, prec = point.framework, caps.kind, point.precision
    if point.distributed:
        return distributed_reason(point, caps)
    if fw == "torch" and kind == "tpu":
        return "PyTorch on TPU needs torch_xla, which recbench does not drive: use jax"
    if fw == "jax" and kind == "mps":
        return "JAX has no Metal (mps) backend here: use torch"
    if prec == "int8":
        if (fw, point.workload, kind) != ("torch", "infer", "cpu"):
            return ("int8 is PyTorch dynamic quantisation for CPU inference only "
                    "(torch, infer, cpu)")
        if point.block == "lstm" and point.compiled:
            return "torch.compile does not support dynamically quantised LSTMs"
    if prec == "tf32" and not (kind == "cuda" and caps.ampere_or_newer):
        return f"tf32 is an NVIDIA tensor-core mode (compute capability >= 8.0); not on {kind}"
    if prec == "bf16" and kind == "cuda" and not caps.ampere_or_newer:
        return f"bf16 needs compute capability >= 8.0; {caps.name} is {caps.compute_capability}"
    if prec == "fp16" and kind == "tpu":
        return "TPUs have no fp16 matrix units: use bf16"
    if point.compiled and kind == "tpu":
        return "torch.compile does not apply on TPU"
    if point.workload in SERVING_WORKLOADS and point.block == "lstm":
        return f"{point.workload} needs an attention block (its KV cache); lstm has none"
    if point.workload in SERVING_WORKLOADS and point.compiled:
        return (f"{point.workload} is not compiled: torch.compile wraps the model's forward, "
                "which the serving paths (recmodels/torch/kv_cache.py) do not call")
    if point.workload in SERVING_WORKLOADS and point.device.endswith(":all"):
        return f"{point.workload} runs on one device here (no data-parallel serving path)"
    if point.device.endswith(":all"):
        if fw == "torch":
            return "data parallel over all devices is JAX-only here (torch would need DDP)"
        if point.batch_size % caps.count:
            return f"batch {point.batch_size} does not split evenly over {caps.count} devices"
    return None


TORCH_PARALLEL = {"dp": "ddp", "fsdp": "fsdp2"}  # point.parallel -> DistEngine(parallel=)


def distributed_reason(point: Point, caps: DeviceCaps) -> str | None:
    """Why a distributed point cannot run (None when it can): the harness's own limits
    first, then the framework's (recmodels.{torch,jax}.distributed.support_reason)."""
    if point.workload != "train":
        return (f"scale-out points measure the train step; {point.workload} runs on one "
                "device (parallel = 'none')")
    if point.precision == "int8":
        return "int8 is dynamic quantisation for CPU inference; scale-out points train"
    if point.compiled:
        return "distributed torch points run eager here (torch.compile is not applied to them)"
    if point.global_batch % point.world_size:
        return (f"global batch {point.global_batch} does not split evenly over "
                f"{point.world_size} ranks")
    if point.nodes > 1 and caps.kind == "cpu" and point.framework == "jax":
        return "JAX's CPU collectives (gloo) are exercised here on one host only"
    cfg = point.model_config()
    if point.framework == "torch":
        if caps.kind not in ("cpu", "cuda"):
            return f"torch.distributed runs on cpu (gloo) and cuda (NCCL), not {caps.kind}"
        from recmodels.torch.distributed import support_reason as torch_reason

        return torch_reason(TORCH_PARALLEL[point.parallel], point.sharding, cfg, caps.kind,
                            point.optimizer)
    if point.parallel == "fsdp":
        return ("fsdp is torch's FSDP2; JAX shards the item table with sharding = 'row-wise' "
                "over its Mesh")
    from recmodels.jax.distributed import support_reason as jax_reason

    return jax_reason(point.sharding, cfg, caps.kind)


def serving_args(point: Point) -> dict[str, int]:
    """The serving axes the analytic cost of a serving workload takes."""
    if point.workload not in SERVING_WORKLOADS:
        return {}
    return {"n_candidates": point.n_candidates, "gen_steps": point.gen_steps,
            "beam_width": point.beam_width}


def analytic_cost(point: Point) -> dict[str, int]:
    """The analytic numbers every record carries next to the measured ones."""
    cfg, b, w, extra = point.model_config(), point.global_batch, point.workload, serving_args(point)
    return {
        "params_dense": C.params_dense(cfg),
        "params_embedding": C.params_embedding(cfg),
        "flops_per_step": C.flops_per_step(cfg, b, w, **extra),
        "bytes_per_step": C.bytes_per_step(cfg, b, w, point.optimizer, **extra),
        "est_mem_bytes": rank_memory_estimate(point),
    }


def rank_memory_estimate(point: Point) -> int:
    """The analytic memory estimate of one device of the point: the whole step for one
    process; for a distributed point, one rank at the per-rank batch, holding the whole
    dense model and, with a row-wise sharded table, its 1/world_size share of the rows
    (dense and table-wise tables: the whole table, as on the rank that holds it; FSDP2's
    sharding of the dense part is not credited: an upper bound there)."""
    cfg, extra = point.model_config(), serving_args(point)
    b = point.global_batch // point.world_size if point.distributed else point.batch_size
    if point.distributed and point.sharding == "row-wise":
        cfg = dataclasses.replace(cfg, catalog_size=-(-cfg.catalog_size // point.world_size))
    return memory_estimate(cfg, max(1, b), point.workload, point.optimizer, point.framework,
                           device_kind(point.device), **extra).total_bytes


def random_batch(cfg: C.GenRecConfig, batch_size: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Full-length histories with next-item targets and uniform negatives."""
    rng = np.random.default_rng(seed)
    shape = (batch_size, cfg.seq_len + 1)
    window = rng.integers(1, cfg.catalog_size + 1, shape, dtype=np.int32)
    neg = rng.integers(1, cfg.catalog_size + 1, (batch_size, cfg.seq_len, cfg.n_neg),
                       dtype=np.int32)
    return {"seq": window[:, :-1], "pos": window[:, 1:], "neg": neg}


@dataclass
class Workload:
    point: Point
    step: Callable[[], Any]  # one step; returns what `sync` waits on
    sync: Callable[[Any], Any]  # blocks until the device has finished that value
    samples_per_step: int  # sequences (train) or users served (infer) per step
    tokens_per_step: int
    cost: dict[str, int]
    peak_fns: tuple[Callable | None, Callable | None]  # (reset, read) device peak bytes
    # XLA's buffer plan of the step (JAX; None for eager torch). Call it after the first
    # step: it reuses that compilation, while calling it first would compile twice.
    planned_mem_bytes: Callable[[], int | None] = lambda: None
    # Raises recmodels.train.Diverged when the steps so far left a non-finite loss or
    # parameters (train); a no-op for inference. Syncs: call it outside the timed region.
    check: Callable[[], None] = lambda: None
    engine: Any = field(default=None, repr=False)
    # Metrics beyond the step's own time, measured once after the timed loop (synced, so
    # outside it): generate's prefill_ms and decode_step_ms, update's reencode_ms.
    extra_metrics: Callable[[], dict[str, float]] = lambda: {}
    # What torch.compile has built so far ({"graphs", "cudagraph_skips"}, see compile_counts);
    # read after warm-up and after the timed loop, the two go to compile_metrics.
    compile_counts: Callable[[], dict[str, int | None]] = lambda: dict(NO_COUNTS)

    def close(self) -> None:
        """Drop every device buffer this workload holds."""
        self.step = self.sync = None  # type: ignore[assignment]
        self.extra_metrics = lambda: {}  # its closure holds the engine
        self.planned_mem_bytes = lambda: None  # its closure holds the engine and the batch
        self.check = lambda: None  # so does this one
        self.compile_counts = lambda: dict(NO_COUNTS)  # and this one
        self.engine = None
        gc.collect()


def device_caps(framework: str, device: str) -> DeviceCaps:
    """Ask the framework what the device is (thin: the only hardware call here). Raises
    Unsupported where JAX_PLATFORMS keeps jax off the device (recmodels.envvars)."""
    kind = device_kind(device)
    if kind == "cuda" and framework == "torch" and not device.endswith(":all"):
        import torch

        idx = torch.device(device).index or 0
        return DeviceCaps(kind, torch.cuda.get_device_name(idx),
                          tuple(torch.cuda.get_device_capability(idx)))
    if framework == "jax":
        from recmodels.jax_model import resolve_devices

        try:
            devices = resolve_devices(device)
        except InputError as e:  # JAX_PLATFORMS keeps jax off this device: it says why
            raise Unsupported(str(e)) from None
        cc = getattr(devices[0], "compute_capability", None)
        cap = tuple(int(x) for x in str(cc).split(".")[:2]) if cc else None
        return DeviceCaps(kind, devices[0].device_kind, cap, len(devices))  # type: ignore[arg-type]
    return DeviceCaps(kind)


def build(point: Point, caps: DeviceCaps | None = None) -> Workload:
    """Build the point's step on its device; raises Unsupported with the reason."""
    from recmodels.train import make_engine

    caps = caps or device_caps(point.framework, point.device)
    reason = support_reason(point, caps)
    if reason:
        raise Unsupported(reason)
    cfg = point.model_config()
    engine = make_engine(point.framework, cfg, device=point.device, optimizer=point.optimizer,
                         precision=point.precision)
    if point.precision == "int8":
        engine.quantize_int8()
    if point.compiled:  # after quantisation: the int8 model is the one that runs
        engine.compile(point.compile)
    batch = random_batch(cfg, point.batch_size)
    if point.workload == "train":
        step, planned, check = train_closures(engine, engine.put(batch))
    elif point.workload in SERVING_WORKLOADS:
        step, planned, check, extra_metrics = _serving_step(point, cfg, engine, batch)
    else:
        dev_seq = engine.put({"seq": batch["seq"]})["seq"]

        def step():
            return engine.infer_step(dev_seq, TOP_K)

        def planned():
            return engine.planned_memory_bytes(seq=dev_seq, k=TOP_K)

        def check():
            return None  # inference updates nothing that could diverge
    return Workload(point=point, step=step, sync=engine.sync,
                    samples_per_step=point.batch_size,
                    tokens_per_step=point.batch_size * tokens_per_user(point, cfg),
                    cost=analytic_cost(point), peak_fns=peak_fns(point, engine),
                    planned_mem_bytes=planned, check=check, engine=engine,
                    extra_metrics=extra_metrics if point.workload in SERVING_WORKLOADS
                    else (lambda: {}), compile_counts=compile_counts(point, engine))


def peak_fns(point: Point, engine: Any) -> tuple[Callable | None, Callable | None]:
    """(reset, read) of the device peak-memory counter of the engine's device, or None's."""
    from bench.meters import jax_peak_fns, torch_cuda_peak_fns

    if point.framework == "jax":
        return jax_peak_fns(engine.device)
    if device_kind(point.device) == "cuda":
        return torch_cuda_peak_fns(engine.device)
    return None, None


def train_closures(engine: Any, dev_batch: Any) -> tuple[Callable, Callable, Callable]:
    """(step, planned, check) of a train step on a device-resident batch: check reads the
    last loss back and raises recmodels.train.Diverged for a non-finite loss or parameters."""
    from recmodels.train import Diverged

    last: list = [None]  # the latest step's loss, read back only by check()

    def step():
        last[0] = engine.train_step(dev_batch)
        return last[0]

    def planned():  # XLA's plan; eager engines (and torch's DistEngine) have none
        plan = getattr(engine, "planned_memory_bytes", None)
        return plan(batch=dev_batch) if plan else None

    def check():
        loss = None if last[0] is None else float(engine.sync(last[0]))
        params_finite = engine.all_finite()
        if params_finite and (loss is None or math.isfinite(loss)):
            return
        raise Diverged(f"train step diverged: loss {loss}, "
                       f"{'finite' if params_finite else 'non-finite'} parameters after "
                       "the timed steps; step times over NaN are not recorded")

    return step, planned, check


def tokens_per_user(point: Point, cfg: C.GenRecConfig) -> int:
    """Positions one user's step encodes: T (train, infer), the history and its K candidates
    (rank), the history and one position per generated item and beam (generate), the
    appended item (update)."""
    hist = C.serving_history(cfg, point.workload, point.gen_steps)
    return {"rank": hist + point.n_candidates,
            "generate": hist + point.beam_width * (point.gen_steps - 1),
            "update": 1}.get(point.workload, cfg.seq_len)


EXTRA_REPEATS = 5  # runs behind each extra metric (its median)


def _median_ms(fn: Callable[[], Any], sync: Callable[[Any], Any]) -> float:
    times = []
    for _ in range(EXTRA_REPEATS):
        t0 = time.perf_counter_ns()
        sync(fn())
        times.append((time.perf_counter_ns() - t0) / 1e6)
    return sorted(times)[len(times) // 2]


def _serving_step(point: Point, cfg: C.GenRecConfig, engine: Any, batch: dict[str, np.ndarray]):
    """(step, planned, check, extra_metrics) of a serving workload: histories from the random
    batch cut to the serving length, candidates and appended items uniform over the catalog."""
    hist = C.serving_history(cfg, point.workload, point.gen_steps)
    rng = np.random.default_rng(1)
    c, b = cfg.catalog_size, point.batch_size
    dev = engine.put({"seq": batch["seq"][:, -hist:],
                      "candidates": rng.integers(1, c + 1, (b, point.n_candidates)),
                      "new": rng.integers(1, c + 1, (b, 1)),
                      "longer": np.concatenate([batch["seq"][:, -hist:],
                                                rng.integers(1, c + 1, (b, 1))], 1)})
    extra: Callable[[], dict[str, float]] = lambda: {}  # noqa: E731
    if point.workload == "rank":
        def step():
            return engine.rank_step(dev["seq"], dev["candidates"])
    elif point.workload == "generate":
        def step():
            return engine.generate(dev["seq"], point.gen_steps, point.beam_width)

        def extra():
            """TTFT and TPOT: the prefill alone, and one decode step over B x W beams."""
            beams = engine.put({"seq": np.repeat(batch["seq"][:, -hist:], point.beam_width, 0),
                                "items": rng.integers(1, c + 1, b * point.beam_width)})
            cache = engine.sync(engine.prefill(beams["seq"], room=point.gen_steps - 1))
            return {"prefill_ms": _median_ms(lambda: engine.prefill(dev["seq"],
                                                                    room=point.gen_steps - 1),
                                             engine.sync),
                    "decode_step_ms": _median_ms(lambda: engine.decode(cache, beams["items"])[0],
                                                 engine.sync)}
    else:
        cache = engine.sync(engine.prefill(dev["seq"], room=1))
        items = dev["new"][:, 0]

        def step():
            return engine.decode(cache, items)[0]

        def extra():
            """The same answer without the cache: history and item encoded again, top-k."""
            return {"reencode_ms": _median_ms(lambda: engine.infer_step(dev["longer"], TOP_K),
                                              engine.sync)}

    def planned():
        return None  # XLA's plan is read for train and infer only

    def check():
        return None  # serving updates nothing that could diverge

    return step, planned, check, extra


# --- what the device can run: a probe ---------------------------------------------------------

PROBE_SHAPE = {"preset": "tiny", "catalog_size": 16, "seq_len": 4, "batch_size": 2}


def probe_key(point: Point) -> tuple[str, str, str, str, str]:
    """What decides whether a kernel exists: (framework, device, block, precision, workload).
    Sizes do not (a probe at 2 x 4 stands for every batch and length), torch.compile does not
    (its failures are the point's own)."""
    return (point.framework, point.device, point.block, point.precision, point.workload)


def probe(point: Point, caps: DeviceCaps | None = None) -> str | None:
    """Whether ``point``'s kind of step runs on this device at all: None when it does, else
    why not. The support table first (``support_reason``, which knows what needs which
    hardware), then one step of a tiny model of the same framework, block, precision and
    workload, built and run for real. What the table cannot know shows up here: oneDNN has no
    fp16 LSTM kernel on this kind of CPU, for one ("could not create a primitive descriptor
    for the LSTM forward propagation primitive"), and whether it has one depends on the ISA.
    Out-of-memory never comes from a 2 x 4 step, so every failure is the device's."""
    if point.distributed:  # its failures are its own (bench/launch/dist.py says which rank)
        return None
    tiny = Point(**{**point.to_dict(), **PROBE_SHAPE, "compile": "eager"})
    try:
        caps = caps or device_caps(tiny.framework, tiny.device)
        reason = support_reason(tiny, caps)
        if reason:
            return reason
        workload = build(tiny, caps)
        try:
            workload.sync(workload.step())
        finally:
            workload.close()
    except Unsupported as e:  # a reason already (device_caps: JAX_PLATFORMS)
        return str(e)
    except Exception as e:  # the probe's job is to turn any failure into a reason
        first = next((ln for ln in str(e).splitlines() if ln.strip()), "")
        return (f"{point.framework} cannot run a {point.workload} step of {point.block} in "
                f"{point.precision} on {point.device} (a tiny probe step failed: "
                f"{type(e).__name__}: {first[:300]})")
    return None
