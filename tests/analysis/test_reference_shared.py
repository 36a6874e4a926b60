"""Two machines' `make bench` results share every reference point: the committed CPU run of
`quick` (reference + CPU extras) against a second machine's run of the same suite with
`--device cuda` (its header and device fabricated here; the points and their timings are the
CPU file's, scaled, so only the machine differs)."""

from __future__ import annotations

import json
from pathlib import Path

from bench.analysis.compare_hw import cross_hardware
from bench.analysis.plotdata import at_default
from bench.machine.hardware import Hardware, device_resolver_for
from bench.results import PointRecord, load
from bench.suites.suite import load_suite

REPO = Path(__file__).resolve().parents[2]
CPU_FILE = next((REPO / "results" / "amd-epyc-2c-24g-3090c4").glob("*.jsonl"))


def fabricate_gpu_twin(src: Path, dest: Path) -> Path:
    """The same run on a fake one-GPU machine: device cuda, ids recomputed, 10x faster."""
    lines = src.read_text(encoding="utf-8").splitlines()
    head = json.loads(lines[0])
    head["env"] = {**head["env"], "machine_id": "fake-gpu-box", "gpus": [
        {"name": "NVIDIA H200", "memory_bytes": 150_754_820_096, "driver": "580"}]}
    out = [json.dumps(head)]
    for line in lines[1:]:
        rec = json.loads(line)
        if rec.get("kind") != "point":
            continue
        point = {**rec["point"], "device": "cuda"}
        metrics = dict(rec["metrics"])
        if metrics.get("samples_per_s"):
            metrics["samples_per_s"] *= 10
        twin = PointRecord.for_point(point, rec["status"], rec.get("reason"), metrics,
                                     [x / 10 for x in rec["samples_ms"]])
        out.append(json.dumps(twin.to_json()))
    dest.write_text("\n".join(out) + "\n", encoding="utf-8")
    return dest


def test_a_second_machine_shares_every_reference_point(tmp_path):
    gpu = fabricate_gpu_twin(CPU_FILE, tmp_path / "gpu.jsonl")
    table = cross_hardware([load(CPU_FILE)], [load(gpu)])
    shared = {json.dumps(r.config, sort_keys=True) for r in table.rows}
    hw = Hardware(n_gpus=0)
    reference = load_suite("reference", hardware=hw, device_resolver=device_resolver_for(hw))
    assert len(reference.points) == 72
    for p in reference.points:
        # fields added since the file was written are left out at their defaults, as the
        # cross-hardware table leaves them out (plotdata.at_default)
        config = {k: v for k, v in p.to_dict().items()
                  if k != "device" and not at_default(k, v)}
        assert json.dumps(config, sort_keys=True) in shared, p.label()
    # Every pair is a measured ratio of the same work: 10x throughput, by construction.
    ratios = [r.ratios["samples_per_s"] for r in table.rows if r.ratios.get("samples_per_s")]
    assert len(ratios) >= 72 and all(abs(x - 10) < 1e-6 for x in ratios)
