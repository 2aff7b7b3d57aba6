"""The segmentation decoder of the `dense` model: a linear layer per token, upsampled to pixels.

    model.heads = dict(seg=dict(type="segmentation", upsample="bilinear"))   # or "subpixel"

`LinearDecoder(K, upsample)(token_map (B, h, w, D), (H, W)) -> (B, H, W, K)` per-pixel logits.
The token grid must divide the image: each token covers a (H/h) x (W/w) cell of pixels (the
decoder's patch), so that both upsamplings are exact tilings of the image.

  bilinear   LayerNorm, Dense(K) per token, bilinear resize of the (B, h, w, K) logits to
             (H, W). Source: Strudel et al., "Segmenter", ICCV 2021, Sec. 3.2 ("linear
             decoder"); Zheng et al., "SETR", CVPR 2021, Sec. 3.2 ("naive" upsampling).
  subpixel   LayerNorm, Dense(ph * pw * K) per token, each token's outputs laid out over its
             own ph x pw pixels (a "periodic shuffle", depth-to-space): still one linear layer
             per token, but every pixel of the cell gets its own logits, so boundaries inside a
             patch are resolved. Source: Shi et al., "Real-Time Single Image and Video
             Super-Resolution Using an Efficient Sub-Pixel Convolutional Neural Network",
             CVPR 2016, Sec. 2.2 (sub-pixel convolution).
             With `cell=(ch, cw)` the layer always gives logits for a ch x cw cell, and each
             token's cell is resized (bilinear, antialiased when shrinking) to the token's
             actual (ph, pw) pixels: one set of weights for every patch size of a FlexiViT
             (the decoder's analogue of PI-resize; FlexiViT, Beyer et al., CVPR 2023, Sec. 3.4).

Params: `norm/{scale, bias}`, `proj/{kernel (D, K) or (D, ph * pw * K), bias}`.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

Array = jax.Array

__all__ = ["UPSAMPLE", "LinearDecoder", "decoder_patch"]

UPSAMPLE = ("bilinear", "subpixel")


def decoder_patch(grid: tuple[int, int], image_hw: tuple[int, int]) -> tuple[int, int]:
    """The pixels (ph, pw) = (H / h, W / w) each token of an (h, w) grid decodes.

    Raises:
      ValueError: the grid does not divide the image (naming the encoder's patch settings).
    """
    (h, w), (hh, ww) = grid, image_hw
    if h < 1 or w < 1 or hh % h or ww % w:
        raise ValueError(f"the segmentation decoder's token grid {h}x{w} does not divide the "
                         f"image size {hh}x{ww} (each token must decode a whole cell of pixels); "
                         f"use a model.encoder_cfg patch size (and stride) that divides the image")
    return hh // h, ww // w


class LinearDecoder(nn.Module):
    """Token map (B, h, w, D) -> (B, H, W, K) per-pixel logits; see the module docstring.

    Attributes:
      num_classes: K (for `digit_scenes`: 11, background + 10 digits).
      upsample: "bilinear" (Segmenter's linear decoder) or "subpixel".
      cell: subpixel only: the (ch, cw) pixels the weights decode, resized to each token's
        (ph, pw) (FlexiViT: the base patch size); None: the token's own cell at init.

    Raises:
      ValueError: an unknown `upsample`; a token grid that does not divide (H, W).
    """

    num_classes: int
    upsample: str = "bilinear"
    cell: tuple[int, int] | None = None  # subpixel: the cell the weights decode (None: own)

    @nn.compact
    def __call__(self, token_map: Array, image_hw: tuple[int, int]) -> Array:
        if self.upsample not in UPSAMPLE:
            raise ValueError(f"model.heads.<seg>.upsample={self.upsample!r} is unknown; use one "
                             f"of {UPSAMPLE}")
        b, h, w, _ = token_map.shape
        ph, pw = decoder_patch((h, w), tuple(image_hw))
        k = self.num_classes
        x = nn.LayerNorm(name="norm")(token_map.astype(jnp.float32))
        if self.upsample == "bilinear":
            x = nn.Dense(k, name="proj")(x)
            return jax.image.resize(x, (b, h * ph, w * pw, k), "bilinear")
        ch, cw = (ph, pw) if self.cell is None else tuple(self.cell)
        x = nn.Dense(ch * cw * k, name="proj")(x).reshape(b, h, w, ch, cw, k)
        if (ch, cw) != (ph, pw):
            x = jax.image.resize(x, (b, h, w, ph, pw, k), "linear")
        return x.transpose(0, 1, 3, 2, 4, 5).reshape(b, h * ph, w * pw, k)
