"""Where a run's time goes (`vitx.train.profiling`): the profiler trace of `config.profile`,
`data_wait_frac` in the progress rows, the goodput seconds in results.json, run_info.json, and
the persistent compilation cache (a warm cache gives bitwise the same run).

Two runs of the tiny config of test_trainer.py (6 steps, steps 2-4 traced) share one fresh
compilation cache folder: the first fills it, the second loads every program from it.
"""

from __future__ import annotations

import glob
import json
import os
import time

import jax
import pytest
from test_trainer import read_metrics, run_train, tiny_config, train_losses

from vitx import config as config_lib
from vitx import experiment
from vitx.train import profiling, startup
from vitx.utils import checkpoints

# compile_cache: JAX's cache settings are restored after this module (it sets the cache dir,
# and min compile time 0 so that the tiny programs are cached too).
pytestmark = pytest.mark.usefixtures("compile_cache")
PROFILE = "profile={'start_step': 2, 'num_steps': 3}"
SHORT = ["total_steps=6", "checkpoint.every_steps=3"]


def _cache_files(folder: str) -> set[str]:
    return {f for f in os.listdir(folder) if not f.endswith("-atime")}


@pytest.fixture(scope="module")
def runs(data_dir, tmp_path_factory, compile_cache):
    """Runs "a" (cold cache) and "b" (warm cache) of the same config in fresh workdirs:
    {name: (workdir, results, stdout)}, plus the cache's files after each."""
    tmp = tmp_path_factory.mktemp("profiling")
    cache = str(tmp / "jax_cache")
    out: dict = {"cache": cache}
    for name in ("a", "b"):
        workdir = str(tmp / name)
        config = tiny_config(data_dir, *SHORT, PROFILE, f"compilation_cache={cache}")
        results, stdout = run_train(config, workdir)
        out[name] = (workdir, results, stdout)
        out[f"files_{name}"] = _cache_files(cache)
    return out


def test_profile_writes_a_trace_of_the_chosen_steps(runs):
    workdir, _, stdout = runs["a"]
    traces = glob.glob(os.path.join(workdir, "plugins", "profile", "*", "*.xplane.pb"))
    assert traces and os.path.getsize(traces[0]) > 0
    assert "vitx: profile of steps 2..4 written to" in stdout


def test_progress_rows_have_data_wait_frac(runs):
    workdir, _, stdout = runs["a"]
    rows = [m for m in read_metrics(workdir) if "loss" in m]
    assert [m["step"] for m in rows] == list(range(1, 7))
    assert all(0.0 <= m["data_wait_frac"] <= 1.0 for m in rows)
    assert "data_wait_frac=" in stdout
    if jax.devices()[0].memory_stats() is None:  # CPU: no peak reported
        assert not any("peak_memory_gib" in m for m in rows)
    else:
        assert all(m["peak_memory_gib"] > 0 for m in rows)


def test_goodput_parts_are_non_negative_and_sum_to_the_wall_time(runs):
    workdir, results, stdout = runs["a"]
    with open(os.path.join(workdir, "results.json")) as f:
        on_disk = json.load(f)
    assert on_disk == pytest.approx(results)
    parts = {k: v for k, v in on_disk.items()
             if k.startswith("goodput/") and k.endswith("_s") and k != "goodput/wall_s"}
    assert set(parts) == {f"goodput/{p}_s" for p in (*profiling.PARTS, "other")}
    assert all(v >= 0 for v in parts.values()), parts
    wall = on_disk["goodput/wall_s"]
    assert sum(parts.values()) == pytest.approx(wall, rel=0.05)
    for p in ("startup", "compile", "step", "eval", "checkpoint"):
        assert parts[f"goodput/{p}_s"] > 0, p
    assert 0 < on_disk["goodput/train_frac"] < 1
    assert on_disk["train_seconds"] <= wall
    line = [x for x in stdout.splitlines() if x.startswith("vitx: goodput: ")]
    assert len(line) == 1 and "compile" in line[0] and "data wait" in line[0]


