"""CoAtNet: convolution stages (MBConv) followed by relative-attention Transformer stages.

Source: Dai, Liu, Le, Tan, "CoAtNet: Marrying Convolution and Attention for All Data Sizes",
NeurIPS 2021 (arXiv 2106.04803); seed 003 (CN117377983A). Where the paper leaves a detail open,
the authors' MaxViT code (google-research/maxvit, `maxvit/models/maxvit.py`) and timm's
paper-faithful port (`timm/models/maxxvit.py`, `coatnet_0..4`) decide; each such choice says so.

  * Sec. 2.1, eqs. 1-3 (relative attention): y_i = sum_j softmax_j(x_i^T x_j + w_{i-j}) x_j, a
    static, translation-equivariant kernel w_{i-j} added to the content logits over the global
    receptive field before the softmax ("pre_softmax", the paper's choice), or after it
    ("post_softmax", the y^post form of eq. 3). w is one learnable scalar per head and 2D
    offset: a table (heads, 2H-1, 2W-1) for an H x W token grid, B[h, (r,c), (r',c')] =
    T[h, r-r'+H-1, c-c'+W-1]. Multi-head q/k/v projections with 1/sqrt(d) scaling, head size 32
    (Sec. 4.1, Table 3).
  * Sec. 2.2 (multi-stage layout): S0 stem = two 3x3 convs, the first with stride 2; S1..S4
    each halve the resolution in their first block (S0..S4 at 1/2 .. 1/32: 112/56/28/14/7 at
    224 px); C-C-T-T is the default layout, C-C-C-T / C-T-T-T (and C-C-C-C) as in the
    layout study of Sec. 2.2.
  * Sec. 2.2 / App. A.1, eqs. 4-5 (downsampling): x <- Proj(Pool(x)) + Conv(DepthConv(Conv(
    Norm(x)))) for MBConv and x <- Proj(Pool(x)) + Attention(Pool(Norm(x))) for Transformer
    blocks; Pool = 2x2 average pooling with stride 2 (MaxViT code, timm "avg2"), Proj = 1x1
    projection (with bias) when the channels change; the MBConv stride sits on the depthwise
    conv (MaxViT `downsample_loc="depth_conv"`, timm `stride_mode="dw"`).
  * MBConv (Sandler et al. 2018; Tan & Le 2019), pre-norm: BatchNorm -> 1x1 expand (x4, no
    bias) -> BN -> GELU -> 3x3 depthwise (no bias) -> BN -> GELU -> squeeze-excitation (ratio
    0.25 of the block's *output* channels, SiLU inside, sigmoid gate: MaxViT `SE`) -> 1x1
    project (bias), no norm after it.
  * Transformer blocks, pre-norm LayerNorm: x + Attn(LN(x)), x + FFN(LN(x)), FFN = Dense(4D) ->
    GELU -> Dense(D); no absolute position embedding.
  * Head: global average pool -> LayerNorm -> [pre_logits Dense + tanh, CoAtNet-0..4: the width
    of S4, as MaxViT's and timm's `head_hidden_size`] -> zero-initialised Dense.
  * Sec. 4.1, Table 3 (L = blocks, D = channels of S0..S4): CoAtNet-0 L (2, 2, 3, 5, 2)
    D (64, 96, 192, 384, 768); -1 L (2, 2, 6, 14, 2), same D; -2 D (128, 128, 256, 512, 1024);
    -3 D (192, 192, 384, 768, 1536); -4 L (2, 2, 12, 28, 2), D as -3. "pico"/"nano" are vitx's
    tiny widths for tests and the digits data.
  * GELU is flax's default (tanh approximation), as in vitx's ViT; MaxViT / timm use the exact
    erf form.

BatchNorm (flax `nn.BatchNorm`, momentum 0.9, eps 1e-5) keeps its running mean / variance in the
`batch_stats` collection: train with `model.apply({"params": p, "batch_stats": s}, x,
train=True, mutable=["batch_stats"], rngs={"dropout": k})` (returns ((logits, aux), {"batch_stats":
new_s})); evaluate with `train=False` (running averages, nothing mutable). Under `jit` with a
batch sharded over devices the batch mean / variance are global (GSPMD); set `bn_axis_name` only
inside `shard_map` / `pmap`.

Parameter tree::

    stem/{conv1/kernel (3, 3, C, D0), norm1/{scale, bias}, conv2/kernel (3, 3, D0, D0)}
    stage{s}/block{j}/...                 s = 1..4, j = 0..L_s-1
      MBConv:      shortcut_proj/{kernel, bias} (first block, channels change), pre_norm,
                   expand_conv, expand_norm, depthwise_conv, depthwise_norm,
                   se/{reduce, expand}/{kernel, bias}, shrink_conv/{kernel, bias}
      Transformer: shortcut_proj/{kernel, bias} (first block, channels change), attn_norm,
                   attention/{qkv/{kernel (Din, 3 D), bias}, rel_table (heads, 2H-1, 2W-1),
                   proj/{kernel, bias}}, mlp_norm, mlp/{Dense_0, Dense_1}
    norm/{scale, bias}, pre_logits/{kernel, bias} (representation_size), head/{kernel, bias}
"""

