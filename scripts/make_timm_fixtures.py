"""Make tests/fixtures/timm/: tiny timm models of each ViT family, written by timm itself.

Run with an environment that has timm and torch (the `bench` extra; no jax needed):

    .venv-bench/bin/python scripts/make_timm_fixtures.py [--out tests/fixtures/timm] [--only NAME]

Each fixture is a hub folder `NAME/{config.json, model.safetensors}` written by
`timm.models.save_for_hf` (what `push_to_hf_hub` uploads) from a randomly initialised model
whose every tensor got extra N(0, 0.25²) noise (so LayerNorm scales, biases and the cls token are
not at their trivial inits), plus `NAME/expected.safetensors`: a fixed input `image` (B, H, W, C)
float32 in [-1, 1] and timm's float32 `logits` (B, K) at timm's resolution, and `image_other` /
`logits_other` at another resolution, for which the model's pos_embed was resampled with
`resample_abs_pos_embed(..., interpolation="bilinear", antialias=False)` (vitx's `load` does
the same bilinear resize: `model_load.posemb_method="bilinear"`, the default).

`--check DIR [DIR ...]`: instead, load each exported hub folder with
`timm.create_model("local-dir:DIR", pretrained=True)` and write timm's logits on the inputs in
DIR/inputs.safetensors ("image" (B, H, W, C)) to DIR/timm_logits.safetensors ("logits"); vitx's
tests and scripts/timm_table.py compare them with vitx's.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from functools import partial

import numpy as np
import timm
import torch
from safetensors.numpy import load_file, save_file
from timm.layers import GroupNormAct, resample_abs_pos_embed
from timm.models import save_for_hf
from timm.models.resnetv2 import ResNetV2
from timm.models.vision_transformer_hybrid import HybridEmbed

TINY = dict(embed_dim=16, depth=2, num_heads=2, mlp_ratio=2.0, num_classes=5)
#: name -> (architecture, model_args, image size, other image size)
FIXTURES = {
    "vit": ("vit_tiny_patch16_224", dict(TINY, patch_size=4, img_size=16), 16, 24),
    "vit_gap": ("vit_tiny_patch16_224", dict(TINY, patch_size=4, img_size=16, class_token=False,
                                             global_pool="avg", fc_norm=False), 16, 24),
    "vit_gap_cls": ("vit_tiny_patch16_224", dict(TINY, patch_size=4, img_size=16,
                                                 global_pool="avg", fc_norm=False), 16, 24),
    "vit_map": ("vit_base_patch16_siglip_224", dict(TINY, patch_size=4, img_size=16), 16, 24),
    "flexivit": ("flexivit_small", dict(TINY, patch_size=4, img_size=16), 16, 24),
    "hybrid": ("vit_tiny_r_s16_p8_224", dict(TINY, patch_size=2, img_size=16), 16, 24),
    # for the README's fine-tune on digits (1 channel, 32 px, patch 8)
    "vit_c1": ("vit_tiny_patch16_224", dict(TINY, patch_size=8, img_size=32, in_chans=1), 32, 48),
}
#: made after the others (each from its own torch seed, so `--only` remakes it alone):
#: register tokens with their class-slot posemb (vitx folds it in), and the reg4-gap layout
#: (registers without a cls token, avg pool + fc_norm) with layer scale.
EXTRA = {
    "vit_reg": ("vit_tiny_patch16_224", dict(TINY, patch_size=4, img_size=16, reg_tokens=2),
                16, 24),
    "vit_reg4_gap_ls": ("vit_base_patch16_reg4_gap_256", dict(TINY, patch_size=4, img_size=16,
                                                              init_values=0.1), 16, 24),
}


def _noisy(model: torch.nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.25 * torch.randn(p.shape, generator=g))


def _logits(model: torch.nn.Module, image: np.ndarray) -> np.ndarray:
    model.eval()
    with torch.no_grad():
        x = torch.from_numpy(np.ascontiguousarray(image.transpose(0, 3, 1, 2)))
        return model(x).numpy().astype(np.float32)


def _image(size: int, seed: int, channels: int = 3) -> np.ndarray:
    return np.random.RandomState(seed).uniform(-1, 1, (2, size, size, channels)).astype(
        np.float32)


def _other(arch: str, args: dict, model: torch.nn.Module, size: int, **kw) -> torch.nn.Module:
    """The same weights at `size` px, pos_embed resampled bilinearly (no antialias)."""
    other = (kw.pop("build")(size) if "build" in kw else
             timm.create_model(arch, pretrained=False, **dict(args, img_size=size)))
    sd = dict(model.state_dict())
    prefix = 0 if model.no_embed_class else model.num_prefix_tokens
    sd["pos_embed"] = resample_abs_pos_embed(
        sd["pos_embed"], list(other.patch_embed.grid_size), num_prefix_tokens=prefix,
        interpolation="bilinear", antialias=False)
    other.load_state_dict(sd)
    return other


def _hybrid_r(size: int) -> torch.nn.Module:
    """A hybrid with two ResNet stages (timm registers only full-width ones): width x0.125,
    GroupNorm with 4 groups, units (1, 1); vitx: resnet_blocks=(1, 1), resnet_width=0.125,
    gn_groups=4, patch_size=1."""
    from timm.layers import StdConv2dSame
    from timm.models.vision_transformer import VisionTransformer

    backbone = ResNetV2(layers=(1, 1), channels=(256, 512), num_classes=0, global_pool="",
                        preact=False, stem_type="same", width_factor=0.125,
                        conv_layer=partial(StdConv2dSame, eps=1e-8),
                        norm_layer=partial(GroupNormAct, num_groups=4))
    return VisionTransformer(img_size=size, patch_size=1, embed_layer=partial(
        HybridEmbed, backbone=backbone), **TINY)


def make(out: str, only: list[str] | None = None) -> None:
    if only is None and os.path.isdir(out):
        shutil.rmtree(out)
    os.makedirs(out, exist_ok=True)
    torch.manual_seed(0)
    items = (list(FIXTURES.items()) + [("hybrid_r", ("vit_tiny_r_s16_p8_224", None, 16, 24))]
             + list(EXTRA.items()))
    for i, (name, (arch, args, size, other_size)) in enumerate(items):
        if name in EXTRA:
            torch.manual_seed(100 + i)
        if only is not None and name not in only:
            continue
        if os.path.isdir(os.path.join(out, name)):
            shutil.rmtree(os.path.join(out, name))
        if args is None:
            model, kw = _hybrid_r(size), dict(build=_hybrid_r)
        else:
            model, kw = timm.create_model(arch, pretrained=False, **args), {}
        _noisy(model, seed=i)
        folder = os.path.join(out, name)
        if args is None:  # not a registered architecture: weights + num_heads only
            os.makedirs(folder)
            save_file({k: v.numpy() for k, v in model.state_dict().items()},
                      os.path.join(folder, "model.safetensors"))
            with open(os.path.join(folder, "config.json"), "w") as f:
                json.dump({"model_args": {"num_heads": TINY["num_heads"]}}, f)
        else:
            save_for_hf(model, folder, safe_serialization=True)
        c = (args or {}).get("in_chans", 3)
        image, image_other = _image(size, 0, c), _image(other_size, 1, c)
        save_file({"image": image, "logits": _logits(model, image), "image_other": image_other,
                   "logits_other": _logits(_other(arch, args, model, other_size, **kw),
                                           image_other)},
                  os.path.join(folder, "expected.safetensors"))
        kb = sum(os.path.getsize(os.path.join(folder, f)) for f in os.listdir(folder)) / 1024
        print(f"{name}: {arch} {args} -> {folder} ({kb:.0f} KB)")


def check(dirs: list[str]) -> None:
    """timm's logits of exported hub folders: `local-dir:` at the exported size, and at the
    size of `image_other` with pos_embed resampled bilinearly (as `_other`)."""
    for d in dirs:
        model = timm.create_model("local-dir:" + os.path.abspath(d), pretrained=True)
        inputs = load_file(os.path.join(d, "inputs.safetensors"))
        with open(os.path.join(d, "config.json")) as f:
            cfg = json.load(f)
        out = {"logits": _logits(model, inputs["image"])}
        if "image_other" in inputs:
            args = dict(cfg["model_args"], num_classes=cfg["num_classes"])
            other = _other(cfg["architecture"], args, model, inputs["image_other"].shape[1])
            out["logits_other"] = _logits(other, inputs["image_other"])
        save_file(out, os.path.join(d, "timm_logits.safetensors"))
        print(f"{d}: timm.create_model('local-dir:...', pretrained=True) loaded "
              f"{cfg['architecture']}")


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default="tests/fixtures/timm")
    p.add_argument("--check", nargs="+", default=None, metavar="DIR")
    p.add_argument("--only", nargs="+", default=None, metavar="NAME",
                   help=f"remake only these fixtures (of {sorted(EXTRA)}: own seeds)")
    args = p.parse_args(argv)
    if args.check:
        check(args.check)
    else:
        make(args.out, args.only)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
