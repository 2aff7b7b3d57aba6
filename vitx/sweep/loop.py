"""One `vitx sweep` process: open the study, take back interrupted trials, let Optuna's
`Study.optimize(n_jobs=parallel)` run the trials until none is left, write the summary.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

from vitx.sweep import study as study_lib
from vitx.sweep.grid import SweepError
from vitx.sweep.plan import SweepPlan
from vitx.sweep.runner import POLL_SECONDS, TrialFailed, TrialInterrupted, TrialRunner
from vitx.sweep.summary import plot_summary, summary_rows, write_summary_csv

__all__ = ["Sweep"]


class _QuietFailures(logging.Filter):
    """Drop Optuna's "Trial N failed ..." warnings (with a traceback) for trials the sweep
    fails on purpose: it prints its own one-line note for each."""

    def filter(self, record: logging.LogRecord) -> bool:
        msg = str(record.msg)
        return not (msg.startswith("Trial ") and " failed with " in msg)


class Sweep:
    """One sweep process: opens the study, retries interrupted trials, runs trials (N at a
    time, by `Study.optimize(n_jobs=N)`) and writes the summary. Use `run(...)`.

    Raises (on construction):
      SweepError: `parallel` < 1 or `max_trials` < 0.
    """

    def __init__(self, plan: SweepPlan, directory: str, *, storage: str | None = None,
                 study_name: str | None = None, parallel: int = 1, worker: bool = False,
                 prune: str = "none", prune_startup: int = 5,
                 max_trials: int | None = None, seed: int = 0,
                 retry_failed: bool = False, train_command: Sequence[str] | None = None,
                 env: Mapping[str, str] | None = None, poll_seconds: float = POLL_SECONDS):
        if parallel < 1:
            raise SweepError(f"--parallel {parallel}: run at least 1 trial at a time")
        if max_trials is not None and max_trials < 0:
            raise SweepError(f"--max-trials {max_trials}: pass 0 or more")
        self.plan, self.dir = plan, directory
        self.parallel, self.worker, self.prune = parallel, worker, prune
        self.prune_startup = prune_startup
        self.max_trials, self.seed, self.retry_failed = max_trials, seed, retry_failed
        self.storage_url = storage or (
            f"sqlite:///{os.path.abspath(os.path.join(directory, study_lib.STUDY_FILE))}")
        self.study_name = study_name or os.path.basename(os.path.abspath(directory))
        self.runner = TrialRunner(plan, directory, train_command=train_command, env=env,
                                  poll_seconds=poll_seconds)
        self.stopping = self.runner.stopping
        self.fatal: list[BaseException] = []  # the error that ended the loop, raised by run()

    @property
    def started(self) -> int:
        """Trials started by this process."""
        return self.runner.started

    def open_study(self) -> Any:
        """Create or load the study (and the sweep folder's logs/ and locks/).

        Raises:
          SweepError: the database cannot be opened, or the study holds another sweep.
        """
        os.makedirs(self.dir, exist_ok=True)
        self.storage = study_lib.open_storage(self.storage_url)
        study = study_lib.open_study(
            self.plan, self.storage, storage_url=self.storage_url, study_name=self.study_name,
            worker=self.worker, seed=self.seed, prune=self.prune,
            prune_startup=self.prune_startup)
        for sub in ("logs", "locks"):
            os.makedirs(os.path.join(self.dir, sub), exist_ok=True)
        return study

    def _left(self, study: Any) -> int:
        """Trials this process may still start (what is left, capped by `max_trials`)."""
        n = study_lib.todo(study, self.plan)
        if self.max_trials is not None:
            n = min(n, self.max_trials - self.started)
        return n

    def _after_trial(self, study: Any, trial: Any) -> None:
        """Optuna callback: stop once the sweep is stopping or nothing is left (e.g. another
        worker took the remaining trials)."""
        del trial
        if self.stopping.is_set() or self._left(study) <= 0:
            study.stop()

    def _optimize(self, study: Any) -> None:
        """Optuna's loop, `n_trials` = what is left now (so `parallel` threads never start more
        trials than there are), again while trials come back (a dead worker's trial failed by
        its heartbeat and queued for retry)."""
        import optuna

        while not self.stopping.is_set():
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                optuna.storages.fail_stale_trials(study)  # trials of dead machines come back
            n = self._left(study)
            if n <= 0:
                return
            study.optimize(self.runner.objective, n_trials=n, n_jobs=self.parallel,
                           catch=(TrialFailed, TrialInterrupted), callbacks=[self._after_trial])

    def _drive(self, study: Any) -> None:
        try:
            self._optimize(study)
        except BaseException as e:  # re-raised by run(), after the summary
            self.fatal.append(e)

    def _on_signal(self, signum: int, frame: Any) -> None:
        del frame
        if self.stopping.is_set() and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.stopping.set()
        print(f"vitx: sweep: got signal {signum}; stopping the running trials (each saves a "
              f"checkpoint); run the same command again to resume", flush=True)
        self.runner.signal_all(signal.SIGTERM)

    def run(self) -> dict[str, Any]:
        """Run trials, `parallel` at a time, until none is left (or `max_trials` were
        started); then write the summary.

        Returns: {"study": ..., "summary_csv": ..., "summary_png": ..., "rows": [...],
        "started": trials started by this process, "stopped": stopped by a signal}.

        Raises:
          SweepError / ConfigError: bad arguments or study; a trial's results lack the metric.
          KeyboardInterrupt: a second Ctrl-C (the trainers are aborted too).
        """
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
        study = self.open_study()
        study_lib.reclaim(study, self.storage, study_name=self.study_name, directory=self.dir,
                          retry_failed=self.retry_failed)
        old: dict[int, Any] = {}
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                old[sig] = signal.signal(sig, self._on_signal)
        quiet = _QuietFailures()
        optuna_logger = logging.getLogger("optuna.study._optimize")
        optuna_logger.addFilter(quiet)
        # Signals reach only the main thread: Optuna's loop runs in a driver thread so that the
        # main thread stays free to handle SIGINT / SIGTERM (stop the trainers gently; a second
        # Ctrl-C aborts them) and a signal never lands inside an Optuna or database call.
        driver = threading.Thread(target=self._drive, args=(study,), daemon=True,
                                  name="vitx-sweep")
        try:
            driver.start()
            while driver.is_alive():
                driver.join(timeout=0.5)
        except KeyboardInterrupt:
            self.runner.signal_all(signal.SIGINT)  # the trainer's second signal: abort
            raise
        finally:
            optuna_logger.removeFilter(quiet)
            for sig, handler in old.items():
                signal.signal(sig, handler)
        rows = summary_rows(study, self.plan)
        csv_path = os.path.join(self.dir, "summary.csv")
        png_path = os.path.join(self.dir, "summary.png")
        write_summary_csv(rows, self.plan, csv_path)
        plot_summary(rows, self.plan, png_path, title=f"{self.study_name}: {self.plan.metric}")
        if self.fatal:
            raise self.fatal[0]
        return {"study": study, "rows": rows, "summary_csv": csv_path, "summary_png": png_path,
                "started": self.started, "stopped": self.stopping.is_set()}
