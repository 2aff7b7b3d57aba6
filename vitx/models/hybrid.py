"""Hybrid ViT: a BiT ResNet stem whose feature map is cut into (1x1) patches for the ViT.

Source: Dosovitskiy et al., "An Image is Worth 16x16 Words", ICLR 2021, Sec. 3.1 "Hybrid
Architecture" (the input sequence is formed from a CNN feature map; patches may have spatial
size 1x1); JP7536893B2, "hybrid stem".
Structure and parameter names: google-research/vision_transformer, `vit_jax/models_vit.py`
(`VisionTransformer` with `resnet`) and `vit_jax/configs/models.py` (`R50+ViT-B_16`: R50 with
stages (3, 4, 9) and 1x1 patches; `R26+ViT-S_32` / `R26+ViT-B_32`: (2, 2, 2, 2); `R50+ViT-L_32`:
(3, 4, 6, 3)).

The ResNet is vit_jax's (post-norm GroupNorm bottleneck units, weight-standardised convs; see
`vitx.models.resnet`, `unit="post"`), built by `resnet.bit_features` *at the top level* of the
param tree as vit_jax does, so a vit_jax hybrid .npz loads by name:

    conv_root/kernel (7, 7, C, w), gn_root/{scale, bias}       w = int(64 * resnet_width)
    block{s}/unit{u}/{conv1, gn1, conv2, gn2, conv3, gn3, conv_proj, gn_proj}/...
    embedding/{kernel (p, p, C_feat, D), bias}                 # p = patch_size on the features
    cls, pos_embedding (1, N, D), Transformer/..., head/...    # as `vitx.models.vit`

Variant names: "R50+B/16" = ResNet depth 50 + ViT-B, *effective* patch 16 (= stem stride x patch
size). The stem takes as many stages as fit the effective patch (stride 4 * 2**(n-1) for n
stages, at most 4) and folds the units of the dropped stages into its last stage, exactly the
vit_jax rule: R50 (3, 4, 6, 3) -> (3, 4, 9) at /16. Also "R26x0.25+pico/16" (ResNet width
x0.25) and vit_jax's spelling "R50+ViT-B_16".
"""

from __future__ import annotations

import dataclasses
import logging
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import numpy as np

from vitx.models import layers, resnet, vit
from vitx.utils import checkpoints, pair, tree

Array = jax.Array
Params = dict[str, Any]
logger = logging.getLogger(__name__)

_VARIANT_RE = re.compile(r"R(?P<d>\d+)(?:x(?P<w>\d+(?:\.\d+)?))?\+(?:ViT-)?(?P<v>[A-Za-z0-9]+)"
                         r"[/_](?P<p>\d+)")


def decode_variant(variant: str | None) -> dict[str, Any]:
    """'R50+B/16' -> ViT-B widths + resnet_blocks=(3, 4, 9), resnet_width=1.0, patch_size=(1, 1).

    The effective patch P (a power of two >= 4) sets the stem: n = min(4, log2(P) - 1) stages
    (stride 4 * 2**(n-1)), the depth's units folded into n stages (R50 at /16: (3, 4, 9)), and
    patch_size = P / stride on the feature map (1 unless P > 32).

    Raises:
      ValueError: a malformed name, an unknown depth or ViT size, or a bad effective patch.
    """
    if variant is None:
        return {}
    m = _VARIANT_RE.fullmatch(variant)
    if not m or int(m["d"]) not in resnet.DEPTHS or m["v"] not in vit.WIDTHS:
        raise ValueError(f"model.variant={variant!r} is unknown; use 'R<depth>[x<width>]+<vit "
                         f"size>/<effective patch>' with depth in {sorted(resnet.DEPTHS)} and "
                         f"size in {list(vit.WIDTHS)} (e.g. 'R50+B/16', 'R26x0.25+pico/16')")
    eff = int(m["p"])
    if eff < 4 or eff & (eff - 1):
        raise ValueError(f"model.variant={variant!r}: the effective patch {eff} must be a power "
                         f"of two >= 4 (the ResNet root alone has stride 4), e.g. 16 or 32")
    n = min(4, int(math.log2(eff)) - 1)
    units = resnet.DEPTHS[int(m["d"])]
    blocks = (*units[:n - 1], sum(units[n - 1:]))
    p = eff // resnet.stem_stride(blocks)
    out = vit.decode_variant(m["v"])
    out.update(resnet_blocks=blocks, resnet_width=float(m["w"] or 1), patch_size=(p, p))
    return out


