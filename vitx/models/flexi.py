"""FlexiViT: one ViT for all patch sizes.

Source: Beyer et al., "FlexiViT: One Model for All Patch Sizes", CVPR 2023, Sec. 3 (CN117556885A).
The model is a plain ViT (`vitx.models.vit`) whose patch-embedding kernel and
learned position embedding are stored once, at a fixed "base" shape, and resized on the fly to
the patch size of the current call:

  * Sec. 3.4 (PI-resize): the kernel (P0h, P0w, C, D) becomes (ph, pw, C, D) with
    ŵ = pinv(Bᵀ) w, B the bilinear resize matrix, so that ⟨B x, ŵ⟩ = ⟨x, w⟩ for every patch x
    when upsampling (least squares when downsampling). The bias is not resized. The matrices
    come from `vitx.models.resize.pi_resize_patch_kernel` (host constants, computed once per
    (base, p) pair and cached; inside `jit` they are baked into the program).
  * Sec. 3: the learned position embedding is one grid (default 7x7) bilinearly resized to the
    current token grid (H/ph, W/pw) with `vitx.models.resize.resize_posemb`.
  * Sec. 3: everything else (encoder, cls token, head) is shared unchanged across patch sizes.

The patch size is a *static* Python int or (h, w) pair: every distinct size is its own compiled
program (big_vision passes the grid as a static argument in the same way). Under
`jax.jit(model.apply, static_argnames=("patch_size", "train"))` each size compiles once and is
reused after that.

Parameter tree: identical names to `vitx.models.vit` (so checkpoints move between the two):

    embedding/{kernel (P0h, P0w, C, D), bias (D,)}   # P0 = base_patch_size
    cls (1, 1, D)                                   # pool_type == "tok" only
    pos_embedding (1, G0h * G0w, D)                 # posemb == "learn" only; G0 = posemb_grid
    Transformer/..., head/...                       # as in vit.py

With `patch_size == base_patch_size` and `posemb_grid == (H/P, W/P)` the model computes exactly
what `vit.Model` computes with the same params.

Reference defaults [EXT, big_vision configs/proj/flexivit]: base kernel 32x32, posemb grid 7x7,
240 px images, patch sizes {8, 10, 12, 15, 16, 20, 24, 30, 40, 48} sampled uniformly per step.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from vitx.models import layers, posemb, resize, strided, vit
from vitx.utils import pair as _pair

Array = jax.Array


class FlexiPatchEmbed(nn.Module):
    """Patch embedding with one base kernel, PI-resized to the requested patch size.

    Params: `kernel` (P0h, P0w, C, D) (lecun-normal, as `nn.Conv`) and `bias` (D,) (zeros), the
    same names and inits as the plain ViT's `nn.Conv` "embedding".

    Call: images (B, H, W, C) and a static patch size (ph, pw) -> tokens (B, H/ph, W/pw, D). The
    kernel is resized with `resize.pi_resize_patch_kernel` (identity at the base size; the
    bias is never resized) and applied as a VALID conv with stride = patch size (`layers.patchify`:
    a matmul by default, `impl`), computed in
    `dtype` (params stay float32).

    Source: FlexiViT, CVPR 2023, Sec. 3.4 (PI-resize), Sec. 3.1 (ViT patch embedding).

    Raises:
      ValueError: ph does not divide H or pw does not divide W.
    """

    features: int
    base_patch_size: Sequence[int] = (32, 32)
    resize_method: str = "bilinear"
    dtype: Any = jnp.float32
    impl: str = "matmul"

    @nn.compact
    def __call__(self, x: Array, patch_size: tuple[int, int],
                 stride: tuple[int, int] | None = None) -> Array:
        ph, pw = patch_size
        h, w, c = x.shape[1:]
        if stride is not None:  # overlapping patches (claim 3): ((H - p) // s + 1) tokens a side
            strided.check_image((h, w), (ph, pw), stride, f"patch_size={(ph, pw)}, "
                                f"patch_stride={tuple(stride)}")
        elif h % ph or w % pw:
            raise ValueError(f"patch_size={(ph, pw)} does not divide the image size {h}x{w}; use a "
                             f"patch size that divides both sides (or resize the images)")
        base = _pair(self.base_patch_size, "model.base_patch_size")
        kernel = self.param("kernel", nn.initializers.lecun_normal(), (*base, c, self.features),
                            jnp.float32)
        bias = self.param("bias", nn.initializers.zeros, (self.features,), jnp.float32)
        kernel = resize.pi_resize_patch_kernel(kernel, (ph, pw), self.resize_method)
        x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
        return strided.patchify(x, kernel, bias, stride or (ph, pw), self.impl)


class _FlexiViT(vit.VisionTransformer):
    """FlexiViT. Images (B, H, W, C) in [-1, 1] -> (logits (B, num_classes), aux dict).

    Fields (besides the ViT's):
      base_patch_size: (P0h, P0w), the stored patch-embedding kernel size (default 32x32).
      posemb_grid: (G0h, G0w), the stored learned position-embedding grid (default 7x7).
      resize_method: "bilinear" (default), "bicubic" or "nearest": the image resize B that
        defines the kernel PI-resize, and the position-embedding interpolation.
      patch_size (inherited): the default patch size when `__call__` gets none.

    `__call__(x, *, train=False, patch_size=None)`: `patch_size` is a static Python int or
    (ph, pw). Tokens N = (H/ph) * (W/pw); aux holds "encoded" (B, N(+1 cls), D), "pre_logits"
    (B, D) and, with num_classes, "logits" (B, num_classes).

    Source: Beyer et al., FlexiViT, CVPR 2023, Sec. 3.

    Raises:
      ValueError: the patch size does not divide H or W, or is not a static positive int/pair;
        unknown posemb / pool_type / resize_method.
    """

    base_patch_size: Sequence[int] = (32, 32)
    posemb_grid: Sequence[int] = (7, 7)
    resize_method: str = "bilinear"

    def _patch_size(self, patch_size: Any) -> tuple[int, int]:
        if self.resize_method not in resize.RESIZE_METHODS:
            raise ValueError(f"model.resize_method={self.resize_method!r} is unknown; use one of "
                             f"{list(resize.RESIZE_METHODS)}")
        if patch_size is None:
            return _pair(self.patch_size, "model.patch_size")
        return _pair(patch_size, "patch_size")

    def _patch_stride(self, patch_stride: Any) -> tuple[int, int] | None:
        stride = self.patch_stride if patch_stride is None else patch_stride
        return None if stride is None else _pair(stride, "patch_stride")

    def embed_patches(self, x: Array, patch_size: Any = None, patch_stride: Any = None,
                      **kw: Any) -> Array:
        """(B, H, W, C) -> (B, H/ph, W/pw, D): PI-resized base kernel, stride = patch size.

        Source: FlexiViT Sec. 3.4. Raises ValueError if the patch size does not divide H, W.
        """
        return FlexiPatchEmbed(self.width, base_patch_size=self.base_patch_size,
                               resize_method=self.resize_method,
                               dtype=layers.dtype_of(self.dtype_mm), impl=self.patch_embed,
                               name="embedding")(
            x, self._patch_size(patch_size), self._patch_stride(patch_stride))

    def add_posemb(self, x: Array, grid: tuple[int, int], patch_size: Any = None,
                   **kw: Any) -> Array:
        """Tokens (B, N, D), N = gh * gw -> tokens + posemb resized to the (gh, gw) grid.

        "learn": one param (1, G0h * G0w, D) (normal, stddev 0.02) for `posemb_grid`, resized
        with `resize.resize_posemb` (identity when the grids are equal). "sincos2d": computed
        directly at (gh, gw). Source: FlexiViT Sec. 3 (posemb resized to the token grid).
        """
        n, d = x.shape[1:]
        if self.posemb in posemb.EXTRA_TYPES:  # learn_2d: one stored grid, resized per axis
            return posemb.add(self, x, grid, self.posemb, self.posemb_grid, self.resize_method)
        if self.posemb == "learn":
            g0 = _pair(self.posemb_grid, "model.posemb_grid")
            pe = self.param("pos_embedding", nn.initializers.normal(stddev=0.02),
                            (1, g0[0] * g0[1], d), jnp.float32)
            pe = resize.resize_posemb(pe, g0, tuple(grid), method=self.resize_method)
        elif self.posemb == "sincos2d":
            pe = layers.posemb_sincos_2d(*grid, d)
        else:
            raise ValueError(f"model.posemb={self.posemb!r} is unknown; use one of "
                             f"{vit.POSEMB_TYPES}")
        return x + pe.astype(x.dtype)

    @nn.compact
    def __call__(self, x: Array, *, train: bool = False,
                 patch_size: int | Sequence[int] | None = None,
                 patch_stride: int | Sequence[int] | None = None) -> tuple[Array, dict]:
        return super().__call__(x, train=train, patch_size=self._patch_size(patch_size),
                                patch_stride=self._patch_stride(patch_stride))


def Model(num_classes: int | None = 1000, *, variant: str | None = None, **kw: Any) -> nn.Module:  # noqa: N802
    """FlexiViT, e.g. `Model(1000, variant="B/16", base_patch_size=(32, 32))`.

    The variant's patch ("/16") is the default run-time patch size; `base_patch_size` and
    `posemb_grid` (ints or pairs) set the stored parameter shapes.
    """
    for key in ("base_patch_size", "posemb_grid"):
        if key in kw:
            kw[key] = _pair(kw[key], f"model.{key}")
    return vit.make_model(_FlexiViT, num_classes, variant=variant, **kw)


#: Checkpoint surgery: FlexiViT and ViT share their parameter names and shapes' meaning.
load = vit.load


def check_input(model_cfg: Any, shape: Any) -> None:
    """The encoder's settings (`vit.ViTCfg`, without the patch size); the patch sizes are
    checked against the image by the FlexiViT plugin (`vitx.train.flexi`), per size, before
    training starts.

    Raises:
      ValueError: see `vit.ViTCfg`.
    """
    del shape
    vit.ViTCfg.from_config(model_cfg, patch=False)
