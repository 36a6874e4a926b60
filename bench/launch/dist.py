"""Launching distributed points with torchrun (``python -m torch.distributed.run``).

A point with ``parallel`` "dp" or "fsdp" runs as ``world_size`` ranks, one device each,
``world_size / nodes`` per host. The worker that got the point starts torchrun, which starts
the ranks (bench/launch/rank.py), watches them and, with ``--max-restarts=0``, stops every
rank as soon as one fails; rank 0 writes the point's one record. JAX points are started the
same way: torchrun only starts processes and sets RANK / WORLD_SIZE / MASTER_ADDR /
MASTER_PORT, and JAX's own distributed runtime (jax.distributed) does the rest, its
coordinator on MASTER_PORT + 1.

Nothing hangs: every collective of a rank times out (the process group's timeout), the
launcher kills torchrun past the point's limit, and ranks die with their torchrun agent
(PR_SET_PDEATHSIG). A rank killed mid-step ends the point as ``crashed`` and the sweep goes
on.

Multi-node: run the same ``recbench run`` on every host with ``--nnodes N --node-rank R
--rdzv-endpoint HOST:PORT`` (HOST reachable from all, PORT and PORT + 1 free on it); the
runner passes them here in RECBENCH_RDZV. Node 0 writes the records of multi-node points;
the other nodes take part in them and write none.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.point import Measure, Point, device_kind
from recmodels.errors import InputError

RDZV_ENV = "RECBENCH_RDZV"  # "NNODES,NODE_RANK,HOST:PORT", set by `recbench run --nnodes ...`
KILL_GRACE_S = 10.0  # the launcher's limit is the point's less this, so it reports first
LOG_TAIL_CHARS = 1500


@dataclass(frozen=True)
class Rendezvous:
    """Where the ranks of a multi-node point meet: ``nnodes`` hosts, this one ``node_rank``,
    torch's TCP store at ``host:port`` (JAX's coordinator at ``port + 1``)."""

    nnodes: int = 1
    node_rank: int = 0
    host: str = "127.0.0.1"
    port: int | None = None  # None: a free local port per point (one host)

    @classmethod
    def parse(cls, nnodes: int, node_rank: int, endpoint: str | None) -> Rendezvous:
        """From ``recbench run --nnodes --node-rank --rdzv-endpoint``; InputError when bad."""
        if nnodes < 1:
            raise InputError(f"--nnodes {nnodes}: the hosts in the job, 1 or more")
        if not 0 <= node_rank < nnodes:
            raise InputError(f"--node-rank {node_rank} must be in 0..{nnodes - 1} "
                             f"for --nnodes {nnodes}")
        if nnodes == 1:
            if endpoint or node_rank:
                raise InputError("--rdzv-endpoint and --node-rank are for multi-node runs: "
                                 "add --nnodes N (the number of hosts)")
            return cls()
        if not endpoint:
            raise InputError(f"--nnodes {nnodes} needs --rdzv-endpoint HOST:PORT, the same on "
                             "every node (PORT and PORT+1 free on HOST)")
        m = re.fullmatch(r"\[?([^\s\]]+?)\]?:(\d{1,5})", endpoint or "")
        if not m or not 0 < int(m.group(2)) < 65535:  # PORT + 1 (JAX's coordinator) too
            raise InputError(f"--rdzv-endpoint {endpoint!r}: write HOST:PORT (the same on "
                             f"every node; PORT and PORT+1 free on HOST) for --nnodes {nnodes}")
        return cls(nnodes, node_rank, m.group(1), int(m.group(2)))

    def to_env(self) -> str:
        return f"{self.nnodes},{self.node_rank},{self.host}:{self.port or 0}"

    @classmethod
    def from_env(cls, text: str | None = None) -> Rendezvous:
        text = os.environ.get(RDZV_ENV, "") if text is None else text
        if not text:
            return cls()
        nnodes, node_rank, endpoint = text.split(",", 2)
        host, _, port = endpoint.rpartition(":")
        return cls(int(nnodes), int(node_rank), host, int(port) or None)


def free_port_pair(host: str = "127.0.0.1") -> int:
    """A port P with P and P + 1 free on ``host`` now (torch's store, JAX's coordinator)."""
    for _ in range(50):
        with socket.socket() as a:
            a.bind((host, 0))
            port = a.getsockname()[1]
            if port >= 65535:
                continue
            with socket.socket() as b:
                try:
                    b.bind((host, port + 1))
                except OSError:
                    continue
            return port
    raise OSError("no two consecutive free ports found")


def torchrun_argv(entry: list[str], *, nproc_per_node: int, rdzv: Rendezvous,
                  port: int) -> list[str]:
    """torchrun's command line for ``entry`` (``["-m", module, args...]``)."""
    return [sys.executable, "-m", "torch.distributed.run", f"--nnodes={rdzv.nnodes}",
            f"--nproc-per-node={nproc_per_node}", f"--node-rank={rdzv.node_rank}",
            f"--master-addr={rdzv.host}", f"--master-port={port}", "--max-restarts=0",
            "--monitor-interval=0.5", *entry]


