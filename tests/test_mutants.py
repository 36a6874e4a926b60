"""The planted breaks of tests/mutants/ stay applicable: each parses and applies cleanly to this
tree (``git apply --check``), and names tests that exist. Running them is ``make mutants``
(tests/mutants/run.py): minutes, so not part of ``make test``."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.mutants.run import HERE, REPO, parse

PATCHES = sorted(HERE.glob("*.patch"))


def test_there_are_planted_breaks():
    assert len(PATCHES) >= 8


@pytest.mark.parametrize("patch", PATCHES, ids=[p.stem for p in PATCHES])
def test_the_patch_applies_and_names_existing_tests(patch: Path):
    mutant = parse(patch)
    check = subprocess.run(["git", "apply", "--check", str(patch)], cwd=REPO,
                           capture_output=True, text=True)
    assert check.returncode == 0, check.stderr
    for target in mutant.tests:
        file = target.split("::")[0]
        assert (REPO / file).is_file(), f"{patch.name} names {target}: no such file"
        if "::" in target:
            name = target.split("::")[-1].split("[")[0]
            assert f"def {name}(" in (REPO / file).read_text(), f"{patch.name}: no test {name}"


def test_a_patch_without_headers_is_refused(tmp_path):
    bad = tmp_path / "99-bad.patch"
    bad.write_text("diff --git a/x b/x\n")
    with pytest.raises(ValueError, match=r"needs a 'Break: \.\.\.' and"):
        parse(bad)
