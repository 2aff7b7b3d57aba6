"""Overlapping patches: a patch embedding with a stride below the patch (`model.patch_stride`).

Source: Beyer et al., "FlexiViT: One Model for All Patch Sizes", CVPR 2023; patent CN117556885A,
dependent claim 3 (a patch stride that differs from the patch size, one per scheme); the
embedding is ViT's (Dosovitskiy et al., ICLR 2021, Sec. 3.1, eq. 1) with conv stride s < P.

A P x P patch every s pixels gives a token grid of ((H - P) / s + 1) x ((W - P) / s + 1). vitx
asks that s divides P (so the embedding is a sum of s x s cells, computed as one matmul) and that
s divides H - P (every pixel is covered, as P | H for non-overlapping patches); stride == patch
is the plain ViT. Parameters are those of `layers.PatchEmbed` ("embedding/kernel" (P, P, C, D),
"bias" (D,)): checkpoints, .npz files and PI-resize of the kernel are unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from vitx.models import layers
from vitx.utils import pair

Array = jax.Array


def check_stride(patch: Any, stride: Any, key: str = "model.patch_stride") -> tuple[int, int]:
    """`stride` as a pair (sh, sw) that fits `patch`: 1 <= s <= P and s divides P, per axis.

    Raises:
      ValueError: one line naming `key`, e.g. "model.patch_stride=(12, 12) is larger than the
        patch (8, 8); use a divisor of the patch: [1, 2, 4, 8]".
    """
    ph, pw = pair(patch, "model.patch_size")
    sh, sw = pair(stride, key)
    if sh > ph or sw > pw or ph % sh or pw % sw:
        why = "is larger than" if sh > ph or sw > pw else "does not divide"
        good = [d for d in range(1, min(ph, pw) + 1) if ph % d == 0 and pw % d == 0]
        raise ValueError(f"{key}={(sh, sw)} {why} the patch {(ph, pw)}; use a divisor of the "
                         f"patch: {good}")
    return sh, sw


def token_grid(size: Sequence[int], patch: Any, stride: Any = None) -> tuple[int, int]:
    """(gh, gw) = ((H - ph) // sh + 1, (W - pw) // sw + 1) for image `size` (H, W, ...).

    `stride` None means the patch (non-overlapping: H // ph)."""
    ph, pw = pair(patch, "model.patch_size")
    sh, sw = pair(stride, "model.patch_stride") if stride is not None else (ph, pw)
    h, w = size[:2]
    return (h - ph) // sh + 1, (w - pw) // sw + 1


def check_image(size: Sequence[int], patch: Any, stride: Any, what: str) -> None:
    """Every pixel of an image (H, W, ...) lies in a patch: H >= P and s | H - P, per axis.

    `what` names the keys in the message (e.g. "model.patch_size=8, model.patch_stride=4").

    Raises:
      ValueError: one line with the image size, the token-grid formula and sizes that work.
    """
    ph, pw = pair(patch, "model.patch_size")
    sh, sw = check_stride((ph, pw), stride)
    h, w = size[:2]
    if h < ph or w < pw or (h - ph) % sh or (w - pw) % sw:
        good = [ph + k * sh for k in range(4)]
        raise ValueError(f"{what}: patches {ph}x{pw} every {sh}x{sw} pixels do not tile the image "
                         f"{h}x{w} (need H >= P and (H - P) divisible by the stride; tokens "
                         f"(H - P) // s + 1); use image sides such as {good} or another stride")


def patchify(x: Array, kernel: Array, bias: Array, stride: Sequence[int],
             impl: str = "matmul") -> Array:
    """Overlapping patch embedding: a VALID conv of kernel P and stride s | P.

    Args:
      x: (B, H, W, C) images.
      kernel: (ph, pw, C, D) (the `nn.Conv` layout).
      bias: (D,).
      stride: (sh, sw), each dividing its patch side.
      impl: "matmul" (default): the image cut into s x s cells (one reshape), the k x k = P/s x
        P/s neighbouring cells of each token gathered by slicing (B, gh, gw, P*P*C) and one
        matmul by the reshaped kernel; "conv": `lax.conv_general_dilated` with window stride s.
        The same linear map (equal up to float summation order).

    Returns: (B, gh, gw, D), (gh, gw) = `token_grid`; trailing pixels outside every patch are
    ignored, as a VALID conv does. With stride == patch this is `layers.patchify`.

    Raises:
      ValueError: a stride that does not divide the patch; unknown `impl`.
    """
    ph, pw = kernel.shape[:2]
    sh, sw = check_stride((ph, pw), stride)
    if (sh, sw) == (ph, pw):
        return layers.patchify(x, kernel, bias, impl)
    if impl == "conv":
        y = jax.lax.conv_general_dilated(x, kernel, window_strides=(sh, sw), padding="VALID",
                                         dimension_numbers=("NHWC", "HWIO", "NHWC"))
        return y + bias
    if impl not in layers.PATCH_EMBED_IMPLS:
        raise ValueError(f"model.patch_embed={impl!r} is unknown; use one of "
                         f"{layers.PATCH_EMBED_IMPLS}")
    b, c = x.shape[0], x.shape[-1]
    gh, gw = token_grid(x.shape[1:3], (ph, pw), (sh, sw))
    kh, kw = ph // sh, pw // sw
    ch, cw = gh - 1 + kh, gw - 1 + kw  # cells used
    cells = jnp.reshape(x[:, :ch * sh, :cw * sw], (b, ch, sh, cw, sw, c))
    # (B, gh, gw, kh, sh, kw, sw, C): pixel (a * sh + i, b * sw + j) of each token's patch.
    patches = jnp.stack([jnp.stack([cells[:, a:a + gh, :, b_:b_ + gw] for b_ in range(kw)],
                                   axis=4) for a in range(kh)], axis=4)
    # patches: (B, gh, sh, gw, kh, kw, sw, C) -> (B, gh, gw, kh, sh, kw, sw, C)
    patches = jnp.transpose(patches, (0, 1, 3, 4, 2, 5, 6, 7))
    patches = jnp.reshape(patches, (b, gh, gw, ph * pw * c))
    return patches @ jnp.reshape(kernel, (-1, kernel.shape[-1])) + bias


class StridedPatchEmbed(nn.Module):
    """`nn.Conv(features, patch, strides=stride, padding="VALID")` with `layers.PatchEmbed`'s
    params (`kernel` (ph, pw, C, D) lecun-normal, `bias` (D,) zeros), computed by `patchify`.
    (B, H, W, C) -> (B, gh, gw, D), `token_grid`; `dtype` is the compute dtype.

    Raises:
      ValueError: a bad stride or an image the patches do not tile (`check_image`).
    """

    features: int
    patch: tuple[int, int]
    stride: tuple[int, int]
    dtype: Any = jnp.float32
    impl: str = "matmul"

    @nn.compact
    def __call__(self, x: Array) -> Array:
        patch = tuple(self.patch)
        check_image(x.shape[1:3], patch, self.stride,
                    f"model.patch_size={patch}, model.patch_stride={tuple(self.stride)}")
        kernel = self.param("kernel", nn.initializers.lecun_normal(),
                            (*patch, x.shape[-1], self.features), jnp.float32)
        bias = self.param("bias", nn.initializers.zeros, (self.features,), jnp.float32)
        x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
        return patchify(x, kernel, bias, self.stride, self.impl)
