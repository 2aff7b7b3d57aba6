"""Vision Transformer (ViT) classifier.

Source: Dosovitskiy et al., "An Image is Worth 16x16 Words: Transformers for Image Recognition at
Scale", ICLR 2021, Sec. 3.1 (patch embedding, cls token, posemb, pre-LN encoder, head); seed 000
(JP7536893B2). Pooling `map`: Zhai et al., CVPR 2022. Variants "mu".."G": big_vision's
`decode_variant`; "pico"/"nano" are vitx's tiny widths for tests and small data.

Parameter tree (big_vision layout)::

    embedding/{kernel (P, P, C, D), bias (D,)}
    cls (1, 1, D)                               # pool_type == "tok" only
    pos_embedding (1, N, D)                     # posemb == "learn" only; N = (H/P) * (W/P)
    Transformer/encoderblock_{i}/...            # or Transformer/encoderblock/... with scan
    Transformer/encoder_norm/{scale, bias}
    MAPHead_0/...                               # pool_type == "map" only
    pre_logits/{kernel, bias}                   # representation_size set only
    head/{kernel (D, num_classes), bias}
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from vitx.models import layers

Array = jax.Array

# name: (width, depth, mlp_dim, num_heads)
WIDTHS = {
    "pico": (32, 2, 64, 2),
    "nano": (64, 4, 128, 4),
    "mu": (144, 6, 576, 3),
    "Ti": (192, 12, 768, 3),
    "S": (384, 12, 1536, 6),
    "M": (512, 12, 2048, 8),
    "B": (768, 12, 3072, 12),
    "L": (1024, 24, 4096, 16),
    "So400m": (1152, 27, 4304, 16),
    "H": (1280, 32, 5120, 16),
    "g": (1408, 40, 6144, 16),
    "G": (1664, 48, 8192, 16),
}
POOL_TYPES = ("tok", "gap", "map")
POSEMB_TYPES = ("learn", "sincos2d")


def decode_variant(variant: str | None) -> dict[str, Any]:
    """'S/16' -> dict(width=384, depth=12, mlp_dim=1536, num_heads=6, patch_size=(16, 16)).

    The patch part is optional ('S' alone) and may be rectangular ('B/16x8').

    Raises:
      ValueError: for an unknown size name or a malformed patch size.
    """
    if variant is None:
        return {}
    m = re.fullmatch(r"(?P<v>[A-Za-z0-9]+)(?:/(?P<p>\d+)(?:x(?P<q>\d+))?)?", variant)
    if not m or m["v"] not in WIDTHS:
        raise ValueError(f"model.variant={variant!r} is unknown; use '<size>/<patch>' with size in "
                         f"{list(WIDTHS)} (e.g. 'S/16', 'B/32', 'pico/4')")
    width, depth, mlp_dim, heads = WIDTHS[m["v"]]
    out: dict[str, Any] = dict(width=width, depth=depth, mlp_dim=mlp_dim, num_heads=heads)
    if m["p"]:
        out["patch_size"] = (int(m["p"]), int(m["q"] or m["p"]))
    return out


def _dtype(name: str | Any) -> Any:
    return jnp.dtype(name) if isinstance(name, str) else name


class _ViT(nn.Module):
    """ViT. Input images (B, H, W, C) in [-1, 1]; returns (logits (B, num_classes), aux dict).

    aux holds "encoded" (B, N(+1), D), "pre_logits" (B, D) and, with num_classes, "logits".

    Raises:
      ValueError: H or W not divisible by the patch size; unknown posemb/pool_type.
    """

    num_classes: int | None = 1000
    patch_size: Sequence[int] = (16, 16)
    width: int = 768
    depth: int = 12
    mlp_dim: int | None = None
    num_heads: int = 12
    posemb: str = "learn"
    pool_type: str = "tok"
    representation_size: int | None = None
    head_zeroinit: bool = True
    dropout: float = 0.0
    scan: bool = False
    remat_policy: str | None = None
    dtype_mm: str = "float32"

    def embed_patches(self, x: Array, **kw: Any) -> Array:
        """(B, H, W, C) -> (B, H/P, W/P, D) with a conv of kernel = stride = P (ViT eq. 1)."""
        ph, pw = self.patch_size
        h, w = x.shape[1:3]
        if h % ph or w % pw:
            raise ValueError(f"model.patch_size={tuple(self.patch_size)} does not divide the image "
                             f"size {h}x{w}; choose a patch size that divides it or resize the "
                             f"images")
        return nn.Conv(self.width, (ph, pw), strides=(ph, pw), padding="VALID",
                       name="embedding", dtype=_dtype(self.dtype_mm))(x)

    def add_posemb(self, x: Array, grid: tuple[int, int], **kw: Any) -> Array:
        """Add the position embedding to patch tokens (B, N, D), N = grid[0] * grid[1]."""
        n, d = x.shape[1:]
        if self.posemb == "learn":
            pe = self.param("pos_embedding", nn.initializers.normal(stddev=0.02), (1, n, d),
                            jnp.float32)
        elif self.posemb == "sincos2d":
            pe = layers.posemb_sincos_2d(*grid, d)
        else:
            raise ValueError(f"model.posemb={self.posemb!r} is unknown; use one of {POSEMB_TYPES}")
        return x + pe.astype(x.dtype)

    @nn.compact
    def __call__(self, x: Array, *, train: bool = False, **kw: Any) -> tuple[Array, dict]:
        out: dict[str, Array] = {}
        x = self.embed_patches(x, **kw)
        b, gh, gw, d = x.shape
        x = jnp.reshape(x, [b, gh * gw, d])
        x = self.add_posemb(x, (gh, gw), **kw)
        if self.pool_type not in POOL_TYPES:
            raise ValueError(f"model.pool_type={self.pool_type!r} is unknown; use one of "
                             f"{POOL_TYPES}")
        if self.pool_type == "tok":
            cls = self.param("cls", nn.initializers.zeros, (1, 1, d), x.dtype)
            x = jnp.concatenate([jnp.tile(cls, [b, 1, 1]), x], axis=1)
        x = nn.Dropout(rate=self.dropout)(x, not train)
        x = layers.Encoder(
            depth=self.depth, mlp_dim=self.mlp_dim, num_heads=self.num_heads,
            dropout=self.dropout, scan=self.scan, remat_policy=self.remat_policy,
            dtype_mm=_dtype(self.dtype_mm), name="Transformer")(x, train=train)
        out["encoded"] = x
        if self.pool_type == "tok":
            x = x[:, 0]
        elif self.pool_type == "gap":
            x = jnp.mean(x, axis=1)
        else:
            x = layers.MAPHead(num_heads=self.num_heads, mlp_dim=self.mlp_dim,
                               dtype_mm=_dtype(self.dtype_mm))(x)
        if self.representation_size is not None:
            x = nn.tanh(nn.Dense(self.representation_size, name="pre_logits")(x))
        out["pre_logits"] = x
        if self.num_classes:
            init = nn.initializers.zeros if self.head_zeroinit else nn.initializers.lecun_normal()
            x = nn.Dense(self.num_classes, name="head", kernel_init=init)(x)
            out["logits"] = x
        return x, out


def _make(cls: type[nn.Module], num_classes: int | None, *, variant: str | None = None,
          **kw: Any) -> nn.Module:
    """Build `cls` with `variant` ("S/16") expanded; explicit keyword arguments win."""
    args = {**decode_variant(variant), **kw}
    if "patch_size" in args:
        ps = args["patch_size"]
        args["patch_size"] = (ps, ps) if isinstance(ps, int) else tuple(ps)
    return cls(num_classes=num_classes, **args)


def Model(num_classes: int | None = 1000, *, variant: str | None = None, **kw: Any) -> nn.Module:  # noqa: N802
    """The ViT of this module, e.g. `Model(1000, variant="B/16")` (86.6M params at 224 px)."""
    return _make(_ViT, num_classes, variant=variant, **kw)
