"""Test-wide settings: the measuring commands' machine lock lives in a folder of this test
session, so a `make bench` running beside `make test` and the tests never lock each other out
(the lock's own tests point it elsewhere again)."""

import os
import tempfile

os.environ["RECBENCH_LOCK_DIR"] = tempfile.mkdtemp(prefix="recbench-test-locks-")
