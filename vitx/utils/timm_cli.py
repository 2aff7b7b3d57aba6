"""`vitx info` and `vitx export --layout timm`: the checkpoint-spec side of `timm_hub`.

Kept apart from `vitx.utils.timm_hub` (which `vitx.utils.checkpoints` imports to read hub
folders) so that the imports stay acyclic: this module reads any checkpoint spec through
`checkpoints` and hands timm folders to `timm_hub`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

import numpy as np

from vitx.utils import checkpoints, timm_hub
from vitx.utils.tree import flat_leaves

__all__ = ["export_checkpoint", "info"]


def info(spec: str) -> str:
    """`vitx info CHECKPOINT`: `describe` for a timm hub folder / .safetensors; for a vitx
    workdir or .npz: the kind, step, parameter count and the run's model config.

    Raises:
      FileNotFoundError / ValueError: see `vitx.utils.checkpoints.load_params`.
    """
    r = checkpoints.resolve(spec)
    if r.kind == "timm":
        return timm_hub.describe(r.path)
    params, meta = checkpoints.load_params(r)
    n = sum(int(np.size(v)) for v in flat_leaves(params).values())
    lines = [f"file: {r.path}", f"kind: {r.kind} (step {meta.get('step')})",
             f"parameters: {n:,}"]
    try:
        run = checkpoints.read_run_config(r)
        lines += [f"model_name: {run.get('model_name')!r}",
                  f"model: {json.dumps(run.get('model'), default=str)}"]
    except FileNotFoundError:
        pass
    return "\n".join(lines)


def export_checkpoint(spec: str, params: Mapping[str, Any], meta: Mapping[str, Any],
                      output: str) -> str:
    """`vitx export --layout timm`: `timm_hub.export` with the model config of the checkpoint's run
    (a vitx workdir's config.json; a timm hub folder's own hints; a bare .npz: a vit with
    the tanh GELU) and the mean / std of its eval pp's `value_range(lo, hi)`.

    Raises:
      ValueError: see `export`.
    """
    model_name, model, mean, std = "vit", {}, 0.5, 0.5
    if "timm" in meta:
        hints = meta["timm"]["hints"]
        model_name, model = hints["family"], {"gelu": hints["gelu"],
                                              "pool_type": hints["pool_type"]}
        model.update({k: hints[k] for k in ("layer_scale",) if k in hints})  # -> init_values
        pcfg = meta["timm"]["pretrained_cfg"]
        mean, std = (pcfg.get("mean") or [0.5])[0], (pcfg.get("std") or [0.5])[0]
    else:
        try:
            run = checkpoints.read_run_config(spec)
        except FileNotFoundError:
            run = {}
        model_name, model = run.get("model_name", "vit"), dict(run.get("model") or {})
        pp = " ".join(str(e.get("pp", "")) for e in (run.get("evals") or {}).values()
                      if isinstance(e, Mapping))
        m = re.search(r"value_range\(\s*([-\d.e]+)\s*,\s*([-\d.e]+)", pp)
        if m:
            lo, hi = float(m[1]), float(m[2])
            mean, std = -lo / (hi - lo), 1.0 / (hi - lo)
    return timm_hub.export(params, output, model_name=model_name, model=model, mean=mean, std=std)
