r"""Hybrid ViT on the real digits scans (32x32): a BiT ResNet stem, then a ViT on its feature map.

Source: Dosovitskiy et al., ICLR 2021, Sec. 3.1 "Hybrid Architecture" (JP7536893B2): the patch
embedding runs on a CNN feature map (1x1 patches on the stage output). Here "R26x0.125+pico/8":
a ResNet-26 stem of width 8 (x0.125) with GroupNorm(8) whose two stages give stride 8, so a
32x32 image becomes a 4x4 token grid (the effective patch is 8), then a pico ViT encoder.

Command (resumable):

  vitx train --config configs/hybrid_digits.py --workdir workdirs/hybrid \
      --config.data_dir=data/tfds

Arguments: `hybrid_digits.py:seed=0,steps=1000`. Expected result (measured, seeds
0-2, 2-core CPU, `:steps=500`): test accuracy 97.2 +- 0.8 %, ~2 min of training per run (the
README table "Convolution + attention", `python scripts/seeds_table.py conv --run`).
"""

import os

import ml_collections

from vitx.config import load_config, parse_arg


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """`arg`: seed=0, steps=1000, quick (a short smoke run)."""
    arg = parse_arg(arg, seed=0, steps=1_000, quick=False)
    c = load_config(os.path.join(os.path.dirname(__file__), "vit_digits.py"))
    c.seed = arg.seed
    c.model_name = "hybrid"
    c.model = dict(variant="R26x0.125+pico/8", gn_groups=8, width=128, depth=4, mlp_dim=256,
                   num_heads=4, dtype_mm="float32")
    c.total_steps = arg.steps
    if arg.quick:
        c.total_steps = 60
        c.schedule.warmup_steps = 10
        c.eval_every_steps = 0
        c.checkpoint.every_steps = 20
    return c
