"""The README's timm <-> vitx table: max |logits diff| per family, both directions.

    python scripts/timm_table.py export workdirs/timm_table          # vitx models -> hub folders
    .venv-bench/bin/python scripts/make_timm_fixtures.py --check workdirs/timm_table/*
    python scripts/timm_table.py table workdirs/timm_table           # prints the table

timm -> vitx: the fixtures of tests/fixtures/timm (written by timm, logits by timm) loaded by
each vitx model module's `load`. vitx -> timm: tiny vitx models (random init plus N(0, 0.25²)
noise on every param; the ViT with the tanh GELU, written as timm's act_layer="gelu_tanh")
exported with `vitx.utils.timm_hub.export`; timm loads each folder with
`create_model("local-dir:DIR", pretrained=True)` and computes its logits on the same inputs.
"Other" resolution: 24 px instead of 16 (posemb resized bilinearly on both sides).
"""

from __future__ import annotations

import os
import sys

import jax
import numpy as np
from safetensors.numpy import load_file, save_file

from vitx import models
from vitx.utils import checkpoints, timm_hub

FIXTURES = "tests/fixtures/timm"
TINY = dict(width=16, depth=2, mlp_dim=32, num_heads=2)
#: name -> (model_name, config.model); exported at 16 px, checked at 16 and 24 px.
EXPORTS = {
    "vit": ("vit", dict(TINY, patch_size=4, gelu="tanh")),
    "vit_gap": ("vit", dict(TINY, patch_size=4, pool_type="gap", gelu="exact")),
    "vit_gap_cls": ("vit", dict(TINY, patch_size=4, pool_type="gap", cls_token=True,
                                gelu="exact")),
    "vit_map": ("vit", dict(TINY, patch_size=4, pool_type="map", gelu="exact")),
    "flexivit": ("flexivit", dict(TINY, patch_size=4, base_patch_size=4, posemb_grid=4,
                                  gelu="exact")),
    "hybrid": ("hybrid", dict(TINY, patch_size=2, resnet_blocks=(), resnet_width=1.0,
                              gelu="exact")),
    "vit_reg": ("vit", dict(TINY, patch_size=4, reg_tokens=2, gelu="exact")),
    "vit_reg4_gap_ls": ("vit", dict(TINY, patch_size=4, pool_type="gap", reg_tokens=4,
                                    fc_norm=True, layer_scale=0.1, gelu="exact")),
}


def logits(folder: str, model_name: str, cfg: dict, image: np.ndarray) -> np.ndarray:
    """vitx's logits (B, 5) of checkpoint `folder` loaded by `load` at `image`'s size."""
    module = models.get_model_module(model_name)
    model = module.Model(5, **cfg)
    shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), image)["params"]
    init = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), shapes)
    return np.asarray(jax.jit(model.apply)({"params": module.load(init, folder, cfg)},
                                          image)[0])


def _image(size: int, seed: int) -> np.ndarray:
    return np.random.RandomState(seed).uniform(-1, 1, (2, size, size, 3)).astype(np.float32)


def export(out: str) -> None:
    for i, (name, (model_name, cfg)) in enumerate(EXPORTS.items()):
        model = models.get_model_module(model_name).Model(5, **cfg)
        params = jax.device_get(model.init(jax.random.PRNGKey(i), _image(16, 0))["params"])
        rng = np.random.RandomState(i)
        params = jax.tree.map(
            lambda x, r=rng: x + 0.25 * r.standard_normal(x.shape).astype(x.dtype), params)
        folder = os.path.join(out, name)
        if os.path.isdir(folder):  # made before: keep (timm's logits may be next to it)
            continue
        timm_hub.export(params, folder, model_name=model_name, model=cfg)
        inputs = {"image": _image(16, 0), "image_other": _image(24, 1)}
        save_file(inputs, os.path.join(folder, "inputs.safetensors"))
        save_file({"logits": logits(folder, model_name, cfg, inputs["image"]),
                   "logits_other": logits(folder, model_name, cfg, inputs["image_other"])},
                  os.path.join(folder, "vitx_logits.safetensors"))
        print(f"wrote {folder}")


def _cfg_of_fixture(name: str) -> tuple[str, dict]:
    h = checkpoints.load_params(os.path.join(FIXTURES, name))[1]["timm"]["hints"]
    cfg = {k: h[k] for k in ("width", "depth", "mlp_dim", "num_heads", "patch_size",
                             "pool_type", "gelu")}
    cfg.update({k: h[k] for k in ("cls_token", "reg_tokens", "fc_norm", "layer_scale") if k in h})
    if h["family"] == "flexivit":
        cfg.update(base_patch_size=h["patch_size"], posemb_grid=h["posemb_grid"])
    if h["family"] == "hybrid":
        cfg.update(resnet_blocks=h["resnet_blocks"], resnet_width=h["resnet_width"],
                   gn_groups=4 if name == "hybrid_r" else 32)
    return h["family"], cfg


def table(out: str) -> None:
    rows = []
    for name in ("vit", "vit_gap", "vit_gap_cls", "vit_map", "flexivit", "hybrid", "hybrid_r",
                 "vit_reg", "vit_reg4_gap_ls"):
        family, cfg = _cfg_of_fixture(name)
        e = load_file(os.path.join(FIXTURES, name, "expected.safetensors"))
        d = [float(np.max(np.abs(logits(os.path.join(FIXTURES, name), family, cfg, e[
            "image" + w]) - e["logits" + w]))) for w in ("", "_other")]
        v = [None, None]
        folder = os.path.join(out, name)
        if os.path.isfile(os.path.join(folder, "timm_logits.safetensors")):
            a = load_file(os.path.join(folder, "vitx_logits.safetensors"))
            b = load_file(os.path.join(folder, "timm_logits.safetensors"))
            v = [float(np.max(np.abs(a["logits" + w] - b["logits" + w]))) for w in ("", "_other")]
        rows.append((name, *d, *v))
    print("| fixture | timm -> vitx, 16 px | timm -> vitx, 24 px | vitx -> timm, 16 px | "
          "vitx -> timm, 24 px |")
    print("|---|---|---|---|---|")
    for name, *vals in rows:
        print(f"| {name} | " + " | ".join("n/a" if x is None else f"{x:.1e}" for x in vals)
              + " |")


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] not in ("export", "table"):
        sys.exit("usage: python scripts/timm_table.py export|table DIR")
    {"export": export, "table": table}[sys.argv[1]](sys.argv[2])
