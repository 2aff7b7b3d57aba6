"""Preprocessing ops addressed by strings, big_vision style.

A spec such as ``"decode|resize(32)|random_crop(28)|flip_lr|value_range(-1, 1)|onehot(10)"``
is a ``|``-separated chain of op calls. Each op name refers to a factory registered with
:func:`register`; its arguments are Python literals (positional and keyword), parsed with
:mod:`ast`. :func:`get_preprocess_fn` turns a spec into one function on a single example.

Examples are dicts of TensorFlow tensors for ONE example: ``image`` of shape
(height, width, channels) and ``label`` a scalar int. Ops keep every key they do not touch.

Randomness is stateless, so that data are a pure function of (seed, example index) and a
resumed run sees bit-identical batches. Random ops read a per-example seed from the key
``_seed`` (int64 tensor of shape (2,)); the function built by :func:`get_preprocess_fn` hands
op number ``i`` in the chain the seed ``stateless_fold_in(_seed, i)``, so no two ops share
randomness (not even two copies of the same op), and removes ``_seed`` from its result.
"""

from __future__ import annotations

import ast
from collections.abc import Callable
from typing import Any

import tensorflow as tf

Example = dict[str, tf.Tensor]
Op = Callable[[Example], Example]

SEED_KEY = "_seed"

_REGISTRY: dict[str, Callable[..., Op]] = {}


def register(name: str) -> Callable[[Callable[..., Op]], Callable[..., Op]]:
    """Decorator registering an op factory under ``name`` for use in spec strings.

    The factory takes the op's (literal) arguments and returns a function mapping one
    example dict to a new example dict.

    Raises:
        ValueError: if ``name`` is not a Python identifier or is already registered.
    """
    if not name.isidentifier():
        raise ValueError(f"op name={name!r} is not a valid identifier; use e.g. 'my_op'.")

    def decorator(factory: Callable[..., Op]) -> Callable[..., Op]:
        if name in _REGISTRY:
            raise ValueError(f"op {name!r} is already registered; pick another name.")
        _REGISTRY[name] = factory
        return factory

    return decorator


def registered_ops() -> list[str]:
    """Names of all registered ops, sorted."""
    return sorted(_REGISTRY)


def _parse_op(text: str) -> tuple[str, tuple[Any, ...], dict[str, Any]]:
    """``"onehot(10, label_smoothing=0.1)"`` -> ``("onehot", (10,), {"label_smoothing": 0.1})``."""
    try:
        node = ast.parse(text, mode="eval").body
    except SyntaxError:
        raise ValueError(
            f"cannot parse preprocessing op {text!r}; write it as name or name(arg, key=value) "
            "with Python literal arguments."
        ) from None
    if isinstance(node, ast.Name):
        return node.id, (), {}
    if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)):
        raise ValueError(
            f"cannot parse preprocessing op {text!r}; write it as name or name(arg, key=value)."
        )
    name = node.func.id
    try:
        args = tuple(ast.literal_eval(a) for a in node.args)
        if any(kw.arg is None for kw in node.keywords):
            raise ValueError
        kwargs = {kw.arg: ast.literal_eval(kw.value) for kw in node.keywords}
    except ValueError:
        raise ValueError(
            f"arguments of preprocessing op {name!r} in {text!r} must be Python literals "
            "(numbers, strings, tuples, lists); no names, expressions or **kwargs."
        ) from None
    return name, args, kwargs


def get_preprocess_fn(spec: str) -> Callable[[Example], Example]:
    """Builds the function that applies the ``|``-separated ops of ``spec`` in order.

    Args:
        spec: e.g. ``"decode|resize(32)|random_crop(28)|flip_lr|value_range(-1, 1)"``.
            An empty spec gives the identity (minus ``_seed``).

    Returns:
        A function on one example dict (tf tensors). If the input has ``_seed`` (int64,
        shape (2,)), op ``i`` sees ``_seed = stateless_fold_in(_seed, i)``; the output never
        contains ``_seed``.

    Raises:
        ValueError: on a malformed op, an unknown op name (the message lists the registered
            ones), or arguments the op's factory rejects.
    """
    if not isinstance(spec, str):
        raise ValueError(f"pp spec={spec!r} must be a string such as 'decode|resize(32)'.")
    ops: list[Op] = []
    parts = [p.strip() for p in spec.split("|")] if spec.strip() else []
    for part in parts:
        if not part:
            raise ValueError(f"pp spec {spec!r} has an empty op; remove the stray '|'.")
        name, args, kwargs = _parse_op(part)
        if name not in _REGISTRY:
            raise ValueError(
                f"unknown preprocessing op {name!r} in pp spec {spec!r}; registered ops: "
                f"{', '.join(registered_ops())}."
            )
        try:
            ops.append(_REGISTRY[name](*args, **kwargs))
        except TypeError as e:
            raise ValueError(f"bad arguments for preprocessing op {part!r}: {e}") from None

    def preprocess(example: Example) -> Example:
        data = dict(example)
        seed = data.pop(SEED_KEY, None)
        for i, op in enumerate(ops):
            if seed is not None:
                data[SEED_KEY] = tf.random.experimental.stateless_fold_in(seed, i)
            data = dict(op(data))
            data.pop(SEED_KEY, None)
        return data

    return preprocess


