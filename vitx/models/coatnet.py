"""CoAtNet: convolution stages (MBConv) followed by relative-attention Transformer stages.

Source: Dai, Liu, Le, Tan, "CoAtNet: Marrying Convolution and Attention for All Data Sizes",
NeurIPS 2021 (arXiv 2106.04803); CN117377983A. Where the paper leaves a detail open,
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

Parameter tree:

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

import dataclasses
import functools
import logging
import re
from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vitx.models import layers, resize, surgery
from vitx.models.relative import RelativeAttention, resize_rel_table
from vitx.utils import checkpoints, tree

Array = jax.Array
Params = dict[str, Any]
logger = logging.getLogger(__name__)

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


@dataclasses.dataclass(frozen=True)
class CoAtNetCfg:
    """The stage layout of a CoAtNet (`config.model`), checked once before any compile.

    Fields (paper Sec. 2.2 and Table 3; one entry per stage S1..S4): `widths` (D1..D4),
    `blocks` (L1..L4, each >= 1), `layout` (one "C" (MBConv) or "T" (relative-attention
    Transformer) per stage, convolutions first: "CCTT" default, "CCCT", "CTTT", "CCCC"),
    `stage_strides` (each 1 or 2; 2 halves the resolution in the stage's first block). The
    defaults are CoAtNet-0's. `from_config` expands `model.variant` (default "coatnet-0"); keys
    set in `config.model` win. In the style of timm's `MaxxVitCfg`.

    Raises:
      ValueError: lists of different lengths (or none), a layout that is not convolution stages
        followed by attention stages, a block count < 1 or a stride other than 1 / 2; naming
        the `model.` keys and the fix.
    """

    widths: tuple[int, ...] = (96, 192, 384, 768)
    blocks: tuple[int, ...] = (2, 3, 5, 2)
    layout: str = "CCTT"
    stage_strides: tuple[int, ...] = (2, 2, 2, 2)

    def __post_init__(self) -> None:
        for key in ("widths", "blocks", "stage_strides"):
            object.__setattr__(self, key, tuple(getattr(self, key)))
        widths, blocks, layout, strides = self.widths, self.blocks, self.layout, self.stage_strides
        n = len(widths)
        if not (len(blocks) == len(layout) == len(strides) == n) or n == 0:
            raise ValueError(f"model.widths={widths}, model.blocks={blocks}, model.layout="
                             f"{layout!r} and model.stage_strides={strides} must have one "
                             f"entry per stage; make their lengths equal")
        if not re.fullmatch(r"C+T*", layout):
            raise ValueError(f"model.layout={layout!r} is not convolution stages followed by "
                             f"attention stages; use e.g. 'CCTT' (default), 'CCCT' or 'CTTT'")
        if any(int(b) < 1 for b in blocks) or any(s not in (1, 2) for s in strides):
            raise ValueError(f"model.blocks={blocks} must be >= 1 and model.stage_strides="
                             f"{strides} each 1 or 2")

    @classmethod
    def from_config(cls, model_cfg: Mapping[str, Any]) -> CoAtNetCfg:
        """The schema of `config.model` (a mapping; `variant` and explicit keys).

        Raises:
          ValueError: an unknown `model.variant` (`decode_variant`), or see the class.
        """
        args = {**decode_variant(model_cfg.get("variant", "coatnet-0")),
                **{k: model_cfg[k] for k in model_cfg.keys()}}
        return cls(**{f.name: args[f.name] for f in dataclasses.fields(cls) if f.name in args})

    @property
    def stride(self) -> int:
        """Total stride: 2 (stem) * prod(stage_strides), 32 by default."""
        return 2 * int(np.prod(self.stage_strides))


# ------------------------------------------------------------------------------------------------
# Blocks.


def _avg_pool(x: Array, stride: int) -> Array:
    return x if stride == 1 else nn.avg_pool(x, (stride, stride), (stride, stride), "VALID")


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
        se_width = max(1, int(self.features * self.se_ratio))
        y = layers.SqueezeExcite(se_width, self.dtype, name="se")(y)
        y = conv(self.features, (1, 1), name="shrink_conv")(y)
        return shortcut + layers.drop_path(y, self.drop_path, train)


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
        x = shortcut + layers.drop_path(jnp.reshape(y, (b, h, w, self.features)),
                                        self.drop_path, train)
        y = nn.LayerNorm(name="mlp_norm")(x)
        y = layers.MlpBlock(mlp_dim=self.mlp_ratio * self.features, dtype_mm=self.dtype,
                            name="mlp")(y, train=train)
        return x + layers.drop_path(y, self.drop_path, train)


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

    aux: "stem" (B, H/2, W/2, D0), "stage{s}" (B, H/S_s, W/S_s, D_s), "token_map" (= the last
    stage's, (B, H/S, W/S, D4), the input of dense heads), "pre_logits" (B, D4 or
    representation_size), "logits" (with num_classes).

    Source: CoAtNet, NeurIPS 2021, Sec. 2.2; Sec. 4.1, Table 3.

    Raises:
      ValueError: inconsistent stage lists or a bad layout (`CoAtNetCfg`), H or W not
        divisible by the total stride (`input_stride`), widths not divisible by head_size;
        naming the config key.
    """

    num_classes: int | None = 1000
    stem_width: int = 64
    widths: Sequence[int] = CoAtNetCfg.widths
    blocks: Sequence[int] = CoAtNetCfg.blocks
    layout: str = CoAtNetCfg.layout
    stage_strides: Sequence[int] = CoAtNetCfg.stage_strides
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
        CoAtNetCfg(self.widths, self.blocks, self.layout, self.stage_strides)  # checks
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
        out["token_map"] = x  # (B, h, w, D4): the last stage's tokens, for dense heads
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
    """Check `config.model` (`CoAtNetCfg`) and the image size (H, W, C) before any compile.

    Raises:
      ValueError: see `CoAtNetCfg`; the total stride does not divide H or W (naming
        model.stage_strides and the fix).
    """
    cfg = CoAtNetCfg.from_config(model_cfg)
    s, strides = cfg.stride, cfg.stage_strides
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
      when its shape differs (`surgery.adapt_head`).
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
    loaded = surgery.adapt_head(init_params, loaded, who="coatnet.load")

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
