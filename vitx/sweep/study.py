"""The Optuna side of `vitx sweep`: the study's database storage (with heartbeats), samplers,
the pruner, taking back trials of dead processes, and counting the trials still to run.
"""

from __future__ import annotations

import os
import socket
import time
import warnings
from collections.abc import Mapping
from typing import Any

from vitx.sweep.grid import SweepError
from vitx.sweep.plan import SweepPlan

__all__ = ["GRACE_SECONDS", "HEARTBEAT_SECONDS", "STUDY_FILE", "make_pruner", "make_sampler",
           "open_storage", "open_study", "owner", "reclaim", "todo"]

#: Default study storage file inside the sweep folder.
STUDY_FILE = "study.db"
#: Optuna heartbeats: a RUNNING trial whose process stopped beating for `GRACE_SECONDS` is
#: failed and retried by the next worker (the way trials of dead machines come back).
HEARTBEAT_SECONDS = 60
GRACE_SECONDS = 300


def open_storage(url: str) -> Any:
    """An `optuna.storages.RDBStorage` for `url` with heartbeats: a trial of a dead worker is
    failed after `GRACE_SECONDS` and queued again by `RetryHeartbeatStaleTrialCallback` (the
    name Optuna 4.9+ gives `RetryFailedTrialCallback`; `failed_trial_callback` is deprecated).

    Raises:
      SweepError: the database cannot be opened (bad URL, missing driver, unreachable).
    """
    import optuna
    import sqlalchemy.exc

    kwargs: dict[str, Any] = {}
    if url.startswith("sqlite:"):
        kwargs["engine_kwargs"] = {"connect_args": {"timeout": 60}}
    for attempt in range(6):
        try:
            with warnings.catch_warnings():  # heartbeats are "experimental" (Optuna 2.8)
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return optuna.storages.RDBStorage(
                    url, heartbeat_interval=HEARTBEAT_SECONDS, grace_period=GRACE_SECONDS,
                    heartbeat_stale_trial_callback=(
                        optuna.storages.RetryHeartbeatStaleTrialCallback()),
                    **kwargs)
        except (sqlalchemy.exc.OperationalError, sqlalchemy.exc.IntegrityError,
                sqlalchemy.exc.ProgrammingError) as e:
            # Workers starting together race to create the tables: try again.
            error: Exception = e
            time.sleep(0.2 * 2 ** attempt)
        except Exception as e:  # a bad URL or a missing database driver
            error = e
            break
    first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    raise SweepError(f"--storage {url!r}: cannot open the database ({first[:200]}); pass a "
                     f"database URL such as sqlite:///path/study.db or "
                     f"postgresql://user@host/db")


def _grid_sampler() -> type:
    """GridSampler whose after_trial does not call `study.stop()`: it counts a FAIL trial as
    done even when its retry is still queued (WAITING), so with two interrupted grid points
    it would stop the study before the second retry. The sweep counts what is left itself
    (`todo`)."""
    import optuna

    class _GridSampler(optuna.samplers.GridSampler):
        def after_trial(self, study: Any, trial: Any, state: Any, values: Any) -> None:
            pass

    return _GridSampler


def make_sampler(plan: SweepPlan, *, worker: bool, seed: int, n_trials: int = 0) -> Any:
    """Grid: GridSampler; random / TPE: seeded by `seed` + the trials the study holds
    (`n_trials`), so a re-run continues with new points instead of repeating the first ones;
    `--worker`s are seeded at random (they must not suggest the same points)."""
    import optuna

    rng_seed = None if worker else seed + n_trials
    if plan.kind == "grid":  # the same seed everywhere: grid ids must agree
        return _grid_sampler()({"grid": plan.names}, seed=0)
    if plan.kind == "random":
        return optuna.samplers.RandomSampler(seed=rng_seed)
    return optuna.samplers.TPESampler(seed=rng_seed)


def make_pruner(prune: str, startup: int) -> Any:
    """`median`: Optuna's MedianPruner after `startup` finished trials; else no pruning."""
    import optuna

    return (optuna.pruners.MedianPruner(n_startup_trials=startup) if prune == "median"
            else optuna.pruners.NopPruner())


