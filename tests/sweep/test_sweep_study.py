"""`vitx sweep`'s study (vitx/sweep/study.py): why the grid sampler is Optuna's GridSampler with
a quiet `after_trial`."""

from __future__ import annotations

import warnings

import optuna
from optuna.trial import TrialState

from vitx.sweep.study import _grid_sampler


def _retried_grid_run(sampler_cls: type) -> tuple[list[str], list[str]]:
    """A 3-point grid: one point finished, two interrupted (FAIL, retries queued). Returns the
    interrupted points and the points a re-run with `n_trials=2` runs."""
    names = ["a", "b", "c"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        study = optuna.create_study(sampler=sampler_cls({"grid": names}, seed=0))
        outcomes = iter([True, False, False])

        def first(trial: optuna.Trial) -> float:
            trial.suggest_categorical("grid", names)
            if not next(outcomes):
                raise KeyError("interrupted")
            return 1.0

        study.optimize(first, n_trials=3, catch=(KeyError,))
        retry = optuna.storages.RetryHeartbeatStaleTrialCallback()
        failed = [t for t in study.get_trials() if t.state == TrialState.FAIL]
        for t in failed:
            retry(study, t)
        ran: list[str] = []
        study.optimize(lambda t: ran.append(t.suggest_categorical("grid", names)) or 1.0,
                       n_trials=2)
    return sorted(t.params["grid"] for t in failed), sorted(ran)


def test_grid_sampler_runs_every_queued_retry():
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    # Optuna's GridSampler counts a FAIL whose retry is queued as done: it stops after one.
    failed, ran = _retried_grid_run(optuna.samplers.GridSampler)
    assert len(failed) == 2 and len(ran) == 1
    failed, ran = _retried_grid_run(_grid_sampler())  # the sweep's: both retries run
    assert ran == failed
