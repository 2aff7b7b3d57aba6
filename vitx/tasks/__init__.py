"""Tasks: what a model's outputs mean. A task is a small module picked by name in the config.

    config.task = dict(type="classification", inputs="image", labels="label")   # the default

A task module defines `Task(num_classes, **cfg)` with

    model_inputs(batch) -> the array the model is called on (batch[inputs]), or a dict of
                           arrays when `inputs` is a list of keys (multi-stream models)
    loss(logits, batch) -> per-example loss (B,)
    correct(logits, batch) -> per-example 0/1 top-1 hit (B,) (accuracy's numerator)
    predict(logits) -> per-class scores (B, K) (probabilities)

A task whose `reads_aux` is True gets the model's aux dict too: `loss(logits, batch, aux=aux)`,
`correct(logits, batch, aux=aux)` (masked patch prediction reads `aux["patch_mask"]`).

Batches are dicts with whatever keys the data has (`image`, `video`, `audio`, `label`, ...); the
task alone names the keys it reads, so no step or pipeline hard-codes them. Add a task: write
`vitx/tasks/<name>.py` with a `Task` class and list it in `TASKS`.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Mapping
from typing import Any

__all__ = ["TASKS", "get_task"]

TASKS = {
    "classification": "vitx.tasks.classification",
    "multilabel": "vitx.tasks.multilabel",
    "detection": "vitx.tasks.detection",
    "segmentation": "vitx.tasks.segmentation",
    "masked_patch": "vitx.tasks.masked_patch",
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
    cls = importlib.import_module(TASKS[name]).Task
    try:
        return cls(num_classes=num_classes, **cfg)
    except TypeError as e:
        keys = ([f.name for f in dataclasses.fields(cls) if f.name != "num_classes"]
                if dataclasses.is_dataclass(cls) else ["inputs", "labels"])
        raise ValueError(f"task {name!r}: {e}; its keys are {', '.join(keys)}") from None
