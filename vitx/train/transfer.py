"""Checkpoint transfer: posemb / patch-kernel resizing, head surgery, strict merge, npz interop.

Sources:
  * ViT: Dosovitskiy et al., "An Image is Worth 16x16 Words: Transformers for Image Recognition
    at Scale", ICLR 2021, Sec. 3.2 "Fine-tuning and higher resolution": drop the pre-trained
    head, attach a zero-initialised D x K layer, and 2D-interpolate the pre-trained position
    embeddings to the new patch grid.
  * PI-resize: Beyer et al., "FlexiViT: One Model for All Patch Sizes", CVPR 2023, Sec. 3.4:
    resize the patch-embedding kernel with the pseudo-inverse of the (linear) image resize, so a
    token computed from a resized patch equals the token of the original patch.

Parameter layouts (names flattened with '/'):
  * "vitx" = big_vision's ViT layout (see `vitx.models.vit`): `pos_embedding (1, N, D)` holds the
    N = gh * gw patch tokens only; `cls (1, 1, D)` has no posemb slot. With `scan=True` the blocks
    are one `Transformer/encoderblock` with a leading depth axis on every leaf.
  * "big_vision": the same names, possibly under a leading "params/" (big_vision checkpoints).
  * "vit_jax" (google-research/vision_transformer): `Transformer/posembed_input/pos_embedding
    (1, N + 1, D)` with a cls slot 0 when there is a `cls` param, and per-block module names
    `MultiHeadDotProductAttention_1`, `LayerNorm_2`, `MlpBlock_3` (vitx: `_0`, `_1`, `_0`).
    vit_jax -> vitx folds the cls posemb into the cls token (`cls + posemb[:, :1]`), which is
    exact because the cls token is a constant input; vitx -> vit_jax writes a zero cls slot.

Resize convention: `jax.image.resize` (half-pixel centres, like tf.image.resize and FlexiViT's
big_vision code). Note that vit_jax's own fine-tune surgery uses `scipy.ndimage.zoom(order=1)`,
whose sample positions differ slightly, so posembs resized here differ from vit_jax's by a
small amount (both are bilinear interpolations of the same grid).

Every public function is pure except `save_npz` / `load_npz` (file I/O) and the log lines of
`merge_params` / `adapt_for_finetune`.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import os
import re
import zipfile
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "LAYOUTS",
    "RESIZE_METHODS",
    "adapt_for_finetune",
    "detect_layout",
    "flatten",
    "from_big_vision",
    "from_vit_jax",
    "infer_grid",
    "load_npz",
    "merge_params",
    "parse_init_spec",
    "pi_resize_matrix",
    "pi_resize_patch_kernel",
    "reinit_head",
    "resize_matrix",
    "resize_posemb",
    "save_npz",
    "stack_blocks",
    "to_big_vision",
    "to_vit_jax",
    "unflatten",
    "unstack_blocks",
]

logger = logging.getLogger(__name__)

Params = dict[str, Any]
#: adapt(name, loaded_value, init_value) -> value of init's shape, or None when it cannot adapt.
Adapter = Callable[[str, Any, Any], Any]

LAYOUTS = ("vitx", "vit_jax", "big_vision")
#: public method name -> `jax.image.resize` method name.
RESIZE_METHODS = {"bilinear": "linear", "bicubic": "cubic", "nearest": "nearest"}

_VIT_JAX_POSEMB = "Transformer/posembed_input/pos_embedding"
# Per-block module names: vitx (big_vision) -> vit_jax.
_TO_VIT_JAX = {"MultiHeadDotProductAttention_0": "MultiHeadDotProductAttention_1",
               "LayerNorm_1": "LayerNorm_2", "MlpBlock_0": "MlpBlock_3"}
_FROM_VIT_JAX = {v: k for k, v in _TO_VIT_JAX.items()}
_BLOCK_RE = re.compile(r"encoderblock_(\d+)")


# ------------------------------------------------------------------------------------------------
# Position-embedding resize (ViT Sec. 3.2; FlexiViT Sec. 3.4).


# One compiled program per (shapes, method); much faster than op-by-op `jax.image.resize` outside
# jit, and inlined when called inside a jitted function.
_image_resize = jax.jit(jax.image.resize, static_argnames=("shape", "method", "antialias"))


def _jax_method(method: str) -> str:
    if method not in RESIZE_METHODS:
        raise ValueError(f"resize method={method!r} is unknown; use one of "
                         f"{list(RESIZE_METHODS)}")
    return RESIZE_METHODS[method]


def _hw(size: int | Sequence[int], what: str) -> tuple[int, int]:
    """An int n (-> (n, n)) or a pair of ints, all > 0, as a tuple of Python ints."""
    hw = (size, size) if isinstance(size, int | np.integer) else tuple(size)
    if len(hw) != 2 or not all(isinstance(v, int | np.integer) and v > 0 for v in hw):
        raise ValueError(f"{what}={size!r} is not a size; pass (height, width) with ints > 0")
    return int(hw[0]), int(hw[1])


def infer_grid(n_tokens: int) -> tuple[int, int]:
    """Square patch grid (h, w) with h * w == n_tokens, e.g. 196 -> (14, 14).

    Raises:
      ValueError: `n_tokens` is not a positive perfect square (pass the grid explicitly).
    """
    side = math.isqrt(n_tokens) if n_tokens > 0 else 0
    if side * side != n_tokens or side == 0:
        raise ValueError(f"{n_tokens} position-embedding tokens do not form a square grid; pass "
                         f"the grid explicitly (old_grid=/new_grid=(h, w))")
    return side, side


def resize_posemb(posemb: Any, old_grid: int | Sequence[int], new_grid: int | Sequence[int], *,
                  num_prefix_tokens: int = 0, method: str = "bilinear",
                  antialias: bool = True) -> Any:
    """Resize a learned position embedding to a new patch grid.

    Shapes: posemb (B, T + h0 * w0, D) -> (B, T + h1 * w1, D), B usually 1, T =
    `num_prefix_tokens` (e.g. 1 for a vit_jax cls slot; 0 for vitx), raster order. The T prefix
    embeddings are returned unchanged (bit-identical); the grid part is resized as an image
    (h0, w0, D) -> (h1, w1, D) with `jax.image.resize` (half-pixel centres; `antialias` only
    matters when downsampling, True is jax's default as in FlexiViT's big_vision code). Grids
    may be rectangular. Returns `posemb` itself when the grids are equal. Jittable (the grids are
    static Python ints); the dtype is preserved (computed in at least float32).

    Source: Dosovitskiy et al., ICLR 2021, Sec. 3.2 (2D interpolation of the pre-trained
    posemb); Beyer et al., FlexiViT, CVPR 2023, Sec. 3.4 (bilinear posemb resize).

    Raises:
      ValueError: unknown `method` (use "bilinear", "bicubic" or "nearest"); a grid that is not
        a pair of positive ints; `posemb` not 3-D or its length not T + h0 * w0.
    """
    jax_method = _jax_method(method)
    old, new = _hw(old_grid, "old_grid"), _hw(new_grid, "new_grid")
    if (posemb.ndim != 3 or num_prefix_tokens < 0
            or posemb.shape[1] != num_prefix_tokens + old[0] * old[1]):
        raise ValueError(f"posemb of shape {tuple(posemb.shape)} does not hold num_prefix_tokens"
                         f"={num_prefix_tokens} + {old[0]}x{old[1]} tokens; pass the grid and "
                         f"prefix count that match it (shape (B, T + h*w, D))")
    if old == new:
        return posemb
    b, _, d = posemb.shape
    compute_dtype = jnp.promote_types(posemb.dtype, jnp.float32)
    grid = jnp.reshape(jnp.asarray(posemb)[:, num_prefix_tokens:], (b, *old, d))
    grid = _image_resize(grid.astype(compute_dtype), shape=(b, *new, d), method=jax_method,
                         antialias=antialias)
    grid = jnp.reshape(grid, (b, new[0] * new[1], d)).astype(posemb.dtype)
    return jnp.concatenate([jnp.asarray(posemb)[:, :num_prefix_tokens], grid], axis=1)


# ------------------------------------------------------------------------------------------------
# PI-resize of the patch-embedding kernel (FlexiViT Sec. 3.4).


@functools.lru_cache(maxsize=128)
def _resize_matrix_1d(n_old: int, n_new: int, jax_method: str, antialias: bool) -> np.ndarray:
    """(n_new, n_old) float64 matrix of the 1-D `jax.image.resize`, from resized basis vectors."""
    # Run as an ahead-of-time compiled program on concrete numpy input: the matrix is a host
    # constant even when first needed inside a jit trace. enable_x64: build it in float64 so
    # pinv sees exact interpolation weights.
    with jax.enable_x64(True):
        basis = np.eye(n_old, dtype=np.float64)  # row i = i-th basis vector
        compiled = _image_resize.lower(basis, shape=(n_old, n_new), method=jax_method,
                                       antialias=antialias).compile()
        mat = np.array(compiled(basis), dtype=np.float64).T
    mat.setflags(write=False)
    return mat


@functools.lru_cache(maxsize=64)
def _resize_matrix_cached(old: tuple[int, int], new: tuple[int, int], jax_method: str,
                          antialias: bool) -> np.ndarray:
    # jax.image.resize is separable (one weight matrix per spatial axis), so the 2-D resize of a
    # row-major flattened image is kron(M_h, M_w); tests check it against jax.image.resize.
    mat = np.kron(_resize_matrix_1d(old[0], new[0], jax_method, antialias),
                  _resize_matrix_1d(old[1], new[1], jax_method, antialias))
    mat.setflags(write=False)
    return mat


@functools.lru_cache(maxsize=64)
def _pi_resize_matrix_cached(old: tuple[int, int], new: tuple[int, int], jax_method: str,
                             antialias: bool) -> np.ndarray:
    mat = np.linalg.pinv(_resize_matrix_cached(old, new, jax_method, antialias).T)
    mat.setflags(write=False)
    return mat


def resize_matrix(old_size: int | Sequence[int], new_size: int | Sequence[int],
                  method: str = "bilinear", *, antialias: bool = False) -> np.ndarray:
    """Matrix B of the linear image resize: `resize(x).reshape(-1) == B @ x.reshape(-1)`.

    Shapes: B (h1 * w1, h0 * w0) float64 for old_size (h0, w0), new_size (h1, w1), with x of
    shape (h0, w0), row-major. The resize is `jax.image.resize(x, new_size, method, antialias)`
    (half-pixel centres). `antialias=False` by default: it reproduces tf.image.resize's default
    bilinear resize, which FlexiViT's reference uses to build B (upsampling is the same either
    way; for downsampling choose what the data pipeline's image resize does). Built from resized
    basis vectors once per (sizes, method, antialias) and cached; the result is read-only.

    Source: Beyer et al., FlexiViT, CVPR 2023, Sec. 3.4 (resize(x) = B x).

    Raises:
      ValueError: unknown `method`; sizes that are not positive ints / pairs.
    """
    return _resize_matrix_cached(_hw(old_size, "old_size"), _hw(new_size, "new_size"),
                                 _jax_method(method), bool(antialias))


def pi_resize_matrix(old_size: int | Sequence[int], new_size: int | Sequence[int],
                     method: str = "bilinear", *, antialias: bool = False) -> np.ndarray:
    """P = pinv(Bᵀ), the PI-resize matrix: ŵ = P @ w for a flattened kernel slice w.

    Shapes: P (h1 * w1, h0 * w0) float64, B = `resize_matrix(old_size, new_size, method,
    antialias=antialias)`. Upsampling (B full column rank): Bᵀ P = I, so ⟨x, w⟩ = ⟨B x, P w⟩
    for every x. Downsampling: P w is the least-squares solution of min ‖Bᵀ ŵ − w‖ (the optimum
    of the FlexiViT objective for x ~ N(0, I)). Cached per arguments; the result is read-only.

    Source: Beyer et al., FlexiViT, CVPR 2023, Sec. 3.4, eqs. for ŵ = (Bᵀ)⁺ w.

    Raises:
      ValueError: unknown `method`; sizes that are not positive ints / pairs.
    """
    return _pi_resize_matrix_cached(_hw(old_size, "old_size"), _hw(new_size, "new_size"),
                                    _jax_method(method), bool(antialias))


def pi_resize_patch_kernel(kernel: Any, new_size: int | Sequence[int], method: str = "bilinear",
                           *, antialias: bool = False) -> Any:
    """PI-resize a patch-embedding kernel to a new patch size.

    Shapes: kernel (P0h, P0w, C, D) -> (P1h, P1w, C, D); each (c, d) slice w (P0h, P0w) becomes
    `reshape(pi_resize_matrix(...) @ w.reshape(-1), (P1h, P1w))`, as one einsum. The bias is
    independent of the patch size and is not touched. Returns `kernel` itself when the sizes are
    equal. Jittable (`new_size` static), differentiable in `kernel`; dtype preserved (computed in
    at least float32 with HIGHEST matmul precision). See `resize_matrix` for `antialias`.

    Source: Beyer et al., FlexiViT, CVPR 2023, Sec. 3.4 (PI-resize).

    Raises:
      ValueError: `kernel` not 4-D; unknown `method`; `new_size` not a positive int / pair.
    """
    if kernel.ndim != 4:
        raise ValueError(f"patch kernel of shape {tuple(kernel.shape)} is not 4-D; pass the "
                         f"embedding/kernel of shape (P, P, C, D)")
    old, new = (int(kernel.shape[0]), int(kernel.shape[1])), _hw(new_size, "new_size")
    if old == new:
        return kernel
    pmat = pi_resize_matrix(old, new, method, antialias=antialias)
    compute_dtype = jnp.promote_types(kernel.dtype, jnp.float32)
    c, d = kernel.shape[2:]
    flat = jnp.reshape(jnp.asarray(kernel), (old[0] * old[1], c, d)).astype(compute_dtype)
    out = jnp.einsum("nm,mcd->ncd", jnp.asarray(pmat, compute_dtype), flat,
                     precision=jax.lax.Precision.HIGHEST)
    return jnp.reshape(out, (*new, c, d)).astype(kernel.dtype)


# ------------------------------------------------------------------------------------------------
# Tree helpers.


def _flat_leaves(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested mapping -> {'a/b/c': leaf} (leaves untouched; keys may already hold '/')."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if not isinstance(key, str) or not all(name.split("/")):
            raise ValueError(f"param name {name!r} is not a string or has an empty '/' "
                             f"component; rename it")
        items = _flat_leaves(value, name + "/") if isinstance(value, Mapping) else {name: value}
        for k, v in items.items():
            if k in out:
                raise ValueError(f"param name {k!r} occurs twice (nested and '/'-joined); "
                                 f"keep one of them")
            out[k] = v
    return out


def _nest(flat: Mapping[str, Any]) -> Params:
    """{'a/b/c': leaf} -> nested dicts (leaves untouched)."""
    out: Params = {}
    for name, value in flat.items():
        parts = name.split("/")
        if not all(parts):
            raise ValueError(f"param name {name!r} has an empty '/' component; fix the name")
        node = out
        for i, part in enumerate(parts[:-1]):
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ValueError(f"param {'/'.join(parts[:i + 1])!r} is both a leaf and a prefix"
                                 f" of {name!r}; the names do not form a tree")
        if parts[-1] in node:
            raise ValueError(f"param {name!r} is both a leaf and a prefix of other names; the "
                             f"names do not form a tree")
        node[parts[-1]] = value
    return out


def _to_numpy(name: str, value: Any) -> np.ndarray:
    arr = np.asarray(jax.device_get(value))
    if not (arr.dtype == np.bool_ or jnp.issubdtype(arr.dtype, jnp.number)):
        raise ValueError(f"param {name!r} has non-numeric dtype {arr.dtype}; only numeric arrays "
                         f"can be saved, fix the value")
    return arr


def flatten(params: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """Nested params -> {'/'-joined name: numpy array} (device arrays fetched to the host).

    Shapes: leaves keep their shapes. Keys may already be '/'-joined, so a flat mapping (e.g. an
    npz's contents) is accepted too.

    Raises:
      ValueError: a non-string key or empty name component, a name occurring twice, or a
        non-numeric leaf (e.g. a string).
    """
    return {name: _to_numpy(name, v) for name, v in _flat_leaves(params).items()}


def unflatten(flat: Mapping[str, Any]) -> Params:
    """{'a/b/c': array} -> nested dicts {'a': {'b': {'c': array}}} (leaves untouched).

    Raises:
      ValueError: an empty name component, or a name that is both a leaf and a prefix.
    """
    return _nest(flat)


def _is_scanned(params: Mapping[str, Any]) -> bool | None:
    """True: Transformer/encoderblock; False: encoderblock_{i}; None: no encoder blocks."""
    t = params.get("Transformer")
    if not isinstance(t, Mapping):
        return None
    if "encoderblock" in t:
        return True
    return False if any(_BLOCK_RE.fullmatch(k) for k in t) else None


def stack_blocks(params: Mapping[str, Any]) -> Params:
    """Unscanned -> scanned: Transformer/encoderblock_{i}/... (i < L) -> Transformer/encoderblock.

    Shapes: each leaf x (...) of the L blocks -> stacked (L, ...) (numpy leaves stay numpy, jax
    leaves become jax). Params without encoderblock_{i} (already scanned, or no encoder) are
    returned unchanged. Pure; the input is not modified.

    Raises:
      ValueError: both layouts present; block indices not 0..L-1; blocks whose param names or
        shapes differ.
    """
    t = params.get("Transformer")
    if _is_scanned(params) is not False:
        if isinstance(t, Mapping) and any(_BLOCK_RE.fullmatch(k) for k in t):
            raise ValueError("Transformer holds both encoderblock and encoderblock_{i}; keep one "
                             "layout (scanned or not)")
        return dict(params)
    idx = sorted(int(m[1]) for k in t if (m := _BLOCK_RE.fullmatch(k)))
    if idx != list(range(len(idx))):
        raise ValueError(f"Transformer/encoderblock_{{i}} indices are {idx}, not 0..{len(idx) - 1};"
                         f" the checkpoint is missing blocks")
    flats = [_flat_leaves(t[f"encoderblock_{i}"]) for i in idx]
    for i, f in enumerate(flats[1:], 1):
        if f.keys() != flats[0].keys():
            diff = sorted(f.keys() ^ flats[0].keys())
            raise ValueError(f"Transformer/encoderblock_{i} and encoderblock_0 differ in params "
                             f"{diff}; all blocks must have the same params to stack them")
    stacked = {}
    for name in flats[0]:
        leaves = [f[name] for f in flats]
        shapes = {tuple(np.shape(x)) for x in leaves}
        if len(shapes) != 1:
            raise ValueError(f"Transformer/encoderblock_{{i}}/{name} has shapes {sorted(shapes)}"
                             f" across blocks; all blocks must match to stack them")
        xp = jnp if any(isinstance(x, jax.Array) for x in leaves) else np
        stacked[name] = xp.stack(leaves)
    new_t = {k: v for k, v in t.items() if not _BLOCK_RE.fullmatch(k)}
    new_t["encoderblock"] = _nest(stacked)
    return {**params, "Transformer": new_t}


def unstack_blocks(params: Mapping[str, Any]) -> Params:
    """Scanned -> unscanned: Transformer/encoderblock (leaves (L, ...)) -> encoderblock_{i}.

    Shapes: each leaf (L, ...) -> L leaves (...). Params that are not scanned are returned
    unchanged. Pure; the input is not modified.

    Raises:
      ValueError: both layouts present, or stacked leaves with different leading (depth) sizes.
    """
    t = params.get("Transformer")
    if _is_scanned(params) is not True:
        return dict(params)
    if any(_BLOCK_RE.fullmatch(k) for k in t):
        raise ValueError("Transformer holds both encoderblock and encoderblock_{i}; keep one "
                         "layout (scanned or not)")
    flat = _flat_leaves(t["encoderblock"])
    depths = {name: (np.shape(x)[0] if np.ndim(x) else None) for name, x in flat.items()}
    if len(set(depths.values())) != 1 or None in depths.values():
        raise ValueError(f"Transformer/encoderblock leaves have leading (depth) sizes {depths}; "
                         f"a scanned checkpoint needs one depth axis on every leaf")
    depth = next(iter(depths.values()))
    new_t = {k: v for k, v in t.items() if k != "encoderblock"}
    for i in range(depth):
        new_t[f"encoderblock_{i}"] = _nest({name: x[i] for name, x in flat.items()})
    return {**params, "Transformer": new_t}


# ------------------------------------------------------------------------------------------------
# Head surgery and strict merge.


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
    flat = _flat_leaves(params)
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


def _compile_patterns(dont_load: Sequence[str]) -> list[re.Pattern[str]]:
    if isinstance(dont_load, str):
        dont_load = (dont_load,)
    patterns = []
    for p in dont_load:
        try:
            patterns.append(re.compile(p))
        except re.error as e:
            raise ValueError(f"model_load.dont_load pattern {p!r} is not a valid regex ({e}); "
                             f"fix it") from None
    return patterns


def _cast_like(value: Any, ref: Any) -> Any:
    """`value` with `ref`'s dtype, as numpy when `ref` is numpy, else as a jax array."""
    if isinstance(ref, np.ndarray):
        return np.asarray(jax.device_get(value), dtype=ref.dtype)
    return jnp.asarray(value, dtype=ref.dtype)


def merge_params(init: Mapping[str, Any], loaded: Mapping[str, Any], *,
                 dont_load: Sequence[str] = (), adapt: Adapter | None = None) -> Params:
    """Strictly merge `loaded` (a checkpoint) into the structure of `init` (a fresh model init).

    For each param of `init` (by '/'-name): if the name fully matches (`re.fullmatch`, as
    big_vision's `dont_load`) a regex in `dont_load`, the init value is kept as is; otherwise it
    is taken from `loaded`, which must hold it with the same shape, or `adapt(name, loaded_value,
    init_value)` (called only on a shape mismatch) must return a value of init's shape (None
    means it cannot). Params of `loaded` that `init` lacks are errors unless `dont_load` matches
    them. Loaded values are cast to init's dtype, as numpy where init's leaf is numpy, else as
    jax arrays. Shapes: every leaf has init's shape. Pure (logs the params kept from init).

    Source: big_vision `common.merge_params` semantics (strict, `dont_load` fullmatch).

    Raises:
      ValueError: one error listing every missing, unexpected and shape-mismatched name (with
        shapes); the fix is to add them to model_load.dont_load or fix the model config. Also an
        invalid regex in `dont_load`.
    """
    patterns = _compile_patterns(dont_load)
    skip = lambda name: any(p.fullmatch(name) for p in patterns)
    init_flat, loaded_flat = _flat_leaves(init), _flat_leaves(loaded)
    merged: dict[str, Any] = {}
    problems: list[str] = []
    for name, ref in init_flat.items():
        if skip(name):
            logger.info("merge_params: %s kept from init (model_load.dont_load)", name)
            merged[name] = ref
            continue
        if name not in loaded_flat:
            problems.append(f"{name} (model {tuple(np.shape(ref))}, missing in checkpoint)")
            continue
        value = loaded_flat[name]
        if tuple(np.shape(value)) != tuple(np.shape(ref)):
            adapted = adapt(name, value, ref) if adapt is not None else None
            if adapted is None or tuple(np.shape(adapted)) != tuple(np.shape(ref)):
                problems.append(f"{name} (model {tuple(np.shape(ref))} vs checkpoint "
                                f"{tuple(np.shape(value))})")
                continue
            value = adapted
        merged[name] = _cast_like(value, ref)
    for name in sorted(loaded_flat.keys() - init_flat.keys()):
        if not skip(name):
            problems.append(f"{name} (checkpoint {tuple(np.shape(loaded_flat[name]))}, not in "
                            f"model)")
    if problems:
        raise ValueError(f"cannot load {len(problems)} param(s) from the checkpoint: "
                         f"{'; '.join(problems)}; add them to model_load.dont_load or fix the "
                         f"model config")
    return _nest(merged)


def adapt_for_finetune(init: Mapping[str, Any], loaded: Mapping[str, Any], *,
                       dont_load: Sequence[str] = (), posemb_method: str = "bilinear",
                       old_grid: Sequence[int] | None = None,
                       new_grid: Sequence[int] | None = None,
                       patch_method: str = "bilinear") -> Params:
    """Standard fine-tune surgery on `loaded`, then `merge_params(init, ...)` (strict).

    Adaptations (each one logged):
      * scan layout: `loaded` is stacked/unstacked to match `init` (`stack_blocks`).
      * `pre_logits` / `head` of `loaded` are dropped when `init` has none (ViT Sec. 3.2: remove
        the pre-trained head).
      * head: if any head/* shape differs (other number of classes), the whole head is
        re-initialised to zeros of init's shapes (ViT Sec. 3.2); same shapes are loaded.
      * pos_embedding (1, N0, D) -> (1, N1, D) when N0 != N1: `resize_posemb` with
        `posemb_method`, grids `old_grid` / `new_grid` or inferred as squares (`infer_grid`).
      * embedding/kernel (P0h, P0w, C, D) -> (P1h, P1w, C, D): `pi_resize_patch_kernel` with
        `patch_method` (FlexiViT Sec. 3.4).
    Everything else must match exactly (see `merge_params`; `dont_load` uses re.fullmatch).
    Shapes: the result has init's structure, shapes and dtypes. Pure apart from logging.

    Source: Dosovitskiy et al., ICLR 2021, Sec. 3.2; Beyer et al., FlexiViT, CVPR 2023, Sec. 3.4.

    Raises:
      ValueError: from `merge_params` (listing every param that cannot be loaded or adapted),
        from `infer_grid` (non-square grid: pass old_grid/new_grid), unknown methods.
    """
    _jax_method(posemb_method)
    _jax_method(patch_method)
    loaded = dict(loaded)
    init_scan, loaded_scan = _is_scanned(init), _is_scanned(loaded)
    if init_scan is True and loaded_scan is False:
        logger.info("adapt_for_finetune: stacking encoderblock_{i} into a scanned encoderblock")
        loaded = stack_blocks(loaded)
    elif init_scan is False and loaded_scan is True:
        logger.info("adapt_for_finetune: unstacking scanned encoderblock into encoderblock_{i}")
        loaded = unstack_blocks(loaded)
    for key in ("pre_logits", "head"):
        if key in loaded and key not in init:
            logger.info("adapt_for_finetune: dropping checkpoint %s (the model has none)", key)
            del loaded[key]
    if isinstance(init.get("head"), Mapping) and isinstance(loaded.get("head"), Mapping):
        ih, lh = _flat_leaves(init["head"]), _flat_leaves(loaded["head"])
        if any(k in lh and tuple(np.shape(lh[k])) != tuple(v.shape) for k, v in ih.items()):
            logger.info("adapt_for_finetune: head %s -> %s, re-initialised to zeros",
                        {k: tuple(np.shape(v)) for k, v in lh.items()},
                        {k: tuple(v.shape) for k, v in ih.items()})
            xp = lambda v: np if isinstance(v, np.ndarray) else jnp
            loaded["head"] = _nest({k: xp(v).zeros(v.shape, v.dtype) for k, v in ih.items()})

    def adapter(name: str, value: Any, ref: Any) -> Any:
        shape, ref_shape = tuple(np.shape(value)), tuple(ref.shape)
        if (name == "pos_embedding" and len(shape) == 3 and len(ref_shape) == 3
                and shape[::2] == ref_shape[::2]):
            og = _hw(old_grid, "old_grid") if old_grid is not None else infer_grid(shape[1])
            ng = _hw(new_grid, "new_grid") if new_grid is not None else infer_grid(ref_shape[1])
            logger.info("adapt_for_finetune: pos_embedding %s -> %s (grid %s -> %s, %s)",
                        shape, ref_shape, og, ng, posemb_method)
            return resize_posemb(jnp.asarray(value), og, ng, method=posemb_method)
        if (name == "embedding/kernel" and len(shape) == 4 and len(ref_shape) == 4
                and shape[2:] == ref_shape[2:]):
            logger.info("adapt_for_finetune: embedding/kernel %s -> %s (PI-resize, %s)",
                        shape, ref_shape, patch_method)
            return pi_resize_patch_kernel(jnp.asarray(value), ref_shape[:2], patch_method)
        return None

    return merge_params(init, loaded, dont_load=dont_load, adapt=adapter)


# ------------------------------------------------------------------------------------------------
# Layout conversion and npz files.


def _rename_block_module(name: str, mapping: Mapping[str, str]) -> str:
    parts = name.split("/")
    if (len(parts) >= 3 and parts[0] == "Transformer" and _BLOCK_RE.fullmatch(parts[1])
            and parts[2] in mapping):
        parts[2] = mapping[parts[2]]
    return "/".join(parts)


def to_vit_jax(params: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """vitx params -> flat vit_jax (google-research/vision_transformer) arrays.

    Scanned blocks are unstacked; block modules renamed (MultiHeadDotProductAttention_0 -> _1,
    LayerNorm_1 -> LayerNorm_2, MlpBlock_0 -> MlpBlock_3); pos_embedding (1, N, D) becomes
    Transformer/posembed_input/pos_embedding (1, N + 1, D) with a zero cls slot 0 when the model
    has `cls` (pool "tok"), else (1, N, D) (pool "gap"). Pure.

    Source: vit_jax `models_vit.py` parameter names; ViT Sec. 3.1 (cls token + posemb).

    Raises:
      ValueError: a MAP head (vit_jax has none: use layout "big_vision"), no learned
        pos_embedding (vit_jax has only learned posembs), or the errors of `flatten`.
    """
    flat = flatten(unstack_blocks(params))
    if any(k.startswith("MAPHead") for k in flat):
        raise ValueError("to_vit_jax: params have a MAPHead_0 (pool_type 'map'), which vit_jax "
                         "does not have; save with layout='big_vision' or 'vitx'")
    if "pos_embedding" not in flat:
        raise ValueError("to_vit_jax: params have no learned pos_embedding (posemb 'sincos2d'?),"
                         " which vit_jax requires; save with layout='big_vision' or 'vitx'")
    out = {_rename_block_module(k, _TO_VIT_JAX): v for k, v in flat.items()
           if k != "pos_embedding"}
    posemb = flat["pos_embedding"]
    if "cls" in flat:
        posemb = np.concatenate([np.zeros_like(posemb[:, :1]), posemb], axis=1)
    out[_VIT_JAX_POSEMB] = posemb
    return out


def from_vit_jax(flat: Mapping[str, Any]) -> Params:
    """Flat (or nested) vit_jax arrays -> nested, unscanned vitx params (numpy leaves).

    Block modules renamed back; with `cls`, Transformer/posembed_input/pos_embedding (1, N + 1,
    D) is split: cls (1, 1, D) becomes `cls + posemb[:, :1]` (exact: the cls token is a constant
    input, so its posemb can be folded in) and pos_embedding = posemb[:, 1:] (1, N, D); without
    `cls` (classifier "gap") pos_embedding = posemb. Unknown names pass through unchanged (a
    later strict merge reports them). Pure.

    Source: vit_jax `models_vit.py` / `checkpoint.py` parameter names; ViT Sec. 3.1.

    Raises:
      ValueError: `cls` present but the posemb has fewer than 2 tokens; errors of `flatten`.
    """
    flat = flatten(flat)
    out = {_rename_block_module(k, _FROM_VIT_JAX): v for k, v in flat.items()
           if k != _VIT_JAX_POSEMB}
    if _VIT_JAX_POSEMB in flat:
        posemb = flat[_VIT_JAX_POSEMB]
        if "cls" in flat:
            if posemb.ndim != 3 or posemb.shape[1] < 2:
                raise ValueError(f"from_vit_jax: {_VIT_JAX_POSEMB} has shape {posemb.shape}, "
                                 f"but with a cls token it needs (1, 1 + N, D); check the file")
            cls = flat["cls"]
            out["cls"] = (cls + posemb[:, :1]).astype(cls.dtype)
            posemb = posemb[:, 1:]
        out["pos_embedding"] = posemb
    return _nest(out)


def to_big_vision(params: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """vitx params -> flat big_vision arrays: the same names (vitx uses big_vision's layout).

    Scanned params stay scanned (big_vision's ViT loader converts either way). Pure.

    Raises:
      ValueError: errors of `flatten`.
    """
    return flatten(params)


def from_big_vision(flat: Mapping[str, Any]) -> Params:
    """Flat (or nested) big_vision arrays -> nested vitx params (numpy leaves).

    If names start with "params/" (a big_vision checkpoint holding params and optimizer state),
    only that subtree is kept, prefix stripped. Pure.

    Raises:
      ValueError: errors of `flatten` / `unflatten`.
    """
    flat = flatten(flat)
    if any(k.startswith("params/") for k in flat):
        dropped = [k for k in flat if not k.startswith("params/")]
        if dropped:
            logger.info("from_big_vision: keeping params/, ignoring %d other arrays",
                        len(dropped))
        flat = {k[len("params/"):]: v for k, v in flat.items() if k.startswith("params/")}
    return _nest(flat)


def detect_layout(names: Sequence[str] | Mapping[str, Any]) -> str:
    """Layout of a checkpoint from its '/'-names: "vit_jax", "big_vision" or "vitx".

    vit_jax: Transformer/posembed_input/pos_embedding or a vit_jax block module name
    (MultiHeadDotProductAttention_1, MlpBlock_3); big_vision: names under "params/"; else vitx.
    """
    names = list(names)
    if any(n.endswith("posembed_input/pos_embedding") or "/MultiHeadDotProductAttention_1/" in n
           or "/MlpBlock_3/" in n for n in names):
        return "vit_jax"
    if any(n.startswith("params/") for n in names):
        return "big_vision"
    return "vitx"


def _savable(name: str, arr: np.ndarray) -> np.ndarray:
    if arr.dtype.kind not in "biufc":  # ml_dtypes (bfloat16, ...): np.load cannot read them
        logger.info("save_npz: %s saved as float32 (was %s)", name, arr.dtype)
        return arr.astype(np.float32)
    return arr


def save_npz(path: str | os.PathLike[str], params: Mapping[str, Any],
             layout: str = "vitx") -> None:
    """Write `params` atomically to an .npz of flat '/'-named arrays in `layout`.

    `layout`: "vitx", "vit_jax" (`to_vit_jax`) or "big_vision" (`to_big_vision`). The archive is
    written to `path + ".tmp"` and then `os.replace`d onto `path`, so a failed save never
    destroys an existing file (the partial .tmp is removed). Shapes as in the layout; non-numpy
    float dtypes (bfloat16) are stored as float32. The file is readable by `np.load`.

    Raises:
      ValueError: unknown `layout`; errors of the layout conversion (`to_vit_jax`, `flatten`).
      OSError: the file cannot be written (the existing file is left intact).
    """
    converters = {"vitx": flatten, "vit_jax": to_vit_jax, "big_vision": to_big_vision}
    if layout not in converters:
        raise ValueError(f"save_npz: layout={layout!r} is unknown; use one of {LAYOUTS}")
    flat = {k: _savable(k, v) for k, v in converters[layout](params).items()}
    path = os.fspath(path)
    tmp = path + ".tmp"
    try:
        # The .npz format of np.savez, written directly so any param name is allowed.
        with (open(tmp, "wb") as f,
              zipfile.ZipFile(f, mode="w", compression=zipfile.ZIP_STORED,
                              allowZip64=True) as zf):
            for name, arr in flat.items():
                with zf.open(name + ".npy", mode="w", force_zip64=True) as member:
                    np.lib.format.write_array(member, arr, allow_pickle=False)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise


def load_npz(path: str | os.PathLike[str], layout: str = "auto",
             subtree: str | None = None) -> Params:
    """Read an .npz checkpoint into nested vitx params (numpy leaves).

    `subtree` keeps only names under that '/' prefix (e.g. "params", "opt/target",
    "Transformer"), prefix stripped, before the layout is applied. `layout` "auto" uses
    `detect_layout`; "vit_jax" -> `from_vit_jax`, "big_vision" -> `from_big_vision` (strips
    "params/"), "vitx" -> names as stored. Blocks stay as stored (scanned or not; see
    `adapt_for_finetune` / `stack_blocks`).

    Raises:
      FileNotFoundError: `path` does not exist.
      ValueError: unknown `layout`, `subtree` not in the file (lists the top-level names), not
        an .npz archive.
    """
    if layout != "auto" and layout not in LAYOUTS:
        raise ValueError(f"load_npz: layout={layout!r} is unknown; use 'auto' or one of {LAYOUTS}")
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"load_npz: checkpoint file {path!r} does not exist; fix the "
                                f"path (config.model_init)")
    data = np.load(path, allow_pickle=False)
    if not isinstance(data, np.lib.npyio.NpzFile):
        raise ValueError(f"load_npz: {path!r} is a single array, not an .npz archive of named "
                         f"params; save it with vitx.train.transfer.save_npz")
    with data:
        flat = {k: data[k] for k in data.files}
    if subtree:
        prefix = subtree.strip("/") + "/"
        sub = {k[len(prefix):]: v for k, v in flat.items() if k.startswith(prefix)}
        if not sub:
            tops = sorted({k.split("/")[0] for k in flat})
            raise ValueError(f"load_npz: subtree {subtree!r} not found in {path!r}; its "
                             f"top-level names are {tops}; pass one of them (path.npz:subtree)")
        flat = sub
    if layout == "auto":
        layout = detect_layout(flat)
        logger.info("load_npz: %s detected as layout %r", path, layout)
    if layout == "vit_jax":
        return from_vit_jax(flat)
    if layout == "big_vision":
        return from_big_vision(flat)
    return _nest(flat)


def parse_init_spec(spec: str) -> tuple[str, str | None]:
    """'path[:subtree]' -> (path, subtree or None).

    The subtree is the part after the last ':' unless that part starts with '/' (so URLs such as
    "gs://bucket/x.npz" stay whole paths), e.g.
    "/abs/ckpt.npz:params" -> ("/abs/ckpt.npz", "params"), "ckpt.npz:opt/target" ->
    ("ckpt.npz", "opt/target"), "/abs/ckpt.npz" -> ("/abs/ckpt.npz", None).

    Raises:
      ValueError: an empty spec, path or subtree ("x.npz:").
    """
    if not spec:
        raise ValueError("model_init spec is empty; pass 'path' or 'path:subtree'")
    head, sep, tail = spec.rpartition(":")
    if not sep or tail.startswith(("/", "\\")):
        return spec, None
    if not head or not tail.strip("/"):
        raise ValueError(f"model_init spec {spec!r} has an empty path or subtree; pass "
                         f"'path' or 'path:subtree' (e.g. 'ckpt.npz:params')")
    return head, tail.strip("/")
