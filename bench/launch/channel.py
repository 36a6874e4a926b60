"""The parent side of a worker process: start ``python -m bench.launch.worker FRAMEWORK``
(inside a memory cgroup when given one), talk to it in JSON lines, notice how it died, kill
its whole process group on the way out. The worker side is bench/launch/worker.py."""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import tempfile
import threading
from typing import Any

from bench.launch.memcap import MemoryCap

STARTUP_TIMEOUT_S = 180.0  # importing torch/jax on a cold, busy machine
STDERR_TAIL_CHARS = 2000


class WorkerDied(Exception):
    def __init__(self, returncode: int | None, stderr_tail: str):
        self.returncode, self.stderr_tail = returncode, stderr_tail
        super().__init__(describe_exit(returncode))


class WorkerTimeout(Exception):
    pass


def describe_exit(returncode: int | None) -> str:
    if returncode is None:
        return "worker closed its output without exiting"
    if returncode < 0:
        try:
            return f"killed by signal {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"exited with status {returncode}"


class Worker:
    """One `python -m bench.launch.worker FRAMEWORK` process and its JSON-lines channel,
    inside ``cap``'s cgroup when one is given."""

    def __init__(self, framework: str, env: dict[str, str] | None = None,
                 cap: MemoryCap | None = None):
        self.framework = framework
        self._stderr = tempfile.TemporaryFile(mode="w+b")  # noqa: SIM115 - closed in kill()
        worker_env = {**os.environ, **(env or {})}
        # JAX grabs 75% of GPU memory up front by default; allocate on demand instead so the
        # memory counters and the OOM frontier reflect what each point needs.
        worker_env.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
        worker_env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        worker_env["RECBENCH_PARENT_PID"] = str(os.getpid())  # it ends if we die (worker.py)
        argv = [sys.executable, "-m", "bench.launch.worker", framework]
        self.proc = subprocess.Popen(
            cap.wrap(argv) if cap is not None else argv,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr,
            env=worker_env, start_new_session=True,  # Ctrl-C reaches the runner only
        )
        self._lines: queue.Queue[bytes | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        try:
            self._receive(STARTUP_TIMEOUT_S)  # {"event": "ready"}
        except BaseException:  # no Worker is returned, so nobody else could kill this one
            self.kill()
            raise

    def _read(self) -> None:
        for line in self.proc.stdout:  # type: ignore[union-attr]
            self._lines.put(line)
        self._lines.put(None)

    def _receive(self, timeout_s: float) -> dict[str, Any]:
        try:
            line = self._lines.get(timeout=timeout_s)
        except queue.Empty:
            raise WorkerTimeout(f"no reply within {timeout_s:.0f} s") from None
        if line is None:
            try:
                code = self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                code = None
            raise WorkerDied(code, self.stderr_tail())
        return json.loads(line)

    def request(self, msg: dict[str, Any], timeout_s: float) -> dict[str, Any]:
        try:
            self.proc.stdin.write((json.dumps(msg) + "\n").encode())  # type: ignore[union-attr]
            self.proc.stdin.flush()  # type: ignore[union-attr]
        except (BrokenPipeError, OSError):
            pass  # the reader sees the EOF and reports how the worker died
        return self._receive(timeout_s)

    def stderr_tail(self, limit: int = STDERR_TAIL_CHARS) -> str:
        self._stderr.flush()
        self._stderr.seek(0, os.SEEK_END)
        size = self._stderr.tell()
        self._stderr.seek(max(0, size - limit))
        return self._stderr.read().decode(errors="replace").strip()

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        self._stderr.close()

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.proc.stdin.write(b'{"cmd": "exit"}\n')  # type: ignore[union-attr]
                self.proc.stdin.close()  # type: ignore[union-attr]
                self.proc.wait(timeout=30)
            except (OSError, subprocess.TimeoutExpired):
                pass
        self.kill()
