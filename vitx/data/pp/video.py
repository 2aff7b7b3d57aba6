"""Video ops. Image ops work on a video key too, e.g. `value_range(-1, 1, key="video")`.

`video_value_range` is that `value_range` with the default key `video`, kept under its old name
(and its old signature, `key` the third positional argument) for existing configs.
"""

from __future__ import annotations

from vitx.data.pp.image import value_range_fn
from vitx.data.pp.registry import Op, key_op, register


@register("video_value_range")
def video_value_range(
    lo: float, hi: float, key: str = "video", in_min: float = 0, in_max: float = 255
) -> Op:
    """Linearly maps the values of `key` from [in_min, in_max] to [lo, hi] (no clipping).

    Works on a tensor of any shape under any key, e.g. `video` (time, height, width,
    channels) uint8 0..255 -> float32 in [lo, hi]. Output: float32, same shape. The same as
    `value_range(lo, hi, in_min=in_min, in_max=in_max, key=key)`.

    Raises:
        ValueError: if `in_min == in_max`, or (when run) the example lacks `key`.
    """
    fn = value_range_fn("video_value_range", lo, hi, in_min, in_max)
    return key_op("video_value_range", key, key, fn)
