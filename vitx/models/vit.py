"""Vision Transformer (ViT) classifier.

Source: Dosovitskiy et al., "An Image is Worth 16x16 Words: Transformers for Image Recognition at
Scale", ICLR 2021, Sec. 3.1 (patch embedding, cls token, posemb, pre-LN encoder, head); seed 000
(JP7536893B2). Pooling `map`: Zhai et al., CVPR 2022. Variants "mu".."G": big_vision's
`decode_variant`; "pico"/"nano" are vitx's tiny widths for tests and small data.

Parameter tree (big_vision layout):

    embedding/{kernel (P, P, C, D), bias (D,)}
    cls (1, 1, D)                               # pool_type == "tok" (or cls_token=True) only
    pos_embedding (1, N, D)                     # posemb == "learn" only; N = (H/P) * (W/P)
    pos_embedding_{x,y} (1, W/P | H/P, D/2)     # posemb == "learn_2d" (vitx.models.posemb)
    Transformer/encoderblock_{i}/...            # or Transformer/encoderblock/... with scan
    Transformer/encoderblock_{i}/rel_table      # attention == "relative" (ViT_REL, relative.py)
    Transformer/encoder_norm/{scale, bias}
    MAPHead_0/...                               # pool_type == "map" only
    pre_logits/{kernel, bias}                   # representation_size set only
    head/{kernel (D, num_classes), bias}
    masked_patch/mask_embedding (1, 1, D)       # masked_patch_rate > 0 (then the head is per patch)
"""

from __future__ import annotations

import dataclasses
import logging
import re
from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vitx.models import layers, masked_patch, posemb, relative, resize, strided, surgery, vit_tokens
from vitx.utils import checkpoints, npz, pair, tree

Array = jax.Array
Params = dict[str, Any]
logger = logging.getLogger(__name__)

# name: (width, depth, mlp_dim, num_heads)
WIDTHS = {
    "pico": (32, 2, 64, 2),
    "nano": (64, 4, 128, 4),
    "mu": (144, 6, 576, 3),
    "Ti": (192, 12, 768, 3),
    "S": (384, 12, 1536, 6),
    "M": (512, 12, 2048, 8),
    "B": (768, 12, 3072, 12),
    "L": (1024, 24, 4096, 16),
    "So400m": (1152, 27, 4304, 16),
    "H": (1280, 32, 5120, 16),
    "g": (1408, 40, 6144, 16),
    "G": (1664, 48, 8192, 16),
}
POOL_TYPES = ("tok", "gap", "map")
POSEMB_TYPES = posemb.POSEMB_TYPES  # learn_2d, none: vitx.models.posemb


def decode_variant(variant: str | None) -> dict[str, Any]:
    """'S/16' -> dict(width=384, depth=12, mlp_dim=1536, num_heads=6, patch_size=(16, 16)).

    The patch part is optional ('S' alone) and may be rectangular ('B/16x8').

    Raises:
      ValueError: for an unknown size name or a malformed patch size.
    """
    if variant is None:
        return {}
    m = re.fullmatch(r"(?P<v>[A-Za-z0-9]+)(?:/(?P<p>\d+)(?:x(?P<q>\d+))?)?", variant)
    if not m or m["v"] not in WIDTHS:
        raise ValueError(f"model.variant={variant!r} is unknown; use '<size>/<patch>' with size in "
                         f"{list(WIDTHS)} (e.g. 'S/16', 'B/32', 'pico/4')")
    width, depth, mlp_dim, heads = WIDTHS[m["v"]]
    out: dict[str, Any] = dict(width=width, depth=depth, mlp_dim=mlp_dim, num_heads=heads)
    if m["p"]:
        out["patch_size"] = (int(m["p"]), int(m["q"] or m["p"]))
    return out


