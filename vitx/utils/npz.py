""".npz checkpoint files and their three layouts: vitx, vit_jax and big_vision.

Layouts (names flattened with '/'):
  * "vitx" = big_vision's ViT layout (see `vitx.models.vit`): `pos_embedding (1, N, D)` holds the
    N = gh * gw patch tokens only; `cls (1, 1, D)` has no posemb slot. With `scan=True` the blocks
    are one `Transformer/encoderblock` with a leading depth axis on every leaf.
  * "big_vision": the same names, possibly under a leading "params/" (big_vision checkpoints).
  * "vit_jax" (google-research/vision_transformer): `Transformer/posembed_input/pos_embedding
    (1, N + 1, D)` with a cls slot 0 when there is a `cls` param, and per-block module names
    `MultiHeadDotProductAttention_1`, `LayerNorm_2`, `MlpBlock_3` (vitx: `_0`, `_1`, `_0`).
    vit_jax -> vitx folds the cls posemb into the cls token (`cls + posemb[:, :1]`), which is
    exact because the cls token is a constant input; vitx -> vit_jax writes a zero cls slot.
    Names outside the encoder (e.g. a hybrid's `conv_root`, `block1/unit1/...`) pass through
    unchanged.

`save_npz` / `load_npz` do file I/O (atomic writes); everything else is pure.
"""

from __future__ import annotations

import logging
import os
import re
import zipfile
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from vitx.utils import atomic_write
from vitx.utils.tree import flat_leaves, flatten, unflatten

__all__ = [
    "LAYOUTS",
    "is_scanned",
    "detect_layout",
    "from_big_vision",
    "from_vit_jax",
    "load_npz",
    "save_npz",
    "stack_blocks",
    "to_big_vision",
    "to_vit_jax",
    "unstack_blocks",
]

logger = logging.getLogger(__name__)

Params = dict[str, Any]

LAYOUTS = ("vitx", "vit_jax", "big_vision")
#: Where checkpoints wrap their params (flax optimizers: opt/target; big_vision: params),
#: found without a ':subtree' (as big_vision's and timm's loaders do).
AUTO_SUBTREES = ("opt/target", "params")

_VIT_JAX_POSEMB = "Transformer/posembed_input/pos_embedding"
# Per-block module names: vitx (big_vision) -> vit_jax.
_TO_VIT_JAX = {"MultiHeadDotProductAttention_0": "MultiHeadDotProductAttention_1",
               "LayerNorm_1": "LayerNorm_2", "MlpBlock_0": "MlpBlock_3"}
_FROM_VIT_JAX = {v: k for k, v in _TO_VIT_JAX.items()}
_BLOCK_RE = re.compile(r"encoderblock_(\d+)")



def is_scanned(params: Mapping[str, Any]) -> bool | None:
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
    if is_scanned(params) is not False:
        if isinstance(t, Mapping) and any(_BLOCK_RE.fullmatch(k) for k in t):
            raise ValueError("Transformer holds both encoderblock and encoderblock_{i}; keep one "
                             "layout (scanned or not)")
        return dict(params)
    idx = sorted(int(m[1]) for k in t if (m := _BLOCK_RE.fullmatch(k)))
    if idx != list(range(len(idx))):
        raise ValueError(f"Transformer/encoderblock_{{i}} indices are {idx}, not 0..{len(idx) - 1};"
                         f" the checkpoint is missing blocks")
    flats = [flat_leaves(t[f"encoderblock_{i}"]) for i in idx]
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
    new_t["encoderblock"] = unflatten(stacked)
    return {**params, "Transformer": new_t}


def unstack_blocks(params: Mapping[str, Any]) -> Params:
    """Scanned -> unscanned: Transformer/encoderblock (leaves (L, ...)) -> encoderblock_{i}.

    Shapes: each leaf (L, ...) -> L leaves (...). Params that are not scanned are returned
    unchanged. Pure; the input is not modified.

    Raises:
      ValueError: both layouts present, or stacked leaves with different leading (depth) sizes.
    """
    t = params.get("Transformer")
    if is_scanned(params) is not True:
        return dict(params)
    if any(_BLOCK_RE.fullmatch(k) for k in t):
        raise ValueError("Transformer holds both encoderblock and encoderblock_{i}; keep one "
                         "layout (scanned or not)")
    flat = flat_leaves(t["encoderblock"])
    depths = {name: (np.shape(x)[0] if np.ndim(x) else None) for name, x in flat.items()}
    if len(set(depths.values())) != 1 or None in depths.values():
        raise ValueError(f"Transformer/encoderblock leaves have leading (depth) sizes {depths}; "
                         f"a scanned checkpoint needs one depth axis on every leaf")
    depth = next(iter(depths.values()))
    new_t = {k: v for k, v in t.items() if k != "encoderblock"}
    for i in range(depth):
        new_t[f"encoderblock_{i}"] = unflatten({name: x[i] for name, x in flat.items()})
    return {**params, "Transformer": new_t}


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
    return unflatten(out)


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
    return unflatten(flat)


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
    written with `vitx.utils.atomic_write` (a unique temporary file, renamed onto `path`), so a
    failed save never destroys an existing file. Shapes as in the layout; non-numpy
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
    # The .npz format of np.savez, written directly so any param name is allowed.
    with (atomic_write(path, "wb") as f,
          zipfile.ZipFile(f, mode="w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf):
        for name, arr in flat.items():
            with zf.open(name + ".npy", mode="w", force_zip64=True) as member:
                np.lib.format.write_array(member, arr, allow_pickle=False)


def load_npz(path: str | os.PathLike[str], layout: str = "auto",
             subtree: str | None = None) -> Params:
    """Read an .npz checkpoint into nested vitx params (numpy leaves).

    `subtree` keeps only names under that '/' prefix (e.g. "params", "opt/target",
    "Transformer"), prefix stripped, before the layout is applied. Without one, names under
    "opt/target/" (flax optimizer checkpoints) or else "params/" (big_vision) are found and kept
    automatically (`AUTO_SUBTREES`). `layout` "auto" uses
    `detect_layout`; "vit_jax" -> `from_vit_jax`, "big_vision" -> `from_big_vision` (strips
    "params/"), "vitx" -> names as stored. Blocks stay as stored (scanned or not; see
    `vitx.models.vit.adapt_params` / `stack_blocks`).

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
    try:
        data = np.load(path, allow_pickle=False)
        if not isinstance(data, np.lib.npyio.NpzFile):
            raise ValueError(f"load_npz: {path!r} is a single array, not an .npz archive of "
                             f"named params; save it with vitx.utils.npz.save_npz")
        with data:
            flat = {k: data[k] for k in data.files}
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as e:
        if str(e).startswith("load_npz:"):
            raise
        # numpy's own text suggests unpickling an untrusted file: never pass it on.
        raise ValueError(f"load_npz: {path!r} is not a valid weights file (not a readable .npz "
                         f"archive of named arrays: {type(e).__name__}); pass an .npz written "
                         f"by np.savez / `vitx export`, or a checkpoint folder") from None
    if not subtree:  # params under a known wrapper (big_vision / timm find these too)
        subtree = next((p for p in AUTO_SUBTREES if any(k.startswith(p + "/") for k in flat)),
                       None)
        if subtree:
            logger.info("load_npz: %s keeps the params under %r", path, subtree)
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
    return unflatten(flat)


