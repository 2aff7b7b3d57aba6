"""The README's measured tables: each row one config, trained over several seeds.

    python scripts/seeds_table.py polyvit --run    # trains what is missing (resumable), prints
    python scripts/seeds_table.py polyvit          # prints the table from workdirs/
    python scripts/seeds_table.py assemblenet --run
    python scripts/seeds_table.py conv --run       # CoAtNet and hybrid ViT vs ViT on digits
    python scripts/seeds_table.py vit --run        # `make train`'s config (ViT, 1,000 steps)
    python scripts/seeds_table.py transfer --run   # pretrain -> fine-tune (posemb ablations)
    python scripts/seeds_table.py masked_patch --run   # masked patch pretraining -> fine-tune
    python scripts/seeds_table.py flexi --run --transpose  # accuracy per patch size (Fig. 3/7)
    python scripts/seeds_table.py flexi --run --rows flexi2400   # only the rows named
    python scripts/seeds_table.py seg --run --jobs 2   # dense outputs (also det, cotrain): 2
                                                       # runs at once, one core each
    python scripts/seeds_table.py seg --run --jobs 2 --rows coatnet --seed-list 1,2  # those seeds

Each run is `vitx train --config <config>:<args>,seed=<s> --workdir workdirs/<table>_<row>_s<s>
--config.data_dir=data/tfds` (`--config.seed=<s>` for configs without a seed argument), with
`--config.model_init` / `--config.distill.teacher` pointing at the same seed's workdir of the
row it builds on; an eval row runs `vitx eval` on another row's checkpoint. Cells are test
accuracy in % (losses, mIoU, pixel accuracy and mAP as fractions): mean +- std over the seeds
(numpy's population std), then each seed's value, with the mean train time. `--jobs N` trains N
runs at once, each pinned to its own core (rows that build on others run after them), so the
times are one-core times.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from recipe_table import _run_all  # noqa: E402  (N runs at once, each on its own core)

POLYVIT_TASKS = ("digits", "video_digit", "video_direction", "dtmf")
SCHEDULES = ("task_by_task", "alternating", "uniform", "weighted", "accumulated")



@dataclasses.dataclass(frozen=True)
class Row:
    """One row: `args` for the config; `init`/`teacher`/`eval_of` name rows of the same seed."""

    name: str
    args: str
    init: str = ""  # --config.model_init=<that row's workdir>
    teacher: str = ""  # --config.distill.teacher=<that row's workdir>
    eval_of: str = ""  # `vitx eval` of that row's checkpoint instead of training
    extra: tuple[str, ...] = ()  # more command-line overrides
    hidden: bool = False  # trained (another row builds on it) but not a table row


FLEXI_SIZES = (4, 6, 8, 12, 16, 24)
DENSE_SIZES = (4, 8, 16)  # configs/segmentation_digits.py's FLEXI_PATCH_SIZES
DENSE_ENCODERS = ("vit", "flexivit", "hybrid", "coatnet")

# table -> (config file, [(row, config args)] or [Row], [metric columns])
TABLES = {
    "polyvit": ("configs/polyvit_digits.py",
                [(s, f"schedule={s}") for s in SCHEDULES]
                + [(f"only_{t}", f"only={t}") for t in POLYVIT_TASKS],
                [f"{t}/accuracy" for t in POLYVIT_TASKS]),
    "assemblenet": ("configs/assemblenet_digits.py",
                    [("video", "streams=video"), ("video+flow", "streams=video+flow"),
                     ("all_peer", "streams=video+flow+mask,attention=peer"),
                     ("all_self", "streams=video+flow+mask,attention=self"),
                     ("all_none", "streams=video+flow+mask,attention=none")],
                    ["test/accuracy"]),
    "vit": ("", [("vit_digits", "configs/vit_digits.py:steps=1000")], ["test/accuracy",
                                                                       "test/loss"]),
    "conv": ("", [("vit", "configs/vit_digits.py:steps=500"),
                  ("coatnet", "configs/coatnet_digits.py:steps=500"),
                  ("hybrid", "configs/hybrid_digits.py:steps=500"),
                  Row("vit_rel", "configs/vit_digits.py:steps=500",  # ViT_REL (CoAtNet Table 3)
                      extra=("--config.model_name=vit_rel",))],
             ["test/accuracy"]),
    "transfer": ("configs/transfer_digits.py",
                 [Row("pretrain16", "pretrain16"),
                  Row("finetune32", "finetune32", init="pretrain16"),
                  Row("finetune32_reinit_posemb", "finetune32_reinit_posemb",
                      init="pretrain16"),
                  Row("scratch32", "scratch32"),
                  Row("pretrain04", "pretrain04"),
                  Row("finetune59", "finetune59", init="pretrain04"),
                  Row("scratch59", "finetune59")],
                 ["test/accuracy"]),
    "masked_patch": ("configs/masked_patch_digits.py",
                     [Row("pretrain", "pretrain"), Row("finetune", "finetune", init="pretrain"),
                      Row("scratch", "finetune")],
                     ["test/accuracy"]),
    "flexi": ("configs/flexivit_digits.py",
              [Row("vit8", "vit8", hidden=True),
               Row("vit8_eval", "vit8_eval", eval_of="vit8"),
               Row("flexi", "flexi"),
               Row("fixed12", "fixed12", init="flexi"),
               Row("distill", "distill", init="vit8", teacher="vit8"),
               Row("flexi2400", "flexi", extra=("--config.total_steps=2400",))],
              [f"test/accuracy@{p}" for p in FLEXI_SIZES]),
    # Dense outputs (README "Detection and segmentation"): every encoder at the same budget.
    "seg": ("configs/segmentation_digits.py",
            [(e, f"encoder={e}") for e in DENSE_ENCODERS]
            + [("hybrid2400", "encoder=hybrid,steps=2400"),  # ~15 min of an EPYC core
               ("hybrid4000", "encoder=hybrid,steps=4000")],  # ~14 min of a Xeon core
            ["test/mIoU", "test/pixel_accuracy"] + [f"test/mIoU@{p}" for p in DENSE_SIZES]),
    "det": ("configs/detection_digits.py",
            [(e, f"encoder={e}") for e in DENSE_ENCODERS],
            ["test/mAP50", "test/mAP"] + [f"test/mAP50@{p}" for p in DENSE_SIZES]),
    "cotrain": ("configs/cotrain_digits.py",
                [("cotrain", "schedule=weighted")]
                + [(f"only_{t}", f"only={t}") for t in ("digits", "seg", "det")],
                ["digits/accuracy", "seg/mIoU", "seg/pixel_accuracy", "det/mAP50", "det/mAP"]),
}
# Tables whose config file takes no `seed=` argument: the seed is a command-line override.
SEED_OVERRIDE = ("transfer", "flexi")


def workdir(table: str, row: str, seed: int) -> str:
    return os.path.join("workdirs", f"{table}_{row}_s{seed}")


def spec(table: str, args: str, seed: int) -> str:
    config = TABLES[table][0]
    if table in SEED_OVERRIDE:
        return f"{config}:{args}"
    return f"{args},seed={seed}" if not config else f"{config}:{args},seed={seed}"


def rows_of(table: str) -> list[Row]:
    return [r if isinstance(r, Row) else Row(*r) for r in TABLES[table][1]]


def command(vitx: str, table: str, row: Row, seed: int) -> list[str]:
    """The `vitx train` (or `vitx eval`) command of one row and seed."""
    wd = workdir(table, row.name, seed)
    cmd = [vitx, "eval" if row.eval_of else "train", "--config", spec(table, row.args, seed)]
    if row.eval_of:
        cmd += ["--checkpoint", workdir(table, row.eval_of, seed),
                "--output", os.path.join(wd, "results.json")]
    else:
        cmd += ["--workdir", wd]
    cmd.append("--config.data_dir=data/tfds")
    if table in SEED_OVERRIDE:
        cmd.append(f"--config.seed={seed}")
    if row.init:
        cmd.append(f"--config.model_init={workdir(table, row.init, seed)}")
    if row.teacher:
        cmd.append(f"--config.distill.teacher={workdir(table, row.teacher, seed)}")
    return cmd + list(row.extra)


def fmt_of(metric: str) -> tuple[float, str]:
    """(scale, format) of a metric's cells: accuracy in %, losses to 4 digits, the dense
    metrics (mIoU, pixel accuracy, mAP) as fractions to 3."""
    last = metric.split("/")[-1]
    if last.startswith("accuracy"):
        return 100, ".1f"
    return (1, ".4f") if "loss" in last else (1, ".3f")


def seeds_of(n: int, seed_list: str = "") -> list[int]:
    """The seeds to run and print: `seed_list` ("1,2") if given, else 0 .. n-1.

    Raises:
      ValueError: `seed_list` is not comma-separated ints >= 0.
    """
    if not seed_list:
        return list(range(n))
    try:
        seeds = [int(s) for s in seed_list.split(",")]
    except ValueError:
        seeds = [-1]
    if min(seeds) < 0:
        raise ValueError(f"--seed-list {seed_list}: must be comma-separated ints >= 0, e.g. 1,2")
    return seeds


def waves(rows: list[Row]) -> list[list[Row]]:
    """`rows` in dependency waves: a row runs in a later wave than the rows it builds on."""
    by_name = {r.name: r for r in rows}
    depth: dict[str, int] = {}

    def depth_of(r: Row) -> int:
        if r.name not in depth:
            deps = [by_name[d] for d in (r.init, r.teacher, r.eval_of) if d in by_name]
            depth[r.name] = 1 + max((depth_of(d) for d in deps), default=-1)
        return depth[r.name]

    out: list[list[Row]] = [[] for _ in range(1 + max(map(depth_of, rows), default=-1))]
    for r in rows:
        out[depth_of(r)].append(r)
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("table", choices=sorted(TABLES))
    p.add_argument("--run", action="store_true", help="train the missing runs first")
    p.add_argument("--seeds", type=int, default=3, help="seeds 0 .. N-1")
    p.add_argument("--seed-list", default="",
                   help="comma-separated seeds to run and print instead (e.g. 1,2)")
    p.add_argument("--rows", default="", help="comma-separated rows to run and print (default: "
                   "all); the rows they build on are run too")
    p.add_argument("--jobs", type=int, default=1,
                   help="train this many runs at once, each pinned to its own core")
    p.add_argument("--transpose", action="store_true",
                   help="a line per metric and a column per run (cells mean +- std only)")
    args = p.parse_args()
    try:
        seeds = seeds_of(args.seeds, args.seed_list)
    except ValueError as e:
        p.error(str(e))
    metrics = TABLES[args.table][2]
    rows = rows_of(args.table)
    by_name = {r.name: r for r in rows}
    wanted = [n for n in args.rows.split(",") if n]
    if unknown := [n for n in wanted if n not in by_name]:
        p.error(f"--rows {','.join(unknown)}: unknown; rows of {args.table}: {', '.join(by_name)}")
    if wanted:
        needed, todo = set(), list(wanted)
        while todo:
            r = by_name[todo.pop()]
            needed.add(r.name)
            todo += [d for d in (r.init, r.teacher, r.eval_of) if d]
        rows = [r for r in rows if r.name in needed]
    vitx = os.path.join(os.path.dirname(sys.executable), "vitx")
    if args.run:
        for wave in waves(rows):
            cmds = []
            for seed in seeds:
                for row in wave:
                    wd = workdir(args.table, row.name, seed)
                    if not os.path.exists(os.path.join(wd, "results.json")):
                        os.makedirs(wd, exist_ok=True)
                        cmds.append(command(vitx, args.table, row, seed))
            _run_all(cmds, args.jobs)
    table: list[tuple[str, list[str], list[str], str, int]] = []  # row, cells, short cells, ...
    for row in rows:
        if row.hidden or (wanted and row.name not in wanted):
            continue
        res = []
        for seed in seeds:
            path = os.path.join(workdir(args.table, row.name, seed), "results.json")
            if os.path.exists(path):
                with open(path) as f:
                    res.append(json.load(f))
        if not res:
            continue
        cells, short = [], []
        for m in metrics:
            scale, fmt = fmt_of(m)
            vals = [scale * r[m] for r in res if m in r]
            each = ", ".join(f"{v:{fmt}}" for v in vals)
            mean_std = f"{np.mean(vals):{fmt}} ± {np.std(vals):{fmt}}" if vals else ""
            cells.append(f"{mean_std} ({each})" if vals else "")
            short.append(mean_std)
        secs = [r["train_seconds"] for r in res if "train_seconds" in r]
        table.append((row.name, cells, short, f"{np.mean(secs):.0f} s" if secs else "–",
                      len(res)))
    same_prefix = len({m.split("/")[0] for m in metrics}) == 1
    heads = [m.split("/")[-1] if same_prefix else m for m in metrics]
    if args.transpose:  # a line per metric, a column per run (the FlexiViT table's shape)
        print("| metric | " + " | ".join(name for name, *_ in table) + " |")
        print("|---|" + "---|" * len(table))
        for i, head in enumerate(heads):
            print(f"| {head} | " + " | ".join(short[i] for _, _, short, _, _ in table) + " |")
        print("| train time | " + " | ".join(t for *_, t, _ in table) + " |")
        print("| seeds | " + " | ".join(str(n) for *_, n in table) + " |")
        for name, cells, *_ in table:  # each seed's values, for the record
            print(f"{name}: " + "; ".join(f"{h} {c}" for h, c in zip(heads, cells, strict=True)))
        return 0
    print("| run | " + " | ".join(heads) + " | train time | seeds |")
    print("|---|" + "---|" * (len(metrics) + 2))
    for name, cells, _, time, n in table:
        print(f"| {name} | " + " | ".join(cells) + f" | {time} | {n} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
