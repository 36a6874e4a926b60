"""JAX data parallelism over several devices, on 4 fake CPU devices.

XLA_FLAGS=--xla_force_host_platform_device_count=4 makes the host look like 4 devices, the
same way a TPU slice or a multi-GPU host looks to JAX. The flag must be set before JAX is
imported, hence the subprocess.
"""

import json
import os
import subprocess
import sys

SCRIPT = r"""
import json
import numpy as np
import jax
from recmodels import jax_model as jm, parity
from recmodels.config import preset
from bench.point import Measure, Point
from bench.launch.worker import measure_point

cfg = preset("tiny", catalog_size=300, seq_len=12, dropout=0.0)
batch = parity.parity_batch(cfg, 8)
one, four = jm.Engine(cfg, device="cpu"), jm.Engine(cfg, device="cpu:all")
loss_one, loss_four = one.loss(batch), four.loss(batch)
one.train_step(batch)
four.train_step(batch)
params_diff = max(float(np.abs(one.state_dict()[k] - four.state_dict()[k]).max())
                  for k in one.state_dict())
seq_sharding = four.put({"seq": batch["seq"]})["seq"].sharding
try:
    four.put({"seq": batch["seq"][:6]})
    uneven = "accepted"
except ValueError as e:
    uneven = str(e)
point = dict(framework="jax", workload="train", preset="tiny", catalog_size=300, seq_len=12,
             precision="fp32", device="cpu:all")
measure = Measure(warmup_iters=1, min_time_s=0.0, min_iters=3, max_iters=3, max_time_s=5.0)
ok = measure_point(Point(batch_size=8, **point), measure)
odd = measure_point(Point(batch_size=6, **point), measure)
print(json.dumps({
    "n_devices": len(four.devices), "loss_one": loss_one, "loss_four": loss_four,
    "params_diff": params_diff, "batch_shards": len(seq_sharding.device_set),
    "same_topk": bool((one.recommend(batch["seq"], 5)[1]
                       == four.recommend(batch["seq"], 5)[1]).all()),
    "uneven": uneven, "ok_status": ok["status"], "odd_status": odd["status"],
    "odd_reason": odd.get("reason"), "ok_reason": ok.get("reason"),
}))
"""


def test_data_parallel_matches_one_device():
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4"}
    proc = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    assert r["n_devices"] == 4 and r["batch_shards"] == 4
    assert abs(r["loss_one"] - r["loss_four"]) < 1e-5
    assert r["params_diff"] < 1e-4  # one Adam step on 4 shards = one on the whole batch
    assert r["same_topk"]
    assert "does not split evenly over 4 devices" in r["uneven"]
    assert r["ok_status"] == "ok", r["ok_reason"]
    assert r["odd_status"] == "unsupported" and "4 devices" in r["odd_reason"]
