"""What does the KV cache save? A benchmark, not a test.

For histories of T items (positions from the oldest item, `positions="left"`), times in one
process, alternating rounds so that machine drift hits both:
  decode    one new interaction appended through the cache (Engine.decode: one position
            attending to the T cached ones), catalog scores out
  reencode  the whole history plus the new item encoded again (T + 1 positions), catalog
            scores out: what a model without a cache does for the same answer
and once, the prefill that fills the cache (Engine.prefill: the T positions). Checks that
both give the same scores. Prints one row per T with the medians and the ratio.

    python benchmarks/kv_cache.py [--framework torch|jax] [--preset small] [--device cpu]
                                  [--lengths 50 200 1000] [--batch-size 8]
                                  [--catalog-size 20000] [--rounds 5] [--iters 5]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from recmodels.config import preset
from recmodels.train import make_engine


def timed_ms(fn, sync, iters: int) -> list[float]:
    out = []
    for _ in range(iters):
        t0 = time.perf_counter_ns()
        sync(fn())
        out.append((time.perf_counter_ns() - t0) / 1e6)
    return out


def one_length(framework: str, name: str, t: int, b: int, catalog: int, rounds: int,
               iters: int, device: str = "cpu") -> dict:
    cfg = preset(name, seq_len=t + 1, catalog_size=catalog, positions="left", dropout=0.0)
    eng = make_engine(framework, cfg, device=device)
    rng = np.random.default_rng(0)
    seq = rng.integers(1, catalog + 1, (b, t))
    new = rng.integers(1, catalog + 1, (b, 1))
    d = eng.put({"seq": seq, "new": new, "longer": np.concatenate([seq, new], 1)})
    items = d["new"][:, 0]
    if framework == "torch":
        from recmodels.torch.model import score_catalog

        def reencode():
            return eng._eval(score_catalog, d["longer"])
    else:
        def reencode():
            return eng._score_catalog(eng.state.params, seq=d["longer"])

    def prefill():
        return eng.prefill(d["seq"], room=1)

    cache = eng.sync(prefill())

    def decode():
        return eng.decode(cache, items)[0]

    for fn in (prefill, decode, reencode):  # compile and warm up
        for _ in range(2):
            eng.sync(fn())
    diff = float(np.abs(np.asarray(decode().cpu() if framework == "torch" else decode())[:, 1:]
                        - np.asarray(reencode().cpu() if framework == "torch" else reencode())
                        [:, 1:]).max())
    dec, enc, pre = [], [], []
    for _ in range(rounds):
        dec.append(statistics.median(timed_ms(decode, eng.sync, iters)))
        enc.append(statistics.median(timed_ms(reencode, eng.sync, iters)))
        pre.append(statistics.median(timed_ms(prefill, eng.sync, max(1, iters // 2))))
    row = {"T": t, "prefill_ms": statistics.median(pre), "decode_ms": statistics.median(dec),
           "reencode_ms": statistics.median(enc), "max_abs_diff": diff}
    row["gain"] = row["reencode_ms"] / row["decode_ms"]
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--framework", choices=("torch", "jax"), default="torch")
    ap.add_argument("--preset", default="small")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--lengths", type=int, nargs="+", default=[50, 200, 1000])
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--catalog-size", type=int, default=20_000)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--iters", type=int, default=5)
    args = ap.parse_args()
    print(f"{args.framework} {args.preset} {args.device} B={args.batch_size} "
          f"C={args.catalog_size}: "
          "medians of per-round medians")
    print(f"{'T':>5} {'prefill ms':>11} {'decode ms':>10} {'re-encode ms':>13} {'gain':>7} "
          f"{'max |diff|':>10}")
    for t in args.lengths:
        r = one_length(args.framework, args.preset, t, args.batch_size, args.catalog_size,
                       args.rounds, args.iters, args.device)
        print(f"{r['T']:>5} {r['prefill_ms']:>11.2f} {r['decode_ms']:>10.2f} "
              f"{r['reencode_ms']:>13.2f} {r['gain']:>6.1f}x {r['max_abs_diff']:>10.1e}",
              flush=True)


if __name__ == "__main__":
    main()
