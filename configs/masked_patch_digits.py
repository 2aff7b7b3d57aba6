r"""Masked patch prediction on the digits scans, then fine-tuning (ViT paper Sec. 4.6, App. B.1.2).

Self-supervised pretraining (no labels): the ViT corrupts 50 % of its patch embeddings (80 % a
learned [mask] embedding, 10 % another patch's, 10 % unchanged) and predicts each corrupted
patch's 3-bit mean grey level (8 classes; 512 for RGB) from its output token. Then supervised
fine-tuning from those weights (a new zero head; the [mask] embedding is not loaded):

  vitx train --config configs/masked_patch_digits.py --workdir workdirs/mpp_digits \
      --config.data_dir=data/tfds
  vitx train --config configs/masked_patch_digits.py:finetune --workdir workdirs/mpp_ft \
      --config.data_dir=data/tfds --config.model_init=workdirs/mpp_digits

From scratch with the same fine-tuning budget: the second command without `model_init`.

Model: a narrower ViT than `configs/vit_digits.py` (width 64, 4 layers, 4 heads, patch 8 on
32x32 inputs: 16 patch tokens + cls; 0.14M params), batch 64, AdamW 1e-3, warmup + cosine.
Arguments: `mode` (pretrain | finetune), `steps`, `seed`, e.g.
`configs/masked_patch_digits.py:finetune,steps=100,seed=1`.

Expected results (`python scripts/seeds_table.py masked_patch --run`: one 2-core AMD EPYC CPU
shared with other jobs; test accuracy, mean +- std over seeds 0, 1, 2, seed-matched pretraining;
mean train time, which varied up to 3x with the load):
  pretrain (corrupted patches' grey level, 8 classes)   52.3 +- 0.5 %   413 s
  finetune from it (150 steps)                          74.5 +- 2.6 %   181 s
  the same 150 steps from scratch (no model_init)       67.9 +- 0.9 %   125 s
"""

import os

import ml_collections

from vitx.config import load_config, parse_arg

MODES = ("pretrain", "finetune")
PATCH = 8


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """`arg`: `pretrain` (default: 500 steps) or `finetune` (150 steps), `steps=N`, `seed=S`."""
    arg = parse_arg(arg, positional="mode", choices=MODES, mode="pretrain", steps=0, seed=0)
    c = load_config(os.path.join(os.path.dirname(__file__), "vit_digits.py"))
    c.seed = arg.seed
    # Narrower than vit_digits (width 64, 4 layers) so that 3 seeds of the table fit on a
    # shared 2-core machine.
    c.model.variant = f"mu/{PATCH}"
    c.model.update(width=64, depth=4, mlp_dim=128, num_heads=4)
    c.input.batch_size = 64
    if arg.mode == "pretrain":
        keep = "keep('image')"
        c.input.pp = f"decode(channels=1)|resize(36)|random_crop(32)|value_range(-1,1)|{keep}"
        c.evals.test.pp = f"decode(channels=1)|resize(32)|value_range(-1,1)|{keep}"
        c.task = dict(type="masked_patch", inputs="image", patch_size=PATCH, bits=3)
        c.num_classes = 8  # 2**3 grey levels (512 = 8**3 for RGB images)
        c.model.masked_patch_rate = 0.5
        c.total_steps = arg.steps or 500
        c.schedule.warmup_steps = 50
        c.eval_every_steps = 250
    else:
        # Fine-tune (ViT Sec. 3.2): a fresh optimizer, a new zero head, no [mask] embedding.
        c.total_steps = arg.steps or 150
        c.schedule.warmup_steps = 15
        c.eval_every_steps = 75
        c.model_load.dont_load = ["head/.*", "masked_patch/.*"]
    return c
