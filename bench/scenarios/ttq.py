"""Time to quality (`recbench ttq`), after MLPerf Training: N seeded training runs, each
stopping the first time validation reaches a quality target (or at an epoch cap), scored as
the mean wall time to target with the fastest and the slowest run dropped.

A run's wall time is the whole run from its first training step (compilation and evaluation
included) to the evaluation that reached the target; data loading and engine construction come
before it and are reported apart (`setup_s`). The training loop and the evaluations are
reported as shares of it. Energy to target comes from the device's energy meter over the same
window, where it has one (bench.meters), and is null with its provenance otherwise.
MLPerf Training rules: https://github.com/mlcommons/training_policies (training_rules.adoc,
"Benchmark results": drop the fastest and the slowest, mean of the rest).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from recmodels.errors import InputError

METRICS = ("hr@10", "ndcg@10")
REGISTRY_MAX_EPOCHS = 200  # the SASRec paper's budget on its datasets
SYNTHETIC_MAX_EPOCHS = 30
RUN_STATUSES = ("converged", "did-not-converge", "diverged")


def parse_target(text: str) -> tuple[str, float]:
    """"hr@10=0.6" -> ("hr@10", 0.6); InputError unless the metric is known and 0 < X <= 1."""
    metric, sep, value = str(text).partition("=")
    metric = metric.strip().lower()
    try:
        x = float(value) if sep else float("nan")
    except ValueError:
        x = float("nan")
    if metric not in METRICS or not 0 < x <= 1:
        raise InputError(f"bad --target {text!r}: write METRIC=X with METRIC one of "
                         f"{', '.join(METRICS)} and 0 < X <= 1 (e.g. hr@10=0.6)")
    return metric, x


@dataclass
class TTQSpec:
    """One time-to-quality measurement: a training configuration, a target, N runs."""

    dataset: str
    target: str  # "hr@10" | "ndcg@10"
    target_value: float
    runs: int = 5
    max_epochs: int | None = None  # None: REGISTRY_MAX_EPOCHS for registry data, else synthetic
    eval_every: int = 1
    framework: str = "torch"
    preset: str = "tiny"
    precision: str = "fp32"
    device: str = "auto"
    compile: str = "eager"  # torch.compile mode; JAX always jits
    batch_size: int = 128
    lr: float = 1e-3
    seed: int = 0  # the first run's; run i uses seed + i
    overrides: dict = field(default_factory=dict)  # GenRecConfig fields

    def validate(self) -> None:
        parse_target(f"{self.target}={self.target_value}")
        for name in ("runs", "eval_every") + (("max_epochs",) if self.max_epochs else ()):
            if getattr(self, name) < 1:
                raise InputError(f"{name} must be a positive integer, got {getattr(self, name)}")
        self.train_options(self.seed).validate()

    def cap(self) -> int:
        if self.max_epochs:
            return self.max_epochs
        from recmodels.data import REGISTRY

        return REGISTRY_MAX_EPOCHS if self.dataset in REGISTRY else SYNTHETIC_MAX_EPOCHS

    def train_options(self, seed: int):
        from recmodels.train import TrainOptions

        return TrainOptions(framework=self.framework, preset=self.preset, dataset=self.dataset,
                            epochs=self.cap(), batch_size=self.batch_size, lr=self.lr,
                            precision=self.precision, seed=seed, device=self.device,
                            compile=self.compile, overrides=dict(self.overrides),
                            eval_every=self.eval_every, select=self.target,
                            target=(self.target, self.target_value))

    def point(self, dataset_name: str, device: str) -> dict[str, Any]:
        """The record's point: what was measured, on which resolved device."""
        p = {"framework": self.framework, "preset": self.preset, "dataset": dataset_name,
             "precision": self.precision, "device": device,
             "compile": "jit" if self.framework == "jax" else self.compile,
             "target": self.target, "target_value": self.target_value, "runs": self.runs,
             "max_epochs": self.cap(), "eval_every": self.eval_every,
             "batch_size": self.batch_size, "seed": self.seed}
        if self.lr != 1e-3:  # a different learning rate is a different point
            p["lr"] = self.lr
        if self.overrides:
            p["overrides"] = dict(self.overrides)
        return p


