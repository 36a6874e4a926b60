"""Imports go one way: each folder of ``bench/`` imports only the folders in its row below, and no
module imports itself back through others (no circle), whether at the top of a file or inside a
function. The table is the one in README "Layout"; data flows suite -> points -> launch ->
scenarios + meters -> results -> {analysis, gate} (DESIGN.md)."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

# Bottom first. A unit is a folder (package) of bench/ or a top-level module of it; each may
# import itself, the units in its row, and (for every unit) recmodels.config and
# recmodels.errors, the shared vocabulary of model configs and input errors.
MAY_IMPORT: dict[str, set[str]] = {
    "bench.point": set(),
    "bench.meters": set(),
    "bench.results": {"bench.point"},  # the point id rule
    "bench.machine": {"bench.point"},
    "bench.suites": {"bench.point", "bench.machine"},
    "bench.scenarios": {"bench.point", "bench.meters"},
    "bench.launch": {"bench.point", "bench.meters", "bench.results", "bench.machine",
                     "bench.suites", "bench.scenarios"},
    "bench.analysis": {"bench.point", "bench.results", "bench.machine", "bench.suites"},
    "bench.gate": {"bench.point", "bench.meters", "bench.results", "bench.machine",
                   "bench.suites", "bench.scenarios", "bench.launch", "bench.analysis"},
    "bench.cli": {"bench.point", "bench.meters", "bench.results", "bench.machine",
                  "bench.suites", "bench.scenarios", "bench.launch", "bench.analysis",
                  "bench.gate"},
    "bench.__main__": {"bench.cli"},
    "bench": set(),  # bench/__init__.py
}
# The whole model package, beyond config and errors: only where a model is built or trained.
MAY_IMPORT_ALL_RECMODELS = {"bench.scenarios", "bench.cli"}
# config's analytic cost (memory.py is its memory half), errors, the text-file reader, and
# the environment switches (envvars.py: the fingerprint checks them)
SHARED_RECMODELS = {"recmodels.config", "recmodels.memory", "recmodels.errors",
                    "recmodels.textio", "recmodels.envvars"}


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(path: Path, root: Path) -> Iterator[tuple[int, str]]:
    """(line, imported module) for every import statement in the file, lazy ones included, and
    for ``importlib.import_module("...")`` with a literal name. ``from X import Y`` yields
    ``X.Y`` (Y may be a submodule) and the resolver below falls back to ``X``."""
    name = module_name(path, root)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                yield node.lineno, f"{base}.{alias.name}"
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
              and node.func.attr == "import_module" and node.args
              and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
            yield node.lineno, node.args[0].value


def unit_of(module: str) -> str | None:
    """The table row a ``bench`` module belongs to; None outside bench."""
    parts = module.split(".")
    if parts[0] != "bench":
        return None
    if len(parts) == 1:
        return "bench"
    return f"bench.{parts[1]}"


def resolve(imported: str, known: set[str]) -> str | None:
    """The project module an import names (``X.Y`` -> ``X.Y`` if a module, else ``X``)."""
    while imported:
        if imported in known:
            return imported
        imported = imported.rpartition(".")[0]
    return None


def project_modules(root: Path) -> dict[str, Path]:
    files = [*(root / "bench").rglob("*.py"), *(root / "recmodels").rglob("*.py")]
    return {module_name(p, root): p for p in files}


def violations(root: Path) -> list[str]:
    """Every import that runs against the table, as 'file:line: a imports b (why)'."""
    modules = project_modules(root)
    known = set(modules)
    out = []
    for name, path in sorted(modules.items()):
        unit = unit_of(name)
        if unit is None and not name.startswith("recmodels"):
            continue
        for line, imported in imports_of(path, root):
            target = resolve(imported, known)
            if target is None:
                continue  # not ours: stdlib or a third-party package
            where = f"{path.relative_to(root)}:{line}: {name} imports {target}"
            if name.startswith("recmodels"):
                if not target.startswith("recmodels"):
                    out.append(f"{where} (recmodels knows nothing about the harness)")
                continue
            if unit not in MAY_IMPORT:
                out.append(f"{where} ({unit} has no row in the may-import table)")
                continue
            if target.startswith("recmodels"):
                if target not in SHARED_RECMODELS and unit not in MAY_IMPORT_ALL_RECMODELS:
                    out.append(f"{where} (only scenarios and cli build or train models)")
                continue
            target_unit = unit_of(target)
            if target_unit != unit and target_unit not in MAY_IMPORT[unit]:
                out.append(f"{where} ({unit} may import only "
                           f"{', '.join(sorted(MAY_IMPORT[unit])) or 'nothing else in bench'})")
    return out


def import_cycles(root: Path) -> list[list[str]]:
    """Module-level circles (any two modules that reach each other through imports, lazy
    imports included), each as a sorted list of modules; a package importing its own
    submodules (an ``__init__`` facade) is not a circle."""
    modules = project_modules(root)
    known = set(modules)
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for name, path in modules.items():
        for _, imported in imports_of(path, root):
            target = resolve(imported, known)
            if target and target != name and not target.startswith(name + "."):
                graph[name].add(target)
    # Tarjan's strongly connected components, iteratively.
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    cycles: list[list[str]] = []
    counter = 0
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is None:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        top = stack.pop()
                        on_stack.discard(top)
                        component.append(top)
                        if top == node:
                            break
                    if len(component) > 1:
                        cycles.append(sorted(component))
            elif child not in index:
                index[child] = low[child] = counter
                counter += 1
                stack.append(child)
                on_stack.add(child)
                work.append((child, iter(sorted(graph[child]))))
            elif child in on_stack:
                low[node] = min(low[node], index[child])
    return cycles


def test_every_unit_of_bench_has_a_row_and_the_table_has_no_circle():
    units = {unit_of(m) for m in project_modules(REPO) if m.startswith("bench")}
    assert units <= set(MAY_IMPORT), f"no row for {sorted(units - set(MAY_IMPORT))}"
    # The table itself must be a DAG, or "one way" means nothing.
    for unit, allowed in MAY_IMPORT.items():
        for other in allowed:
            assert unit not in MAY_IMPORT[other], f"{unit} and {other} may import each other"


def test_imports_follow_the_table():
    found = violations(REPO)
    assert not found, "imports against the layer table:\n" + "\n".join(found)


def test_no_import_circle():
    assert import_cycles(REPO) == []


# --- the checker catches what it should (planted trees) --------------------------------------


def plant(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    for rel in ("bench/__init__.py", "recmodels/__init__.py"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).touch()
    return root


@pytest.mark.parametrize("importer, statement", [
    ("bench/analysis/plots.py", "from bench.launch.runner import ROOF_DTYPES"),
    ("bench/analysis/plots.py", "def f():\n    from bench.launch import runner\n"),
    ("bench/results/read.py", "from ..gate import compare\n"),
    ("bench/meters/energy.py", "import bench.point\n"),
    ("recmodels/train.py", "from bench.results import load\n"),
    ("bench/analysis/plots.py", "from recmodels import train\n"),
    ("bench/machine/roofs.py", "import importlib\nimportlib.import_module('bench.suites.suite')\n"),
])
def test_a_planted_upward_import_is_reported(tmp_path, importer, statement):
    root = plant(tmp_path, {
        "bench/analysis/__init__.py": "", "bench/launch/__init__.py": "",
        "bench/launch/runner.py": "ROOF_DTYPES = {}\n", "bench/gate/__init__.py": "",
        "bench/gate/compare.py": "", "bench/results/__init__.py": "", "bench/point.py": "",
        "bench/meters/__init__.py": "", "bench/machine/__init__.py": "",
        "bench/suites/__init__.py": "", "bench/suites/suite.py": "",
        "recmodels/train.py": "", "recmodels/config.py": "",
        importer: statement,
    })
    (found,) = violations(root)
    assert found.startswith(f"{importer}:")


def test_allowed_imports_are_not_reported(tmp_path):
    root = plant(tmp_path, {
        "bench/point.py": "from recmodels.config import PRESETS\n",
        "recmodels/config.py": "PRESETS = {}\n",
        "bench/launch/__init__.py": "", "bench/launch/runner.py": "from bench import point\n",
        "bench/analysis/__init__.py": "", "bench/analysis/plots.py": "import numpy\n",
    })
    assert violations(root) == []


def test_a_planted_circle_is_reported(tmp_path):
    root = plant(tmp_path, {
        "bench/gate/__init__.py": "",
        "bench/gate/compare.py": "def f():\n    from bench.gate.compare_report import g\n",
        "bench/gate/compare_report.py": "from bench.gate.compare import f\n",
    })
    assert import_cycles(root) == [["bench.gate.compare", "bench.gate.compare_report"]]