@dataclasses.dataclass(frozen=True)
class HybridCfg:
    """The stem layout of a hybrid ViT (`config.model`), parsed once before any compile.

    Fields: `variant` (`model.variant` as configured, for messages), `resnet_blocks` (units per
    ResNet stage; () = root only; default R50's (3, 4, 9) at /16), `patch_size` ((ph, pw) on the
    ResNet feature map, default 1x1). `from_config` expands `model.variant` ("R50+B/16"); keys
    set in `config.model` win. In the style of timm's `MaxxVitCfg`.

    Source: ViT paper Sec. 3.1 "Hybrid Architecture"; vit_jax `configs/models.py`.

    Raises:
      ValueError: `patch_size` not a positive int / pair (naming model.patch_size).
    """

    variant: str | None = None
    resnet_blocks: tuple[int, ...] = (3, 4, 9)
    patch_size: tuple[int, int] = (1, 1)

    def __post_init__(self) -> None:
        object.__setattr__(self, "resnet_blocks", tuple(self.resnet_blocks))
        object.__setattr__(self, "patch_size", pair(self.patch_size, "model.patch_size"))

    @classmethod
    def from_config(cls, model_cfg: Mapping[str, Any]) -> HybridCfg:
        """The schema of `config.model` (a mapping; `variant` and explicit keys).

        Raises:
          ValueError: an unknown `model.variant` (`decode_variant`), or see the class.
        """
        keys = ("resnet_blocks", "patch_size")
        variant = model_cfg.get("variant")
        args = {**decode_variant(variant), **{k: model_cfg[k] for k in keys if k in model_cfg}}
        return cls(variant=variant, **{k: args[k] for k in keys if k in args})


class _HybridViT(vit.VisionTransformer):
    """Hybrid ViT. Images (B, H, W, C) in [-1, 1] -> (logits (B, num_classes), aux dict).

    Fields (besides the ViT's): `resnet_blocks` (units per ResNet stage; () = root only),
    `resnet_width` (multiplier of the 64-channel root), `gn_groups` (GroupNorm groups, 32 as in
    vit_jax); `patch_size` (default 1x1) applies to the feature map (B, H/S, W/S, C_feat),
    S = `resnet.stem_stride(resnet_blocks)`, giving N = (H / (S p)) * (W / (S p)) tokens.
    aux as the ViT's ("encoded", "pre_logits", "logits").

    Source: ViT paper Sec. 3.1 "Hybrid Architecture"; vit_jax `models_vit.VisionTransformer`.

    Raises:
      ValueError: H or W not divisible by the effective stride S * p (`input_stride`); the
        ResNet config errors of `resnet.bit_features`; the ViT's errors.
    """

    patch_size: Sequence[int] = HybridCfg.patch_size
    resnet_blocks: Sequence[int] = HybridCfg.resnet_blocks
    resnet_width: float = 1.0
    gn_groups: int = 32

    def embed_patches(self, x: Array, **kw: Any) -> Array:
        """(B, H, W, C) -> ResNet features (B, H/S, W/S, C_feat) -> (B, H/(S p), W/(S p), D)."""
        sh, sw = input_stride(self)
        h, w = x.shape[1:3]
        if h % sh or w % sw:
            raise ValueError(f"the hybrid's effective patch {sh}x{sw} (ResNet stride "
                             f"{resnet.stem_stride(self.resnet_blocks)} x model.patch_size="
                             f"{tuple(self.patch_size)}) does not divide the image size {h}x{w}; "
                             f"resize the images to a multiple of it or change model.variant")
        x = resnet.bit_features(x, blocks=self.resnet_blocks, width=self.resnet_width,
                                unit="post", gn_groups=self.gn_groups,
                                dtype=layers.dtype_of(self.dtype_mm))
        return super().embed_patches(x, **kw)


def Model(num_classes: int | None = 1000, *, variant: str | None = None, **kw: Any) -> nn.Module:  # noqa: N802
    """Hybrid ViT, e.g. `Model(1000, variant="R50+B/16")`: 98,950,184 params at 384 px (vit_jax
    and timm: 98.95M, with a cls posemb slot vitx does not store: 768 more); explicit keywords
    (`resnet_blocks`, `resnet_width`, `gn_groups`, ViT fields) win over the variant."""
    args = {**decode_variant(variant), **kw}
    if "resnet_blocks" in args:
        args["resnet_blocks"] = tuple(int(b) for b in args["resnet_blocks"])
    if "patch_size" in args:
        args["patch_size"] = pair(args["patch_size"], "model.patch_size")
    return _HybridViT(num_classes=num_classes, **args)


