r"""Few-shot transfer from frozen features (ViT paper Sec. 4.1 "few-shot accuracy"): a ViT
pretrained on digits 0-4, then 1/5/10-shot linear accuracy on digits 5-9 from its frozen
`pre_logits`, against the same from a random-init ViT of the same shape.

Commands (the table in the README: `python scripts/recipe_table.py fewshot --run`, seeds 0-2):

  vitx train --config configs/vit_digits_fewshot.py:pretrain04 --workdir workdirs/pre04 \
      --config.data_dir=data/tfds
  vitx eval --config configs/vit_digits_fewshot.py:eval59 --checkpoint workdirs/pre04 \
      --config.data_dir=data/tfds
  vitx train --config configs/vit_digits_fewshot.py:random_init --workdir workdirs/rand04 \
      --config.data_dir=data/tfds          # 1 step at lr 0: the checkpoint is the init
  vitx eval --config configs/vit_digits_fewshot.py:eval59 --checkpoint workdirs/rand04 \
      --config.data_dir=data/tfds

Modes: `pretrain04` is `configs/transfer_digits.py:pretrain04` (the ViT of
`configs/vit_digits.py`, 5 classes) shortened to 300 steps on the train scans of 0-4; `random_init`
the same model after one step at learning rate 0 (its params are the seed's initialisation);
`eval59` the same model with one evaluator, `fewshot` (`fewshot_linear`: closed-form ridge
regression on standardised frozen features to {-1, 1}^5, L2 picked on a held-out 20 % of each
class; shots 1, 5, 10 drawn from the 5-9 train scans, 5 draws; accuracy on the 180 test scans
of 5-9). Measured over seeds 0, 1, 2 (2-core AMD EPYC, shared with other jobs: pretraining
took 146-1,823 s; 98.1 +- 0.7 % on the 0-4 test scans): pretrained 36.0 +- 3.8 / 59.9 +- 2.4 /
68.7 +- 2.8 % at 1 / 5 / 10 shots vs random init 38.1 +- 1.0 / 57.3 +- 0.7 / 64.4 +- 0.8 %; the
README table.
"""

import os

import ml_collections

from vitx.config import load_config, parse_arg

MODES = ("pretrain04", "random_init", "eval59")
DIGITS_59 = [5, 6, 7, 8, 9]


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """`arg`: one of MODES (default pretrain04), e.g. `vit_digits_fewshot.py:eval59`."""
    arg = parse_arg(arg, positional="mode", choices=MODES, mode="pretrain04")
    c = load_config(os.path.join(os.path.dirname(__file__), "transfer_digits.py")
                    + ":pretrain04")
    c.total_steps = 300  # 99 % on 0-4 already; half of transfer_digits' 600 (CPU time)
    if arg.mode == "random_init":
        c.total_steps = 1
        c.lr = 0.0
        c.schedule.warmup_steps = 0
        c.evals = {}
    elif arg.mode == "eval59":
        c.evals = dict(fewshot=dict(
            type="fewshot_linear", dataset="digits", train_split="train", test_split="test",
            pp="decode(channels=1)|resize(32)|value_range(-1,1)|onehot(5)|keep('image', 'label')",
            batch_size=120, shots=(1, 5, 10), num_draws=5, seed=0, label_subset=DIGITS_59))
    return c
