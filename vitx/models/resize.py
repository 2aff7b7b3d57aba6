"""Resizing of position embeddings and patch-embedding kernels: model-layer math.

Used at forward time (FlexiViT resizes its stored kernel and posemb grid to every patch size) and
at fine-tune time (each model module's `load` resizes what a checkpoint holds to the new model).

Sources:
  * Dosovitskiy et al., "An Image is Worth 16x16 Words", ICLR 2021, Sec. 3.2 "Fine-tuning and
    higher resolution": 2D-interpolate the pre-trained position embeddings to the new grid.
  * Beyer et al., "FlexiViT: One Model for All Patch Sizes", CVPR 2023, Sec. 3.4 (PI-resize):
    resize the patch-embedding kernel with the pseudo-inverse of the (linear) image resize, so
    a token computed from a resized patch equals the token of the original patch.

Resize convention: `jax.image.resize` (half-pixel centres, like tf.image.resize and FlexiViT's
big_vision code). vit_jax's own fine-tune surgery uses `scipy.ndimage.zoom(order=1)`, whose
sample positions differ slightly, so posembs resized here differ from vit_jax's by a small
amount (both are bilinear interpolations of the same grid).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from vitx.utils import pair as _hw

__all__ = [
    "RESIZE_METHODS",
    "check_method",
    "infer_grid",
    "pi_resize_matrix",
    "pi_resize_patch_kernel",
    "resize_matrix",
    "resize_posemb",
]

#: public method name -> `jax.image.resize` method name.
RESIZE_METHODS = {"bilinear": "linear", "bicubic": "cubic", "nearest": "nearest"}


# One compiled program per (shapes, method); much faster than op-by-op `jax.image.resize` outside
# jit, and inlined when called inside a jitted function.
_image_resize = jax.jit(jax.image.resize, static_argnames=("shape", "method", "antialias"))


def check_method(method: str) -> str:
    """The `jax.image.resize` name of public resize `method` ("bilinear" -> "linear").

    Raises:
      ValueError: `method` is not one of `RESIZE_METHODS`.
    """
    if method not in RESIZE_METHODS:
        raise ValueError(f"resize method={method!r} is unknown; use one of "
                         f"{list(RESIZE_METHODS)}")
    return RESIZE_METHODS[method]


def infer_grid(n_tokens: int) -> tuple[int, int]:
    """Square patch grid (h, w) with h * w == n_tokens, e.g. 196 -> (14, 14).

    Raises:
      ValueError: `n_tokens` is not a positive perfect square (pass the grid explicitly).
    """
    side = math.isqrt(n_tokens) if n_tokens > 0 else 0
    if side * side != n_tokens or side == 0:
        raise ValueError(f"{n_tokens} position-embedding tokens do not form a square grid; pass "
                         f"the grid explicitly (old_grid=/new_grid=(h, w))")
    return side, side


def resize_posemb(posemb: Any, old_grid: int | Sequence[int], new_grid: int | Sequence[int], *,
                  num_prefix_tokens: int = 0, method: str = "bilinear",
                  antialias: bool = True) -> Any:
    """Resize a learned position embedding to a new patch grid.

    Shapes: posemb (B, T + h0 * w0, D) -> (B, T + h1 * w1, D), B usually 1, T =
    `num_prefix_tokens` (e.g. 1 for a vit_jax cls slot; 0 for vitx), raster order. The T prefix
    embeddings are returned unchanged (bit-identical); the grid part is resized as an image
    (h0, w0, D) -> (h1, w1, D) with `jax.image.resize` (half-pixel centres; `antialias` only
    matters when downsampling, True is jax's default as in FlexiViT's big_vision code). Grids
    may be rectangular. Returns `posemb` itself when the grids are equal. Jittable (the grids are
    static Python ints); the dtype is preserved (computed in at least float32).

    Source: Dosovitskiy et al., ICLR 2021, Sec. 3.2 (2D interpolation of the pre-trained
    posemb); Beyer et al., FlexiViT, CVPR 2023, Sec. 3.4 (bilinear posemb resize).

    Raises:
      ValueError: unknown `method` (use "bilinear", "bicubic" or "nearest"); a grid that is not
        a pair of positive ints; `posemb` not 3-D or its length not T + h0 * w0.
    """
    jax_method = check_method(method)
    old, new = _hw(old_grid, "old_grid"), _hw(new_grid, "new_grid")
    if (posemb.ndim != 3 or num_prefix_tokens < 0
            or posemb.shape[1] != num_prefix_tokens + old[0] * old[1]):
        raise ValueError(f"posemb of shape {tuple(posemb.shape)} does not hold num_prefix_tokens"
                         f"={num_prefix_tokens} + {old[0]}x{old[1]} tokens; pass the grid and "
                         f"prefix count that match it (shape (B, T + h*w, D))")
    if old == new:
        return posemb
    b, _, d = posemb.shape
    compute_dtype = jnp.promote_types(posemb.dtype, jnp.float32)
    grid = jnp.reshape(jnp.asarray(posemb)[:, num_prefix_tokens:], (b, *old, d))
    grid = _image_resize(grid.astype(compute_dtype), shape=(b, *new, d), method=jax_method,
                         antialias=antialias)
    grid = jnp.reshape(grid, (b, new[0] * new[1], d)).astype(posemb.dtype)
    return jnp.concatenate([jnp.asarray(posemb)[:, :num_prefix_tokens], grid], axis=1)


# ------------------------------------------------------------------------------------------------
# PI-resize of the patch-embedding kernel (FlexiViT Sec. 3.4).


@functools.lru_cache(maxsize=128)
def _resize_matrix_1d(n_old: int, n_new: int, jax_method: str, antialias: bool) -> np.ndarray:
    """(n_new, n_old) float64 matrix of the 1-D `jax.image.resize`, from resized basis vectors."""
    # Run as an ahead-of-time compiled program on concrete numpy input: the matrix is a host
    # constant even when first needed inside a jit trace. enable_x64: build it in float64 so
    # pinv sees exact interpolation weights.
    with jax.enable_x64(True):
        basis = np.eye(n_old, dtype=np.float64)  # row i = i-th basis vector
        compiled = _image_resize.lower(basis, shape=(n_old, n_new), method=jax_method,
                                       antialias=antialias).compile()
        mat = np.array(compiled(basis), dtype=np.float64).T
    mat.setflags(write=False)
    return mat


@functools.lru_cache(maxsize=64)
def _resize_matrix_cached(old: tuple[int, int], new: tuple[int, int], jax_method: str,
                          antialias: bool) -> np.ndarray:
    # jax.image.resize is separable (one weight matrix per spatial axis), so the 2-D resize of a
    # row-major flattened image is kron(M_h, M_w); tests check it against jax.image.resize.
    mat = np.kron(_resize_matrix_1d(old[0], new[0], jax_method, antialias),
                  _resize_matrix_1d(old[1], new[1], jax_method, antialias))
    mat.setflags(write=False)
    return mat


@functools.lru_cache(maxsize=64)
def _pi_resize_matrix_cached(old: tuple[int, int], new: tuple[int, int], jax_method: str,
                             antialias: bool) -> np.ndarray:
    mat = np.linalg.pinv(_resize_matrix_cached(old, new, jax_method, antialias).T)
    mat.setflags(write=False)
    return mat


def resize_matrix(old_size: int | Sequence[int], new_size: int | Sequence[int],
                  method: str = "bilinear", *, antialias: bool = False) -> np.ndarray:
    """Matrix B of the linear image resize: `resize(x).reshape(-1) == B @ x.reshape(-1)`.

    Shapes: B (h1 * w1, h0 * w0) float64 for old_size (h0, w0), new_size (h1, w1), with x of
    shape (h0, w0), row-major. The resize is `jax.image.resize(x, new_size, method, antialias)`
    (half-pixel centres). `antialias=False` by default: it reproduces tf.image.resize's default
    bilinear resize, which FlexiViT's reference uses to build B (upsampling is the same either
    way; for downsampling choose what the data pipeline's image resize does). Built from resized
    basis vectors once per (sizes, method, antialias) and cached; the result is read-only.

    Source: Beyer et al., FlexiViT, CVPR 2023, Sec. 3.4 (resize(x) = B x).

    Raises:
      ValueError: unknown `method`; sizes that are not positive ints / pairs.
    """
    return _resize_matrix_cached(_hw(old_size, "old_size"), _hw(new_size, "new_size"),
                                 check_method(method), bool(antialias))


def pi_resize_matrix(old_size: int | Sequence[int], new_size: int | Sequence[int],
                     method: str = "bilinear", *, antialias: bool = False) -> np.ndarray:
    """P = pinv(Bᵀ), the PI-resize matrix: ŵ = P @ w for a flattened kernel slice w.

    Shapes: P (h1 * w1, h0 * w0) float64, B = `resize_matrix(old_size, new_size, method,
    antialias=antialias)`. Upsampling (B full column rank): Bᵀ P = I, so ⟨x, w⟩ = ⟨B x, P w⟩
    for every x. Downsampling: P w is the least-squares solution of min ‖Bᵀ ŵ − w‖ (the optimum
    of the FlexiViT objective for x ~ N(0, I)). Cached per arguments; the result is read-only.

    Source: Beyer et al., FlexiViT, CVPR 2023, Sec. 3.4, eqs. for ŵ = (Bᵀ)⁺ w.

    Raises:
      ValueError: unknown `method`; sizes that are not positive ints / pairs.
    """
    return _pi_resize_matrix_cached(_hw(old_size, "old_size"), _hw(new_size, "new_size"),
                                    check_method(method), bool(antialias))


def pi_resize_patch_kernel(kernel: Any, new_size: int | Sequence[int], method: str = "bilinear",
                           *, antialias: bool = False) -> Any:
    """PI-resize a patch-embedding kernel to a new patch size.

    Shapes: kernel (P0h, P0w, C, D) -> (P1h, P1w, C, D); each (c, d) slice w (P0h, P0w) becomes
    `reshape(pi_resize_matrix(...) @ w.reshape(-1), (P1h, P1w))`, as one einsum. The bias is
    independent of the patch size and is not touched. Returns `kernel` itself when the sizes are
    equal. Jittable (`new_size` static), differentiable in `kernel`; dtype preserved (computed in
    at least float32 with HIGHEST matmul precision). See `resize_matrix` for `antialias`.

    Source: Beyer et al., FlexiViT, CVPR 2023, Sec. 3.4 (PI-resize).

    Raises:
      ValueError: `kernel` not 4-D; unknown `method`; `new_size` not a positive int / pair.
    """
    if kernel.ndim != 4:
        raise ValueError(f"patch kernel of shape {tuple(kernel.shape)} is not 4-D; pass the "
                         f"embedding/kernel of shape (P, P, C, D)")
    old, new = (int(kernel.shape[0]), int(kernel.shape[1])), _hw(new_size, "new_size")
    if old == new:
        return kernel
    pmat = pi_resize_matrix(old, new, method, antialias=antialias)
    compute_dtype = jnp.promote_types(kernel.dtype, jnp.float32)
    c, d = kernel.shape[2:]
    flat = jnp.reshape(jnp.asarray(kernel), (old[0] * old[1], c, d)).astype(compute_dtype)
    out = jnp.einsum("nm,mcd->ncd", jnp.asarray(pmat, compute_dtype), flat,
                     precision=jax.lax.Precision.HIGHEST)
    return jnp.reshape(out, (*new, c, d)).astype(kernel.dtype)


