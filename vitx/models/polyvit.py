"""PolyViT: one ViT encoder shared by image, video and audio tasks, a tokenizer per modality.

Sources:
  * Likhosherstov et al., "PolyViT: Co-training Vision Transformers on Images, Videos and Audio",
    TMLR 2023 (arXiv 2111.12993), method section (Sec. 4 of the TMLR version, Sec. 3 of arXiv
    v1): architecture (a tokenizer with its own posemb and cls token per modality, optional
    modality-specific layers L_adapt before the shared encoder, a linear head per task on the
    cls token; only the path of the batch's (modality, task) runs, so only it gets gradients)
    and initialisation from an ImageNet ViT (shared encoder and 2D tokenizers copied, video
    tubelets inflated, posembs resized / tiled over time).
  * Pruning to one task or one modality for deployment, and the shared-parameter fraction: seed
    004 (WO2023059737A1), claims 5 and 15-19 (../shared/reference/polyvit.md).
  * Arnab et al., "ViViT: A Video Vision Transformer", ICCV 2021, Sec. 3.2 (tubelet embedding: a
    3D conv of kernel = stride = t x h x w), Sec. 3.4 (initialisation: "filter inflation" =
    kernel / t in every frame, and "central frame" = kernel in frame t // 2, zeros elsewhere;
    posemb repeated over the temporal tokens).
  * Reference code: google-research/scenic, scenic/projects/polyvit, as summarised in
    ../shared/reference/polyvit.md Sec. 7 (modality layers initialised from the first ViT
    blocks, central-frame inflation as the default, zero-init cls tokens and heads).

Config (`config.model`, passed to `Model` as keyword arguments)::

    variant="pico",                        # a size of vit.WIDTHS (no patch part)
    modalities={                           # name -> tokenizer; names are free strings
        "image": {"patch_size": (4, 4), "input_shape": (32, 32, 3)},     # 2D: (H, W, C)
        "video": {"tubelet": (2, 4, 4), "input_shape": (8, 32, 32, 1)},  # 3D: (T, H, W, C)
        "audio": {"patch_size": (8, 8), "input_shape": (96, 64, 1)},     # 2D: (time, mel, 1)
    },
    heads={"digit": {"modality": "video", "num_classes": 10}, ...},      # task -> head
    num_modality_layers=0,                 # L_adapt: blocks per modality before the shared ones
    width/depth/mlp_dim/num_heads=...,     # overrides of the variant, as in vit
    dropout=0.0, scan=False, remat_policy=None, dtype_mm="float32", head_zeroinit=True,

A modality is 2D (`patch_size`, an int or (ph, pw); inputs (B, H, W, C): images, spectrograms
(B, time, mel, 1)) or 3D (`tubelet` (t, ph, pw); inputs (B, T, H, W, C)). `input_shape` (the
example shape without batch) is required: the learned posemb has one entry per token of that
grid, and `model.init` creates every tokenizer from it (see below). A head's `num_classes`
defaults to `Model`'s `num_classes`.

Parameter tree (ViT names for the shared part, so a ViT checkpoint maps onto it)::

    tokenizer_<m>/embedding/{kernel (ph, pw, C, D) | (t, ph, pw, C, D), bias (D,)}
    tokenizer_<m>/pos_embedding (1, N_m, D)       # learned; N_m tokens of m's grid (raster,
                                                  # time-major for video)
    tokenizer_<m>/cls (1, 1, D)
    modality_layers_<m>/encoderblock_{i}/...      # i < num_modality_layers (0: none)
    Transformer/encoderblock_{i}/...              # i < depth - num_modality_layers
                                                  # (Transformer/encoderblock with scan=True)
    Transformer/encoder_norm/{scale, bias}
    head_<task>/{kernel (D, K_task), bias (K_task,)}   # zero-initialised

Routing: `model.apply({"params": p}, x, modality=m, task=t)` runs tokenizer_<m> ->
modality_layers_<m> -> Transformer -> head_<t> only (one compiled program per static (m, t)),
so every other tokenizer, modality layer and head gets an exactly-zero gradient (`active_mask`).
`model.init(rng, x, modality=m, task=t)` (x of modality m) creates the params of the WHOLE model:
while initialising, every other tokenizer (+ its modality layers) runs on zeros of its
`input_shape` (batch 1) and every other head on a zero (1, D) feature; outside init only the
route runs. Modalities and heads are kept sorted by name (a dict and an ml_collections
ConfigDict of the same config give equal, equally hashed modules). Parameter groups:
"shared", "modality:<m>", "task:<t>" (`param_groups`).
"""

