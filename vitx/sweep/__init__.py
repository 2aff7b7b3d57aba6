"""`vitx sweep`: hyperparameter sweeps (grids, random / TPE searches, pruning) on Optuna.

Every sweep is one Optuna study in a database: by default the SQLite file
`<dir>/study.db`, or any database URL (`--storage postgresql://...`) so that workers on many
machines share one study. Each trial is an independent `vitx train` process with its own
workdir `<dir>/<trial name>`, named by its overrides (e.g. `lr=0.001,wd=0.1`).

  vitx sweep --config configs/vit_digits.py --dir workdirs/sweep \
      --sweep 'config.lr=[1e-3,3e-4]' --sweep 'config.wd=[0.0,0.1]' [--parallel 2]
  vitx sweep --config configs/vit_digits.py --dir workdirs/search --search tpe --trials 20 \
      --sweep 'config.lr=loguniform(1e-4,1e-2)' --sweep 'config.wd=uniform(0,0.3)' \
      [--prune median]
  vitx sweep ... --worker --storage postgresql://user@host/db   # on every machine

What is swept:
  * `--sweep KEY=[v1,v2,...]` (repeatable): a grid, the product of all lists (Optuna's
    GridSampler, one grid point per trial). Without `--sweep`, the config file's
    `get_hyper(h)` (big_vision style) gives the grid: `h.product([h.sweep("config.lr", [1e-3,
    3e-4]), h.sweep("config.wd", [0.0, 0.1])])`, `h.zip(...)`, `h.chain(...)`, `h.fixed(...)`.
  * `--search random|tpe --trials N` with ranges `KEY=loguniform(a,b)`, `uniform(a,b)`,
    `int(a,b)`, `logint(a,b)`, `choice(a,b,...)` (lists are choices too).
  * `--prune median`: Optuna's MedianPruner on the metric's intermediate values, which are the
    trainer's periodic evals (`eval_every_steps`) read from the trial's `metrics.jsonl`; a
    pruned trial is stopped with SIGTERM (it saves a checkpoint).
Other `--config.key=value` arguments apply to every trial.

Re-running the same command resumes the sweep: finished trials are not re-run (their
`results.json` is reused, also by a new study), a trial interrupted by Ctrl-C, SIGTERM or a
kill of the sweep process is retried in the same workdir (the trainer resumes from its last
checkpoint), and a trial whose trainer failed stays failed (`--retry-failed` retries it).
Trials of a dead process on another machine are retried after Optuna's heartbeat grace period.
Outputs: `<dir>/summary.csv` (one row per trial), `<dir>/summary.png` (the metric per trial),
`<dir>/logs/<trial>.log` (each trainer's output).

The package, by job: `grid` (the grid language: `Hyper`, `--sweep` lists and ranges, trial
names), `plan` (`SweepPlan`, parsed once and checked against the config), `study` (Optuna
storage with heartbeats, samplers, pruner, taking back dead processes' trials), `runner` (one
`vitx train` subprocess per trial, per-workdir locks), `loop` (`Sweep`: signals and Optuna's
`Study.optimize`), `summary` (CSV and plot) and `command` (the argparse arguments and entry
point `vitx/cli.py` uses).
"""

from vitx.sweep.command import add_arguments, main, run
from vitx.sweep.grid import (
    Hyper,
    SweepError,
    grid_from_config,
    grid_from_sweeps,
    parse_sweep,
    trial_name,
)
from vitx.sweep.loop import Sweep
from vitx.sweep.plan import SweepPlan, make_plan
from vitx.sweep.summary import plot_summary, summary_rows, write_summary_csv

__all__ = ["Hyper", "Sweep", "SweepError", "SweepPlan", "add_arguments", "grid_from_config",
           "grid_from_sweeps", "main", "make_plan", "parse_sweep", "plot_summary", "run",
           "summary_rows", "trial_name", "write_summary_csv"]
