"""The README's training-recipe tables: the AugReg/DeiT recipe's ablation, and few-shot transfer.

    python scripts/recipe_table.py ablation --run     # trains what is missing, prints the table
    python scripts/recipe_table.py ablation           # prints it from workdirs/
    python scripts/recipe_table.py ablation --run --seeds 1 --rows recipe,baseline
    python scripts/recipe_table.py ablation --run --jobs 2  # 2 runs at once, one core each
    python scripts/recipe_table.py fewshot --run      # 1/5/10-shot on digits 5-9 (frozen ViT)

ablation: each row is `vitx train --config <config> --workdir workdirs/recipe_<row>_s<seed>
--config.data_dir=data/tfds` for seeds 0, 1, 2: `recipe` is `configs/vit_digits_augreg.py`,
each `-<part>` row turns one part of it off, `baseline` is `configs/vit_digits.py` (`make
train`'s config). A cell is the test accuracy in % of the weights the recipe evaluates
(`test_ema/accuracy` when the row has an EMA, else `test/accuracy`): mean +- std over the seeds
(numpy's population std) and each seed's value; the time is the mean `train_seconds`.
`--jobs N` trains N runs at once, each pinned to its own core (Linux `sched_setaffinity`; N <=
the cores this process may use), so the times are one-core times.

fewshot: `configs/vit_digits_fewshot.py:pretrain04` (a ViT trained on digits 0-4 only) is
trained per seed (`workdirs/fewshot_pretrain04_s<seed>`), then `vitx eval` of
`configs/vit_digits_fewshot.py:eval59` (the `fewshot_linear` evaluator on digits 5-9: ridge
regression on frozen `pre_logits`, 1/5/10 shots per class, 5 draws) on that checkpoint and on
a random-init ViT of the same shape (`:random_init`: trained for 0 steps, so its checkpoint is
the seed's initialisation).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import queue
import subprocess
import sys

import numpy as np

AUGREG = "configs/vit_digits_augreg.py"
FEWSHOT = "configs/vit_digits_fewshot.py"
# row -> (config spec without the seed, metric of the weights it reports)
ABLATION = {
    "recipe": (f"{AUGREG}:", "test_ema/accuracy"),
    "-randaug": (f"{AUGREG}:randaug=False,", "test_ema/accuracy"),
    "-mixup/cutmix": (f"{AUGREG}:mixup=False,", "test_ema/accuracy"),
    "-drop_path": (f"{AUGREG}:drop_path=0.0,", "test_ema/accuracy"),
    "-EMA": (f"{AUGREG}:ema=False,", "test/accuracy"),
    "baseline": ("configs/vit_digits.py:", "test/accuracy"),
}
SHOTS = (1, 5, 10)


def workdir(table: str, row: str, seed: int) -> str:
    name = row.replace("/", "_").lstrip("-").replace("-", "_")
    prefix = "no_" if row.startswith("-") else ""
    return os.path.join("workdirs", f"{table}_{prefix}{name}_s{seed}")


def _run(cmd: list[str], core: int | None = None) -> None:
    print("+", " ".join(cmd) + ("" if core is None else f"  # on core {core}"), flush=True)
    pin = None if core is None else (lambda: os.sched_setaffinity(0, {core}))
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, preexec_fn=pin)


def _run_all(cmds: list[list[str]], jobs: int) -> None:
    """Each command in turn (jobs 1), or `jobs` at a time, each pinned to one core."""
    if jobs <= 1:
        for cmd in cmds:
            _run(cmd)
        return
    cores = sorted(os.sched_getaffinity(0))
    if jobs > len(cores):
        raise SystemExit(f"--jobs {jobs}: only {len(cores)} cores available; lower --jobs")
    free: queue.Queue[int] = queue.Queue()
    for core in cores[:jobs]:
        free.put(core)

    def one(cmd: list[str]) -> None:
        core = free.get()
        try:
            _run(cmd, core)
        finally:
            free.put(core)

    with concurrent.futures.ThreadPoolExecutor(jobs) as pool:
        for f in [pool.submit(one, cmd) for cmd in cmds]:
            f.result()


def _results(path: str) -> dict | None:
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def _cell(vals: list[float]) -> str:
    each = ", ".join(f"{v:.1f}" for v in vals)
    return f"{np.mean(vals):.1f} ± {np.std(vals):.1f} % ({each})" if vals else ""


def ablation(vitx: str, seeds: int, rows: list[str], run: bool, jobs: int = 1) -> None:
    cmds = []
    for seed in range(seeds):
        for row in rows:
            wd = workdir("recipe", row, seed)
            if run and _results(os.path.join(wd, "results.json")) is None:
                spec, _ = ABLATION[row]
                cmds.append([vitx, "train", "--config", f"{spec}seed={seed}", "--workdir", wd,
                             "--config.data_dir=data/tfds"])
    _run_all(cmds, jobs)
    print("| run | test accuracy | train time | seeds |")
    print("|---|---|---|---|")
    for row in rows:
        res = [r for s in range(seeds)
               if (r := _results(os.path.join(workdir("recipe", row, s), "results.json")))]
        metric = ABLATION[row][1]
        vals = [100 * r[metric] for r in res if metric in r]
        secs = [r["train_seconds"] for r in res if "train_seconds" in r]
        print(f"| {row} | {_cell(vals)} | {np.mean(secs):.0f} s | {len(vals)} |" if vals
              else f"| {row} | (not run) | | 0 |")


def fewshot(vitx: str, seeds: int, run: bool) -> None:
    for seed in range(seeds):
        for mode in ("pretrain04", "random_init"):
            wd = workdir("fewshot", mode, seed)
            out = os.path.join(wd, "fewshot59.json")
            if run and _results(out) is None:
                if _results(os.path.join(wd, "results.json")) is None:
                    _run([vitx, "train", "--config", f"{FEWSHOT}:{mode}", "--workdir", wd,
                          "--config.data_dir=data/tfds", f"--config.seed={seed}"])
                _run([vitx, "eval", "--config", f"{FEWSHOT}:eval59", "--checkpoint", wd,
                      "--config.data_dir=data/tfds", "--output", out])
    print("| features (frozen ViT) | " + " | ".join(f"{s}-shot" for s in SHOTS)
          + " | pretraining time | seeds |")
    print("|---|" + "---|" * (len(SHOTS) + 2))
    for mode, label in (("pretrain04", "pretrained on digits 0-4"),
                        ("random_init", "random init (no training)")):
        evals = [r for s in range(seeds)
                 if (r := _results(os.path.join(workdir("fewshot", mode, s), "fewshot59.json")))]
        trains = [r for s in range(seeds) if (r := _results(
            os.path.join(workdir("fewshot", mode, s), "results.json")))]
        cells = [_cell([100 * r[f"fewshot/{k}shot"] for r in evals]) if len(evals) > 1 else
                 (f"{100 * evals[0][f'fewshot/{k}shot']:.1f} % (std over the draws "
                  f"{100 * evals[0][f'fewshot/{k}shot_std']:.1f})" if evals else "")
                 for k in SHOTS]
        secs = [r.get("train_seconds", 0.0) for r in trains]
        time = f"{np.mean(secs):.0f} s" if mode == "pretrain04" and secs else "–"
        print(f"| {label} | " + " | ".join(cells) + f" | {time} | {len(evals)} |")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("table", choices=("ablation", "fewshot"))
    p.add_argument("--run", action="store_true", help="train/evaluate the missing runs first")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--jobs", type=int, default=1,
                   help="ablation: train this many runs at once, each pinned to its own core")
    p.add_argument("--rows", default="", help=f"ablation rows, comma-separated: {list(ABLATION)}")
    args = p.parse_args()
    vitx = os.path.join(os.path.dirname(sys.executable), "vitx")
    if args.table == "fewshot":
        fewshot(vitx, args.seeds, args.run)
        return 0
    rows = [r for r in args.rows.split(",") if r] or list(ABLATION)
    if unknown := [r for r in rows if r not in ABLATION]:
        p.error(f"--rows {','.join(unknown)}: unknown; rows: {', '.join(ABLATION)}")
    ablation(vitx, args.seeds, rows, args.run, args.jobs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