from __future__ import annotations

import functools
import logging
import re
from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vitx.models import layers, resize
from vitx.models.resnet import adapt_head
from vitx.utils import checkpoints, pair, tree

Array = jax.Array
Params = dict[str, Any]
logger = logging.getLogger(__name__)

REL_POS_MODES = ("pre_softmax", "post_softmax")

# name: (stem width D0, widths D1..D4, blocks L1..L4, representation_size). Paper Table 3.
VARIANTS: dict[str, tuple[int, tuple[int, ...], tuple[int, ...], int | None]] = {
    "pico": (16, (16, 32, 64, 128), (1, 1, 1, 1), None),
    "nano": (32, (32, 64, 128, 256), (2, 2, 2, 2), None),
    "0": (64, (96, 192, 384, 768), (2, 3, 5, 2), 768),
    "1": (64, (96, 192, 384, 768), (2, 6, 14, 2), 768),
    "2": (128, (128, 256, 512, 1024), (2, 6, 14, 2), 1024),
    "3": (192, (192, 384, 768, 1536), (2, 6, 14, 2), 1536),
    "4": (192, (192, 384, 768, 1536), (2, 12, 28, 2), 1536),
}

# EfficientNet-style conv init (normal, fan-out; depthwise: fan = 3*3), as timm's `_init_conv`.
_CONV_INIT = nn.initializers.variance_scaling(2.0, "fan_out", "normal")
_DW_INIT = nn.initializers.variance_scaling(2.0, "fan_in", "normal")


def decode_variant(variant: str | None) -> dict[str, Any]:
    """'coatnet-0' (or '0', 'CoAtNet-0', 'coatnet_pico') -> dict(stem_width=64, widths=(96, 192,
    384, 768), blocks=(2, 3, 5, 2), representation_size=768).

    Raises:
      ValueError: an unknown name (the message lists the known ones).
    """
    if variant is None:
        return {}
    m = re.fullmatch(r"(?:coatnet[-_]?)?(?P<v>\w+)", variant.lower())
    if not m or m["v"] not in VARIANTS:
        raise ValueError(f"model.variant={variant!r} is unknown; use 'coatnet-<v>' with v in "
                         f"{list(VARIANTS)} (e.g. 'coatnet-0', 'coatnet-pico')")
    stem, widths, blocks, rep = VARIANTS[m["v"]]
    return dict(stem_width=stem, widths=widths, blocks=blocks, representation_size=rep)


# ------------------------------------------------------------------------------------------------
# Relative attention.


