"""Ops for per-pixel targets: `resize_mask`, the nearest-neighbour resize of a class mask.

    "decode(channels=1)|resize(32)|resize_mask(32)|value_range(-1, 1)|keep('image', 'mask')"

A class mask must never be interpolated (a bilinear resize would invent classes between two
others), so `resize_mask` resizes with the nearest neighbour and keeps the dtype: class ids stay
exact, and an integer upscale replicates every pixel into a block. Boxes of `digit_scenes` are
in [0, 1] of the image, so resizing the image leaves them valid.
"""

from __future__ import annotations

import tensorflow as tf

from vitx.data.pp.registry import TensorFn, register_key_op
from vitx.utils import pair


@register_key_op("resize_mask", default="mask")
def resize_mask(size: int | tuple[int, int]) -> TensorFn:
    """Resizes a (height, width, channels) class mask to `size` with the nearest neighbour; the
    output keeps the input's dtype and its values are a subset of the input's.

    Raises:
        ValueError: `size` not a positive int or (height, width) pair.
    """
    h, w = pair(size, "resize_mask: size")

    def fn(mask: tf.Tensor) -> tf.Tensor:
        return tf.cast(tf.image.resize(mask, (h, w), method="nearest"), mask.dtype)

    return fn
