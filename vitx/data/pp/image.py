"""Image ops: `decode`, `resize`, `resize_small`, `pad`, `random_crop`, `central_crop`, `flip_lr`,
`value_range`. The train-time augmentations (`inception_crop`, `randaug`, `random_erasing`) are
in `vitx.data.pp.augment`.

Each works on the key `image` by default and on any other key with `key=` (read and write) or
`inkey=` / `outkey=` (see `vitx.data.pp.registry.register_key_op`). The input is one image of
shape (height, width, channels); `value_range` takes a tensor of any shape.
"""

from __future__ import annotations

import tensorflow as tf

from vitx.data.pp.registry import TensorFn, register_key_op
from vitx.utils import pair, positive_int


@register_key_op("decode")
def decode(channels: int = 3) -> TensorFn:
    """Image to uint8 (height, width, channels): decodes encoded bytes (PNG/JPEG/...),
    converts 1 -> 3 channels by repeating and 3/4 -> 1 by luma, drops alpha for 4 -> 3.

    Raises:
        ValueError: `channels` not 1 or 3; (when traced) an image that is not 3-D, has an
            unknown channel count, or a count that cannot be converted.
    """
    if channels not in (1, 3):
        raise ValueError(f"decode: channels={channels!r} must be 1 or 3.")

    def fn(image: tf.Tensor) -> tf.Tensor:
        if image.dtype == tf.string:
            image = tf.io.decode_image(image, expand_animations=False)
        elif image.dtype != tf.uint8:
            image = tf.cast(tf.clip_by_value(tf.cast(image, tf.float32), 0.0, 255.0), tf.uint8)
        if image.shape.rank != 3:
            raise ValueError(
                f"decode: image must have shape (height, width, channels), got {image.shape}."
            )
        have = image.shape[-1]
        if have is None:
            raise ValueError("decode: the image's channel count must be known statically.")
        if have == channels:
            return image
        if channels == 3 and have == 1:
            return tf.repeat(image, 3, axis=-1)
        if channels == 3 and have == 4:
            return image[..., :3]
        if channels == 1 and have in (3, 4):
            return tf.image.rgb_to_grayscale(image[..., :3])
        raise ValueError(f"decode: cannot convert {have} channels to {channels}.")

    return fn


_RESIZE_METHODS = {m.lower() for m in dir(tf.image.ResizeMethod) if m.isupper()} | {"nearest"}


def resize_method(op: str, method: str) -> str:
    """The `tf.image.resize` method for `method` ("bilinear", "area", "nearest", ...).

    Raises:
        ValueError: unknown `method`, naming `op`.
    """
    if method not in _RESIZE_METHODS:
        raise ValueError(f"{op}: method={method!r} must be one of {sorted(_RESIZE_METHODS)}.")
    return "nearest" if method in ("nearest", "nearest_neighbor") else method


def resize_keep_dtype(image: tf.Tensor, size: tf.Tensor | tuple[int, int],
                      method: str) -> tf.Tensor:
    """`tf.image.resize` of (height, width, channels) to `size` = (height', width'), returned in
    the input's dtype: uint8 rounded and clipped to [0, 255], other dtypes cast (as big_vision's
    resize ops keep the dtype, `big_vision/pp/ops_image.py`). `method`: a tf method name."""
    out = tf.image.resize(image, size, method=method)
    if image.dtype == tf.uint8:
        return tf.cast(tf.clip_by_value(tf.round(out), 0.0, 255.0), tf.uint8)
    return tf.cast(out, image.dtype)


@register_key_op("resize")
def resize(size: int | tuple[int, int], method: str = "bilinear") -> TensorFn:
    """Resizes the image to (height, width) = `size`; output float32, input value range kept.

    Raises:
        ValueError: `size` not a positive int or (height, width) pair; unknown `method`.
    """
    h, w = pair(size, "resize: size")
    tf_method = resize_method("resize", method)

    def fn(image: tf.Tensor) -> tf.Tensor:
        return tf.cast(tf.image.resize(image, (h, w), method=tf_method), tf.float32)

    return fn


@register_key_op("resize_small")
def resize_small(size: int, method: str = "area") -> TensorFn:
    """Resizes the image so that its shorter side is `size` pixels, aspect ratio kept (the other
    side rounded); the output keeps the input's dtype (uint8 rounded). Eval side, before
    `central_crop`: `resize_small(256)|central_crop(224)` (ImageNet's 87.5 % crop).

    (height, width, channels) -> (round(height * r), round(width * r), channels) with
    r = size / min(height, width). Source: big_vision `resize_small` (`pp/ops_image.py`).

    Raises:
        ValueError: `size` not a positive int; unknown `method`.
    """
    side = positive_int(size, "resize_small: size")
    tf_method = resize_method("resize_small", method)

    def fn(image: tf.Tensor) -> tf.Tensor:
        hw = tf.cast(tf.shape(image)[:2], tf.float32)
        new = tf.cast(tf.round(hw * (side / tf.reduce_min(hw))), tf.int32)
        return resize_keep_dtype(image, new, tf_method)

    return fn


