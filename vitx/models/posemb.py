"""Position-embedding variants of the ViT family beyond `learn` / `sincos2d`: `learn_2d`, `none`.

Source: Dosovitskiy et al., "An Image is Worth 16x16 Words", ICLR 2021, Appendix D.4
("Positional Embedding"): no positional embedding ("none", a bag of patches); 2-dimensional
embeddings ("learn_2d": two learned tables, an X-embedding per column and a Y-embedding per row,
each of size D/2; the embedding of the patch in row r and column c is the concatenation
[X_c, Y_r]). Seed 000 (JP7536893B2) names the same variants.

Parameter tree (`learn_2d` only; vitx has no class-token slot in its posemb):

    pos_embedding_x (1, Gw, D/2)     # one row per token-grid column
    pos_embedding_y (1, Gh, D/2)     # one row per token-grid row

Fine-tuning at another token grid resizes each table along its own axis (`adapt_learn_2d`), the
1-D analogue of ViT Sec. 3.2's 2-D interpolation, with `resize.resize_posemb`'s convention.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vitx.models import resize
from vitx.utils import pair

Array = jax.Array

#: Every `model.posemb` of the ViT family (`learn`, `sincos2d` live in vit.py / layers.py).
POSEMB_TYPES = ("learn", "sincos2d", "learn_2d", "none")
#: The ones this module computes.
EXTRA_TYPES = ("learn_2d", "none")


def check_posemb(value: Any, width: int | None = None) -> None:
    """A one-line ValueError naming `model.posemb` for an unknown type, or `learn_2d` with an
    odd `width` (each table is D/2 wide)."""
    if value is not None and value not in POSEMB_TYPES:
        raise ValueError(f"model.posemb={value!r} is unknown; use one of {POSEMB_TYPES}")
    if value == "learn_2d" and isinstance(width, int) and width % 2:
        raise ValueError(f"model.posemb='learn_2d' needs an even model.width (two tables of "
                         f"D/2), got {width}; use an even width or posemb='learn'")


def learn_2d(module: nn.Module, grid: Sequence[int], width: int,
             stored_grid: Sequence[int] | None = None, method: str = "bilinear") -> Array:
    """The `learn_2d` embedding (1, Gh * Gw, D) of the token grid `grid` = (Gh, Gw), raster order.

    Creates `module`'s params `pos_embedding_x` (1, W0, D/2) and `pos_embedding_y` (1, H0, D/2)
    (normal 0.02, as `learn`) for the stored grid `stored_grid` = (H0, W0) (default `grid`);
    each is resized along its axis to the current grid when they differ (FlexiViT). Call from
    a compact method of `module`. Float32.

    Source: ViT paper, Appendix D.4 (2-D positional embedding).

    Raises:
      ValueError: odd `width`.
    """
    check_posemb("learn_2d", width)
    gh, gw = pair(tuple(grid), "grid")
    h0, w0 = pair(tuple(stored_grid or grid), "model.posemb_grid")
    init = nn.initializers.normal(stddev=0.02)
    px = module.param("pos_embedding_x", init, (1, w0, width // 2), jnp.float32)
    py = module.param("pos_embedding_y", init, (1, h0, width // 2), jnp.float32)
    px = resize.resize_posemb(px, (1, w0), (1, gw), method=method)
    py = resize.resize_posemb(py, (1, h0), (1, gh), method=method)
    pe = jnp.concatenate([jnp.broadcast_to(px[:, None], (1, gh, gw, width // 2)),
                          jnp.broadcast_to(py[:, :, None], (1, gh, gw, width // 2))], axis=-1)
    return jnp.reshape(pe, (1, gh * gw, width))


def add(module: nn.Module, x: Array, grid: Sequence[int], kind: str,
        stored_grid: Sequence[int] | None = None, method: str = "bilinear") -> Array:
    """Tokens (B, N, D), N = Gh * Gw -> tokens + the `kind` embedding ("learn_2d" / "none")."""
    if kind == "none":
        return x
    return x + learn_2d(module, grid, x.shape[-1], stored_grid, method).astype(x.dtype)


def adapt_learn_2d(name: str, value: Any, ref_shape: Sequence[int],
                   method: str = "bilinear") -> Any | None:
    """Fine-tune surgery: `pos_embedding_x` / `pos_embedding_y` (1, n0, D/2) resized to
    `ref_shape` (1, n1, D/2) along the token axis (`resize.resize_posemb` on a 1 x n grid:
    bilinear with half-pixel centres is exact on linear ramps between the end samples);
    None for any other param or shape change."""
    shape, ref_shape = tuple(np.shape(value)), tuple(ref_shape)
    if (name not in ("pos_embedding_x", "pos_embedding_y") or len(shape) != 3
            or len(ref_shape) != 3 or shape[::2] != ref_shape[::2]):
        return None
    return resize.resize_posemb(jnp.asarray(value), (1, shape[1]), (1, ref_shape[1]),
                                method=method)


def use_cls(cls_token: bool | None, pool_type: str) -> bool:
    """Whether the model prepends a class token: `model.cls_token`, or (None) iff pool_type is
    "tok" (the ViT default, Sec. 3.1). The token is independent of pooling otherwise ("gap"
    then averages the patch tokens only, as timm).

    Raises:
      ValueError: cls_token=False with pool_type "tok" (nothing to pool).
    """
    if cls_token is None:
        return pool_type == "tok"
    if not cls_token and pool_type == "tok":
        raise ValueError("model.cls_token=False with model.pool_type='tok' leaves no token to "
                         "pool; use pool_type 'gap' or 'map', or cls_token=True")
    return bool(cls_token)
