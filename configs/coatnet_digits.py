r"""CoAtNet on the real digits scans (32x32): convolution stages, then relative attention.

Source: Dai et al., "CoAtNet: Marrying Convolution and Attention for All Data Sizes", NeurIPS
2021 (CN117377983A): S0 conv stem, S1-S2 MBConv (BatchNorm), S3-S4 transformer blocks with
relative attention (a learned (2H-1)x(2W-1) table per head added to the logits). Here the tiny
`coatnet-pico` (16/32/64/128 channels, one block per stage) with stage strides (1, 2, 2, 2): a
16x16 map after the stem, 4x4 tokens in S3 and 2x2 in S4. BatchNorm's statistics live in the
train state (`model_state.batch_stats`), are checkpointed and used in eval mode.

Command (resumable):

  vitx train --config configs/coatnet_digits.py --workdir workdirs/coatnet \
      --config.data_dir=data/tfds

Arguments: `coatnet_digits.py:layout=CCTT,seed=0,steps=1000` (layout: CCTT, CCCT or CTTT, the
paper's ablation).

Expected result (measured, seeds 0-2, 2-core CPU, `:steps=500`): test accuracy 99.4 +- 0.6 %
(the SVM baseline: 98.9 %), ~7 min of training per run (the README table "Convolution +
attention", `python scripts/seeds_table.py conv --run`).
"""

import os

import ml_collections

from vitx.config import load_config, parse_arg


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """`arg`: layout=CCTT, seed=0, steps=1000, quick (a short smoke run)."""
    arg = parse_arg(arg, layout="CCTT", seed=0, steps=1_000, quick=False)
    c = load_config(os.path.join(os.path.dirname(__file__), "vit_digits.py"))
    c.seed = arg.seed
    c.model_name = "coatnet"
    c.model = dict(variant="coatnet-pico", layout=arg.layout, stage_strides=(1, 2, 2, 2),
                   dtype_mm="float32")
    c.total_steps = arg.steps
    if arg.quick:
        c.total_steps = 60
        c.schedule.warmup_steps = 10
        c.eval_every_steps = 0
        c.checkpoint.every_steps = 20
    return c
