r"""PolyViT on real scans and tones: one encoder co-trained on image, video and audio tasks.

Source: Likhosherstov et al., "PolyViT: Co-training Vision Transformers on Images, Videos and
Audio", TMLR 2023 (WO2023059737A1). One shared transformer encoder, a tokenizer per
modality (image patches, video tubelets, spectrogram patches), a head per task; every step
trains one task (or all, "accumulated"), picked by the task schedule; only that path updates.

Tasks (4 tasks, 3 modalities; datasets built offline on first use):
  digits           image  digits (sklearn's 8x8 scans at 32x32)      10 classes
  video_digit      video  moving_digits (8 frames of 32x32)          10 classes (the digit)
  video_direction  video  moving_digits                              8 classes (the motion)
  dtmf             audio  dtmf_keys (log-mel, 64 frames x 32 mel)    12 classes (the key)

Commands (resumable; the README's PolyViT table):

  vitx train --config configs/polyvit_digits.py:schedule=weighted --workdir workdirs/polyvit \
      --config.data_dir=data/tfds
  # the same for schedule=task_by_task | alternating | uniform | accumulated, and the
  # single-task baselines of the same size and steps:
  vitx train --config configs/polyvit_digits.py:only=dtmf --workdir workdirs/polyvit_dtmf \
      --config.data_dir=data/tfds

`--config.multitask.schedule=...` also selects the policy. Arguments: schedule, only (one task
name: a single-task model with only that tokenizer and head), seed, epochs (U_j = epochs x
train examples / batch size: 134 steps of digits, 269 of each moving_digits task, 112 of
dtmf_keys at the default 6 epochs, so "weighted" samples in proportion to dataset size and
differs from "uniform"), steps (a fixed U_j for every task instead), quick.

Expected results (test accuracy, mean +- std over seeds 0-2, 2-core CPU shared with other jobs;
all rows in the README table "PolyViT", made by `python scripts/seeds_table.py polyvit --run`):
  schedule=weighted (default): digits 74.4 +- 1.8 %, video_digit 31.9 +- 0.9 %,
    video_direction 62.4 +- 8.0 %, dtmf 100.0 +- 0.0 %; 784 steps, ~95 s of training.
  only=<task> single-task baselines: 60.1 +- 2.7 / 31.4 +- 5.7 / 64.8 +- 3.0 / 100.0 %.
  166,696 params co-trained vs 587,304 for the four single-task models together.
"""

import os

import ml_collections

from vitx.config import ConfigError, load_config, parse_arg

TASKS = ("digits", "video_digit", "video_direction", "dtmf")
SCHEDULES = ("task_by_task", "alternating", "uniform", "weighted", "accumulated")
_IMG = ("decode(channels=1)|resize({s})|{crop}value_range(-1,1)|onehot(10{ls})"
        "|keep('image', 'label')")
_VID = "video_value_range(-1,1)|{rename}onehot({k}{ls})|keep('video', 'label')"
_AUD = ("log_mel(frame_length=256, frame_step=122, num_mel_bins=32, normalize=True)"
        "|onehot(12{ls})|keep('spectrogram', 'label')")


def _task(name: str, steps: int, batch_size: int, train: bool) -> dict:
    ls = ", label_smoothing=0.1" if train else ""
    if name == "digits":
        pp = _IMG.format(s=36 if train else 32, crop="random_crop(32)|" if train else "", ls=ls)
        return dict(modality="image", inputs="image", num_classes=10, dataset="digits", pp=pp)
    if name in ("video_digit", "video_direction"):
        digit = name == "video_digit"
        pp = _VID.format(rename="rename('digit', 'label')|" if digit else "",
                         k=10 if digit else 8, ls=ls)
        return dict(modality="video", inputs="video", num_classes=10 if digit else 8,
                    dataset="moving_digits", pp=pp)
    return dict(modality="audio", inputs="spectrogram", num_classes=12, dataset="dtmf_keys",
                pp=_AUD.format(ls=ls))


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """`arg`: schedule=weighted, only=<task> (single-task baseline), seed=0, epochs=6.0,
    steps=0 (> 0: a fixed U_j for every task instead of epochs), quick."""
    arg = parse_arg(arg, schedule="weighted", only="", seed=0, epochs=6.0, steps=0,
                    quick=False)
    if arg.schedule not in SCHEDULES:
        raise ConfigError(f"schedule={arg.schedule!r} is unknown; use one of {SCHEDULES}")
    if arg.only and arg.only not in TASKS:
        raise ConfigError(f"only={arg.only!r} is not a task; use one of {TASKS}")
    c = load_config(os.path.join(os.path.dirname(__file__), "vit_digits.py"))
    c.seed = arg.seed
    steps = 20 if arg.quick else arg.steps
    per_task = dict(steps=steps) if steps else dict(epochs=arg.epochs)
    names = [arg.only] if arg.only else list(TASKS)
    batch_size = 64
    modalities = {"image": dict(patch_size=(8, 8), input_shape=(32, 32, 1)),
                  "video": dict(tubelet=(4, 8, 8), input_shape=(8, 32, 32, 1)),
                  "audio": dict(patch_size=(8, 8), input_shape=(64, 32, 1))}
    tasks, heads, evals = [], {}, {}
    for name in names:
        t, e = _task(name, steps, batch_size, True), _task(name, steps, batch_size, False)
        heads[name] = dict(modality=t["modality"], num_classes=t["num_classes"])
        tasks.append(dict(
            name=name, num_classes=t["num_classes"],
            task=dict(type="classification", inputs=t["inputs"], labels="label"),
            model_kw=dict(modality=t["modality"], task=name),
            input=dict(dataset=t["dataset"], split="train", pp=t["pp"], batch_size=batch_size,
                       shuffle_buffer=4_000, cache=True),
            lr_mult=1.0, **per_task))
        evals[name] = dict(type="classification", task=name, dataset=e["dataset"], split="test",
                           pp=e["pp"], batch_size=120)
    used = {h["modality"] for h in heads.values()}
    c.model_name = "polyvit"
    c.num_classes = None
    c.model = dict(variant=None, width=64, depth=4, mlp_dim=128, num_heads=4,
                   modalities={m: v for m, v in modalities.items() if m in used},
                   heads=heads, num_modality_layers=0, dtype_mm="float32")
    c.multitask = dict(schedule=arg.schedule, accumulate="sum", tasks=tasks)
    del c["input"], c["task"]
    c.evals = evals
    c.total_steps = None
    c.schedule.warmup_steps = 50 if not arg.quick else 2
    c.lr = 1e-3
    c.eval_every_steps = 0
    c.checkpoint.every_steps = 200
    c.log_every_steps = 50 if not arg.quick else 5
    return c
