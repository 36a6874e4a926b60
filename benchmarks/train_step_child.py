"""The child process of benchmarks/train_step.py: one side's recmodels, one framework, JSON
commands on stdin, answers on stdout.

train_step.py starts one per side (the working tree "new", --base's worktree "base") and
framework, and one for the roof, as `python benchmarks/train_step_child.py --cores 0,1`: this
file from the working tree's benchmarks/, with PYTHONPATH and cwd the side's tree, so the
working tree's protocol runs against that side's recmodels. It pins itself to --cores
(os.sched_setaffinity before torch or JAX start, torch.set_num_threads) and answers one JSON
line per command, {"ok": true, ...}, or {"ok": false, "reason": ...} with "unsupported": true
where the side cannot run a variant:

  hello    the recmodels it imported, and the API it lacks
  batches  a shape's batches into an .npz both sides load; each batch's analytic FLOPs and rows
  roof     bench.machine.roofs' fp32 GEMM roof on these cores
  build    a variant's engine, warmed up (warm-up s and steps)
  time     `iters` timed steps, cycling through the batches (ms, batch index, recompiles)
  drop     forget a shape's engines (one variant's, or all)
  quit

It imports nothing from benchmarks/ as a package: with PYTHONPATH the side's tree, that would
be the side's commit, which may not have this file.
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import sys
import time
import traceback

# The shapes of train_step.py's docstring (and its --shapes), built here; the parent imports them.
SHAPES = {
    "tiny-games": dict(preset="tiny", catalog_size=23_715, seq_len=50, batch=128, dropout=0.5,
                       data="synthetic-games"),
    "tiny-games-full": dict(preset="tiny", catalog_size=23_715, seq_len=50, batch=128,
                            dropout=0.5, data="full"),
    "small-b64": dict(preset="small", catalog_size=20_000, seq_len=50, batch=64, dropout=0.0,
                      data="full"),
}


class Unsupported(Exception):
    """A variant this side's recmodels cannot run; the message says why."""


# --- the child: one side's recmodels, JSON commands on stdin, answers on stdout ---------------


def shape_config(shape: str):
    from recmodels.config import preset

    s = SHAPES[shape]
    return preset(s["preset"], catalog_size=s["catalog_size"], seq_len=s["seq_len"],
                  dropout=s["dropout"])


def write_batches(shape: str, path: str) -> dict:
    """The shape's batches into an .npz both sides load; the analytic FLOPs of each."""
    import numpy as np

    from recmodels.config import flops_per_step

    s, cfg = SHAPES[shape], shape_config(shape)
    if s["data"] == "synthetic-games":
        from recmodels import data, splits

        split = splits.leave_one_out(data.load("synthetic-games"))
        batches = list(splits.train_batches(split, seq_len=cfg.seq_len, batch_size=s["batch"],
                                            n_neg=cfg.n_neg, seed=0))
    else:
        rng = np.random.default_rng(0)
        window = rng.integers(1, cfg.catalog_size + 1, (s["batch"], cfg.seq_len + 1))
        neg = rng.integers(1, cfg.catalog_size + 1, (s["batch"], cfg.seq_len, cfg.n_neg))
        batches = [{"seq": window[:, :-1], "pos": window[:, 1:], "neg": neg}]
    np.savez(path, **{f"{k}.{i}": v for i, b in enumerate(batches) for k, v in b.items()})
    return {"flops": [flops_per_step(cfg, len(b["seq"]), "train") for b in batches],
            "rows": [len(b["seq"]) for b in batches]}


def load_batches(path: str) -> list[dict]:
    import numpy as np

    with np.load(path) as z:
        out: dict[int, dict] = {}
        for key in z.files:
            name, i = key.rsplit(".", 1)
            out.setdefault(int(i), {})[name] = z[key]
    return [out[i] for i in range(len(out))]


