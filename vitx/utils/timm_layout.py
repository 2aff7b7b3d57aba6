"""timm's state-dict layout <-> vitx's param tree, for the ViT family (pure numpy, no torch).

timm (`timm.models.vision_transformer`, `vision_transformer_hybrid`, `resnetv2`) names its
tensors with '.' and stores PyTorch layouts; vitx stores big_vision's names (see
`vitx.models.vit`). The mapping, per family ("vit": `vit_*` / `deit_*` (not distilled);
"flexivit": `flexivit_*`, a ViT with `no_embed_class`; "hybrid": `vit_*_r*_*`):

    timm                                        vitx
    patch_embed.proj.weight (D, C, P, P)        embedding/kernel (P, P, C, D)
    cls_token (1, 1, D)                         cls (+ pos_embed[:, :1] folded in, see below)
    pos_embed (1, [1 + R +] N, D)               pos_embedding (1, N, D)
    blocks.{i}.norm1 / norm2                    Transformer/encoderblock_{i}/LayerNorm_0 / _1
    blocks.{i}.attn.qkv.weight (3D, D)          .../MultiHeadDotProductAttention_0/{query,key,
                                                value}/kernel (D, H, D/H), bias (H, D/H)
    blocks.{i}.attn.proj.weight (D, D)          .../MultiHeadDotProductAttention_0/out/kernel
                                                (H, D/H, D)
    blocks.{i}.mlp.fc1 / fc2                    .../MlpBlock_0/Dense_0 / Dense_1 (kernel = W.T)
    blocks.{i}.ls1.gamma / ls2.gamma (D,)       .../LayerScale_0 / _1/scale   (model.layer_scale)
    norm                                        Transformer/encoder_norm
    fc_norm (norm after pooling; no `norm`)     fc_norm                       (model.fc_norm)
    reg_token (1, R, D)                         registers (+ its pos_embed slots folded in)
                                                                              (model.reg_tokens)
    attn_pool.{latent,q,kv,proj,norm,mlp}       MAPHead_0/{probe, ...query, key+value, out,
                                                LayerNorm_0, MlpBlock_0}   (global_pool "map")
    head.weight (K, D)                          head/kernel (D, K)
    patch_embed.backbone.[stem.]conv / norm     conv_root (7, 7, C, w) / gn_root   (hybrid)
    patch_embed.backbone.stages.{s}.blocks.{u}  block{s+1}/unit{u+1}/{conv1..3, gn1..3,
      .{conv1..3, norm1..3, downsample.conv,      conv_proj, gn_proj}
      downsample.norm}

A timm posemb with prefix slots (`no_embed_class=False`: one per class and register token) is
folded into the cls token and the registers (`cls + pos_embed[:, :1]`, `reg +
pos_embed[:, 1:1 + R]`), exact because these tokens are constant inputs (the same rule as
`vitx.utils.npz` for vit_jax); vitx -> timm writes `no_embed_class=True`, so nothing is lost.
Register tokens, fc_norm and layer scale are `vitx.models.vit_tokens` (Darcet et al. 2024;
MAE / BEiT; CaiT Sec. 3). timm's ViTs use the exact (erf) GELU, vitx's default is the tanh
approximation: the loader reports `gelu="exact"` for the model config (`vitx.utils.timm_hub`).

Not mapped (a one-line error names the keys), as vitx's ViT has none of these: `qk_norm`
(per-head LayerNorms with bias on q and k; flax's `normalize_qk` has no bias), `norm_pre` (CLIP
towers, whose LayerNorms all use eps 1e-5 where vitx's use 1e-6), distillation tokens
(DeiT-distilled: a second token with its own head, averaged with the cls head at eval and
trained against a teacher; vitx has neither the head nor the distillation loss). Sources:
timm 1.0 `VisionTransformer`, `_load_weights` (its big_vision .npz reader, the inverse of this
mapping).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import numpy as np

from vitx.utils.tree import flat_leaves

__all__ = ["FAMILIES", "from_timm", "infer_family", "to_timm"]

Params = dict[str, Any]
FAMILIES = ("vit", "flexivit", "hybrid")
_UNSUPPORTED = (("q_norm.", "qk_norm"), ("k_norm.", "qk_norm"), ("norm_pre.", "norm_pre"),
                ("dist_token", "a distillation token"), ("head_dist.", "a distillation head"))
_BLOCK = "Transformer/encoderblock_{}"
MHA = "MultiHeadDotProductAttention_0"


def infer_family(keys: Any) -> str | None:
    """'vit' / 'hybrid' from timm state-dict keys (flexivit is a vit: its config says), or None
    when the keys are not a timm ViT's (no `blocks.0.attn.qkv.weight`)."""
    keys = set(keys)
    if "blocks.0.attn.qkv.weight" not in keys or "patch_embed.proj.weight" not in keys:
        return None
    return "hybrid" if any(k.startswith("patch_embed.backbone.") for k in keys) else "vit"


