"""PolyViT's flax modules: a tokenizer per modality, modality layers, shared encoder, task heads.

The shared encoder is `vitx.models.layers.Encoder` (named "Transformer", ViT's names); the
modality layers are `vitx.models.layers.Encoder1DBlock`s. Sources and the parameter tree: the
package docstring.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from vitx.models import layers
from vitx.models.polyvit import routing
from vitx.models.polyvit.config import Head, Modality, PolyViTCfg

__all__ = ["Model"]

Array = jax.Array


class _Tokenizer(nn.Module):
    """Patches/tubelets -> tokens (B, 1 + N, D): conv embedding, learned posemb, cls first.

    Input (B, H, W, C) with a 2D `patch`, or (B, T, H, W, C) with a 3D tubelet `patch`;
    N = prod(grid). Source: ViT eq. 1; ViViT Sec. 3.2 (tubelet embedding); PolyViT, method section.

    Raises:
      ValueError: the input's example shape is not `input_shape`.
    """

    modality: str
    patch: tuple[int, ...]
    input_shape: tuple[int, ...]
    width: int
    dtype_mm: str = "float32"
    patch_embed: str = "matmul"

    @nn.compact
    def __call__(self, x: Array) -> Array:
        if tuple(x.shape[1:]) != tuple(self.input_shape):
            raise ValueError(f"polyvit: input of shape {tuple(x.shape)} for modality "
                             f"{self.modality!r} does not match model.modalities."
                             f"{self.modality}.input_shape={tuple(self.input_shape)}; set "
                             f"input_shape to {tuple(x.shape[1:])} or fix the preprocessing")
        x = layers.PatchEmbed(self.width, tuple(self.patch), dtype=layers.dtype_of(self.dtype_mm),
                              impl=self.patch_embed, name="embedding")(x)
        b, d = x.shape[0], x.shape[-1]
        x = jnp.reshape(x, (b, -1, d))  # raster order; time-major for tubelets
        pe = self.param("pos_embedding", nn.initializers.normal(stddev=0.02), (1, x.shape[1], d),
                        jnp.float32)
        x = x + pe.astype(x.dtype)
        cls = self.param("cls", nn.initializers.zeros, (1, 1, d), x.dtype)
        return jnp.concatenate([jnp.tile(cls, (b, 1, 1)), x], axis=1)


class _PolyViT(nn.Module):
    """PolyViT (see the package docstring). Built by `Model`, which validates the config.

    `__call__(x, *, modality=None, task=None, train=False) -> (logits (B, K_task), aux)`, x of
    shape (B, *input_shape of `modality`). `modality` / `task` are static Python strings; either
    may be omitted when it is implied (the task's modality; the only modality; the modality's
    only head). aux: "encoded" (B, 1 + N, D) (the shared encoder's output; 1 + N =
    `num_tokens`), "pre_logits" (B, D) (the cls token's output), "logits".

    Raises:
      ValueError: an unknown or ambiguous modality / task, a task whose head reads another
        modality, an input that does not have its modality's input_shape.
    """

    modalities: tuple[Modality, ...] = ()
    heads: tuple[Head, ...] = ()
    width: int = 768
    depth: int = 12
    mlp_dim: int | None = None
    num_heads: int = 12
    num_modality_layers: int = 0
    dropout: float = 0.0
    scan: bool = False
    remat_policy: str | None = None
    dtype_mm: str = "float32"
    head_zeroinit: bool = True
    patch_embed: str = "matmul"
    attention_impl: str = "auto"
    drop_path: float = 0.0
    attention_dropout: float = 0.0
    gelu: str = "tanh"

    def route(self, modality: str | None, task: str | None) -> tuple[str, str]:
        """The (modality, task) a call runs, with omitted parts filled in when implied."""
        return routing.route(self.modalities, self.heads, modality, task)

    @nn.compact
    def __call__(self, x: Array, *, modality: str | None = None, task: str | None = None,
                 train: bool = False) -> tuple[Array, dict]:
        modality, task = self.route(modality, task)
        k = self.num_modality_layers
        dtype = layers.dtype_of(self.dtype_mm)
        # Stochastic depth linear over all `depth` blocks: modality layers first, then shared.
        rates = layers.drop_path_rates(self.drop_path, self.depth)
        reg = dict(attention_dropout=self.attention_dropout, gelu=self.gelu)
        # Built here (cheap, no params yet); only the modules called below create params.
        tokenizers = {m.name: _Tokenizer(m.name, m.patch, m.input_shape, self.width,
                                         self.dtype_mm, self.patch_embed,
                                         name=f"tokenizer_{m.name}")
                      for m in self.modalities}
        adapters = {m.name: layers.Encoder(
                        depth=k, mlp_dim=self.mlp_dim, num_heads=self.num_heads,
                        dropout=self.dropout, remat_policy=self.remat_policy,
                        dtype_mm=layers.dtype_of(self.dtype_mm),
                        attention_impl=self.attention_impl, final_norm=False,
                        drop_path=rates[:k], **reg, name=f"modality_layers_{m.name}")
                    for m in self.modalities} if k else {}
        init = nn.initializers.zeros if self.head_zeroinit else nn.initializers.lecun_normal()
        heads = {h.task: nn.Dense(h.num_classes, kernel_init=init, name=f"head_{h.task}")
                 for h in self.heads}

        if self.is_initializing():  # create the params of every other path too (not routed)
            dummy_dtype = x.dtype if jnp.issubdtype(x.dtype, jnp.floating) else jnp.float32
            for m in self.modalities:
                if m.name != modality:
                    y = tokenizers[m.name](jnp.zeros((1, *m.input_shape), dummy_dtype))
                    if k:
                        adapters[m.name](y, train=False)
            for t in heads:
                if t != task:
                    heads[t](jnp.zeros((1, self.width), dtype))

        out: dict[str, Array] = {}
        x = tokenizers[modality](x)
        x = nn.Dropout(rate=self.dropout)(x, not train)
        if k:
            x = adapters[modality](x, train=train)
        x = layers.Encoder(
            depth=self.depth - k, mlp_dim=self.mlp_dim, num_heads=self.num_heads,
            dropout=self.dropout, scan=self.scan, remat_policy=self.remat_policy,
            dtype_mm=dtype, attention_impl=self.attention_impl, drop_path=rates[k:], **reg,
            name="Transformer")(x, train=train)
        out["encoded"] = x
        x = x[:, 0]  # cls token ("tok" pooling, as PolyViT)
        out["pre_logits"] = x
        x = heads[task](x)
        out["logits"] = x
        return x, out


def Model(num_classes: int | None = None, *, variant: str | None = "pico",  # noqa: N802
          modalities: Mapping[str, Any] | None = None, heads: Mapping[str, Any] | None = None,
          num_modality_layers: int = 0, **vit_kw: Any) -> nn.Module:
    """The PolyViT of this package; config schema in the package docstring (`PolyViTCfg`).

    `num_classes`: default of the heads' `num_classes`. `variant`: a size of `vit.WIDTHS` (e.g.
    "pico", "B"; None: give width/depth/num_heads); `vit_kw`: width, depth, mlp_dim, num_heads,
    dropout, scan (shared encoder only), remat_policy, dtype_mm, head_zeroinit, patch_embed,
    attention_impl, drop_path (linear over all `depth` blocks), attention_dropout (as in `vit`).
    `num_modality_layers` (L_adapt of PolyViT) of the `depth` blocks run per modality
    before the `depth - num_modality_layers` shared ones.

    Raises:
      ValueError: one line naming the config key and the fix (unknown option, a variant with
        a patch part, a bad modality / head, num_modality_layers out of [0, depth - 1], an
        unknown remat_policy).
    """
    cfg = PolyViTCfg.from_config(
        {"variant": variant, "modalities": modalities, "heads": heads,
         "num_modality_layers": num_modality_layers, **vit_kw}, num_classes=num_classes)
    return _PolyViT(**cfg.module_kwargs())