from __future__ import annotations

import copy
import logging
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vitx.models import layers, resize, vit
from vitx.utils import checkpoints, npz, tree

__all__ = ["Model", "active_mask", "adapt_params", "check_input", "load", "num_tokens",
           "param_groups", "param_report", "prune", "pruned_model_cfg"]

Array = jax.Array
Params = dict[str, Any]
#: (name, patch (ph, pw) or tubelet (t, ph, pw), input_shape (H, W, C) or (T, H, W, C))
ModalitySpec = tuple[str, tuple[int, ...], tuple[int, ...]]
#: (task name, modality name, num_classes)
HeadSpec = tuple[str, str, int]

logger = logging.getLogger(__name__)

_MODALITY_KEYS = ("patch_size", "tubelet", "input_shape")
_HEAD_KEYS = ("modality", "num_classes")
_VIT_KW = ("width", "depth", "mlp_dim", "num_heads", "dropout", "scan", "remat_policy",
           "dtype_mm", "head_zeroinit", "patch_embed", "attention_impl")
INFLATIONS = ("central", "average")
_NAME_RE = re.compile(r"[A-Za-z0-9_.\-]+")


# ------------------------------------------------------------------------------------------------
# Config parsing.


def _as_dict(x: Any) -> dict[str, Any]:
    """A (nested) plain dict of a Mapping / ml_collections.ConfigDict / FrozenDict."""
    if hasattr(x, "to_dict"):
        x = x.to_dict()
    if isinstance(x, Mapping):
        return {k: _as_dict(v) if isinstance(v, Mapping) or hasattr(v, "to_dict") else v
                for k, v in x.items()}
    raise ValueError(f"expected a dict, got {type(x).__name__}: {x!r}")


def _ints(value: Any, n: int, what: str) -> tuple[int, ...]:
    """`value` as a tuple of `n` positive Python ints (an int is repeated n times)."""
    v = (value,) * n if isinstance(value, int | np.integer) and not isinstance(value, bool) \
        else value
    try:
        v = tuple(v)
    except TypeError:
        v = ()
    if len(v) != n or not all(isinstance(a, int | np.integer) and not isinstance(a, bool)
                              and a > 0 for a in v):
        raise ValueError(f"{what}={value!r} is not {n} positive ints; pass a tuple of {n} ints")
    return tuple(int(a) for a in v)


def _check_name(name: Any, what: str) -> str:
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
        raise ValueError(f"{what} name {name!r} is not a plain name; use letters, digits, '_', "
                         f"'.', '-' (it becomes part of param names)")
    return name


def _parse_modalities(modalities: Any) -> tuple[ModalitySpec, ...]:
    """`model.modalities` -> ((name, patch, input_shape), ...), validated; see the module doc.

    Raises:
      ValueError: no modalities, unknown keys, not exactly one of patch_size / tubelet, a
        missing or malformed input_shape, a patch that does not divide the input grid.
    """
    if modalities is None or not _as_dict(modalities):
        raise ValueError("model.modalities is empty; give at least one, e.g. {'image': "
                         "{'patch_size': (4, 4), 'input_shape': (32, 32, 3)}}")
    out = []
    for name, spec in _as_dict(modalities).items():
        _check_name(name, "model.modalities")
        key = f"model.modalities.{name}"
        spec = _as_dict(spec)
        unknown = sorted(set(spec) - set(_MODALITY_KEYS))
        if unknown:
            raise ValueError(f"{key} has unknown keys {unknown}; use {list(_MODALITY_KEYS)}")
        if ("patch_size" in spec) == ("tubelet" in spec):
            raise ValueError(f"{key} needs exactly one of patch_size (2D: images, spectrograms) "
                             f"or tubelet (3D: video); it has {sorted(spec)}")
        patch = (_ints(spec["patch_size"], 2, f"{key}.patch_size") if "patch_size" in spec
                 else _ints(spec["tubelet"], 3, f"{key}.tubelet"))
        if "input_shape" not in spec:
            dims = "(H, W, C)" if len(patch) == 2 else "(T, H, W, C)"
            raise ValueError(f"{key}.input_shape is missing; set it to the example shape {dims} "
                             f"of that modality's data (it sizes the posemb and the init)")
        shape = _ints(spec["input_shape"], len(patch) + 1, f"{key}.input_shape")
        if any(s % p for s, p in zip(shape[:-1], patch, strict=True)):
            what = "patch_size" if len(patch) == 2 else "tubelet"
            raise ValueError(f"{key}.{what}={patch} does not divide input_shape={shape[:-1]} "
                             f"(channels last); choose sizes that divide it or resize the data")
        out.append((name, patch, shape))
    return tuple(sorted(out))  # by name: dict and ConfigDict (sorted keys) give equal modules


