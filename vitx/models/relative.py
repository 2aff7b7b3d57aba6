"""Relative-position attention: a learned 2D relative bias added to self-attention logits.

Shared by the models with relative attention (CoAtNet's Transformer stages; the next ViT
variants). A token grid H x W in raster order (N = H * W tokens) has (2H-1)(2W-1) distinct 2D
offsets; a table (heads, 2H-1, 2W-1) holds one learnable scalar per head and offset, and the bias
of query i and key j is the entry of their offset i - j.

Sources:
  * Dai, Liu, Le, Tan, "CoAtNet: Marrying Convolution and Attention for All Data Sizes",
    NeurIPS 2021 (arXiv 2106.04803), Sec. 2.1, eqs. 1-3: y_i = sum_j softmax_j(x_i^T x_j +
    w_{i-j}) x_j, the static, translation-equivariant kernel w_{i-j} added before the softmax
    ("pre_softmax", the paper's choice) or after it ("post_softmax", the y^post form of eq. 3);
    Sec. 4.1: fine-tuning at 384 / 512 px with the table resized.
  * Where the paper leaves a detail open, the authors' MaxViT code (google-research/maxvit,
    `maxvit/models/attention_utils.py`) decides: table init normal(0.02), softmax in float32.

Parameter tree of `RelativeAttention`:

    qkv/{kernel (Din, 3 D), bias (3 D,)}
    rel_table (heads, 2H-1, 2W-1)
    proj/{kernel (D, D), bias (D,)}
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vitx.models import resize
from vitx.utils import pair

Array = jax.Array

#: Where the relative bias joins the attention weights (CoAtNet Sec. 2.1, eq. 3).
REL_POS_MODES = ("pre_softmax", "post_softmax")


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
# ViT_REL: the same table inside the ViT family's encoder blocks (`model.attention="relative"`).

#: `model.attention` of the ViT family: "standard" (softmax(q k^T / sqrt(d)), ViT Sec. 3.1) or
#: "relative" (+ a learned relative bias per head, CoAtNet's ViT_REL, Sec. 2.1 and Table 3).
VIT_ATTENTIONS = ("standard", "relative")


def check_attention(value: Any) -> None:
    """Raises a one-line ValueError naming `model.attention` unless it is in `VIT_ATTENTIONS`."""
    if value is not None and value not in VIT_ATTENTIONS:
        raise ValueError(f"model.attention={value!r} is unknown; use one of {VIT_ATTENTIONS}")


def vit_bias(module: nn.Module, heads: int, n_tokens: int, grid: Sequence[int],
             table_grid: Sequence[int] | None = None, method: str = "bilinear") -> Array:
    """The relative bias of one ViT encoder block: (1, heads, N, N), N = T + H * W tokens.

    Creates `module`'s param `rel_table` (heads, 2H0-1, 2W0-1) (normal 0.02, as
    `RelativeAttention`) for the stored grid `table_grid` = (H0, W0) (default: `grid`), resized
    to the token grid `grid` = (H, W) with `resize_rel_table` when they differ (FlexiViT: one
    stored table for every patch size). The T = N - H * W leading (class) tokens get a zero bias
    towards and from every token. Call from a compact method of `module`. Float32.

    Source: CoAtNet (Dai et al., NeurIPS 2021) Sec. 2.1, eq. 3 (pre-softmax w_{i-j}) and Table
    3 (ViT_REL: ViT with this relative attention).

    Raises:
      ValueError: N < H * W (the tokens do not hold the grid).
    """
    h, w = pair(tuple(grid), "grid")
    h0, w0 = pair(tuple(table_grid or grid), "table_grid")
    prefix = n_tokens - h * w
    if prefix < 0:
        raise ValueError(f"{n_tokens} tokens do not hold the {h}x{w} grid of the relative bias")
    table = module.param("rel_table", nn.initializers.normal(stddev=0.02),
                         (heads, 2 * h0 - 1, 2 * w0 - 1), jnp.float32)
    bias = relative_bias(resize_rel_table(table, (h, w), method=method), (h, w))
    return jnp.pad(bias, ((0, 0), (prefix, 0), (prefix, 0)))[None]


def with_bias(fn: Any, rel_bias: Array) -> Any:
    """An `attention_fn` (flax signature, e.g. `layers.attention_fn(impl)`) that adds
    `rel_bias` (1, heads, N, N) to the attention logits before the softmax (cast to the query
    dtype; added to any bias the caller passes)."""

    def biased(query: Array, key: Array, value: Array, bias: Array | None = None,
               mask: Array | None = None, dropout_rng: Array | None = None,
               dropout_rate: float = 0.0, broadcast_dropout: bool = True,
               deterministic: bool = True, dtype: Any = None, **kw: Any) -> Array:
        b = rel_bias.astype(query.dtype)
        return fn(query, key, value, bias=b if bias is None else bias + b, mask=mask,
                  dropout_rng=dropout_rng, dropout_rate=dropout_rate,
                  broadcast_dropout=broadcast_dropout, deterministic=deterministic, dtype=dtype,
                  **kw)

    return biased


def block_attention_fn(module: nn.Module, n_tokens: int, fn: Any) -> Any:
    """`fn` for an encoder block without `module.rel_grid`; with it, `fn` plus the block's
    relative bias (`vit_bias`, table grid `module.rel_table_grid`)."""
    if getattr(module, "rel_grid", None) is None:
        return fn
    return with_bias(fn, vit_bias(module, module.num_heads, n_tokens, module.rel_grid,
                                  getattr(module, "rel_table_grid", None)))


def adapt_rel_table(name: str, value: Any, ref_shape: Sequence[int],
                    method: str = "bilinear") -> Any | None:
    """Fine-tune surgery of a ViT_REL checkpoint: `.../rel_table` (heads, 2H-1, 2W-1) (or
    (depth, heads, 2H-1, 2W-1) with `scan`) resized to `ref_shape` (the new model's) with
    `resize_rel_table`; None when `name` is no rel_table or the shapes differ otherwise."""
    shape, ref_shape = tuple(np.shape(value)), tuple(ref_shape)
    if (not name.endswith("rel_table") or len(shape) != len(ref_shape) or len(shape) not in (3, 4)
            or shape[:-2] != ref_shape[:-2]):
        return None
    new_hw = ((ref_shape[-2] + 1) // 2, (ref_shape[-1] + 1) // 2)
    if len(shape) == 3:
        return resize_rel_table(value, new_hw, method=method)
    return jnp.stack([resize_rel_table(v, new_hw, method=method) for v in value])


def encoder_kw(module: nn.Module, grid: Sequence[int]) -> dict[str, Any]:
    """`layers.Encoder`'s relative-bias fields for a ViT-family `module` on token grid `grid`:
    {} for `attention="standard"`; for "relative" the grid and the stored table's grid (a
    FlexiViT's `posemb_grid`, so one table serves every patch size; else `grid`).

    Raises:
      ValueError: an unknown `model.attention`.
    """
    check_attention(module.attention)
    if module.attention != "relative":
        return {}
    grid = pair(tuple(grid), "grid")
    stored = getattr(module, "posemb_grid", None)
    return dict(rel_grid=grid, rel_table_grid=pair(tuple(stored), "model.posemb_grid")
                if stored is not None else grid)