def relative_index(grid: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """Row / column indices into the (2H-1, 2W-1) table for every (query, key) pair.

    Shapes: two int32 arrays (N, N), N = H * W in raster order, with
    rows[i, j] = r_i - r_j + H - 1 and cols[i, j] = c_i - c_j + W - 1 (CoAtNet Sec. 2.1:
    the kernel depends only on the offset i - j). Host constants.
    """
    h, w = pair(tuple(grid), "grid")
    r, c = np.divmod(np.arange(h * w), w)
    return ((r[:, None] - r[None, :] + h - 1).astype(np.int32),
            (c[:, None] - c[None, :] + w - 1).astype(np.int32))


def relative_bias(table: Array, grid: Sequence[int]) -> Array:
    """The bias matrix of a relative table: (heads, 2H-1, 2W-1) -> (heads, N, N), N = H * W.

    bias[h, i, j] = table[h, r_i - r_j + H - 1, c_i - c_j + W - 1] (a gather; MaxViT does the
    same lookup with one-hot einsums, `reindex_2d_einsum_lookup`).

    Raises:
      ValueError: the table does not have shape (heads, 2H-1, 2W-1) for `grid`.
    """
    h, w = pair(tuple(grid), "grid")
    if table.ndim != 3 or tuple(table.shape[1:]) != (2 * h - 1, 2 * w - 1):
        raise ValueError(f"relative table of shape {tuple(table.shape)} does not fit the "
                         f"{h}x{w} token grid (needs (heads, {2 * h - 1}, {2 * w - 1})); "
                         f"fine-tuning at another resolution: load the checkpoint with "
                         f"coatnet.load / adapt_params, which resizes the table")
    rows, cols = relative_index((h, w))
    return table[:, rows, cols]


def resize_rel_table(table: Any, new_hw: int | Sequence[int], *,
                     method: str = "bilinear") -> Any:
    """Resize a relative-position table to a new token grid (fine-tuning at another resolution).

    Shapes: (heads, 2H-1, 2W-1) -> (heads, 2H'-1, 2W'-1) for `new_hw` = (H', W') (the new token
    grid of the stage). The table is interpolated per head as an image (2H-1, 2W-1) with
    `vitx.models.resize.resize_posemb` (viewed as its (1, N, D) format: N = (2H-1)(2W-1)
    positions, D = heads channels); the centre (offset 0) stays at the centre. Returns `table`
    itself when the size is unchanged. Dtype preserved.

    Source: CoAtNet fine-tuning at 384 px (paper Sec. 4.1; MaxViT code: bilinear resize of the
    relative table per head); ViT Sec. 3.2 (2D interpolation of position embeddings).

    Raises:
      ValueError: `table` not 3-D with odd sides; `new_hw` not a positive int / pair; an
        unknown `method`.
    """
    nh, nw = pair(new_hw, "new_hw")
    if np.ndim(table) != 3 or table.shape[1] % 2 == 0 or table.shape[2] % 2 == 0:
        raise ValueError(f"relative table of shape {tuple(np.shape(table))} is not (heads, 2H-1, "
                         f"2W-1); pass a CoAtNet attention/rel_table")
    heads, a, b = table.shape
    new = (2 * nh - 1, 2 * nw - 1)
    if (a, b) == new:
        return table
    pe = jnp.reshape(jnp.transpose(jnp.asarray(table), (1, 2, 0)), (1, a * b, heads))
    pe = resize.resize_posemb(pe, (a, b), new, method=method)
    return jnp.transpose(jnp.reshape(pe, (*new, heads)), (2, 0, 1))


class RelativeAttention(nn.Module):
    """Multi-head self-attention with a learned 2D relative bias. (B, N, Din) -> (B, N, D).

    Params: `qkv` Dense (Din, 3 D) (q, k, v each split into D / head_size heads), `rel_table`
    (heads, 2H-1, 2W-1) (normal 0.02, as MaxViT), `proj` Dense (D, D). Logits
    q k^T / sqrt(head_size) + bias ("pre_softmax") or softmax(q k^T / sqrt(d)) + bias
    ("post_softmax"); softmax in float32 (as MaxViT's `float32_softmax`).

    Source: CoAtNet Sec. 2.1, eqs. 1-3.

    Raises:
      ValueError: D not divisible by head_size; unknown rel_pos_mode; N != H * W of `grid`.
    """

    features: int
    head_size: int = 32
    rel_pos_mode: str = "pre_softmax"
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array, grid: tuple[int, int]) -> Array:
        if self.features % self.head_size:
            raise ValueError(f"attention width {self.features} is not a multiple of "
                             f"model.head_size={self.head_size}; choose widths divisible by it")
        if self.rel_pos_mode not in REL_POS_MODES:
            raise ValueError(f"model.rel_pos_mode={self.rel_pos_mode!r} is unknown; use one of "
                             f"{REL_POS_MODES}")
        b, n, _ = x.shape
        h, w = grid
        if n != h * w:
            raise ValueError(f"{n} tokens do not form the {h}x{w} grid passed to the attention")
        heads = self.features // self.head_size
        dense = functools.partial(nn.Dense, dtype=self.dtype,
                                  kernel_init=nn.initializers.xavier_uniform())
        qkv = dense(3 * self.features, name="qkv")(x)
        q, k, v = jnp.split(jnp.reshape(qkv, (b, n, 3, heads, self.head_size)), 3, axis=2)
        q, k, v = q[:, :, 0], k[:, :, 0], v[:, :, 0]  # (B, N, heads, d)
        logits = jnp.einsum("bqhd,bkhd->bhqk", q, k).astype(jnp.float32)
        logits = logits / np.sqrt(self.head_size).astype(np.float32)
        table = self.param("rel_table", nn.initializers.normal(stddev=0.02),
                           (heads, 2 * h - 1, 2 * w - 1), jnp.float32)
        bias = relative_bias(table, (h, w))[None]  # (1, heads, N, N)
        if self.rel_pos_mode == "pre_softmax":
            attn = jax.nn.softmax(logits + bias, axis=-1)
        else:
            attn = jax.nn.softmax(logits, axis=-1) + bias
        y = jnp.einsum("bhqk,bkhd->bqhd", attn.astype(v.dtype), v)
        return dense(self.features, name="proj")(jnp.reshape(y, (b, n, self.features)))