def _t(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.asarray(x).T)


def _conv_in(w: np.ndarray) -> np.ndarray:  # torch (O, I, kh, kw) -> flax (kh, kw, I, O)
    return np.ascontiguousarray(np.transpose(w, (2, 3, 1, 0)))


def _conv_out(w: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.transpose(w, (3, 2, 0, 1)))


def _heads_in(w: np.ndarray, b: np.ndarray | None, heads: int, parts: int, where: str) -> list:
    """Fused torch Linear (parts*D, D) -> `parts` flax DenseGeneral (D, H, d) kernels + biases."""
    d_out = w.shape[0] // parts
    if d_out % heads:
        raise ValueError(f"{where}: width {d_out} is not divisible by num_heads={heads}; set "
                         f"model_args.num_heads in config.json (or model.num_heads)")
    out = []
    for j in range(parts):
        wj = w[j * d_out:(j + 1) * d_out]
        bj = (np.zeros(d_out, w.dtype) if b is None else b[j * d_out:(j + 1) * d_out])
        out.append({"kernel": np.ascontiguousarray(wj.T.reshape(w.shape[1], heads, -1)),
                    "bias": np.ascontiguousarray(bj.reshape(heads, -1))})
    return out


def _mha_in(sd: Mapping[str, np.ndarray], p: str, heads: int, where: str, *,
            q: str | None = None, kv: str | None = None) -> Params:
    if q is None:
        qkv = _heads_in(sd[f"{p}qkv.weight"], sd.get(f"{p}qkv.bias"), heads, 3, where)
    else:
        qkv = (_heads_in(sd[f"{p}{q}.weight"], sd.get(f"{p}{q}.bias"), heads, 1, where)
               + _heads_in(sd[f"{p}{kv}.weight"], sd.get(f"{p}{kv}.bias"), heads, 2, where))
    w = sd[f"{p}proj.weight"]
    out = {"kernel": np.ascontiguousarray(w.T.reshape(heads, -1, w.shape[0])),
           "bias": sd[f"{p}proj.bias"]}
    return dict(zip(("query", "key", "value"), qkv, strict=True)) | {"out": out}


def _ln(sd: Mapping[str, np.ndarray], p: str) -> Params:
    return {"scale": sd[f"{p}.weight"], "bias": sd[f"{p}.bias"]}


def _mlp_in(sd: Mapping[str, np.ndarray], p: str) -> Params:
    return {f"Dense_{i}": {"kernel": _t(sd[f"{p}fc{i + 1}.weight"]),
                           "bias": sd[f"{p}fc{i + 1}.bias"]} for i in range(2)}


def _resnet_in(sd: Mapping[str, np.ndarray], used: set[str], file: str) -> Params:
    """timm ResNetV2 (preact=False, the hybrid stem) -> vit_jax's names (`vitx.models.resnet`)."""
    out: Params = {}
    p = "patch_embed.backbone."
    stem = p + ("stem." if p + "stem.conv.weight" in sd else "")
    if stem + "conv.weight" not in sd or stem + "norm.weight" not in sd:
        keys = sorted(k for k in sd if k.startswith(p))[:3]
        raise ValueError(f"{file}: hybrid backbone {keys}... is not timm's ResNetV2 with "
                         f"GroupNorm (the vit_*_r* hybrids); vitx maps only those, not "
                         f"resnet*d / BatchNorm backbones")
    out["conv_root"] = {"kernel": _conv_in(sd[stem + "conv.weight"])}
    out["gn_root"] = _ln(sd, stem + "norm")
    used.update({stem + "conv.weight", stem + "norm.weight", stem + "norm.bias"})
    names = {"conv1": "conv1", "conv2": "conv2", "conv3": "conv3", "norm1": "gn1",
             "norm2": "gn2", "norm3": "gn3", "downsample.conv": "conv_proj",
             "downsample.norm": "gn_proj"}
    for k in sd:
        m = re.fullmatch(re.escape(p) + r"stages\.(\d+)\.blocks\.(\d+)\.(.+)\.(weight|bias)", k)
        if not m or m[3] not in names:
            continue
        unit = out.setdefault(f"block{int(m[1]) + 1}", {}).setdefault(f"unit{int(m[2]) + 1}", {})
        name = names[m[3]]
        if name.startswith("conv"):
            unit[name] = {"kernel": _conv_in(sd[k])}
        else:
            unit.setdefault(name, {})["scale" if m[4] == "weight" else "bias"] = sd[k]
        used.add(k)
    return out


