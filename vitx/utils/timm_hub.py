"""timm / Hugging Face weights: read and write hub folders and `.safetensors` files (no torch).

A hub folder is what `timm.models.push_to_hf_hub` / `save_for_hf` write and the Hugging Face
hub serves for `timm/...` models:

    DIR/config.json         {"architecture": "vit_base_patch16_224", "num_classes": 1000,
                             "model_args": {...}, "pretrained_cfg": {"input_size": [3, 224, 224],
                             "mean": [...], "std": [...], "crop_pct": 0.9, "interpolation":
                             "bicubic", ...}}
    DIR/model.safetensors   the timm state dict (read with `safetensors.numpy`)

`load` turns one into vitx params (`vitx.utils.timm_layout.from_timm`) for
`vitx.utils.checkpoints.load_params`, so `config.model_init=DIR` (or `.../model.safetensors`)
goes through each model module's `load` like an .npz. `init_hints` gives the model keys the
weights fix (`gelu="exact"`: timm's ViTs use PyTorch's erf GELU), `describe` is `vitx info`,
`export` is `vitx export --layout timm`. Architectures read: `vit_*` and `deit_*` (not
distilled), `flexivit_*` and the hybrids `vit_*_r*_*` / `vit_*_r_*`; CoAtNet is not mapped
(timm's `coatnet_*` are MaxxViT-style variants with pre-norm MBConv stages, relative-position
tables of another parameterisation and other stem/stage widths than vitx's `coatnet`, which
follows the paper, so no name maps one-to-one).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import shutil
import tempfile
from collections.abc import Mapping
from typing import Any

import numpy as np

from vitx.utils import timm_layout

__all__ = ["describe", "export", "init_hints", "is_timm_path", "load", "pp_from_pretrained_cfg"]

WEIGHTS = "model.safetensors"
#: size name in timm's architecture names -> num_heads (timm's `vit_<size>_patch...` entries).
HEADS = {"tiny": 3, "small": 6, "medium": 8, "mediumd": 8, "betwixt": 10, "base": 12,
         "large": 16, "huge": 16, "giant": 16, "gigantic": 16, "so400m": 16, "so150m": 16}
_ARCH_RE = re.compile(r"(?:vit|deit|deit3|flexivit)_(?P<size>[a-z0-9]+)_.*|flexivit_(?P<f>\w+)")
_NOT_VIT = ("distilled", "rope", "relpos", "_rpn", "clip_quickgelu", "naflex", "radio")


def is_timm_path(path: str) -> bool:
    """True for a `.safetensors` file or a folder holding `model.safetensors`."""
    return path.endswith(".safetensors") or os.path.isfile(os.path.join(path, WEIGHTS))


def _files(path: str) -> tuple[str, str | None]:
    """(weights file, config.json or None) of a hub folder or a .safetensors file."""
    if os.path.isdir(path):
        cfg = os.path.join(path, "config.json")
        return os.path.join(path, WEIGHTS), cfg if os.path.isfile(cfg) else None
    cfg = os.path.join(os.path.dirname(path), "config.json")
    return path, cfg if os.path.isfile(cfg) else None


def _read_config(path: str | None) -> dict[str, Any]:
    if path is None:
        return {}
    try:
        with open(path) as f:
            cfg = json.load(f)
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: not a readable JSON hub config ({type(e).__name__}: "
                         f"{str(e)[:80]}); fix or delete the file") from None
    if not isinstance(cfg, dict):
        raise ValueError(f"{path}: a hub config.json must be a JSON object; fix the file")
    if "architecture" not in cfg and "architectures" in cfg:
        raise ValueError(f"{path}: a Hugging Face transformers config (architectures="
                         f"{cfg['architectures']}), not timm's; use the timm/ release of the "
                         f"weights (config.json with 'architecture')")
    arch = cfg.get("architecture")
    if arch is not None:
        check_architecture(arch, path)
    return cfg


def check_architecture(arch: str, where: str) -> str:
    """The vitx family ("vit", "flexivit", "hybrid") of timm architecture `arch`.

    Raises:
      ValueError: an architecture vitx does not map (naming `where`, it and the ones read).
    """
    if arch.startswith("coatnet"):
        raise ValueError(f"{where}: architecture {arch!r}: timm's CoAtNets are MaxxViT-style "
                         f"(pre-norm MBConv, other rel-pos tables) and do not map to vitx's "
                         f"paper CoAtNet; use a vit_*, flexivit_* or vit_*_r* checkpoint")
    if not _ARCH_RE.fullmatch(arch) or any(s in arch for s in _NOT_VIT):
        raise ValueError(f"{where}: architecture {arch!r} is not one vitx maps; use a timm "
                         f"vit_*, deit_* (not distilled), flexivit_* or vit_*_r* hybrid")
    if arch.startswith("flexivit"):
        return "flexivit"
    return "hybrid" if re.search(r"_r(\d+|)_s\d+|_r\d+_", arch) else "vit"


def _num_heads(cfg: Mapping[str, Any], width: int) -> int:
    args = cfg.get("model_args") or {}
    if "num_heads" in args:
        return int(args["num_heads"])
    m = _ARCH_RE.fullmatch(cfg.get("architecture") or "")
    size = m and (m["size"] or m["f"])
    return HEADS.get(size, max(1, width // 64)) if size else max(1, width // 64)  # a guess


def _read_weights(path: str) -> dict[str, np.ndarray]:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such file; a hub folder holds config.json and "
                                f"{WEIGHTS} (fix the path)")
    from safetensors.numpy import load_file

    try:
        return load_file(path)
    except Exception as e:  # noqa: BLE001 - safetensors raises its own error types
        reason = " ".join(str(e).split())[:100]
        raise ValueError(f"{path}: not a readable safetensors file ({type(e).__name__}: "
                         f"{reason}); re-download or re-export it") from None


def _upcast(sd: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], list[str]]:
    """(sd with every floating tensor as float32, the sorted stored dtype names): bfloat16 /
    float16 hub weights (e.g. `timm/..` bf16 releases) are computed on in float32."""
    dtypes = sorted({str(v.dtype) for v in sd.values()})
    return {k: v.astype(np.float32) if v.dtype != np.float32 and (
        np.issubdtype(v.dtype, np.floating) or v.dtype.name == "bfloat16") else v
        for k, v in sd.items()}, dtypes


def load(path: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(vitx params, meta) of a hub folder or `.safetensors` file (see the module docstring).

    meta: {"step": None, "timm": {"architecture", "file", "family", "hints", "pretrained_cfg",
    "num_classes", "num_params", "dtypes"}}, hints as `timm_layout.from_timm` (plus "family"
    from the architecture name); "dtypes": the stored dtypes (bfloat16 / float16 tensors are
    upcast to float32 params).

    Raises:
      FileNotFoundError: no weights file.
      ValueError: an unreadable / truncated safetensors or config.json, an unknown
        architecture, or weights that are not a timm ViT's (one line naming the file and keys).
    """
    weights, cfg_path = _files(path)
    cfg = _read_config(cfg_path)
    sd, dtypes = _upcast(_read_weights(weights))
    kernel = sd.get("patch_embed.proj.weight")
    width = int(kernel.shape[0]) if kernel is not None and kernel.ndim == 4 else 64
    args = cfg.get("model_args") or {}
    arch = cfg.get("architecture")
    nec = args.get("no_embed_class", True if (arch or "").startswith("flexivit") else None)
    params, hints = timm_layout.from_timm(sd, num_heads=_num_heads(cfg, width),
                                          no_embed_class=nec, file=weights)
    if "layer_scale" in hints and args.get("init_values"):
        hints["layer_scale"] = float(args["init_values"])
    pool = cfg.get("global_pool", args.get("global_pool"))
    if pool == "avg" and hints["pool_type"] == "tok":  # avg over patch tokens, cls kept
        hints.update(pool_type="gap", cls_token=True)
    if arch:
        family = check_architecture(arch, cfg_path or weights)
        hints["family"] = family if hints["family"] == "vit" else hints["family"]
    return params, {"step": None, "timm": {
        "architecture": arch, "file": weights, "family": hints["family"], "hints": hints,
        "pretrained_cfg": cfg.get("pretrained_cfg") or {}, "num_classes": cfg.get(
            "num_classes"), "num_params": sum(int(v.size) for v in sd.values()),
        "dtypes": dtypes}}


