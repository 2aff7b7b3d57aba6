"""The jitted train step: task loss, plugin loss terms, grad accumulation, masked updates.

The train state is a plain dict (orbax-friendly)::

    {"params": tree, "opt_state": tree, "step": int32 (), "rng": uint32 (2,)}
    (+ "model_state": {"batch_stats": tree} for models with batch statistics)

Batches are dicts of (B, ...) arrays with whatever keys the data has; the task says which key
the model reads and which holds the labels. Static per-step choices (the per-step plan, e.g.
FlexiViT's patch size) are passed as `model_kw` and give one compiled program each;
`StepCache` keeps them (shardings and donation are set by the caller).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

Array = jax.Array
State = dict[str, Any]


def aux_kw(task: Any, aux: dict) -> dict:
    """{"aux": aux} for a task that reads the model's aux outputs (`reads_aux`), else {}."""
    return {"aux": aux} if getattr(task, "reads_aux", False) else {}


def make_loss_fn(model: nn.Module, task: Any, model_kw: dict | None = None, *,
                 extra_loss: Callable[..., Array] | None = None) -> Callable[..., Array]:
    """loss(params, batch, rng, *extra) -> scalar mean loss over the batch.

    The model runs on `task.model_inputs(batch)` with the static `model_kw` (one compiled
    program per distinct value, e.g. FlexiViT's patch size); the per-example loss is
    `task.loss(logits, batch)` (B,), or `extra_loss(logits, batch, task_loss, *extra)` (B,) when
    a plugin replaces it (distillation: `extra` holds the teacher's params).

    For models with state (BatchNorm's `batch_stats`), call it with `model_state=` (the dict of
    those collections): it then returns `(loss, new_model_state)`, the statistics of this batch
    folded in (train mode). Under `jit` on a mesh the batch axis is global, so the batch
    statistics are the mean over all data-parallel devices (a cross-replica mean by
    construction) and the new state is identical on every device.
    """
    model_kw = dict(model_kw or {})

    def loss_fn(params: Any, batch: dict, rng: Array, *extra: Any,
                model_state: dict | None = None) -> Any:
        if model_state is None:
            logits, aux = model.apply({"params": params}, task.model_inputs(batch), train=True,
                                      rngs={"dropout": rng}, **model_kw)
        else:
            (logits, aux), new_state = model.apply(
                {"params": params, **model_state}, task.model_inputs(batch), train=True,
                rngs={"dropout": rng}, mutable=list(model_state), **model_kw)
        per_example = task.loss(logits, batch, **aux_kw(task, aux))
        if extra_loss is not None:
            per_example = extra_loss(logits, batch, per_example, *extra)
        loss = jnp.mean(per_example)
        return loss if model_state is None else (loss, dict(new_state))
    return loss_fn


def accumulate_gradients(loss_fn: Callable, params: Any, batch: dict, rng: Array,
                         accum_steps: int, *extra: Any, model_state: dict | None = None
                         ) -> Any:
    """Mean loss and gradient over `accum_steps` equal micro-batches, computed one at a time.

    Returns (loss, grads), or ((loss, new_model_state), grads) when `model_state` is given.
    Equals `jax.value_and_grad(loss_fn)(params, batch, rng)` up to float rounding (for models
    without batch statistics) while holding the activations of one micro-batch only.
    Micro-batch j takes rows j, j+k, j+2k, ... so each stays spread over all data shards.
    Batch statistics: micro-batches run in order and each one's statistics are folded into the
    running averages in turn (as `accum_steps` consecutive BatchNorm updates of the micro-batch
    size; normalisation in train mode uses each micro-batch's own statistics).
    """
    if model_state is not None:
        return _accumulate_stateful(loss_fn, params, batch, rng, accum_steps, model_state,
                                    *extra)
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


def _accumulate_stateful(loss_fn: Callable, params: Any, batch: Any, rng: Array,
                         accum_steps: int, model_state: dict, *extra: Any) -> Any:
    grad_fn = jax.value_and_grad(
        lambda p, b, r, ms: loss_fn(p, b, r, *extra, model_state=ms), has_aux=True)
    if accum_steps == 1:
        return grad_fn(params, batch, rng, model_state)

    def split(x: Array) -> Array:
        return jnp.swapaxes(x.reshape((-1, accum_steps) + x.shape[1:]), 0, 1)

    def body(carry: tuple, xs: tuple) -> tuple:
        loss_sum, grad_sum, ms = carry
        i, mb = xs
        (loss, ms), grads = grad_fn(params, mb, jax.random.fold_in(rng, i), ms)
        return (loss_sum + loss, jax.tree.map(jnp.add, grad_sum, grads), ms), None

    zeros = jax.tree.map(jnp.zeros_like, params)
    (loss, grads, ms), _ = jax.lax.scan(
        body, (jnp.zeros((), jnp.float32), zeros, model_state),
        (jnp.arange(accum_steps), jax.tree.map(split, batch)))
    return (loss / accum_steps, ms), jax.tree.map(lambda g: g / accum_steps, grads)


