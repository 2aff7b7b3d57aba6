"""'/'-path parameter trees: flatten, unflatten and the strict merge of a checkpoint into a model.

Param names are '/'-joined paths (`Transformer/encoderblock_0/MlpBlock_0/Dense_0/kernel`), as in
big_vision, vit_jax and orbax. Every function here is pure (apart from log lines).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["Adapter", "flatten", "flat_leaves", "merge_params", "unflatten"]

logger = logging.getLogger(__name__)

Params = dict[str, Any]
#: adapt(name, loaded_value, init_value) -> value of init's shape, or None when it cannot adapt.
Adapter = Callable[[str, Any, Any], Any]


def flat_leaves(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested mapping -> {'a/b/c': leaf} (leaves untouched; keys may already hold '/').

    Raises:
      ValueError: a non-string key, an empty name component, or a name occurring twice.
    """
    out: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if not isinstance(key, str) or not all(name.split("/")):
            raise ValueError(f"param name {name!r} is not a string or has an empty '/' "
                             f"component; rename it")
        items = flat_leaves(value, name + "/") if isinstance(value, Mapping) else {name: value}
        for k, v in items.items():
            if k in out:
                raise ValueError(f"param name {k!r} occurs twice (nested and '/'-joined); "
                                 f"keep one of them")
            out[k] = v
    return out


def unflatten(flat: Mapping[str, Any]) -> Params:
    """{'a/b/c': leaf} -> nested dicts {'a': {'b': {'c': leaf}}} (leaves untouched).

    Raises:
      ValueError: an empty name component, or a name that is both a leaf and a prefix.
    """
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
    return {name: _to_numpy(name, v) for name, v in flat_leaves(params).items()}


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
      ValueError: one error listing the missing, unexpected and shape-mismatched names (with
        shapes; the first `MAX_LISTED`, then "... and N more", and the prefix the checkpoint's
        names sit under when that is why they do not match); the fix is to add them to
        model_load.dont_load or fix the model config. Also an invalid regex in `dont_load`.
    """
    patterns = _compile_patterns(dont_load)
    skip = lambda name: any(p.fullmatch(name) for p in patterns)
    init_flat, loaded_flat = flat_leaves(init), flat_leaves(loaded)
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
        raise ValueError(f"cannot load {len(problems)} param(s) from the checkpoint"
                         f"{_prefix_hint(loaded_flat, init_flat)}; add them to "
                         f"model_load.dont_load or fix the model config: "
                         f"{_bounded(problems)}")
    return unflatten(merged)


#: How many offending names a merge error lists before "... and N more".
MAX_LISTED = 20


def _bounded(problems: Sequence[str], limit: int = MAX_LISTED) -> str:
    """The first `limit` problems, '; '-joined, then "... and N more"."""
    text = "; ".join(problems[:limit])
    if len(problems) > limit:
        text += f"; ... and {len(problems) - limit} more"
    return text


def _prefix_hint(loaded: Mapping[str, Any], init: Mapping[str, Any]) -> str:
    """' (...)' naming the prefix (e.g. 'opt/target') under which the checkpoint holds most of
    the model's names (preferring 'opt/target' and 'params' on a tie), or ''."""
    names = set(init)
    counts: dict[str, int] = {}
    for name in loaded:
        parts = name.split("/")
        for k in range(1, len(parts)):
            if "/".join(parts[k:]) in names:
                prefix = "/".join(parts[:k])
                counts[prefix] = counts.get(prefix, 0) + 1
    if not counts or max(counts.values()) * 2 < len(names):
        return ""
    best = [p for p, c in counts.items() if c == max(counts.values())]
    known = [p for p in ("opt/target", "params") if p in best]
    if len(best) > 1 and not known:
        return ""
    prefix = (known or best)[0]
    return f" (its params sit under {prefix!r}: load '<checkpoint>:{prefix}')"
