r"""FlexiViT on the real digits scans at 48x48: one model for patch sizes 4, 6, 8, 12, 16, 24.

Source: Beyer et al., "FlexiViT: One Model for All Patch Sizes", CVPR 2023 (CN117556885A). Each
train step draws one patch size (uniform over `flexi.patch_sizes`, a pure function of
(seed, step)); the 16x16 base patch kernel is PI-resized to it and the 8x8 posemb grid is
bilinearly resized to the token grid. Evaluation runs at every size and writes
`test_accuracy_vs_patch_size.png` into the workdir.

Commands (the README's "FlexiViT" table; each resumable):

  # FlexiViT, random patch size per step
  vitx train --config configs/flexivit_digits.py --workdir workdirs/flexi \
      --config.data_dir=data/tfds
  # Baseline: a plain ViT trained at patch 8 only ...
  vitx train --config configs/flexivit_digits.py:vit8 --workdir workdirs/vit8 \
      --config.data_dir=data/tfds
  # ... evaluated at every patch size with PI-resize + posemb resize (FlexiViT Fig. 3 / 7)
  vitx eval --config configs/flexivit_digits.py:vit8_eval --checkpoint workdirs/vit8 \
      --config.data_dir=data/tfds
  # Distillation (seed claims 4-6): FlexiViT student initialised from and distilled from vit8
  vitx train --config configs/flexivit_digits.py:distill --workdir workdirs/flexi_distill \
      --config.data_dir=data/tfds --config.model_init=workdirs/vit8 \
      --config.distill.teacher=workdirs/vit8
  # Transfer at a fixed patch size (seed claims 18-21): fine-tune FlexiViT at patch 12 only,
  # evaluate at every size
  vitx train --config configs/flexivit_digits.py:fixed12 --workdir workdirs/flexi_ft12 \
      --config.data_dir=data/tfds --config.model_init=workdirs/flexi

Expected results (`python scripts/seeds_table.py flexi --run --transpose`: one 2-core AMD EPYC
CPU, test accuracy at patch 4/6/8/12/16/24, mean over seeds 0, 1, 2 (std 0.2-5.5 points; the
README table has each std), mean train time):
  flexi     96.2 / 96.4 / 92.2 / 84.4 / 83.6 / 93.1 %  (1,200 steps, 394 s; 6 compiled programs)
            98.5 / 98.1 / 97.1 / 92.0 / 91.4 / 96.4 %  with --config.total_steps=2400 (819 s)
  vit8      98.2 % at patch 8 (250 s); vit8_eval: 87.8 / 96.7 / 98.2 / 75.0 / 44.0 / 13.1 %
  distill   98.1 / 98.1 / 96.8 / 91.6 / 88.1 / 91.2 %  (600 steps, 247 s)
  fixed12   93.1 / 94.8 / 92.8 / 90.0 / 81.5 / 86.2 %  (300 steps at patch 12, 47 s)
"""

import os

import ml_collections

from vitx.config import load_config, parse_arg

PATCH_SIZES = (4, 6, 8, 12, 16, 24)
IMAGE = 48


MODES = ("flexi", "vit8", "vit8_eval", "distill", "fixed12")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """`arg`: one of MODES (default flexi; see the module docstring)."""
    arg = parse_arg(arg, positional="mode", choices=MODES, mode="flexi").mode
    c = load_config(os.path.join(os.path.dirname(__file__), "vit_digits.py"))
    pad = IMAGE // 8
    c.input.pp = (f"decode(channels=1)|resize({IMAGE + pad})|random_crop({IMAGE})"
                  f"|value_range(-1,1)|onehot(10, label_smoothing=0.1)|keep('image', 'label')")
    c.evals.test.pp = (f"decode(channels=1)|resize({IMAGE})|value_range(-1,1)|onehot(10)"
                       f"|keep('image', 'label')")
    c.input.batch_size = 64
    c.total_steps = 1_200
    c.eval_every_steps = 0
    c.checkpoint.every_steps = 200
    c.distill = dict(teacher=ml_collections.FieldReference(None, field_type=str),
                     label_weight=0.0, temperature=1.0)

    flexi_model = dict(variant="mu/8", width=128, depth=6, mlp_dim=256, num_heads=4,
                       base_patch_size=(16, 16), posemb_grid=(8, 8))
    if arg in ("flexi", "distill", "fixed12", "vit8_eval"):
        c.model_name = "flexivit"
        c.model = dict(c.model.to_dict(), **flexi_model)
        c.flexi = dict(patch_sizes=PATCH_SIZES, schedule=dict(kind="uniform"))
        c.evals.test.type = "per_patch_size"
        c.evals.test.patch_sizes = PATCH_SIZES
    if arg == "vit8":
        c.model.variant = "mu/8"  # plain ViT, patch 8: a 6x6 token grid
    elif arg == "vit8_eval":
        # The vit8 params in a FlexiViT whose base kernel (8x8) and posemb grid (6x6) are the
        # plain ViT's own: identical at patch 8, PI-resized / bilinearly resized elsewhere.
        c.model.base_patch_size = (8, 8)
        c.model.posemb_grid = (6, 6)
    elif arg == "distill":
        c.distill.label_weight = 0.0
        c.model_load.dont_load = []
        c.total_steps = 600
    elif arg == "fixed12":
        c.flexi.schedule = dict(kind="fixed", patch_size=12)
        c.total_steps = 300
        c.lr = 3e-4
        c.schedule.warmup_steps = 30
    return c