def _parse_heads(heads: Any, modalities: Sequence[ModalitySpec],
                 num_classes: int | None) -> tuple[HeadSpec, ...]:
    """`model.heads` -> ((task, modality, num_classes), ...), validated; see the module doc.

    Raises:
      ValueError: no heads, unknown keys, an unknown modality, no or bad num_classes.
    """
    if heads is None or not _as_dict(heads):
        raise ValueError("model.heads is empty; give one head per task, e.g. {'digits': "
                         "{'modality': 'image', 'num_classes': 10}}")
    names = [m[0] for m in modalities]
    out = []
    for task, spec in _as_dict(heads).items():
        _check_name(task, "model.heads")
        key = f"model.heads.{task}"
        spec = _as_dict(spec)
        unknown = sorted(set(spec) - set(_HEAD_KEYS))
        if unknown:
            raise ValueError(f"{key} has unknown keys {unknown}; use {list(_HEAD_KEYS)}")
        if spec.get("modality") not in names:
            raise ValueError(f"{key}.modality={spec.get('modality')!r} is not a modality of "
                             f"model.modalities; use one of {names}")
        k = spec.get("num_classes", num_classes)
        if not isinstance(k, int | np.integer) or isinstance(k, bool) or k < 1:
            raise ValueError(f"{key}.num_classes={k!r} is not an int >= 1; set it (or the "
                             f"model's num_classes)")
        out.append((task, spec["modality"], int(k)))
    return tuple(sorted(out))


