"""Plugins: optional pieces of training that plug into the one loop (FlexiViT, distillation).

A plugin module defines `from_config(config, ctx) -> Plugin | None` (None when its config key
is absent) and is listed in `PLUGINS`. A `Plugin` may

  * `plan(step)`: contribute static per-step choices (a dict merged into the per-step plan; each
    distinct plan is one compiled train step). Must be a pure function of `(seed, step)` so a
    resumed run replays it exactly.
  * `extra_args()`: add arguments to the train step (e.g. a teacher's params), with shardings.
  * `extra_loss(...)`: replace the per-example loss `(logits, batch, task_loss, *extra) -> (B,)`.
  * `batches_before(step)`: say how many batches each task's input stream consumed in steps
    [0, step) (where it resumes), when the plugin decides which tasks a step trains (the
    multi-task schedule); None when it does not. At most one plugin may answer.

The loop knows nothing else about any plugin. Add one: write `vitx/train/<name>.py` with
`from_config` and list it in `PLUGINS`.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import jax
import ml_collections

#: Plugin modules, in the order their plans and losses are applied.
PLUGINS = ("vitx.train.flexi", "vitx.train.distill")


@dataclasses.dataclass(frozen=True)
class SetupContext:
    """What a plugin may look at when it is built.

    Attributes:
      config: the resolved run config.
      mesh: the device mesh.
      task: the `vitx.tasks` task.
      spec: the train data's example spec {key: (shape, dtype)} (no batch dim).
    """

    config: ml_collections.ConfigDict
    mesh: jax.sharding.Mesh
    task: Any
    spec: Mapping[str, tuple[tuple[int, ...], Any]]


class Plugin:
    """A plugin with every hook a no-op; subclasses override what they need."""

    def plan(self, step: int) -> dict[str, Any]:
        del step
        return {}

    def extra_args(self) -> tuple[tuple, tuple]:
        """(values, their shardings): extra arguments of the train step."""
        return (), ()

    extra_loss: Callable[..., jax.Array] | None = None

    def batches_before(self, step: int) -> dict[str | None, int] | None:
        """{task name: batches its input consumed in steps [0, step)}, or None when this plugin
        does not pick the tasks of a step (every task then takes one batch per step)."""
        del step
        return None


def from_config(config: ml_collections.ConfigDict, ctx: SetupContext) -> list[Plugin]:
    """The plugins this config switches on, in `PLUGINS` order."""
    out = []
    for name in PLUGINS:
        plugin = importlib.import_module(name).from_config(config, ctx)
        if plugin is not None:
            out.append(plugin)
    return out


class StepPlan:
    """The per-step plan: the static choices of step `step`, merged over the plugins.

    `plan(step)` is a tuple of sorted (key, value) pairs: hashable, so it keys the compiled-step
    cache; `dict(plan(step))` is the model's static kwargs. A pure function of (seed, step).

    Raises:
      ValueError: two plugins set the same key.
    """

    def __init__(self, plugins: list[Plugin]):
        self.plugins = plugins

    def __call__(self, step: int) -> tuple[tuple[str, Any], ...]:
        merged: dict[str, Any] = {}
        for p in self.plugins:
            for k, v in p.plan(step).items():
                if k in merged:
                    raise ValueError(f"two plugins set the per-step choice {k!r}; switch one off")
                merged[k] = v
        return tuple(sorted(merged.items()))

    def batches_before(self, step: int, names: Iterable[str | None]) -> dict[str | None, int]:
        """{task name: batches consumed in steps [0, step)} for the tasks `names`: the answer of
        the one plugin that plans the tasks (`Plugin.batches_before`), else `step` for each.

        Raises:
          ValueError: two plugins answer.
        """
        answers = [a for a in (p.batches_before(step) for p in self.plugins) if a is not None]
        if len(answers) > 1:
            raise ValueError("two plugins plan the tasks of a step (batches_before); switch one "
                             "off")
        return answers[0] if answers else {name: step for name in names}

    @property
    def is_static(self) -> bool:
        """True when no plugin plans anything (one compiled program for the whole run)."""
        return not self(0)
