"""Model `dense`: any image model as a shared encoder, with named output heads on its token map.

    config.model_name = "dense"
    config.model = dict(
        encoder="vit", encoder_cfg=dict(variant="mu/8", ...),      # any image model + its config
        heads=dict(det=dict(type="detection"), seg=dict(type="segmentation"),
                   digits=dict(type="classification")),
        head_classes=dict(det=10, seg=11))                           # K per dense head

`Model(num_classes, ...)(x, *, train, head=None, **kw)` runs the encoder on x (with `**kw`, e.g.
FlexiViT's `patch_size`) and returns `(output of head `head`, aux)` (head None: the first one),
aux being the encoder's aux (with "token_map" (B, h, w, D)). Head types:

  classification  the encoder's own logits (B, num_classes) (its `head` param).
  detection       `DetectionHead` on the token map: (B, h * w, 4 + K + 1), per token a box
                  (cy, cx, h, w) in [0, 1] and K + 1 class logits (OWL-ViT; the last is no-object).
  segmentation    `segmentation_head.LinearDecoder` on the token map (option `upsample`:
                  "bilinear" or "subpixel"; `cell`: the pixels a subpixel decoder's weights
                  decode, default FlexiViT's `base_patch_size`, so one decoder serves every
                  patch size): (B, H, W, K) per-pixel logits (Segmenter's linear decoder /
                  SETR-naive).

One head per task is the multi-task design (a route's `model_kw=dict(head="det")`), as PolyViT's
head per task: the encoder is shared, each head is trained only on its route (`active_mask`).
Params: `encoder/...` (the encoder's own tree) and one subtree per head name. At init every head
is built, whichever head is asked for.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax

from vitx.models import get_model_module
from vitx.models.detection_head import DetectionHead
from vitx.models.segmentation_head import LinearDecoder
from vitx.utils import pair

Array = jax.Array

__all__ = ["HEAD_TYPES", "DenseModel", "LinearDecoder", "Model", "active_mask", "check_input",
           "load"]

HEAD_TYPES = ("classification", "detection", "segmentation")


def _head_types(heads: Mapping[str, Any]) -> dict[str, str]:
    out = {}
    for name, h in heads.items():
        kind = dict(h).get("type")
        if kind not in HEAD_TYPES:
            raise ValueError(f"model.heads.{name}.type={kind!r} is unknown; use one of "
                             f"{HEAD_TYPES}")
        out[name] = kind
    return out


class DenseModel(nn.Module):
    """An image encoder and named heads; see the module docstring.

    Attributes:
      encoder: the encoder module (any image model whose aux has "token_map").
      heads: {head name: {"type": classification | detection | segmentation}} (ordered).
      head_classes: {head name: K} of the dense heads.
    """

    encoder: nn.Module
    heads: Mapping[str, Any]
    head_classes: Mapping[str, int]

    def _dense_head(self, name: str, kind: str, aux: dict, image_hw: tuple[int, int]) -> Array:
        if "token_map" not in aux:
            raise ValueError(f"model.encoder gives no aux['token_map'] (it has {sorted(aux)}); "
                             f"use an image model with a token map for head {name!r}")
        if kind == "detection":
            return DetectionHead(self.head_classes[name], name=name)(aux["token_map"])
        cell = self.heads[name].get("cell")
        return LinearDecoder(self.head_classes[name], self.heads[name].get("upsample", "bilinear"),
                             None if cell is None else pair(cell, f"model.heads.{name}.cell"),
                             name=name)(aux["token_map"], image_hw)

    @nn.compact
    def __call__(self, x: Array, *, train: bool = False, head: str | None = None,
                 **kw: Any) -> tuple[Array, dict]:
        kinds = _head_types(self.heads)
        head = head or next(iter(kinds))
        if head not in kinds:
            raise ValueError(f"head={head!r} is not in model.heads; use one of {list(kinds)}")
        logits, aux = self.encoder(x, train=train, **kw)
        image_hw = tuple(x.shape[1:3])
        out = {}
        for name, kind in kinds.items():
            if name != head and not self.is_initializing():
                continue
            out[name] = logits if kind == "classification" else self._dense_head(
                name, kind, aux, image_hw)
        return out[head], aux


def _split_cfg(kw: Mapping[str, Any]) -> tuple[str, dict, dict, dict]:
    kw = dict(kw)
    unknown = sorted(set(kw) - {"encoder", "encoder_cfg", "heads", "head_classes", "variant"})
    if unknown or "encoder" not in kw or not kw.get("heads"):
        raise ValueError(f"model (model_name='dense') has unknown keys {unknown} or lacks "
                         f"encoder/heads; its keys are encoder, encoder_cfg, heads, head_classes")
    heads = {k: dict(v) for k, v in dict(kw["heads"]).items()}
    kinds = _head_types(heads)
    classes = dict(kw.get("head_classes") or {})
    missing = [n for n, k in kinds.items() if k != "classification" and n not in classes]
    if missing:
        raise ValueError(f"model.head_classes lacks {missing}; give the number of classes K of "
                         f"every detection/segmentation head, e.g. head_classes=dict(det=10)")
    return kw["encoder"], dict(kw.get("encoder_cfg") or {}), heads, classes


def Model(num_classes: int | None = None, *, variant: str | None = None,  # noqa: N802
          **kw: Any) -> nn.Module:
    """The `dense` model: encoder `kw["encoder"]` built with `encoder_cfg`, plus `heads`.

    `num_classes` is the encoder's own head (used by `classification` heads; None or unused
    when there is none).

    Raises:
      ValueError: unknown keys, no encoder or heads, an unknown head type, a dense head without
        its `head_classes` entry.
    """
    del variant
    encoder, encoder_cfg, heads, classes = _split_cfg(kw)
    for h in heads.values():  # one subpixel decoder for every patch size of a FlexiViT
        if h.get("upsample") == "subpixel" and "base_patch_size" in encoder_cfg:
            h.setdefault("cell", tuple(encoder_cfg["base_patch_size"]))
    if "classification" not in _head_types(heads).values():
        num_classes = None
    enc = get_model_module(encoder).Model(num_classes, **encoder_cfg)
    return DenseModel(encoder=enc, heads=heads, head_classes=classes)


def check_input(model_cfg: Mapping[str, Any], shape: Sequence[int]) -> None:
    """The encoder's `check_input` on its `encoder_cfg` (patch size vs image, ...).

    Raises:
      ValueError: a bad `model` config (see `Model`) or the encoder's error.
    """
    encoder, encoder_cfg, _, _ = _split_cfg(model_cfg)
    get_model_module(encoder).check_input(encoder_cfg, shape)


def load(init_params: Any, init_file: str, model_cfg: Mapping[str, Any] | None = None,
         dont_load: Sequence[str] = (), **kw: Any) -> Any:
    """Initialise the encoder from `init_file` (the encoder's own `load` and its surgery, e.g. a
    classification checkpoint of the same encoder); the heads keep their fresh init.

    Raises:
      ValueError: a bad `model` config; as the encoder's `load`.
    """
    encoder, encoder_cfg, _, _ = _split_cfg(model_cfg or {})
    out = dict(init_params)
    out["encoder"] = get_model_module(encoder).load(init_params["encoder"], init_file,
                                                    encoder_cfg, dont_load, **kw)
    return out


def active_mask(params: Any, *, head: str | None = None, **kw: Any) -> Any:
    """True for the params route `head` trains: the encoder and that head (classification
    heads: the encoder's own `head` param); the other heads' params are kept (False)."""
    del kw
    if head is None:
        return jax.tree.map(lambda _: True, params)
    return {name: jax.tree.map(lambda _, on=(name in ("encoder", head)): on, sub)
            for name, sub in params.items()}
