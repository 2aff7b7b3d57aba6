"""Evaluators, picked by `type` from a registry (big_vision's `evaluators/common.py` pattern).

    config.evals.<name> = dict(type="classification", dataset=..., split=..., pp=...,
                               batch_size=..., label_subset=None)
    config.evals.<name> = dict(type="per_patch_size", patch_sizes=(4, 8, 16), ...)  # FlexiViT
    config.evals.<name> = dict(type="classification", task="video_direction", ...)  # multi-task
    config.evals.<name> = dict(type="fewshot_linear", train_split=..., test_split=..., shots=...)
    config.evals.<name> = dict(type="knn", train_split=..., test_split=..., k=20)
    config.evals.<name> = dict(type="assemblenet_graph", prune=None)  # connection/peer weights
    config.evals.<name> = dict(type="detection", dataset="digit_scenes", ...)  # COCO mAP
    config.evals.<name> = dict(type="segmentation", dataset="digit_scenes", ...)  # mIoU

Every evaluator receives an `EvalContext`: a predict function `(variables, batch, **static_kw)
-> (logits, aux)` (big_vision's `predict_fn` convention; variables: {"params": ..., plus state
such as "batch_stats"}; `aux`: the model's named intermediate outputs, e.g. "pre_logits" (B, D)
or the token map; built by the caller from the model and the task), the task (which keys it
reads, its loss and hit), the mesh and the data settings. An evaluator module defines
`Evaluator(name, cfg, ctx)` with `run(variables, *, final=False) -> {metric name: float}`.
Add one: write `vitx/evaluators/<type>.py` and list it in `EVALUATORS`.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable
from typing import Any

import jax
import ml_collections

__all__ = ["EVALUATORS", "EvalContext", "from_config"]

EVALUATORS = {
    "assemblenet_graph": "vitx.evaluators.assemblenet_graph",
    "classification": "vitx.evaluators.classification",
    "detection": "vitx.evaluators.detection",
    "fewshot_linear": "vitx.evaluators.fewshot",
    "knn": "vitx.evaluators.knn",
    "per_patch_size": "vitx.evaluators.per_patch_size",
    "segmentation": "vitx.evaluators.segmentation",
}


@dataclasses.dataclass(frozen=True)
class EvalContext:
    """What every evaluator gets.

    Attributes:
      predict_fn: (variables, batch, **static_kw) -> (logits (B, K), aux); jittable. `aux`
        is the model's dict of named intermediate outputs (e.g. "pre_logits" (B, D),
        "encoded" (B, N, D)).
      task: the `vitx.tasks` task (model inputs, per-example loss and top-1 hit).
      mesh: the device mesh (batches are sharded over its batch axes).
      variable_shardings: shardings of the variables passed to `run`.
      data_dir: TFDS data_dir.
      default_batch_size: the batch size of evals that set none.
      workdir: where evaluators may write files (plots), or None.
      model: the run's `vitx.train.run_config.ModelConfig` (`name`, `num_classes`, `cfg` =
        config.model, e.g. an AssembleNet's graph), or None.
    """

    predict_fn: Callable[..., tuple[jax.Array, dict[str, Any]]]
    task: Any
    mesh: jax.sharding.Mesh
    variable_shardings: Any
    data_dir: str | None
    default_batch_size: int
    workdir: str | None = None
    model: Any = None


def from_config(evals: ml_collections.ConfigDict | None,
                context_for: Callable[[str | None], dict[str, Any]]) -> list[Any]:
    """One evaluator per entry of `config.evals`, in order.

    `context_for(task)` gives the `EvalContext` fields for an entry's `task` (a task name of a
    multi-task config; None for single-task configs).

    Raises:
      ValueError: an unknown `type` (the message lists the known ones) or a bad entry.
    """
    out = []
    for name, cfg in (evals or {}).items():
        kind = cfg.get("type", "classification")
        if kind not in EVALUATORS:
            raise ValueError(f"evals.{name}.type={kind!r} does not exist; use one of "
                             f"{sorted(EVALUATORS)}")
        ctx = EvalContext(**context_for(cfg.get("task")))
        try:
            out.append(importlib.import_module(EVALUATORS[kind]).Evaluator(name, cfg, ctx))
        except ValueError as e:  # bad dataset, split, pp, batch size: name the entry
            raise ValueError(f"evals.{name}: {e}") from None
    return out