def rank_env(point: Point, nproc_per_node: int) -> dict[str, str]:
    """The ranks' environment: on CPU the host's cores split evenly between its ranks (so a
    1-rank baseline gets them all, as a one-process point does), not torchrun's default of
    one thread each."""
    env = {**os.environ}
    if device_kind(point.device) == "cpu":
        try:
            cores = len(os.sched_getaffinity(0))
        except (AttributeError, OSError):
            cores = os.cpu_count() or 1
        env["OMP_NUM_THREADS"] = str(max(1, cores // nproc_per_node))
    env.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    env.pop("RECBENCH_PARENT_PID", None)  # a rank's parent is its torchrun agent
    return env


def _die_with_parent() -> None:  # preexec: torchrun ends when the worker that started it does
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL(None).prctl(1, int(signal.SIGKILL), 0, 0, 0)  # PR_SET_PDEATHSIG


def ranks_reason(point: Point) -> str | None:
    """Why this host cannot hold the point's ranks (one device each), or None: a GPU per
    rank, a core per CPU rank."""
    per_host, kind = point.world_size // point.nodes, device_kind(point.device)
    if kind == "cuda":
        if point.framework == "torch":
            import torch

            have = torch.cuda.device_count()
        else:
            import jax

            have = len(jax.local_devices(backend="gpu")) if jax.default_backend() == "gpu" else 0
        what = "GPUs"
    elif kind == "cpu":
        have, what = host_devices("cpu"), "cores"
    else:
        return f"{kind} points run in one process here (torchrun starts CPU and CUDA ranks)"
    if per_host > have:
        return (f"{per_host} ranks per host need {per_host} {what}, one each; this host has "
                f"{have}")
    return None


FAILURE_RE = re.compile(r"rank\s*:\s*(\d+)[^\n]*\n\s*exitcode\s*:\s*(-?\d+)")
PEER_LOST = ("Connection reset by peer", "Connection closed by peer", "Broken pipe",
             "Socket closed", "DEADLINE_EXCEEDED", "timed out", "Timeout")


def rank_failures(log: str) -> dict[int, int]:
    """Every failed rank torchrun lists (its "Failures" and "Root Cause" blocks) -> its exit
    code (negative: the signal that killed it)."""
    return {int(r): int(c) for r, c in FAILURE_RE.findall(log)}


def _how(code: int) -> str:
    if code >= 0:
        return f"exited with status {code}"
    try:
        return f"killed by signal {signal.Signals(-code).name}"
    except ValueError:
        return f"killed by signal {-code}"


def failure_summary(log: str) -> str:
    """What torchrun says failed, in one line: a rank killed by a signal first (the others
    then fail on the lost connection), else the root-cause rank and how it ended."""
    failures = rank_failures(log)
    root = rank_failures(log[log.find("Root Cause"):]) if "Root Cause" in log else {}
    # torchrun stops the survivors with SIGTERM (then SIGKILL): its root cause, when killed
    # by a signal, is the rank that died first; else a rank killed otherwise than by SIGTERM
    killed = sorted((r for r, c in failures.items() if c < 0),
                    key=lambda r: (r not in root, failures[r] == -signal.SIGTERM, r))
    if killed:
        return f"rank {killed[0]} {_how(failures[killed[0]])}"
    if root or failures:
        rank, code = next(iter((root or failures).items()))
        return f"rank {rank} {_how(code)}"
    return "torchrun reported a failure it did not attribute to a rank"


def own_failure(replies: dict[int, dict[str, Any]], failures: dict[int, int]
                ) -> dict[str, Any] | None:
    """The reply that says why the job failed, or None when a rank died without one: no
    rank killed by a signal, then a rank's own failure before one that lost its peers."""
    if any(c < 0 and r not in replies for r, c in failures.items()):
        return None  # killed mid-step: the others' errors are about the lost connection
    ranked = sorted(replies.items(), key=lambda kv: (
        any(m in str(kv[1].get("reason")) for m in PEER_LOST), kv[0]))
    for rank, reply in ranked:
        if reply.get("status") != "ok":
            return {**reply, "reason": f"rank {rank}: {reply.get('reason')}"}
    return None


def launch_point(point: Point, measure: Measure, *, rdzv: Rendezvous | None = None,
                 timeout_s: float | None = None) -> dict[str, Any]:
    """Run ``point`` as its ranks and return its reply (the worker's reply shape: status,
    reason, metrics, samples_ms, extra). Never raises for the point's own failures."""
    rdzv = rdzv or Rendezvous.from_env()
    if point.nodes == 1:  # a one-host point runs on this host, whatever the run's nodes
        rdzv = Rendezvous()
    elif point.nodes != rdzv.nnodes:
        return {"status": "unsupported", "reason": (
            f"a {point.nodes}-node point needs `recbench run --nnodes {point.nodes} --node-rank "
            f"R --rdzv-endpoint HOST:PORT` on each of its nodes; this run has "
            f"{rdzv.nnodes} node(s)")}
    nproc = point.world_size // point.nodes
    limit = max(1.0, (timeout_s or measure.timeout_s) - KILL_GRACE_S)
    port = rdzv.port or free_port_pair(rdzv.host)
    with tempfile.TemporaryDirectory(prefix="recbench-ranks-") as tmp, \
            tempfile.TemporaryFile(mode="w+b") as log:
        out = Path(tmp)
        entry = ["-m", "bench.launch.rank", "--point", json.dumps(point.to_dict()),
                 "--measure", json.dumps(measure.__dict__), "--out", str(out)]
        proc = subprocess.Popen(torchrun_argv(entry, nproc_per_node=nproc, rdzv=rdzv, port=port),
                                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                env=rank_env(point, nproc), preexec_fn=_die_with_parent)
        try:
            rc = proc.wait(timeout=limit)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGTERM)  # torchrun stops its ranks on SIGTERM
            try:
                proc.wait(timeout=KILL_GRACE_S / 2)
            except subprocess.TimeoutExpired:
                proc.kill()  # its ranks follow (PR_SET_PDEATHSIG)
                proc.wait()
            where = (f"; a {point.nodes}-node point waits for every node: check that all "
                     f"{point.nodes} started it with the same --rdzv-endpoint"
                     if point.nodes > 1 else "")
            return {"status": "timeout", "reason": (
                f"{point.world_size} ranks gave no result within {limit:g} s (the point's "
                f"limit less a grace); torchrun and its ranks stopped{where}")}
        log.seek(0)
        text = log.read().decode(errors="replace")
        first = out / "rank0.json"
        reply = json.loads(first.read_text(encoding="utf-8")) if first.is_file() else {}
        if reply.get("status") == "ok":  # measured; a failure after it is in teardown
            if rc != 0:
                reply.setdefault("extra", {})["teardown"] = (
                    f"{failure_summary(text)} after rank 0 wrote the result (torchrun exited "
                    f"with status {rc})")
            return reply
        if rc == 0 and rdzv.node_rank != 0:
            return {"status": "remote", "reason": "measured and written by node 0"}
        replies = {int(p.stem[4:]): json.loads(p.read_text(encoding="utf-8"))
                   for p in out.glob("rank*.json")}
        own = own_failure(replies, rank_failures(text))
        if own is not None:  # a rank that failed on its own and said why
            return own
        return {"status": "crashed",
                "reason": f"{failure_summary(text)} (torchrun exited with status {rc})",
                "extra": {"exit_status": rc, "log_tail": text[-LOG_TAIL_CHARS:].strip()}}


INTERCONNECT_TIMEOUT_S = 300.0


def host_devices(kind: str, env: dict[str, Any] | None = None) -> int:
    """Devices one host offers ranks of ``kind``: its GPUs (from the run's env), its cores."""
    if kind == "cuda":
        return len((env or {}).get("gpus") or [])
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def interconnect_jobs(points: list[Point], env: dict[str, Any] | None = None
                      ) -> dict[tuple[str, str], int]:
    """(framework, device kind) -> ranks on this host, for the suite's points with two or
    more ranks on one host that this host can hold: the interconnect roof is measured where
    and how those points communicate. (Across nodes it is not measured.) JAX has no FSDP or
    table-wise points to serve."""
    jobs: dict[tuple[str, str], int] = {}
    for p in points:
        per_host, kind = p.world_size // p.nodes, device_kind(p.device)
        if (not p.distributed or p.nodes > 1 or per_host < 2 or kind not in ("cpu", "cuda")
                or per_host > host_devices(kind, env)
                or (p.framework == "jax" and (p.parallel == "fsdp"
                                              or p.sharding == "table-wise"))):
            continue
        key = (p.framework, kind)
        jobs[key] = max(jobs.get(key, 0), per_host)
    return jobs


def measure_interconnect(points: list[Point], env: dict[str, Any] | None = None, *,
                         timeout_s: float = INTERCONNECT_TIMEOUT_S, log=print) -> dict[str, Any]:
    """The interconnect roof (bench/machine/interconnect.py: all-reduce and all-to-all bus
    bandwidth over message sizes) for each framework and device kind the suite's multi-rank
    points use, with as many local ranks as the largest of them, through the same backend
    (torch: gloo on CPU, NCCL on GPUs; JAX: its distributed runtime). Keys
    "<framework>/<kind>/<ranks>"; a measurement that fails is {"reason": ...}."""
    from bench.machine.interconnect import launch_argv

    found: dict[str, Any] = {}
    for (framework, kind), nproc in sorted(interconnect_jobs(points, env).items()):
        key = f"{framework}/{kind}/{nproc}"
        log(f"measuring the interconnect roof ({framework}, {nproc} ranks on {kind}) ...")
        with tempfile.TemporaryDirectory(prefix="recbench-busbw-") as tmp, \
                tempfile.TemporaryFile(mode="w+b") as log_file:
            out = Path(tmp) / "busbw.json"
            argv = launch_argv(framework, nproc, free_port_pair(), out)
            probe = Point(framework=framework, workload="train", preset="tiny", batch_size=nproc,
                          precision="fp32", device=kind, parallel="dp", world_size=nproc)
            try:
                rc = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=log_file,
                                    stderr=subprocess.STDOUT, env=rank_env(probe, nproc),
                                    preexec_fn=_die_with_parent, timeout=timeout_s).returncode
            except subprocess.TimeoutExpired:
                found[key] = {"reason": f"no result within {timeout_s:g} s"}
                continue
            if rc == 0 and out.is_file():
                found[key] = json.loads(out.read_text(encoding="utf-8"))
            else:
                log_file.seek(0)
                text = log_file.read().decode(errors="replace")
                found[key] = {"reason": f"{failure_summary(text)}: {text[-300:].strip()}"}
                log(f"interconnect roof {key} could not be measured ({found[key]['reason']})")
    return found
