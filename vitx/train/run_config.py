"""The run config read once: the typed parts each layer of a run receives.

`vitx.train.startup.setup` validates the `ml_collections` config (`vitx.config.validate`),
resolves `total_steps` and parses it here, once, into frozen parts; the loop, the NaN guard, the
checkpointer, the optimizer and the train state then read these parts, never the raw config.
The data routes (`vitx.train.multitask.Route`, one per task, with the dataset's example spec)
are parsed next to them by `multitask.routes_from_config`; the plugins (`vitx.train.plugins`)
parse their own sections. The full config still goes to `config.json` and into every
checkpoint's meta (`RunConfig.config_dict`).

Ranges and types are checked by `vitx.config.validate` before parsing (its one-line errors name
the key and the fix); the parts only convert, except for checks against the resolved
`total_steps` (`ProfileConfig`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

from vitx.train.ema import EmaConfig
from vitx.train.mixup import MixupConfig
from vitx.train.optim import OptimConfig
from vitx.utils import ConfigError


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Which model, and where its params start.

    Attributes:
      name: `model_name` (a key of `vitx.models.MODELS`).
      num_classes: the head's classes (None: the model config says, e.g. multi-task heads).
      cfg: the `model` section as given (a ConfigDict, or None): model modules parse it
        themselves (`Model(**cfg)`, `load(..., model_cfg)`, `check_input`).
      init: `model_init`, a checkpoint spec the params start from (None: random init).
      load_kw: `model_load`, extra keyword arguments of the model module's `load`.
    """

    name: str
    num_classes: int | None
    cfg: Any
    init: str | None = None
    load_kw: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    @classmethod
    def from_config(cls, config: Any) -> ModelConfig:
        return cls(name=config.model_name, num_classes=config.get("num_classes"),
                   cfg=config.get("model"), init=config.get("model_init") or None,
                   load_kw=dict(config.get("model_load") or {}))


@dataclasses.dataclass(frozen=True)
class StepConfig:
    """How one train step is built (`vitx.train.steps.build_train_step`).

    Attributes:
      grad_accum_steps: micro-batches per step (gradients averaged).
      skip_nonfinite: `skip_nonfinite_updates`: keep the old state for a non-finite update.
      accumulate: `multitask.accumulate`, "sum" or "mean" of the tasks' losses in a step that
        trains several tasks.
    """

    grad_accum_steps: int = 1
    skip_nonfinite: bool = False
    accumulate: str = "sum"

    @classmethod
    def from_config(cls, config: Any) -> StepConfig:
        return cls(grad_accum_steps=config.get("grad_accum_steps", 1),
                   skip_nonfinite=bool(config.get("skip_nonfinite_updates", False)),
                   accumulate=(config.get("multitask") or {}).get("accumulate", "sum"))


@dataclasses.dataclass(frozen=True)
class LoopConfig:
    """The loop's length and cadence, in steps.

    Attributes:
      total_steps: steps of the run (resolved from epochs or the task schedule).
      log_every_steps: progress line and metrics.jsonl row cadence (also the NaN guard's).
      eval_every_steps: evaluators' cadence (0: at the end only).
    """

    total_steps: int
    log_every_steps: int = 50
    eval_every_steps: int = 0

    @classmethod
    def from_config(cls, config: Any) -> LoopConfig:
        return cls(total_steps=int(config.total_steps),
                   log_every_steps=config.get("log_every_steps", 50),
                   eval_every_steps=config.get("eval_every_steps", 0) or 0)


@dataclasses.dataclass(frozen=True)
class CheckpointConfig:
    """`checkpoint.*`: how many checkpoints to keep, how to write them, how often.

    Attributes:
      keep: most recent checkpoints kept (None: all).
      async_save: write in a background thread.
      every_steps: periodic save cadence (0: only at the end and on a stop signal).
    """

    keep: int | None = 3
    async_save: bool = True
    every_steps: int = 0

    @classmethod
    def from_config(cls, config: Any) -> CheckpointConfig:
        ck = config.get("checkpoint") or {}
        return cls(keep=ck.get("keep", 3), async_save=ck.get("async_save", True),
                   every_steps=ck.get("every_steps", 0) or 0)


@dataclasses.dataclass(frozen=True)
class ProfileConfig:
    """`profile`: the train steps a JAX profiler trace records (`vitx.train.profiling`).

    Attributes:
      start_step: the first traced step (step s starts from the state of step s; its progress
        line is `[step s+1]`).
      num_steps: traced steps.
    """

    start_step: int
    num_steps: int

    @classmethod
    def from_config(cls, config: Any) -> ProfileConfig | None:
        """The `profile` section (None: off) of a config whose `total_steps` is resolved.

        Raises:
          ConfigError: `profile.start_step` is not below `total_steps`.
        """
        p = config.get("profile")
        if p is None:
            return None
        if p["start_step"] >= config.total_steps:
            raise ConfigError(f"profile.start_step={p['start_step']} is not below "
                              f"total_steps={config.total_steps}, so nothing would be traced; "
                              f"use a smaller start_step")
        return cls(start_step=p["start_step"], num_steps=p["num_steps"])


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """A run's config, parsed once (after `total_steps` is resolved).

    Attributes:
      seed: the run's seed (init, dropout, data order, per-step plans).
      data_dir: TFDS data_dir (None: TFDS's default).
      sharding_rules: ((regex, mesh axes), ...) of the train state (`vitx.train.sharding`).
      model, optim, step, loop, checkpoint: the typed parts above and `OptimConfig`.
      config_dict: the whole config as plain JSON-able dicts (`config.json`, checkpoint meta).
      profile: the steps to trace (`ProfileConfig`), or None.
      mixup: Mixup/CutMix in the train step (`vitx.train.mixup.MixupConfig`), or None (off).
      ema: the EMA of the weights (`vitx.train.ema.EmaConfig`), or None (off).
    """

    seed: int
    data_dir: str | None
    sharding_rules: tuple[Sequence[Any], ...]
    model: ModelConfig
    optim: OptimConfig
    step: StepConfig
    loop: LoopConfig
    checkpoint: CheckpointConfig
    config_dict: Mapping[str, Any]
    profile: ProfileConfig | None = None
    mixup: MixupConfig | None = None
    ema: EmaConfig | None = None

    @classmethod
    def from_config(cls, config: Any) -> RunConfig:
        """Parse a validated config whose `total_steps` is resolved.

        Raises:
          ConfigError: a bad optimizer or schedule (`OptimConfig`), or a `profile` range past
            the end.
        """
        return cls(seed=config.get("seed", 0), data_dir=config.get("data_dir"),
                   sharding_rules=tuple(config.get("sharding_rules") or ()),
                   model=ModelConfig.from_config(config), optim=OptimConfig.from_config(config),
                   step=StepConfig.from_config(config), loop=LoopConfig.from_config(config),
                   checkpoint=CheckpointConfig.from_config(config),
                   config_dict=config.to_dict(), profile=ProfileConfig.from_config(config),
                   mixup=MixupConfig.from_config(config), ema=EmaConfig.from_config(config))