def test_run_info_json_says_where_the_run_ran(runs):
    workdir = runs["a"][0]
    with open(os.path.join(workdir, "run_info.json")) as f:
        info = json.load(f)
    assert set(info) >= {"device", "process_count", "versions", "python", "cpu", "hostname"}
    assert info["device"]["platform"] == jax.devices()[0].platform
    assert info["device"]["kind"] and info["device"]["count"] == jax.device_count()
    assert info["process_count"] == 1
    assert set(info["versions"]) >= {"jax", "jaxlib", "flax", "optax", "orbax-checkpoint",
                                     "tensorflow"}
    assert info["versions"]["jax"] == jax.__version__
    assert info["compilation_cache"] == runs["cache"]


def test_a_warm_compilation_cache_gives_bitwise_the_same_run(runs, bitwise_equal):
    (wa, ra, _), (wb, rb, _) = runs["a"], runs["b"]
    assert runs["files_a"], "the cold run wrote no cache entries"
    assert runs["files_b"] == runs["files_a"], "the warm run compiled something again"
    assert train_losses(wa) == train_losses(wb)
    assert ra["test/accuracy"] == rb["test/accuracy"] and ra["test/loss"] == rb["test/loss"]
    bitwise_equal(checkpoints.load_params(wa)[0], checkpoints.load_params(wb)[0])


def test_a_slow_input_pipeline_shows_in_data_wait_frac(data_dir, tmp_path, monkeypatch, runs):
    """Every batch 0.3 s late: most of each logged interval is spent waiting for it."""
    make_streams = startup._streams

    def slow(it):
        for batch in it:
            time.sleep(0.3)
            yield batch

    monkeypatch.setattr(startup, "_streams", lambda *a: {
        k: slow(v) for k, v in make_streams(*a).items()})
    run_train(tiny_config(data_dir, "total_steps=4", "checkpoint.every_steps=0"),
              str(tmp_path / "slow"))
    slowed = [m["data_wait_frac"] for m in read_metrics(str(tmp_path / "slow"))
              if "loss" in m][1:]  # the first row's interval holds the compile
    normal = [m["data_wait_frac"] for m in read_metrics(runs["a"][0]) if "loss" in m][1:]
    assert min(slowed) > 0.5, slowed
    assert sum(slowed) / len(slowed) > sum(normal) / len(normal)


@pytest.mark.parametrize("override, words", [
    ("profile={'start_step': 2}", "profile={'start_step': 2} must be None or dict("),
    ("profile=5", "profile=5 must be None or dict("),
    ("profile={'start_step': -1, 'num_steps': 2}", "profile.start_step=-1 must be an int >= 0"),
    ("profile={'start_step': 1, 'num_steps': 0}", "profile.num_steps=0 must be an int >= 1"),
    ("profile={'start_step': 20, 'num_steps': 1}",
     "profile.start_step=20 is not below total_steps=20"),
    ("compilation_cache=3", "config key 'compilation_cache': cannot set 3 (int)"),
])
def test_a_bad_profile_or_cache_is_a_one_line_config_error(data_dir, tmp_path, override, words):
    workdir = str(tmp_path / "w")
    with pytest.raises(config_lib.ConfigError) as e:
        experiment.train(tiny_config(data_dir, override), workdir)
    assert words in str(e.value) and "\n" not in str(e.value)
    assert not os.path.exists(workdir)


def test_an_empty_compilation_cache_is_a_one_line_config_error(data_dir, tmp_path):
    config = tiny_config(data_dir)
    config.compilation_cache = ""  # (set in a config file; overrides check the type first)
    with pytest.raises(config_lib.ConfigError,
                       match="^compilation_cache='' must be 'auto', a folder or None; "):
        experiment.train(config, str(tmp_path / "w"))


def test_the_default_cache_folder_follows_xdg_cache_home(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert profiling.default_cache_dir() == str(tmp_path / "vitx" / "jax")
    old = jax.config.jax_compilation_cache_dir
    try:
        jax.config.update("jax_compilation_cache_dir", None)
        assert profiling.use_compilation_cache("auto") == str(tmp_path / "vitx" / "jax")
        assert os.path.isdir(tmp_path / "vitx" / "jax")
        assert profiling.use_compilation_cache(None) is None
        assert jax.config.jax_compilation_cache_dir is None
    finally:
        profiling.use_compilation_cache(old)
