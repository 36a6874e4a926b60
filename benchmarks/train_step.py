"""How fast is the reference train step on this machine? A benchmark, not a test.

Times the train step (forward, backward, optimizer update) of the configurations that matter
for speed, in one process, in alternating rounds so that machine drift hits every variant
alike, and prints per variant the median step time, the analytic FLOP/s and its share of the
fp32 GEMM roof measured in the same process (the best of torch's and JAX's 2048^3 matmul):

  tiny-games   tiny at the Amazon-Games shape: catalog 23,715, T 50, B 128, bce, dropout 0.5
               (the SASRec paper's training set-up)
  small-b64    small at quick's shape: catalog 20k, T 50, B 64, bce, dropout off

Variants: torch eager, torch compiled (Engine.compile: torch.compile of the model), JAX
(jitted). The last column is each variant's step time over torch eager's, per round, median
over rounds (above 1: slower than eager).

    python benchmarks/train_step.py [--shapes tiny-games small-b64] [--rounds 5]
                                    [--iters 10] [--threads N] [--no-compile]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from recmodels import config as C
from recmodels.train import make_engine

SHAPES = {
    "tiny-games": dict(preset="tiny", catalog_size=23_715, seq_len=50, batch=128, dropout=0.5),
    "small-b64": dict(preset="small", catalog_size=20_000, seq_len=50, batch=64, dropout=0.0),
}


def batch_for(cfg: C.GenRecConfig, b: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    window = rng.integers(1, cfg.catalog_size + 1, (b, cfg.seq_len + 1))
    neg = rng.integers(1, cfg.catalog_size + 1, (b, cfg.seq_len, cfg.n_neg))
    return {"seq": window[:, :-1], "pos": window[:, 1:], "neg": neg}


def variants(shape: str, compile_torch: bool) -> dict[str, tuple]:
    s = SHAPES[shape]
    cfg = C.preset(s["preset"], catalog_size=s["catalog_size"], seq_len=s["seq_len"],
                   dropout=s["dropout"])
    found = {}
    for name, fw, compiled in (("torch eager", "torch", False),
                               ("torch compiled", "torch", True), ("jax", "jax", False)):
        if compiled and not compile_torch:
            continue
        eng = make_engine(fw, cfg, device="cpu")
        if compiled:
            eng.compile()
        dev = eng.put(batch_for(cfg, s["batch"]))
        found[name] = (eng, dev)
    return found, cfg, s["batch"]


def timed_ms(eng, dev, iters: int) -> list[float]:
    out = []
    for _ in range(iters):
        t0 = time.perf_counter_ns()
        eng.sync(eng.train_step(dev))
        out.append((time.perf_counter_ns() - t0) / 1e6)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's)")
    ap.add_argument("--no-compile", action="store_true", help="leave torch.compile out")
    args = ap.parse_args()
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from bench.machine.roofs import measure_roofs

    roof = measure_roofs(["cpu"], ["fp32"], ["torch", "jax"])["cpu/fp32"]["gemm_flops_per_s"]
    print(f"fp32 GEMM roof (best of torch and JAX, this process): {roof / 1e9:.0f} GFLOP/s; "
          f"torch threads {torch.get_num_threads()}")
    for shape in args.shapes:
        found, cfg, b = variants(shape, not args.no_compile)
        flops = C.flops_per_step(cfg, b, "train")
        for eng, dev in found.values():  # compile and warm up outside the rounds
            for _ in range(3):
                eng.sync(eng.train_step(dev))
        per: dict[str, list[float]] = {n: [] for n in found}
        ratios: dict[str, list[float]] = {n: [] for n in found}
        for _ in range(args.rounds):
            medians = {}
            for name, (eng, dev) in found.items():
                samples = timed_ms(eng, dev, args.iters)
                per[name] += samples
                medians[name] = statistics.median(samples)
            for name in found:
                ratios[name].append(medians[name] / medians["torch eager"])
        print(f"\n{shape}: {cfg.catalog_size} items, T {cfg.seq_len}, B {b}, dropout "
              f"{cfg.dropout}; {flops / 1e9:.2f} GFLOP a step (analytic)")
        print(f"{'variant':<16} {'ms/step':>9} {'GFLOP/s':>9} {'% roof':>7} {'t / eager':>9}")
        for name in found:
            ms = statistics.median(per[name])
            rate = flops / (ms / 1e3)
            print(f"{name:<16} {ms:9.2f} {rate / 1e9:9.1f} {100 * rate / roof:6.0f}% "
                  f"{statistics.median(ratios[name]):8.2f}x")


if __name__ == "__main__":
    main()