class VisionTransformer(nn.Module):
    """ViT. Input images (B, H, W, C) in [-1, 1]; returns (logits (B, num_classes), aux dict).

    aux holds "encoded" (B, N(+1), D), "token_map" (B, h, w, D) (the N = h * w patch tokens
    on their grid, without cls: the input of dense heads), "pre_logits" (B, D) and, with
    num_classes, "logits".

    Speed knobs (same math; results equal up to float summation order, tested):
      patch_embed: "matmul" (default; patches reshaped and multiplied by the conv kernel, ~10x
        faster fwd+bwd on XLA:CPU than the strided conv) or "conv". Params keep the conv layout.
      attention_impl: "auto" (default: cuDNN-capable `jax.nn.dot_product_attention` on GPU,
        the (B, H, N, d) layout elsewhere), "bhnd", "jax" or "einsum" (flax's default).

    Regularisation (train only; 0 = off, same params and outputs as without):
      dropout: on the embeddings and after each attention / MLP branch (ViT Appendix B.1).
      drop_path: stochastic depth, the last block's rate; block i of L drops each residual
        branch per example with rate `drop_path * i / max(L - 1, 1)` (Huang et al. 2016,
        Sec. 3; 0.1 in DeiT, Touvron et al. 2021, Table 9), also with `scan=True`.
      attention_dropout: dropout on the attention weights.

    Variants (issue 20): `attention="relative"` adds a learned (2h-1)x(2w-1) bias table per head
    and block (CoAtNet's ViT_REL, `relative.vit_bias`); `patch_stride` s < P gives overlapping
    patches, ((H - P) // s + 1) tokens a side (`strided`); `posemb` "learn_2d" / "none" (ViT
    App. D.4, `posemb`); `cls_token` switches the class token independently of pooling.

    Raises:
      ValueError: H or W not divisible by the patch size (or not tiled by the strided patches);
        unknown posemb/pool_type/attention; cls_token=False with pool_type "tok".
    """

    num_classes: int | None = 1000
    patch_size: Sequence[int] = (16, 16)
    width: int = 768
    depth: int = 12
    mlp_dim: int | None = None
    num_heads: int = 12
    posemb: str = "learn"
    pool_type: str = "tok"
    representation_size: int | None = None
    head_zeroinit: bool = True
    dropout: float = 0.0
    scan: bool = False
    remat_policy: str | None = None
    dtype_mm: str = "float32"
    patch_embed: str = "matmul"
    attention_impl: str = "auto"
    drop_path: float = 0.0
    attention_dropout: float = 0.0
    gelu: str = "tanh"  # MLP activation: "tanh" (Google's weights) or "exact" (timm's)
    masked_patch_rate: float = 0.0  # > 0: masked patch prediction (vitx.models.masked_patch)
    attention: str = "standard"  # "relative": ViT_REL (vitx.models.relative.vit_bias)
    patch_stride: Sequence[int] | None = None  # overlapping patches (vitx.models.strided)
    cls_token: bool | None = None  # None: a class token iff pool_type == "tok"
    reg_tokens: int = 0  # register tokens after cls (vitx.models.vit_tokens; Darcet 2024)
    fc_norm: bool = False  # final LayerNorm after pooling, not on the tokens (vit_tokens)
    layer_scale: float | None = None  # LayerScale init per block branch (vit_tokens; CaiT)

    def embed_patches(self, x: Array, **kw: Any) -> Array:
        """(B, H, W, C) -> (B, H/P, W/P, D) with a conv of kernel = stride = P (ViT eq. 1)."""
        ph, pw = self.patch_size
        h, w = x.shape[1:3]
        if self.patch_stride is not None:  # overlapping patches: ((H - P) // s + 1) tokens a side
            return strided.StridedPatchEmbed(
                self.width, (ph, pw), pair(self.patch_stride, "model.patch_stride"),
                dtype=layers.dtype_of(self.dtype_mm), impl=self.patch_embed, name="embedding")(x)
        if h % ph or w % pw:
            raise ValueError(f"model.patch_size={tuple(self.patch_size)} does not divide the image "
                             f"size {h}x{w}; choose a patch size that divides it or resize the "
                             f"images")
        return layers.PatchEmbed(self.width, (ph, pw), dtype=layers.dtype_of(self.dtype_mm),
                                 impl=self.patch_embed, name="embedding")(x)

    def add_posemb(self, x: Array, grid: tuple[int, int], **kw: Any) -> Array:
        """Add the position embedding to patch tokens (B, N, D), N = grid[0] * grid[1]."""
        n, d = x.shape[1:]
        if self.posemb in posemb.EXTRA_TYPES:
            return posemb.add(self, x, grid, self.posemb)
        if self.posemb == "learn":
            pe = self.param("pos_embedding", nn.initializers.normal(stddev=0.02), (1, n, d),
                            jnp.float32)
        elif self.posemb == "sincos2d":
            pe = layers.posemb_sincos_2d(*grid, d)
        else:
            raise ValueError(f"model.posemb={self.posemb!r} is unknown; use one of {POSEMB_TYPES}")
        return x + pe.astype(x.dtype)

    @nn.compact
    def __call__(self, x: Array, *, train: bool = False, **kw: Any) -> tuple[Array, dict]:
        out: dict[str, Array] = {}
        x = self.embed_patches(x, **kw)
        b, gh, gw, d = x.shape
        x = jnp.reshape(x, [b, gh * gw, d])
        if self.masked_patch_rate:  # corrupt patch embeddings (ViT Sec. 4.6)
            x, out["patch_mask"] = masked_patch.Corruption(
                self.masked_patch_rate, name="masked_patch")(x, train=train)
        x = self.add_posemb(x, (gh, gw), **kw)
        if self.pool_type not in POOL_TYPES:
            raise ValueError(f"model.pool_type={self.pool_type!r} is unknown; use one of "
                             f"{POOL_TYPES}")
        if posemb.use_cls(self.cls_token, self.pool_type):
            cls = self.param("cls", nn.initializers.zeros, (1, 1, d), x.dtype)
            x = jnp.concatenate([jnp.tile(cls, [b, 1, 1]), x], axis=1)
        x = vit_tokens.add_registers(self, x, gh * gw)
        x = nn.Dropout(rate=self.dropout)(x, not train)
        x = layers.Encoder(
            depth=self.depth, mlp_dim=self.mlp_dim, num_heads=self.num_heads,
            dropout=self.dropout, scan=self.scan, remat_policy=self.remat_policy,
            dtype_mm=layers.dtype_of(self.dtype_mm), attention_impl=self.attention_impl,
            drop_path=self.drop_path, attention_dropout=self.attention_dropout,
            **relative.encoder_kw(self, (gh, gw)), **vit_tokens.encoder_kw(self),
            gelu=self.gelu, name="Transformer")(x, train=train)
        x = vit_tokens.drop_registers(self, x, gh * gw, out)
        out["encoded"] = x
        out["token_map"] = jnp.reshape(x[:, -gh * gw:], [b, gh, gw, x.shape[-1]])  # patch tokens
        if self.masked_patch_rate:  # per-patch logits (B, N, K) of the N patch tokens
            x = nn.Dense(self.num_classes, name="head", kernel_init=nn.initializers.zeros)(
                x[:, -gh * gw:])
            return x, {**out, "logits": x}
        if self.pool_type == "tok":
            x = x[:, 0]
        elif self.pool_type == "gap":
            x = jnp.mean(x[:, -gh * gw:], axis=1)  # patch tokens only
        else:
            x = layers.MAPHead(num_heads=self.num_heads, mlp_dim=self.mlp_dim,
                               dtype_mm=layers.dtype_of(self.dtype_mm),
                               attention_impl=self.attention_impl, gelu=self.gelu)(x)
        x = vit_tokens.apply_fc_norm(self, x)
        if self.representation_size is not None:
            x = nn.tanh(nn.Dense(self.representation_size, name="pre_logits")(x))
        out["pre_logits"] = x
        if self.num_classes:
            init = nn.initializers.zeros if self.head_zeroinit else nn.initializers.lecun_normal()
            x = nn.Dense(self.num_classes, name="head", kernel_init=init)(x)
            out["logits"] = x
        return x, out


