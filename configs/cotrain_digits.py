r"""One encoder, three kinds of output: digit classification, scene segmentation and detection.

Command (resumable):

  vitx train --config configs/cotrain_digits.py --workdir workdirs/cotrain_digits \
      --config.data_dir=data/tfds

Measured (`python scripts/seeds_table.py cotrain --run --jobs 2`; one core per run on a 2-core
Intel Xeon with AMX; seeds 0, 1, 2, population std): digits accuracy 25.7 +- 4.1 %, seg mIoU
0.126 +- 0.001 (pixel accuracy 0.844), det mAP@0.5 0.042 +- 0.014 (mAP@[.5:.95] 0.013 +- 0.005),
184 s of training. Single task (`only=<task>`, same machine and seeds): digits 32.5 +- 1.6 %
(19 s), seg mIoU 0.122 +- 0.001 (54 s), det mAP@0.5 0.055 +- 0.013 (61 s): co-training costs
digit accuracy, leaves segmentation a little better and detection within the spread. (AMD
EPYC, co-trained: digits 26.9 +- 5.7 %, seg 0.125 +- 0.001, det 0.040 +- 0.012, 308 s.)

One ViT encoder (`model_name="dense"`, `vitx.models.dense`, the encoder of
`configs/detection_digits.py` and `configs/segmentation_digits.py`) with three heads, one route
each (`vitx.train.multitask`): `digits` (its own classification head on the pooled tokens, the
`digits` scans at 3x scale placed at random in a 64x64 canvas), `seg` (the linear per-token
decoder, per-pixel cross-entropy over background + 10 digits on `digit_scenes`) and `det`
(OWL-ViT's per-token box and class heads with the DETR loss on `digit_scenes`). The task
schedule (`weighted` by default: a seeded shuffle of U_j steps of each task, PolyViT Sec. 3.2;
any of `vitx.train.task_schedules.KINDS`) picks one task per step; a step updates the encoder
and that task's head only (`dense.active_mask`). Steps per task: det 600 (as
`configs/detection_digits.py`), seg 400, digits 200 (1,200 in all); `only=<task>` is that task
alone with the same encoder, data and steps (the single-task baseline).

Arguments: `schedule=weighted`, `only=digits|seg|det`, `seed=0`, `scale=1.0` (multiplies every
U_j), `quick` (a 30-step smoke run).
"""

import ml_collections

from vitx.config import ConfigError, parse_arg

TASKS = ("digits", "seg", "det")
STEPS = {"digits": 200, "seg": 400, "det": 600}
MAX_OBJECTS = 4
SCENE_PP = "decode(channels=1)|value_range(-1,1)"
# A scan at 3x scale (24 px, nearest, as the scenes' sprites) on a black 64x64 canvas.
DIGITS_TRAIN_PP = ("decode(channels=1)|resize(24, method='nearest')|pad(28)|random_crop(64)"
                   "|value_range(-1,1)|onehot(10)|keep('image', 'label')")
DIGITS_EVAL_PP = ("decode(channels=1)|resize(24, method='nearest')|pad(20)"
                  "|value_range(-1,1)|onehot(10)|keep('image', 'label')")
ENCODER = dict(variant="mu/8", width=64, depth=4, mlp_dim=128, num_heads=4, pool_type="gap",
               posemb="learn", dropout=0.0, scan=False, dtype_mm="float32")


def _route(name: str) -> tuple[dict, dict]:
    """(train route, eval entry) of task `name`."""
    if name == "digits":
        task = dict(type="classification", inputs="image", labels="label")
        train = dict(dataset="digits", pp=DIGITS_TRAIN_PP)
        ev = dict(type="classification", dataset="digits", pp=DIGITS_EVAL_PP, batch_size=120)
        k = 10
    elif name == "seg":
        task = dict(type="segmentation", inputs="image", labels="mask")
        train = dict(dataset="digit_scenes", pp=SCENE_PP + "|keep('image', 'mask')")
        ev = dict(type="segmentation", dataset="digit_scenes", pp=train["pp"], batch_size=100)
        k = 11
    else:
        task = dict(type="detection", inputs="image", boxes="boxes", labels="box_labels")
        pp = (SCENE_PP + f"|pad_objects({MAX_OBJECTS})|keep('image', 'boxes', 'box_labels')")
        train = dict(dataset="digit_scenes", pp=pp)
        ev = dict(type="detection", dataset="digit_scenes", pp=pp, batch_size=100)
        k = 10
    route = dict(name=name, num_classes=k, task=task, model_kw=dict(head=name),
                 input=dict(train, split="train", batch_size=32, shuffle_buffer=4_000,
                            cache=True))
    return route, dict(ev, task=name, split="test")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """`arg`: comma-separated `schedule=weighted`, `only=<task>`, `seed=0`, `scale=1.0`,
    `quick`."""
    arg = parse_arg(arg, schedule="weighted", only="", seed=0, scale=1.0, quick=False)
    if arg.only and arg.only not in TASKS:
        raise ConfigError(f"only={arg.only!r} is not a task; use one of {TASKS}")
    names = [arg.only] if arg.only else list(TASKS)
    c = ml_collections.ConfigDict()
    c.seed = arg.seed
    c.data_dir = ml_collections.FieldReference(None, field_type=str)
    tasks, evals = [], {}
    for name in names:
        route, ev = _route(name)
        route["steps"] = 10 if arg.quick else max(1, round(STEPS[name] * arg.scale))
        tasks.append(route)
        evals[name] = ev
    c.multitask = dict(schedule=arg.schedule, accumulate="sum", tasks=tasks)
    c.evals = evals

    c.model_name = "dense"
    c.num_classes = 10  # the encoder's own head: the `digits` classification
    c.model = dict(encoder="vit", encoder_cfg=ENCODER,
                   heads={"digits": dict(type="classification"),
                          "seg": dict(type="segmentation", upsample="subpixel"),
                          "det": dict(type="detection")},
                   head_classes=dict(seg=11, det=10))

    c.total_steps = None  # the task schedule's length: sum of U_j
    c.optax_name = "adamw"
    c.optax = dict(b1=0.9, b2=0.999)
    c.lr = 1e-3
    c.wd = 0.05
    c.schedule = dict(decay_type="cosine", warmup_steps=5 if arg.quick else 100)
    c.grad_clip_norm = 1.0
    c.grad_accum_steps = 1

    c.mesh = [("data", -1), ("fsdp", 1), ("model", 1)]
    c.sharding_rules = [(".*", "fsdp")]
    c.model_init = ml_collections.FieldReference(None, field_type=str)
    c.model_load = dict(dont_load=[])

    c.log_every_steps = 10 if arg.quick else 100
    c.eval_every_steps = 0 if arg.quick else 1_000
    c.checkpoint = dict(every_steps=10 if arg.quick else 250, keep=2, async_save=True)
    return c
