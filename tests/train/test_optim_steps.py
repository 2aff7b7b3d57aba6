"""optax from config, lr schedules, grad accumulation, freezing."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from vitx import tasks
from vitx.config import ConfigError
from vitx.models import vit
from vitx.train import distill, optim, steps

TASK = tasks.get_task(None, 5)


def cfg(**kw):
    c = ml_collections.ConfigDict(dict(
        optax_name="adamw", optax={}, lr=1e-2, wd=0.1, total_steps=100,
        schedule=dict(decay_type="cosine", warmup_steps=10), grad_clip_norm=1.0,
        lr_mults=None))
    c.update(kw)
    return c


def tiny():
    m = vit.Model(5, variant="pico/4", head_zeroinit=False)
    x = jax.random.normal(jax.random.PRNGKey(0), (8, 8, 8, 3))
    labels = jax.random.randint(jax.random.PRNGKey(1), (8,), 0, 5)
    params = m.init(jax.random.PRNGKey(2), x)["params"]
    return m, params, {"image": x, "label": labels}


@pytest.mark.parametrize("decay", ["cosine", "linear", "rsqrt", "constant"])
def test_schedule_warmup_and_decay(decay):
    s = optim.make_schedule(cfg(schedule=dict(decay_type=decay, warmup_steps=10)))
    np.testing.assert_allclose([s(0), s(5), s(10)], [0.0, 5e-3, 1e-2], rtol=1e-6)
    if decay in ("cosine", "linear"):
        assert abs(float(s(100))) < 1e-8
        assert float(s(55)) == pytest.approx(5e-3, rel=1e-5)  # halfway through the decay
    if decay == "constant":
        assert float(s(90)) == pytest.approx(1e-2)
    if decay == "rsqrt":
        assert float(s(30)) == pytest.approx(1e-2 * np.sqrt(10 / 30), rel=1e-5)


def test_bad_schedule_and_optimizer_errors():
    with pytest.raises(ConfigError, match="schedule.decay_type='exp'"):
        optim.make_schedule(cfg(schedule=dict(decay_type="exp")))
    with pytest.raises(ConfigError, match="warmup_steps=200 exceeds total_steps=100"):
        optim.make_schedule(cfg(schedule=dict(warmup_steps=200)))
    with pytest.raises(ConfigError, match="optax_name='lamb2'"):
        optim.make_optimizer(cfg(optax_name="lamb2"), {"w": jnp.ones(2)})


@pytest.mark.parametrize("name,kw", [("adam", {}), ("adamw", {}), ("sgd", {"momentum": 0.9}),
                                     ("adafactor", {})])
def test_optimizers_reduce_loss(name, kw):
    m, params, batch = tiny()
    c = cfg(optax_name=name, optax=kw, lr=3e-3 if name != "sgd" else 0.1,
            schedule=dict(decay_type="constant", warmup_steps=0))
    tx = optim.make_optimizer(c, params)
    step = jax.jit(steps.make_train_step(m, tx, TASK))
    state = {"params": params, "opt_state": tx.init(params), "step": jnp.zeros((), jnp.int32),
             "rng": jax.random.PRNGKey(0)}
    losses = []
    for _ in range(15):
        state, met = step(state, batch)
        losses.append(float(met["loss"]))
    assert losses[-1] < losses[0] * 0.8


def test_weight_decay_only_on_kernels():
    params = {"dense": {"kernel": jnp.ones((2, 2)), "bias": jnp.ones(2)},
              "pos_embedding": jnp.ones(3)}
    c = cfg(optax_name="sgd", wd=0.5, lr=1.0, grad_clip_norm=None,
            schedule=dict(decay_type="constant", warmup_steps=0))
    tx = optim.make_optimizer(c, params)
    zero = jax.tree.map(jnp.zeros_like, params)
    upd, _ = tx.update(zero, tx.init(params), params)
    assert np.all(np.asarray(upd["dense"]["kernel"]) == -0.5)
    assert not np.any(upd["dense"]["bias"]) and not np.any(upd["pos_embedding"])


def test_grad_accumulation_equals_one_large_batch():
    m, params, batch = tiny()
    loss_fn = steps.make_loss_fn(m, TASK)
    rng = jax.random.PRNGKey(3)
    l1, g1 = steps.accumulate_gradients(loss_fn, params, batch, rng, 1)
    l4, g4 = jax.jit(lambda p, b: steps.accumulate_gradients(loss_fn, p, b, rng, 4))(
        params, batch)
    np.testing.assert_allclose(l1, l4, rtol=1e-5)
    for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g4), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-6, rtol=1e-4)
    # ... and is not trivially equal to the gradient of one micro-batch.
    _, g_micro = jax.value_and_grad(loss_fn)(params, jax.tree.map(lambda x: x[::4], batch), rng)
    assert not np.allclose(g_micro["head"]["kernel"], g1["head"]["kernel"], atol=1e-6)


def test_frozen_params_bit_identical_and_lr_mults():
    m, params, batch = tiny()
    c = cfg(lr_mults=[("^head/", 1.0), ("^embedding/", 0.5), ("Transformer/encoderblock_0", None),
                      (".*", 0.0)])
    tx = optim.make_optimizer(c, params)
    frozen = optim.frozen_mask(params, c)
    assert frozen["head"]["kernel"] is False and frozen["pos_embedding"] is True
    step = jax.jit(steps.make_train_step(m, tx, TASK, frozen=frozen))
    state = {"params": params, "opt_state": tx.init(params), "step": jnp.zeros((), jnp.int32),
             "rng": jax.random.PRNGKey(0)}
    for _ in range(3):
        state, _ = step(state, batch)
    new = state["params"]
    for path, f in jax.tree_util.tree_leaves_with_path(frozen):
        old_leaf = np.asarray(_get(params, path))
        new_leaf = np.asarray(_get(new, path))
        if f:
            assert old_leaf.tobytes() == new_leaf.tobytes(), path
    assert not np.array_equal(params["head"]["kernel"], new["head"]["kernel"])
    assert not np.array_equal(params["embedding"]["kernel"], new["embedding"]["kernel"])


def _get(tree, path):
    for k in path:
        tree = tree[k.key]
    return tree


def test_lr_mult_scales_update():
    params = {"a": jnp.ones(3), "b": jnp.ones(3)}
    base = dict(optax_name="sgd", wd=0.0, lr=1.0, grad_clip_norm=None,
                schedule=dict(decay_type="constant", warmup_steps=0))
    tx = optim.make_optimizer(cfg(**base, lr_mults=[("b", 0.25)]), params)
    g = {"a": jnp.ones(3), "b": jnp.ones(3)}
    upd, _ = tx.update(g, tx.init(params), params)
    np.testing.assert_allclose(upd["a"], -1.0)
    np.testing.assert_allclose(upd["b"], -0.25)


def test_step_cache_compiles_once_per_key():
    calls = []

    def make(k):
        calls.append(k)
        return lambda x: x * k
    cache = steps.StepCache(make, in_shardings=None, out_shardings=None)
    for k in [1, 2, 1, 2, 3, 1]:
        cache(k)(jnp.ones(2))
    assert calls == [1, 2, 3] and cache.num_compiled == 3


def _distill_loss_fn(m, label_weight):
    plugin = distill.DistillPlugin(m, {}, None, None, TASK, label_weight, 1.0)
    return steps.make_loss_fn(m, TASK, extra_loss=plugin.extra_loss)


def test_distillation_loss_is_zero_when_student_equals_teacher():
    m, params, batch = tiny()
    kd = _distill_loss_fn(m, 0.0)
    assert abs(float(kd(params, batch, jax.random.PRNGKey(0), params))) < 1e-6
    other = jax.tree.map(lambda p: p + 0.05, params)
    assert float(kd(other, batch, jax.random.PRNGKey(0), params)) > 1e-4
    # mixing in the labels adds their cross-entropy
    mixed = _distill_loss_fn(m, 0.5)
    xent = steps.make_loss_fn(m, TASK)(params, batch, jax.random.PRNGKey(0))
    np.testing.assert_allclose(mixed(params, batch, jax.random.PRNGKey(0), params),
                               0.5 * xent, rtol=1e-5)
    z = batch["image"][:, 0, 0]
    np.testing.assert_allclose(distill.distill_loss(z, z, temperature=2.0), 0.0, atol=1e-6)