def make_model(cls: type[nn.Module], num_classes: int | None, *, variant: str | None = None,
               **kw: Any) -> nn.Module:
    """Build `cls` with `variant` ("S/16") expanded; explicit keyword arguments win."""
    args = {**decode_variant(variant), **kw}
    if "patch_size" in args:
        ps = args["patch_size"]
        args["patch_size"] = (ps, ps) if isinstance(ps, int) else tuple(ps)
    return cls(num_classes=num_classes, **args)


def Model(num_classes: int | None = 1000, *, variant: str | None = None, **kw: Any) -> nn.Module:  # noqa: N802
    """The ViT of this module, e.g. `Model(1000, variant="B/16")` (86.6M params at 224 px)."""
    return make_model(VisionTransformer, num_classes, variant=variant, **kw)


def check_rate(value: Any, key: str) -> None:
    """Raises a ValueError naming `key` unless `value` is None or a number in [0, 1)."""
    if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)
                              or not 0.0 <= value < 1.0):
        raise ValueError(f"{key}={value!r} must be a rate in [0, 1), e.g. 0.1; 0 turns it off")


@dataclasses.dataclass(frozen=True)
class ViTCfg:
    """The ViT / FlexiViT settings of `config.model` that are checked before any compile.

    Parsed once by `from_config` (`model.variant` expanded, e.g. "S/16" -> width 384, 6 heads,
    patch (16, 16); keys set in `config.model` win), checked in `__post_init__`, in the style of
    timm's `MaxxVitCfg`. A None field is not set: the model's default applies, and the model
    checks it when it runs.

    Fields:
      variant: `model.variant` as configured (for messages).
      width, num_heads: the encoder width D and its heads (D / num_heads = head size).
      patch_size: (ph, pw), the patch size of the image tokens.
      dtype_mm: the matmul compute dtype's name ("float32", "bfloat16").
      patch_embed: one of `layers.PATCH_EMBED_IMPLS`.
      attention_impl: one of `layers.ATTENTION_IMPLS`.
      drop_path: stochastic-depth rate of the last encoder block, in [0, 1) (linear in depth,
        `layers.drop_path_rates`).
      attention_dropout: dropout rate on the attention weights, in [0, 1).
      gelu: the MLP's GELU, one of `layers.GELU_TYPES` ("tanh": Google's weights, the model's
        default; "exact": timm's, set from a timm checkpoint by `vitx.utils.timm_hub`).

    Source: Dosovitskiy et al., ICLR 2021, Sec. 3.1 (patches of P x P pixels, D-wide encoder
    with multi-head attention); Huang et al., ECCV 2016, Sec. 3 (stochastic depth).

    Raises:
      ValueError: num_heads does not divide width; dtype_mm is not a dtype; an unknown
        patch_embed / attention_impl; patch_size not a positive int / pair; drop_path or
        attention_dropout not a number in [0, 1); naming the `model.` key and the fix.
    """

    variant: str | None = None
    width: int | None = None
    num_heads: int | None = None
    patch_size: tuple[int, int] | None = None
    dtype_mm: Any = None
    patch_embed: str | None = None
    attention_impl: str | None = None
    drop_path: float | None = None
    attention_dropout: float | None = None
    gelu: str | None = None
    attention: str | None = None
    posemb: str | None = None
    patch_stride: Any = None

    def __post_init__(self) -> None:
        width, heads = self.width, self.num_heads
        if isinstance(width, int) and isinstance(heads, int) and (heads < 1 or width % heads):
            raise ValueError(f"model.num_heads={heads} does not divide model.width={width}; use "
                             f"one of {[d for d in range(1, width + 1) if width % d == 0]}")
        if isinstance(self.dtype_mm, str):
            try:
                jnp.dtype(self.dtype_mm)
            except TypeError:
                raise ValueError(f"model.dtype_mm={self.dtype_mm!r} is not a dtype; use e.g. "
                                 f"'float32' or 'bfloat16'") from None
        for key, known in (("patch_embed", layers.PATCH_EMBED_IMPLS),
                           ("attention_impl", layers.ATTENTION_IMPLS),
                           ("gelu", layers.GELU_TYPES)):
            value = getattr(self, key)
            if value is not None and value not in known:
                raise ValueError(f"model.{key}={value!r} is unknown; use one of {known}")
        if self.patch_size is not None:
            object.__setattr__(self, "patch_size", pair(self.patch_size, "model.patch_size"))
        for key in ("drop_path", "attention_dropout"):
            check_rate(getattr(self, key), f"model.{key}")
        relative.check_attention(self.attention)
        posemb.check_posemb(self.posemb, width)
        if self.patch_stride is not None and self.patch_size is not None:
            object.__setattr__(self, "patch_stride", strided.check_stride(self.patch_size,
                                                                          self.patch_stride))

    @classmethod
    def from_config(cls, model_cfg: Mapping[str, Any], *, patch: bool = True) -> ViTCfg:
        """The schema of `config.model` (a mapping; `variant` and explicit keys).

        `patch=False` leaves `patch_size` unset (FlexiViT: its run-time patch sizes are
        `flexi.patch_sizes`, checked per size by the flexi plugin).

        Raises:
          ValueError: an unknown `model.variant` (`decode_variant`), or see the class.
        """
        variant = model_cfg.get("variant")
        args = {**decode_variant(variant), **{k: model_cfg[k] for k in ("width", "num_heads")
                                              if model_cfg.get(k) is not None}}
        ps = (model_cfg.get("patch_size") or args.get("patch_size")) if patch else None
        return cls(variant=variant, width=args.get("width"), num_heads=args.get("num_heads"),
                   patch_size=ps, dtype_mm=model_cfg.get("dtype_mm"),
                   patch_embed=model_cfg.get("patch_embed"),
                   attention_impl=model_cfg.get("attention_impl"),
                   drop_path=model_cfg.get("drop_path"),
                   attention_dropout=model_cfg.get("attention_dropout"),
                   **{k: model_cfg.get(k) for k in ("attention", "posemb", "patch_stride")},
                   gelu=model_cfg.get("gelu"))