# ---------------------------------------------------------------------------------------------
# Helpers.


def _hw(size: Any, what: str) -> tuple[int, int]:
    """``32`` or ``(32, 48)`` -> ``(height, width)``, both positive ints."""
    if isinstance(size, int) and not isinstance(size, bool):
        size = (size, size)
    if (
        not isinstance(size, tuple | list)
        or len(size) != 2
        or not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in size)
    ):
        raise ValueError(
            f"{what}: size={size!r} must be a positive int or a (height, width) pair of them."
        )
    return int(size[0]), int(size[1])


def _get(data: Example, key: str, op: str) -> tf.Tensor:
    if key not in data:
        raise ValueError(
            f"op {op!r} needs key {key!r} but the example has {sorted(data)}; "
            "check the op order in the pp spec."
        )
    return data[key]


def _seed(data: Example, op: str) -> tf.Tensor:
    if SEED_KEY not in data:
        raise ValueError(
            f"random op {op!r} needs a per-example seed under key {SEED_KEY!r} (int64, shape "
            "(2,)); build datasets with vitx.data.pipeline.build_dataset, which adds it."
        )
    return tf.cast(data[SEED_KEY], tf.int64)


def _image_op(data: Example, op: str, fn: Callable[[tf.Tensor], tf.Tensor]) -> Example:
    out = dict(data)
    out["image"] = fn(_get(data, "image", op))
    return out


# ---------------------------------------------------------------------------------------------
# Ops.


@register("decode")
def decode(channels: int = 3) -> Op:
    """Image to uint8 (height, width, channels): decodes encoded bytes (PNG/JPEG/...),
    converts 1 -> 3 channels by repeating and 3/4 -> 1 by luma, drops alpha for 4 -> 3."""
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

    return lambda data: _image_op(data, "decode", fn)


_RESIZE_METHODS = {m.lower() for m in dir(tf.image.ResizeMethod) if m.isupper()} | {"nearest"}


@register("resize")
def resize(size: int | tuple[int, int], method: str = "bilinear") -> Op:
    """Resizes the image to (height, width) = ``size``; output float32, input value range kept."""
    h, w = _hw(size, "resize")
    if method not in _RESIZE_METHODS:
        raise ValueError(f"resize: method={method!r} must be one of {sorted(_RESIZE_METHODS)}.")
    tf_method = "nearest" if method in ("nearest", "nearest_neighbor") else method

    def fn(image: tf.Tensor) -> tf.Tensor:
        return tf.cast(tf.image.resize(image, (h, w), method=tf_method), tf.float32)

    return lambda data: _image_op(data, "resize", fn)


@register("pad")
def pad(n: int | tuple[int, int], value: float = 0) -> Op:
    """Pads ``n`` pixels (int, or (rows, cols)) on each side of the image with ``value``."""
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

    return lambda data: _image_op(data, "pad", fn)


@register("random_crop")
def random_crop(size: int | tuple[int, int]) -> Op:
    """Crops a (height, width) = ``size`` window at a random position (stateless, ``_seed``)."""
    h, w = _hw(size, "random_crop")

    def op(data: Example) -> Example:
        image = _get(data, "image", "random_crop")
        seed = _seed(data, "random_crop")
        crop = tf.image.stateless_random_crop(
            image, size=tf.stack([h, w, tf.shape(image)[-1]]), seed=seed
        )
        crop.set_shape([h, w, image.shape[-1]])
        return {**data, "image": crop}

    return op


@register("central_crop")
def central_crop(size: int | tuple[int, int]) -> Op:
    """Crops the central (height, width) = ``size`` window (offsets rounded down)."""
    h, w = _hw(size, "central_crop")

    def fn(image: tf.Tensor) -> tf.Tensor:
        shape = tf.shape(image)
        tf.debugging.assert_greater_equal(
            shape[:2], tf.constant([h, w]), message=f"central_crop: image smaller than {(h, w)}"
        )
        top, left = (shape[0] - h) // 2, (shape[1] - w) // 2
        out = image[top : top + h, left : left + w, :]
        out.set_shape([h, w, image.shape[-1]])
        return out

    return lambda data: _image_op(data, "central_crop", fn)


