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

__all__ = ["check_patch_sizes", "check_patch_strides", "scheme_name", "validate_patch_sizes"]


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


def check_patch_strides(patch_sizes: Sequence[int], patch_strides: Any,
                        image_size: int | tuple[int, int] | None = None,
                        key: str = "flexi.patch_strides") -> tuple[int | None, ...]:
    """The stride of each patch size: `patch_strides` aligned with `patch_sizes` (pixels; None:
    the patch size itself, non-overlapping), each dividing its patch size; with `image_size`
    (H, W), every (p, s) pair must tile the image: H >= p and s divides H - p (tokens
    ((H - p) // s + 1) a side; for s = p that is p | H, as `validate_patch_sizes`).

    Source: FlexiViT patent CN117556885A, dependent claim 3 (a stride per patch scheme).

    Raises:
      ValueError: one line naming `key`: a length other than `patch_sizes`', a stride that is
        not an int > 0 or does not divide its patch size, or a pair that does not tile the image.
    """
    sizes = tuple(patch_sizes)
    if isinstance(patch_strides, str) or not isinstance(patch_strides, Iterable):
        raise ValueError(f"{key}={patch_strides!r}: give one stride (or None) per patch size of "
                         f"{sizes}, e.g. {tuple(p // 2 for p in sizes)}")
    strides = tuple(patch_strides)
    if len(strides) != len(sizes):
        raise ValueError(f"{key}={strides!r}: {len(strides)} strides for {len(sizes)} patch sizes "
                         f"{sizes}; give one stride (or None) per patch size")
    bad = [(p, s) for p, s in zip(sizes, strides, strict=True) if s is not None and (
        isinstance(s, bool) or not isinstance(s, int | np.integer) or s <= 0 or p % s)]
    if bad:
        raise ValueError(f"{key}: (patch size, stride) pairs {bad} have a stride that does not "
                         f"divide its patch size; use divisors of the patch size (or None)")
    out = tuple(None if s is None else int(s) for s in strides)
    if image_size is not None:
        h, w = pair(image_size, f"{key}: image size")
        bad = [(p, s or p) for p, s in zip(sizes, out, strict=True)
               if h < p or w < p or (h - p) % (s or p) or (w - p) % (s or p)]
        if bad:
            raise ValueError(f"{key}: (patch size, stride) pairs {bad} do not tile the image "
                             f"{h}x{w} (need (H - p) divisible by the stride); change the stride "
                             f"or the image size")
    return out


def scheme_name(patch_size: int, stride: int | None) -> str:
    """The metric suffix of a (patch size, stride) scheme: "8" (stride None or 8), "8s4"."""
    return f"{patch_size}" if stride in (None, patch_size) else f"{patch_size}s{stride}"