def open_study(plan: SweepPlan, storage: Any, *, storage_url: str, study_name: str,
               worker: bool, seed: int, prune: str, prune_startup: int) -> Any:
    """Create or load the study `study_name`; a study made for another sweep is an error.

    Raises:
      SweepError: the study optimises the other direction, or holds another sweep.
    """
    import optuna

    study = optuna.create_study(storage=storage, study_name=study_name,
                                sampler=make_sampler(plan, worker=worker, seed=seed),
                                pruner=make_pruner(prune, prune_startup),
                                direction=plan.direction, load_if_exists=True)
    study.sampler = make_sampler(plan, worker=worker, seed=seed,
                                 n_trials=len(study.get_trials(deepcopy=False)))
    if study.direction.name.lower() != plan.direction:
        raise SweepError(f"--direction {plan.direction}: study {study_name!r} "
                         f"maximizes/minimizes the other way ({study.direction.name.lower()})"
                         f"; pass --direction {study.direction.name.lower()} or a new "
                         f"--study NAME")
    definition = plan.definition()
    stored = study.user_attrs.get("vitx_sweep")
    if stored is None:
        study.set_user_attr("vitx_sweep", definition)
    elif stored != definition:
        raise SweepError(f"study {study_name!r} in {storage_url} was made for another sweep "
                         f"(config, overrides, grid/ranges or metric differ); pass a new "
                         f"--study NAME or --dir (finished trial workdirs in --dir are reused, "
                         f"not retrained)")
    return study


# ------------------------------------------------------------------------------------------------
# Liveness of the process that runs a trial.


def _process_start(pid: int) -> str | None:
    """The start time of process `pid` (Linux /proc; None if unknown or not running)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def owner() -> dict[str, Any]:
    """This sweep process, as trial user attrs (host, pid, pid start time)."""
    return {"host": socket.gethostname(), "pid": os.getpid(),
            "pid_start": _process_start(os.getpid())}


def _owner_dead(attrs: Mapping[str, Any]) -> bool:
    """True if the trial's sweep process ran on this host and is gone."""
    if attrs.get("host") != socket.gethostname() or not isinstance(attrs.get("pid"), int):
        return False  # another machine's: Optuna's heartbeat decides
    pid = attrs["pid"]
    if pid == os.getpid() and attrs.get("pid_start") == _process_start(pid):
        return False
    if os.path.isdir("/proc"):
        start = _process_start(pid)
        return start is None or start != attrs.get("pid_start")
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def reclaim(study: Any, storage: Any, *, study_name: str, directory: str,
            retry_failed: bool) -> None:
    """Fail trials left RUNNING by dead processes and queue retries of interrupted ones
    (Optuna's RetryHeartbeatStaleTrialCallback: same params, same workdir).

    Optuna's heartbeat alone takes back a dead process's trial only after `GRACE_SECONDS`;
    a trial of a dead process on this host (kill -9 of the sweep, tests/sweep's
    test_killed_sweep_process_is_reclaimed) is found now through /proc and retried at once.
    """
    import optuna
    from optuna.trial import TrialState

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        optuna.storages.fail_stale_trials(study)  # other machines' dead trials
        # Tells go through a plain sampler: GridSampler.after_trial may only run in optimize.
        plain = optuna.load_study(study_name=study_name, storage=storage,
                                  sampler=optuna.samplers.RandomSampler())
        retry = optuna.storages.RetryHeartbeatStaleTrialCallback()
        trials = study.get_trials(deepcopy=False)
        for t in trials:
            if t.state == TrialState.RUNNING and _owner_dead(t.user_attrs):
                plain.tell(t.number, state=TrialState.FAIL, skip_if_finished=True)
        trials = study.get_trials(deepcopy=False)
        retried = _retried(trials)
        for t in trials:
            if t.state != TrialState.FAIL or t.number in retried:
                continue
            name = t.user_attrs.get("name")
            finished = bool(name) and os.path.exists(os.path.join(directory, name,
                                                                  "results.json"))
            if not t.user_attrs.get("error") or finished or retry_failed:
                retry(study, t)
                print(f"vitx: sweep: trial {t.number} ({name or 'not started'}) will be "
                      f"retried", flush=True)


def _retried(trials: Any) -> set[int]:
    """Numbers of the trials that have a retry queued or run."""
    return {n for t in trials for n in t.system_attrs.get("retry_history", [])}


def todo(study: Any, plan: SweepPlan) -> int:
    """Trials still to start: grid points (or search trials) neither finished, failed for
    good, nor running elsewhere."""
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    retried = _retried(trials)

    def settled(t: Any) -> bool:
        return t.state in (TrialState.COMPLETE, TrialState.PRUNED) or (
            t.state == TrialState.FAIL and t.number not in retried)

    running = [t for t in trials if t.state == TrialState.RUNNING]
    if plan.kind == "grid":
        done = {t.params.get("grid") for t in trials if settled(t)}
        busy = {t.params.get("grid") for t in running}
        return len(set(plan.names) - done - busy)
    return max(0, plan.trials - sum(settled(t) for t in trials) - len(running))
