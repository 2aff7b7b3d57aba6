"""PolyViT checkpoint surgery (this model's `load`): a ViT or PolyViT checkpoint -> this init.

Sources: PolyViT (Likhosherstov et al., TMLR 2023), method section (initialisation from an
ImageNet ViT: shared encoder and 2D tokenizers copied, video tubelets inflated, posembs resized
/ tiled over time); Arnab et al., "ViViT", ICCV 2021, Sec. 3.4 (filter inflation, central-frame
initialisation); scenic's `projects/polyvit` (PolyViT paper, Sec. 3.3: modality layers
initialised from the first ViT blocks, central-frame inflation by default).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from vitx.models import resize
from vitx.models.polyvit.config import Modality
from vitx.utils import checkpoints, npz, to_plain, tree

__all__ = ["INFLATIONS", "adapt_params", "load"]

Params = dict[str, Any]

logger = logging.getLogger(__name__)

#: Tubelet kernel inflations (ViViT Sec. 3.4): `model_load.inflation`.
INFLATIONS = ("central", "average")


def _adapt_channels(kernel: Any, channels: int, name: str) -> Any:
    """(P, P, C0, D) -> (P, P, C, D): C == 1 sums over C0 (a gray input replicated to C0
    channels gives the same tokens); C0 == 1 repeats kernel / C (a replicated gray input gives
    the same tokens)."""
    c0 = kernel.shape[2]
    if c0 == channels:
        return kernel
    if channels == 1:
        logger.info("polyvit.load: %s input channels %d -> 1 (sum)", name, c0)
        return jnp.sum(kernel, axis=2, keepdims=True)
    if c0 == 1:
        logger.info("polyvit.load: %s input channels 1 -> %d (repeat / %d)", name, channels,
                    channels)
        return jnp.tile(kernel, (1, 1, channels, 1)) / channels
    raise ValueError(f"polyvit.load: {name} has {channels} input channels, the checkpoint {c0}; "
                     f"only C -> 1 (sum) and 1 -> C are adapted: add it to model_load.dont_load "
                     f"or fix input_shape")


def _from_vit(init: Mapping[str, Any], vit_params: Mapping[str, Any], *,
              modalities: Sequence[Modality], num_modality_layers: int,
              skip: Any, inflation: str, posemb_method: str, patch_method: str,
              old_grid: Sequence[int] | None) -> Params:
    """A plain ViT (vitx layout) -> a PolyViT tree of init's names (values not yet merged)."""
    src = npz.unstack_blocks(vit_params)
    vit_flat = tree.flat_leaves({k: v for k, v in src.items()
                                 if k not in ("head", "pre_logits", "Transformer")})
    for k in ("head", "pre_logits"):
        if k in src:
            logger.info("polyvit.load: dropping the checkpoint's %s (heads stay at init)", k)
    t = src.get("Transformer") or {}
    blocks = sorted((int(m[1]), v) for b, v in t.items()
                    if (m := re.fullmatch(r"encoderblock_(\d+)", b)))
    out: dict[str, Any] = {}
    init_flat = tree.flat_leaves(init)
    # Depth: blocks of init (unscanned) or the stacked depth (scanned).
    init_t = init.get("Transformer") or {}
    if "encoderblock" in init_t:
        shared = int(np.shape(tree.flat_leaves(init_t["encoderblock"]).popitem()[1])[0])
    else:
        shared = sum(1 for b in init_t if re.fullmatch(r"encoderblock_\d+", b))
    depth = num_modality_layers + shared
    if blocks and len(blocks) != depth:
        raise ValueError(f"polyvit.load: the ViT checkpoint has {len(blocks)} encoder blocks, the "
                         f"model depth is {depth} ({num_modality_layers} per modality + {shared} "
                         f"shared); set model.depth={len(blocks)}")
    for i, (_, block) in enumerate(blocks):
        for name, v in tree.flat_leaves(block).items():
            if i < num_modality_layers:
                for m in modalities:
                    out[f"modality_layers_{m.name}/encoderblock_{i}/{name}"] = v
            else:
                out[f"Transformer/encoderblock_{i - num_modality_layers}/{name}"] = v
    for name, v in tree.flat_leaves({k: v for k, v in t.items()
                                     if not re.fullmatch(r"encoderblock_\d+", k)}).items():
        out[f"Transformer/{name}"] = v
    if "encoderblock" in init_t:
        out = tree.flat_leaves(npz.stack_blocks(tree.unflatten(out)))

    kernel = vit_flat.pop("embedding/kernel", None)
    bias = vit_flat.pop("embedding/bias", None)
    posemb = vit_flat.pop("pos_embedding", None)
    cls = vit_flat.pop("cls", None)
    for m in modalities:
        pre, patch = f"tokenizer_{m.name}", m.patch
        if kernel is not None and not skip(f"{pre}/embedding/kernel"):
            k2 = _adapt_channels(jnp.asarray(kernel), m.input_shape[-1],
                                 f"{pre}/embedding/kernel")
            k2 = resize.pi_resize_patch_kernel(k2, patch[-2:], patch_method)
            if len(patch) == 3:
                t_len = patch[0]
                if inflation == "central":
                    k2 = jnp.zeros((t_len, *k2.shape), k2.dtype).at[t_len // 2].set(k2)
                else:
                    k2 = jnp.tile(k2[None] / t_len, (t_len, 1, 1, 1, 1))
            logger.info("polyvit.load: %s/embedding/kernel %s -> %s (%s)", pre,
                        tuple(np.shape(kernel)), tuple(k2.shape),
                        inflation if len(patch) == 3 else "2D")
            out[f"{pre}/embedding/kernel"] = k2
        if bias is not None:
            out[f"{pre}/embedding/bias"] = bias
        if cls is not None:
            out[f"{pre}/cls"] = cls
        if posemb is not None and not skip(f"{pre}/pos_embedding"):
            grid = m.grid
            n0 = np.shape(posemb)[1]
            og = tuple(old_grid) if old_grid is not None else resize.infer_grid(n0)
            pe = resize.resize_posemb(jnp.asarray(posemb), og, grid[-2:], method=posemb_method)
            if len(grid) == 3:
                pe = jnp.tile(pe, (1, grid[0], 1))  # time-major: same spatial posemb per step
            logger.info("polyvit.load: %s/pos_embedding grid %s -> %s (%s%s)", pre, og, grid,
                        posemb_method, ", tiled over time" if len(grid) == 3 else "")
            out[f"{pre}/pos_embedding"] = pe
    for name, v in init_flat.items():
        if name.startswith("head_"):
            out[name] = v  # heads are never loaded (zero-init)
    out.update(vit_flat)  # anything else (e.g. MAPHead_0): the strict merge reports it
    return tree.unflatten(out)


def adapt_params(init_params: Mapping[str, Any], loaded: Mapping[str, Any], *,
                 model_cfg: Mapping[str, Any], dont_load: Sequence[str] = (),
                 inflation: str = "central", posemb_method: str = "bilinear",
                 patch_method: str = "bilinear",
                 old_grid: Sequence[int] | None = None) -> Params:
    """Checkpoint surgery on `loaded`, then the strict `tree.merge_params(init_params, ...)`.

    `loaded` is either
      * a PolyViT tree (it has tokenizer_* params): merged as is (the scan layout of the shared
        encoder is matched to init's), every name and shape must match;
      * a plain ViT (vitx layout: embedding/kernel (P0, P0, C0, D), pos_embedding (1, N0, D),
        cls (1, 1, D), Transformer/..., head/...; PolyViT's initialisation):
        - encoder: the checkpoint needs `depth` blocks; its first `num_modality_layers` blocks
          initialise modality_layers_<m> of EVERY modality, the rest Transformer/encoderblock_*
          (as scenic's PolyViT); encoder_norm copied;
        - every tokenizer: bias and cls copied; kernel channels C0 -> C adapted (C = 1: summed
          over C0; C0 = 1: repeated / C; else an error), then PI-resized to (ph, pw)
          (`patch_method`; FlexiViT Sec. 3.4); 3D tubelets (t, ph, pw, C, D) inflated
          (ViViT Sec. 3.4): `inflation="central"` kernel in frame t // 2 and zeros elsewhere,
          `"average"` kernel / t in every frame. On a static video (all frames equal) either
          gives every temporal slice exactly the image tokens. With T/t = 1 the video path then
          reproduces the image model exactly; with T/t = k > 1 each patch token occurs k times,
          so softmax attention weighs the patches k times more against the cls token and the
          outputs differ from the image model's (the patch outputs stay repeated over time);
        - posemb: the (square, or `old_grid`) ViT grid resized (`posemb_method`) to the
          tokenizer's (H/ph, W/pw) grid (audio: (time/ph, mel/pw)); for video then tiled over
          the T/t temporal positions (time-major token order);
        - heads are never loaded (they keep init's zeros); the ViT's head / pre_logits are
          dropped; any other ViT param (e.g. MAPHead_0) is an error of the strict merge.
    `dont_load` (re.fullmatch on PolyViT names) keeps init values. Shapes: the result has
    init's structure, shapes and dtypes. Pure apart from logging.

    Raises:
      ValueError: unknown `inflation` / methods, a block-count mismatch (set model.depth),
        unadaptable channels, a non-square ViT grid without `old_grid`, and one error from
        `tree.merge_params` listing every param that cannot be loaded.
    """
    if inflation not in INFLATIONS:
        raise ValueError(f"model_load.inflation={inflation!r} is unknown; use one of "
                         f"{list(INFLATIONS)}")
    resize.check_method(posemb_method)
    resize.check_method(patch_method)
    tree.merge_params({}, {}, dont_load=dont_load)  # validates the regexes (one-line error)
    patterns = [re.compile(p) for p in ([dont_load] if isinstance(dont_load, str)
                                        else dont_load)]
    skip = lambda name: any(p.fullmatch(name) for p in patterns)
    cfg = to_plain(model_cfg or {})
    mods = Modality.all_from_config(cfg.get("modalities"))
    loaded = dict(loaded)
    if any(k.startswith("tokenizer_") for k in loaded):
        logger.info("polyvit.load: PolyViT checkpoint, strict merge")
        if npz.is_scanned(init_params) is True:
            loaded = npz.stack_blocks(loaded)
        elif npz.is_scanned(init_params) is False:
            loaded = npz.unstack_blocks(loaded)
        return tree.merge_params(init_params, loaded, dont_load=dont_load)
    if "embedding" not in loaded:
        raise ValueError(f"polyvit.load: the checkpoint has neither tokenizer_* (PolyViT) nor "
                         f"embedding/ (ViT) params (top level: {sorted(loaded)[:8]}); pass a "
                         f"ViT or PolyViT checkpoint")
    converted = _from_vit(init_params, loaded, modalities=mods,
                          num_modality_layers=int(cfg.get("num_modality_layers", 0)), skip=skip,
                          inflation=inflation, posemb_method=posemb_method,
                          patch_method=patch_method, old_grid=old_grid)
    return tree.merge_params(init_params, converted, dont_load=dont_load)


def load(init_params: Any, init_file: str, model_cfg: Mapping[str, Any] | None = None,
         dont_load: Sequence[str] = (), *, inflation: str = "central",
         posemb_method: str = "bilinear", **kw: Any) -> Params:
    """Fine-tune surgery: a ViT or PolyViT checkpoint adapted to this PolyViT's init.

    `init_file`: any checkpoint spec of `vitx.utils.checkpoints`; `init_params`: the fresh
    init (its structure, shapes and dtypes win); `model_cfg`: config.model (the modalities'
    grids); `kw` (config.model_load): `patch_method`, `old_grid`. See `adapt_params`. Returns
    host numpy params of init's structure.

    Raises:
      ValueError: no `model_cfg`, an unknown model_load key, and `adapt_params`' errors.
      FileNotFoundError: see `vitx.utils.checkpoints.load_params`.
    """
    unknown = sorted(set(kw) - {"patch_method", "old_grid"})
    if unknown:
        raise ValueError(f"model_load.{unknown[0]} is not a polyvit load option; use dont_load, "
                         f"inflation, posemb_method, patch_method or old_grid")
    if model_cfg is None:
        raise ValueError("polyvit.load needs model_cfg (config.model) for the modalities' grids")
    loaded, _ = checkpoints.load_params(init_file)
    return adapt_params(jax.device_get(init_params), loaded, model_cfg=model_cfg,
                        dont_load=dont_load, inflation=inflation, posemb_method=posemb_method,
                        **kw)
