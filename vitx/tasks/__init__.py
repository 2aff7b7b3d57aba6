"""Tasks: what a model's outputs mean. A task is a small module picked by name in the config.

    config.task = dict(type="classification", inputs="image", labels="label")   # the default

A task module defines `Task(num_classes, **cfg)` with

    model_inputs(batch) -> the array the model is called on (batch[inputs]), or a dict of
                           arrays when `inputs` is a list of keys (multi-stream models)
    loss(logits, batch) -> per-example loss (B,)
    correct(logits, batch) -> per-example 0/1 top-1 hit (B,) (accuracy's numerator)
    predict(logits) -> per-class scores (B, K) (probabilities)

Batches are dicts with whatever keys the data has (`image`, `video`, `audio`, `label`, ...); the
task alone names the keys it reads, so no step or pipeline hard-codes them. Add a task: write
`vitx/tasks/<name>.py` with a `Task` class and list it in `TASKS`.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any

__all__ = ["TASKS", "get_task"]

TASKS = {
    "classification": "vitx.tasks.classification",
    "multilabel": "vitx.tasks.multilabel",
}


def get_task(task_cfg: Mapping[str, Any] | None, num_classes: int) -> Any:
    """The task of `config.task` (None: softmax classification of `image` into `label`).

    Raises:
      ValueError: unknown `task.type` (the message lists the known ones) or unknown task keys.
    """
    cfg = dict(task_cfg or {})
    name = cfg.pop("type", "classification")
    if isinstance(cfg.get("inputs"), list | tuple):  # several batch keys: a dict of streams
        cfg["inputs"] = tuple(cfg["inputs"])
    if name not in TASKS:
        raise ValueError(f"task.type={name!r} does not exist; use one of {sorted(TASKS)}")
    try:
        return importlib.import_module(TASKS[name]).Task(num_classes=num_classes, **cfg)
    except TypeError as e:
        raise ValueError(f"task {name!r}: {e}; its keys are inputs, labels") from None