def _grid(patch: Sequence[int], shape: Sequence[int]) -> tuple[int, ...]:
    """Token grid (H/ph, W/pw) or (T/t, H/ph, W/pw) of an input of `shape` (channels last)."""
    return tuple(s // p for s, p in zip(shape[:-1], patch, strict=True))


def num_tokens(model_cfg: Mapping[str, Any], modality: str) -> int:
    """Tokens the encoder sees for `modality`: prod(grid) + 1 (cls).

    Image / audio (H/ph)(W/pw) + 1; video (T/t)(H/ph)(W/pw) + 1 (ViViT Sec. 3.2).

    Raises:
      ValueError: a bad `model.modalities` or an unknown `modality`.
    """
    mods = {m[0]: m for m in _parse_modalities(_as_dict(model_cfg).get("modalities"))}
    if modality not in mods:
        raise ValueError(f"modality={modality!r} is not in model.modalities; use one of "
                         f"{list(mods)}")
    _, patch, shape = mods[modality]
    return math.prod(_grid(patch, shape)) + 1


def check_input(model_cfg: Mapping[str, Any], shape: Sequence[int] | None) -> None:
    """Validate `model.modalities` / `model.heads`, and that `shape` is one modality's input.

    `shape` is one example's shape without batch ((H, W, C) or (T, H, W, C)) of a task's data,
    or None (then only the config is checked). It must equal some modality's `input_shape`: the
    learned posembs are sized by it (PolyViT, method section).

    Raises:
      ValueError: a bad `model.modalities` / `model.heads` entry (see `Model`), or `shape`
        matching no `model.modalities.<m>.input_shape`.
    """
    cfg = _as_dict(model_cfg or {})
    mods = _parse_modalities(cfg.get("modalities"))
    _parse_heads(cfg.get("heads"), mods, 1)  # num_classes is config.num_classes
    if shape is None:
        return
    shape = tuple(int(s) for s in shape)
    if not any(shape == m[2] for m in mods):
        have = {m[0]: m[2] for m in mods}
        raise ValueError(f"data example shape {shape} (made by input.pp) is no "
                         f"model.modalities.<m>.input_shape ({have}); set that modality's "
                         f"input_shape to {shape} or change the preprocessing")


# ------------------------------------------------------------------------------------------------
# Modules.


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


class _Blocks(nn.Module):
    """`depth` pre-LN encoder blocks `encoderblock_{i}` without a final norm. (B, N, D) in/out."""

    depth: int
    mlp_dim: int | None = None
    num_heads: int = 12
    dropout: float = 0.0
    remat_policy: str | None = None
    dtype_mm: str = "float32"
    attention_impl: str = "auto"

    @nn.compact
    def __call__(self, x: Array, *, train: bool = False) -> Array:
        block = layers.Encoder1DBlock
        if self.remat_policy is not None:
            if self.remat_policy not in layers.REMAT_POLICIES:
                raise ValueError(f"model.remat_policy={self.remat_policy!r} is unknown; use one "
                                 f"of {sorted(layers.REMAT_POLICIES)} or None")
            block = nn.remat(block, prevent_cse=True, static_argnums=(2,),
                             policy=layers.REMAT_POLICIES[self.remat_policy])
        for i in range(self.depth):
            x, _ = block(mlp_dim=self.mlp_dim, num_heads=self.num_heads, dropout=self.dropout,
                         dtype_mm=layers.dtype_of(self.dtype_mm),
                         attention_impl=self.attention_impl,
                         name=f"encoderblock_{i}")(
                x, not train)
        return x


class _PolyViT(nn.Module):
    """PolyViT (see the module docstring). Built by `Model`, which validates the config.

    `__call__(x, *, modality=None, task=None, train=False) -> (logits (B, K_task), aux)`, x of
    shape (B, *input_shape of `modality`). `modality` / `task` are static Python strings; either
    may be omitted when it is implied (the task's modality; the only modality; the modality's
    only head). aux: "encoded" (B, 1 + N, D) (the shared encoder's output; 1 + N =
    `num_tokens`), "pre_logits" (B, D) (the cls token's output), "logits".

    Raises:
      ValueError: an unknown or ambiguous modality / task, a task whose head reads another
        modality, an input that does not have its modality's input_shape.
    """

    modalities: tuple[ModalitySpec, ...] = ()
    heads: tuple[HeadSpec, ...] = ()
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

    def route(self, modality: str | None, task: str | None) -> tuple[str, str]:
        """The (modality, task) a call runs, with omitted parts filled in when implied."""
        mods = [m[0] for m in self.modalities]
        head_mod = {h[0]: h[1] for h in self.heads}
        if modality is None:
            if task in head_mod:
                modality = head_mod[task]
            elif len(mods) == 1:
                modality = mods[0]
            else:
                raise ValueError(f"polyvit: pass modality= (one of {mods}) or a task=; the model "
                                 f"has several modalities")
        if modality not in mods:
            raise ValueError(f"polyvit: modality={modality!r} is not in model.modalities; use "
                             f"one of {mods}")
        if task is None:
            own = [t for t, m in head_mod.items() if m == modality]
            if len(own) != 1:
                raise ValueError(f"polyvit: pass task= (heads of {modality!r}: {own}); it is "
                                 f"implied only when the modality has exactly one head")
            task = own[0]
        if task not in head_mod:
            raise ValueError(f"polyvit: task={task!r} is not in model.heads; use one of "
                             f"{list(head_mod)}")
        if head_mod[task] != modality:
            raise ValueError(f"polyvit: task={task!r} reads model.heads.{task}.modality="
                             f"{head_mod[task]!r}, not modality={modality!r}; pass its modality")
        return modality, task

    @nn.compact
    def __call__(self, x: Array, *, modality: str | None = None, task: str | None = None,
                 train: bool = False) -> tuple[Array, dict]:
        modality, task = self.route(modality, task)
        k = self.num_modality_layers
        dtype = layers.dtype_of(self.dtype_mm)
        # Built here (cheap, no params yet); only the modules called below create params.
        tokenizers = {name: _Tokenizer(name, patch, shape, self.width, self.dtype_mm,
                                       self.patch_embed, name=f"tokenizer_{name}")
                      for name, patch, shape in self.modalities}
        adapters = {name: _Blocks(depth=k, mlp_dim=self.mlp_dim, num_heads=self.num_heads,
                                  dropout=self.dropout, remat_policy=self.remat_policy,
                                  dtype_mm=self.dtype_mm, attention_impl=self.attention_impl,
                                  name=f"modality_layers_{name}")
                    for name, _, _ in self.modalities} if k else {}
        init = nn.initializers.zeros if self.head_zeroinit else nn.initializers.lecun_normal()
        heads = {t: nn.Dense(n, kernel_init=init, name=f"head_{t}") for t, _, n in self.heads}

        if self.is_initializing():  # create the params of every other path too (not routed)
            dummy_dtype = x.dtype if jnp.issubdtype(x.dtype, jnp.floating) else jnp.float32
            for name, _, shape in self.modalities:
                if name != modality:
                    y = tokenizers[name](jnp.zeros((1, *shape), dummy_dtype))
                    if k:
                        adapters[name](y, train=False)
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
            dtype_mm=dtype, attention_impl=self.attention_impl, name="Transformer")(x, train=train)
        out["encoded"] = x
        x = x[:, 0]  # cls token ("tok" pooling, as PolyViT)
        out["pre_logits"] = x
        x = heads[task](x)
        out["logits"] = x
        return x, out