def input_stride(model: nn.Module) -> tuple[int, int]:
    """(sh, sw): the effective patch = ResNet stem stride x patch size, e.g. (16, 16) for
    R50+B/16. Image sides must be multiples of it; tokens = (H/sh) * (W/sw)."""
    s = resnet.stem_stride(model.resnet_blocks)
    ph, pw = pair(model.patch_size, "model.patch_size")
    return s * ph, s * pw


def check_input(model_cfg: Mapping[str, Any], shape: Sequence[int]) -> None:
    """Check, before any compile, that the effective patch (ResNet stem stride x patch size of
    `HybridCfg`) divides the image (H, W, C).

    `model_cfg` is `config.model` (`variant` and/or `resnet_blocks`, `patch_size`).

    Raises:
      ValueError: naming model.variant / model.patch_size, the image size and the stride; or
        see `HybridCfg`.
    """
    cfg = HybridCfg.from_config(model_cfg)
    s, (ph, pw) = resnet.stem_stride(cfg.resnet_blocks), cfg.patch_size
    h, w = shape[:2]
    if h % (s * ph) or w % (s * pw):
        raise ValueError(f"the hybrid's effective patch {s * ph}x{s * pw} (ResNet stride {s} x "
                         f"model.patch_size={ph}x{pw}; model.variant={cfg.variant!r}) does not "
                         f"divide the image size {h}x{w} made by input.pp; resize to a multiple "
                         f"of it or change the variant")


# ------------------------------------------------------------------------------------------------
# Checkpoint surgery (this model's `load`).


def adapt_params(init_params: Mapping[str, Any], loaded: Mapping[str, Any], *,
                 dont_load: Sequence[str] = (), **kw: Any) -> Params:
    """Fine-tune surgery on checkpoint params `loaded` (vitx layout), merged into `init_params`.

    GroupNorm scale/bias stored (1, 1, 1, C) by pre-linen flax (vit_jax's released hybrid
    files) are squeezed to (C,); then the ViT's surgery (`vit.adapt_params`: scan layout,
    head drop / zero-reinit, pos_embedding resize to the new token grid, patch-kernel
    PI-resize) and its strict merge. `kw` are `vit.adapt_params`'s options (`posemb_method`,
    `old_grid`, `new_grid`, `patch_method`). A vit_jax-layout dict must be converted first
    (`vitx.utils.npz.from_vit_jax`; `load` does it through `checkpoints.load_params`).

    Source: ViT paper Sec. 3.2 (fine-tuning at higher resolution); vit_jax
    `checkpoint._fix_groupnorm`.

    Raises:
      ValueError: one error listing every param that cannot be loaded; errors of
        `vit.adapt_params`.
    """
    init_flat = tree.flat_leaves(init_params)
    flat = dict(tree.flat_leaves(loaded))
    for name, value in flat.items():
        if name in init_flat and np.shape(value) != np.shape(init_flat[name]):
            fixed = resnet.squeeze_groupnorm(name, value, init_flat[name])
            if fixed is not None:
                flat[name] = fixed
    return vit.adapt_params(init_params, tree.unflatten(flat), dont_load=dont_load, **kw)


def load(init_params: Any, init_file: str, model_cfg: Any = None, dont_load: Sequence[str] = (),
         **kw: Any) -> Params:
    """big_vision's `load(init_params, init_file, model_cfg, dont_load)` for the hybrid ViT.

    `init_file` is any checkpoint spec of `vitx.utils.checkpoints` (a vitx workdir or step dir,
    a vitx / vit_jax / big_vision .npz, `:subtree`); the .npz layout is detected there (vit_jax:
    block renames, cls posemb folded into `cls`; the ResNet names pass through). `kw`:
    `adapt_params`'s options (`config.model_load`). Returns host numpy params of init's
    structure.

    Raises:
      FileNotFoundError / ValueError: from `checkpoints.load_params` and `adapt_params`.
    """
    del model_cfg
    loaded, _ = checkpoints.load_params(init_file)
    return adapt_params(jax.device_get(init_params), loaded, dont_load=dont_load, **kw)