# ------------------------------------------------------------------------------------------------
# Blocks.


def _avg_pool(x: Array, stride: int) -> Array:
    return x if stride == 1 else nn.avg_pool(x, (stride, stride), (stride, stride), "VALID")


def _drop_path(x: Array, rate: float, train: bool) -> Array:
    """Stochastic depth: drop the residual branch per example, scaled by 1 / (1 - rate) (Huang
    et al., ECCV 2016). Call from a compact method (the Dropout joins the calling module)."""
    if rate <= 0.0 or not train:
        return x
    return nn.Dropout(rate, broadcast_dims=tuple(range(1, x.ndim)))(x, deterministic=False)


class SqueezeExcite(nn.Module):
    """x * sigmoid(W2 silu(W1 mean_hw(x))). (B, H, W, C) -> (B, H, W, C).

    Source: Hu et al., "Squeeze-and-Excitation Networks", CVPR 2018; MaxViT `SE` (SiLU inside).
    """

    reduced: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        s = jnp.mean(x, axis=(1, 2), keepdims=True)
        s = nn.silu(nn.Dense(self.reduced, dtype=self.dtype, name="reduce")(s))
        s = nn.Dense(x.shape[-1], dtype=self.dtype, name="expand")(s)
        return x * nn.sigmoid(s)


class MBConvBlock(nn.Module):
    """Pre-norm MBConv with SE. (B, H, W, Cin) -> (B, H/s, W/s, features).

    Source: CoAtNet Sec. 2.2 and eq. 4 (see the module docstring for the layer order).
    """

    features: int
    stride: int = 1
    expansion: int = 4
    se_ratio: float = 0.25
    drop_path: float = 0.0
    bn_momentum: float = 0.9
    bn_axis_name: str | None = None
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array, *, train: bool = False) -> Array:
        bn = functools.partial(nn.BatchNorm, use_running_average=not train,
                               momentum=self.bn_momentum, axis_name=self.bn_axis_name)
        conv = functools.partial(nn.Conv, dtype=self.dtype, kernel_init=_CONV_INIT)
        shortcut = _avg_pool(x, self.stride)
        if x.shape[-1] != self.features:
            shortcut = conv(self.features, (1, 1), name="shortcut_proj")(shortcut)
        mid = self.features * self.expansion
        y = bn(name="pre_norm")(x)
        y = conv(mid, (1, 1), use_bias=False, name="expand_conv")(y)
        y = nn.gelu(bn(name="expand_norm")(y))
        y = nn.Conv(mid, (3, 3), (self.stride, self.stride), padding="SAME",
                    feature_group_count=mid, use_bias=False, dtype=self.dtype,
                    kernel_init=_DW_INIT, name="depthwise_conv")(y)
        y = nn.gelu(bn(name="depthwise_norm")(y))
        y = SqueezeExcite(max(1, int(self.features * self.se_ratio)), self.dtype, name="se")(y)
        y = conv(self.features, (1, 1), name="shrink_conv")(y)
        return shortcut + _drop_path(y, self.drop_path, train)