def make_train_step(model: nn.Module, tx: optax.GradientTransformation, task: Any, *,
                    accum_steps: int = 1, frozen: Any = None,
                    schedule: optax.Schedule | None = None, model_kw: dict | None = None,
                    extra_loss: Callable[..., Array] | None = None
                    ) -> Callable[..., tuple[State, dict]]:
    """train_step(state, batch, *extra) -> (new state, metrics {loss, grad_norm, lr}).

    `task`: a `vitx.tasks` task (model inputs and per-example loss). `frozen` (a tree of bools
    like params) keeps those params bit-identical. `extra_loss` and the step's `*extra`
    arguments come from plugins (see `make_loss_fn`). See `build_train_step` for the rest.
    """
    return build_train_step(make_loss_fn(model, task, model_kw, extra_loss=extra_loss), tx,
                            accum_steps=accum_steps, frozen=frozen, schedule=schedule)


def multi_task_loss(loss_fns: Sequence[Callable[..., Array]], combine: str = "sum"
                    ) -> Callable[..., Array]:
    """loss(params, batches, rng, *extra) over one batch per task: their sum or mean.

    `batches` is a tuple, `batches[j]` the batch of task j; task j's loss sees its own rng
    (`fold_in(rng, j)`). Used by the "accumulated" multi-task schedule (PolyViT, Sec. 3.2).

    Raises:
      ValueError: `combine` is not "sum" or "mean".
    """
    if combine not in ("sum", "mean"):
        raise ValueError(f"multitask.accumulate={combine!r} is unknown; use 'sum' or 'mean'")

    def loss_fn(params: Any, batches: tuple, rng: Array, *extra: Any,
                model_state: dict | None = None) -> Any:
        total = 0.0
        for j, (f, b) in enumerate(zip(loss_fns, batches, strict=True)):
            kw = {} if model_state is None else {"model_state": model_state}
            out = f(params, b, jax.random.fold_in(rng, j), *extra, **kw)
            if model_state is not None:  # batch statistics threaded through the tasks
                out, model_state = out
            total = total + out
        total = total / len(loss_fns) if combine == "mean" else total
        return total if model_state is None else (total, model_state)
    return loss_fn


def _param_path_keys(path: tuple) -> tuple:
    """The trailing dict keys of a key path: the param a leaf of the optimizer state mirrors."""
    keys: list = []
    for k in reversed(path):
        if not isinstance(k, jax.tree_util.DictKey):
            break
        keys.append(k.key)
    return tuple(reversed(keys))


def keep_inactive(new: Any, old: Any, active: dict[tuple, bool]) -> Any:
    """`new` with every leaf that mirrors an inactive param replaced by its `old` value.

    `active` maps a param's key path (tuple of dict keys) to a static Python bool. A leaf of an
    optimizer state (Adam's mu / nu, ...) mirrors the param whose path its trailing dict keys
    form; leaves that mirror no param (step counts) take their new value. Static: no ops are
    added for active leaves, so inactive params and their optimizer state stay bit-identical.
    """
    def pick(path: tuple, n: Any, o: Any) -> Any:
        return o if active.get(_param_path_keys(path), True) is False else n
    return jax.tree_util.tree_map_with_path(pick, new, old)


#: Leaves per concatenated chunk in `tree_all_finite` on the CPU backend.
FINITE_CHUNK = 64


def tree_all_finite(tree: Any) -> Array:
    """bool (): every inexact (float) leaf of `tree` is free of NaN and inf (jittable).

    On accelerators: one reduction per leaf (no copy of the tree). On the CPU backend the
    leaves are flattened and concatenated in chunks of `FINITE_CHUNK`, one reduction per chunk:
    XLA:CPU compiles one kernel per reduction (~30 ms each at -O0 here), so a per-leaf check of
    AssembleNet's train state (params + Adam moments, ~2,000 leaves) took 61 s to compile, the
    chunked one a few seconds; the extra memory is one chunk's copy.
    """
    leaves = [x for x in jax.tree.leaves(tree)
              if jnp.issubdtype(jnp.result_type(x), jnp.inexact)]
    if not leaves:
        return jnp.array(True)
    if jax.default_backend() != "cpu":
        return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves]))
    flat = [jnp.ravel(x) for x in leaves]
    parts = [jnp.all(jnp.isfinite(jnp.concatenate(flat[i:i + FINITE_CHUNK])))
             for i in range(0, len(flat), FINITE_CHUNK)]
    return jnp.all(jnp.stack(parts))


