"""SIGTERM and SIGHUP stop a command the way Ctrl-C does.

A scheduler's SIGTERM or a closed terminal's SIGHUP used to end ``recbench run`` on the spot:
no summary, no resume hint, and a worker left measuring with init as its parent. Inside
:func:`stop_signals_as_interrupt` both raise :class:`Stopped`, a KeyboardInterrupt, so every
path that already cleans up after Ctrl-C (records on disk, workers killed, the resume hint)
runs for them too; the command then exits ``128 + signal number`` (143 for SIGTERM, 129 for
SIGHUP, 130 for Ctrl-C), the shell's convention.
"""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Iterator

STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP)


class Stopped(KeyboardInterrupt):
    """Raised in the main thread when a stop signal arrives; ``signum`` says which."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def exit_code(exc: BaseException) -> int:
    """128 + the signal that stopped the command (SIGINT for a plain KeyboardInterrupt)."""
    return 128 + int(getattr(exc, "signum", signal.SIGINT))


def _raise_stopped(signum: int, _frame: object) -> None:
    raise Stopped(signum)


@contextlib.contextmanager
def stop_signals_as_interrupt() -> Iterator[None]:
    """Turn SIGTERM and SIGHUP into :class:`Stopped` for the ``with`` body (main thread
    only; elsewhere a no-op), then put the previous handlers back."""
    previous = {}
    try:
        for sig in STOP_SIGNALS:
            previous[sig] = signal.signal(sig, _raise_stopped)
    except ValueError:  # not the main thread: signals cannot be handled here
        pass
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