@register_key_op("pad")
def pad(n: int | tuple[int, int], value: float = 0) -> TensorFn:
    """Pads `n` pixels (int, or (rows, cols)) on each side of the image with `value`.

    Raises:
        ValueError: `n` not a non-negative int or (rows, cols) pair.
    """
    if isinstance(n, int) and not isinstance(n, bool):
        n = (n, n)
    if not (
        isinstance(n, tuple | list)
        and len(n) == 2
        and all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in n)
    ):
        raise ValueError(f"pad: n={n!r} must be a non-negative int or a (rows, cols) pair.")
    ph, pw = n

    def fn(image: tf.Tensor) -> tf.Tensor:
        value_t = tf.cast(value, image.dtype)
        return tf.pad(image, [[ph, ph], [pw, pw], [0, 0]], constant_values=value_t)

    return fn


@register_key_op("random_crop", random=True)
def random_crop(size: int | tuple[int, int]) -> TensorFn:
    """Crops a (height, width) = `size` window at a random position (stateless, `_seed`).

    Raises:
        ValueError: `size` not a positive int or pair; (when run) no `_seed` in the example.
    """
    h, w = pair(size, "random_crop: size")

    def fn(image: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
        crop = tf.image.stateless_random_crop(
            image, size=tf.stack([h, w, tf.shape(image)[-1]]), seed=seed
        )
        crop.set_shape([h, w, image.shape[-1]])
        return crop

    return fn


@register_key_op("central_crop")
def central_crop(size: int | tuple[int, int]) -> TensorFn:
    """Crops the central (height, width) = `size` window (offsets rounded down).

    Raises:
        ValueError: `size` not a positive int or pair; (when run) an image smaller than it.
    """
    h, w = pair(size, "central_crop: size")

    def fn(image: tf.Tensor) -> tf.Tensor:
        shape = tf.shape(image)
        tf.debugging.assert_greater_equal(
            shape[:2], tf.constant([h, w]), message=f"central_crop: image smaller than {(h, w)}"
        )
        top, left = (shape[0] - h) // 2, (shape[1] - w) // 2
        out = image[top : top + h, left : left + w, :]
        out.set_shape([h, w, image.shape[-1]])
        return out

    return fn


@register_key_op("flip_lr", random=True)
def flip_lr() -> TensorFn:
    """Mirrors the image left-right with probability 1/2 (stateless, `_seed`)."""

    def fn(image: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
        return tf.image.stateless_random_flip_left_right(image, seed=seed)

    return fn


def value_range_fn(op: str, lo: float, hi: float, in_min: float, in_max: float) -> TensorFn:
    """`x -> (float32(x) - in_min) * (hi - lo) / (in_max - in_min) + lo` (any shape, no clip).

    `op` names the op in the error (`value_range`, or its alias `video_value_range`).

    Raises:
        ValueError: if `in_min == in_max`.
    """
    if in_max == in_min:
        raise ValueError(f"{op}: in_min={in_min!r} must differ from in_max={in_max!r}.")
    scale = (hi - lo) / (in_max - in_min)

    def fn(x: tf.Tensor) -> tf.Tensor:
        return (tf.cast(x, tf.float32) - in_min) * scale + lo

    return fn


@register_key_op("vgg_value_range")
def vgg_value_range(mean: tuple[float, ...] = (123.675, 116.28, 103.53),
                    std: tuple[float, ...] = (58.395, 57.12, 57.375)) -> TensorFn:
    """Per-channel `(float32(x) - mean) / std` on the 0..255 scale (defaults: ImageNet's,
    0.485/0.456/0.406 and 0.229/0.224/0.225 x 255); what timm's `pretrained_cfg` mean / std
    ask for (`vitx info` prints it). (..., C) -> (..., C) float32.

    Source: big_vision `pp/ops_image.py: vgg_value_range` (same name and scale).

    Raises:
        ValueError: mean and std of different lengths, or a std <= 0.
    """
    if len(mean) != len(std) or min(std) <= 0:
        raise ValueError(f"vgg_value_range: mean={mean!r} and std={std!r} need one value per "
                         f"channel each, std > 0 (0..255 scale)")
    m, s = tf.constant(mean, tf.float32), tf.constant(std, tf.float32)

    def fn(x: tf.Tensor) -> tf.Tensor:
        return (tf.cast(x, tf.float32) - m) / s

    return fn


@register_key_op("value_range")
def value_range(lo: float, hi: float, in_min: float = 0, in_max: float = 255) -> TensorFn:
    """Linearly maps values [in_min, in_max] to [lo, hi]; output float32 (no clipping).

    Works on a tensor of any shape, e.g. `value_range(-1, 1, key="video")` maps a video
    (time, height, width, channels) uint8 0..255 to float32 in [-1, 1].

    Raises:
        ValueError: if `in_min == in_max`, or (when run) the example lacks the key.
    """
    return value_range_fn("value_range", lo, hi, in_min, in_max)