def check(spec: TTQSpec) -> tuple[str, str, dict | None]:
    """Before any run: the options, the device and the dataset are usable (InputError
    otherwise). Returns (the dataset's name, the resolved device, the paper's quality)."""
    from recmodels import data as D
    from recmodels.config import preset
    from recmodels.train import paper_figures, resolve_device

    spec.validate()
    device = resolve_device(spec.framework, spec.device)
    data = D.load(spec.dataset)
    paper, settings = paper_figures(spec.dataset)
    preset(spec.preset, catalog_size=data.n_items, **{**settings, **spec.overrides})
    return data.name, device, paper or None


# --- one run ----------------------------------------------------------------------------------


def run_once(spec: TTQSpec, seed: int, *, log: Callable[[str], None],
             energy_sources: Sequence[Any] | None = None) -> dict[str, Any]:
    """One training run to the target or the cap; its entry of the record's `runs`."""
    from bench.meters import EnergyMeter, default_energy_sources
    from bench.point import device_kind
    from recmodels.train import resolve_device, train

    opts = spec.train_options(seed)
    if energy_sources is None:
        energy_sources = default_energy_sources(device_kind(resolve_device(spec.framework,
                                                                           spec.device)))
    meters: list[Any] = []

    def window(engine):  # the energy window is train's wall_s window
        meters.append(EnergyMeter(energy_sources, sync=engine.sync))
        return meters[-1]

    r = train(opts, log=log, progress=False, window=window, epoch_log=False)
    energy = meters[0].result if meters else None
    last = r["curve"][-1] if r["curve"] else None
    if r["status"] != "ok":
        status = "diverged"
    elif r["target"]["reached_epoch"] is not None:
        status = "converged"
    else:
        status = "did-not-converge"
    return {
        "seed": seed, "status": status, "reason": r["reason"],
        "wall_s": r["wall_s"], "setup_s": r["setup_s"], "train_s": r["train_s"],
        "eval_s": r["eval_s"], "epochs": r["epochs_run"],
        "energy_j": energy.energy_j if energy else None,
        "energy_provenance": energy.provenance if energy else "unavailable",
        "energy_note": energy.note if energy else "no energy meter ran",
        "reached": last["valid"] if last else None,
        "test": last["test"] if last else None,
        "curve": r["curve"],
    }


# --- the score ----------------------------------------------------------------------------------


