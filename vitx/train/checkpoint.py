"""Checkpoints with orbax's CheckpointManager: async save, keep-N, resume, preemption.

A checkpoint `WORKDIR/checkpoints/<step>/` holds everything needed to continue bit-for-bit:
  state   params, optimizer state, step, RNG (the train-state dict of `vitx.train.steps`)
  meta    JSON: step, the data position (examples consumed = step * batch size; the input
          pipeline is a pure function of (seed, position)), and the config that made it.
Orbax writes into a temporary directory and renames it when complete, so a crashed or killed
save never damages the checkpoints already on disk. Reading params out of a checkpoint (for
fine-tuning, eval, export) is `vitx.utils.checkpoints`, which needs no train state.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import orbax.checkpoint as ocp


class Checkpointer:
    """Thin wrapper over `ocp.CheckpointManager` for the train state and its metadata.

    Args:
      directory: where step directories live (created if missing).
      keep: how many most recent checkpoints to keep (None: all).
      async_save: write in a background thread (the train loop continues).
    """

    def __init__(self, directory: str, *, keep: int | None = 3, async_save: bool = True):
        self.directory = os.path.abspath(directory)
        self._mngr = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(
                max_to_keep=keep, enable_async_checkpointing=async_save, create=True),
            item_names=("state", "meta"),
        )

    def latest_step(self) -> int | None:
        return self._mngr.latest_step()

    def all_steps(self) -> list[int]:
        return list(self._mngr.all_steps())

    def save(self, step: int, state: Any, meta: dict, *, force: bool = True) -> bool:
        """Start saving `state` at `step` (async unless disabled). Returns True if a save began."""
        return self._mngr.save(
            step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                          meta=ocp.args.JsonSave(meta)), force=force)

    def restore(self, abstract_state: Any, step: int | None = None) -> tuple[Any, dict]:
        """Restore (state, meta) at `step` (default: latest) onto `abstract_state`'s shardings.

        `abstract_state` is a tree of `jax.ShapeDtypeStruct` with `.sharding` set (e.g. from
        `abstract_like`).

        Raises:
          FileNotFoundError: no checkpoint in the directory.
        """
        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no checkpoint in {self.directory}")
        out = self._mngr.restore(
            step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state),
                                          meta=ocp.args.JsonRestore()))
        return out["state"], dict(out["meta"])

    def wait(self) -> None:
        """Block until pending async saves are on disk."""
        self._mngr.wait_until_finished()

    def close(self) -> None:
        self._mngr.wait_until_finished()
        self._mngr.close()


def abstract_like(tree: Any, shardings: Any) -> Any:
    """ShapeDtypeStructs of `tree` carrying `shardings` (the restore target)."""
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                        tree, shardings)