def init_hints(spec: str | None) -> dict[str, Any]:
    """The `config.model` keys a timm `model_init` fixes: {"gelu": "exact"} (timm's ViTs use
    the erf GELU) and, where its weights have them, `reg_tokens` (R of `reg_token`), `fc_norm`
    and `layer_scale` (config.json's `init_values`, else 1e-5: the loaded gammas win); {} for
    any other (or unreadable) spec; the loader reports errors later."""
    if not spec:
        return {}
    path = os.path.abspath(os.path.expanduser(spec.rsplit(":", 1)[0] if re.search(
        r":[^/\\]+$", spec) else spec))
    if not is_timm_path(path):
        return {}
    weights, cfg_path = _files(path)
    try:
        args = _read_config(cfg_path).get("model_args") or {}
    except ValueError:
        return {}
    act = str(args.get("act_layer") or "gelu")
    return {"gelu": "tanh" if act in ("gelu_tanh", "gelu_approximate") else "exact",
            **_extras_hints(weights, args)}


def _extras_hints(weights: str, args: Mapping[str, Any]) -> dict[str, Any]:
    """`reg_tokens` / `fc_norm` / `layer_scale` from the safetensors header (no tensor read)."""
    from safetensors import safe_open

    try:
        with safe_open(weights, "numpy") as f:
            keys = set(f.keys())
            reg = f.get_slice("reg_token").get_shape()[1] if "reg_token" in keys else 0
    except Exception:  # noqa: BLE001 - unreadable: `load` says why, with the file
        return {}
    out: dict[str, Any] = {"reg_tokens": int(reg)} if reg else {}
    if "fc_norm.weight" in keys:
        out["fc_norm"] = True
    if "blocks.0.ls1.gamma" in keys:
        out["layer_scale"] = float(args.get("init_values") or 1e-5)
    return out