def from_timm(sd: Mapping[str, np.ndarray], *, num_heads: int,
              no_embed_class: bool | None = None, file: str = "state dict") -> tuple[Params, dict]:
    """A timm ViT / FlexiViT / hybrid state dict -> (vitx params, model hints).

    `sd`: name -> numpy array (as `safetensors.numpy.load_file` returns). `num_heads` splits
    the fused qkv (timm does not store it: config.json's `model_args`, or the architecture's
    size). `no_embed_class`: whether `pos_embed` lacks the cls slot (None: inferred, the slot
    is there when pos_embed has one token more than a square grid). The hints are the vitx
    `config.model` keys the weights imply: width, depth, mlp_dim, num_heads, patch_size,
    pool_type, posemb_grid (gh, gw), num_classes, gelu="exact", family, for hybrids
    resnet_blocks / resnet_width, and where present reg_tokens, fc_norm, layer_scale.

    Raises:
      ValueError: not a timm ViT state dict, or one with parts vitx's ViT lacks (qk_norm,
        norm_pre, distillation tokens), naming `file`, the keys and the fix.
    """
    family = infer_family(sd)
    if family is None:
        some = sorted(sd)[:4]
        raise ValueError(f"{file}: not a timm ViT state dict (keys {some}... lack "
                         f"blocks.0.attn.qkv.weight / patch_embed.proj.weight); pass a vit_*, "
                         f"flexivit_* or vit_*_r* hybrid checkpoint")
    bad = sorted({what for k in sd for key, what in _UNSUPPORTED if key in k})
    if bad:
        keys = sorted(k for k in sd if any(key in k for key, _ in _UNSUPPORTED))[:3]
        raise ValueError(f"{file}: this timm ViT has {', '.join(bad)} ({keys}), which vitx's "
                         f"ViT does not implement; use a checkpoint without them (register "
                         f"tokens, fc_norm and layer scale are mapped)")
    used: set[str] = set()
    out: Params = {}
    kernel = sd["patch_embed.proj.weight"]
    out["embedding"] = {"kernel": _conv_in(kernel), "bias": sd["patch_embed.proj.bias"]}
    depth = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("blocks."))
    for i in range(depth):
        p = f"blocks.{i}."
        block = {"LayerNorm_0": _ln(sd, p + "norm1"), "LayerNorm_1": _ln(sd, p + "norm2"),
                 MHA: _mha_in(sd, p + "attn.", num_heads, f"{file}: {p}attn"),
                 "MlpBlock_0": _mlp_in(sd, p + "mlp.")}
        for j in (0, 1):  # layer scale (CaiT Sec. 3): ls1 / ls2 -> LayerScale_0 / _1
            if f"{p}ls{j + 1}.gamma" in sd:
                block[f"LayerScale_{j}"] = {"scale": sd[f"{p}ls{j + 1}.gamma"]}
        out.setdefault("Transformer", {})[f"encoderblock_{i}"] = block
        used.update(k for k in sd if k.startswith(p))
    width = kernel.shape[0]
    hints: dict[str, Any] = dict(family=family, width=int(width), depth=depth,
                                 mlp_dim=int(sd["blocks.0.mlp.fc1.weight"].shape[0]),
                                 num_heads=int(num_heads), patch_size=tuple(kernel.shape[2:]),
                                 gelu="exact")
    if "blocks.0.ls1.gamma" in sd:
        hints["layer_scale"] = 1e-5  # timm's init_values default; the loaded gammas win
    if "fc_norm.weight" in sd:  # norm after pooling, none on the tokens
        out["fc_norm"] = _ln(sd, "fc_norm")
        hints["fc_norm"] = True
    else:
        out["Transformer"]["encoder_norm"] = _ln(sd, "norm")
    norm = "fc_norm" if "fc_norm" in out else "norm"
    used.update({"patch_embed.proj.weight", "patch_embed.proj.bias", f"{norm}.weight",
                 f"{norm}.bias"})
    n_pos = sd["pos_embed"].shape[1] if "pos_embed" in sd else 0
    has_cls = "cls_token" in sd
    n_reg = int(sd["reg_token"].shape[1]) if "reg_token" in sd else 0
    prefix = int(has_cls) + n_reg  # class + register tokens (timm's num_prefix_tokens)
    if no_embed_class is None:
        no_embed_class = not (prefix and _is_square(n_pos - prefix) and not _is_square(n_pos))
    pe = np.asarray(sd["pos_embed"]) if "pos_embed" in sd else None
    slot = 0 if no_embed_class or pe is None else prefix
    if pe is not None:
        out["pos_embedding"] = pe[:, slot:]
        side = int(round((n_pos - slot) ** 0.5))
        hints["posemb_grid"] = (side, side)
        used.add("pos_embed")
    else:
        hints["posemb"] = "none"
    if has_cls:
        cls = np.asarray(sd["cls_token"])
        out["cls"] = cls + pe[:, :1] if slot else cls
        used.add("cls_token")
    if n_reg:  # register tokens (Darcet et al. 2024): their posemb slots folded in, as cls's
        reg = np.asarray(sd["reg_token"])
        out["registers"] = reg + pe[:, int(has_cls):prefix] if slot else reg
        hints["reg_tokens"] = n_reg
        used.add("reg_token")
    if "attn_pool.latent" in sd:
        mh = {"probe": sd["attn_pool.latent"], MHA: _mha_in(
            sd, "attn_pool.", num_heads, f"{file}: attn_pool", q="q", kv="kv"),
            "LayerNorm_0": _ln(sd, "attn_pool.norm"), "MlpBlock_0": _mlp_in(sd, "attn_pool.mlp.")}
        out["MAPHead_0"] = mh
        used.update(k for k in sd if k.startswith("attn_pool."))
        hints["pool_type"] = "map"
    else:
        hints["pool_type"] = "tok" if has_cls else "gap"
    if "head.weight" in sd:
        out["head"] = {"kernel": _t(sd["head.weight"]), "bias": sd["head.bias"]}
        hints["num_classes"] = int(sd["head.weight"].shape[0])
        used.update({"head.weight", "head.bias"})
    if family == "hybrid":
        out.update(_resnet_in(sd, used, file))
        hints["resnet_blocks"] = tuple(len({k.split(".")[5] for k in sd if k.startswith(
            f"patch_embed.backbone.stages.{s}.")}) for s in range(len(
                {k.split(".")[3] for k in sd if k.startswith("patch_embed.backbone.stages.")})))
        hints["resnet_width"] = out["conv_root"]["kernel"].shape[-1] / 64
    left = sorted(set(sd) - used)
    if left:
        raise ValueError(f"{file}: {len(left)} timm tensors vitx does not map ({left[:4]}); use "
                         f"a vit_*, flexivit_* or vit_*_r* checkpoint of timm's standard layout")
    return out, hints


