"""What every rank runs for tests/recmodels/test_torch_distributed.py, under torchrun:

    python -m torch.distributed.run --nproc-per-node W dist_torch_ranks.py OUT_DIR CASES_JSON

Each case (a JSON object: name, preset, parallel, sharding, optimizer, lr, and config fields
in "cfg", optionally "device" and "table_optimizer") loads OUT_DIR/<name>.safetensors, trains
STEPS steps on the global batch of `global_batch(cfg)`, each rank given its rows of it
(`rank_rows`), and writes, from every rank, OUT_DIR/<name>.rank<r>.npz: the loss of each
step, the full parameters after them, the largest difference between the loaded file and
state_dict() right after loading, how many parameter elements this rank holds, the largest
magnitude in its shard's padding columns of a TorchRec table ("pad_max"; 0 when unpadded),
and, with "seed_check", the largest difference between a fresh DistEngine(seed=0) and
Engine(seed=0). numpy's npz, written with allow_pickle=False.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from recmodels import weights
from recmodels.config import preset

STEPS = 3
BATCH = 8  # global rows; 2 ranks hold 4 each


def case_config(case: dict):
    return preset(case["preset"], catalog_size=200, seq_len=8, dropout=0.0,
                  **case.get("cfg", {}))


def global_batch(cfg, seed: int = 0) -> dict[str, np.ndarray]:
    """BATCH rows, left-padded: the first half (rank 0 of 2) keeps 1-3 items of seq_len, the
    second half (rank 1) 6-8, so per-rank target counts differ (a per-rank mean would weight
    rank 0's few targets as much as rank 1's many). Negatives in 1..C at targets, 0 elsewhere."""
    rng = np.random.default_rng(seed)
    t, c, half = cfg.seq_len, cfg.catalog_size, BATCH // 2
    lengths = np.concatenate([rng.integers(1, 4, half), rng.integers(t - 2, t + 1, half)])
    seq = rng.integers(1, c + 1, (BATCH, t))
    seq[np.arange(t)[None, :] < (t - lengths)[:, None]] = 0
    pos = np.roll(seq, -1, axis=1)
    pos[:, -1] = rng.integers(1, c + 1, BATCH)
    pos[seq == 0] = 0
    neg = rng.integers(1, c + 1, (BATCH, t, cfg.n_neg))
    neg[pos == 0] = 0
    return {"seq": seq, "pos": pos, "neg": neg}


def rank_rows(batch: dict[str, np.ndarray], rank: int, world: int) -> dict[str, np.ndarray]:
    """Rank's contiguous rows rank*B/W to (rank+1)*B/W of each [B, ...] array."""
    per = len(batch["seq"]) // world
    return {k: v[rank * per:(rank + 1) * per] for k, v in batch.items()}


def pad_max(engine) -> float:
    """The largest |value| in this rank's shard of the TorchRec table beyond column d (0.0
    for a dense table)."""
    from recmodels.torch.distributed import TABLE_KEY, table_width

    if engine.sharding == "dense":
        return 0.0
    d, shards = engine.cfg.d_model, engine.wrapped.state_dict()[TABLE_KEY].local_shards()
    assert all(s.tensor.shape[1] == table_width(d) for s in shards)
    return max([float(s.tensor[:, d:].abs().max()) for s in shards if s.tensor[:, d:].numel()],
               default=0.0)


def run_case(case: dict, out: Path) -> None:
    from recmodels.torch.distributed import DistEngine
    from recmodels.torch.engine import Engine

    cfg = case_config(case)
    tensors, _ = weights.load(out / f"{case['name']}.safetensors")
    kw = dict(parallel=case["parallel"], sharding=case["sharding"], optimizer=case["optimizer"],
              lr=case["lr"], device=case.get("device", "cpu"),
              table_optimizer=case.get("table_optimizer"))
    result = {}
    if case.get("seed_check"):
        fresh, ref = DistEngine(cfg, seed=0, **kw).state_dict(), Engine(cfg, seed=0).state_dict()
        result["seed_diff"] = np.array(max(float(np.abs(fresh[k] - ref[k]).max()) for k in ref))
    engine = DistEngine(cfg, seed=1 + engine_seed(case), **kw)
    engine.load_state_dict(tensors)
    loaded = engine.state_dict()
    init_diff = max(float(np.abs(loaded[k] - tensors[k]).max()) for k in tensors)
    batch = rank_rows(global_batch(cfg), engine.rank, engine.world)
    losses = [float(engine.train_step(batch)) for _ in range(STEPS)]
    result.update({f"param/{k}": v for k, v in engine.state_dict().items()})
    local = [p.to_local() if hasattr(p, "to_local") else p for p in engine.wrapped.parameters()]
    if hasattr(engine, "no_comm"):
        with engine.no_comm():
            result["no_comm_loss"] = np.array(float(engine.train_step(batch)))
    result.update(loss=np.array(losses), init_diff=np.array(init_diff),
                  local_elems=np.array(sum(p.numel() for p in local)),
                  keys_match=np.array(sorted(loaded) == sorted(tensors)),
                  all_finite=np.array(engine.all_finite()), pad_max=np.array(pad_max(engine)),
                  table_update=np.array(engine.table_update))
    np.savez(out / f"{case['name']}.rank{engine.rank}.npz", allow_pickle=False, **result)


def engine_seed(case: dict) -> int:
    """A seed unlike the weights file's, so the test sees load_state_dict take effect."""
    return len(case["name"])


def main(argv: list[str]) -> None:
    out, cases = Path(argv[0]), json.loads(argv[1])
    from recmodels.torch.distributed import init_process_group

    init_process_group(timeout_s=120.0)
    for case in cases:
        run_case(case, out)
    import torch.distributed as dist

    dist.barrier()  # leave together: a rank exiting with live process-group threads can abort
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1:])
