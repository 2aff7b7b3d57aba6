"""Mesh, partition rules and a sharded train step on 8 simulated CPU devices (data=4, fsdp=2)."""

import os
import subprocess
import sys
import textwrap

import jax
import pytest
from jax.sharding import PartitionSpec as P

from vitx.config import ConfigError
from vitx.train import sharding as shd

MULTI_DEVICE_SCRIPT = textwrap.dedent("""
    import jax, jax.numpy as jnp, ml_collections, numpy as np
    from jax.sharding import PartitionSpec as P
    from vitx.models import vit
    from vitx import tasks
    from vitx.train import optim, sharding as shd, state as state_lib, steps

    assert jax.device_count() == 8, jax.devices()
    mesh = shd.make_mesh([("data", 4), ("fsdp", 2), ("model", 1)])
    assert dict(mesh.shape) == {"data": 4, "fsdp": 2, "model": 1}
    c = ml_collections.ConfigDict(dict(
        seed=0, optax_name="adamw", optax={}, lr=1e-3, wd=0.1, total_steps=10,
        schedule=dict(decay_type="cosine", warmup_steps=2), grad_clip_norm=1.0, lr_mults=None,
        sharding_rules=[(".*", "fsdp")]))
    model = vit.Model(10, variant="pico/4")
    shapes = jax.eval_shape(
        lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, 1)))["params"])
    tx = optim.make_optimizer(c, shapes)
    task = tasks.get_task(None, 10)
    spec = {"image": ((8, 8, 1), np.float32), "label": ((), np.int32)}
    state, shardings = state_lib.init_state(c, model, task, tx, spec, mesh, {})
    p = state["params"]
    mlp0 = p["Transformer"]["encoderblock_0"]["MlpBlock_0"]["Dense_0"]["kernel"]
    # fsdp: the largest dim divisible by 2 is sharded over "fsdp"; indivisible leaves replicated.
    assert p["embedding"]["kernel"].sharding.spec == P(None, None, None, "fsdp")
    assert mlp0.sharding.spec == P(None, "fsdp")
    assert p["pos_embedding"].sharding.spec == P(None, None, "fsdp")
    assert p["head"]["bias"].sharding.spec == P("fsdp")  # (10,) divisible by 2
    shard = mlp0.addressable_shards[0]
    assert shard.data.shape == (32, 32), shard.data.shape  # (32, 64) split in 2
    mu = state["opt_state"][1][0].mu  # adamw moments follow their param's rule
    assert mu["embedding"]["kernel"].sharding.spec == P(None, None, None, "fsdp")
    bs = shd.batch_sharding(mesh)
    x = np.random.RandomState(0).randn(16, 8, 8, 1).astype(np.float32)
    y = np.arange(16) % 10
    batch = {"image": jax.make_array_from_process_local_data(bs, x),
             "label": jax.make_array_from_process_local_data(bs, y)}
    assert batch["image"].sharding.spec == P(("data", "fsdp"))
    assert batch["image"].addressable_shards[0].data.shape == (2, 8, 8, 1)
    step = jax.jit(steps.make_train_step(model, tx, task, accum_steps=2),
                   in_shardings=(shardings, bs), out_shardings=(shardings, shd.replicated(mesh)),
                   donate_argnums=(0,))
    losses = []
    for _ in range(5):
        state, m = step(state, batch)
        losses.append(float(m["loss"]))
    assert losses[-1] < losses[0], losses
    assert state["params"]["embedding"]["kernel"].sharding.spec == P(None, None, None, "fsdp")
    assert int(state["step"]) == 5
    # tensor parallel rules on a (data=2, fsdp=1, model=4) mesh
    mesh2 = shd.make_mesh([("data", -1), ("fsdp", 1), ("model", 4)])
    sh = shd.tree_shardings(shapes, mesh2, shd.TENSOR_PARALLEL_RULES)
    blk = sh["Transformer"]["encoderblock_0"]
    assert blk["MlpBlock_0"]["Dense_0"]["kernel"].spec == P(None, "model")
    assert blk["MlpBlock_0"]["Dense_1"]["kernel"].spec == P("model", None)
    assert blk["MultiHeadDotProductAttention_0"]["out"]["kernel"].spec == P()  # 2 heads % 4 != 0
    assert sh["head"]["kernel"].spec == P()
    print("MULTI_DEVICE_OK")
""")


