"""Evaluators: top-1 accuracy and loss over a whole split, optionally per patch size.

`config.evals.<name> = dict(dataset=..., split=..., pp=..., batch_size=..., every_steps=...,
patch_sizes=None)`. Metrics are exact over all examples (the last batch is padded and masked).
With `patch_sizes` (FlexiViT) the metrics are reported per size as `<name>/accuracy@<p>` and
`<name>/loss@<p>`, plus `<name>/accuracy` (the mean over the sizes) and `<name>/accuracy_best`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import Mesh

from vitx.data import pipeline
from vitx.train import sharding as shd
from vitx.train import steps


class ClassificationEvaluator:
    """Evaluates a classifier's params on one split.

    Args:
      name: metric prefix (the key in `config.evals`).
      cfg: that eval's config (dataset, split, pp, batch_size, patch_sizes).
      model: the flax module; `model_kw_for(p)` maps a patch size to the model's static kwargs.
      num_classes: K of the labels.
      mesh: the device mesh; batches are sharded over its batch axes.
      data_dir: TFDS data_dir.
    """

    def __init__(self, name: str, cfg: ml_collections.ConfigDict, *, model: nn.Module,
                 num_classes: int, mesh: Mesh, data_dir: str | None,
                 default_batch_size: int, param_shardings: Any,
                 patch_sizes: Sequence[int] | None = None):
        self.name = name
        self.mesh = mesh
        self.patch_sizes = list(patch_sizes or cfg.get("patch_sizes") or [])
        self.ds = pipeline.build_dataset(
            name=cfg.dataset, split=cfg.split, data_dir=data_dir, pp=cfg.pp,
            global_batch_size=cfg.get("batch_size", default_batch_size), train=False,
            cache=True, label_subset=cfg.get("label_subset"))
        self.batch_sharding = shd.batch_sharding(mesh)
        repl = shd.replicated(mesh)

        def make(ps: int | None):
            kw = {} if ps is None else {"patch_size": ps}
            return steps.make_eval_step(model, num_classes=num_classes, model_kw=kw)
        self.cache = steps.StepCache(make, in_shardings=(param_shardings, self.batch_sharding),
                                     out_shardings=repl)

    def _run_one(self, params: Any, ps: int | None) -> dict[str, float]:
        fn = self.cache(ps)
        sums = {"correct": 0.0, "loss": 0.0, "count": 0.0}  # summed on device, one transfer
        for batch in pipeline.global_batches(self.ds, self.batch_sharding):
            sums = jax.tree.map(jnp.add, sums, fn(params, batch))
        totals = {k: float(v) for k, v in jax.device_get(sums).items()}
        n = max(totals["count"], 1.0)
        return {"accuracy": totals["correct"] / n, "loss": totals["loss"] / n,
                "count": totals["count"]}

    def run(self, params: Any) -> dict[str, float]:
        """Metrics `{name}/accuracy`, `{name}/loss` (and `@<p>` per patch size)."""
        metrics: dict[str, float] = {}
        if not self.patch_sizes:
            res = self._run_one(params, None)
            metrics[f"{self.name}/accuracy"] = res["accuracy"]
            metrics[f"{self.name}/loss"] = res["loss"]
            return metrics
        for ps in self.patch_sizes:
            res = self._run_one(params, ps)
            metrics[f"{self.name}/accuracy@{ps}"] = res["accuracy"]
            metrics[f"{self.name}/loss@{ps}"] = res["loss"]
        best = max(metrics[f"{self.name}/accuracy@{p}"] for p in self.patch_sizes)
        metrics[f"{self.name}/accuracy"] = float(np.mean(
            [metrics[f"{self.name}/accuracy@{p}"] for p in self.patch_sizes]))
        metrics[f"{self.name}/accuracy_best"] = best
        return metrics


def evaluate_checkpoint(config: ml_collections.ConfigDict, checkpoint: str) -> dict[str, float]:
    """Run every `config.evals` evaluator on the params of `checkpoint` (`vitx eval`).

    `checkpoint` is a vitx workdir / checkpoints dir (latest step) or a `.npz[:subtree]` file in
    vitx, big_vision or vit_jax layout (detected from the names).

    Raises:
      FileNotFoundError: no checkpoint at that path.
      ValueError: the checkpoint's params do not fit the config's model (names listed).
    """
    from vitx.train import checkpoint as ckpt_lib
    from vitx.train import transfer
    from vitx.train.trainer import build_model

    mesh = shd.make_mesh(config.mesh)
    path, subtree = transfer.parse_init_spec(checkpoint)
    if path.endswith(".npz"):
        loaded = transfer.load_npz(path, subtree=subtree)
        step = None
    else:
        loaded, meta = ckpt_lib.load_params(path)
        step = meta.get("step")
    model = build_model(config)
    evals = config.get("evals") or {}
    if not evals:
        raise ValueError("config.evals is empty; add e.g. evals.test=dict(dataset=..., "
                         "split=..., pp=...)")
    first = next(iter(evals.values()))
    image_shape = pipeline.image_shape(name=first.dataset, split=first.split,
                                       data_dir=config.get("data_dir"), pp=first.pp,
                                       label_subset=first.get("label_subset"))
    kw = {"patch_size": config.flexi.patch_sizes[0]} if config.get("flexi") else {}
    shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0),
                                               jnp.zeros((1, *image_shape)), **kw)["params"])
    template = jax.tree.map(lambda s: np.broadcast_to(np.zeros((), s.dtype), s.shape), shapes)
    params = transfer.merge_params(template, loaded)  # strict; the template costs no memory
    param_shardings = shd.tree_shardings(params, mesh, list(config.get("sharding_rules") or []))
    params = jax.device_put(params, param_shardings)
    metrics: dict[str, float] = {} if step is None else {"step": float(step)}
    for name, ev in evals.items():
        evaluator = ClassificationEvaluator(
            name, ev, model=model, num_classes=config.num_classes, mesh=mesh,
            data_dir=config.get("data_dir"), default_batch_size=config.input.batch_size,
            param_shardings=param_shardings)
        metrics.update(evaluator.run(params))
    return metrics
