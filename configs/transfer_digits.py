r"""Pretrain -> fine-tune on the real digits scans (ViT paper Sec. 3.2; JP7536893B2).

Two recipes, each two commands (every step resumable; results in WORKDIR/results.json):

1. Higher resolution: pretrain at 16x16 (patch 4: a 4x4 token grid), fine-tune at 32x32
   (patch 4: an 8x8 grid); the learned posemb is bilinearly interpolated 4x4 -> 8x8.

  vitx train --config configs/transfer_digits.py:pretrain16 --workdir workdirs/pre16 \
      --config.data_dir=data/tfds
  vitx train --config configs/transfer_digits.py:finetune32 --workdir workdirs/ft32 \
      --config.data_dir=data/tfds --config.model_init=workdirs/pre16

  Ablations (same command, other arg): `finetune32_reinit_posemb` (the posemb is not loaded:
  fresh random init) and `scratch32` (no pretraining, same steps).

2. New label set: pretrain on digits 0-4, fine-tune on digits 5-9 with a new zero head.

  vitx train --config configs/transfer_digits.py:pretrain04 --workdir workdirs/pre04 \
      --config.data_dir=data/tfds
  vitx train --config configs/transfer_digits.py:finetune59 --workdir workdirs/ft59 \
      --config.data_dir=data/tfds --config.model_init=workdirs/pre04

Expected results (`python scripts/seeds_table.py transfer --run`: one 2-core AMD EPYC CPU, test
accuracy mean +- std over seeds 0, 1, 2 with seed-matched pretraining, mean train time):
  pretrain16 97.6 +- 0.7 % (174 s) -> finetune32 98.3 +- 0.4 % (78 s);
  finetune32_reinit_posemb 94.3 +- 1.0 % (80 s); scratch32 72.1 +- 2.2 % (81 s).
  pretrain04 99.8 +- 0.3 % (104 s) -> finetune59 95.4 +- 0.7 % (33 s); digits 5-9 from scratch
  with the same 150 steps (finetune59 without model_init): 91.7 +- 1.2 % (34 s).
"""

import os

import ml_collections

from vitx.config import load_config, parse_arg

MODES = ("pretrain16", "finetune32", "finetune32_reinit_posemb", "scratch32", "pretrain04",
         "finetune59")


def _pp(size: int, train: bool, num_classes: int = 10) -> str:
    if train:
        pad = size // 8  # one original 8x8 pixel of translation
        return (f"decode(channels=1)|resize({size + pad})|random_crop({size})|value_range(-1,1)"
                f"|onehot({num_classes}, label_smoothing=0.1)|keep('image', 'label')")
    return (f"decode(channels=1)|resize({size})|value_range(-1,1)|onehot({num_classes})"
            f"|keep('image', 'label')")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """`arg`: one of MODES (default pretrain16), e.g. `transfer_digits.py:finetune32`."""
    arg = parse_arg(arg, positional="mode", choices=MODES, mode="pretrain16")
    c = load_config(os.path.join(os.path.dirname(__file__), "vit_digits.py"))
    arg = arg.mode

    if arg in ("pretrain16", "finetune32", "finetune32_reinit_posemb", "scratch32"):
        size = 16 if arg == "pretrain16" else 32
        c.model.variant = "mu/4"
        c.input.pp = _pp(size, train=True)
        c.evals.test.pp = _pp(size, train=False)
        if arg == "pretrain16":
            c.total_steps = 1_000
        else:
            # Fine-tune (ViT Sec. 3.2 / App. B.1.1): short, fresh optimizer, new head.
            c.input.batch_size = 64
            c.total_steps = 200
            c.lr = 3e-4 if arg != "scratch32" else 1e-3
            c.schedule.warmup_steps = 20
            c.eval_every_steps = 100
            c.model_load.dont_load = ["head/.*"]
            if arg == "finetune32_reinit_posemb":
                c.model_load.dont_load = ["head/.*", "pos_embedding"]
    elif arg in ("pretrain04", "finetune59"):
        subset = [0, 1, 2, 3, 4] if arg == "pretrain04" else [5, 6, 7, 8, 9]
        c.num_classes = 5
        c.input.label_subset = subset
        c.evals.test.label_subset = subset
        c.input.pp = _pp(32, train=True, num_classes=5)
        c.evals.test.pp = _pp(32, train=False, num_classes=5)
        if arg == "pretrain04":
            c.total_steps = 600
        else:
            c.total_steps = 150
            c.lr = 1e-3
            c.schedule.warmup_steps = 15
            c.eval_every_steps = 50
            # Same class count (5): the head has the right shape, so drop it explicitly.
            c.model_load.dont_load = ["head/.*"]
    return c
