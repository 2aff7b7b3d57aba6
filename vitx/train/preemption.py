"""Preemption: SIGTERM/SIGINT make the train loop save a checkpoint and return normally.

The loop asks `StopFlag.should_stop(step)` after every step; on True it saves the state of that
step, closes the checkpointer and returns (exit status 0); running the same command again
resumes there. A run killed harder (SIGKILL, power loss) loses at most the steps since the last
save (orbax never leaves a half-written checkpoint behind).
"""

from __future__ import annotations

import os
import signal
from typing import Any

import jax


class StopFlag:
    """SIGTERM/SIGINT -> stop after the current step, save, exit 0 (a second SIGINT aborts).

    One process: a Python handler sets a flag that `should_stop` reads after each step.
    Several processes (`jax.distributed`): the stop must be agreed, or hosts would save
    different steps. SIGTERM is left to JAX's preemption notifier (installed by
    `jax.distributed.initialize()`), which propagates the notice to every process and picks the
    same safe step on all of them; `should_stop(step)` asks
    `multihost_utils.reached_preemption_sync_point(step)` (a local check, no round trip) after
    every step. SIGINT (Ctrl-C) on one process is turned into a SIGTERM to itself, so it takes
    the same agreed path.
    """

    def __init__(self) -> None:
        self.signum: int | None = None
        self._announced = False
        self._old: dict[int, Any] = {}
        self.multi_process = jax.process_count() > 1

    def __enter__(self) -> StopFlag:
        sigs = (signal.SIGINT,) if self.multi_process else (signal.SIGTERM, signal.SIGINT)
        for sig in sigs:
            try:
                self._old[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread (e.g. some test runners)
                pass
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        # No printing here: the handler runs in the main thread between two bytecodes, possibly
        # inside a `print` of the loop, and a nested write to the same buffered stdout raises
        # "RuntimeError: reentrant call". `should_stop` says what happened, at a safe point.
        del frame
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = signum
        if self.multi_process:
            os.kill(os.getpid(), signal.SIGTERM)  # to JAX's preemption notifier

    def should_stop(self, step: int) -> bool:
        """Whether to save and stop after `step` (the same answer on every process)."""
        signum = self.signum  # read once per step
        if signum is not None and not self._announced:
            self._announced = True
            print(f"vitx: got signal {signum}; " + (
                "telling every process to stop at an agreed step" if self.multi_process
                else "saving a checkpoint and stopping"), flush=True)
        if not self.multi_process:
            return signum is not None
        from jax.experimental import multihost_utils

        if multihost_utils.reached_preemption_sync_point(step):
            print(f"vitx: process {jax.process_index()}: preemption sync point at step {step}; "
                  f"saving a checkpoint and stopping", flush=True)
            return True
        return False

    def __exit__(self, *exc: Any) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)
