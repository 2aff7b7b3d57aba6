"""The `vitx sweep` command line: its arguments (`vitx/cli.py` adds them to its parser),
`run` (plan and run a sweep from Python) and `main` (the command's exit status)."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import Any

from vitx.sweep.loop import Sweep
from vitx.sweep.plan import make_plan

__all__ = ["add_arguments", "main", "run"]


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The `vitx sweep` arguments (config overrides `--config.k=v` are split off before)."""
    p.add_argument("--config", required=True,
                   help="path/to/config.py[:arg]; may define get_hyper(h) with the grid")
    p.add_argument("--dir", required=True,
                   help="sweep folder: one workdir per trial, study.db, summary.csv/.png, logs/")
    p.add_argument("--sweep", action="append", default=[], metavar="KEY=VALUES",
                   help="repeatable: a grid list 'config.lr=[1e-3,3e-4]' (grids: the product "
                        "of all) or a range 'config.lr=loguniform(1e-4,1e-2)', uniform(a,b), "
                        "int(a,b), logint(a,b), choice(a,b,...) for --search")
    p.add_argument("--search", choices=("grid", "random", "tpe"), default=None,
                   help="grid (default: every point) or an Optuna random / TPE search")
    p.add_argument("--trials", type=int, default=None,
                   help="--search random|tpe: trials in all (across workers and re-runs)")
    p.add_argument("--prune", choices=("none", "median"), default="none",
                   help="median: Optuna's MedianPruner on the metric of periodic evals")
    p.add_argument("--prune-startup", type=int, default=5, metavar="N",
                   help="--prune median: prune only once N trials have finished (default 5)")
    p.add_argument("--metric", default="test/accuracy",
                   help="the results.json key to optimise and plot (default test/accuracy)")
    p.add_argument("--direction", choices=("maximize", "minimize"), default=None,
                   help="default: minimize for metrics named *loss* or *err*, else maximize")
    p.add_argument("--parallel", type=int, default=1,
                   help="trials run at once by this process (default 1)")
    p.add_argument("--worker", action="store_true",
                   help="one of many processes/machines sharing the study (--storage URL): "
                        "pull trials until none is left")
    p.add_argument("--storage", default=None,
                   help="database URL of the study (default sqlite:///DIR/study.db)")
    p.add_argument("--study", default=None, help="study name (default: the folder's name)")
    p.add_argument("--max-trials", type=int, default=None,
                   help="start at most N trials in this run, then stop (0: summary only)")
    p.add_argument("--seed", type=int, default=0, help="sampler seed (random/tpe)")
    p.add_argument("--retry-failed", action="store_true",
                   help="retry trials whose trainer failed (interrupted ones always are)")


def run(*, config: str, directory: str, sweeps: Sequence[str] = (),
        overrides: Sequence[str] = (), search: str | None = None, trials: int | None = None,
        metric: str = "test/accuracy", direction: str | None = None, **kwargs: Any
        ) -> dict[str, Any]:
    """Plan and run a sweep (the keyword arguments of `Sweep` pass through); see `Sweep.run`.

    Raises:
      SweepError / ConfigError: bad arguments (one line naming the argument and the fix).
    """
    plan = make_plan(config=config, sweeps=sweeps, overrides=overrides, search=search,
                     trials=trials, metric=metric, direction=direction)
    return Sweep(plan, directory, **kwargs).run()


def main(args: argparse.Namespace, overrides: Sequence[str]) -> int:
    """`vitx sweep`: 0 when every trial finished (or the sweep was stopped by a signal), 1 when
    some trial failed."""
    if args.worker and not args.storage:
        print("vitx: sweep: note: --worker with the default SQLite file needs every worker to "
              "see the same --dir; use --storage URL (e.g. postgresql://...) across machines",
              flush=True)
    try:
        out = run(config=args.config, directory=args.dir, sweeps=args.sweep,
                  overrides=overrides, search=args.search, trials=args.trials,
                  metric=args.metric, direction=args.direction, storage=args.storage,
                  study_name=args.study, parallel=args.parallel, worker=args.worker,
                  prune=args.prune, prune_startup=args.prune_startup,
                  max_trials=args.max_trials, seed=args.seed,
                  retry_failed=args.retry_failed)
    except KeyboardInterrupt:
        print("vitx: sweep: aborted; run the same command again to resume", file=sys.stderr)
        return 130
    rows = out["rows"]
    counts = {s: sum(r["state"] == s for r in rows) for s in (
        "COMPLETE", "PRUNED", "FAIL", "INTERRUPTED", "RUNNING", "WAITING", "PENDING")}
    text = ", ".join(f"{n} {s.lower()}" for s, n in counts.items() if n)
    print(f"vitx: sweep: {len(rows)} trial{'s' * (len(rows) != 1)}: {text}; summary in "
          f"{out['summary_csv']}, plot in {out['summary_png']}", flush=True)
    try:
        best = out["study"].best_trial
        print(f"vitx: sweep: best {args.metric}={best.value:.4g}: {best.user_attrs.get('name')}"
              f" ({os.path.join(args.dir, str(best.user_attrs.get('name')))})", flush=True)
    except ValueError:
        pass  # no finished trial yet
    if out["stopped"]:
        print("vitx: sweep: stopped; run the same command again to resume", flush=True)
        return 0
    return 1 if counts["FAIL"] else 0
