"""optax from the config: optimizer, lr schedule, weight-decay mask, clipping, lr multipliers.

Config keys (all top-level):
  optax_name       "adam" | "adamw" | "sgd" | "adafactor"
  optax            extra kwargs of the optimizer (e.g. b1, b2, momentum, nesterov)
  lr               peak learning rate (after warmup)
  wd               weight decay, applied to kernels only (leaves named `.../kernel`); decoupled
                   (AdamW, Loshchilov & Hutter 2019) and scaled by the lr schedule, as in optax
  schedule         dict(decay_type="cosine"|"linear"|"rsqrt"|"constant", warmup_steps=int,
                   end_lr_ratio=0.0 (cosine/linear floor), timescale=warmup_steps (rsqrt))
  grad_clip_norm   global-norm clipping threshold (None: no clipping)
  lr_mults         [(regex, mult), ...]: the first regex that `re.search`es a param's '/'-path
                   scales its updates by `mult`; 0 or None freezes it (no optimizer state, the
                   param stays bit-identical). Params matching no rule use 1.0.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import optax

from vitx.train.sharding import path_name
from vitx.utils import ConfigError

OPTIMIZERS = ("adam", "adamw", "sgd", "adafactor")
DECAY_TYPES = ("cosine", "linear", "rsqrt", "constant")


def make_schedule(config: Any) -> optax.Schedule:
    """Linear warmup from 0 to `lr` over `schedule.warmup_steps`, then the decay to `total_steps`.

    Raises:
      ConfigError: unknown `schedule.decay_type` or warmup_steps > total_steps.
    """
    sched = config.get("schedule") or {}
    decay_type = sched.get("decay_type", "cosine")
    warmup = int(sched.get("warmup_steps", 0))
    total = int(config.total_steps)
    lr = float(config.lr)
    end = lr * float(sched.get("end_lr_ratio", 0.0))
    if decay_type not in DECAY_TYPES:
        raise ConfigError(f"schedule.decay_type={decay_type!r} is unknown; use one of "
                          f"{DECAY_TYPES}")
    if warmup > total:
        raise ConfigError(f"schedule.warmup_steps={warmup} exceeds total_steps={total}; "
                          f"lower warmup_steps")
    rest = max(total - warmup, 1)
    if decay_type == "cosine":
        decay = optax.cosine_decay_schedule(lr, rest, alpha=end / lr if lr else 0.0)
    elif decay_type == "linear":
        decay = optax.linear_schedule(lr, end, rest)
    elif decay_type == "constant":
        decay = optax.constant_schedule(lr)
    else:  # rsqrt (Vaswani et al. 2017), continuous at the end of warmup
        timescale = float(sched.get("timescale", max(warmup, 1)))
        def decay(step: Any) -> Any:
            return lr * jnp.sqrt(timescale / (jnp.maximum(step, 0) + timescale))
    if warmup == 0:
        return decay
    return optax.join_schedules([optax.linear_schedule(0.0, lr, warmup), decay], [warmup])


def lr_mult_tree(params: Any, lr_mults: Sequence[tuple[str, Any]] | None) -> Any:
    """Per-leaf multiplier (float; 0.0 means frozen) from `lr_mults` rules.

    Raises:
      ConfigError: a rule's regex does not compile.
    """
    rules = list(lr_mults or [])

    for regex, _ in rules:
        try:
            re.compile(regex)
        except (re.error, TypeError) as e:
            raise ConfigError(f"lr_mults: pattern {regex!r} is not a valid regex ({e}); fix "
                              f"it") from None

    def one(path: tuple, _: Any) -> float:
        name = path_name(path)
        for regex, mult in rules:
            if re.search(regex, name):
                return 0.0 if mult is None else float(mult)
        return 1.0
    return jax.tree_util.tree_map_with_path(one, params)


def frozen_mask(params: Any, config: Any) -> Any:
    """True for params frozen by `lr_mults` (multiplier 0 or None)."""
    return jax.tree.map(lambda m: m == 0.0, lr_mult_tree(params, config.get("lr_mults")))


def _base_optimizer(config: Any, schedule: optax.Schedule,
                    wd_mask: Any) -> optax.GradientTransformation:
    name = config.get("optax_name", "adamw")
    kw = dict(config.get("optax") or {})
    wd = float(config.get("wd", 0.0) or 0.0)
    try:
        return _make_base(name, kw, wd, schedule, wd_mask)
    except TypeError as e:  # e.g. an argument the optimizer does not take
        raise ConfigError(f"optax={kw} does not fit optax_name={name!r} ({e}); pass only that "
                          f"optimizer's arguments") from None


def _make_base(name: str, kw: dict, wd: float, schedule: optax.Schedule,
               wd_mask: Any) -> optax.GradientTransformation:
    if name == "adam":
        return optax.adam(schedule, **kw)
    if name == "adamw":
        return optax.adamw(schedule, weight_decay=wd, mask=wd_mask, **kw)
    if name == "sgd":
        return optax.chain(optax.add_decayed_weights(wd, wd_mask) if wd else optax.identity(),
                           optax.sgd(schedule, **kw))
    if name == "adafactor":
        return optax.adafactor(schedule, weight_decay_rate=wd or None,
                               weight_decay_mask=wd_mask, **kw)
    raise ConfigError(f"optax_name={name!r} is unknown; use one of {OPTIMIZERS}")


def make_optimizer(config: Any, params: Any) -> optax.GradientTransformation:
    """The full update rule: clip -> optimizer(schedule, wd on kernels) -> lr multipliers.

    Frozen params (see `lr_mults`) get `optax.set_to_zero()` and hold no optimizer state.

    Raises:
      ConfigError: unknown optimizer or schedule.
    """
    schedule = make_schedule(config)
    wd_mask = jax.tree_util.tree_map_with_path(
        lambda p, _: path_name(p).endswith("kernel"), params)
    mults = lr_mult_tree(params, config.get("lr_mults"))
    parts = []
    if config.get("grad_clip_norm"):
        parts.append(optax.clip_by_global_norm(float(config.grad_clip_norm)))
    parts.append(_base_optimizer(config, schedule, wd_mask))
    if any(m not in (0.0, 1.0) for m in jax.tree.leaves(mults)):
        parts.append(_scale_by_tree(mults))
    tx = optax.chain(*parts)
    if not any(m == 0.0 for m in jax.tree.leaves(mults)):
        return tx
    labels = jax.tree.map(lambda m: "frozen" if m == 0.0 else "train", mults)
    return optax.multi_transform({"train": tx, "frozen": optax.set_to_zero()}, labels)


def _scale_by_tree(mults: Any) -> optax.GradientTransformation:
    def init(params: Any) -> optax.EmptyState:
        del params
        return optax.EmptyState()

    def update(updates: Any, state: Any, params: Any = None) -> tuple[Any, Any]:
        del params
        # multi_transform hands masked trees (optax.MaskedNode) for other groups' leaves.
        scaled = jax.tree.map(lambda u, m: u if isinstance(u, optax.MaskedNode) else u * m,
                              updates, mults, is_leaf=lambda x: isinstance(x, optax.MaskedNode))
        return scaled, state
    return optax.GradientTransformation(init, update)
