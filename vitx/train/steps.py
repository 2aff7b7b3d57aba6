"""The jitted train step: task loss, plugin loss terms, grad accumulation, masked updates.

The train state is a plain dict (orbax-friendly)::

    {"params": tree, "opt_state": tree, "step": int32 (), "rng": uint32 (2,)}

Batches are dicts of (B, ...) arrays with whatever keys the data has; the task says which key
the model reads and which holds the labels. Static per-step choices (the per-step plan, e.g.
FlexiViT's patch size) are passed as `model_kw` and give one compiled program each;
`StepCache` keeps them (shardings and donation are set by the caller).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

Array = jax.Array
State = dict[str, Any]


def make_loss_fn(model: nn.Module, task: Any, model_kw: dict | None = None, *,
                 extra_loss: Callable[..., Array] | None = None) -> Callable[..., Array]:
    """loss(params, batch, rng, *extra) -> scalar mean loss over the batch.

    The model runs on `task.model_inputs(batch)` with the static `model_kw` (one compiled
    program per distinct value, e.g. FlexiViT's patch size); the per-example loss is
    `task.loss(logits, batch)` (B,), or `extra_loss(logits, batch, task_loss, *extra)` (B,) when
    a plugin replaces it (distillation: `extra` holds the teacher's params).
    """
    model_kw = dict(model_kw or {})

    def loss_fn(params: Any, batch: dict, rng: Array, *extra: Any) -> Array:
        logits, _ = model.apply({"params": params}, task.model_inputs(batch), train=True,
                                rngs={"dropout": rng}, **model_kw)
        per_example = task.loss(logits, batch)
        if extra_loss is not None:
            per_example = extra_loss(logits, batch, per_example, *extra)
        return jnp.mean(per_example)
    return loss_fn


def accumulate_gradients(loss_fn: Callable, params: Any, batch: dict, rng: Array,
                         accum_steps: int, *extra: Any) -> tuple[Array, Any]:
    """Mean loss and gradient over `accum_steps` equal micro-batches, computed one at a time.

    Equals `jax.value_and_grad(loss_fn)(params, batch, rng)` up to float rounding (for models
    without batch statistics) while holding the activations of one micro-batch only.
    Micro-batch j takes rows j, j+k, j+2k, ... so each stays spread over all data shards.
    """
    if accum_steps == 1:
        return jax.value_and_grad(loss_fn)(params, batch, rng, *extra)

    def split(x: Array) -> Array:
        return jnp.swapaxes(x.reshape((-1, accum_steps) + x.shape[1:]), 0, 1)

    micro = jax.tree.map(split, batch)

    def body(carry: tuple, xs: tuple) -> tuple:
        loss_sum, grad_sum = carry
        i, mb = xs
        loss, grads = jax.value_and_grad(loss_fn)(params, mb, jax.random.fold_in(rng, i),
                                                  *extra)
        return (loss_sum + loss, jax.tree.map(jnp.add, grad_sum, grads)), None

    zeros = jax.tree.map(jnp.zeros_like, params)
    (loss, grads), _ = jax.lax.scan(body, (jnp.zeros((), jnp.float32), zeros),
                                    (jnp.arange(accum_steps), micro))
    return loss / accum_steps, jax.tree.map(lambda g: g / accum_steps, grads)


def make_train_step(model: nn.Module, tx: optax.GradientTransformation, task: Any, *,
                    accum_steps: int = 1, frozen: Any = None,
                    schedule: optax.Schedule | None = None, model_kw: dict | None = None,
                    extra_loss: Callable[..., Array] | None = None
                    ) -> Callable[..., tuple[State, dict]]:
    """train_step(state, batch, *extra) -> (new state, metrics {loss, grad_norm, lr}).

    `task`: a `vitx.tasks` task (model inputs and per-example loss). `frozen` (a tree of bools
    like params) keeps those params bit-identical. `extra_loss` and the step's `*extra`
    arguments come from plugins (see `make_loss_fn`).
    """
    loss_fn = make_loss_fn(model, task, model_kw, extra_loss=extra_loss)

    def train_step(state: State, batch: dict, *extra: Any) -> tuple[State, dict]:
        rng = jax.random.fold_in(state["rng"], state["step"])
        loss, grads = accumulate_gradients(loss_fn, state["params"], batch, rng, accum_steps,
                                           *extra)
        updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
        params = optax.apply_updates(state["params"], updates)
        if frozen is not None:
            params = jax.tree.map(lambda old, new, f: old if f else new,
                                  state["params"], params, frozen)
        metrics = {"loss": loss, "grad_norm": optax.global_norm(grads)}
        if schedule is not None:
            metrics["lr"] = schedule(state["step"])
        new_state = dict(state, params=params, opt_state=opt_state, step=state["step"] + 1)
        return new_state, metrics
    return train_step


class StepCache:
    """One jitted program per static choice (e.g. patch size), compiled on first use.

    `make(key)` returns the python step function for that key; the cache jits it with the given
    shardings and donation once. `num_compiled` is the number of distinct programs.
    """

    def __init__(self, make: Callable[[Any], Callable], *, in_shardings: Any,
                 out_shardings: Any, donate_argnums: tuple[int, ...] = ()):
        self._make = make
        self._kw = dict(in_shardings=in_shardings, out_shardings=out_shardings,
                        donate_argnums=donate_argnums)
        self._fns: dict[Any, Callable] = {}

    def __call__(self, key: Any) -> Callable:
        if key not in self._fns:
            self._fns[key] = jax.jit(self._make(key), **self._kw)
        return self._fns[key]

    @property
    def num_compiled(self) -> int:
        """Programs actually compiled (a jitted function compiles once per input signature)."""
        return sum(max(fn._cache_size(), 0) for fn in self._fns.values())  # noqa: SLF001

    @property
    def keys(self) -> list:
        return list(self._fns)
