"""Planted breaks that the test suite must catch: apply each patch to a scratch copy, run the
tests it names, and fail if any break leaves them green.

    .venv/bin/python tests/mutants/run.py            # every patch here
    .venv/bin/python tests/mutants/run.py 03 07      # patches whose name starts with 03 or 07
    make mutants

A patch (``NN-what.patch``) is a ``git diff`` with two header lines before it::

    Break: JAX attention mask replaced by all-True (no causal, no padding mask)
    Tests: tests/recmodels/test_models.py::test_causality tests/recmodels/test_models.py

Each break runs in its own copy of the working tree (tracked and untracked files that git does
not ignore), so the checkout is never modified. A break is *caught* when pytest exits 1 (a test
failed); exit 2-5 (collection error, usage error, no tests) is reported as broken bookkeeping,
not as a catch, because a test that cannot import proves nothing about the break. Before the
breaks, the union of the named tests runs once on an unpatched copy and must pass.
Exit 0: every break caught; 1: a break survived (or the clean run failed); 2: bad input.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]


@dataclass(frozen=True)
class Mutant:
    path: Path
    what: str
    tests: tuple[str, ...]

    @property
    def name(self) -> str:
        return self.path.stem


def parse(path: Path) -> Mutant:
    """The patch's ``Break:`` and ``Tests:`` header lines; ValueError names what is missing."""
    what, tests = None, None
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("diff --git"):
            break
        if line.startswith("Break:"):
            what = line.partition(":")[2].strip()
        elif line.startswith("Tests:"):
            tests = tuple(line.partition(":")[2].split())
    if not what or not tests:
        raise ValueError(f"{path.name}: needs a 'Break: ...' and a 'Tests: ...' line before "
                         "the diff")
    return Mutant(path, what, tests)


def scratch_copy(dest: Path) -> None:
    """The working tree as git sees it (tracked + untracked, not ignored) under ``dest``."""
    listed = subprocess.run(["git", "-C", str(REPO), "ls-files", "-z", "-co",
                             "--exclude-standard"], capture_output=True, check=True).stdout
    for rel in filter(None, listed.decode().split("\0")):
        src = REPO / rel
        if src.is_file():
            target = dest / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, target)


def run_tests(root: Path, tests: tuple[str, ...], timeout_s: float) -> tuple[int, str]:
    """pytest on ``tests`` inside ``root`` (its own bench/ and recmodels/ come first on the
    path: python -m puts the working directory first)."""
    cmd = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *tests]
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    try:
        proc = subprocess.run(cmd, cwd=root, capture_output=True, text=True, timeout=timeout_s,
                              env=env)
    except subprocess.TimeoutExpired:
        return 124, f"timed out after {timeout_s:.0f} s"
    tail = (proc.stdout + proc.stderr).strip().splitlines()
    return proc.returncode, "\n".join(tail[-15:])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("only", nargs="*", help="run the patches whose name starts with these")
    ap.add_argument("--timeout", type=float, default=900.0, help="seconds per pytest run")
    ap.add_argument("--skip-clean", action="store_true",
                    help="do not first check that the named tests pass without any break")
    args = ap.parse_args(argv)
    try:
        mutants = [parse(p) for p in sorted(HERE.glob("*.patch"))]
    except ValueError as e:
        print(f"mutants: {e}", file=sys.stderr)
        return 2
    if args.only:
        mutants = [m for m in mutants if m.name.startswith(tuple(args.only))]
    if not mutants:
        print("mutants: no patch matches" if args.only else "mutants: no patches here",
              file=sys.stderr)
        return 2

    survived: list[str] = []
    with tempfile.TemporaryDirectory(prefix="recbench-mutants-") as tmp:
        if not args.skip_clean:
            clean = Path(tmp) / "clean"
            scratch_copy(clean)
            union = tuple(dict.fromkeys(t for m in mutants for t in m.tests))
            rc, tail = run_tests(clean, union, args.timeout)
            if rc != 0:
                print(f"the named tests fail without any break (pytest exit {rc}):\n{tail}")
                return 1
            print(f"clean: the {len(union)} named test targets pass without a break")
            shutil.rmtree(clean)
        for m in mutants:
            root = Path(tmp) / m.name
            scratch_copy(root)
            applied = subprocess.run(["git", "apply", "--whitespace=nowarn", str(m.path)],
                                     cwd=root, capture_output=True, text=True)
            if applied.returncode != 0:
                print(f"{m.name}: ERROR the patch does not apply: {applied.stderr.strip()}")
                survived.append(m.name)
                continue
            start = time.monotonic()
            rc, tail = run_tests(root, m.tests, args.timeout)
            took = time.monotonic() - start
            if rc == 1:
                failed = [ln for ln in tail.splitlines() if ln.startswith("FAILED")]
                print(f"{m.name}: caught in {took:.0f} s ({m.what})")
                for ln in failed[:3]:
                    print(f"    {ln}")
            else:
                verdict = "SURVIVED" if rc == 0 else f"ERROR (pytest exit {rc})"
                print(f"{m.name}: {verdict} ({m.what})\n{tail}")
                survived.append(m.name)
            shutil.rmtree(root)
    if survived:
        print(f"{len(survived)} of {len(mutants)} breaks not caught: {', '.join(survived)}")
        return 1
    print("the break was caught" if len(mutants) == 1 else f"all {len(mutants)} breaks caught")
    return 0


if __name__ == "__main__":
    sys.exit(main())
