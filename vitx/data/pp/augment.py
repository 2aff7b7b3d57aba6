"""Train-time augmentation ops: `inception_crop`, `randaug`, `random_erasing`.

Each is a key op (`image` by default; `key=` / `inkey=` / `outkey=`, see
`vitx.data.pp.registry.register_key_op`) on ONE image of shape (height, width, channels),
channels 1 or 3. All randomness is stateless and drawn from the example's per-op seed (`_seed`),
so an input pipeline with them is a pure function of (seed, example index) and a resumed run
sees bit-identical batches. A typical AugReg / DeiT-style train spec:

    decode|inception_crop(224)|flip_lr|randaug(2, 9)|value_range(-1, 1)|random_erasing(0.25)

Pixel values: `inception_crop` and `randaug` take (and return, in the input's dtype) pixels in
[0, 255]; `random_erasing` works on the normalised image (after `value_range`), as timm's.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence

import tensorflow as tf

from vitx.data.pp.image import resize_keep_dtype, resize_method
from vitx.data.pp.registry import TensorFn, register_key_op
from vitx.utils import pair, positive_int

__all__ = ["RANDAUG_OPS", "inception_crop", "randaug", "random_erasing"]


def _fold(seed: tf.Tensor, i: int) -> tf.Tensor:
    """The i-th independent sub-seed (int64 (2,)) of `seed`."""
    return tf.random.experimental.stateless_fold_in(seed, i)


def _number(value: object, what: str, lo: float, hi: float) -> float:
    """`value` as a float in [lo, hi], else a ValueError naming `what`."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not lo <= value <= hi:
        raise ValueError(f"{what}={value!r} must be a number in [{lo}, {hi}].")
    return float(value)


