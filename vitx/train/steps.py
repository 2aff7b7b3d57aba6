"""Jitted train and eval steps: explicit in/out shardings, donated state, grad accumulation.

The train state is a plain dict (orbax-friendly)::

    {"params": tree, "opt_state": tree, "step": int32 (), "rng": uint32 (2,)}

Batches are dicts with `image` (B, H, W, C) float in [-1, 1] and `label` (B,) int or (B, K)
one-hot / smoothed; eval batches also carry `_mask` (B,) (1 for real examples, 0 for padding).
Static per-step choices (e.g. FlexiViT's patch size) are passed as `model_kw` and give one
compiled program each; `StepCache` keeps them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from jax.sharding import NamedSharding

Array = jax.Array
State = dict[str, Any]


def onehot_labels(label: Array, num_classes: int) -> Array:
    """(B,) int -> (B, K) float one-hot; (B, K) passes through as float32."""
    if label.ndim == 1:
        return jax.nn.one_hot(label, num_classes)
    return label.astype(jnp.float32)


def softmax_xent(logits: Array, labels: Array) -> Array:
    """Per-example cross-entropy with (soft) labels. logits, labels: (B, K) -> (B,)."""
    return -jnp.sum(labels * jax.nn.log_softmax(logits.astype(jnp.float32)), axis=-1)


def distill_loss(student_logits: Array, teacher_logits: Array, temperature: float = 1.0
                 ) -> Array:
    """T^2 * KL(softmax(teacher / T) || softmax(student / T)) per example, (B, K) -> (B,).

    Zero iff the two distributions are equal. The T^2 factor keeps gradient magnitudes
    comparable across temperatures (Hinton et al. 2015, Sec. 2). FlexiViT (Beyer et al. 2023,
    Sec. 3.5; seed 001 claims 4-6) distils a FlexiViT student from a fixed-patch-size teacher.
    """
    lt = jax.nn.log_softmax(teacher_logits.astype(jnp.float32) / temperature)
    ls = jax.nn.log_softmax(student_logits.astype(jnp.float32) / temperature)
    return jnp.sum(jnp.exp(lt) * (lt - ls), axis=-1) * temperature**2


def make_loss_fn(model: nn.Module, num_classes: int, model_kw: dict | None = None, *,
                 teacher: nn.Module | None = None, teacher_kw: dict | None = None,
                 label_weight: float = 0.0, temperature: float = 1.0
                 ) -> Callable[..., Array]:
    """loss(params, batch, rng, teacher_params=None) -> scalar mean loss over the batch.

    Without a teacher: softmax cross-entropy with the (soft) labels. With a teacher (distillation):
    `(1 - label_weight) * KL(teacher || student) + label_weight * xent(labels)`.
    """
    model_kw = dict(model_kw or {})
    teacher_kw = dict(teacher_kw or {})

    def loss_fn(params: Any, batch: dict, rng: Array, teacher_params: Any = None) -> Array:
        logits, _ = model.apply({"params": params}, batch["image"], train=True,
                                rngs={"dropout": rng}, **model_kw)
        xent = softmax_xent(logits, onehot_labels(batch["label"], num_classes))
        if teacher is None:
            return jnp.mean(xent)
        t_logits, _ = teacher.apply({"params": teacher_params}, batch["image"], train=False,
                                    **teacher_kw)
        kd = distill_loss(logits, jax.lax.stop_gradient(t_logits), temperature)
        return jnp.mean((1.0 - label_weight) * kd + label_weight * xent)
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


def make_train_step(model: nn.Module, tx: optax.GradientTransformation, *, num_classes: int,
                    accum_steps: int = 1, frozen: Any = None,
                    schedule: optax.Schedule | None = None, model_kw: dict | None = None,
                    distill: dict | None = None) -> Callable[..., tuple[State, dict]]:
    """train_step(state, batch[, teacher_params]) -> (new state, metrics {loss, grad_norm, lr}).

    `frozen` (a tree of bools like params) keeps those params bit-identical. `distill`: kwargs of
    `make_loss_fn` (teacher, teacher_kw, label_weight, temperature); the step then takes the
    teacher's params as a third argument.
    """
    loss_fn = make_loss_fn(model, num_classes, model_kw, **(distill or {}))

    def train_step(state: State, batch: dict, *teacher_params: Any) -> tuple[State, dict]:
        rng = jax.random.fold_in(state["rng"], state["step"])
        loss, grads = accumulate_gradients(loss_fn, state["params"], batch, rng, accum_steps,
                                           *teacher_params)
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


def make_eval_step(model: nn.Module, *, num_classes: int, model_kw: dict | None = None
                   ) -> Callable[[Any, dict], dict]:
    """eval_step(params, batch) -> sums {"correct", "loss", "count"} over real (unmasked) rows."""
    model_kw = dict(model_kw or {})

    def eval_step(params: Any, batch: dict) -> dict:
        logits, _ = model.apply({"params": params}, batch["image"], train=False, **model_kw)
        labels = onehot_labels(batch["label"], num_classes)
        mask = batch.get("_mask", jnp.ones(logits.shape[:1])).astype(jnp.float32)
        correct = (jnp.argmax(logits, -1) == jnp.argmax(labels, -1)).astype(jnp.float32)
        return {"correct": jnp.sum(correct * mask),
                "loss": jnp.sum(softmax_xent(logits, labels) * mask),
                "count": jnp.sum(mask)}
    return eval_step


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


def shardings_like(tree: Any, sharding: NamedSharding) -> Any:
    return jax.tree.map(lambda _: sharding, tree)
