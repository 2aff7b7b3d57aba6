"""PolyViT routes: which (modality, task) a call runs, the params it uses, pruning, counts.

Parameter groups: tokenizer_<m>/ and modality_layers_<m>/ are "modality:<m>", head_<t>/ is
"task:<t>", everything else (Transformer/...) "shared". A route (m, t) uses the shared params,
the group of m and the group of t; every other param gets an exactly-zero gradient on it
(PolyViT, method section). Pruning to one task or modality for deployment and the
shared-parameter fraction: WO2023059737A1, claims 5 and 15-19.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np

from vitx.models.polyvit.config import Head, Modality, Routes
from vitx.utils import to_plain, tree

__all__ = ["active_mask", "param_groups", "param_report", "prune", "pruned_model_cfg", "route"]

Params = dict[str, Any]


def route(modalities: Sequence[Modality], heads: Sequence[Head], modality: str | None,
          task: str | None) -> tuple[str, str]:
    """The (modality, task) a call runs, with omitted parts filled in when implied.

    `modality` is implied by `task` (its head's modality) or by a single modality; `task` by a
    modality with exactly one head.

    Raises:
      ValueError: an unknown or ambiguous modality / task, a task whose head reads another
        modality.
    """
    mods = [m.name for m in modalities]
    head_mod = {h.task: h.modality for h in heads}
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
    """Parameter counts per group (PolyViT's parameter counts; WO2023059737A1 claim 5).

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
        routes = Routes.from_config(model_cfg, num_classes=1)
        per_task = {h.task: shared + groups.get(f"modality:{h.modality}", 0)
                    + groups.get(f"task:{h.task}", 0) for h in routes.heads}
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
    routes = Routes.from_config(model_cfg, num_classes=1)
    heads = routes.head_modality
    if task is not None:
        if task not in heads:
            raise ValueError(f"prune: task={task!r} is not in model.heads; use one of "
                             f"{list(heads)}")
        if modality is not None and modality != heads[task]:
            raise ValueError(f"prune: task={task!r} reads modality {heads[task]!r}, not "
                             f"modality={modality!r}; drop modality= or fix it")
        return [heads[task]], [task]
    if modality not in routes.names:
        raise ValueError(f"prune: modality={modality!r} is not in model.modalities; use one of "
                         f"{routes.names}")
    return [modality], [t for t, m in heads.items() if m == modality]


def prune(params: Mapping[str, Any], *, task: str | None = None, modality: str | None = None,
          model_cfg: Mapping[str, Any] | None = None) -> Params:
    """The params of the model pruned to one task, or to every task of one modality.

    Keeps the shared params, tokenizer_<m> and modality_layers_<m> of the kept modality and
    head_<t> of the kept task(s); everything else is dropped (WO2023059737A1 claims
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

    A plain nested dict and lists (`vitx.utils.to_plain`; other keys unchanged);
    `Model(**pruned_model_cfg(...))` applied to `prune(params, ...)` gives the full model's
    outputs on the kept tasks exactly.

    Raises:
      ValueError: as `prune`.
    """
    mods, tasks = _selection(model_cfg, task, modality)
    cfg = copy.deepcopy(to_plain(model_cfg))
    cfg["modalities"] = {m: v for m, v in cfg["modalities"].items() if m in mods}
    cfg["heads"] = {t: v for t, v in cfg["heads"].items() if t in tasks}
    return cfg