def Model(num_classes: int | None = None, *, variant: str | None = "pico",  # noqa: N802
          modalities: Mapping[str, Any] | None = None, heads: Mapping[str, Any] | None = None,
          num_modality_layers: int = 0, **vit_kw: Any) -> nn.Module:
    """The PolyViT of this module; config schema in the module docstring.

    `num_classes`: default of the heads' `num_classes`. `variant`: a size of `vit.WIDTHS` (e.g.
    "pico", "B"; None: give width/depth/num_heads); `vit_kw`: width, depth, mlp_dim, num_heads,
    dropout, scan (shared encoder only), remat_policy, dtype_mm, head_zeroinit, patch_embed,
    attention_impl (as in `vit`).
    `num_modality_layers` (L_adapt of PolyViT) of the `depth` blocks run per modality
    before the `depth - num_modality_layers` shared ones.

    Raises:
      ValueError: one line naming the config key and the fix (unknown option, a variant with
        a patch part, a bad modality / head, num_modality_layers out of [0, depth - 1]).
    """
    unknown = sorted(set(vit_kw) - set(_VIT_KW))
    if unknown:
        raise ValueError(f"model.{unknown[0]} is not a polyvit option; use variant, modalities, "
                         f"heads, num_modality_layers or one of {list(_VIT_KW)}")
    size = vit.decode_variant(variant)
    if "patch_size" in size:
        raise ValueError(f"model.variant={variant!r} has a patch part; polyvit takes a size only "
                         f"(e.g. {variant.split('/')[0]!r}) and patch sizes per modality in "
                         f"model.modalities")
    args = {**size, **vit_kw}
    missing = [k for k in ("width", "depth", "num_heads") if k not in args]
    if missing:
        raise ValueError(f"model.{missing[0]} is not set; give model.variant (one of "
                         f"{list(vit.WIDTHS)}) or width, depth and num_heads")
    mods = _parse_modalities(modalities)
    hds = _parse_heads(heads, mods, num_classes)
    depth = args["depth"]
    if (not isinstance(num_modality_layers, int) or isinstance(num_modality_layers, bool)
            or not 0 <= num_modality_layers < depth):
        raise ValueError(f"model.num_modality_layers={num_modality_layers!r} must be an int in "
                         f"[0, depth - 1 = {depth - 1}] (at least one shared block)")
    return _PolyViT(modalities=mods, heads=hds, num_modality_layers=num_modality_layers, **args)


