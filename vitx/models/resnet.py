"""BiT ResNets: the ResNet-v2 classifier, and the GroupNorm ResNet stem of the hybrid ViT.

Sources:
  * Kolesnikov et al., "Big Transfer (BiT): General Visual Representation Learning", ECCV 2020,
    Sec. 2.1 (upstream architecture): ResNet-v2 (pre-activation bottleneck units, He et al.
    ECCV 2016), every BatchNorm replaced by GroupNorm (Wu & He, ECCV 2018; 32 groups) and every
    convolution weight-standardised (Qiao et al. 2019), widths x1..x4; depths R26 (timm), R50,
    R101, R152.
  * Dosovitskiy et al., "An Image is Worth 16x16 Words", ICLR 2021, Sec. 3.1 "Hybrid
    Architecture": the ViT hybrids use a BiT-style ResNet whose stage outputs are
    cut into 1x1 patches. Their ResNet (google-research/vision_transformer,
    `vit_jax/models_resnet.py`, and big_vision `models/bit.py`) is *not* pre-activation: each
    unit is conv -> GN -> ReLU (x2) -> conv -> GN (zero-init scale) -> add -> ReLU, with a
    GN'd 1x1 projection shortcut, and the root is conv -> GN -> ReLU -> max-pool. `unit="post"`
    reproduces that structure and its parameter names exactly, so vit_jax's hybrid .npz files
    load by name.

Both unit types share the root block (7x7 stride-2 weight-standardised conv, 3x3 stride-2 max
pool), the stage layout (stage 1 stride 1, later stages stride 2; bottleneck width
64 * width * 2**i, output 4x that), "SAME" padding everywhere (as vit_jax) and vit_jax's param
names:

    conv_root/kernel (7, 7, C, w)              w = int(64 * width)
    gn_root/{scale, bias} (w,)                 # unit == "post" only
    block{s}/unit{u}/conv1/kernel (1, 1, Cin, m)      s, u from 1; m = w * 2**(s-1)
    block{s}/unit{u}/gn1/{scale, bias}                # preact: (Cin,) before conv1, else (m,)
    block{s}/unit{u}/conv2/kernel (3, 3, m, m), gn2/..., conv3/kernel (1, 1, m, 4m), gn3/...
    block{s}/unit1/conv_proj/kernel (1, 1, Cin, 4m)   # first unit of a stage
    block{s}/unit1/gn_proj/{scale, bias} (4m,)        # unit == "post" only
    gn_pre_head/{scale, bias}                         # classifier, unit == "preact" only
    head/{kernel (4m, num_classes), bias}             # classifier only

Pre-activation units (BiT-v2, `unit="preact"`) put gn1 before conv1 (on the unit input), gn2
before conv2 and gn3 before conv3; the projection shortcut takes the normalised input
(big_vision `models/bit_paper.py`). There is no BatchNorm anywhere: the models have params only,
no `batch_stats`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vitx.models import surgery
from vitx.utils import checkpoints, tree

Array = jax.Array
Params = dict[str, Any]

#: depth -> bottleneck units per stage (BiT paper; R26 from timm, as big_vision `bit.py`).
DEPTHS = {26: (2, 2, 2, 2), 50: (3, 4, 6, 3), 101: (3, 4, 23, 3), 152: (3, 8, 36, 3)}
UNIT_TYPES = ("preact", "post")


def decode_variant(variant: str | None) -> dict[str, Any]:
    """'R50x1' -> dict(blocks=(3, 4, 6, 3), width=1.0); 'R26x0.25', 'R101x3', 'R50' (x1).

    Raises:
      ValueError: a malformed name or an unknown depth (the message lists the known ones).
    """
    if variant is None:
        return {}
    m = re.fullmatch(r"R(?P<d>\d+)(?:x(?P<w>\d+(?:\.\d+)?))?", variant)
    if not m or int(m["d"]) not in DEPTHS:
        raise ValueError(f"model.variant={variant!r} is unknown; use 'R<depth>x<width>' with "
                         f"depth in {sorted(DEPTHS)} (e.g. 'R50x1', 'R26x0.25')")
    return dict(blocks=DEPTHS[int(m["d"])], width=float(m["w"] or 1))


def weight_standardize(w: Array, axis: Sequence[int], eps: float) -> Array:
    """(w - mean) / (std + eps) over `axis` (kernel (kh, kw, Cin, Cout): axis (0, 1, 2)).

    Source: Qiao et al. 2019, "Weight Standardization"; vit_jax `models_resnet.py` (eps 1e-5
    added to the std, as there).
    """
    w = w - jnp.mean(w, axis=axis)
    return w / (jnp.std(w, axis=axis) + eps)


class StdConv(nn.Conv):
    """`nn.Conv` whose kernel is weight-standardised over (kh, kw, Cin) at every call.

    Params and names as `nn.Conv` (`kernel` stored un-standardised). Source: BiT Sec. 2.
    """

    def param(self, name: str, init_fn: Any, *init_args: Any, **init_kw: Any) -> Any:
        p = super().param(name, init_fn, *init_args, **init_kw)
        if name == "kernel":
            p = weight_standardize(p, axis=(0, 1, 2), eps=1e-5)
        return p


class PostNormUnit(nn.Module):
    """vit_jax's bottleneck unit (post-norm, GN). (B, H, W, Cin) -> (B, H/s, W/s, 4 * features).

    y = ReLU(GN(conv1x1)) -> ReLU(GN(conv3x3, stride s)) -> GN(conv1x1) (scale zero-init);
    out = ReLU(shortcut + y), shortcut = GN(conv1x1 stride s)(x) when Cin != 4 * features or
    s != 1, else x. Source: vit_jax `models_resnet.ResidualUnit`.
    """

    features: int
    strides: tuple[int, int] = (1, 1)
    gn_groups: int = 32
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        nout = 4 * self.features
        gn = lambda name, **kw: nn.GroupNorm(num_groups=self.gn_groups, name=name, **kw)
        conv = lambda f, k, name, s=(1, 1): StdConv(f, k, s, use_bias=False, name=name,
                                                     dtype=self.dtype)
        residual = x
        if x.shape[-1] != nout or tuple(self.strides) != (1, 1):
            residual = gn("gn_proj")(conv(nout, (1, 1), "conv_proj", self.strides)(x))
        y = nn.relu(gn("gn1")(conv(self.features, (1, 1), "conv1")(x)))
        y = nn.relu(gn("gn2")(conv(self.features, (3, 3), "conv2", self.strides)(y)))
        y = gn("gn3", scale_init=nn.initializers.zeros)(conv(nout, (1, 1), "conv3")(y))
        return nn.relu(residual + y)


class PreActUnit(nn.Module):
    """BiT-v2 pre-activation bottleneck unit. (B, H, W, Cin) -> (B, H/s, W/s, 4 * features).

    a = ReLU(GN(x)); y = conv1x1(a) -> ReLU(GN) -> conv3x3 (stride s) -> ReLU(GN) -> conv1x1;
    out = shortcut + y, shortcut = conv1x1 stride s (a) when Cin != 4 * features or s != 1,
    else x. Source: He et al., "Identity Mappings in Deep Residual Networks", ECCV 2016, Fig. 4e;
    BiT Sec. 2; big_vision `models/bit_paper.py`.
    """

    features: int
    strides: tuple[int, int] = (1, 1)
    gn_groups: int = 32
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        nout = 4 * self.features
        gn = lambda name: nn.GroupNorm(num_groups=self.gn_groups, name=name)
        conv = lambda f, k, name, s=(1, 1): StdConv(f, k, s, use_bias=False, name=name,
                                                     dtype=self.dtype)
        residual = x
        x = nn.relu(gn("gn1")(x))
        if x.shape[-1] != nout or tuple(self.strides) != (1, 1):
            residual = conv(nout, (1, 1), "conv_proj", self.strides)(x)
        y = conv(self.features, (1, 1), "conv1")(x)
        y = conv(self.features, (3, 3), "conv2", self.strides)(nn.relu(gn("gn2")(y)))
        y = conv(nout, (1, 1), "conv3")(nn.relu(gn("gn3")(y)))
        return residual + y


def _check(blocks: Sequence[int], width: float, unit: str, gn_groups: int) -> int:
    """Root width int(64 * width), after validating the ResNet config (named config keys)."""
    if unit not in UNIT_TYPES:
        raise ValueError(f"model.unit={unit!r} is unknown; use one of {UNIT_TYPES}")
    if any(int(b) < 1 for b in blocks) or len(blocks) > 8:
        raise ValueError(f"model.blocks={tuple(blocks)} must be up to 8 positive unit counts "
                         f"per stage, e.g. (3, 4, 6, 3)")
    w = int(64 * width)
    if w < 1 or gn_groups < 1 or w % gn_groups:
        raise ValueError(f"root width int(64 * width)={w} (width={width}) is not a positive "
                         f"multiple of model.gn_groups={gn_groups}; choose a width whose root "
                         f"width is divisible by gn_groups (or lower gn_groups)")
    return w



class ResNetStage(nn.Module):
    """One stage `block{s}`: units `unit1..unitN`, the first with stride `first_stride`.

    (B, H, W, Cin) -> (B, H/s, W/s, 4 * features). Source: vit_jax `models_resnet.ResNetStage`.
    """

    block_size: int
    features: int
    first_stride: tuple[int, int] = (1, 1)
    unit: str = "post"
    gn_groups: int = 32
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        unit_cls = PostNormUnit if self.unit == "post" else PreActUnit
        for u in range(self.block_size):
            x = unit_cls(self.features, tuple(self.first_stride) if u == 0 else (1, 1),
                         self.gn_groups, self.dtype, name=f"unit{u + 1}")(x)
        return x


def stem_stride(blocks: Sequence[int]) -> int:
    """Total stride of root + stages: 4 (root) * 2 per stage after the first."""
    return 4 * 2 ** max(len(blocks) - 1, 0)


def bit_features(x: Array, *, blocks: Sequence[int], width: float = 1.0, unit: str = "post",
                 gn_groups: int = 32, dtype: Any = jnp.float32,
                 out: dict[str, Array] | None = None) -> Array:
    """Root block + stages, built as submodules of the *calling* module (call it from a compact
    method), so their names are top-level in the caller's tree as in vit_jax's hybrid.

    Shapes: images (B, H, W, C) -> feature map (B, H/S, W/S, 4 * w * 2**(n-1)) with S =
    `stem_stride(blocks)` ("SAME" padding: sizes are ceil-divided), w = int(64 * width),
    n = len(blocks); with no blocks, the root output (B, H/4, W/4, w). `out`, if given, receives
    "root" (after the 7x7 conv, H/2), "stem" (after the max pool, H/4) and "stage{s}" maps.

    Source: vit_jax `models_vit.VisionTransformer` (hybrid root + `ResNetStage`s); BiT Sec. 2.

    Raises:
      ValueError: unknown `unit`, bad `blocks`, or a root width not divisible by `gn_groups`.
    """
    w = _check(blocks, width, unit, gn_groups)
    out = {} if out is None else out
    x = StdConv(w, (7, 7), (2, 2), use_bias=False, name="conv_root", dtype=dtype)(x)
    out["root"] = x
    if unit == "post":  # BiT-v2 normalises in the first unit instead (pre-activation).
        x = nn.relu(nn.GroupNorm(num_groups=gn_groups, name="gn_root")(x))
    x = nn.max_pool(x, (3, 3), strides=(2, 2), padding="SAME")
    out["stem"] = x
    for s, n_units in enumerate(blocks):
        x = ResNetStage(int(n_units), w * 2**s, (1, 1) if s == 0 else (2, 2), unit, gn_groups,
                        dtype, name=f"block{s + 1}")(x)
        out[f"stage{s + 1}"] = x
    return x


class _ResNet(nn.Module):
    """BiT ResNet classifier. Images (B, H, W, C) -> (logits (B, num_classes), aux dict).

    Fields: `blocks` (units per stage), `width` (multiplier of the 64-channel root), `unit`
    ("preact": BiT-v2, the default; "post": vit_jax / big_vision `bit.py` ResNet-v1.5 with GN),
    `gn_groups` (32 in BiT), `head_zeroinit`, `dtype_mm` (conv compute dtype; params f32).

    aux: "root" (B, H/2, W/2, w), "stem" (B, H/4, W/4, w), "stage{s}" (B, H/S_s, W/S_s, C_s),
    "feature_map" (last stage output), "pre_logits_2d" (after the pre-head GN + ReLU of
    "preact"), "pre_logits" (B, C) (global average pool), "logits" (with num_classes).
    `train` is accepted for a uniform signature; GroupNorm has no train/eval difference.

    Source: BiT, ECCV 2020, Sec. 2.1 (GN + WS); big_vision `models/bit_paper.py` (pre-head
    GN + ReLU, GAP, `head_zeroinit`).
    """

    num_classes: int | None = 1000
    blocks: Sequence[int] = (3, 4, 6, 3)
    width: float = 1.0
    unit: str = "preact"
    gn_groups: int = 32
    head_zeroinit: bool = True
    dtype_mm: str = "float32"

    @nn.compact
    def __call__(self, x: Array, *, train: bool = False) -> tuple[Array, dict[str, Array]]:
        del train
        out: dict[str, Array] = {}
        x = bit_features(x, blocks=self.blocks, width=self.width, unit=self.unit,
                         gn_groups=self.gn_groups, dtype=jnp.dtype(self.dtype_mm), out=out)
        out["feature_map"] = x
        if self.unit == "preact":
            x = nn.relu(nn.GroupNorm(num_groups=self.gn_groups, name="gn_pre_head")(x))
        out["pre_logits_2d"] = x
        x = out["pre_logits"] = jnp.mean(x, axis=(1, 2))
        if self.num_classes:
            init = nn.initializers.zeros if self.head_zeroinit else nn.initializers.lecun_normal()
            x = out["logits"] = nn.Dense(self.num_classes, kernel_init=init, name="head")(x)
        return x, out


def Model(num_classes: int | None = 1000, *, variant: str | None = "R50x1",  # noqa: N802
          **kw: Any) -> nn.Module:
    """BiT ResNet, e.g. `Model(1000, variant="R50x1")` (25.55M params, BiT-v2);
    `variant` ("R<depth>x<width>") sets `blocks` and `width`; explicit keywords win."""
    args = {**decode_variant(variant), **kw}
    if "blocks" in args:
        args["blocks"] = tuple(int(b) for b in args["blocks"])
    return _ResNet(num_classes=num_classes, **args)


def input_stride(model: nn.Module) -> tuple[int, int]:
    """(sh, sw) total stride of the feature map: 4 * 2**(stages - 1), e.g. 32 for R50.

    Any image size runs ("SAME" padding, global pool); sizes divisible by this avoid padding.
    """
    s = stem_stride(model.blocks)
    return s, s


def check_input(model_cfg: Mapping[str, Any], shape: Sequence[int]) -> None:
    """Validate `config.model` before any compile (the image (H, W, C) needs no divisibility).

    Raises:
      ValueError: unknown model.variant / model.unit, bad model.blocks, a width not divisible
        by model.gn_groups; naming the key and the fix.
    """
    del shape
    args = {**decode_variant(model_cfg.get("variant")), **{
        k: model_cfg[k] for k in ("blocks", "width", "unit", "gn_groups") if k in model_cfg}}
    _check(tuple(args.get("blocks", DEPTHS[50])), float(args.get("width", 1.0)),
           args.get("unit", "preact"), int(args.get("gn_groups", 32)))


# ------------------------------------------------------------------------------------------------
# Checkpoint surgery (this model's `load`).


_GN_RE = re.compile(r"(.*/)?gn(\d+|_root|_proj|_pre_head)/(scale|bias)")


def squeeze_groupnorm(name: str, value: Any, ref: Any) -> Any:
    """`tree.merge_params` adapter: GroupNorm scale/bias stored (1, 1, 1, C) by pre-linen flax
    (vit_jax's released hybrid .npz, old big_vision BiT files) -> (C,). None otherwise.

    Source: vit_jax `checkpoint._fix_groupnorm` (flax issue #1721).
    """
    if _GN_RE.fullmatch(name) and np.size(value) == np.size(ref) and np.ndim(ref) == 1:
        return np.reshape(np.asarray(value), np.shape(ref))
    return None


def adapt_params(init_params: Mapping[str, Any], loaded: Mapping[str, Any], *,
                 dont_load: Sequence[str] = ()) -> Params:
    """Fine-tune surgery on checkpoint params `loaded`, strictly merged into `init_params`.

    `surgery.adapt_head` (drop / zero-reinit the head), GroupNorm params of shape (1, 1, 1, C)
    squeezed to (C,); everything else must match (`vitx.utils.tree.merge_params`, `dont_load`
    regexes fullmatch '/'-names). Shapes: the result has init's structure, shapes and dtypes. Pure.

    Raises:
      ValueError: one error listing every param that cannot be loaded (missing, unexpected or
        shape-mismatched); add them to model_load.dont_load or fix the model config.
    """
    loaded = surgery.adapt_head(init_params, loaded, who="resnet.load")
    return tree.merge_params(init_params, loaded, dont_load=dont_load, adapt=squeeze_groupnorm)


def load(init_params: Any, init_file: str, model_cfg: Any = None, dont_load: Sequence[str] = (),
         **kw: Any) -> Params:
    """big_vision's `load(init_params, init_file, model_cfg, dont_load)` for the BiT ResNet.

    `init_file` is any checkpoint spec of `vitx.utils.checkpoints` (workdir, step dir, .npz,
    `:subtree`). Returns host numpy params of init's structure (see `adapt_params`).

    Raises:
      FileNotFoundError / ValueError: from `checkpoints.load_params` and `adapt_params`.
    """
    del model_cfg
    if kw:
        raise ValueError(f"model_load options {sorted(kw)} are not used by the ResNet; remove "
                         f"them (only dont_load applies)")
    loaded, _ = checkpoints.load_params(init_file)
    return adapt_params(jax.device_get(init_params), loaded, dont_load=dont_load)