class TransformerBlock(nn.Module):
    """Pre-norm relative-attention Transformer block on a feature map.

    (B, H, W, Cin) -> (B, H/s, W/s, features). Source: CoAtNet Sec. 2.2 and eq. 5.
    """

    features: int
    stride: int = 1
    head_size: int = 32
    mlp_ratio: int = 4
    rel_pos_mode: str = "pre_softmax"
    drop_path: float = 0.0
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array, *, train: bool = False) -> Array:
        shortcut = _avg_pool(x, self.stride)
        if x.shape[-1] != self.features:
            shortcut = nn.Dense(self.features, dtype=self.dtype, name="shortcut_proj")(shortcut)
        y = _avg_pool(nn.LayerNorm(name="attn_norm")(x), self.stride)
        b, h, w, c = y.shape
        y = RelativeAttention(self.features, self.head_size, self.rel_pos_mode, self.dtype,
                              name="attention")(jnp.reshape(y, (b, h * w, c)), (h, w))
        x = shortcut + _drop_path(jnp.reshape(y, (b, h, w, self.features)), self.drop_path,
                                  train)
        y = nn.LayerNorm(name="mlp_norm")(x)
        y = layers.MlpBlock(mlp_dim=self.mlp_ratio * self.features, dtype_mm=self.dtype,
                            name="mlp")(y, train=train)
        return x + _drop_path(y, self.drop_path, train)


class _Stage(nn.Module):
    """`blocks` blocks of one type ("C" or "T"); the first one strides and changes width."""

    kind: str
    features: int
    blocks: int
    stride: int
    drop_path: Sequence[float]
    block_kw: Mapping[str, Any]

    @nn.compact
    def __call__(self, x: Array, *, train: bool = False) -> Array:
        for j in range(self.blocks):
            kw = dict(features=self.features, stride=self.stride if j == 0 else 1,
                      drop_path=self.drop_path[j], name=f"block{j}")
            if self.kind == "C":
                keys = ("expansion", "se_ratio", "bn_momentum", "bn_axis_name", "dtype")
                x = MBConvBlock(**kw, **{k: self.block_kw[k] for k in keys})(x, train=train)
            else:
                keys = ("head_size", "mlp_ratio", "rel_pos_mode", "dtype")
                x = TransformerBlock(**kw, **{k: self.block_kw[k] for k in keys})(x, train=train)
        return x


class _CoAtNet(nn.Module):
    """CoAtNet. Images (B, H, W, C) -> (logits (B, num_classes), aux dict).

    Fields: `stem_width` (D0), `widths` (D1..D4), `blocks` (L1..L4), `layout` (one of "C"/"T" per
    stage, convs first: "CCTT" default, "CCCT", "CTTT", "CCCC"), `stage_strides` (default 2 each;
    1 keeps the resolution, e.g. for 32 px digits), `head_size` (32), `expansion` (4),
    `se_ratio` (0.25), `mlp_ratio` (4), `rel_pos_mode` ("pre_softmax" | "post_softmax"),
    `representation_size` (pre-logits Dense + tanh, None = none), `head_zeroinit`,
    `drop_path` (stochastic depth, linear in the block index up to this rate), `dropout`
    (before the head), `bn_momentum` (0.9), `bn_axis_name` (cross-replica BN inside
    shard_map / pmap), `dtype_mm` (conv / dense compute dtype; params float32).

    aux: "stem" (B, H/2, W/2, D0), "stage{s}" (B, H/S_s, W/S_s, D_s), "pre_logits" (B, D4 or
    representation_size), "logits" (with num_classes).

    Source: CoAtNet, NeurIPS 2021, Sec. 2.2; Sec. 4.1, Table 3.

    Raises:
      ValueError: inconsistent stage lists, a bad layout, H or W not divisible by the total
        stride (`input_stride`), widths not divisible by head_size; naming the config key.
    """

    num_classes: int | None = 1000
    stem_width: int = 64
    widths: Sequence[int] = (96, 192, 384, 768)
    blocks: Sequence[int] = (2, 3, 5, 2)
    layout: str = "CCTT"
    stage_strides: Sequence[int] = (2, 2, 2, 2)
    head_size: int = 32
    expansion: int = 4
    se_ratio: float = 0.25
    mlp_ratio: int = 4
    rel_pos_mode: str = "pre_softmax"
    representation_size: int | None = None
    head_zeroinit: bool = True
    drop_path: float = 0.0
    dropout: float = 0.0
    bn_momentum: float = 0.9
    bn_axis_name: str | None = None
    dtype_mm: str = "float32"

    @nn.compact
    def __call__(self, x: Array, *, train: bool = False) -> tuple[Array, dict[str, Array]]:
        _check_config(self.widths, self.blocks, self.layout, self.stage_strides)
        sh, sw = input_stride(self)
        h, w = x.shape[1:3]
        if h % sh or w % sw:
            raise ValueError(f"CoAtNet's total stride {sh}x{sw} (model.stage_strides="
                             f"{tuple(self.stage_strides)}) does not divide the image size "
                             f"{h}x{w}; resize the images to a multiple of it")
        dtype = jnp.dtype(self.dtype_mm)
        out: dict[str, Array] = {}
        x = _Stem(self.stem_width, self.bn_momentum, self.bn_axis_name, dtype, name="stem")(
            x, train=train)
        out["stem"] = x
        n_total = sum(self.blocks)
        rates = [self.drop_path * i / max(n_total - 1, 1) for i in range(n_total)]
        block_kw = dict(expansion=self.expansion, se_ratio=self.se_ratio,
                        bn_momentum=self.bn_momentum, bn_axis_name=self.bn_axis_name,
                        head_size=self.head_size, mlp_ratio=self.mlp_ratio,
                        rel_pos_mode=self.rel_pos_mode, dtype=dtype)
        start = 0
        for s, (kind, width, n, stride) in enumerate(zip(self.layout, self.widths, self.blocks,
                                                          self.stage_strides, strict=True)):
            x = _Stage(kind, width, n, stride, tuple(rates[start:start + n]), block_kw,
                       name=f"stage{s + 1}")(x, train=train)
            start += n
            out[f"stage{s + 1}"] = x
        x = nn.LayerNorm(name="norm")(jnp.mean(x, axis=(1, 2)))
        if self.representation_size is not None:
            x = nn.tanh(nn.Dense(self.representation_size, name="pre_logits")(x))
        out["pre_logits"] = x
        if self.num_classes:
            x = nn.Dropout(self.dropout)(x, deterministic=not train)
            init = nn.initializers.zeros if self.head_zeroinit else nn.initializers.lecun_normal()
            x = out["logits"] = nn.Dense(self.num_classes, kernel_init=init, name="head")(x)
        return x, out