# ------------------------------------------------------------------------------------------------
# Parameter groups, routing masks, pruning.


def _group(top: str) -> str:
    """Group of a top-level param name: "modality:<m>", "task:<t>" or "shared"."""
    for prefix, kind in (("tokenizer_", "modality"), ("modality_layers_", "modality"),
                         ("head_", "task")):
        if top.startswith(prefix) and len(top) > len(prefix):
            return f"{kind}:{top[len(prefix):]}"
    return "shared"


def param_groups(params: Mapping[str, Any]) -> dict[str, list[str]]:
    """{"shared" | "modality:<m>" | "task:<t>": ['/'-names of its params]} (names sorted).

    tokenizer_<m>/ and modality_layers_<m>/ are "modality:<m>", head_<t>/ is "task:<t>", all
    else (Transformer/...) "shared". Works on arrays or abstract shapes (only names are read).
    """
    out: dict[str, list[str]] = {}
    for name in sorted(tree.flat_leaves(params)):
        out.setdefault(_group(name.split("/", 1)[0]), []).append(name)
    return out


def _size(x: Any) -> int:
    return int(math.prod(np.shape(x)))


def param_report(params: Mapping[str, Any],
                 model_cfg: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Parameter counts per group (PolyViT's parameter counts; seed 004 claim 5).

    Returns {"groups": {group: count}, "total": int (= sum of the groups), "shared": int,
    "shared_fraction": shared / total}; with `model_cfg` (config.model) also "per_task":
    {task: params of the model pruned to it (shared + its modality + its head)} and
    "sum_single_task": the sum of those (n separate single-task models of the same size).

    Raises:
      ValueError: a bad `model_cfg` (see `Model`).
    """
    flat = tree.flat_leaves(params)
    groups: dict[str, int] = {}
    for g, names in param_groups(params).items():
        groups[g] = sum(_size(flat[n]) for n in names)
    total = sum(groups.values())
    shared = groups.get("shared", 0)
    out: dict[str, Any] = {"groups": groups, "total": total, "shared": shared,
                           "shared_fraction": shared / total if total else 0.0}
    if model_cfg is not None:
        cfg = _as_dict(model_cfg)
        mods = _parse_modalities(cfg.get("modalities"))
        per_task = {t: shared + groups.get(f"modality:{m}", 0) + groups.get(f"task:{t}", 0)
                    for t, m, _ in _parse_heads(cfg.get("heads"), mods, 1)}
        out["per_task"] = per_task
        out["sum_single_task"] = sum(per_task.values())
    return out


def _key_name(entry: Any) -> str:
    for attr in ("key", "name"):
        if hasattr(entry, attr):
            return str(getattr(entry, attr))
    return str(entry)


def _check_present(params: Mapping[str, Any], modality: str | None, task: str | None) -> None:
    tops = list(params)
    if modality is not None and f"tokenizer_{modality}" not in tops:
        raise ValueError(f"modality={modality!r} has no tokenizer_{modality} in the params; use "
                         f"one of {[t[10:] for t in tops if t.startswith('tokenizer_')]}")
    if task is not None and f"head_{task}" not in tops:
        raise ValueError(f"task={task!r} has no head_{task} in the params; use one of "
                         f"{[t[5:] for t in tops if t.startswith('head_')]}")


def active_mask(params: Any, *, modality: str, task: str) -> Any:
    """Tree of `params`' structure with True where the (modality, task) route uses the param.

    True: shared params, tokenizer_<modality>, modality_layers_<modality>, head_<task>; False
    elsewhere (their gradients on that route are exactly zero; PolyViT, method section). Works on
    arrays or abstract shapes (`jax.ShapeDtypeStruct`).

    Raises:
      ValueError: no tokenizer_<modality> or head_<task> in `params`.
    """
    _check_present(params, modality, task)
    keep = {"shared", f"modality:{modality}", f"task:{task}"}
    return jax.tree_util.tree_map_with_path(
        lambda path, _: _group(_key_name(path[0])) in keep, params)


def _selection(model_cfg: Mapping[str, Any] | None, task: str | None,
               modality: str | None) -> tuple[list[str], list[str] | None]:
    """(modalities, tasks) a pruned model keeps; tasks None = unknown (no config)."""
    if task is None and modality is None:
        raise ValueError("prune: pass task= (keep one task) or modality= (keep every task of "
                         "one modality)")
    if model_cfg is None:
        if task is None or modality is None:
            raise ValueError("prune: pass model_cfg= (config.model) to find the modality of a "
                             "task or the tasks of a modality, or pass both task= and modality=")
        return [modality], [task]
    cfg = _as_dict(model_cfg)
    mods = _parse_modalities(cfg.get("modalities"))
    heads = {t: m for t, m, _ in _parse_heads(cfg.get("heads"), mods, 1)}
    if task is not None:
        if task not in heads:
            raise ValueError(f"prune: task={task!r} is not in model.heads; use one of "
                             f"{list(heads)}")
        if modality is not None and modality != heads[task]:
            raise ValueError(f"prune: task={task!r} reads modality {heads[task]!r}, not "
                             f"modality={modality!r}; drop modality= or fix it")
        return [heads[task]], [task]
    if modality not in [m[0] for m in mods]:
        raise ValueError(f"prune: modality={modality!r} is not in model.modalities; use one of "
                         f"{[m[0] for m in mods]}")
    return [modality], [t for t, m in heads.items() if m == modality]


def prune(params: Mapping[str, Any], *, task: str | None = None, modality: str | None = None,
          model_cfg: Mapping[str, Any] | None = None) -> Params:
    """The params of the model pruned to one task, or to every task of one modality.

    Keeps the shared params, tokenizer_<m> and modality_layers_<m> of the kept modality and
    head_<t> of the kept task(s); everything else is dropped (seed 004 claims
    15-19). The task -> modality map is read from `model_cfg` (config.model); without it pass
    both `task` and `modality`. Build the pruned model from `pruned_model_cfg` (same
    arguments): its outputs on the kept tasks equal the full model's exactly. Leaves are the
    same objects (no copy).

    Raises:
      ValueError: neither task nor modality, a task / modality unknown to the config or absent
        from `params`, a task of another modality.
    """
    mods, tasks = _selection(model_cfg, task, modality)
    for m in mods:
        _check_present(params, m, None)
    for t in tasks or ():
        _check_present(params, None, t)
    keep = {"shared"} | {f"modality:{m}" for m in mods} | {f"task:{t}" for t in tasks}
    return {k: v for k, v in params.items() if _group(k) in keep}


def pruned_model_cfg(model_cfg: Mapping[str, Any], *, task: str | None = None,
                     modality: str | None = None) -> dict[str, Any]:
    """`model_cfg` (config.model) with only the modality and heads `prune` keeps.

    A plain nested dict (other keys unchanged); `Model(**pruned_model_cfg(...))` applied to
    `prune(params, ...)` gives the full model's outputs on the kept tasks exactly.

    Raises:
      ValueError: as `prune`.
    """
    mods, tasks = _selection(model_cfg, task, modality)
    cfg = copy.deepcopy(_as_dict(model_cfg))
    cfg["modalities"] = {m: v for m, v in cfg["modalities"].items() if m in mods}
    cfg["heads"] = {t: v for t, v in cfg["heads"].items() if t in tasks}
    return cfg


# ------------------------------------------------------------------------------------------------
# Checkpoint surgery (this model's `load`).


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
              modalities: Sequence[ModalitySpec], num_modality_layers: int,
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
                for m, _, _ in modalities:
                    out[f"modality_layers_{m}/encoderblock_{i}/{name}"] = v
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
    for m, patch, shape in modalities:
        pre = f"tokenizer_{m}"
        if kernel is not None and not skip(f"{pre}/embedding/kernel"):
            k2 = _adapt_channels(jnp.asarray(kernel), shape[-1], f"{pre}/embedding/kernel")
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
            grid = _grid(patch, shape)
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
    cfg = _as_dict(model_cfg)
    mods = _parse_modalities(cfg.get("modalities"))
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
