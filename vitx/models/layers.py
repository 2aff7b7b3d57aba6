"""Shared transformer pieces: MLP block, pre-LN encoder block, encoder, MAP head, posemb.

Parameter names follow big_vision's ViT (`Transformer/encoderblock_{i}/MlpBlock_0/Dense_0/kernel`,
...) so checkpoints map to and from big_vision and vit_jax with renames only
(see `vitx.utils.npz`).

Sources: Dosovitskiy et al., "An Image is Worth 16x16 Words", ICLR 2021, Sec. 3.1, eqs. 1-4
(pre-LN encoder, GELU MLP); Zhai et al., "Scaling Vision Transformers", CVPR 2022, Sec. 3.2
(MAP head); Beyer et al., "Better plain ViT baselines for ImageNet-1k", 2022 (sincos2d posemb).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array
Dtype = Any

REMAT_POLICIES = {
    "nothing_saveable": jax.checkpoint_policies.nothing_saveable,
    "everything_saveable": jax.checkpoint_policies.everything_saveable,
    "dots_saveable": jax.checkpoint_policies.dots_saveable,
    "dots_with_no_batch_dims_saveable": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


def posemb_sincos_2d(h: int, w: int, width: int, temperature: float = 10_000.0,
                     dtype: Dtype = jnp.float32) -> Array:
    """Fixed 2D sin-cos position embedding, shape (1, h*w, width), raster order.

    Source: Beyer et al. 2022, "Better plain ViT baselines", following MoCo-v3 (Chen et al. 2021).

    Raises:
      ValueError: if `width` is not a multiple of 4.
    """
    if width % 4:
        raise ValueError(f"posemb 'sincos2d' needs width divisible by 4, got width={width}")
    y, x = np.mgrid[:h, :w]
    omega = np.arange(width // 4) / (width // 4 - 1 if width > 4 else 1)
    omega = 1.0 / (temperature**omega)
    y = np.einsum("m,d->md", y.flatten(), omega)
    x = np.einsum("m,d->md", x.flatten(), omega)
    pe = np.concatenate([np.sin(x), np.cos(x), np.sin(y), np.cos(y)], axis=1)
    return jnp.asarray(pe, dtype)[None, :, :]


class MlpBlock(nn.Module):
    """Dense(mlp_dim) -> GELU -> dropout -> Dense(D). Input/output (B, N, D)."""

    mlp_dim: int | None = None  # defaults to 4 * D
    dropout: float = 0.0
    dtype_mm: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array, *, train: bool = False) -> Array:
        inits = dict(kernel_init=nn.initializers.xavier_uniform(),
                     bias_init=nn.initializers.normal(stddev=1e-6))
        d = x.shape[-1]
        x = nn.Dense(self.mlp_dim or 4 * d, dtype=self.dtype_mm, **inits)(x)
        x = nn.gelu(x)
        x = nn.Dropout(rate=self.dropout)(x, deterministic=not train)
        return nn.Dense(d, dtype=self.dtype_mm, **inits)(x)


class Encoder1DBlock(nn.Module):
    """Pre-LN block: x + MHSA(LN(x)), then + MLP(LN(x)). Input/output (B, N, D).

    Source: ViT paper Sec. 3.1, eqs. 2-3.
    """

    mlp_dim: int | None = None
    num_heads: int = 12
    dropout: float = 0.0
    dtype_mm: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array, deterministic: bool = True) -> tuple[Array, Array]:
        y = nn.LayerNorm()(x)
        y = nn.MultiHeadDotProductAttention(
            num_heads=self.num_heads, kernel_init=nn.initializers.xavier_uniform(),
            deterministic=deterministic, dtype=self.dtype_mm)(y, y)
        y = nn.Dropout(rate=self.dropout)(y, deterministic)
        x = x + y
        y = nn.LayerNorm()(x)
        y = MlpBlock(mlp_dim=self.mlp_dim, dropout=self.dropout, dtype_mm=self.dtype_mm)(
            y, train=not deterministic)
        y = nn.Dropout(rate=self.dropout)(y, deterministic)
        x = x + y
        return x, None  # (carry, per-layer output) so the block can be nn.scan'ed


class Encoder(nn.Module):
    """Stack of `depth` encoder blocks plus the final LayerNorm (`encoder_norm`).

    With `scan=True` the blocks are one `nn.scan` (params stacked on a leading `depth` axis, named
    `encoderblock`); with `remat_policy` set, each block is rematerialised (`nn.remat`).
    Input/output (B, N, D).
    """

    depth: int
    mlp_dim: int | None = None
    num_heads: int = 12
    dropout: float = 0.0
    scan: bool = False
    remat_policy: str | None = None
    dtype_mm: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array, *, train: bool = False) -> Array:
        block_kw = dict(mlp_dim=self.mlp_dim, num_heads=self.num_heads, dropout=self.dropout,
                        dtype_mm=self.dtype_mm)
        block = Encoder1DBlock
        if self.remat_policy is not None:
            if self.remat_policy not in REMAT_POLICIES:
                raise ValueError(f"model.remat_policy={self.remat_policy!r} is unknown; "
                                 f"use one of {sorted(REMAT_POLICIES)} or None")
            block = nn.remat(block, prevent_cse=not self.scan, static_argnums=(2,),
                             policy=REMAT_POLICIES[self.remat_policy])
        if self.scan:
            x, _ = nn.scan(block, variable_axes={"params": 0}, split_rngs={"params": True,
                                                                           "dropout": True},
                           in_axes=nn.broadcast, length=self.depth)(
                name="encoderblock", **block_kw)(x, not train)
        else:
            for i in range(self.depth):
                x, _ = block(name=f"encoderblock_{i}", **block_kw)(x, not train)
        return nn.LayerNorm(name="encoder_norm")(x)


class MAPHead(nn.Module):
    """Multihead attention pooling: a learned probe attends over tokens. (B, N, D) -> (B, D).

    Source: Zhai et al., "Scaling Vision Transformers", CVPR 2022, Sec. 3.2; Lee et al. 2019 (PMA).
    """

    mlp_dim: int | None = None
    num_heads: int = 12
    dtype_mm: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        b, _, d = x.shape
        probe = self.param("probe", nn.initializers.xavier_uniform(), (1, 1, d), x.dtype)
        probe = jnp.tile(probe, [b, 1, 1])
        x = nn.MultiHeadDotProductAttention(
            num_heads=self.num_heads, kernel_init=nn.initializers.xavier_uniform(),
            dtype=self.dtype_mm)(probe, x)
        y = nn.LayerNorm()(x)
        x = x + MlpBlock(mlp_dim=self.mlp_dim, dtype_mm=self.dtype_mm)(y)
        return x[:, 0]
