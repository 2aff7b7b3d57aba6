"""The README's training-recipe tables: the AugReg/DeiT recipe's ablation, and few-shot transfer.

    python scripts/recipe_table.py ablation --run     # trains what is missing, prints the table
    python scripts/recipe_table.py ablation           # prints it from workdirs/
    python scripts/recipe_table.py ablation --run --seeds 1 --rows recipe,baseline
    python scripts/recipe_table.py ablation --run --jobs 2  # 2 runs at once, one core each
    python scripts/recipe_table.py fewshot --run      # 1/5/10-shot on digits 5-9 (frozen ViT)

ablation: each row is `vitx train --config <config> --workdir workdirs/recipe_<row>_s<seed>
--config.data_dir=data/tfds` for seeds 0, 1, 2: `recipe` is `configs/vit_digits_augreg.py`,
each `-<part>` row turns one part of it off, `+randaug` adds RandAugment, `baseline` is
`configs/vit_digits.py` (`make train`'s config). Rows that train exactly as another row (`-EMA`,
`-eval_crop`, `baseline+eval_crop`) are not trained again. Every row is then evaluated:
`vitx eval` of its run's last checkpoint with the row's own config, into
`workdirs/recipe_<row>_s<seed>/eval.json` (so a change of eval pp needs no retraining); a run
whose `config.json` trains otherwise than the row's config is an error. A cell is the test
accuracy in % of the weights the row evaluates (`test_ema/accuracy` when it has an EMA, else
`test/accuracy`): mean +- std over the seeds (numpy's population std) and
each seed's value; the time is the mean `train_seconds`.
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
import dataclasses
import json
import os
import queue
import subprocess
import sys

import ml_collections
import numpy as np

from vitx import config as config_lib
from vitx.train.mixup import MixupConfig

AUGREG = "configs/vit_digits_augreg.py"
FEWSHOT = "configs/vit_digits_fewshot.py"
# row -> (config spec without the seed, metric of the weights it reports, the row whose run it
# evaluates: None = a run of its own). A row that shares a run trains exactly as that row (an
# EMA and the eval pp never feed back into training), so it is not trained again.
ABLATION = {
    "recipe": (f"{AUGREG}:", "test_ema/accuracy", None),
    "+randaug": (f"{AUGREG}:randaug=True,", "test_ema/accuracy", None),
    "-mixup/cutmix": (f"{AUGREG}:mixup=False,", "test_ema/accuracy", None),
    "-drop_path": (f"{AUGREG}:drop_path=0.0,", "test_ema/accuracy", None),
    "-EMA": (f"{AUGREG}:ema=False,", "test/accuracy", "recipe"),
    "-eval_crop": (f"{AUGREG}:eval_crop=False,", "test_ema/accuracy", "recipe"),
    "baseline+eval_crop": (f"{AUGREG}:mixup=False,drop_path=0.0,ema=False,", "test/accuracy",
                           "baseline"),
    "baseline": ("configs/vit_digits.py:", "test/accuracy", None),
}
SHOTS = (1, 5, 10)


def workdir(table: str, row: str, seed: int) -> str:
    name = row.replace("/", "_").lstrip("-+").replace("-", "_").replace("+", "_")
    prefix = {"-": "no_", "+": "with_"}.get(row[0], "")
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


#: Keys that do not decide the trained weights (`_training`).
_NOT_TRAINING = ("evals", "ema", "mixup", "eval_every_steps", "log_every_steps", "checkpoint",
                 "data_dir")


def _training(config: ml_collections.ConfigDict) -> dict:
    """The part of `config` that decides the trained weights, as plain JSON (so a workdir's
    `config.json` compares equal to the config it was trained with): not evals, the EMA,
    logging, checkpoint times or where the data is; Mixup/CutMix and drop_path when off
    compare equal however they are spelled off."""
    d = json.loads(config_lib.to_json(config))
    for key in _NOT_TRAINING:
        d.pop(key, None)
    d["model"].setdefault("drop_path", 0.0)
    mixup = MixupConfig.from_config(config)
    d["mixup"] = None if mixup is None else dataclasses.asdict(mixup)
    return d


def _run_of(row: str) -> str:
    return ABLATION[row][2] or row


def _row_results(row: str, seed: int) -> dict | None:
    """The row's metrics for `seed` (its `eval.json`) with its run's `train_seconds`."""
    ev = _results(os.path.join(workdir("recipe", row, seed), "eval.json"))
    run = _results(os.path.join(workdir("recipe", _run_of(row), seed), "results.json"))
    return None if ev is None else {**ev, "train_seconds": (run or {}).get("train_seconds")}


def _check_trained_as(row: str, seed: int) -> None:
    """Raises SystemExit when the row's run was trained with another config than the row's."""
    wd = workdir("recipe", _run_of(row), seed)
    with open(os.path.join(wd, "config.json")) as f:
        saved = ml_collections.ConfigDict(json.load(f))
    if _training(saved) != _training(config_lib.load_config(f"{ABLATION[row][0]}seed={seed}")):
        raise SystemExit(f"{wd} was trained with another config than row {row!r} (seed "
                         f"{seed}); move it away and run again with --run")


def ablation(vitx: str, seeds: int, rows: list[str], run: bool, jobs: int = 1) -> None:
    """Trains the rows' missing runs (`jobs` at a time), evaluates every row's run with the
    row's config into `workdirs/recipe_<row>_s<seed>/eval.json`, and prints the table."""
    if missing := sorted({s for r in rows if (s := ABLATION[r][2]) and s not in rows}):
        raise SystemExit(f"--rows: {', '.join(missing)} must be included too (other rows "
                         "evaluate its runs)")
    trains, evals = [], []
    for seed in range(seeds):
        for row in rows:
            spec, metric, shared = ABLATION[row]
            wd, run_wd = workdir("recipe", row, seed), workdir("recipe", _run_of(row), seed)
            if not run or _row_results(row, seed) is not None:
                continue
            if shared is None and _results(os.path.join(wd, "results.json")) is None:
                trains.append([vitx, "train", "--config", f"{spec}seed={seed}", "--workdir", wd,
                               "--config.data_dir=data/tfds"])
            evals.append((row, seed, [
                vitx, "eval", "--config", f"{spec}seed={seed}", "--checkpoint", run_wd,
                "--config.data_dir=data/tfds", "--output", os.path.join(wd, "eval.json")]
                + (["--ema"] if metric.startswith("test_ema/") else [])))
    _run_all(trains, jobs)
    for row, seed, _ in evals:
        _check_trained_as(row, seed)
    for row, seed, cmd in evals:
        os.makedirs(workdir("recipe", row, seed), exist_ok=True)
        _run(cmd)
    print("| run | test accuracy | train time | seeds |")
    print("|---|---|---|---|")
    for row in rows:
        res = [r for s in range(seeds) if (r := _row_results(row, s))]
        metric = ABLATION[row][1]
        vals = [100 * r[metric] for r in res if metric in r]
        secs = [r["train_seconds"] for r in res if r.get("train_seconds") is not None]
        time = f"{np.mean(secs):.0f} s" if secs else ""
        print(f"| {row} | {_cell(vals)} | {time} | {len(vals)} |" if vals
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