def build_train_step(loss_fn: Callable[..., Array], tx: optax.GradientTransformation, *,
                     accum_steps: int = 1, frozen: Any = None,
                     schedule: optax.Schedule | None = None, active: Any = None,
                     lr_mult: float = 1.0, skip_nonfinite: bool = False,
                     batch_fn: Callable[[Any, Array], Any] | None = None,
                     ema_fn: Callable[[State, State], Any] | None = None
                     ) -> Callable[..., tuple[State, dict]]:
    """train_step(state, batch, *extra) -> (new state, metrics) for any loss function.

    `batch_fn(batch, rng)` transforms the global batch before the loss and its micro-batches
    (Mixup/CutMix, `vitx.train.mixup`; `rng` is the step's). `ema_fn(old state, new state)`
    gives the new `state["ema"]` (the EMA of the weights, `vitx.train.ema`).

    `loss_fn(params, batch, rng, *extra)` -> scalar (`make_loss_fn`, `multi_task_loss`).
    `frozen` (a tree of bools like params) keeps those params bit-identical. `active` (a tree of
    static bools like params, or None = all active) is the masked update of multi-task
    training: inactive params AND their optimizer state (moments, weight decay) stay
    bit-identical. `lr_mult` scales this step's updates (a per-task learning-rate multiplier;
    1.0 adds no op).

    Metrics: `loss`, `grad_norm`, `lr` (with a schedule) and the NaN guard's
    `nonfinite_step` (int32 (): this step's number, `state["step"] + 1`, when its loss or
    global gradient norm is NaN/inf, else 0), computed on device so the loop can fold it into
    a running flag without a host round trip per step. The update itself is unchanged by it.
    With `skip_nonfinite`, a step whose loss, gradients or new params/optimizer state are not
    finite keeps the old state (params, optimizer state, batch statistics; `jnp.where` on
    device, only the step count advances) and `skipped` (int32 (), 1 for a skipped step) is
    added to the metrics.
    """
    active_by_path = None
    if active is not None:
        active_by_path = {tuple(k.key for k in path): bool(a) for path, a in
                          jax.tree_util.tree_leaves_with_path(active)}

    def train_step(state: State, batch: Any, *extra: Any) -> tuple[State, dict]:
        rng = jax.random.fold_in(state["rng"], state["step"])
        if batch_fn is not None:
            batch = batch_fn(batch, rng)
        new_state = dict(state)
        if "model_state" in state:  # e.g. BatchNorm statistics
            (loss, new_state["model_state"]), grads = accumulate_gradients(
                loss_fn, state["params"], batch, rng, accum_steps, *extra,
                model_state=state["model_state"])
        else:
            loss, grads = accumulate_gradients(loss_fn, state["params"], batch, rng,
                                               accum_steps, *extra)
        updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
        if lr_mult != 1.0:
            updates = jax.tree.map(lambda u: u * lr_mult, updates)
        params = optax.apply_updates(state["params"], updates)
        if frozen is not None:
            params = jax.tree.map(lambda old, new, f: old if f else new,
                                  state["params"], params, frozen)
        if active_by_path is not None:
            params = keep_inactive(params, state["params"], active_by_path)
            opt_state = keep_inactive(opt_state, state["opt_state"], active_by_path)
        grad_norm = optax.global_norm(grads)
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
        metrics = {"loss": loss, "grad_norm": grad_norm}
        if schedule is not None:
            metrics["lr"] = schedule(state["step"])
        new_state.update(params=params, opt_state=opt_state, step=state["step"] + 1)
        if ema_fn is not None:
            new_state["ema"] = ema_fn(state, new_state)
        if skip_nonfinite:  # keep the old state where this update is not finite
            finite = finite & tree_all_finite(
                (params, opt_state, new_state.get("model_state")))
            for key in ("params", "opt_state", "model_state", "ema"):
                if key in state:
                    new_state[key] = jax.tree.map(lambda new, old: jnp.where(finite, new, old),
                                                  new_state[key], state[key])
            metrics["skipped"] = jnp.where(finite, 0, 1).astype(jnp.int32)
        metrics["nonfinite_step"] = jnp.where(finite, 0, state["step"] + 1).astype(jnp.int32)
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