def test_sharded_train_step_on_8_simulated_devices():
    env = dict(os.environ, XLA_FLAGS=os.environ.get("XLA_FLAGS", "")
                                     + " --xla_force_host_platform_device_count=8",
               JAX_PLATFORMS="cpu")
    out = subprocess.run([sys.executable, "-c", MULTI_DEVICE_SCRIPT], env=env,
                         capture_output=True, text=True, timeout=300)
    assert "MULTI_DEVICE_OK" in out.stdout, out.stderr[-3000:]


def test_make_mesh_errors():
    with pytest.raises(ConfigError, match="at most one axis size may be -1"):
        shd.make_mesh([("data", -1), ("fsdp", -1)])
    with pytest.raises(ConfigError, match="multiply to 2 but there are 1 devices"):
        shd.make_mesh([("data", 2), ("fsdp", 1)])


def test_spec_rules_first_match_and_explicit_specs():
    mesh = shd.make_mesh([("data", -1), ("fsdp", 1), ("model", 1)])
    rules = [("head/kernel", (None, "model")), ("head", "replicate"), (".*", "fsdp")]
    assert shd.spec_for("params/head/kernel", (4, 6), mesh, rules) == P(None, "model")
    assert shd.spec_for("params/head/bias", (6,), mesh, rules) == P()
    with pytest.raises(ConfigError, match="rank 2"):
        shd.spec_for("params/head/kernel", (4,), mesh, rules)
    with pytest.raises(ConfigError, match="names mesh axis 'tensor'"):
        shd.spec_for("x", (4,), mesh, [("x", ("tensor",))])
    assert jax.device_count() >= 1


def test_tensor_parallel_rules_fit_scanned_encoders():
    """Per-layer Megatron specs apply to `model.scan=True` params (leading depth axis kept
    unsharded), and to unscanned ones unchanged; other rank mismatches are still errors."""
    mesh = shd.make_mesh([("data", -1), ("fsdp", 1), ("model", 1)])
    rules = shd.TENSOR_PARALLEL_RULES
    name = "params/Transformer/encoderblock{}/MlpBlock_0/Dense_0/{}"
    assert shd.spec_for(name.format("", "kernel"), (12, 8, 32), mesh, rules) == \
        P(None, None, "model")
    assert shd.spec_for(name.format("", "bias"), (12, 32), mesh, rules) == P(None, "model")
    assert shd.spec_for(name.format("_3", "kernel"), (8, 32), mesh, rules) == P(None, "model")
    with pytest.raises(ConfigError, match="rank 1"):
        shd.spec_for(name.format("_3", "bias"), (12, 32), mesh, rules)


def test_fsdp_tensor_parallel_rules_shard_both_axes_of_each_matrix():
    import numpy as np

    mesh = shd.make_mesh([("data", 1), ("fsdp", 1), ("model", 1)])
    rules = [*shd.FSDP_TENSOR_PARALLEL_RULES, (".*", "fsdp")]
    name = "params/Transformer/encoderblock_0/"
    for leaf, shape, want in [
            ("MlpBlock_0/Dense_0/kernel", (8, 32), P("fsdp", "model")),
            ("MlpBlock_0/Dense_1/kernel", (32, 8), P("model", "fsdp")),
            ("MultiHeadDotProductAttention_0/query/kernel", (8, 2, 4), P("fsdp", "model", None)),
            ("MultiHeadDotProductAttention_0/out/kernel", (2, 4, 8), P("model", None, "fsdp"))]:
        spec = shd.spec_for(name + leaf, shape, mesh, rules)
        assert spec == want, leaf
        assert {a for a in spec if a} == {"fsdp", "model"} and np.prod(shape) > 0