class _Stem(nn.Module):
    """S0: conv3x3 stride 2 -> BN -> GELU -> conv3x3 (no biases). (B, H, W, C) ->
    (B, H/2, W/2, features). Source: CoAtNet Sec. 2.2 (S0); MaxViT / timm `Stem`."""

    features: int
    bn_momentum: float = 0.9
    bn_axis_name: str | None = None
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array, *, train: bool = False) -> Array:
        conv = functools.partial(nn.Conv, self.features, (3, 3), padding="SAME", use_bias=False,
                                 dtype=self.dtype, kernel_init=_CONV_INIT)
        x = conv(strides=(2, 2), name="conv1")(x)
        x = nn.BatchNorm(use_running_average=not train, momentum=self.bn_momentum,
                         axis_name=self.bn_axis_name, name="norm1")(x)
        return conv(name="conv2")(nn.gelu(x))


def _check_config(widths: Sequence[int], blocks: Sequence[int], layout: str,
                  stage_strides: Sequence[int]) -> None:
    n = len(widths)
    if not (len(blocks) == len(layout) == len(stage_strides) == n) or n == 0:
        raise ValueError(f"model.widths={tuple(widths)}, model.blocks={tuple(blocks)}, "
                         f"model.layout={layout!r} and model.stage_strides="
                         f"{tuple(stage_strides)} must have one entry per stage; make their "
                         f"lengths equal")
    if not re.fullmatch(r"C+T*", layout):
        raise ValueError(f"model.layout={layout!r} is not convolution stages followed by "
                         f"attention stages; use e.g. 'CCTT' (default), 'CCCT' or 'CTTT'")
    if any(int(b) < 1 for b in blocks) or any(s not in (1, 2) for s in stage_strides):
        raise ValueError(f"model.blocks={tuple(blocks)} must be >= 1 and model.stage_strides="
                         f"{tuple(stage_strides)} each 1 or 2")


def Model(num_classes: int | None = 1000, *, variant: str | None = "coatnet-0",  # noqa: N802
          **kw: Any) -> nn.Module:
    """CoAtNet, e.g. `Model(1000, variant="coatnet-0")` (25.04M params at 224 px); `variant`
    sets stem_width / widths / blocks / representation_size, explicit keywords win."""
    args = {**decode_variant(variant), **kw}
    for key in ("widths", "blocks", "stage_strides"):
        if key in args:
            args[key] = tuple(int(v) for v in args[key])
    return _CoAtNet(num_classes=num_classes, **args)


