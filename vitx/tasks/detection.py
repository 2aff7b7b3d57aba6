"""Object detection with per-token predictions, Hungarian matching and the DETR loss.

    config.model_name = "dense"      # an encoder + a `detection` head (vitx.models.dense)
    config.task = dict(type="detection", inputs="image", boxes="boxes", labels="box_labels")
    config.input.pp = "...|pad_objects(4)|..."    # objects/bbox, objects/label -> boxes, box_labels

Model output ("logits"): (B, N, 4 + K + 1) per token: the box (cy, cx, h, w) in [0, 1], K class
logits and the no-object logit (`vitx.models.detection_head`, OWL-ViT's per-token design).
Batch: `boxes` (B, M, 4) float (ymin, xmin, ymax, xmax) in [0, 1] and `box_labels` (B, M) int,
M a fixed number of object slots per image, -1 marking the empty (padding) slots
(`pad_objects` of `vitx.data.pp.detection`).

Loss (DETR, Carion et al., ECCV 2020, Sec. 3.1-3.2 and Appendix A.2; weights of its code): the
objects are matched one-to-one to tokens by the Hungarian algorithm on the cost
  1 * (-p_token(class)) + 5 * L1(box) + 2 * (-GIoU(box)),
then loss = 1 * CE(class; matched tokens -> their object's class, the rest -> no-object, the
no-object term weighted 0.1, a weighted mean over the tokens) + 5 * L1 + 2 * (1 - GIoU), the box
terms summed over the image's objects and divided by their number (DETR divides by the number of
boxes in the whole batch; here each image is normalized by its own, so the loss is per example).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from vitx.tasks import boxes as box_ops
from vitx.tasks.matcher import hungarian_matching

Array = jax.Array

__all__ = ["Task"]


@dataclasses.dataclass(frozen=True)
class Task:
    """DETR-style set prediction over per-token outputs; see the module docstring.

    Attributes:
      num_classes: K, the object classes (the model predicts K + 1 with no-object).
      inputs: the batch key the model is called on.
      boxes: the batch key of the (B, M, 4) corner boxes.
      labels: the batch key of the (B, M) int object classes, -1 for padding.
      eos_coef: weight of the no-object class in the cross-entropy (DETR: 0.1).
      class_weight, bbox_weight, giou_weight: loss and matching-cost weights (DETR: 1, 5, 2).
    """

    num_classes: int
    inputs: str = "image"
    boxes: str = "boxes"
    labels: str = "box_labels"
    eos_coef: float = 0.1
    class_weight: float = 1.0
    bbox_weight: float = 5.0
    giou_weight: float = 2.0

    def model_inputs(self, batch: dict[str, Array]) -> Array:
        return batch[self.inputs]

    def _targets(self, logits: Array, batch: dict[str, Array]) -> tuple[Array, Array]:
        """(boxes (B, M, 4), labels (B, M)) checked against the predictions (B, N, 4 + K + 1).

        Raises:
          ValueError: a batch without the box keys, or predictions of the wrong depth.
        """
        missing = [k for k in (self.boxes, self.labels) if k not in batch]
        if missing:
            raise ValueError(f"task detection: the batches have no {missing} (keys: "
                             f"{sorted(batch)}); use a dataset with boxes (digit_scenes) and "
                             f"put pad_objects(max_objects) into input.pp")
        if logits.ndim != 3 or logits.shape[-1] != self.num_classes + 5:
            raise ValueError(f"task detection: the model gives {tuple(logits.shape)}, not "
                             f"(B, tokens, 4 + num_classes + 1 = {self.num_classes + 5}); use "
                             f"model_name='dense' with a detection head of {self.num_classes} "
                             f"classes (model.head_classes)")
        return batch[self.boxes].astype(jnp.float32), batch[self.labels].astype(jnp.int32)

    def match(self, logits: Array, batch: dict[str, Array]) -> Array:
        """(B, M) int32: the token matched to each object slot, -1 for padding slots.

        Raises:
          ValueError: more object slots M than tokens N (names the fix); see `_targets`.
        """
        gt_boxes, gt_labels = self._targets(logits, batch)
        pred_boxes = logits[..., :4].astype(jnp.float32)
        prob = jax.nn.softmax(logits[..., 4:].astype(jnp.float32), axis=-1)  # (B, N, K + 1)
        cls = jnp.clip(gt_labels, 0, self.num_classes - 1)
        cost_class = -jnp.take_along_axis(prob, cls[:, None, :], axis=-1)     # (B, N, M)
        gt_center = box_ops.corners_to_center(gt_boxes)
        cost_bbox = jnp.sum(jnp.abs(pred_boxes[:, :, None, :] - gt_center[:, None, :, :]), -1)
        cost_giou = -box_ops.generalized_iou(box_ops.center_to_corners(pred_boxes), gt_boxes)
        cost = (self.class_weight * cost_class + self.bbox_weight * cost_bbox
                + self.giou_weight * cost_giou)
        return hungarian_matching(cost, gt_labels >= 0)

    def loss(self, logits: Array, batch: dict[str, Array]) -> Array:
        """(B, N, 4 + K + 1) predictions -> (B,) DETR loss (see the module docstring)."""
        gt_boxes, gt_labels = self._targets(logits, batch)
        idx = self.match(logits, batch)
        valid = (gt_labels >= 0).astype(jnp.float32)                           # (B, M)
        n = logits.shape[1]
        assign = jax.nn.one_hot(idx, n) * valid[..., None]                     # (B, M, N)
        matched = jnp.sum(assign, axis=1)                                      # (B, N)
        target = self.num_classes + jnp.einsum(
            "bmn,bm->bn", assign, (gt_labels - self.num_classes).astype(jnp.float32))
        logp = jax.nn.log_softmax(logits[..., 4:].astype(jnp.float32), axis=-1)
        ce = -jnp.take_along_axis(logp, jnp.round(target).astype(jnp.int32)[..., None], -1)[..., 0]
        w = matched + self.eos_coef * (1.0 - matched)
        loss_ce = jnp.sum(w * ce, -1) / jnp.sum(w, -1)
        pred = jnp.take_along_axis(logits[..., :4].astype(jnp.float32),
                                   jnp.maximum(idx, 0)[..., None], axis=1)      # (B, M, 4)
        num = jnp.maximum(jnp.sum(valid, -1), 1.0)
        l1 = jnp.sum(jnp.abs(pred - box_ops.corners_to_center(gt_boxes)), -1)
        giou = jnp.diagonal(box_ops.generalized_iou(box_ops.center_to_corners(pred), gt_boxes),
                            axis1=-2, axis2=-1)
        loss_bbox = jnp.sum(l1 * valid, -1) / num
        loss_giou = jnp.sum((1.0 - giou) * valid, -1) / num
        return (self.class_weight * loss_ce + self.bbox_weight * loss_bbox
                + self.giou_weight * loss_giou)

    def correct(self, logits: Array, batch: dict[str, Array]) -> Array:
        """(B,) share of an image's objects whose matched token predicts their class (its
        argmax over K + 1), 1 for an image without objects."""
        _, gt_labels = self._targets(logits, batch)
        idx = self.match(logits, batch)
        pred_cls = jnp.argmax(logits[..., 4:], axis=-1)                        # (B, N)
        hit = jnp.take_along_axis(pred_cls, jnp.maximum(idx, 0), axis=1) == gt_labels
        valid = gt_labels >= 0
        return jnp.where(valid.any(-1), jnp.sum(hit & valid, -1) / jnp.maximum(
            jnp.sum(valid, -1), 1), 1.0).astype(jnp.float32)

    def predict(self, logits: Array) -> Array:
        """(B, N, K + 1) class probabilities of every token (the last: no-object)."""
        return jax.nn.softmax(logits[..., 4:].astype(jnp.float32), axis=-1)

    def detections(self, logits: Array) -> tuple[Array, Array, Array]:
        """Per token: (boxes (B, N, 4) corners in [0, 1], scores (B, N), classes (B, N)).

        DETR's post-processing: softmax over K + 1, drop no-object, the best class and its
        probability as the score.
        """
        prob = self.predict(logits)[..., :-1]
        corners = jnp.clip(box_ops.center_to_corners(logits[..., :4].astype(jnp.float32)), 0, 1)
        return corners, jnp.max(prob, -1), jnp.argmax(prob, -1)
