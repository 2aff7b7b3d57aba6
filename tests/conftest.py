"""Fixtures shared by every test module: the digits TFDS dataset and a compilation cache."""

import jax
import pytest


@pytest.fixture(scope="session", autouse=True)
def _user_cache_in_tmp(tmp_path_factory: pytest.TempPathFactory):
    """`XDG_CACHE_HOME` in a temporary folder for the whole session, so the default
    `config.compilation_cache` (`$XDG_CACHE_HOME/vitx/jax`) never writes into the real home
    cache (subprocesses inherit it)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("xdg_cache")))
        yield


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A TFDS data_dir holding the real `digits` dataset, built once per test session."""
    from vitx.data.builders import ensure_built

    d = str(tmp_path_factory.mktemp("tfds"))
    ensure_built("digits", d)
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