def _is_square(n: int) -> bool:
    return n > 0 and int(round(n ** 0.5)) ** 2 == n


# ------------------------------------------------------------------------------------------------
# vitx -> timm


def _heads_out(parts: list[Mapping[str, Any]]) -> tuple[np.ndarray, np.ndarray]:
    ws = [np.asarray(p["kernel"]).reshape(np.shape(p["kernel"])[0], -1).T for p in parts]
    bs = [np.asarray(p["bias"]).reshape(-1) for p in parts]
    return np.concatenate(ws, 0), np.concatenate(bs, 0)


def _mha_out(m: Mapping[str, Any], p: str, sd: dict, *, fused: bool = True) -> None:
    if fused:
        sd[p + "qkv.weight"], sd[p + "qkv.bias"] = _heads_out([m["query"], m["key"], m["value"]])
    else:
        sd[p + "q.weight"], sd[p + "q.bias"] = _heads_out([m["query"]])
        sd[p + "kv.weight"], sd[p + "kv.bias"] = _heads_out([m["key"], m["value"]])
    k = np.asarray(m["out"]["kernel"])
    sd[p + "proj.weight"] = k.reshape(-1, k.shape[-1]).T
    sd[p + "proj.bias"] = np.asarray(m["out"]["bias"])


def _ln_out(m: Mapping[str, Any], p: str, sd: dict) -> None:
    sd[p + ".weight"], sd[p + ".bias"] = np.asarray(m["scale"]), np.asarray(m["bias"])


def _mlp_out(m: Mapping[str, Any], p: str, sd: dict) -> None:
    for i in range(2):
        sd[f"{p}fc{i + 1}.weight"] = _t(m[f"Dense_{i}"]["kernel"])
        sd[f"{p}fc{i + 1}.bias"] = np.asarray(m[f"Dense_{i}"]["bias"])


