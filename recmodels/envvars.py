"""Environment variables read here, parsed one way: on/off switches, and JAX_PLATFORMS.

A switch (RECBENCH_KEEP_HOST_MEMORY, RECBENCH_ONEDNN_LINEAR) is on when unset or empty; its
value is read with spaces stripped and in any case: 0, false, off, no turn it off; 1, true,
on, yes keep it on; anything else is an InputError (a typo must not leave a switch on unseen).

JAX_PLATFORMS is JAX's own: the comma-separated platforms it may start (cpu, cuda, rocm, gpu
for either, tpu), exactly as written. A list without the platform a device needs, or one JAX
cannot start, would fail inside JAX (an AssertionError where no listed platform has a device);
``jax_platforms_problem`` says so in one line instead.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from recmodels.errors import InputError

ON = ("1", "true", "on", "yes")
OFF = ("0", "false", "off", "no")


def switch(name: str, environ: Mapping[str, str] | None = None) -> bool:
    """Whether the on/off switch ``name`` is on (the module docstring); environ defaults to the
    process's. Raises InputError naming the variable, its value and the values it takes."""
    environ = os.environ if environ is None else environ
    raw = environ.get(name, "")
    value = raw.strip().lower()
    if value in ("", *ON):
        return True
    if value in OFF:
        return False
    raise InputError(f"{name}={raw!r} is not an on/off value: set it to {', '.join(OFF)} (off) "
                     f"or {', '.join(ON)} (on; also when unset or empty)")


JAX_PLATFORMS = "JAX_PLATFORMS"
# JAX's platform names (and its alias "gpu") -> the device kind they give (cpu | cuda | tpu)
_JAX_KINDS = {"cpu": "cpu", "cuda": "cuda", "rocm": "cuda", "gpu": "cuda", "tpu": "tpu"}


def jax_platforms_problem(kind: str | None = None, *, failed: BaseException | None = None,
                          environ: Mapping[str, str] | None = None) -> str | None:
    """Why JAX_PLATFORMS keeps JAX from running here, in one line, or None (unset or empty:
    JAX picks; or nothing wrong seen). ``kind`` (cpu | cuda | tpu): the device wanted, which
    must be among the listed platforms (another kind, or None, is not checked). ``failed``:
    what JAX raised when it started its backends, which the message quotes (None without it:
    the list alone is checked)."""
    environ = os.environ if environ is None else environ
    value = environ.get(JAX_PLATFORMS, "")
    if not value:
        return None
    listed = {_JAX_KINDS.get(p) for p in value.split(",")}
    fix = (f"unset {JAX_PLATFORMS}, or set it to platforms this machine has (comma-separated "
           f"from {', '.join(_JAX_KINDS)}; e.g. {JAX_PLATFORMS}=cpu)")
    if kind in _JAX_KINDS.values() and kind not in listed:
        return f"{JAX_PLATFORMS}={value!r} does not list {kind}, so jax has no {kind} device: {fix}"
    if failed is None:
        return None
    said = next((ln.strip() for ln in str(failed).splitlines() if ln.strip()), "")
    said = said.split(" (set JAX_PLATFORMS=")[0][:200]  # jax's own advice: ours follows
    why = f" ({type(failed).__name__}: {said})" if said else " (none of them has a device here)"
    return f"{JAX_PLATFORMS}={value!r}: jax could not start the platforms it lists{why}; {fix}"
