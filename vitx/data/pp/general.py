"""Key and label ops: `onehot`, `keep`, `rename`, `copy` (any key, any shape/dtype)."""

from __future__ import annotations

import tensorflow as tf

from vitx.data.pp.registry import (
    SEED_KEY,
    Example,
    Op,
    check_key_names,
    get_key,
    key_op,
    register,
)


@register("onehot")
def onehot(
    depth: int,
    key: str = "label",
    key_result: str = "label",
    label_smoothing: float = 0.0,
    on: float = 1.0,
    off: float = 0.0,
) -> Op:
    """Int label under `key` -> float32 one-hot of shape (depth,) under `key_result`.

    With `label_smoothing = ls > 0` the values are on = 1 - ls + ls/depth and
    off = ls/depth (so each row sums to 1); `on`/`off` must then be left at defaults.

    Raises:
        ValueError: `depth` not a positive int, `label_smoothing` outside [0, 1), smoothing
            together with `on`/`off`, or (when run) a missing `key`.
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

    def fn(label: tf.Tensor) -> tf.Tensor:
        return tf.one_hot(label, depth, on_value=float(on), off_value=float(off), dtype=tf.float32)

    return key_op("onehot", key, key_result, fn)


@register("keep")
def keep(*keys: str) -> Op:
    """Keeps only `keys` (and the internal `_seed`); raises if one is missing."""
    if not keys or not all(isinstance(k, str) for k in keys):
        raise ValueError(f"keep: keys={keys!r} must be one or more key names, e.g. keep('image').")

    def op(data: Example) -> Example:
        out = {k: get_key(data, k, "keep") for k in keys}
        if SEED_KEY in data:
            out[SEED_KEY] = data[SEED_KEY]
        return out

    return op


@register("rename")
def rename(old: str, new: str) -> Op:
    """Moves the value of key `old` to key `new` (any shape/dtype); `old` is removed.

    An existing `new` is overwritten, so e.g. `rename('digit', 'label')` makes the digit
    class the label of `moving_digits`.

    Raises:
        ValueError: on non-string or reserved names, or (when run) a missing `old`.
    """
    check_key_names("rename", old, new)

    def op(data: Example) -> Example:
        out = dict(data)
        out[new] = get_key(data, old, "rename")
        if new != old:
            del out[old]
        return out

    return op


@register("copy")
def copy(src: str, dst: str) -> Op:
    """Copies the value of key `src` to key `dst` (any shape/dtype); `src` is kept.

    An existing `dst` is overwritten.

    Raises:
        ValueError: on non-string or reserved names, or (when run) a missing `src`.
    """
    check_key_names("copy", src, dst)
    return key_op("copy", src, dst, lambda x: x)
