"""Top-1 accuracy and mean loss of a classifier over a whole split.

    config.evals.test = dict(type="classification", dataset="digits", split="test",
                             pp="...", batch_size=120, label_subset=None)

Metrics `test/accuracy` and `test/loss` are exact over all examples: the last batch is padded
and masked (`_mask`), sums are accumulated on device and fetched once.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

from vitx.data import pipeline
from vitx.evaluators import EvalContext, features
from vitx.train import sharding as shd
from vitx.train import steps


class Evaluator:
    """Accuracy (`task.correct`) and loss (`task.loss`) of `ctx.predict_fn` on one split.

    Args:
      name: metric prefix (the key in `config.evals`).
      cfg: that eval's config (dataset, split, pp, batch_size, label_subset).
      ctx: the shared `EvalContext`.

    Raises:
      ValueError: an unknown dataset or split, a bad pp spec or batch size.
    """

    def __init__(self, name: str, cfg: ml_collections.ConfigDict, ctx: EvalContext):
        self.name = name
        self.ctx = ctx
        self.ds = features.eval_dataset(cfg, ctx, cfg.split)
        self.batch_sharding = shd.batch_sharding(ctx.mesh)
        task, predict = ctx.task, ctx.predict_fn

        def sums(variables: Any, batch: dict, **model_kw: Any) -> dict:
            logits, aux = predict(variables, batch, **model_kw)
            mask = batch.get(pipeline.MASK_KEY, jnp.ones(logits.shape[:1])).astype(jnp.float32)
            kw = steps.aux_kw(task, aux)  # e.g. masked patch prediction's patch_mask
            return {"correct": jnp.sum(task.correct(logits, batch, **kw) * mask),
                    "loss": jnp.sum(task.loss(logits, batch, **kw) * mask),
                    "count": jnp.sum(mask)}
        self.cache = steps.StepCache(
            lambda plan: functools.partial(sums, **dict(plan)),
            in_shardings=(ctx.variable_shardings, self.batch_sharding),
            out_shardings=shd.replicated(ctx.mesh))

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Per-example shape of the model input (`task.inputs`) of this split."""
        return tuple(int(d) for d in self.ds.element_spec[self.ctx.task.inputs].shape[1:])

    def evaluate(self, variables: Any, plan: tuple = ()) -> dict[str, float]:
        """{"accuracy", "loss", "count"} over the split, the model run with `dict(plan)`."""
        fn = self.cache(plan)
        totals = {"correct": 0.0, "loss": 0.0, "count": 0.0}  # summed on device
        for batch in pipeline.global_batches(self.ds, self.batch_sharding):
            totals = jax.tree.map(jnp.add, totals, fn(variables, batch))
        totals = {k: float(v) for k, v in jax.device_get(totals).items()}
        n = max(totals["count"], 1.0)
        return {"accuracy": totals["correct"] / n, "loss": totals["loss"] / n,
                "count": totals["count"]}

    def run(self, variables: Any, *, final: bool = False) -> dict[str, float]:
        """`{name}/accuracy` and `{name}/loss`."""
        del final
        res = self.evaluate(variables)
        return {f"{self.name}/accuracy": res["accuracy"], f"{self.name}/loss": res["loss"]}
