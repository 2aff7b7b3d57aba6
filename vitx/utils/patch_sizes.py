"""Patch-size lists: the one check that a set of patch sizes fits an image.

Used by the FlexiViT training schedule (`vitx.train.schedules`) and the per-patch-size evaluator
(`vitx.evaluators.per_patch_size`); it lives here, below both, so an evaluator never imports the
trainer. A patch size `p` cuts an (H, W) image into `(H / p) * (W / p)` non-overlapping patches
(tokens), so it must divide both sides. Source: Beyer et al., "FlexiViT: One Model for All Patch
Sizes", CVPR 2023, Sec. 3 (the token count of a patch size).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from vitx.utils import pair

__all__ = ["check_patch_sizes", "validate_patch_sizes"]


def check_patch_sizes(patch_sizes: Any, key: str) -> tuple[int, ...]:
    """`patch_sizes` (pixels) as a tuple of distinct Python ints > 0, in the given order.

    `key` is the config path named in the error (e.g. "flexi.patch_sizes").

    Raises:
      ValueError: `patch_sizes` is not a sequence, is empty, holds a non-int (bools included) or
        an int <= 0, or repeats a size; one line naming `key` and the fix.
    """
    if isinstance(patch_sizes, str) or not isinstance(patch_sizes, Iterable):
        raise ValueError(f"{key}={patch_sizes!r}: must be a sequence of ints > 0, e.g. (8, 16)")
    sizes = tuple(patch_sizes)
    if not sizes:
        raise ValueError(f"{key}=(): give at least one patch size, e.g. (8, 16)")
    bad = [p for p in sizes if isinstance(p, bool) or not isinstance(p, int | np.integer) or p <= 0]
    if bad:
        raise ValueError(f"{key}={sizes!r}: {bad!r} are not ints > 0; use positive int sizes")
    sizes = tuple(int(p) for p in sizes)
    dups = sorted({p for p in sizes if sizes.count(p) > 1})
    if dups:
        raise ValueError(f"{key}={sizes!r}: {dups} repeated; list each size once")
    return sizes


def validate_patch_sizes(
    patch_sizes: Sequence[int],
    image_size: int | tuple[int, int],
    key: str = "flexi.patch_sizes",
) -> None:
    """Check that every patch size is a positive int dividing the image height and width.

    `patch_sizes` are pixels; `image_size` is in pixels, an int (square) or `(height, width)`.
    `key` is the config path named in the errors.

    Raises:
      ValueError: one line naming `key`: sizes that do not divide the image, with the sizes that
        would, e.g. `"flexi.patch_sizes: 5, 7 do not divide image size 48; use divisors of 48
        such as 2, 3, 4, 6, 8, 12, 16, 24"`; also an empty list, non-int or repeated sizes
        (`check_patch_sizes`), or an image size that is not a positive int or pair
        (`vitx.utils.pair`).
    """
    sizes = check_patch_sizes(patch_sizes, key)
    h, w = pair(image_size, f"{key}: image size")
    bad = [p for p in sizes if h % p or w % p]
    if not bad:
        return
    shown = f"{h}" if h == w else f"{h}x{w}"
    good = [d for d in range(2, min(h, w)) if h % d == 0 and w % d == 0]
    hint = (
        f"use divisors of {shown} such as {', '.join(map(str, good))}"
        if good
        else f"no size between 1 and {min(h, w)} divides {shown}; change the image size"
    )
    raise ValueError(f"{key}: {', '.join(map(str, bad))} do not divide image size {shown}; {hint}")
