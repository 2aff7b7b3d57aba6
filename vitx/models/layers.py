"""Shared model pieces: MLP block, pre-LN encoder block, encoder, MAP head, posemb; stochastic
depth (`drop_path`) and squeeze-excitation (`SqueezeExcite`) for residual models (CoAtNet).

Parameter names follow big_vision's ViT (`Transformer/encoderblock_{i}/MlpBlock_0/Dense_0/kernel`,
...) so checkpoints map to and from big_vision and vit_jax with renames only
(see `vitx.utils.npz`).

Sources: Dosovitskiy et al., "An Image is Worth 16x16 Words", ICLR 2021, Sec. 3.1, eqs. 1-4
(pre-LN encoder, GELU MLP); Zhai et al., "Scaling Vision Transformers", CVPR 2022, Sec. 3.2
(MAP head); Beyer et al., "Better plain ViT baselines for ImageNet-1k", 2022 (sincos2d posemb);
Huang et al., ECCV 2016 (stochastic depth; `drop_path` for residual models, and the encoder's
per-block `drop_path` rates, `drop_path_rates`); Hu et al., CVPR 2018 (squeeze-excitation).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vitx.models import relative, vit_tokens

Array = jax.Array
Dtype = Any

REMAT_POLICIES = {
    "nothing_saveable": jax.checkpoint_policies.nothing_saveable,
    "everything_saveable": jax.checkpoint_policies.everything_saveable,
    "dots_saveable": jax.checkpoint_policies.dots_saveable,
    "dots_with_no_batch_dims_saveable": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


PATCH_EMBED_IMPLS = ("matmul", "conv")
ATTENTION_IMPLS = ("auto", "bhnd", "einsum", "jax")
GELU_TYPES = ("tanh", "exact")


def gelu(x: Array, kind: str = "tanh") -> Array:
    """GELU of `kind` "tanh" (approximation; Google's ViTs) or "exact" (erf; timm's ViTs).

    Source: Hendrycks & Gimpel, "Gaussian Error Linear Units", 2016, Sec. 2 (both forms).

    Raises:
      ValueError: an unknown `kind` (naming model.gelu).
    """
    if kind not in GELU_TYPES:
        raise ValueError(f"model.gelu={kind!r} is unknown; use one of {GELU_TYPES}")
    return nn.gelu(x, approximate=kind == "tanh")


def dtype_of(name: str | Any) -> Any:
    """A dtype from its name ("bfloat16") or a dtype itself (the models' `dtype_mm` field)."""
    return jnp.dtype(name) if isinstance(name, str) else name


def patchify(x: Array, kernel: Array, bias: Array, impl: str = "matmul") -> Array:
    """Non-overlapping patch embedding: a conv with kernel = stride = patch, as one matmul.

    Args:
      x: (B, *S, C) images (S = H, W) or clips (S = T, H, W); each S_i divisible by P_i.
      kernel: (*P, C, D), the `nn.Conv` kernel layout (checkpoints and npz are unchanged).
      bias: (D,).
      impl: "matmul" (default): reshape into patches (B, *S/P, prod(P) * C) and multiply by the
        kernel reshaped to (prod(P) * C, D); "conv": `lax.conv_general_dilated`, VALID, stride P.
        Both compute the same linear map (equal up to float summation order); on XLA:CPU the
        strided conv's backward pass is ~10x slower than the matmul (`vitx bench`).

    Returns: (B, *S/P, D) in the dtype of `x`/`kernel` (promote them before the call).

    Source: ViT paper (Dosovitskiy et al. 2021) Sec. 3.1, eq. 1: patches flattened, then E.

    Raises:
      ValueError: unknown `impl`.
    """
    patch = kernel.shape[:-2]
    nd = len(patch)
    if impl == "conv":
        dims = "NHWC", "HWIO", "NHWC"
        if nd == 3:
            dims = "NDHWC", "DHWIO", "NDHWC"
        y = jax.lax.conv_general_dilated(x, kernel, window_strides=patch, padding="VALID",
                                         dimension_numbers=dims)
        return y + jnp.reshape(bias, (1,) * (nd + 1) + (-1,))
    if impl != "matmul":
        raise ValueError(f"model.patch_embed={impl!r} is unknown; use one of {PATCH_EMBED_IMPLS}")
    b, *sizes, c = x.shape
    grid = [s // p for s, p in zip(sizes, patch, strict=True)]
    # (B, g0, p0, g1, p1, ..., C) -> (B, g0, g1, ..., p0, p1, ..., C)
    x = jnp.reshape(x, (b, *[v for g, p in zip(grid, patch, strict=True) for v in (g, p)], c))
    perm = (0, *range(1, 2 * nd, 2), *range(2, 2 * nd + 1, 2), 2 * nd + 1)
    x = jnp.reshape(jnp.transpose(x, perm), (b, *grid, -1))
    return x @ jnp.reshape(kernel, (-1, kernel.shape[-1])) + bias


class PatchEmbed(nn.Module):
    """`nn.Conv(features, patch, strides=patch, padding="VALID")` with the same parameters
    (`kernel` (*P, C, D) lecun-normal, `bias` (D,) zeros; identical init), computed by
    `patchify` (a matmul by default). (B, *S, C) -> (B, *S/P, D); `dtype` is the compute dtype.

    Raises:
      ValueError: a patch side does not divide the input side, or an unknown `impl`.
    """

    features: int
    patch: tuple[int, ...]
    dtype: Dtype = jnp.float32
    impl: str = "matmul"

    @nn.compact
    def __call__(self, x: Array) -> Array:
        patch = tuple(self.patch)
        if any(s % p for s, p in zip(x.shape[1:-1], patch, strict=True)):
            raise ValueError(f"patch size {patch} does not divide the input size "
                             f"{tuple(x.shape[1:-1])}; choose a patch size that divides it or "
                             f"resize the input")
        kernel = self.param("kernel", nn.initializers.lecun_normal(),
                            (*patch, x.shape[-1], self.features), jnp.float32)
        bias = self.param("bias", nn.initializers.zeros, (self.features,), jnp.float32)
        x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
        return patchify(x, kernel, bias, self.impl)


def attention_fn(impl: str = "auto"):
    """The attention core for `nn.MultiHeadDotProductAttention(attention_fn=...)`.

    q (B, Nq, H, d), k and v (B, Nk, H, d) -> (B, Nq, H, d): softmax(q k^T / sqrt(d)) v
    (Vaswani et al. 2017, Sec. 3.2.1). Implementations (same math, float-tolerance equal):
      "bhnd": heads moved next to the batch, (B, H, N, d) batched matmuls; fastest on XLA:CPU
        (about 1.3x the einsum layout's fwd+bwd, `vitx bench`);
      "jax": `jax.nn.dot_product_attention` (cuDNN flash attention on GPU where eligible);
      "einsum": flax's default (B, N, H, d) einsums;
      "auto": "jax" on GPU, "bhnd" elsewhere (the backend of the default device, at trace time).
    Attention dropout and masks fall back to flax's implementation.

    Raises:
      ValueError: unknown `impl`.
    """
    if impl not in ATTENTION_IMPLS:
        raise ValueError(f"model.attention_impl={impl!r} is unknown; use one of {ATTENTION_IMPLS}")

    # flax's MultiHeadDotProductAttention passes only the keywords named in this signature.
    def fn(query: Array, key: Array, value: Array, bias: Array | None = None,
           mask: Array | None = None, dropout_rng: Array | None = None,
           dropout_rate: float = 0.0, broadcast_dropout: bool = True,
           deterministic: bool = True, dtype: Dtype | None = None, **kw: Any) -> Array:
        chosen = impl
        if chosen == "auto":
            chosen = "jax" if jax.default_backend() == "gpu" else "bhnd"
        if chosen == "einsum" or (dropout_rate > 0.0 and not deterministic):
            return nn.dot_product_attention(query, key, value, bias=bias, mask=mask,
                                            dropout_rng=dropout_rng, dropout_rate=dropout_rate,
                                            broadcast_dropout=broadcast_dropout,
                                            deterministic=deterministic, dtype=dtype, **kw)
        if chosen == "jax":
            return jax.nn.dot_product_attention(query, key, value, bias=bias, mask=mask)
        depth = query.shape[-1]
        q = jnp.swapaxes(query, 1, 2) / jnp.sqrt(depth).astype(query.dtype)
        k, v = jnp.swapaxes(key, 1, 2), jnp.swapaxes(value, 1, 2)
        logits = jnp.einsum("bhqd,bhkd->bhqk", q, k)
        if bias is not None:
            logits = logits + bias
        if mask is not None:
            logits = jnp.where(mask, logits, jnp.finfo(logits.dtype).min)
        w = jax.nn.softmax(logits.astype(jnp.float32), axis=-1).astype(v.dtype)
        return jnp.swapaxes(jnp.einsum("bhqk,bhkd->bhqd", w, v), 1, 2)

    return fn


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
    """Dense(mlp_dim) -> GELU -> dropout -> Dense(D). Input/output (B, N, D).

    `gelu`: "tanh" (the tanh approximation, Google's ViT / big_vision weights; the default) or
    "exact" (erf, PyTorch's `nn.GELU()`: timm / Hugging Face weights); see `GELU_TYPES`.
    Source: Hendrycks & Gimpel, "Gaussian Error Linear Units", 2016, Sec. 2 (both forms).
    """

    mlp_dim: int | None = None  # defaults to 4 * D
    dropout: float = 0.0
    dtype_mm: Dtype = jnp.float32
    gelu: str = "tanh"

    @nn.compact
    def __call__(self, x: Array, *, train: bool = False) -> Array:
        inits = dict(kernel_init=nn.initializers.xavier_uniform(),
                     bias_init=nn.initializers.normal(stddev=1e-6))
        d = x.shape[-1]
        x = nn.Dense(self.mlp_dim or 4 * d, dtype=self.dtype_mm, **inits)(x)
        x = gelu(x, self.gelu)
        x = nn.Dropout(rate=self.dropout)(x, deterministic=not train)
        return nn.Dense(d, dtype=self.dtype_mm, **inits)(x)


def drop_path_rates(rate: float | Sequence[float], depth: int) -> tuple[float, ...]:
    """Per-block stochastic-depth rates of a `depth`-block stack: block i of L gets
    `rate * i / max(L - 1, 1)` (0 for the first block, `rate` for the last); a sequence of
    `depth` rates is returned as it is (e.g. a slice of a deeper stack's rates).

    Source: Huang et al., "Deep Networks with Stochastic Depth", ECCV 2016, Sec. 3 (linear
    decay rule); timm's `drop_path_rate` (`torch.linspace(0, rate, depth)`).

    Raises:
      ValueError: a rate outside [0, 1), or a sequence whose length is not `depth`.
    """
    if isinstance(rate, int | float):
        rates = tuple(float(rate) * i / max(depth - 1, 1) for i in range(depth))
    else:
        rates = tuple(float(r) for r in rate)
        if len(rates) != depth:
            raise ValueError(f"model.drop_path: {len(rates)} per-block rates for {depth} blocks; "
                             f"give one rate (linear in depth) or {depth}")
    if any(not 0.0 <= r < 1.0 for r in rates):
        raise ValueError(f"model.drop_path={rate!r} must be in [0, 1) (the last block's rate)")
    return rates


class Encoder1DBlock(nn.Module):
    """Pre-LN block: x + MHSA(LN(x)), then + MLP(LN(x)). Input/output (B, N, D).

    `drop_path`: this block's stochastic-depth rate; in training each residual branch is
    dropped per example with that probability and kept ones are scaled by 1 / (1 - rate)
    (rng stream "dropout"). `__call__`'s `drop_path_rate` (a float32 scalar; the per-layer
    scanned input of `Encoder(scan=True)`) overrides it. `attention_dropout`: dropout on the
    attention weights. Both are off when `deterministic` (eval); at 0 the block is the plain
    one (same params, same outputs, no rng drawn).

    Sources: ViT paper Sec. 3.1, eqs. 2-3; Huang et al., ECCV 2016, Sec. 3 (stochastic depth);
    Vaswani et al. 2017, Sec. 5.4 (dropout).
    """

    mlp_dim: int | None = None
    num_heads: int = 12
    dropout: float = 0.0
    dtype_mm: Dtype = jnp.float32
    attention_impl: str = "auto"
    drop_path: float = 0.0
    attention_dropout: float = 0.0
    rel_grid: tuple[int, int] | None = None  # ViT_REL token grid (`relative.vit_bias`)
    gelu: str = "tanh"  # MlpBlock's GELU ("tanh" | "exact")
    rel_table_grid: tuple[int, int] | None = None  # its stored table's grid (default rel_grid)
    layer_scale: float | None = None  # LayerScale init of both branches (`vit_tokens`, CaiT)

    def _drop_branch(self, y: Array, rate: float | Array, deterministic: bool) -> Array:
        """y (B, ...) with each example zeroed w.p. `rate`, else scaled by 1 / (1 - rate)."""
        if deterministic or (isinstance(rate, int | float) and rate <= 0.0):
            return y
        keep = 1.0 - jnp.asarray(rate, jnp.float32)
        mask = jax.random.bernoulli(self.make_rng("dropout"), keep,
                                    (y.shape[0],) + (1,) * (y.ndim - 1))
        return jnp.where(mask, (y / keep).astype(y.dtype), jnp.zeros_like(y))

    @nn.compact
    def __call__(self, x: Array, deterministic: bool = True,
                 drop_path_rate: Array | None = None) -> tuple[Array, Array]:
        rate = self.drop_path if drop_path_rate is None else drop_path_rate
        self.sow("intermediates", "drop_path_rate", jnp.asarray(rate, jnp.float32))
        y = nn.LayerNorm()(x)
        y = nn.MultiHeadDotProductAttention(
            num_heads=self.num_heads, kernel_init=nn.initializers.xavier_uniform(),
            deterministic=deterministic, dtype=self.dtype_mm, dropout_rate=self.attention_dropout,
            attention_fn=relative.block_attention_fn(
                self, x.shape[1], attention_fn(self.attention_impl)))(y, y)
        y = nn.Dropout(rate=self.dropout)(y, deterministic)
        x = x + self._drop_branch(vit_tokens.scale_branch(self, y), rate, deterministic)
        y = nn.LayerNorm()(x)
        y = MlpBlock(mlp_dim=self.mlp_dim, dropout=self.dropout, dtype_mm=self.dtype_mm,
                     gelu=self.gelu)(y, train=not deterministic)
        y = nn.Dropout(rate=self.dropout)(y, deterministic)
        x = x + self._drop_branch(vit_tokens.scale_branch(self, y), rate, deterministic)
        return x, None  # (carry, per-layer output) so the block can be nn.scan'ed


class Encoder(nn.Module):
    """Stack of `depth` encoder blocks plus the final LayerNorm (`encoder_norm`, left out with
    `final_norm=False`, e.g. for PolyViT's modality-specific layers).

    With `scan=True` the blocks are one `nn.scan` (params stacked on a leading `depth` axis, named
    `encoderblock`); with `remat_policy` set, each block is rematerialised (`nn.remat`).
    Input/output (B, N, D).

    Regularisation (train only; 0 = off, the plain encoder): `drop_path`, stochastic depth of
    rate linear in depth (`drop_path_rates`: block i gets `drop_path * i / max(depth - 1, 1)`;
    or a tuple of `depth` per-block rates), the same per layer with `scan=True` (a scanned
    input); `attention_dropout` on the attention weights.
    """

    depth: int
    mlp_dim: int | None = None
    num_heads: int = 12
    dropout: float = 0.0
    scan: bool = False
    remat_policy: str | None = None
    dtype_mm: Dtype = jnp.float32
    attention_impl: str = "auto"
    final_norm: bool = True
    gelu: str = "tanh"  # the blocks' GELU ("tanh" | "exact", `gelu`)
    drop_path: float | tuple[float, ...] = 0.0
    attention_dropout: float = 0.0
    rel_grid: tuple[int, int] | None = None
    rel_table_grid: tuple[int, int] | None = None
    layer_scale: float | None = None  # the blocks' LayerScale init (None: none)

    @nn.compact
    def __call__(self, x: Array, *, train: bool = False) -> Array:
        block_kw = dict(mlp_dim=self.mlp_dim, num_heads=self.num_heads, dropout=self.dropout,
                        dtype_mm=self.dtype_mm, attention_impl=self.attention_impl,
                        attention_dropout=self.attention_dropout, gelu=self.gelu,
                        rel_grid=self.rel_grid, rel_table_grid=self.rel_table_grid,
                        layer_scale=self.layer_scale)
        rates = drop_path_rates(self.drop_path, self.depth)
        block = Encoder1DBlock
        if self.remat_policy is not None:
            if self.remat_policy not in REMAT_POLICIES:
                raise ValueError(f"model.remat_policy={self.remat_policy!r} is unknown; "
                                 f"use one of {sorted(REMAT_POLICIES)} or None")
            block = nn.remat(block, prevent_cse=not self.scan, static_argnums=(2,),
                             policy=REMAT_POLICIES[self.remat_policy])
        if self.scan:
            # Per-layer rates as a scanned input (only when on: the plain scan stays as it was).
            extra = (jnp.asarray(rates, jnp.float32),) if any(rates) else ()
            x, _ = nn.scan(block, variable_axes={"params": 0, "intermediates": 0},
                           split_rngs={"params": True, "dropout": True},
                           in_axes=(nn.broadcast, *(0,) * len(extra)), length=self.depth)(
                name="encoderblock", **block_kw)(x, not train, *extra)
        else:
            for i in range(self.depth):
                x, _ = block(name=f"encoderblock_{i}", drop_path=rates[i], **block_kw)(
                    x, not train)
        return nn.LayerNorm(name="encoder_norm")(x) if self.final_norm else x


class MAPHead(nn.Module):
    """Multihead attention pooling: a learned probe attends over tokens. (B, N, D) -> (B, D).

    Source: Zhai et al., "Scaling Vision Transformers", CVPR 2022, Sec. 3.2; Lee et al. 2019 (PMA).
    """

    mlp_dim: int | None = None
    num_heads: int = 12
    dtype_mm: Dtype = jnp.float32
    attention_impl: str = "auto"
    gelu: str = "tanh"

    @nn.compact
    def __call__(self, x: Array) -> Array:
        b, _, d = x.shape
        probe = self.param("probe", nn.initializers.xavier_uniform(), (1, 1, d), x.dtype)
        probe = jnp.tile(probe, [b, 1, 1])
        x = nn.MultiHeadDotProductAttention(
            num_heads=self.num_heads, kernel_init=nn.initializers.xavier_uniform(),
            dtype=self.dtype_mm, attention_fn=attention_fn(self.attention_impl))(probe, x)
        y = nn.LayerNorm()(x)
        x = x + MlpBlock(mlp_dim=self.mlp_dim, dtype_mm=self.dtype_mm, gelu=self.gelu)(y)
        return x[:, 0]


def drop_path(x: Array, rate: float, train: bool) -> Array:
    """Stochastic depth: drop a residual branch per example. (B, ...) -> (B, ...).

    Each example's `x` is zeroed with probability `rate` and kept scaled by 1 / (1 - rate)
    (`nn.Dropout` broadcast over every axis but the batch; rng stream "dropout"). Identity when
    `rate <= 0` or not `train`. Call from a compact method: the Dropout joins the calling module
    (no params).

    Source: Huang et al., "Deep Networks with Stochastic Depth", ECCV 2016, Sec. 3.
    """
    if rate <= 0.0 or not train:
        return x
    return nn.Dropout(rate, broadcast_dims=tuple(range(1, x.ndim)))(x, deterministic=False)


class SqueezeExcite(nn.Module):
    """x * sigmoid(W2 silu(W1 mean_hw(x))). (B, H, W, C) -> (B, H, W, C).

    Params: `reduce` Dense (C, reduced), `expand` Dense (reduced, C), computed in `dtype`.

    Source: Hu et al., "Squeeze-and-Excitation Networks", CVPR 2018, Sec. 3; SiLU inside as
    the MaxViT code's `SE` (Tu et al., "MaxViT: Multi-Axis Vision Transformer", ECCV 2022).
    """

    reduced: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        s = jnp.mean(x, axis=(1, 2), keepdims=True)
        s = nn.silu(nn.Dense(self.reduced, dtype=self.dtype, name="reduce")(s))
        s = nn.Dense(x.shape[-1], dtype=self.dtype, name="expand")(s)
        return x * nn.sigmoid(s)
