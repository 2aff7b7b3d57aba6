"""Semantic segmentation: per-pixel softmax cross-entropy over K classes.

    config.model_name = "dense"       # an encoder + a `segmentation` head (vitx.models.dense)
    config.model.heads = dict(seg=dict(type="segmentation", upsample="subpixel"))
    config.task = dict(type="segmentation", inputs="image", labels="mask")
    config.num_classes = 11           # K: background + 10 digits for digit_scenes

Model output ("logits"): (B, H, W, K) per-pixel logits (the dense model's `LinearDecoder`,
`vitx.models.segmentation_head`). Batch: `mask` (B, H, W) or (B, H, W, 1) int class ids in
[0, K) (`digit_scenes`: 0 background, 1 + d on the ink of digit d).

Loss: the mean over the H * W pixels of softmax cross-entropy, per example (B,) (Segmenter,
Strudel et al., ICCV 2021, Sec. 3.2; SETR, Zheng et al., CVPR 2021, Sec. 3.3). `correct` is the
per-example pixel accuracy (the fraction of pixels whose argmax is the label), so the
classification evaluator's "accuracy" of this task is the pixel accuracy; the `segmentation`
evaluator adds mIoU.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

Array = jax.Array

__all__ = ["Task"]


@dataclasses.dataclass(frozen=True)
class Task:
    """Per-pixel softmax classification of `batch[inputs]` into `batch[labels]`.

    Attributes:
      num_classes: K, including the background class 0.
      inputs: the batch key the model is called on.
      labels: the batch key of the (B, H, W[, 1]) int mask.
    """

    num_classes: int
    inputs: str = "image"
    labels: str = "mask"

    def model_inputs(self, batch: dict[str, Array]) -> Array:
        return batch[self.inputs]

    def targets(self, logits: Array, batch: dict[str, Array]) -> Array:
        """(B, H, W) int32 class ids, checked against the (B, H, W, K) logits.

        Raises:
          ValueError: a batch without the mask key (naming `task.labels` and the fix), or
            logits that are not (B, H, W, K) over the mask's pixels.
        """
        if self.labels not in batch:
            raise ValueError(f"task segmentation: the batches have no {self.labels!r} (keys: "
                             f"{sorted(batch)}); use a dataset with per-pixel masks "
                             f"(digit_scenes) and keep task.labels={self.labels!r} in input.pp")
        mask = batch[self.labels]
        if mask.ndim == 4 and mask.shape[-1] == 1:
            mask = mask[..., 0]
        if logits.ndim != 4 or logits.shape[:3] != mask.shape or \
                logits.shape[-1] != self.num_classes:
            raise ValueError(f"task segmentation: the model gives {tuple(logits.shape)}, not "
                             f"(B, H, W, num_classes) = {(*mask.shape, self.num_classes)} for "
                             f"masks {tuple(batch[self.labels].shape)}; use model_name='dense' "
                             f"with a segmentation head of num_classes={self.num_classes} classes "
                             f"(model.head_classes)")
        return mask.astype(jnp.int32)

    def loss(self, logits: Array, batch: dict[str, Array]) -> Array:
        """(B, H, W, K) logits -> (B,) mean per-pixel softmax cross-entropy."""
        mask = self.targets(logits, batch)
        logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
        nll = -jnp.take_along_axis(logp, mask[..., None], axis=-1)[..., 0]
        return jnp.mean(nll, axis=(1, 2))

    def correct(self, logits: Array, batch: dict[str, Array]) -> Array:
        """(B,) float32 pixel accuracy of each example."""
        mask = self.targets(logits, batch)
        return jnp.mean((jnp.argmax(logits, -1) == mask).astype(jnp.float32), axis=(1, 2))

    def predict(self, logits: Array) -> Array:
        """(B, H, W, K) per-pixel class probabilities."""
        return jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