def apply_init_hints(config: Any) -> dict[str, Any]:
    """Set the `config.model` keys a timm `config.model_init` fixes (`init_hints`) that the
    config leaves unset, for the ViT family (vit, flexivit, hybrid, polyvit: initialised by its
    ViT surgery); returns what was set.

    `config` is the run's ConfigDict (or a dict); its `model` section gets the keys, so they
    reach the model and the run's config.json.
    """
    if config.get("model_name") not in ("vit", "flexivit", "hybrid", "vit_hybrid", "polyvit"):
        return {}
    model = config.get("model")
    todo = {k: v for k, v in init_hints(config.get("model_init")).items()
            if (model is None or model.get(k) is None)
            and (k == "gelu" or config.get("model_name") != "polyvit")}
    if not todo:
        return {}
    with (config.unlocked() if hasattr(config, "unlocked") else contextlib.nullcontext()):
        if config.get("model") is None:
            config["model"] = {}
        for k, v in todo.items():
            config["model"][k] = v
    return todo


def pp_from_pretrained_cfg(pcfg: Mapping[str, Any]) -> str:
    """The vitx eval pp string that reproduces timm's eval transform of `pretrained_cfg`:
    resize the shorter side to floor(H / crop_pct) (`interpolation`), central crop H x W,
    then (x / 255 - mean) / std. Equal per-channel mean/std is `value_range(lo, hi)` with
    lo = -mean / std, hi = (1 - mean) / std; otherwise `vgg_value_range` on the 0..255 scale.
    Source: timm `data.transforms_factory.transforms_imagenet_eval`.
    """
    c, h, w = pcfg.get("input_size", (3, 224, 224))
    crop = float(pcfg.get("crop_pct") or 1.0)
    method = pcfg.get("interpolation", "bicubic")
    method = method if method in ("bilinear", "bicubic", "nearest", "area") else "bicubic"
    mean = [float(m) for m in pcfg.get("mean", (0.5, 0.5, 0.5))]
    std = [float(s) for s in pcfg.get("std", (0.5, 0.5, 0.5))]
    ops = ["decode" if c == 3 else f"decode(channels={c})"]
    if crop < 1.0 or h != w:
        ops.append(f"resize_small({math.floor(min(h, w) / crop)}, method='{method}')")
        ops.append(f"central_crop(({h}, {w}))" if h != w else f"central_crop({h})")
    else:
        ops.append(f"resize({h}, method='{method}')")
    if len(set(mean)) == 1 and len(set(std)) == 1:
        lo, hi = -mean[0] / std[0], (1 - mean[0]) / std[0]
        ops.append(f"value_range({lo:.6g}, {hi:.6g})")
    else:
        ops.append(f"vgg_value_range(mean={tuple(round(m * 255, 4) for m in mean)}, "
                   f"std={tuple(round(s * 255, 4) for s in std)})")
    return "|".join(ops)