def score(runs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """MLPerf Training's score of N runs: the mean wall time to target with the fastest and
    the slowest run dropped. A run that did not converge (or diverged) counts as the slowest
    and is dropped; two or more of them make the result `did-not-converge`. Under 3 runs there
    is nothing to drop: the plain mean of all of them, and any miss is `did-not-converge`.
    Returns status, reason, the kept runs' indices, time_to_target_s and score_rule."""
    n = len(runs)
    missed = [i for i, r in enumerate(runs) if r["status"] != "converged"]
    # slowest last: a miss sorts after every converged run
    order = sorted(range(n), key=lambda i: (runs[i]["status"] != "converged", runs[i]["wall_s"]))
    if n >= 3:
        kept = sorted(order[1:-1])
        rule = (f"mean of {len(kept)} of {n} runs, fastest and slowest dropped (MLPerf "
                "Training)" + ("; the run that missed the target counted as the slowest"
                               if missed else ""))
        failed = len(missed) >= 2
    else:
        kept = order
        rule = ("the one run's time (1 run: nothing to drop; MLPerf Training drops the fastest "
                "and slowest of 3 or more)" if n == 1 else
                f"plain mean of {n} runs (under 3 runs nothing is dropped; MLPerf Training "
                "drops the fastest and slowest of 3 or more)")
        failed = bool(missed)
    if failed:  # no score: the rule says what would have scored one
        rule = ("mean of the runs without the fastest and the slowest (MLPerf Training); a "
                "run that misses the target counts as the slowest, two or more misses give "
                "no score" if n >= 3 else "every run must reach the target under 3 runs "
                "(nothing is dropped)")
        return {"status": "did-not-converge", "kept": [], "time_to_target_s": None,
                "score_rule": rule,
                "reason": f"{len(missed)} of {n} runs did not reach the target"
                          + (f" ({sum(runs[i]['status'] == 'diverged' for i in missed)} "
                             "diverged)" if any(runs[i]["status"] == "diverged"
                                                for i in missed) else "")
                          + (" (2 or more misses: no score)" if n >= 3 else "")}
    return {"status": "ok", "reason": None, "kept": kept, "score_rule": rule,
            "time_to_target_s": _mean(runs[i]["wall_s"] for i in kept)}


def _mean(values) -> float | None:
    values = list(values)
    if not values or any(v is None for v in values):
        return None
    return math.fsum(values) / len(values)


def _provenance(runs: Sequence[dict[str, Any]]) -> tuple[str, str]:
    """The kept runs' energy provenance: the weakest names the whole."""
    rank = ("unavailable", "estimated", "measured-sampled", "measured-counter")
    worst = min(runs, key=lambda r: rank.index(r.get("energy_provenance", "unavailable")))
    return worst.get("energy_provenance", "unavailable"), worst.get("energy_note", "")


@dataclass
class TTQOutcome:
    point: dict[str, Any]
    status: str  # "ok" | "did-not-converge" | "error"
    reason: str | None
    metrics: dict[str, Any]


def ttq(spec: TTQSpec, *, run: Callable[..., dict[str, Any]] = run_once,
        progress: Callable[[str], None] = lambda m: None,
        checked: tuple[str, str, dict | None] | None = None,
        energy_sources: Sequence[Any] | None = None) -> TTQOutcome:
    """The N runs and their score. `run(spec, seed, log=..., energy_sources=...)` is one
    training run (run_once; injectable so the scoring is testable without training);
    `checked` is check(spec)'s answer when the caller already has it."""
    name, device, paper = checked or check(spec)
    point = spec.point(name, device)
    target = f"valid {spec.target} >= {spec.target_value:g}"
    runs: list[dict[str, Any]] = []
    for i in range(spec.runs):
        seed = spec.seed + i
        tag = f"run {i + 1}/{spec.runs} (seed {seed})"
        try:
            r = run(spec, seed, log=lambda m, tag=tag: progress(f"{tag}: {m}"),
                    energy_sources=energy_sources)
        except InputError:
            raise
        except Exception as e:  # a crashed run: the record says why
            return TTQOutcome(point, "error", f"{tag} failed: {type(e).__name__}: {e}",
                              _metrics(spec, runs, None, paper))
        runs.append(r)
        if r["status"] == "converged":
            progress(f"{tag}: reached {target} at epoch {r['epochs']} in {r['wall_s']:.1f} s "
                     f"(training {r['train_s']:.1f} s, evaluation {r['eval_s']:.1f} s)")
        else:
            progress(f"{tag}: {r['status']} after {r['epochs']} epochs, {r['wall_s']:.1f} s"
                     + (f" ({r['reason']})" if r.get("reason") else ""))
    s = score(runs)
    return TTQOutcome(point, s["status"], s["reason"], _metrics(spec, runs, s, paper))


def _metrics(spec: TTQSpec, runs: list[dict[str, Any]], s: dict[str, Any] | None,
             paper: dict | None) -> dict[str, Any]:
    kept = [runs[i] for i in s["kept"]] if s else []
    wall = _mean(r["wall_s"] for r in kept)
    train_s, eval_s = _mean(r["train_s"] for r in kept), _mean(r["eval_s"] for r in kept)
    provenance, note = _provenance(kept) if kept else ("unavailable", "no run was scored")
    energy = _mean(r["energy_j"] for r in kept) if provenance != "unavailable" else None
    return {
        "time_to_target_s": s["time_to_target_s"] if s else None,
        "score_rule": s["score_rule"] if s else "no score: a run failed",
        "kept_runs": [runs[i]["seed"] for i in s["kept"]] if s else [],
        "setup_s": _mean(r["setup_s"] for r in kept),
        "train_s": train_s,
        "eval_s": eval_s,
        "train_share": train_s / wall if kept and wall else None,
        "eval_share": eval_s / wall if kept and wall else None,
        "epochs_to_target": _mean(r["epochs"] for r in kept),
        "energy_to_target_j": energy,
        "energy_provenance": provenance,
        "energy_note": note,
        "converged": sum(r["status"] == "converged" for r in runs),
        "paper_quality": paper,
        "runs": runs,
    }