def make_variant(variant: str, cfg, make_engine):
    """The variant's Engine through what this side's API has (inspect decides)."""
    if variant in ("torch", "jax"):
        return make_engine(variant, cfg, device="cpu")
    mode = variant.removeprefix("torch-")
    if "compile" in inspect.signature(make_engine).parameters:
        return make_engine("torch", cfg, device="cpu", compile=mode)
    eng = make_engine("torch", cfg, device="cpu")
    if getattr(eng, "compile_mode", "eager") != "eager":
        raise Unsupported(f"make_engine has no compile argument and its default engine is "
                          f"compiled ({eng.compile_mode}), so it has no eager engine")
    if mode == "eager":
        return eng
    if not callable(getattr(eng, "compile", None)):
        raise Unsupported("its Engine has no compile()")
    if inspect.signature(eng.compile).parameters:
        eng.compile(mode)
    elif mode == "default":
        eng.compile()
    else:
        raise Unsupported(f"its Engine.compile() takes no mode: only torch-default and "
                          f"torch-eager run there, not {variant}")
    return eng


def dynamo_graphs() -> int:
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


def handle(req: dict, live: dict) -> dict:
    cmd = req["cmd"]
    if cmd == "hello":
        import recmodels
        from recmodels import config, train

        need = [("config.preset", config, "preset"),
                ("config.flops_per_step", config, "flops_per_step"),
                ("train.make_engine", train, "make_engine")]
        return {"recmodels": recmodels.__file__,
                "missing": [n for n, mod, attr in need if not hasattr(mod, attr)]}
    if cmd == "batches":
        return write_batches(req["shape"], req["path"])
    if cmd == "roof":
        from bench.machine.roofs import measure_roofs

        return {"roof": measure_roofs(["cpu"], ["fp32"], ["torch", "jax"])["cpu/fp32"]}
    if cmd == "build":
        from recmodels.train import make_engine

        shape, variant = req["shape"], req["variant"]
        batches = load_batches(req["path"])
        t0 = time.perf_counter()
        eng = make_variant(variant, shape_config(shape), make_engine)
        if SHAPES[shape]["data"] != "synthetic-games":
            batches = [eng.put(batches[0])]
        # Warm-up: the first steps, then each other batch size once (JAX compiles per shape).
        order = [i % len(batches) for i in range(req["warmup"])]
        sizes = {len(batches[i]["seq"]) for i in order}
        for i, b in enumerate(batches):
            if len(b["seq"]) not in sizes:
                sizes.add(len(b["seq"]))
                order.append(i)
        for i in order:
            eng.sync(eng.train_step(batches[i]))
        live[(shape, variant)] = {"eng": eng, "batches": batches, "cursor": 0}
        return {"warmup_s": time.perf_counter() - t0, "warmup_steps": len(order)}
    if cmd == "time":
        run = live[(req["shape"], req["variant"])]
        eng, batches = run["eng"], run["batches"]
        graphs0 = dynamo_graphs()
        ms, index = [], []
        for _ in range(req["iters"]):
            i = run["cursor"] % len(batches)
            run["cursor"] += 1
            t0 = time.perf_counter_ns()
            eng.sync(eng.train_step(batches[i]))
            ms.append((time.perf_counter_ns() - t0) / 1e6)
            index.append(i)
        return {"ms": ms, "index": index, "recompiles": dynamo_graphs() - graphs0}
    if cmd == "drop":
        for key in [k for k in live if k[0] == req["shape"]
                    and req.get("variant") in (None, k[1])]:
            del live[key]
        import gc

        gc.collect()
        return {}
    if cmd == "quit":
        return {}
    raise ValueError(f"unknown command {cmd!r}")


def child_main(cores: list[int]) -> int:
    os.sched_setaffinity(0, cores)  # before torch and XLA size their thread pools
    proto = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # anything a library prints goes to the log, not into the protocol
    import torch

    torch.set_num_threads(len(cores))
    # Several compiled engines of one process share loss_fn's code object: let each compile.
    torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 64)
    live: dict = {}
    for line in sys.stdin:
        req = json.loads(line)
        try:
            out = {"ok": True, **handle(req, live)}
        except Unsupported as e:
            out = {"ok": False, "unsupported": True, "reason": str(e)}
        except Exception as e:
            traceback.print_exc()
            out = {"ok": False, "reason": f"{type(e).__name__}: {str(e).splitlines()[0]}"
                   if str(e) else type(e).__name__}
        proto.write(json.dumps(out) + "\n")
        if req["cmd"] == "quit":
            break
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cores", required=True, help="the CPUs to pin to, e.g. 0,1")
    args = ap.parse_args(argv)
    return child_main([int(c) for c in args.cores.split(",")])


if __name__ == "__main__":
    sys.exit(main())
