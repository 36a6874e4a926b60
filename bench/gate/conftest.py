"""pytest options of the pytest-benchmark front door, bench/gate/test_bench.py.

``pytest bench/gate/ --benchmark-only [--recbench-suite ci] [--recbench-set KEY=VALUE ...]``
runs the points of a suite (``recbench run``'s suite names, paths and ``--set`` overrides, with
"auto" devices resolved as ``recbench run`` resolves them). ``make test`` never collects this
directory: pytest's testpaths is ``tests``.
"""

from __future__ import annotations

import functools

import pytest

from recmodels.errors import InputError


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("recbench", "recbench suite as pytest-benchmark benchmarks")
    group.addoption("--recbench-suite", default="ci", metavar="NAME|PATH",
                    help="suite whose points become benchmarks (default: ci)")
    group.addoption("--recbench-set", action="append", default=[], metavar="KEY=VALUE",
                    help="suite override as in `recbench run --set`, e.g. framework=torch")


@functools.lru_cache(maxsize=4)
def _load(name: str, overrides: tuple[str, ...]):
    from bench.machine.hardware import detect_hardware, device_resolver_for
    from bench.suites.suite import load_suite

    hardware = detect_hardware()
    try:
        return load_suite(name, overrides=overrides, hardware=hardware,
                          device_resolver=device_resolver_for(hardware))
    except InputError as e:
        raise pytest.UsageError(f"--recbench-suite/--recbench-set: {e}") from None


def recbench_suite_for(config: pytest.Config):
    return _load(config.getoption("--recbench-suite"),
                 tuple(config.getoption("--recbench-set")))


def pytest_configure(config: pytest.Config) -> None:
    recbench_suite_for(config)  # a bad suite or override is a usage error (exit 4), up front


@pytest.fixture(scope="session")
def recbench_suite(request: pytest.FixtureRequest):
    """The loaded suite (its ``measure`` sets rounds and warm-up)."""
    return recbench_suite_for(request.config)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "recbench_point" in metafunc.fixturenames:
        points = recbench_suite_for(metafunc.config).points
        metafunc.parametrize("recbench_point", points, ids=[p.label() for p in points])
