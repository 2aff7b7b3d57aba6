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
from vitx.train import ema as ema_lib
from vitx.train import sharding as shd
from vitx.train import trainer
from vitx.utils import checkpoints, tree


def _make_evaluators(config: ml_collections.ConfigDict) -> Any:
    def make(context_for: Any) -> list:
        return evaluators.from_config(config.get("evals"), context_for)
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


def evaluate(config: ml_collections.ConfigDict, checkpoint: str, *, ema: bool = False
             ) -> dict[str, float]:
    """Run every `config.evals` evaluator on the params of `checkpoint` (`vitx eval`).

    With `ema`, on the checkpoint's EMA weights (`vitx.train.ema`), the metrics then named
    "<eval name>_ema/..." as in training.

    `checkpoint` is any checkpoint spec (`vitx.utils.checkpoints`: a workdir, a step directory,
    a vitx / big_vision / vit_jax .npz, optionally `:subtree`), relative or absolute. Loading is
    strict (no surgery): the params must fit the config's model exactly.

    Raises:
      FileNotFoundError: no checkpoint at that path.
      ValueError: the checkpoint's params do not fit the config's model (names listed), the
        config has no evals, or `ema` and the checkpoint holds no EMA.
    """
    if not config.get("evals"):
        raise ValueError("config.evals is empty; add e.g. evals.test=dict(dataset=..., "
                         "split=..., pp=...)")
    loaded, meta = checkpoints.load_params(checkpoint, ema=ema)
    s = trainer.setup(config)
    abstract, _ = s.init_state(materialize=False)
    template = jax.tree.map(lambda x: np.broadcast_to(np.zeros((), x.dtype), x.shape),
                            trainer.variables_of(abstract))
    # Strict: the params (and batch statistics, if the model has them) must fit the model.
    loaded = {"params": loaded, **checkpoints.load_model_state(checkpoint, ema=ema)}
    variables = tree.merge_params(template, loaded)  # the template costs no memory
    variable_shardings = shd.tree_shardings(variables, s.mesh, list(s.run.sharding_rules))
    variables = jax.device_put(variables, variable_shardings)

    def context_for(name: str | None) -> dict[str, Any]:
        return dict(predict_fn=s.predict_fn_for(name), task=s.routes[name].task, mesh=s.mesh,
                    variable_shardings=variable_shardings, data_dir=s.run.data_dir,
                    default_batch_size=s.routes[name].input.batch_size,
                    model=s.run.model)
    metrics: dict[str, float] = {} if meta.get("step") is None else {"step": float(meta["step"])}
    for ev in evaluators.from_config(config.evals, context_for):
        metrics.update(ema_lib.renamed(ev.run(variables)) if ema else ev.run(variables))
    return metrics