def check_input(model_cfg: Mapping[str, Any], shape: Sequence[int]) -> None:
    """Check `config.model` (`ViTCfg`) and, before any compile, that the patch size divides the
    image (H, W, C) of the data.

    `model_cfg` is `config.model` (`variant` and/or `patch_size`).

    Raises:
      ValueError: naming `model.variant` / `model.patch_size`, the image size and the patch
        sizes that would work; or see `ViTCfg`.
    """
    cfg = ViTCfg.from_config(model_cfg)
    if cfg.patch_size is None:
        return
    ph, pw = cfg.patch_size
    h, w = shape[:2]
    if cfg.patch_stride is not None:  # overlapping: ((H - P) // s + 1) tokens a side
        return strided.check_image(shape, cfg.patch_size, cfg.patch_stride,
                                   f"model.variant={cfg.variant!r}, model.patch_size="
                                   f"{model_cfg.get('patch_size')!r}, model.patch_stride="
                                   f"{model_cfg.get('patch_stride')!r}")
    if h % ph or w % pw:
        divisors = [p for p in range(1, min(h, w) + 1) if h % p == 0 and w % p == 0]
        raise ValueError(
            f"model patch size {ph}x{pw} (model.variant={model_cfg.get('variant')!r}, "
            f"model.patch_size={model_cfg.get('patch_size')!r}) does not divide the image size "
            f"{h}x{w} made by input.pp; use a patch size in {divisors} or change the resize")


