"""Environment variables parsed one way (recmodels/envvars.py): the on/off switches, and
JAX_PLATFORMS named in one line where it keeps jax from a device."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from recmodels.envvars import jax_platforms_problem, switch
from recmodels.errors import InputError

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("value", ["0", "false", "off", "no", " 0", "0 ", "FALSE", "Off", "NO\n"])
def test_a_switch_is_off(value):
    assert switch("X_SWITCH", {"X_SWITCH": value}) is False


@pytest.mark.parametrize("value", [None, "", "  ", "1", "true", "on", "yes", " 1", "TRUE", "Yes"])
def test_a_switch_is_on(value):
    assert switch("X_SWITCH", {} if value is None else {"X_SWITCH": value}) is True


@pytest.mark.parametrize("value", ["banana", "2", "-1", "disable", "0 0"])
def test_a_switch_refuses_other_values_naming_variable_value_and_choices(value):
    with pytest.raises(InputError) as e:
        switch("X_SWITCH", {"X_SWITCH": value})
    msg = str(e.value)
    assert msg.startswith(f"X_SWITCH={value!r} is not an on/off value")
    for accepted in ("0", "false", "off", "no", "1", "true", "on", "yes"):
        assert f"{accepted}," in msg or f"{accepted} (" in msg
    assert "\n" not in msg


def test_a_switch_reads_the_process_environment(monkeypatch):
    monkeypatch.setenv("X_SWITCH", "off")
    assert switch("X_SWITCH") is False
    monkeypatch.delenv("X_SWITCH")
    assert switch("X_SWITCH") is True


# --- JAX_PLATFORMS -----------------------------------------------------------------------------


def test_jax_platforms_unset_or_listing_the_device_is_no_problem():
    assert jax_platforms_problem("cpu", environ={}) is None
    assert jax_platforms_problem("cpu", environ={"JAX_PLATFORMS": ""}) is None
    assert jax_platforms_problem("cpu", environ={"JAX_PLATFORMS": "cpu"}) is None
    assert jax_platforms_problem("cuda", environ={"JAX_PLATFORMS": "cuda,cpu"}) is None
    assert jax_platforms_problem("cuda", environ={"JAX_PLATFORMS": "gpu"}) is None
    assert jax_platforms_problem("tpu", environ={"JAX_PLATFORMS": "tpu"}) is None
    assert jax_platforms_problem(None, environ={"JAX_PLATFORMS": "bogus"}) is None  # jax decides
    assert jax_platforms_problem("mps", environ={"JAX_PLATFORMS": "cpu"}) is None  # not jax's
    # with jax's failure to quote, but nothing set: not JAX_PLATFORMS's doing
    assert jax_platforms_problem("cpu", failed=RuntimeError("x"), environ={}) is None


@pytest.mark.parametrize("value, kind", [("cuda", "cpu"), ("bogus", "cpu"), ("cpu", "cuda"),
                                         ("CPU", "cpu"), ("cpu", "tpu")])
def test_jax_platforms_without_the_device_is_named(value, kind):
    msg = jax_platforms_problem(kind, environ={"JAX_PLATFORMS": value})
    assert msg.startswith(f"JAX_PLATFORMS={value!r} does not list {kind}")
    assert "unset JAX_PLATFORMS" in msg and "\n" not in msg


def test_jax_platforms_that_jax_cannot_start_quote_jax():
    env = {"JAX_PLATFORMS": "bogus"}
    err = RuntimeError("Unable to initialize backend 'bogus': Backend 'bogus' is not in the "
                       "list of known backends: ['cpu', 'tpu']. (set JAX_PLATFORMS='' to "
                       "automatically choose an available backend)\nsecond line")
    msg = jax_platforms_problem(failed=err, environ=env)
    assert msg.startswith("JAX_PLATFORMS='bogus': jax could not start the platforms it lists "
                          "(RuntimeError: Unable to initialize backend 'bogus'")
    assert "second line" not in msg and "set JAX_PLATFORMS=''" not in msg
    assert "unset JAX_PLATFORMS" in msg
    # jax asserts where no listed platform has a device (JAX_PLATFORMS=cuda, no GPU)
    msg = jax_platforms_problem(failed=AssertionError(), environ={"JAX_PLATFORMS": "cuda"})
    assert msg.startswith("JAX_PLATFORMS='cuda': jax could not start the platforms it lists "
                          "(none of them has a device here); unset JAX_PLATFORMS")


def test_train_resolve_device_names_jax_platforms(monkeypatch):
    import jax

    from recmodels.train import resolve_device

    jax.devices()  # jax reads JAX_PLATFORMS when imported: started here before it is set
    monkeypatch.setenv("JAX_PLATFORMS", "cuda")
    with pytest.raises(InputError, match=r"^JAX_PLATFORMS='cuda' does not list cpu"):
        resolve_device("jax", "cpu")
    assert resolve_device("torch", "cpu") == "cpu"  # torch does not read it


def _no_gpu_here() -> bool:
    return not (Path("/dev/nvidiactl").exists() or Path("/dev/kfd").exists())


@pytest.mark.parametrize("value", [
    "bogus",
    pytest.param("cuda", marks=pytest.mark.skipif(not _no_gpu_here(), reason="a GPU is here")),
])
def test_cli_train_with_jax_platforms_jax_cannot_start_is_one_line_exit_2(value):
    """In a process of its own: a failed backend start leaves jax unusable for the process
    (the second try is a bare AssertionError)."""
    env = {**os.environ, "JAX_PLATFORMS": value}
    r = subprocess.run([sys.executable, "-m", "bench", "train", "--framework", "jax",
                        "--epochs", "1"], capture_output=True, text=True, timeout=300, env=env,
                       cwd=ROOT)
    assert r.returncode == 2 and r.stdout == "", r.stderr
    (line,) = r.stderr.strip().splitlines()
    assert line.startswith(f"recbench train: error: JAX_PLATFORMS={value!r}: jax could not "
                           "start the platforms it lists")
    assert "unset JAX_PLATFORMS" in line and "Traceback" not in r.stderr