def _model_cfg_from_hints(hints: Mapping[str, Any]) -> dict[str, Any]:
    keys = ("width", "depth", "mlp_dim", "num_heads", "patch_size", "pool_type", "cls_token",
            "gelu", "posemb", "resnet_blocks", "resnet_width", "reg_tokens", "fc_norm",
            "layer_scale")
    out = {k: hints[k] for k in keys if k in hints}
    if hints.get("family") == "flexivit":
        out["base_patch_size"] = out["patch_size"]
        out["posemb_grid"] = hints.get("posemb_grid")
    return out


def describe(path: str) -> str:
    """`vitx info CHECKPOINT`: architecture, parameter count, pretrained_cfg, the pp string
    that reproduces its eval preprocessing and the vitx model config the weights fit.

    Raises:
      FileNotFoundError / ValueError: see `load`.
    """
    from vitx.utils.tree import flat_leaves

    params, meta = load(path)
    t = meta["timm"]
    hints = t["hints"]
    n = sum(int(np.size(v)) for v in flat_leaves(params).values())
    name = {"vit": "vit", "flexivit": "flexivit", "hybrid": "hybrid"}[hints["family"]]
    pcfg = t["pretrained_cfg"]
    lines = [f"file: {t['file']}", f"architecture: {t['architecture']} (timm; vitx model_name="
             f"{name!r})", f"parameters: {t['num_params']:,} in timm, {n:,} in vitx (prefix "
             f"posemb slots folded into cls / registers)", f"dtype: {', '.join(t['dtypes'])}" + (
                 " (upcast to float32)" if t["dtypes"] != ["float32"] else ""),
             f"num_classes: {hints.get('num_classes')}",
             f"pretrained_cfg: {json.dumps(pcfg, sort_keys=True)}",
             f"pp (eval): {pp_from_pretrained_cfg(pcfg)}",
             f"model: {json.dumps(_model_cfg_from_hints(hints))}"]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------
# Export.

_HYBRID_ARCHS = {(): "vit_tiny_r_s16_p8_224", (2, 2, 2, 2): "vit_small_r26_s32_224",
                 (3, 4, 9): "vit_base_r50_s16_224", (3, 4, 6, 3): "vit_large_r50_s32_224"}


def _image_size(model_name: str, params: Mapping[str, Any]) -> tuple[int, int, int]:
    """(H, W, C) the params were made for: posemb grid x patch (x the hybrid's stem stride)."""
    from vitx.utils.tree import flat_leaves

    flat = flat_leaves(params)
    kh, kw, c, d = np.shape(flat["embedding/kernel"])
    n = int(np.shape(flat["pos_embedding"])[1]) if "pos_embedding" in flat else 0
    g = int(round(n ** 0.5)) if n else 1
    stride = 1
    if "conv_root/kernel" in flat:
        c = np.shape(flat["conv_root/kernel"])[2]
        stride = 4 * 2 ** max(0, len({k.split("/")[0] for k in flat if re.fullmatch(
            r"block\d+", k.split("/")[0])}) - 1)
    return g * int(kh) * stride, g * int(kw) * stride, int(c)


