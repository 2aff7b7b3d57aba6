"""The NaN guard: no checkpoint with NaN/inf values is ever written, and a diverged run says so.

Every train step reports on device whether its loss and gradient norm were finite
(`nonfinite_step`, see `vitx.train.steps.build_train_step`); `NonFiniteGuard.fold` folds that
into a device-side flag (one small asynchronous op per step, no host round trip), and
`NonFiniteGuard.check` reads it on the host at log steps and, together with the state's own
finiteness, before every save and the final evals. A non-finite step raises `TrainingDiverged`
(`vitx train` exits 1) naming it and the last checkpoint on disk. With `skip_nonfinite_updates`
the step keeps the old state on device instead and the guard only counts the skipped updates
(`skipped_steps`, logged and kept in the checkpoint meta).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from vitx.train import sharding as shd
from vitx.train import steps
from vitx.utils import TrainingDiverged

#: Metrics of the train step that feed the NaN guard (not logged as such).
GUARD_KEYS = ("nonfinite_step", "skipped")


class NonFiniteGuard:
    """The NaN guard's running record, kept on device between host checks.

    `flags` = {"first": the first step since the start whose loss or gradient norm was not
    finite (0: none), "skipped": updates skipped so far (`skip_nonfinite_updates`)}, replicated
    int32 scalars.

    Args:
      mesh: the device mesh (the flags are replicated over it).
      checkpointer: the run's `vitx.train.checkpoint.Checkpointer` (a failed check lets its
        pending saves land and names its last step).
      writer: the run's metric writer (flushed before a failed check raises).
      skip_nonfinite: `skip_nonfinite_updates` (non-finite steps are skipped, not fatal).
      skipped_before: updates skipped before this start (from the resumed checkpoint's meta).
    """

    def __init__(self, mesh: Any, checkpointer: Any, writer: Any, *,
                 skip_nonfinite: bool = False, skipped_before: int = 0):
        self.checkpointer, self.writer, self.skip_nonfinite = checkpointer, writer, skip_nonfinite
        rep = shd.replicated(mesh)
        self.flags = jax.device_put({"first": np.int32(0), "skipped": np.int32(skipped_before)},
                                    rep)

        def fold(flags: dict, metrics: dict) -> dict:
            bad = metrics["nonfinite_step"]
            return {"first": jnp.where(flags["first"] > 0, flags["first"], bad),
                    "skipped": flags["skipped"] + metrics.get("skipped", 0)}
        self._fold = jax.jit(fold, out_shardings=rep)
        self.state_finite = jax.jit(
            lambda st: steps.tree_all_finite(
                (st["params"], st["opt_state"], st.get("model_state"))), out_shardings=rep)

    def fold(self, metrics: dict) -> None:
        """Fold one step's metrics into `flags` (on device, asynchronous)."""
        self.flags = self._fold(self.flags, {k: metrics[k] for k in GUARD_KEYS if k in metrics})

    def host_metrics(self, metrics: dict, flags: dict) -> dict:
        """A step's fetched `metrics` for logging: the guard's own keys dropped, and with
        `skip_nonfinite` the running count `skipped_steps` (from the fetched `flags`) added."""
        for key in GUARD_KEYS:
            metrics.pop(key, None)
        if self.skip_nonfinite:
            metrics["skipped_steps"] = flags["skipped"]
        return metrics

    def skipped(self) -> int:
        """Updates skipped so far (a host round trip)."""
        return int(jax.device_get(self.flags["skipped"]))

    def check(self, step: int, state: dict | None = None, flags: dict | None = None) -> None:
        """The host check (log steps with the fetched `flags`; before every save and the final
        evals with the `state`): passes, or raises.

        Raises:
          TrainingDiverged: a step since the start had a non-finite loss or gradient (unless
            such updates are skipped) or, with `state`, the state is not finite. The message
            names the step and the last checkpoint on disk (pending saves land first).
        """
        bad_state = False
        if flags is None:  # before a save: one round trip for the flags and the state
            flags, ok = jax.device_get((self.flags, self.state_finite(state)))
            bad_state = not bool(ok)
        first = 0 if self.skip_nonfinite else int(flags["first"])
        if not first and not bad_state:
            return
        self.checkpointer.close()  # pending (finite) saves land on disk first
        self.writer.flush()
        last = self.checkpointer.latest_step()
        where = (f"the last checkpoint (finite params) is step {last} "
                 f"({self.checkpointer.directory}/{last}); lower lr and run the same command to "
                 f"resume from it" if last is not None
                 else "no checkpoint was saved; lower lr and start again")
        what = (f"loss or gradients are NaN/inf at step {first}" if first else
                f"params or optimizer state are NaN/inf at step {step} (an update overflowed)")
        raise TrainingDiverged(f"training diverged: {what}; nothing after it was saved; {where}"
                               f", or set skip_nonfinite_updates=True to skip such updates")