@register("flip_lr")
def flip_lr() -> Op:
    """Mirrors the image left-right with probability 1/2 (stateless, ``_seed``)."""

    def op(data: Example) -> Example:
        image = _get(data, "image", "flip_lr")
        seed = _seed(data, "flip_lr")
        return {**data, "image": tf.image.stateless_random_flip_left_right(image, seed=seed)}

    return op


@register("value_range")
def value_range(lo: float, hi: float, in_min: float = 0, in_max: float = 255) -> Op:
    """Linearly maps image values [in_min, in_max] to [lo, hi]; output float32 (no clipping)."""
    if in_max == in_min:
        raise ValueError(f"value_range: in_min={in_min!r} must differ from in_max={in_max!r}.")
    scale = (hi - lo) / (in_max - in_min)

    def fn(image: tf.Tensor) -> tf.Tensor:
        return (tf.cast(image, tf.float32) - in_min) * scale + lo

    return lambda data: _image_op(data, "value_range", fn)


@register("onehot")
def onehot(
    depth: int,
    key: str = "label",
    key_result: str = "label",
    label_smoothing: float = 0.0,
    on: float = 1.0,
    off: float = 0.0,
) -> Op:
    """Int label under ``key`` -> float32 one-hot of shape (depth,) under ``key_result``.

    With ``label_smoothing = ls > 0`` the values are on = 1 - ls + ls/depth and
    off = ls/depth (so each row sums to 1); ``on``/``off`` must then be left at defaults.
    """
    if not isinstance(depth, int) or isinstance(depth, bool) or depth < 1:
        raise ValueError(f"onehot: depth={depth!r} must be a positive int (number of classes).")
    if not 0.0 <= label_smoothing < 1.0:
        raise ValueError(f"onehot: label_smoothing={label_smoothing!r} must be in [0, 1).")
    if label_smoothing > 0:
        if (on, off) != (1.0, 0.0):
            raise ValueError(
                "onehot: give either label_smoothing or on/off values, not both "
                f"(got label_smoothing={label_smoothing}, on={on}, off={off})."
            )
        on, off = 1.0 - label_smoothing + label_smoothing / depth, label_smoothing / depth

    def op(data: Example) -> Example:
        label = _get(data, key, "onehot")
        out = dict(data)
        out[key_result] = tf.one_hot(
            label, depth, on_value=float(on), off_value=float(off), dtype=tf.float32
        )
        return out

    return op


@register("keep")
def keep(*keys: str) -> Op:
    """Keeps only ``keys`` (and the internal ``_seed``); raises if one is missing."""
    if not keys or not all(isinstance(k, str) for k in keys):
        raise ValueError(f"keep: keys={keys!r} must be one or more key names, e.g. keep('image').")

    def op(data: Example) -> Example:
        out = {k: _get(data, k, "keep") for k in keys}
        if SEED_KEY in data:
            out[SEED_KEY] = data[SEED_KEY]
        return out

    return op


# ---------------------------------------------------------------------------------------------
# Ops for non-image keys (video, audio, extra labels).


@register("video_value_range")
def video_value_range(
    lo: float, hi: float, key: str = "video", in_min: float = 0, in_max: float = 255
) -> Op:
    """Linearly maps the values of ``key`` from [in_min, in_max] to [lo, hi] (no clipping).

    Works on a tensor of any shape under any key, e.g. ``video`` (time, height, width,
    channels) uint8 0..255 -> float32 in [lo, hi]. Output: float32, same shape.

    Raises:
        ValueError: if ``in_min == in_max``, or (when run) the example lacks ``key``.
    """
    if in_max == in_min:
        raise ValueError(
            f"video_value_range: in_min={in_min!r} must differ from in_max={in_max!r}."
        )
    scale = (hi - lo) / (in_max - in_min)

    def op(data: Example) -> Example:
        x = _get(data, key, "video_value_range")
        return {**data, key: (tf.cast(x, tf.float32) - in_min) * scale + lo}

    return op


