"""vitx.train.checkpoint: orbax save/restore round trip, keep-N, latest step, load_params."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from vitx.train import checkpoint as ckpt_lib
from vitx.train import sharding as shd
from vitx.utils import checkpoints, write_json_atomic


def _mesh():
    return shd.make_mesh([("data", -1), ("fsdp", 1), ("model", 1)])


def _state(seed: int, mesh) -> tuple[dict, dict]:
    """A train-state dict like the trainer's (params, adamw opt_state, step, rng), placed on
    `mesh` with a replicated NamedSharding. Returns (state, shardings)."""
    r = np.random.default_rng(seed)
    params = {
        "dense": {"kernel": jnp.asarray(r.standard_normal((4, 3)), jnp.float32),
                  "bias": jnp.asarray(r.standard_normal((3,)), jnp.float32)},
        "emb": jnp.asarray(r.standard_normal((2, 5)), jnp.bfloat16),
    }
    tx = optax.adamw(1e-3, weight_decay=0.1)
    opt_state = tx.init(params)
    # One real update so mu/nu/count are non-trivial (not zeros).
    grads = jax.tree.map(lambda p: jnp.ones_like(p) * (seed + 1), params)
    _, opt_state = tx.update(grads, opt_state, params)
    state = {"params": params, "opt_state": opt_state,
             "step": jnp.asarray(seed, jnp.int32),
             "rng": jnp.asarray([seed, 12345], jnp.uint32)}
    repl = shd.replicated(mesh)
    shardings = jax.tree.map(lambda _: repl, state)
    return jax.device_put(state, shardings), shardings


@pytest.mark.parametrize("async_save", [True, False])
def test_round_trip_keep_n_latest_and_load_params(tmp_path, async_save, bitwise_equal):
    mesh = _mesh()
    directory = str(tmp_path / "checkpoints")
    ck = ckpt_lib.Checkpointer(directory, keep=2, async_save=async_save)
    assert ck.latest_step() is None
    saved = {}
    for step in (10, 20, 30):
        state, shardings = _state(step, mesh)
        meta = {"step": step, "examples_seen": step * 8, "config": {"lr": 1e-3, "x": [1, 2]}}
        assert ck.save(step, state, meta)
        saved[step] = (jax.device_get(state), meta)
    ck.close()

    # keep=2: the oldest step is deleted, the newest two remain (on disk, too).
    assert sorted(d for d in os.listdir(directory) if d.isdigit()) == ["20", "30"]

    # A fresh Checkpointer (as in a new process) sees the same steps.
    ck = ckpt_lib.Checkpointer(directory, keep=2, async_save=async_save)
    assert ck.latest_step() == 30
    assert ck.all_steps() == [20, 30]

    template_state, shardings = _state(0, mesh)
    abstract = ckpt_lib.abstract_like(template_state, shardings)
    for step in (None, 20):
        restored, meta = ck.restore(abstract, step=step)
        want_state, want_meta = saved[30 if step is None else step]
        bitwise_equal(restored, want_state)
        assert meta == want_meta
        for leaf, sharding in zip(jax.tree.leaves(restored), jax.tree.leaves(shardings),
                                  strict=True):
            assert isinstance(leaf, jax.Array)
            assert leaf.sharding == sharding
    ck.close()

    # The resolver: host params of the newest step from a workdir or its checkpoints dir, of
    # a given step from its step dir, relative or absolute, and a subtree of them.
    cwd = os.getcwd()
    try:
        os.chdir(tmp_path)
        for path in (str(tmp_path), directory, ".", "checkpoints", "./checkpoints/"):
            params, meta = checkpoints.load_params(path)
            bitwise_equal(params, saved[30][0]["params"])
            assert meta["step"] == 30
        for path in (os.path.join(directory, "20"), "checkpoints/20"):
            params, meta = checkpoints.load_params(path)
            bitwise_equal(params, saved[20][0]["params"])
            assert meta["step"] == 20
        params, _ = checkpoints.load_params("checkpoints/20:dense")
        bitwise_equal(params, saved[20][0]["params"]["dense"])
        with pytest.raises(ValueError, match=r"subtree 'nope' not found.*\['dense', 'emb'\]"):
            checkpoints.load_params(".:nope")
        assert checkpoints.resolve(".").workdir == str(tmp_path)
    finally:
        os.chdir(cwd)


def test_restore_of_empty_dir_raises(tmp_path):
    ck = ckpt_lib.Checkpointer(str(tmp_path / "ckpts"), keep=2, async_save=False)
    state, shardings = _state(0, _mesh())
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        ck.restore(ckpt_lib.abstract_like(state, shardings))
    ck.close()


def test_resolver_errors_name_the_spec(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="holds no vitx checkpoint") as e:
        checkpoints.resolve(str(empty))
    assert str(empty) in str(e.value)
    # Non-step entries (e.g. orbax's temporary dirs of an unfinished save) do not count.
    (empty / "checkpoints").mkdir()
    (empty / "checkpoints" / "7.orbax-checkpoint-tmp-123").mkdir()
    with pytest.raises(FileNotFoundError, match="holds no vitx checkpoint"):
        checkpoints.load_params(str(empty))
    with pytest.raises(FileNotFoundError, match="nope.npz"):
        checkpoints.resolve(str(tmp_path / "nope.npz"))


def test_home_is_expanded(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "p.npz").write_bytes(b"")
    assert checkpoints.resolve("~/p.npz").path == str(tmp_path / "p.npz")


def test_write_json_atomic(tmp_path):
    path = str(tmp_path / "r.json")
    write_json_atomic(path, {"b": 1, "a": [1.5]})
    write_json_atomic(path, {"c": 2})
    with open(path) as f:
        assert json.load(f) == {"c": 2}
    assert os.listdir(tmp_path) == ["r.json"]


_SAVE_SHARDED = """
import sys
import jax, jax.numpy as jnp, numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
from vitx.train import checkpoint as ckpt_lib
mesh = Mesh(np.array(jax.devices()), ("fsdp",))
n = len(jax.devices())
w = jax.device_put(jnp.arange(4.0 * n).reshape(2 * n, 2), NamedSharding(mesh, P("fsdp")))
ck = ckpt_lib.Checkpointer(sys.argv[1], keep=2, async_save=False)
ck.save(3, {"params": {"w": w}, "step": jnp.int32(3)}, {"step": 3})
ck.close()
"""


def test_load_params_of_checkpoint_saved_on_more_devices(tmp_path):
    n = jax.device_count() + 1  # more devices than this (loading) process has
    env = dict(os.environ, XLA_FLAGS=os.environ.get("XLA_FLAGS", "")
                                     + f" --xla_force_host_platform_device_count={n}",
               JAX_PLATFORMS="cpu")
    subprocess.run([sys.executable, "-c", _SAVE_SHARDED, str(tmp_path / "checkpoints")],
                   env=env, check=True, timeout=120, capture_output=True)
    params, meta = checkpoints.load_params(str(tmp_path))
    assert meta["step"] == 3
    assert isinstance(params["w"], np.ndarray)  # "host numpy tree", per the docstring
    np.testing.assert_array_equal(params["w"], np.arange(4.0 * n).reshape(2 * n, 2))
