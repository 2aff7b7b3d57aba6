"""ViT extras of timm-style checkpoints: register tokens, fc_norm, layer scale (all off by default).

Each is a `VisionTransformer` field (vit, flexivit and hybrid inherit them); at the defaults
none of these functions adds a param or changes an output, so existing params and logits are
bit-identical. Parameter tree additions:

    registers (1, R, D)                                      # reg_tokens = R > 0
    fc_norm/{scale, bias} (D,)                               # fc_norm=True (no encoder_norm)
    Transformer/encoderblock_{i}/LayerScale_{0,1}/scale (D,)  # layer_scale set

* Register tokens (`reg_tokens`): R learned tokens after the class token (or first, without
  one), with no position embedding (a learned posemb on a constant token is the same as a
  learned token: timm's class-slot posemb is folded into them on load), dropped after the
  encoder, so pooling, aux "encoded" (B, N(+1), D) and "token_map" see the cls and patch tokens
  only; aux "registers" (B, R, D) holds them. Source: Darcet et al., "Vision Transformers Need
  Registers", ICLR 2024, Sec. 2.2; timm `VisionTransformer(reg_tokens=R)`, `_pos_embed`.
* `fc_norm`: the final LayerNorm applied after pooling ("fc_norm") instead of on every token
  (the encoder's `encoder_norm` is left out). Source: He et al., "Masked Autoencoders Are
  Scalable Vision Learners", CVPR 2022 (global-pool fine-tuning); Bao et al., BEiT, ICLR 2022;
  timm `global_pool="avg", fc_norm=True`.
* Layer scale (`layer_scale`): each residual branch multiplied by a learned per-channel
  vector initialised to `layer_scale` (e.g. 1e-5 .. 0.1) before it is added back.
  Source: Touvron et al., "Going deeper with Image Transformers" (CaiT), ICCV 2021, Sec. 3;
  timm `init_values`, `ls1.gamma` / `ls2.gamma`.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

Array = jax.Array


class LayerScale(nn.Module):
    """x * scale, `scale` (D,) initialised to `init` (CaiT Sec. 3). (B, N, D) -> (B, N, D)."""

    init: float

    @nn.compact
    def __call__(self, x: Array) -> Array:
        scale = self.param("scale", nn.initializers.constant(self.init), (x.shape[-1],),
                           jnp.float32)
        return x * scale.astype(x.dtype)


def scale_branch(block: nn.Module, y: Array) -> Array:
    """A residual branch y (B, N, D) of an encoder block with `layer_scale` set, times its
    learned LayerScale; y itself (no param) when `block.layer_scale` is None.

    Raises:
      ValueError: layer_scale not a positive number (naming model.layer_scale).
    """
    init = getattr(block, "layer_scale", None)
    if init is None:
        return y
    if isinstance(init, bool) or not isinstance(init, int | float) or init <= 0:
        raise ValueError(f"model.layer_scale={init!r} must be a positive number (the initial "
                         f"per-channel scale, e.g. 1e-5 or 0.1) or None for no layer scale")
    return LayerScale(float(init))(y)


def check_reg_tokens(value: Any) -> int:
    """`model.reg_tokens` as an int >= 0.

    Raises:
      ValueError: not a non-negative int (naming model.reg_tokens).
    """
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"model.reg_tokens={value!r} must be an int >= 0 (the number of "
                         f"register tokens, e.g. 4; 0 for none)")
    return value


def add_registers(vit: nn.Module, x: Array, n: int) -> Array:
    """Insert `vit.reg_tokens` = R learned tokens (param `registers` (1, R, D), N(0, 1e-6²)
    init as timm's) between the prefix (the class token, if any) and the last `n` (patch)
    tokens of x (B, prefix + n, D) -> (B, prefix + R + n, D); x itself when R = 0.

    Raises:
      ValueError: reg_tokens not an int >= 0 (`check_reg_tokens`).
    """
    r = check_reg_tokens(getattr(vit, "reg_tokens", 0))
    if not r:
        return x
    b, t, d = x.shape
    reg = vit.param("registers", nn.initializers.normal(stddev=1e-6), (1, r, d), x.dtype)
    return jnp.concatenate([x[:, :t - n], jnp.tile(reg, [b, 1, 1]), x[:, t - n:]], axis=1)


def drop_registers(vit: nn.Module, x: Array, n: int, out: dict) -> Array:
    """x (B, prefix + R + n, D) without its R register tokens: (B, prefix + n, D); they go to
    out["registers"] (B, R, D). x itself when R = 0."""
    r = getattr(vit, "reg_tokens", 0)
    if not r:
        return x
    p = x.shape[1] - n - r
    out["registers"] = x[:, p:p + r]
    return jnp.concatenate([x[:, :p], x[:, p + r:]], axis=1)


def encoder_kw(vit: nn.Module) -> dict[str, Any]:
    """The `layers.Encoder` keywords of these extras: {} at the defaults (the plain encoder)."""
    kw: dict[str, Any] = {}
    if getattr(vit, "fc_norm", False):
        kw["final_norm"] = False
    if getattr(vit, "layer_scale", None) is not None:
        kw["layer_scale"] = vit.layer_scale
    return kw


def apply_fc_norm(vit: nn.Module, x: Array) -> Array:
    """The pooled features x (B, D) through LayerNorm "fc_norm" when `vit.fc_norm`, else x."""
    return nn.LayerNorm(name="fc_norm")(x) if getattr(vit, "fc_norm", False) else x
