"""The README's measured tables: each row one config, trained over several seeds.

    python scripts/seeds_table.py polyvit --run    # trains what is missing (resumable), prints
    python scripts/seeds_table.py polyvit          # prints the table from workdirs/
    python scripts/seeds_table.py assemblenet --run
    python scripts/seeds_table.py conv --run       # CoAtNet and hybrid ViT vs ViT on digits
    python scripts/seeds_table.py vit --run        # `make train`'s config (ViT, 1,000 steps)

Each run is `vitx train --config <config>:<args>,seed=<s> --workdir workdirs/<table>_<row>_s<s>
--config.data_dir=data/tfds`; cells are test accuracy in % (losses as they are): mean +- std
over the seeds (numpy's population std), then each seed's value, with the mean train time.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

import numpy as np

POLYVIT_TASKS = ("digits", "video_digit", "video_direction", "dtmf")
SCHEDULES = ("task_by_task", "alternating", "uniform", "weighted", "accumulated")

# table -> (config file, [(row, config args)], [metric columns])
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
                  ("hybrid", "configs/hybrid_digits.py:steps=500")],
             ["test/accuracy"]),
}


def workdir(table: str, row: str, seed: int) -> str:
    return os.path.join("workdirs", f"{table}_{row}_s{seed}")


def spec(table: str, args: str, seed: int) -> str:
    config = TABLES[table][0]
    return f"{args},seed={seed}" if not config else f"{config}:{args},seed={seed}"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("table", choices=sorted(TABLES))
    p.add_argument("--run", action="store_true", help="train the missing runs first")
    p.add_argument("--seeds", type=int, default=3)
    args = p.parse_args()
    _, rows, metrics = TABLES[args.table]
    vitx = os.path.join(os.path.dirname(sys.executable), "vitx")
    for seed in range(args.seeds):
        for row, arg in rows:
            wd = workdir(args.table, row, seed)
            if args.run and not os.path.exists(os.path.join(wd, "results.json")):
                subprocess.run([vitx, "train", "--config", spec(args.table, arg, seed),
                                "--workdir", wd, "--config.data_dir=data/tfds"], check=True,
                               stdout=subprocess.DEVNULL)
    print("| run | " + " | ".join(m.split("/")[0] for m in metrics) + " | train time | seeds |")
    print("|---|" + "---|" * (len(metrics) + 2))
    for row, _ in rows:
        res = []
        for seed in range(args.seeds):
            path = os.path.join(workdir(args.table, row, seed), "results.json")
            if os.path.exists(path):
                with open(path) as f:
                    res.append(json.load(f))
        if not res:
            continue
        cells = []
        for m in metrics:
            scale, fmt = (1, ".4f") if "loss" in m else (100, ".1f")
            vals = [scale * r[m] for r in res if m in r]
            each = ", ".join(f"{v:{fmt}}" for v in vals)
            cells.append(f"{np.mean(vals):{fmt}} ± {np.std(vals):{fmt}} ({each})" if vals else "")
        secs = np.mean([r["train_seconds"] for r in res])
        print(f"| {row} | " + " | ".join(cells) + f" | {secs:.0f} s | {len(res)} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
