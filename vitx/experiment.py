"""What `vitx train` and `vitx eval` run: the trainer and the evaluators, put together.

This module sits above `vitx.train` and `vitx.evaluators` (the trainer does not import the
evaluators; it gets them from here), so imports keep pointing one way.
"""

from __future__ import annotations

from typing import Any

import jax
import ml_collections
import numpy as np

from vitx import evaluators
from vitx.config import ConfigError
from vitx.train import sharding as shd
from vitx.train import state as state_lib
from vitx.train import trainer
from vitx.utils import checkpoints, tree


def _make_evaluators(config: ml_collections.ConfigDict) -> Any:
    def make(**kw: Any) -> list:
        return evaluators.from_config(config.get("evals"), evaluators.EvalContext(**kw))
    return make


def train(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
    """Train per `config` into `workdir` with the evaluators of `config.evals`.

    Raises:
      ConfigError: bad config (the message names the key and the fix).
    """
    try:
        return trainer.train(config, workdir, make_evaluators=_make_evaluators(config))
    except ValueError as e:  # a bad eval entry: same one-line error as any config error
        if isinstance(e, ConfigError):
            raise
        raise ConfigError(str(e)) from None


def evaluate(config: ml_collections.ConfigDict, checkpoint: str) -> dict[str, float]:
    """Run every `config.evals` evaluator on the params of `checkpoint` (`vitx eval`).

    `checkpoint` is any checkpoint spec (`vitx.utils.checkpoints`: a workdir, a step directory,
    a vitx / big_vision / vit_jax .npz, optionally `:subtree`), relative or absolute. Loading is
    strict (no surgery): the params must fit the config's model exactly.

    Raises:
      FileNotFoundError: no checkpoint at that path.
      ValueError: the checkpoint's params do not fit the config's model (names listed), or the
        config has no evals.
    """
    if not config.get("evals"):
        raise ValueError("config.evals is empty; add e.g. evals.test=dict(dataset=..., "
                         "split=..., pp=...)")
    loaded, meta = checkpoints.load_params(checkpoint)
    s = trainer.setup(config)
    shapes = state_lib.abstract_params(s.model, s.task, s.spec, dict(s.plan(0)))
    template = jax.tree.map(lambda x: np.broadcast_to(np.zeros((), x.dtype), x.shape), shapes)
    params = tree.merge_params(template, loaded)  # strict; the template costs no memory
    param_shardings = shd.tree_shardings(params, s.mesh, list(config.get("sharding_rules") or []))
    params = jax.device_put(params, param_shardings)
    ctx = evaluators.EvalContext(
        predict_fn=s.predict_fn, task=s.task, mesh=s.mesh, param_shardings=param_shardings,
        data_dir=config.get("data_dir"), default_batch_size=config.input.batch_size)
    metrics: dict[str, float] = {} if meta.get("step") is None else {"step": float(meta["step"])}
    for ev in evaluators.from_config(config.evals, ctx):
        metrics.update(ev.run(params))
    return metrics
