"""Shared by the evaluators: an eval split's dataset from an eval config, and frozen features.

`eval_dataset(cfg, ctx, split)` is the one way an evaluator turns `dataset`, `pp`, `batch_size`
and `label_subset` of its config into an ordered, padded and masked pipeline;
`Representations` runs the model over such a split and returns one named output of `aux` (e.g.
"pre_logits" (N, D)) with the integer labels, on the host, padding dropped. Used by the
representation evaluators (`fewshot_linear`, `knn`).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import tensorflow as tf

from vitx.data import pipeline
from vitx.evaluators import EvalContext
from vitx.train import sharding as shd

__all__ = ["Representations", "eval_dataset"]


def eval_dataset(cfg: ml_collections.ConfigDict, ctx: EvalContext, split: str) -> tf.data.Dataset:
    """One ordered pass over `split` of `cfg.dataset` with `cfg.pp`, last batch padded (`_mask`).

    Batch size: `cfg.batch_size`, else `ctx.default_batch_size`; `cfg.label_subset` keeps those
    labels (remapped to their index in the list).

    Raises:
      ValueError: an unknown dataset or split, a bad pp spec, batch size or label subset.
    """
    return pipeline.build_dataset(
        name=cfg.dataset, split=split, data_dir=ctx.data_dir, pp=cfg.pp,
        global_batch_size=cfg.get("batch_size", ctx.default_batch_size), train=False,
        cache=True, label_subset=cfg.get("label_subset"))


class Representations:
    """Frozen features of a whole split: `aux[key]` of `ctx.predict_fn`, one jitted program.

    Args:
      ctx: the evaluator's `EvalContext` (predict_fn, task, mesh, variable shardings).
      key: the `aux` entry to read, e.g. "pre_logits" (B, D); a (B, ..., D) output is flattened
        to (B, prod(...) * D).

    Raises:
      KeyError (on call): the model's `aux` has no `key` (the message lists what it has).
    """

    def __init__(self, ctx: EvalContext, key: str = "pre_logits"):
        self.key = key
        self.labels_key = getattr(ctx.task, "labels", "label")
        self.batch_sharding = shd.batch_sharding(ctx.mesh)
        predict, labels_key = ctx.predict_fn, self.labels_key

        def features(variables: Any, batch: dict) -> dict:
            _, aux = predict(variables, batch)
            if key not in aux:
                raise KeyError(f"representation {key!r} is not an output of this model; use one "
                               f"of {sorted(aux)}")
            rep = aux[key]
            mask = batch.get(pipeline.MASK_KEY, jnp.ones(rep.shape[:1]))
            return {"rep": rep.reshape(rep.shape[0], -1).astype(jnp.float32),
                    "label": batch[labels_key], "mask": mask}
        self._fn = jax.jit(features, in_shardings=(ctx.variable_shardings, self.batch_sharding),
                           out_shardings=shd.replicated(ctx.mesh))

    def __call__(self, variables: Any, ds: tf.data.Dataset) -> tuple[np.ndarray, np.ndarray]:
        """(features (N, D) float32, labels (N,) int64) of every real example of `ds`, in order.

        One-hot or soft labels (N, K) become their argmax.
        """
        reps, labels = [], []
        for batch in pipeline.global_batches(ds, self.batch_sharding):
            out = jax.device_get(self._fn(variables, batch))
            keep = np.asarray(out["mask"]) > 0
            lab = np.asarray(out["label"])
            lab = lab.argmax(-1) if lab.ndim == 2 else lab
            reps.append(np.asarray(out["rep"])[keep])
            labels.append(lab[keep].astype(np.int64))
        if not reps:
            return np.zeros((0, 0), np.float32), np.zeros((0,), np.int64)
        return np.concatenate(reps), np.concatenate(labels)


class TrainTestFeatures:
    """Frozen features of a train and a test split for the representation evaluators
    (`fewshot_linear`, `knn`): `cfg.train_split` ("train") and `cfg.test_split` ("test") of
    `cfg.dataset` with `cfg.pp`, read at `cfg.representation` ("pre_logits").

    Calling it with the model's variables returns `(x_train (N, D), y_train (N,), x_test
    (M, D), y_test (M,), num_classes)`, labels as ints, num_classes = largest label + 1.

    Raises:
      ValueError: an unknown dataset or split, a bad pp spec, batch size or label subset.
    """

    def __init__(self, cfg: ml_collections.ConfigDict, ctx: EvalContext):
        self.train_ds = eval_dataset(cfg, ctx, cfg.get("train_split", "train"))
        self.test_ds = eval_dataset(cfg, ctx, cfg.get("test_split", "test"))
        self.represent = Representations(ctx, cfg.get("representation", "pre_logits"))

    def __call__(self, variables: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray,
                                               np.ndarray, int]:
        x_tr, y_tr = self.represent(variables, self.train_ds)
        x_te, y_te = self.represent(variables, self.test_ds)
        k = int(max(y_tr.max(initial=0), y_te.max(initial=0))) + 1
        return x_tr, y_tr, x_te, y_te, k
