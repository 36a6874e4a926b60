"""One rank of tests/recmodels/test_jax_distributed.py: JAX Engine training under
jax.distributed, started by torchrun as a plain process launcher.

    python -m torch.distributed.run --nproc-per-node 2 --master-port P dist_jax_ranks.py DIR

DIR holds what the test wrote: cases.json (the cases: preset, optimizer, lr, sharding),
weights-<preset>.safetensors (the starting weights and config) and batch-<preset>.npz (the
global batch). Each rank trains on its own rows of the batch (rank r: rows r*B/n to
(r+1)*B/n); rank 0 writes DIR/out.npz (numpy arrays only, read back with
allow_pickle=False): per case the loss of every step, the final parameters, the item
table's rows on each device, and top-10 recommendations for the whole batch.
"""

import json
import sys
from pathlib import Path

from recmodels.jax.distributed import initialize

RANK, WORLD = initialize(timeout_s=120.0)  # before anything touches a JAX backend

import jax  # noqa: E402
import numpy as np  # noqa: E402
from jax.experimental import multihost_utils  # noqa: E402

from recmodels import weights  # noqa: E402
from recmodels.jax.engine import Engine  # noqa: E402


def main(folder: Path) -> None:
    spec = json.loads((folder / "cases.json").read_text())
    out: dict[str, np.ndarray] = {
        "process_count": np.array(jax.process_count()),
        "device_count": np.array(jax.device_count()),
        "local_device_count": np.array(jax.local_device_count()),
    }
    for case in spec["cases"]:
        tensors, cfg = weights.load(folder / f"weights-{case['preset']}.safetensors")
        with np.load(folder / f"batch-{case['preset']}.npz", allow_pickle=False) as f:
            batch = {k: f[k] for k in f.files}
        rows = len(batch["seq"]) // WORLD
        local = {k: v[RANK * rows:(RANK + 1) * rows] for k, v in batch.items()}
        engine = Engine(cfg, optimizer=case["optimizer"], lr=case["lr"], device="cpu:all",
                        sharding=case["sharding"])
        engine.load_state_dict(tensors)
        key = case["key"]
        out[f"{key}/loss"] = np.array([float(engine.train_step(local))
                                       for _ in range(spec["steps"])])
        for name, value in engine.state_dict().items():  # a collective: every rank calls it
            out[f"{key}/param/{name}"] = value
        table = engine.state.params["item_emb.weight"]
        out[f"{key}/table_rows"] = np.array([s.data.shape[0] for s in table.addressable_shards])
        out[f"{key}/table_global_rows"] = np.array(table.shape[0])
        _, ids = engine.recommend(local["seq"], 10)  # this rank's rows
        out[f"{key}/recommend"] = multihost_utils.process_allgather(ids, tiled=True)
        out[f"{key}/eval_loss"] = np.array(engine.loss(local))  # the global batch's
        out[f"{key}/all_finite"] = np.array(engine.all_finite())
    # The table's rows are per rank: gather them so rank 0 reports both.
    for key in [k for k in out if k.endswith("/table_rows")]:
        out[key] = multihost_utils.process_allgather(out[key], tiled=True)
    if RANK == 0:
        np.savez(folder / "out.npz", **out)
    multihost_utils.sync_global_devices("dist_jax_ranks done")
    jax.distributed.shutdown()  # leave together (exiting with a live runtime can abort)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
