"""Fixtures shared by every test module: the digits TFDS dataset and a compilation cache.

The whole test session (and every process it starts: they inherit the environment) compiles
with XLA's backend optimisation level 0 (`TEST_XLA_FLAGS`): the tests run a few steps of tiny
models, so compiling dominates their time and LLVM's optimisation passes are most of it (about
30 % of a 3-step `vitx train` here). Only speed changes, not what is computed; tests that start
processes with their own `XLA_FLAGS` add to `os.environ["XLA_FLAGS"]` rather than replace it.
"""

import os

#: Set before jax is imported (XLA reads it when the CPU backend starts).
TEST_XLA_FLAGS = "--xla_backend_optimization_level=0"
if TEST_XLA_FLAGS not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {TEST_XLA_FLAGS}".strip()

import jax  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture(scope="session")
def shared_dir(tmp_path_factory: pytest.TempPathFactory):
    """A temporary folder of this test session shared by all its pytest-xdist workers (their
    base temps' parent), so a program one worker compiled is loaded by the other from JAX's
    persistent cache (entries are keyed by the program, devices and flags)."""
    base = tmp_path_factory.getbasetemp()
    d = (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / "shared"
    d.mkdir(exist_ok=True)
    return d


@pytest.fixture(scope="session", autouse=True)
def _user_cache_in_tmp(shared_dir):
    """`XDG_CACHE_HOME` in a temporary folder for the whole session, so the default
    `config.compilation_cache` (`$XDG_CACHE_HOME/vitx/jax`) never writes into the real home
    cache (subprocesses inherit it)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("XDG_CACHE_HOME", str(shared_dir / "xdg_cache"))
        yield


@pytest.fixture(scope="session")
def warm_vitx(tmp_path_factory: pytest.TempPathFactory):
    """A folder holding a `vitx` that starts warm (tests/zygote.py: a fork server that imported
    vitx, JAX and TensorFlow once for this worker): run `warm_vitx/vitx ...` (or put the folder
    first on PATH) wherever a test would start `python -m vitx.cli` only to pay the imports.
    Each command is still its own process, with its own argv, cwd, environment and signals."""
    import zygote

    bin_dir = str(tmp_path_factory.mktemp("warm_vitx"))
    server = zygote.start(bin_dir, dict(os.environ))
    yield bin_dir
    server.terminate()
    server.wait(timeout=60)


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A TFDS data_dir holding the real `digits` dataset, built once per test session."""
    from vitx.data.builders import ensure_built

    d = str(tmp_path_factory.mktemp("tfds"))
    ensure_built("digits", d)
    return d


@pytest.fixture(scope="session")
def multimodal_data_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A TFDS data_dir holding `digits`, `moving_digits` and `dtmf_keys` (PolyViT's image,
    video and audio datasets), built once per test session."""
    from vitx.data.builders import ensure_built

    d = str(tmp_path_factory.mktemp("tfds_multimodal"))
    for name in ("digits", "moving_digits", "dtmf_keys"):
        ensure_built(name, d)
    return d


@pytest.fixture(scope="module")
def compile_cache(tmp_path_factory: pytest.TempPathFactory):
    """A persistent JAX compilation cache for one test module (restored afterwards); modules
    that run many tiny trainings use it with `pytestmark = pytest.mark.usefixtures(...)`."""
    from jax.experimental.compilation_cache import compilation_cache as cc

    d = str(tmp_path_factory.mktemp("jax_cache"))
    names = ("jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs",
             "jax_persistent_cache_min_entry_size_bytes")
    old = {n: getattr(jax.config, n) for n in names}
    jax.config.update("jax_compilation_cache_dir", d)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    cc.reset_cache()
    yield d
    for n, v in old.items():
        jax.config.update(n, v)
    cc.reset_cache()


@pytest.fixture(scope="session")
def scenes_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A TFDS data_dir holding a small `digit_scenes` (the first 48 train / 24 test scenes of
    the real builder's plans), built once per test session (a few seconds, not the full 40 s)."""
    from vitx.data.builders import digit_scenes, ensure_built

    d = str(tmp_path_factory.mktemp("tfds_scenes"))
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(digit_scenes, "SPLIT_SIZES", {"train": 48, "test": 24})
        ensure_built("digit_scenes", d)
    return d


#: Test files that take longest on the 2-core machine (measured: `pytest --durations`), run
#: first so that the workers finish together (the short tests fill the gaps at the end).
#: xdist's loadgroup queue puts the units with more tests first (`--loadscope-reorder`, its
#: default: the module-fixture groups), and keeps this order among units of equal size (the
#: README groups, kill -9, ...); measured on the Xeon at `-n 3`, the three workers ended within
#: 2 s of each other.
SLOW_FIRST = ("test_readme.py", "train/test_kill9.py", "train/test_batch_stats.py",
              "train/test_multitask.py", "train/test_multihost.py", "sweep/",
              "test_bad_input.py", "test_bench.py", "test_scripts.py", "test_predict.py")


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Order the slow files first, and keep every test that uses a module-scoped fixture on one
    pytest-xdist worker (`--dist loadgroup`, as `make test` runs): otherwise each worker would
    build the same module fixture (a trained run) once more. (xdist 3.8 groups by renaming the
    node id, which pytest 9 ignores: hence pytest 8.4 in pyproject.toml; tests/test_xdist_groups.py
    checks that a module fixture is built once.)"""
    def rank(item: pytest.Item) -> int:
        path = item.nodeid.split("::")[0]
        return next((i for i, s in enumerate(SLOW_FIRST) if s in path), len(SLOW_FIRST))
    items.sort(key=rank)  # stable: the order inside a file is kept
    for item in items:
        info = getattr(item, "_fixtureinfo", None)
        defs = info.name2fixturedefs.values() if info else ()
        if any(d and d[-1].scope == "module" for d in defs):
            item.add_marker(pytest.mark.xdist_group(item.nodeid.split("::")[0]))
