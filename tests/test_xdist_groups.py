"""`make test` runs `pytest -n 3 --dist loadgroup`: the conftest hook marks every test that uses
a module-scoped fixture (a trained run, built once) with its file as `xdist_group`, so that
pytest-xdist sends the whole file to one worker and the fixture is built once. pytest 9 made
xdist 3.8's loadgroup a silent no-op (xdist renames `item._nodeid`, which pytest 9 no longer
reads), and every such fixture was built on both workers; hence the pinned pytest. This runs the
real hook on a tiny suite and counts the builds."""

from __future__ import annotations

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_CONFTEST = """
import importlib.util
spec = importlib.util.spec_from_file_location("vitx_conftest", {path!r})
mod = importlib.util.module_from_spec(spec)
spec.loader.exec_module(mod)
pytest_collection_modifyitems = mod.pytest_collection_modifyitems
"""

_SLOW = """
import os, time, pytest

@pytest.fixture(scope="module")
def built():
    with open(os.path.join({log!r}, os.environ["PYTEST_XDIST_WORKER"]), "a") as f:
        f.write("built\\n")
    time.sleep(1.0)
    return 1

@pytest.mark.parametrize("i", range(6))
def test_uses_it(built, i):
    time.sleep(0.2)
"""

_FAST = """
import time, pytest

@pytest.mark.parametrize("i", range(20))
def test_fast(i):
    time.sleep(0.05)
"""


def test_a_module_fixture_is_built_once_under_loadgroup(tmp_path):
    suite, log = tmp_path / "suite", tmp_path / "log"
    suite.mkdir()
    log.mkdir()
    (suite / "conftest.py").write_text(
        _CONFTEST.format(path=os.path.join(ROOT, "tests", "conftest.py")))
    (suite / "test_slow.py").write_text(_SLOW.format(log=str(log)))
    (suite / "test_fast.py").write_text(_FAST)
    out = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-n", "2", "--dist", "loadgroup",
         "-p", "no:cacheprovider", str(suite)],
        cwd=str(tmp_path), capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    builds = {f: (log / f).read_text().count("built") for f in os.listdir(log)}
    assert sum(builds.values()) == 1, builds