# ------------------------------------------------------------------------------------------------
# Checkpoint surgery (this model's `load`).


def reinit_head(params: Mapping[str, Any], num_classes: int, *,
                keep_pre_logits: bool = True) -> Params:
    """Replace `head` with a zero-initialised (D, K) layer, K = `num_classes`.

    Shapes: head/kernel (D, K) zeros, head/bias (K,) zeros, where D is pre_logits' output size
    if kept, else the model width (pre_logits' input size, the old head's input size, or
    encoder_norm's size). `keep_pre_logits=False` drops `pre_logits` (build the model with
    representation_size=None then). Dtype of the old head (float32 if none). Pure.

    Source: Dosovitskiy et al., ICLR 2021, Sec. 3.2 (zero-initialised D x K head).

    Raises:
      ValueError: num_classes < 1, or no param to read D from.
    """
    if num_classes < 1:
        raise ValueError(f"num_classes={num_classes} must be >= 1")
    flat = tree.flat_leaves(params)
    if "pre_logits/kernel" in flat:
        d = np.shape(flat["pre_logits/kernel"])[1 if keep_pre_logits else 0]
    elif "head/kernel" in flat:
        d = np.shape(flat["head/kernel"])[0]
    elif "Transformer/encoder_norm/scale" in flat:
        d = np.shape(flat["Transformer/encoder_norm/scale"])[-1]
    else:
        raise ValueError("reinit_head: params have none of pre_logits/kernel, head/kernel, "
                         "Transformer/encoder_norm/scale to read the head width from; pass ViT "
                         "params")
    old = flat.get("head/kernel")
    dtype = old.dtype if old is not None else jnp.float32
    xp = np if isinstance(old, np.ndarray) else jnp
    out = {k: v for k, v in params.items() if k != "head"}
    if not keep_pre_logits:
        out.pop("pre_logits", None)
    out["head"] = {"kernel": xp.zeros((d, num_classes), dtype), "bias": xp.zeros((num_classes,),
                                                                                  dtype)}
    return out


