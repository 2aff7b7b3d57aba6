"""Box arithmetic for detection: format conversions, IoU and generalized IoU (jittable).

Formats (all coordinates normalized to [0, 1] of the image height / width):

  corners   (ymin, xmin, ymax, xmax): the TFDS `BBoxFeature` layout of the datasets.
  center    (cy, cx, h, w): what the per-token box head predicts and DETR's L1 loss compares
            (DETR uses (cx, cy, w, h); the order of the four numbers does not change L1).

Source: generalized IoU from Rezatofighi et al., "Generalized Intersection over Union",
CVPR 2019, Algorithm 1: GIoU = IoU - |C \\ (A u B)| / |C|, C the smallest enclosing box.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array

__all__ = ["area", "center_to_corners", "corners_to_center", "generalized_iou", "pairwise_iou"]

_EPS = 1e-7


def center_to_corners(boxes: Array) -> Array:
    """(..., 4) (cy, cx, h, w) -> (..., 4) (ymin, xmin, ymax, xmax)."""
    cy, cx, h, w = jnp.moveaxis(boxes, -1, 0)
    return jnp.stack([cy - h / 2, cx - w / 2, cy + h / 2, cx + w / 2], axis=-1)


def corners_to_center(boxes: Array) -> Array:
    """(..., 4) (ymin, xmin, ymax, xmax) -> (..., 4) (cy, cx, h, w)."""
    y0, x0, y1, x1 = jnp.moveaxis(boxes, -1, 0)
    return jnp.stack([(y0 + y1) / 2, (x0 + x1) / 2, y1 - y0, x1 - x0], axis=-1)


def area(boxes: Array) -> Array:
    """(..., 4) corners -> (...) area (0 for degenerate boxes)."""
    return (jnp.clip(boxes[..., 2] - boxes[..., 0], 0) * jnp.clip(boxes[..., 3] - boxes[..., 1], 0))


def pairwise_iou(a: Array, b: Array) -> tuple[Array, Array]:
    """IoU and union of every pair. a: (..., N, 4), b: (..., M, 4) corners -> two (..., N, M)."""
    a, b = a[..., :, None, :], b[..., None, :, :]
    lo = jnp.maximum(a[..., :2], b[..., :2])
    hi = jnp.minimum(a[..., 2:], b[..., 2:])
    inter = jnp.prod(jnp.clip(hi - lo, 0), axis=-1)
    union = area(a) + area(b) - inter
    return inter / (union + _EPS), union


def generalized_iou(a: Array, b: Array) -> Array:
    """Pairwise GIoU in [-1, 1]. a: (..., N, 4), b: (..., M, 4) corners -> (..., N, M).

    Rezatofighi et al. (CVPR 2019), Alg. 1; DETR's `generalized_box_iou`. Equals IoU when one
    box holds the other's enclosing box, and tends to -1 for tiny boxes far apart.
    """
    iou, union = pairwise_iou(a, b)
    a, b = a[..., :, None, :], b[..., None, :, :]
    lo = jnp.minimum(a[..., :2], b[..., :2])
    hi = jnp.maximum(a[..., 2:], b[..., 2:])
    enclosing = jnp.prod(jnp.clip(hi - lo, 0), axis=-1)
    return iou - (enclosing - union) / (enclosing + _EPS)
