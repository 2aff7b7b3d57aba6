"""Exponential moving average (EMA, Polyak averaging) of the weights, from `config.ema`.

    config.ema = dict(decay=0.9998, warmup_steps=0)     # decay 0 (or no section): off

The EMA is part of the train state, `state["ema"] = {"params": ..., **model_state}` (the
params and the batch statistics, i.e. the model's variables), sharded like them, checkpointed
and restored with the rest of the state (bitwise on resume). After the update of step t
(t = 0, 1, ...; `state["step"]` before it):

    ema_{t+1} = d_t ema_t + (1 - d_t) v_{t+1},   d_t = 0 if t < warmup_steps else decay

with `v` the new variables and `ema_0 = v_0` (the initial or `model_init` variables). So for
the first `warmup_steps` updates the EMA equals the weights (timm `ModelEmaV3`'s
`update_after_step`), then it averages with a constant decay (an effective window of about
1 / (1 - decay) steps). The update is `optax.incremental_update(v, ema, 1 - d_t)`. Evaluators
run on the raw and on the EMA variables (`test/...` and `test_ema/...`); `vitx eval --ema` and
`vitx export --ema` read the EMA variables of a checkpoint.

Sources: Polyak & Juditsky, SIAM J. Control Optim. 1992 (averaging of iterates); ViT
(Dosovitskiy et al., ICLR 2021, App. B.1.1: Polyak averaging with decay 0.9999 for
fine-tuning); DeiT (Touvron et al., ICML 2021, Sec. 6: EMA of the weights, decay 0.99996);
timm `timm/utils/model_ema.py` (`ModelEmaV3`: params and buffers, warm-up).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import optax

from vitx.utils import ConfigError

Array = jax.Array
KEYS = ("decay", "warmup_steps")
#: Suffix of an evaluator name for its metrics on the EMA weights ("test" -> "test_ema").
SUFFIX = "_ema"


@dataclasses.dataclass(frozen=True)
class EmaConfig:
    """`config.ema` (see the module docstring).

    Attributes:
      decay: d in [0, 1); 0 is off.
      warmup_steps: updates during which the EMA copies the weights (d_t = 0).

    Raises:
      ConfigError: decay outside [0, 1) or a negative / non-int warmup_steps.
    """

    decay: float = 0.0
    warmup_steps: int = 0

    def __post_init__(self) -> None:
        d, w = self.decay, self.warmup_steps
        if not isinstance(d, int | float) or isinstance(d, bool) or not 0 <= d < 1:
            raise ConfigError(f"ema.decay={d!r} must be in [0, 1) (0: off; e.g. 0.9998); fix it "
                              f"with --config.ema.decay=...")
        if not isinstance(w, int) or isinstance(w, bool) or w < 0:
            raise ConfigError(f"ema.warmup_steps={w!r} must be an int >= 0; fix it with "
                              f"--config.ema.warmup_steps=...")

    @classmethod
    def from_config(cls, config: Any) -> EmaConfig | None:
        """The `ema` section of a config, or None when absent or decay is 0.

        Raises:
          ConfigError: unknown keys (lists the known ones) or bad values (see the class).
        """
        section = config.get("ema")
        if not section:
            return None
        section = dict(section)
        unknown = sorted(set(section) - set(KEYS))
        if unknown:
            raise ConfigError(f"ema has unknown keys {unknown}; its keys are {list(KEYS)}")
        cfg = cls(**section)
        return cfg if cfg.decay > 0 else None


def variables(state: Mapping[str, Any]) -> dict:
    """The model's variables in a train state: {"params": ..., **state["model_state"]}."""
    return {"params": state["params"], **state.get("model_state", {})}


def init(variables_: Any) -> Any:
    """ema_0: a copy of the variables (new buffers, so donating the state never aliases)."""
    return jax.tree.map(jnp.copy, variables_)


def decay_at(cfg: EmaConfig, step: Array) -> Array:
    """d_t (float32 ()): 0 for updates t < warmup_steps, then `decay`."""
    return jnp.where(step < cfg.warmup_steps, 0.0, cfg.decay).astype(jnp.float32)


def update(ema: Any, new: Any, decay: Array) -> Any:
    """decay * ema + (1 - decay) * new for float leaves; other leaves take `new`."""
    def one(e: Array, v: Array) -> Array:
        if not jnp.issubdtype(v.dtype, jnp.inexact):
            return v
        return optax.incremental_update(v, e, (1.0 - decay).astype(v.dtype))
    return jax.tree.map(one, ema, new)


def ema_fn(cfg: EmaConfig) -> Callable[[dict, dict], Any]:
    """(old state, new state) -> new `state["ema"]`, for `steps.build_train_step(ema_fn=)`."""
    def fn(old: dict, new: dict) -> Any:
        return update(old["ema"], variables(new), decay_at(cfg, old["step"]))
    return fn


def renamed(metrics: Mapping[str, float]) -> dict[str, float]:
    """Metrics of the EMA weights: "<eval name>/<metric>" -> "<eval name>_ema/<metric>"."""
    out = {}
    for k, v in metrics.items():
        head, sep, rest = k.partition("/")
        out[f"{head}{SUFFIX}{sep}{rest}"] = v
    return out