def adapt_params(init: Mapping[str, Any], loaded: Mapping[str, Any], *,
                 dont_load: Sequence[str] = (), posemb_method: str = "bilinear",
                 old_grid: Sequence[int] | None = None,
                 new_grid: Sequence[int] | None = None,
                 patch_method: str = "bilinear") -> Params:
    """Standard fine-tune surgery on `loaded`, then `tree.merge_params(init, ...)` (strict).

    Adaptations (each one logged):
      * scan layout: `loaded` is stacked/unstacked to match `init` (`npz.stack_blocks`).
      * `pre_logits` / `head` of `loaded` are dropped when `init` has none (ViT Sec. 3.2: remove
        the pre-trained head).
      * head: if any head/* shape differs (other number of classes), the whole head is
        re-initialised to zeros of init's shapes (ViT Sec. 3.2); same shapes are loaded. These
        two steps are `vitx.models.surgery.adapt_head`.
      * pos_embedding (1, N0, D) -> (1, N1, D) when N0 != N1: `resize_posemb` with
        `posemb_method`, grids `old_grid` / `new_grid` or inferred as squares (`infer_grid`).
      * embedding/kernel (P0h, P0w, C, D) -> (P1h, P1w, C, D): `pi_resize_patch_kernel` with
        `patch_method` (FlexiViT Sec. 3.4).
    Everything else must match exactly (`vitx.utils.tree.merge_params`; `dont_load`: re.fullmatch).
    Shapes: the result has init's structure, shapes and dtypes. Pure apart from logging.

    Source: Dosovitskiy et al., ICLR 2021, Sec. 3.2; Beyer et al., FlexiViT, CVPR 2023, Sec. 3.4.

    Raises:
      ValueError: from `vitx.utils.tree.merge_params` (listing every param that cannot be loaded
        or adapted), from `infer_grid` (non-square grid: pass old_grid/new_grid), unknown methods.
    """
    resize.check_method(posemb_method)
    resize.check_method(patch_method)
    loaded = dict(loaded)
    init_scan, loaded_scan = npz.is_scanned(init), npz.is_scanned(loaded)
    if init_scan is True and loaded_scan is False:
        logger.info("vit.load: stacking encoderblock_{i} into a scanned encoderblock")
        loaded = npz.stack_blocks(loaded)
    elif init_scan is False and loaded_scan is True:
        logger.info("vit.load: unstacking scanned encoderblock into encoderblock_{i}")
        loaded = npz.unstack_blocks(loaded)
    loaded = surgery.adapt_head(init, loaded, who="vit.load")

    def adapter(name: str, value: Any, ref: Any) -> Any:
        shape, ref_shape = tuple(np.shape(value)), tuple(ref.shape)
        if (name == "pos_embedding" and len(shape) == 3 and len(ref_shape) == 3
                and shape[::2] == ref_shape[::2]):
            og = pair(old_grid, "old_grid") if old_grid is not None else resize.infer_grid(
                shape[1])
            ng = pair(new_grid, "new_grid") if new_grid is not None else resize.infer_grid(
                ref_shape[1])
            logger.info("vit.load: pos_embedding %s -> %s (grid %s -> %s, %s)",
                        shape, ref_shape, og, ng, posemb_method)
            return resize.resize_posemb(jnp.asarray(value), og, ng, method=posemb_method)
        if (name == "embedding/kernel" and len(shape) == 4 and len(ref_shape) == 4
                and shape[2:] == ref_shape[2:]):
            logger.info("vit.load: embedding/kernel %s -> %s (PI-resize, %s)",
                        shape, ref_shape, patch_method)
            return resize.pi_resize_patch_kernel(jnp.asarray(value), ref_shape[:2], patch_method)
        out = relative.adapt_rel_table(name, value, ref_shape, posemb_method)  # ViT_REL tables
        return out if out is not None else posemb.adapt_learn_2d(name, value, ref_shape,
                                                                 posemb_method)

    return tree.merge_params(init, loaded, dont_load=dont_load, adapt=adapter)


def load(init_params: Any, init_file: str, model_cfg: Any = None, dont_load: Sequence[str] = (),
         **kw: Any) -> Params:
    """Fine-tune surgery: the params of checkpoint `init_file`, adapted to this model's init.

    big_vision's `models/vit.py: load(init_params, init_file, model_cfg, dont_load)`.
    `init_file` is any checkpoint spec (`vitx.utils.checkpoints`: a vitx workdir, a step
    directory, a vitx / vit_jax / big_vision .npz, optionally `:subtree`); `init_params` is the
    fresh init (its structure, shapes and dtypes win); `kw` are `adapt_params`'s options
    (`posemb_method`, `patch_method`, `old_grid`, `new_grid`), i.e. `config.model_load`.
    Returns host numpy params of init's structure.

    Raises:
      FileNotFoundError / ValueError: see `vitx.utils.checkpoints.load_params` and
        `adapt_params` (one error listing every param that cannot be loaded).
    """
    del model_cfg  # the shapes of init_params say everything the surgery needs
    loaded, _ = checkpoints.load_params(init_file)
    return adapt_params(jax.device_get(init_params), loaded, dont_load=dont_load, **kw)