@register_key_op("inception_crop", random=True)
def inception_crop(size: int | tuple[int, int] | None = None, area_min: float = 5,
                   area_max: float = 100, method: str = "bilinear") -> TensorFn:
    """Random-resized ("Inception") crop: a random window covering `area_min`..`area_max`
    percent of the image with aspect ratio (width / height) in [3/4, 4/3], resized to `size`.

    (height, width, channels) -> (size_h, size_w, channels), or the crop itself when `size` is
    None; the output keeps the input's dtype (uint8 rounded). The window is drawn by
    `tf.image.stateless_sample_distorted_bounding_box` (100 attempts, else the whole image).

    Source: Szegedy et al., "Going Deeper with Convolutions", CVPR 2015, Sec. 6 (crops of 8 % to
    100 % of the area, aspect 3/4 to 4/3); big_vision `inception_crop` (`pp/ops_image.py`).

    Raises:
        ValueError: `size` not a positive int / pair; not 0 < area_min <= area_max <= 100;
            unknown `method`.
    """
    hw = pair(size, "inception_crop: size") if size is not None else None
    lo = _number(area_min, "inception_crop: area_min", 0, 100)
    hi = _number(area_max, "inception_crop: area_max", lo, 100)
    if lo <= 0:
        raise ValueError(f"inception_crop: area_min={area_min!r} must be > 0 (percent).")
    tf_method = resize_method("inception_crop", method)

    def fn(image: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
        begin, crop_size, _ = tf.image.stateless_sample_distorted_bounding_box(
            tf.shape(image), tf.zeros([0, 0, 4], tf.float32), seed=seed,
            min_object_covered=0.0, aspect_ratio_range=(3 / 4, 4 / 3),
            area_range=(lo / 100, hi / 100), max_attempts=100,
            use_image_if_no_bounding_boxes=True)
        crop = tf.slice(image, begin, crop_size)
        crop.set_shape([None, None, image.shape[-1]])
        if hw is None:
            return crop
        out = resize_keep_dtype(crop, hw, tf_method)
        out.set_shape([*hw, image.shape[-1]])
        return out

    return fn


# ---------------------------------------------------------------------------------------------
# RandAugment. Each op maps uint8 (H, W, C) -> uint8 (H, W, C) given `level` = magnitude / 10
# (a Python float), `sign` (a float32 scalar tensor, +-1: the random direction of the
# geometric ops) and `fill` (the value geometric ops move in; photometric ops ignore it).
# Level -> argument as big_vision `pp/autoaugment.py` (tf-models'
# `distort_image_with_randaugment`), except translate (relative, as timm) and contrast (mean).

_FILL = 128.0  # default value of the pixels geometric ops move in (tf-models' gray)


def _blend(degenerate: tf.Tensor, image: tf.Tensor, factor: float) -> tf.Tensor:
    """PIL `ImageEnhance`: degenerate + factor (image - degenerate), clipped, as uint8."""
    d, x = tf.cast(degenerate, tf.float32), tf.cast(image, tf.float32)
    return tf.cast(tf.clip_by_value(d + factor * (x - d), 0.0, 255.0), tf.uint8)


def _gray(image: tf.Tensor) -> tf.Tensor:
    """(H, W, 1) luma of an RGB image; a 1-channel image itself."""
    return tf.image.rgb_to_grayscale(image) if image.shape[-1] == 3 else image


def _transform(image: tf.Tensor, t: Sequence[tf.Tensor | float],
               fill: float = _FILL) -> tf.Tensor:
    """Projective transform (8 numbers mapping output to input points), nearest, `fill` in."""
    t = tf.reshape(tf.stack([tf.cast(v, tf.float32) for v in t]), [1, 8])
    return tf.raw_ops.ImageProjectiveTransformV3(
        images=image[None], transforms=t, output_shape=tf.shape(image)[:2],
        fill_value=float(fill), interpolation="NEAREST", fill_mode="CONSTANT")[0]


def _autocontrast(x: tf.Tensor, level: float, sign: tf.Tensor,
        fill: float = _FILL) -> tf.Tensor:
    """Per channel, [min, max] stretched to [0, 255] (PIL `ImageOps.autocontrast`'s float64
    x * scale + offset, truncated)."""
    f = tf.cast(x, tf.float64)
    lo = tf.reduce_min(f, axis=[0, 1], keepdims=True)
    hi = tf.reduce_max(f, axis=[0, 1], keepdims=True)
    scale = 255.0 / tf.maximum(hi - lo, 1.0)
    out = tf.where(hi > lo, f * scale - lo * scale, f)
    return tf.cast(tf.clip_by_value(out, 0.0, 255.0), tf.uint8)


def _equalize(x: tf.Tensor, level: float, sign: tf.Tensor,
        fill: float = _FILL) -> tf.Tensor:
    """Per-channel histogram equalisation (PIL `ImageOps.equalize`)."""
    out = []
    for c in range(x.shape[-1]):
        im = tf.cast(x[..., c], tf.int32)
        histo = tf.histogram_fixed_width(im, [0, 255], nbins=256)
        last = tf.gather(histo, tf.reduce_max(im))  # count of the highest occupied bin
        step = (tf.reduce_sum(histo) - last) // 255
        lut = (tf.cumsum(histo) + step // 2) // tf.maximum(step, 1)
        lut = tf.clip_by_value(tf.concat([[0], lut[:-1]], 0), 0, 255)
        out.append(tf.where(step > 0, tf.gather(lut, im), im))
    return tf.cast(tf.stack(out, axis=-1), tf.uint8)


def _rotate(x: tf.Tensor, level: float, sign: tf.Tensor,
        fill: float = _FILL) -> tf.Tensor:
    angle = sign * level * 30.0 * math.pi / 180.0
    hw = tf.cast(tf.shape(x)[:2], tf.float32) - 1.0
    cos, sin = tf.cos(angle), tf.sin(angle)
    dx = (hw[1] - (cos * hw[1] - sin * hw[0])) / 2.0
    dy = (hw[0] - (sin * hw[1] + cos * hw[0])) / 2.0
    return _transform(x, [cos, -sin, dx, sin, cos, dy, 0.0, 0.0], fill)


def _solarize(x: tf.Tensor, level: float, sign: tf.Tensor,
        fill: float = _FILL) -> tf.Tensor:
    return tf.where(tf.cast(x, tf.int32) < int(level * 256), x, 255 - x)


def _posterize(x: tf.Tensor, level: float, sign: tf.Tensor,
        fill: float = _FILL) -> tf.Tensor:
    bits = min(int(level * 4), 8)  # bits kept (0 to 4 at magnitude <= 10, as the reference)
    return tf.bitwise.bitwise_and(x, tf.constant((0xFF << (8 - bits)) & 0xFF, tf.uint8))


def _enhance(kind: str) -> Callable[..., tf.Tensor]:
    """color / contrast / brightness / sharpness: blend with a degenerate image, factor
    1.8 level + 0.1 (1 = identity)."""

    def op(x: tf.Tensor, level: float, sign: tf.Tensor,
        fill: float = _FILL) -> tf.Tensor:
        factor = level * 1.8 + 0.1
        if kind == "color":
            return _blend(_gray(x), x, factor)
        if kind == "contrast":
            return _blend(tf.reduce_mean(tf.cast(_gray(x), tf.float32)), x, factor)
        if kind == "brightness":
            return _blend(tf.zeros_like(x), x, factor)
        f = tf.cast(x, tf.float32)  # sharpness: PIL's SMOOTH kernel inside, image at the border
        k = tf.constant([[1, 1, 1], [1, 5, 1], [1, 1, 1]], tf.float32) / 13.0
        k = tf.tile(k[:, :, None, None], [1, 1, x.shape[-1], 1])
        smooth = tf.nn.depthwise_conv2d(f[None], k, [1, 1, 1, 1], padding="VALID")[0]
        inner = tf.pad(tf.ones_like(smooth, tf.bool), [[1, 1], [1, 1], [0, 0]])
        smooth = tf.where(inner, tf.pad(tf.floor(smooth), [[1, 1], [1, 1], [0, 0]]), f)
        return _blend(smooth, x, factor)

    return op


def _shear(axis: int) -> Callable[..., tf.Tensor]:
    def op(x: tf.Tensor, level: float, sign: tf.Tensor,
        fill: float = _FILL) -> tf.Tensor:
        s = sign * level * 0.3
        return _transform(x, [1.0, s, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0] if axis == 1
                          else [1.0, 0.0, 0.0, s, 1.0, 0.0, 0.0, 0.0], fill)

    return op


def _translate(axis: int) -> Callable[..., tf.Tensor]:
    def op(x: tf.Tensor, level: float, sign: tf.Tensor,
        fill: float = _FILL) -> tf.Tensor:
        d = sign * level * 0.45 * tf.cast(tf.shape(x)[axis], tf.float32)
        return _transform(x, [1.0, 0.0, -d, 0.0, 1.0, 0.0, 0.0, 0.0] if axis == 1
                          else [1.0, 0.0, 0.0, 0.0, 1.0, -d, 0.0, 0.0], fill)

    return op


_RANDAUG: dict[str, Callable[..., tf.Tensor]] = {
    "identity": lambda x, level, sign, fill=_FILL: x,
    "autocontrast": _autocontrast,
    "equalize": _equalize,
    "rotate": _rotate,
    "solarize": _solarize,
    "color": _enhance("color"),
    "posterize": _posterize,
    "contrast": _enhance("contrast"),
    "brightness": _enhance("brightness"),
    "sharpness": _enhance("sharpness"),
    "shear_x": _shear(1),
    "shear_y": _shear(0),
    "translate_x": _translate(1),
    "translate_y": _translate(0),
}
#: The op set of RandAugment (Cubuk et al. 2020, Sec. 3), the default of `randaug(ops=...)`.
RANDAUG_OPS = tuple(_RANDAUG)


@register_key_op("randaug", random=True)
def randaug(num_layers: int = 2, magnitude: float = 10,
            ops: Sequence[str] | None = None, fill: float = _FILL) -> TensorFn:
    """RandAugment: `num_layers` times, one op drawn uniformly from `ops` (default
    `RANDAUG_OPS`, all 14) applied at the shared `magnitude` (0..10 is the paper's scale;
    larger values extrapolate, as AugReg's `randaug(2, 15)`).

    (height, width, channels) -> same shape and dtype; channels 1 or 3 (grayscale-safe);
    pixels in [0, 255] (uint8, or float rounded and clipped to integers in [0, 255]): put it
    before `value_range`. Arguments at level m = magnitude / 10, as big_vision / tf-models:
    rotate +-30 m degrees, shear +-0.3 m, solarize below 256 m, posterize to int(4 m) bits,
    color / contrast / brightness / sharpness factor 1.8 m + 0.1; translate +-0.45 m of the
    side (relative, as timm, = tf-models' 100 px at 224); contrast blends with the grayscale
    mean (PIL's; tf-models uses a histogram-count quirk). Geometric ops pick their sign at
    random and fill the pixels they move in with `fill` (default 128, tf-models' gray; timm's
    `img_mean` hparam; 0 for scans on a black background such as the digits); at magnitude 0
    rotate, shear and translate are the identity.

    Source: Cubuk et al., "RandAugment", CVPR Workshops 2020, Sec. 3; big_vision `randaug`
    (`pp/autoaugment.py`); timm `rand_augment_transform` (`data/auto_augment.py`).

    Raises:
        ValueError: `num_layers` not an int >= 0; `magnitude` not a number in [0, 30]; an
            unknown or empty `ops`; `fill` not a number in [0, 255]; (when traced) an image
            that is not (H, W, 1 or 3).
    """
    layers = positive_int(num_layers, "randaug: num_layers", minimum=0)
    level = _number(magnitude, "randaug: magnitude", 0, 30) / 10.0
    fill = _number(fill, "randaug: fill", 0, 255)
    names = tuple(RANDAUG_OPS if ops is None else ops)
    unknown = [n for n in names if n not in _RANDAUG]
    if unknown or not names:
        raise ValueError(f"randaug: ops={ops!r} must be a non-empty list of {list(RANDAUG_OPS)}.")

    def fn(image: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
        if image.shape.rank != 3 or image.shape[-1] not in (1, 3):
            raise ValueError(f"randaug: image must be (height, width, 1 or 3), got {image.shape}.")
        x = image
        if x.dtype != tf.uint8:
            x = tf.cast(tf.clip_by_value(tf.round(tf.cast(x, tf.float32)), 0.0, 255.0), tf.uint8)
        for i in range(layers):
            s = _fold(seed, i)
            idx = tf.random.stateless_uniform([], _fold(s, 0), 0, len(names), dtype=tf.int32)
            sign = tf.where(tf.random.stateless_uniform([], _fold(s, 1)) < 0.5, -1.0, 1.0)
            x = tf.switch_case(idx, [functools.partial(_RANDAUG[n], x, level, sign, fill)
                                     for n in names])
            x.set_shape(image.shape)
        return x if image.dtype == tf.uint8 else tf.cast(x, image.dtype)

    return fn


@register_key_op("random_erasing", random=True)
def random_erasing(prob: float = 0.25, area_min: float = 0.02, area_max: float = 1 / 3,
                   aspect_min: float = 0.3, aspect_max: float | None = None,
                   mode: str = "pixel") -> TensorFn:
    """Random erasing: with probability `prob`, one box of `area_min`..`area_max` of the image
    area (uniform) and aspect ratio (height / width) log-uniform in [aspect_min, aspect_max]
    (default 1 / aspect_min) is overwritten: `mode` "pixel" with N(0, 1) noise per value,
    "rand" with N(0, 1) per channel, "const" with 0. Up to 10 draws of the box size; the first
    that fits (height and width below the image's) is used, none if none fits.

    (height, width, channels) -> same shape; float dtypes kept, others become float32. Put it
    after `value_range` (the fill is on the scale of a normalised image, as timm's).
    Defaults: timm's `RandomErasing` box ranges with DeiT's `--reprob 0.25 --remode pixel`.

    Source: Zhong et al., "Random Erasing Data Augmentation", AAAI 2020, Sec. 3.1 (Alg. 1);
    timm `RandomErasing` (`data/random_erasing.py`).

    Raises:
        ValueError: `prob` outside [0, 1]; not 0 < area_min <= area_max <= 1; not
            0 < aspect_min <= aspect_max; unknown `mode`.
    """
    p = _number(prob, "random_erasing: prob", 0, 1)
    a_lo = _number(area_min, "random_erasing: area_min", 0, 1)
    a_hi = _number(area_max, "random_erasing: area_max", a_lo, 1)
    r_lo = _number(aspect_min, "random_erasing: aspect_min", 0, math.inf)
    r_hi = 1 / r_lo if aspect_max is None and r_lo > 0 else aspect_max
    r_hi = _number(r_hi, "random_erasing: aspect_max", r_lo, math.inf)
    if a_lo <= 0 or r_lo <= 0:
        raise ValueError("random_erasing: area_min and aspect_min must be > 0.")
    if mode not in ("pixel", "rand", "const"):
        raise ValueError(f"random_erasing: mode={mode!r} must be 'pixel', 'rand' or 'const'.")

    def fn(image: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
        x = image if image.dtype.is_floating else tf.cast(image, tf.float32)
        h, w = tf.shape(x)[0], tf.shape(x)[1]
        area = tf.cast(h * w, tf.float32)
        target = tf.random.stateless_uniform([10], _fold(seed, 1), a_lo, a_hi) * area
        ratio = tf.exp(tf.random.stateless_uniform([10], _fold(seed, 2), math.log(r_lo),
                                                   math.log(r_hi)))
        eh = tf.cast(tf.round(tf.sqrt(target * ratio)), tf.int32)
        ew = tf.cast(tf.round(tf.sqrt(target / ratio)), tf.int32)
        fits = (eh < h) & (ew < w)
        first = tf.argmax(tf.cast(fits, tf.int32), output_type=tf.int32)
        eh, ew = eh[first], ew[first]
        u = tf.random.stateless_uniform([2], _fold(seed, 3))
        top = tf.minimum(tf.cast(u[0] * tf.cast(h - eh + 1, tf.float32), tf.int32), h - eh)
        left = tf.minimum(tf.cast(u[1] * tf.cast(w - ew + 1, tf.float32), tf.int32), w - ew)
        rows, cols = tf.range(h)[:, None, None], tf.range(w)[None, :, None]
        box = ((rows >= top) & (rows < top + eh) & (cols >= left) & (cols < left + ew)
               & tf.reduce_any(fits) & (tf.random.stateless_uniform([], _fold(seed, 0)) < p))
        shape = tf.shape(x) if mode == "pixel" else [1, 1, tf.shape(x)[2]]
        fill = tf.random.stateless_normal(shape, _fold(seed, 4), dtype=x.dtype)
        if mode == "const":
            fill = tf.zeros_like(fill)
        return tf.where(box, fill, x)

    return fn
