"""EMA of the weights (`vitx.train.ema`): the closed form after N steps, warm-up, batch
statistics, the train state's shardings, and its config errors."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from vitx.tasks import classification
from vitx.train import ema, steps
from vitx.utils import ConfigError

K = 4


class TinyBN(nn.Module):
    """Dense (+ BatchNorm: params and batch statistics)."""

    bn: bool = True

    @nn.compact
    def __call__(self, x, *, train: bool):
        x = nn.Dense(K)(x.reshape(x.shape[0], -1))
        if self.bn:
            x = nn.BatchNorm(use_running_average=not train, momentum=0.5)(x)
        return x, {}


@pytest.fixture(scope="module")
def setup():
    model, task = TinyBN(), classification.Task(num_classes=K)
    variables = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 3)), train=False)
    batch = {"image": jax.random.normal(jax.random.PRNGKey(1), (8, 3)),
             "label": jnp.arange(8) % K}
    return model, task, dict(variables), batch


def make_state(tx, variables, ema_variables) -> dict:
    params = variables["params"]
    state = {"params": params, "opt_state": tx.init(params), "step": jnp.zeros((), jnp.int32),
             "rng": jax.random.PRNGKey(2), "ema": ema_variables}
    if "batch_stats" in variables:
        state["model_state"] = {"batch_stats": variables["batch_stats"]}
    return state


def run_steps(model, task, tx, state, batch, cfg, n) -> list[dict]:
    step = jax.jit(steps.build_train_step(steps.make_loss_fn(model, task), tx,
                                          ema_fn=ema.ema_fn(cfg)))
    states = [state]
    for _ in range(n):
        states.append(step(states[-1], batch)[0])
    return jax.device_get(states)


def test_constant_params_ema_has_its_closed_form(setup):
    """lr = 0 keeps the params constant (p); from ema_0 = e0 the EMA after N steps is
    p + d^N (e0 - p); with W >= 1 warm-up steps the first update copies p, and the
    EMA stays p (up to rounding)."""
    _, task, variables, batch = setup
    model = TinyBN(bn=False)
    variables = {"params": {"Dense_0": variables["params"]["Dense_0"]}}
    tx = optax.sgd(0.0)
    e0 = jax.tree.map(lambda x: x + 1.0, variables)
    d, n = 0.9, 5
    state = make_state(tx, variables, e0)
    last = run_steps(model, task, tx, state, batch, ema.EmaConfig(decay=d), n)[-1]
    p = jax.device_get(variables["params"])
    jax.tree.map(lambda got, pp, ee: np.testing.assert_allclose(
        got, pp + d**n * (ee - pp), rtol=1e-5, atol=1e-6), last["ema"]["params"], p,
        jax.device_get(e0["params"]))
    warm = run_steps(model, task, tx, state, batch, ema.EmaConfig(decay=d, warmup_steps=2),
                     n)[-1]
    jax.tree.map(lambda got, pp: np.testing.assert_allclose(got, pp, rtol=1e-6, atol=1e-7),
                 warm["ema"]["params"], p)


def test_moving_params_and_batch_stats_ema_is_the_weighted_sum(setup):
    """With training (params and batch statistics move), after N steps the EMA equals
    d_t-weighted sums of the recorded variables: ema_{t+1} = d_t ema_t + (1 - d_t) v_{t+1},
    d_t = 0 for t < W. Checked against that recursion run in numpy, and the EMA differs from
    the final weights."""
    model, task, variables, batch = setup
    tx = optax.sgd(0.5)
    cfg = ema.EmaConfig(decay=0.8, warmup_steps=1)
    state = make_state(tx, variables, ema.init(variables))
    states = run_steps(model, task, tx, state, batch, cfg, 4)
    expect = jax.device_get(variables)
    for t, s in enumerate(states[1:]):
        d = 0.0 if t < cfg.warmup_steps else cfg.decay
        v = ema.variables(s)
        expect = jax.tree.map(lambda e, x, d=d: d * e + (1 - d) * x, expect, v)
    got = states[-1]["ema"]
    assert set(got) == {"params", "batch_stats"}
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7), got,
                 expect)
    final = ema.variables(states[-1])
    assert not np.allclose(got["batch_stats"]["BatchNorm_0"]["mean"],
                           final["batch_stats"]["BatchNorm_0"]["mean"])
    assert not np.allclose(got["params"]["Dense_0"]["kernel"],
                           final["params"]["Dense_0"]["kernel"])


def test_init_state_shards_the_ema_like_the_variables(setup):
    from vitx.train import sharding as shd
    from vitx.train import state as state_lib

    model, task, _, _ = setup
    mesh = shd.make_mesh([("data", -1)])
    tx = optax.adam(1e-3)
    config = {"seed": 0, "sharding_rules": [(".*", "fsdp")], "ema": {"decay": 0.9}}
    spec = {"image": ((3,), jnp.float32), "label": ((), jnp.int32)}
    state, shardings = state_lib.init_state(config, model, task, tx, spec, mesh, {})
    assert jax.tree.structure(shardings["ema"]) == jax.tree.structure(ema.variables(state))
    assert shardings["ema"]["params"] == shardings["params"]
    np.testing.assert_array_equal(state["ema"]["params"]["Dense_0"]["kernel"],
                                  state["params"]["Dense_0"]["kernel"])
    assert (state["ema"]["params"]["Dense_0"]["kernel"].unsafe_buffer_pointer()
            != state["params"]["Dense_0"]["kernel"].unsafe_buffer_pointer())
    no_ema, _ = state_lib.init_state({"seed": 0}, model, task, tx, spec, mesh, {})
    assert "ema" not in no_ema


def test_config_errors_and_metric_names():
    with pytest.raises(ConfigError, match=r"ema.decay=1.0 must be in \[0, 1\)"):
        ema.EmaConfig(decay=1.0)
    with pytest.raises(ConfigError, match=r"ema.warmup_steps=-1 must be an int >= 0"):
        ema.EmaConfig(decay=0.9, warmup_steps=-1)
    with pytest.raises(ConfigError, match=r"ema has unknown keys \['rate'\]"):
        ema.EmaConfig.from_config({"ema": {"rate": 0.9}})
    assert ema.EmaConfig.from_config({"ema": {"decay": 0.0, "warmup_steps": 0}}) is None
    assert ema.EmaConfig.from_config({}) is None
    assert ema.renamed({"test/accuracy": 0.5, "fewshot/5shot": 0.1}) == {
        "test_ema/accuracy": 0.5, "fewshot_ema/5shot": 0.1}