def _export_args(model_name: str, model: Mapping[str, Any], params: Mapping[str, Any]
                 ) -> tuple[str, dict[str, Any]]:
    """(timm architecture, model_args) of a vitx model config and its params.

    Raises:
      ValueError: a hybrid layout timm does not build.
    """
    from vitx.utils.tree import flat_leaves

    flat = flat_leaves(params)
    d = int(np.shape(flat["embedding/bias"])[0])
    kh, kw = np.shape(flat["embedding/kernel"])[:2]
    depth = len({k.split("/")[1] for k in flat if k.startswith("Transformer/encoderblock_")})
    if not depth and "Transformer/encoderblock/LayerNorm_0/scale" in flat:
        depth = int(np.shape(flat["Transformer/encoderblock/LayerNorm_0/scale"])[0])
    q = next(v for k, v in flat.items() if k.endswith(f"{timm_layout.MHA}/query/kernel"))
    mlp = next(v for k, v in flat.items() if k.endswith("MlpBlock_0/Dense_0/kernel"))
    h, w, c = _image_size(model_name, params)
    pool = "map" if "MAPHead_0" in params else model.get("pool_type", "tok")
    args: dict[str, Any] = dict(
        embed_dim=d, depth=depth, num_heads=int(np.shape(q)[-2]),
        mlp_ratio=float(np.shape(mlp)[-1] / d), patch_size=int(kh) if kh == kw else [
            int(kh), int(kw)], img_size=[h, w], in_chans=c, no_embed_class=True,
        class_token="cls" in params, global_pool={"tok": "token", "gap": "avg",
                                                  "map": "map"}[pool])
    if pool == "gap" or "fc_norm" in params:
        args["fc_norm"] = "fc_norm" in params
    if "registers" in params:  # register tokens (vitx.models.vit_tokens)
        args["reg_tokens"] = int(np.shape(params["registers"])[1])
    if any("/LayerScale_" in k for k in flat):  # timm builds ls1/ls2 only with init_values
        args["init_values"] = float(model.get("layer_scale") or 1e-5)
    if model.get("gelu", "tanh") == "tanh":
        args["act_layer"] = "gelu_tanh"
    if "pos_embedding" not in params:
        args["pos_embed"] = "none"
    arch = {"tok": "vit_base_patch16_224", "gap": "vit_base_patch16_224",
            "map": "vit_base_patch16_siglip_224"}[pool]
    if model_name == "flexivit":
        arch = "flexivit_small"
    elif "conv_root" in params:
        blocks = tuple(len(params[s]) for s in sorted(
            (k for k in params if re.fullmatch(r"block\d+", k)), key=lambda k: int(k[5:])))
        root = int(np.shape(flat["conv_root/kernel"])[-1])
        if blocks not in _HYBRID_ARCHS or root != 64:
            raise ValueError(f"hybrid with resnet_blocks={blocks}, root width {root}: timm "
                             f"builds only resnet_blocks in {sorted(_HYBRID_ARCHS)} at width 64 "
                             f"(resnet_width=1); export one of those")
        arch = _HYBRID_ARCHS[blocks]
    return arch, args


def export(params: Mapping[str, Any], output: str, *, model_name: str,
           model: Mapping[str, Any] | None, mean: float = 0.5, std: float = 0.5) -> str:
    """Write vitx ViT / FlexiViT / hybrid `params` as a timm hub folder `output` that
    `timm.create_model("local-dir:" + output, pretrained=True)` loads (config.json with
    `architecture`, `model_args`, `num_classes`, `pretrained_cfg`; model.safetensors).

    `model` is the run's `config.model` (`pool_type`, `gelu`: "tanh" is written as timm's
    `act_layer="gelu_tanh"`); the input size is the one the params were made for (posemb grid
    x patch size); `mean` / `std` on the 0..1 scale (vitx's `value_range(-1, 1)` is
    mean = std = 0.5). Written to a temporary folder and renamed, so a failure leaves nothing
    at `output`. Returns the architecture written.

    Raises:
      ValueError: a model without a timm layout, params timm cannot hold
        (`timm_layout.to_timm`), a hybrid layout timm does not build, or `output` exists and
        is not an empty folder.
    """
    from safetensors.numpy import save_file

    model = dict(model or {})
    if model_name not in ("vit", "flexivit", "hybrid", "vit_hybrid"):
        raise ValueError(f"--layout timm: model_name={model_name!r} has no timm layout; export "
                         f"a vit, flexivit or hybrid run (or use --layout vit_jax/big_vision)")
    if os.path.exists(output) and (not os.path.isdir(output) or os.listdir(output)):
        raise ValueError(f"--output {output} exists and is not an empty folder; pass a new "
                         f"folder (nothing was written)")
    sd = timm_layout.to_timm(params)
    arch, args = _export_args(model_name, model, params)
    k = int(sd["head.weight"].shape[0]) if "head.weight" in sd else 0
    (h, w), c = args["img_size"], args["in_chans"]
    first = "patch_embed.backbone.conv" if "conv_root" in params else "patch_embed.proj"
    cfg = {"architecture": arch, "num_classes": k, "num_features": args["embed_dim"],
           "global_pool": args["global_pool"], "model_args": args,
           "pretrained_cfg": {"tag": "vitx", "custom_load": False, "input_size": [c, h, w],
                              "fixed_input_size": True, "interpolation": "bilinear",
                              "crop_pct": 1.0, "crop_mode": "center", "mean": [mean] * c,
                              "std": [std] * c, "num_classes": k, "pool_size": None,
                              "first_conv": first, "classifier": "head"}}
    parent = os.path.dirname(os.path.abspath(output))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".timm_export_", dir=parent)
    try:
        save_file(sd, os.path.join(tmp, WEIGHTS))
        with open(os.path.join(tmp, "config.json"), "w") as f:
            json.dump(cfg, f, indent=2)
        if os.path.isdir(output):
            os.rmdir(output)
        os.replace(tmp, output)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return arch