@register("log_mel")
def log_mel(
    key: str = "audio",
    out_key: str = "spectrogram",
    sample_rate: int = 8000,
    frame_length: int = 256,
    frame_step: int = 80,
    num_mel_bins: int = 64,
    lower_hz: float = 80.0,
    upper_hz: float = 3800.0,
    normalize: bool = False,
) -> Op:
    """Log-mel spectrogram of the waveform under ``key``, written to ``out_key``.

    The waveform (samples,) float at ``sample_rate`` Hz is cut into frames of
    ``frame_length`` samples every ``frame_step`` samples (no end padding; periodic Hann
    window; FFT length = next power of two >= frame_length) by ``tf.signal.stft``; the
    magnitude spectrum is mapped to ``num_mel_bins`` HTK-mel bands between ``lower_hz`` and
    ``upper_hz`` by ``tf.signal.linear_to_mel_weight_matrix`` and compressed as
    ``log(mel + 1e-6)`` (natural log). With ``normalize=True`` each example is then
    standardised to zero mean and unit variance over all its (frame, bin) values.

    Output: float32 (frames, num_mel_bins, 1) with
    ``frames = 1 + (samples - frame_length) // frame_step`` (e.g. 97 for 8000 samples and the
    defaults: 10 ms hop, 32 ms window at 8 kHz). The input key is kept.

    Raises:
        ValueError: on non-positive sizes, ``not 0 <= lower_hz < upper_hz <= sample_rate / 2``,
            or (when run) a missing ``key`` or a waveform that is not 1-D or is shorter than
            ``frame_length``.
    """
    for name, value in (
        ("sample_rate", sample_rate),
        ("frame_length", frame_length),
        ("frame_step", frame_step),
        ("num_mel_bins", num_mel_bins),
    ):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"log_mel: {name}={value!r} must be a positive int.")
    if not 0 <= lower_hz < upper_hz <= sample_rate / 2:
        raise ValueError(
            f"log_mel: need 0 <= lower_hz < upper_hz <= sample_rate / 2, got lower_hz="
            f"{lower_hz!r}, upper_hz={upper_hz!r}, sample_rate={sample_rate!r}."
        )
    fft_length = 1 << (frame_length - 1).bit_length()
    mel_matrix = tf.signal.linear_to_mel_weight_matrix(
        num_mel_bins=num_mel_bins,
        num_spectrogram_bins=fft_length // 2 + 1,
        sample_rate=sample_rate,
        lower_edge_hertz=float(lower_hz),
        upper_edge_hertz=float(upper_hz),
        dtype=tf.float32,
    )

    def op(data: Example) -> Example:
        wave = _get(data, key, "log_mel")
        if wave.shape.rank != 1:
            raise ValueError(
                f"log_mel: key {key!r} must hold a 1-D waveform (samples,), got shape "
                f"{wave.shape}; select one channel first."
            )
        num_samples = wave.shape[0]
        if num_samples is not None and num_samples < frame_length:
            raise ValueError(
                f"log_mel: key {key!r} has {num_samples} samples < frame_length="
                f"{frame_length}; use a smaller frame_length."
            )
        stft = tf.signal.stft(
            tf.cast(wave, tf.float32),
            frame_length=frame_length,
            frame_step=frame_step,
            fft_length=fft_length,
            pad_end=False,
        )
        mel = tf.matmul(tf.abs(stft), mel_matrix)  # (frames, num_mel_bins)
        spec = tf.math.log(mel + 1e-6)
        if normalize:
            mean, var = tf.nn.moments(spec, axes=[0, 1])
            spec = (spec - mean) * tf.math.rsqrt(var + 1e-6)
        return {**data, out_key: spec[..., None]}

    return op


def _check_key_names(op: str, *keys: Any) -> None:
    """Raises a ValueError naming ``op`` unless every key is a non-empty, non-reserved str."""
    for k in keys:
        if not isinstance(k, str) or not k or k == SEED_KEY:
            raise ValueError(f"{op}: key {k!r} must be a non-empty string other than '_seed'.")


@register("rename")
def rename(old: str, new: str) -> Op:
    """Moves the value of key ``old`` to key ``new`` (any shape/dtype); ``old`` is removed.

    An existing ``new`` is overwritten, so e.g. ``rename('digit', 'label')`` makes the digit
    class the label of ``moving_digits``.

    Raises:
        ValueError: on non-string or reserved names, or (when run) a missing ``old``.
    """
    _check_key_names("rename", old, new)

    def op(data: Example) -> Example:
        out = dict(data)
        out[new] = _get(data, old, "rename")
        if new != old:
            del out[old]
        return out

    return op


@register("copy")
def copy(src: str, dst: str) -> Op:
    """Copies the value of key ``src`` to key ``dst`` (any shape/dtype); ``src`` is kept.

    An existing ``dst`` is overwritten.

    Raises:
        ValueError: on non-string or reserved names, or (when run) a missing ``src``.
    """
    _check_key_names("copy", src, dst)

    def op(data: Example) -> Example:
        return {**data, dst: _get(data, src, "copy")}

    return op