def input_stride(model: nn.Module) -> tuple[int, int]:
    """(s, s): total stride 2 (stem) * prod(stage_strides), 32 by default. Image sides must
    be multiples of it."""
    s = 2 * int(np.prod(model.stage_strides))
    return s, s


def check_input(model_cfg: Mapping[str, Any], shape: Sequence[int]) -> None:
    """Check `config.model` and the image size (H, W, C) before any compile.

    Raises:
      ValueError: see `_CoAtNet` (naming model.variant / model.stage_strides and the fix).
    """
    args = {**decode_variant(model_cfg.get("variant", "coatnet-0")),
            **{k: model_cfg[k] for k in model_cfg.keys()}}
    strides = tuple(args.get("stage_strides", _CoAtNet.stage_strides))
    _check_config(tuple(args.get("widths", _CoAtNet.widths)),
                  tuple(args.get("blocks", _CoAtNet.blocks)), args.get("layout", "CCTT"), strides)
    s = 2 * int(np.prod(strides))
    h, w = shape[:2]
    if h % s or w % s:
        raise ValueError(f"CoAtNet's total stride {s} (model.stage_strides={strides}) does not "
                         f"divide the image size {h}x{w} made by input.pp; resize to a multiple "
                         f"of {s} or set model.stage_strides (e.g. (1, 2, 2, 2) for stride 16)")


# ------------------------------------------------------------------------------------------------
# Checkpoint surgery (this model's `load`).


def adapt_params(init_params: Mapping[str, Any], loaded: Mapping[str, Any], *,
                 dont_load: Sequence[str] = (), rel_table_method: str = "bilinear") -> Params:
    """Fine-tune surgery on checkpoint params `loaded`, strictly merged into `init_params`.

    * `pre_logits` / `head` dropped when the model has none; the head re-initialised to zeros
      when its shape differs (`resnet.adapt_head`).
    * every `.../attention/rel_table` (heads, 2H-1, 2W-1) of another size is resized to the
      model's grid with `resize_rel_table` (`rel_table_method`: "bilinear", "bicubic",
      "nearest").
    Everything else must match (`vitx.utils.tree.merge_params`; `dont_load` regexes fullmatch
    '/'-names). BatchNorm running statistics are not params: restore `batch_stats` separately
    (they do not depend on the resolution). Shapes: the result has init's structure, shapes and
    dtypes. Pure apart from logging.

    Source: CoAtNet Sec. 4.1 (fine-tuning at 384 / 512 px); ViT Sec. 3.2 (new zero head).

    Raises:
      ValueError: one error listing every param that cannot be loaded; an unknown method.
    """
    resize.check_method(rel_table_method)
    loaded = adapt_head(init_params, loaded, who="coatnet.load")

    def adapter(name: str, value: Any, ref: Any) -> Any:
        shape, ref_shape = tuple(np.shape(value)), tuple(np.shape(ref))
        if (name.endswith("attention/rel_table") and len(shape) == 3 and len(ref_shape) == 3
                and shape[0] == ref_shape[0] and all(v % 2 for v in shape[1:] + ref_shape[1:])):
            new_hw = ((ref_shape[1] + 1) // 2, (ref_shape[2] + 1) // 2)
            logger.info("coatnet.load: %s %s -> %s (%s)", name, shape, ref_shape,
                        rel_table_method)
            return resize_rel_table(value, new_hw, method=rel_table_method)
        return None

    return tree.merge_params(init_params, loaded, dont_load=dont_load, adapt=adapter)


def load(init_params: Any, init_file: str, model_cfg: Any = None, dont_load: Sequence[str] = (),
         **kw: Any) -> Params:
    """big_vision's `load(init_params, init_file, model_cfg, dont_load)` for CoAtNet.

    `init_file`: any checkpoint spec of `vitx.utils.checkpoints`; `kw`: `adapt_params`'s options
    (`rel_table_method`). Returns host numpy params of init's structure (params only; see
    `adapt_params` about `batch_stats`).

    Raises:
      FileNotFoundError / ValueError: from `checkpoints.load_params` and `adapt_params`.
    """
    del model_cfg
    loaded, _ = checkpoints.load_params(init_file)
    return adapt_params(jax.device_get(init_params), loaded, dont_load=dont_load, **kw)
