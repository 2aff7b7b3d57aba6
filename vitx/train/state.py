"""The train state and the one place that builds a model's params from a batch spec.

The train state is a plain dict (orbax-friendly)::

    {"params": tree, "opt_state": tree, "step": int32 (), "rng": uint32 (2,)}
    (+ "model_state": {"batch_stats": tree} for models with batch statistics, e.g. BatchNorm)
    (+ "ema": {"params": tree, **model_state}, the EMA of the weights, with `config.ema`)

`abstract_params` is used by train, eval and bench alike: the model is initialised (abstractly,
with `jax.eval_shape`, so it costs no memory) on a dummy batch of one example of each key of the
data's element spec, through the task's `model_inputs`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp

from vitx.train import checkpoint as ckpt_lib
from vitx.train import ema as ema_lib
from vitx.train import sharding as shd
from vitx.train.run_config import RunConfig

#: {batch key: (per-example shape, dtype)}, e.g. {"image": ((32, 32, 1), float32), ...}.
ExampleSpec = Mapping[str, tuple[tuple[int, ...], Any]]


def dummy_batch(spec: ExampleSpec) -> dict[str, jax.Array]:
    """Zeros of shape (1, *shape) for every key of `spec` (the init batch)."""
    return {k: jnp.zeros((1, *shape), dtype) for k, (shape, dtype) in spec.items()}


def init_variables_fn(model: Any, task: Any, spec: ExampleSpec, model_kw: Mapping[str, Any]
                      ) -> Any:
    """rng -> variables ({"params": ..., and e.g. "batch_stats": ...}): `model.init` on
    `task.model_inputs(dummy_batch(spec))` with `model_kw`."""
    def init(rng: jax.Array) -> Any:
        return dict(model.init(rng, task.model_inputs(dummy_batch(spec)), train=False,
                               **model_kw))
    return init


def abstract_variables(model: Any, task: Any, spec: ExampleSpec,
                       model_kw: Mapping[str, Any] | None = None) -> dict:
    """The model's variables ({"params": ..., and e.g. "batch_stats": ...}) as shapes and
    dtypes (`jax.ShapeDtypeStruct`s), without allocating.

    Raises:
      ValueError: the model rejects the input (e.g. a patch size that does not divide it).
    """
    init = init_variables_fn(model, task, spec, model_kw or {})
    return jax.eval_shape(init, jax.random.PRNGKey(0))


def abstract_params(model: Any, task: Any, spec: ExampleSpec,
                    model_kw: Mapping[str, Any] | None = None) -> Any:
    """The params' shapes and dtypes (a tree of `jax.ShapeDtypeStruct`), without allocating.

    Raises:
      ValueError: the model rejects the input (e.g. a patch size that does not divide it).
    """
    return abstract_variables(model, task, spec, model_kw)["params"]


def init_state(config: Any, model: Any, task: Any, tx: Any,
               spec: ExampleSpec, mesh: Any, model_kw: Mapping[str, Any], *,
               materialize: bool = True, shardings: Any = None) -> tuple[dict, Any]:
    """Random init of the train state directly into its shardings. Returns (state, shardings).

    `config`: the run's `vitx.train.run_config.RunConfig` (or a raw config with the same keys):
    its `seed` and `sharding_rules`. The init RNG is `split(PRNGKey(seed))[0]`, the train RNG
    the other half. With `materialize=False` the state is abstract (ShapeDtypeStructs carrying
    the shardings: the restore target), so resuming never allocates a throw-away random init.
    `shardings`: the state's shardings when the caller has them already (from an earlier
    abstract call), which saves tracing the init once more.
    """
    if isinstance(config, RunConfig):
        seed, rules, ema = config.seed, list(config.sharding_rules), config.ema
    else:
        seed, rules = config.get("seed", 0), list(config.get("sharding_rules") or [])
        ema = ema_lib.EmaConfig.from_config(config)
    rng = jax.random.PRNGKey(seed)
    init_rng, train_rng = jax.random.split(rng)
    init = init_variables_fn(model, task, spec, model_kw)

    def make_state(r: jax.Array) -> dict:
        variables = init(r)
        params = variables.pop("params")
        state = {"params": params, "opt_state": tx.init(params),
                 "step": jnp.zeros((), jnp.int32), "rng": train_rng}
        if variables:  # batch statistics and other non-trained collections
            state["model_state"] = variables
        if ema is not None:  # the EMA of the weights (`vitx.train.ema`), sharded like them
            state["ema"] = ema_lib.init(ema_lib.variables(state))
        return state

    if shardings is not None and materialize:
        return jax.jit(make_state, out_shardings=shardings)(init_rng), shardings
    abstract = jax.eval_shape(make_state, init_rng)
    state_shardings = shd.tree_shardings(abstract, mesh, rules)
    if ema is not None:
        state_shardings["ema"] = ema_lib.variables(state_shardings)
    if not materialize:
        return ckpt_lib.abstract_like(abstract, state_shardings), state_shardings
    state = jax.jit(make_state, out_shardings=state_shardings)(init_rng)
    return state, state_shardings
