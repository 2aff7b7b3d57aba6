"""Multi-task training (PolyViT): one route per task, and the task schedule as a per-step plan.

    config.multitask = dict(
        schedule="weighted",        # task_by_task | alternating | uniform | weighted | accumulated
        accumulate="sum",           # accumulated only: sum or mean of the tasks' losses
        tasks=[dict(name="digits", num_classes=10,
                    task=dict(type="classification", inputs="image", labels="label"),
                    model_kw=dict(modality="image", task="digits"),   # static model kwargs
                    input=dict(dataset="digits", split="train", pp="...", batch_size=64),
                    lr_mult=1.0, steps=300),                          # or epochs=...
               ...])

A route is what one task needs: its task object (which batch keys, which loss), the model's
static kwargs (PolyViT's modality and head: one compiled program per route), its data and its
learning-rate multiplier. A single-task config is one route named None built from
`config.task` and `config.input`. Source: PolyViT (Likhosherstov et al., TMLR 2023, Sec. 3.2).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import ml_collections

from vitx import tasks
from vitx.config import ConfigError
from vitx.data import pipeline
from vitx.train.plugins import Plugin
from vitx.train.task_schedules import TaskSchedule

_TASK_KEYS = {"name", "num_classes", "task", "model_kw", "input", "lr_mult", "steps", "epochs"}


@dataclasses.dataclass(frozen=True)
class Route:
    """One task's path through the run.

    Attributes:
      name: the task name (None for a single-task config).
      task: the `vitx.tasks` task (model inputs, loss, hit).
      model_kw: static model kwargs of this task (e.g. {"modality": "video", "task": "dir"}).
      input: the train input config (dataset, split, pp, batch_size, ...).
      spec: the train data's example spec {key: (shape, dtype)}.
      lr_mult: learning-rate multiplier on this task's steps.
      steps: U_j, this task's number of steps (multi-task only).
    """

    name: str | None
    task: Any
    model_kw: dict
    input: ml_collections.ConfigDict
    spec: dict
    lr_mult: float = 1.0
    steps: int | None = None


def _spec(inp: ml_collections.ConfigDict, data_dir: str | None, key: str = "input") -> dict:
    """The example spec of input config `inp` (`key` names it in errors).

    Raises:
      ConfigError: bad dataset, split, pp or label_subset, prefixed with `key`.
    """
    try:
        return pipeline.element_spec(name=inp.dataset, split=inp.split, data_dir=data_dir,
                                     pp=inp.pp, label_subset=inp.get("label_subset"))
    except ValueError as e:
        raise ConfigError(f"{key}: {e}") from None


def routes_from_config(config: ml_collections.ConfigDict) -> dict[str | None, Route]:
    """The routes of a config: one per `multitask.tasks` entry, or the single route None.

    Raises:
      ConfigError: a task entry with unknown or missing keys, a duplicate name, a batch key the
        task reads that its data does not have, a bad task type, no steps/epochs.
    """
    data_dir = config.get("data_dir")
    try:
        if not config.get("multitask"):
            task = tasks.get_task(config.get("task"), config.num_classes)
            return {None: Route(None, task, {}, config.input, _spec(config.input, data_dir))}
        out: dict[str | None, Route] = {}
        for i, t in enumerate(config.multitask.tasks):
            key = f"multitask.tasks[{i}]"
            t = ml_collections.ConfigDict(t)
            unknown = sorted(set(t) - _TASK_KEYS)
            if unknown or "name" not in t or "input" not in t or "num_classes" not in t:
                raise ConfigError(f"{key} has unknown keys {unknown} or lacks name/input/"
                                  f"num_classes; its keys are {sorted(_TASK_KEYS)}")
            if t.name in out:
                raise ConfigError(f"{key}.name={t.name!r} is used twice; name tasks uniquely")
            inp = t.input
            steps = t.get("steps")
            if not steps and t.get("epochs"):
                n = pipeline.num_examples(name=inp.dataset, split=inp.split, data_dir=data_dir,
                                          label_subset=inp.get("label_subset"))
                steps = int(t.epochs * n // inp.batch_size)
            if not steps:
                raise ConfigError(f"{key} ({t.name}) has no steps; set steps or epochs")
            out[t.name] = Route(t.name, tasks.get_task(t.get("task"), t.num_classes),
                                dict(t.get("model_kw") or {}), inp,
                                _spec(inp, data_dir, f"{key}.input"),
                                float(t.get("lr_mult", 1.0)), int(steps))
        return out
    except ValueError as e:
        if isinstance(e, ConfigError):
            raise
        raise ConfigError(str(e)) from None


class TaskPlan(Plugin):
    """Plans `{"tasks": (name, ...)}`: the task(s) each step trains, from the task schedule."""

    def __init__(self, schedule: TaskSchedule, names: list[str]):
        self.schedule, self.names = schedule, names

    def plan(self, step: int) -> dict[str, Any]:
        return {"tasks": tuple(self.names[j] for j in self.schedule(step))}

    def batches_before(self, step: int) -> dict[str | None, int]:
        """Batches each task has consumed before `step` (where its data resumes)."""
        return dict(zip(self.names, self.schedule.counts_before(step), strict=True))


def task_plan(config: ml_collections.ConfigDict, routes: dict[str | None, Route]
              ) -> TaskPlan | None:
    """The task schedule of `config.multitask` over `routes`, or None for single-task.

    Raises:
      ConfigError: an unknown schedule kind (lists them) or unusable step counts.
    """
    if not config.get("multitask"):
        return None
    names = list(routes)
    try:
        schedule = TaskSchedule(config.multitask.get("schedule", "weighted"),
                                [routes[n].steps for n in names], seed=config.get("seed", 0))
    except ValueError as e:
        raise ConfigError(str(e)) from None
    return TaskPlan(schedule, names)
