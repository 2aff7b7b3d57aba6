"""One trial of `vitx sweep`: a `vitx train` subprocess in the trial's own workdir
`<dir>/<trial name>`, under a per-workdir lock, with its eval metrics reported to the pruner
as they come and its `results.json` giving the trial's value (or reused when it exists).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import math
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from vitx.sweep.grid import SweepError, trial_name
from vitx.sweep.plan import SweepPlan
from vitx.sweep.study import owner

__all__ = ["POLL_SECONDS", "TRAIN_COMMAND_ENV", "TrialFailed", "TrialInterrupted", "TrialRunner",
           "default_train_command"]

#: Seconds between polls of a running trial (exit status, new eval metrics for pruning).
POLL_SECONDS = 1.0

#: The environment variable that replaces the command starting a trial's trainer (split like
#: a shell command; `train ...` is appended), e.g. a wrapper that pins each trial to some cores
#: or a launcher of a cluster. Default: this Python's `python -m vitx.cli`.
TRAIN_COMMAND_ENV = "VITX_SWEEP_TRAIN_COMMAND"


def default_train_command() -> list[str]:
    """`$VITX_SWEEP_TRAIN_COMMAND` split like a shell command, else `python -m vitx.cli` of the
    running Python.

    Raises:
      SweepError: the variable is set but empty.
    """
    value = os.environ.get(TRAIN_COMMAND_ENV)
    if value is None:
        return [sys.executable, "-m", "vitx.cli"]
    if not value.strip():
        raise SweepError(f"{TRAIN_COMMAND_ENV} is set but empty; unset it or name a command "
                         "that runs vitx, e.g. 'python -m vitx.cli'")
    return shlex.split(value)


class TrialFailed(Exception):
    """The trainer failed (a final FAIL, retried only with --retry-failed)."""


class TrialInterrupted(Exception):
    """The sweep was stopped while this trial ran (retried on the next run)."""


def _read_json(path: str) -> dict[str, Any] | None:
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _last_line(path: str) -> str:
    """The trainer's last `vitx: error` line of its log (else its last line), cut to 300
    characters."""
    try:
        with open(path, "rb") as f:
            f.seek(max(0, os.path.getsize(path) - 4000))
            lines = [ln.strip() for ln in f.read().decode(errors="replace").splitlines()]
    except OSError:
        return "(no log)"
    errors = [ln for ln in lines if ln.startswith("vitx: error")]
    line = (errors or [ln for ln in lines if ln] or ["(empty log)"])[-1]
    return line[:300]


class TrialRunner:
    """Runs trials as `vitx train` subprocesses: `objective` is the Optuna objective.

    Thread-safe: `Study.optimize(n_jobs=N)` calls `objective` from N threads; `stop()` may be
    called from a signal handler.
    """

    def __init__(self, plan: SweepPlan, directory: str, *,
                 train_command: Sequence[str] | None = None,
                 env: Mapping[str, str] | None = None, poll_seconds: float = POLL_SECONDS):
        self.plan, self.dir = plan, directory
        self.train_command = list(train_command or default_train_command())
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        self.poll_seconds = poll_seconds
        self.stopping = threading.Event()
        # Re-entrant: safe even if a signal handler interrupts a holder on its own thread.
        self._lock = threading.RLock()  # self._procs, self.started
        self._procs: set[subprocess.Popen] = set()
        self.started = 0

    def signal_all(self, sig: int) -> None:
        """Send `sig` to every running trainer."""
        with self._lock:
            for proc in self._procs:
                if proc.poll() is None:
                    proc.send_signal(sig)

    def _suggest(self, trial: Any) -> tuple[str, dict[str, Any]]:
        import optuna.distributions as od

        if self.plan.kind == "grid":
            name = trial.suggest_categorical("grid", self.plan.names)
            return name, self.plan.point(name)
        values: dict[str, Any] = {}
        for k, d in self.plan.space.items():
            if isinstance(d, od.FloatDistribution):
                values[k] = trial.suggest_float(k, d.low, d.high, log=d.log)
            elif isinstance(d, od.IntDistribution):
                values[k] = trial.suggest_int(k, d.low, d.high, log=d.log)
            else:
                values[k] = trial.suggest_categorical(k, d.choices)
        # A retry keeps the first attempt's name (and so its workdir).
        name = trial.user_attrs.get("name") or f"{trial.number:03d}-{trial_name(values)}"
        return name, values

    def objective(self, trial: Any) -> float:
        """Run (or reuse) one trial; its value is `plan.metric` from results.json.

        Raises:
          optuna.TrialPruned: the pruner stopped it.
          TrialFailed / TrialInterrupted: the trainer failed / the sweep is stopping.
          SweepError: the metric is not in the trial's results.
        """
        with self._lock:
            self.started += 1
        for k, v in owner().items():  # so that a re-run can tell this process is gone
            trial.set_user_attr(k, v)
        name, overrides = self._suggest(trial)
        for k, v in {"name": name, "overrides": json.loads(json.dumps(overrides, default=repr)),
                     "error": None}.items():
            trial.set_user_attr(k, v)
        workdir = os.path.join(self.dir, name)
        label = f"trial {trial.number} {name}"
        try:
            with self._trial_lock(name, label) as fd:
                results = _read_json(os.path.join(workdir, "results.json"))
                if results is not None:
                    print(f"vitx: sweep: {label}: finished before, results.json reused",
                          flush=True)
                else:
                    results = self._train(trial, name, overrides, workdir, fd, label)
        except KeyboardInterrupt:
            trial.set_user_attr("interrupted", True)
            raise
        except TrialFailed as e:
            trial.set_user_attr("error", str(e))
            print(f"vitx: sweep: {label}: failed: {e}", flush=True)
            raise
        trial.set_user_attr("results", {k: v for k, v in results.items()
                                        if isinstance(v, int | float)})
        metric = self.plan.metric
        if metric not in results:
            known = ", ".join(sorted(k for k, v in results.items() if isinstance(v, float)))
            raise SweepError(f"--metric {metric!r} is not in the results of {workdir} (it has: "
                             f"{known}); pass --metric with one of those and a new --study NAME "
                             f"(finished workdirs are reused)")
        value = float(results[metric])
        if not math.isfinite(value):
            e = TrialFailed(f"{metric}={value} in {workdir}/results.json")
            trial.set_user_attr("error", str(e))
            raise e
        print(f"vitx: sweep: {label}: {metric}={value:.4g}", flush=True)
        return value

    @contextlib.contextmanager
    def _trial_lock(self, name: str, label: str) -> Iterator[int]:
        """An exclusive flock on `<dir>/locks/<name>.lock`, held by the sweep process and its
        trainer (a second sweep process waits instead of training the same workdir)."""
        fd = os.open(os.path.join(self.dir, "locks", f"{name}.lock"), os.O_CREAT | os.O_RDWR,
                     0o644)
        try:
            waited = False
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if not waited:
                        print(f"vitx: sweep: {label}: another process trains this workdir; "
                              f"waiting for it", flush=True)
                        waited = True
                    if self.stopping.is_set():
                        raise TrialInterrupted(f"{label}: stopped while waiting") from None
                    time.sleep(self.poll_seconds)
            yield fd
        finally:
            os.close(fd)  # releases the lock once the trainer has exited too

    def _train(self, trial: Any, name: str, overrides: Mapping[str, Any], workdir: str,
               lock_fd: int, label: str) -> dict[str, Any]:
        """`vitx train` for one trial, reporting eval metrics to the pruner as they come."""
        import optuna

        if self.stopping.is_set():
            raise TrialInterrupted(f"{label}: the sweep is stopping")
        cmd = [*self.train_command, "train", "--config", self.plan.config, "--workdir", workdir,
               *(f"--config.{o}" for o in self.plan.base_overrides),
               *(f"--config.{k}={v!r}" for k, v in overrides.items())]
        log_path = os.path.join(self.dir, "logs", f"{name}.log")
        resumed = os.path.isdir(os.path.join(workdir, "checkpoints"))
        print(f"vitx: sweep: {label}: {'resuming' if resumed else 'training'} "
              f"(log: {log_path})", flush=True)
        t0 = time.monotonic()
        with open(log_path, "ab") as log:
            log.write(f"$ {' '.join(cmd)}\n".encode())
            log.flush()
            proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=self.env,
                                    pass_fds=(lock_fd,))
        with self._lock:
            self._procs.add(proc)
        if self.stopping.is_set():  # a signal came while starting it
            proc.send_signal(signal.SIGTERM)
        metrics_path = os.path.join(workdir, "metrics.jsonl")
        reported: set[int] = set()
        pos, pruned_at = 0, None
        try:
            while True:
                try:
                    rc = proc.wait(timeout=self.poll_seconds)
                    break
                except subprocess.TimeoutExpired:
                    pass
                pos, new = self._report(trial, metrics_path, pos, reported)
                if new and pruned_at is None and trial.should_prune():
                    pruned_at = max(reported)
                    proc.send_signal(signal.SIGTERM)  # it saves a checkpoint and exits
        finally:
            if proc.poll() is None:  # KeyboardInterrupt: stop the trainer, then re-raise
                proc.send_signal(signal.SIGTERM)
                proc.wait()
            with self._lock:
                self._procs.discard(proc)
        self._report(trial, metrics_path, pos, reported)
        seconds = time.monotonic() - t0
        if pruned_at is not None:
            print(f"vitx: sweep: {label}: pruned at step {pruned_at} ({seconds:.0f} s)",
                  flush=True)
            raise optuna.TrialPruned(f"pruned at step {pruned_at}")
        results = _read_json(os.path.join(workdir, "results.json"))
        if results is not None:
            print(f"vitx: sweep: {label}: trained in {seconds:.0f} s", flush=True)
            return results
        if self.stopping.is_set() or rc == 0:  # rc 0 without results: stopped by a signal
            trial.set_user_attr("interrupted", True)
            print(f"vitx: sweep: {label}: interrupted; it resumes from its last checkpoint "
                  f"when the sweep is run again", flush=True)
            raise TrialInterrupted(f"{label}: interrupted")
        raise TrialFailed(f"`vitx train` exited with status {rc}: {_last_line(log_path)}; "
                          f"log: {log_path}")

    def _report(self, trial: Any, path: str, pos: int, reported: set[int]) -> tuple[int, bool]:
        """Report new `plan.metric` lines of metrics.jsonl as intermediate values."""
        try:
            with open(path, "rb") as f:
                f.seek(pos)
                data = f.read()
        except OSError:
            return pos, False
        end = data.rfind(b"\n") + 1  # only whole lines
        new = False
        for line in data[:end].splitlines():
            try:
                row = json.loads(line)
            except ValueError:
                continue
            value, step = row.get(self.plan.metric), row.get("step")
            if isinstance(value, int | float) and isinstance(step, int) and step not in reported \
                    and math.isfinite(value):
                trial.report(float(value), step)
                reported.add(step)
                new = True
        return pos + end, new