def to_timm(params: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """vitx ViT / FlexiViT / hybrid params (unscanned or scanned) -> a timm state dict.

    The inverse of `from_timm` with `no_embed_class=True` (pos_embed holds the N patch tokens;
    the cls token keeps its own value). Leaves become contiguous float numpy arrays.

    Raises:
      ValueError: params that are not a vitx ViT's (no embedding / Transformer), or with parts
        timm's ViT lacks (`pre_logits`), naming the params and the fix.
    """
    from vitx.utils.npz import unstack_blocks  # same layer; lazy to keep imports light

    params = unstack_blocks(dict(params))
    if "embedding" not in params or "Transformer" not in params:
        raise ValueError(f"params with top-level names {sorted(params)[:6]} are not a vitx ViT's "
                         f"(no embedding / Transformer); export a vit, flexivit or hybrid run")
    if "pre_logits" in params:
        raise ValueError("params have pre_logits (model.representation_size), which timm's "
                         "VisionTransformer lacks; export a model without representation_size")
    sd: dict[str, np.ndarray] = {}
    sd["patch_embed.proj.weight"] = _conv_out(np.asarray(params["embedding"]["kernel"]))
    sd["patch_embed.proj.bias"] = np.asarray(params["embedding"]["bias"])
    if "cls" in params:
        sd["cls_token"] = np.asarray(params["cls"])
    if "registers" in params:
        sd["reg_token"] = np.asarray(params["registers"])
    if "pos_embedding" in params:
        sd["pos_embed"] = np.asarray(params["pos_embedding"])
    t = params["Transformer"]
    depth = sum(1 for k in t if re.fullmatch(r"encoderblock_\d+", k))
    for i in range(depth):
        b, p = t[f"encoderblock_{i}"], f"blocks.{i}."
        _ln_out(b["LayerNorm_0"], p + "norm1", sd)
        _mha_out(b[MHA], p + "attn.", sd)
        _ln_out(b["LayerNorm_1"], p + "norm2", sd)
        _mlp_out(b["MlpBlock_0"], p + "mlp.", sd)
        for j in (0, 1):
            if f"LayerScale_{j}" in b:
                sd[f"{p}ls{j + 1}.gamma"] = np.asarray(b[f"LayerScale_{j}"]["scale"])
    if "encoder_norm" in t:
        _ln_out(t["encoder_norm"], "norm", sd)
    if "fc_norm" in params:
        _ln_out(params["fc_norm"], "fc_norm", sd)
    if "MAPHead_0" in params:
        m = params["MAPHead_0"]
        sd["attn_pool.latent"] = np.asarray(m["probe"])
        _mha_out(m[MHA], "attn_pool.", sd, fused=False)
        _ln_out(m["LayerNorm_0"], "attn_pool.norm", sd)
        _mlp_out(m["MlpBlock_0"], "attn_pool.mlp.", sd)
    if "head" in params:
        sd["head.weight"] = _t(params["head"]["kernel"])
        sd["head.bias"] = np.asarray(params["head"]["bias"])
    if "conv_root" in params:
        _resnet_out(params, sd)
    return {k: np.ascontiguousarray(v, np.float32) for k, v in sd.items()}


def _resnet_out(params: Mapping[str, Any], sd: dict) -> None:
    stages = sorted(k for k in params if re.fullmatch(r"block\d+", k))
    stem = "patch_embed.backbone." + ("stem." if stages else "")
    sd[stem + "conv.weight"] = _conv_out(np.asarray(params["conv_root"]["kernel"]))
    _ln_out(params["gn_root"], stem + "norm", sd)
    names = {"conv1": "conv1", "conv2": "conv2", "conv3": "conv3", "gn1": "norm1",
             "gn2": "norm2", "gn3": "norm3", "conv_proj": "downsample.conv",
             "gn_proj": "downsample.norm"}
    for s, stage in enumerate(stages):
        for name, value in flat_leaves(params[stage]).items():
            unit, mod, leaf = name.split("/")
            u = int(unit.removeprefix("unit")) - 1
            p = f"patch_embed.backbone.stages.{s}.blocks.{u}.{names[mod]}"
            if mod.startswith("conv"):
                sd[p + ".weight"] = _conv_out(np.asarray(value))
            else:
                sd[p + (".weight" if leaf == "scale" else ".bias")] = np.asarray(value)

