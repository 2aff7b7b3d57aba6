"""Checkpoints with orbax's CheckpointManager: async save, keep-N, resume, preemption.

A checkpoint `WORKDIR/checkpoints/<step>/` holds everything needed to continue bit-for-bit:
  state   params, optimizer state, step, RNG (the train-state dict of `vitx.train.steps`)
  meta    JSON: step, the data position (examples consumed = step * batch size; the input
          pipeline is a pure function of (seed, position)), and the config that made it.
Orbax writes into a temporary directory and renames it when complete, so a crashed or killed
save never damages the checkpoints already on disk.
"""

from __future__ import annotations

import json
import os
from typing import Any

import jax
import numpy as np
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


def find_checkpoint_dir(path: str) -> str:
    """`path` may be a workdir (with checkpoints/) or the checkpoints directory itself.

    Raises:
      FileNotFoundError: neither holds a step directory.
    """
    for cand in (os.path.join(path, "checkpoints"), path):
        if os.path.isdir(cand) and any(d.isdigit() for d in os.listdir(cand)):
            return cand
    raise FileNotFoundError(f"{path!r} holds no vitx checkpoint (expected "
                            f"{path}/checkpoints/<step>/); pass a workdir of a finished run or "
                            f"a .npz file")


def load_params(path: str, step: int | None = None) -> tuple[Any, dict]:
    """Params (host numpy tree) and meta of a vitx checkpoint in a workdir, without a template."""
    ckpt_dir = find_checkpoint_dir(path)
    mngr = ocp.CheckpointManager(
        ckpt_dir, options=ocp.CheckpointManagerOptions(read_only=True),
        item_handlers={"state": ocp.PyTreeCheckpointHandler(),
                       "meta": ocp.JsonCheckpointHandler()})
    step = mngr.latest_step() if step is None else step
    # Restore as host numpy: works whatever mesh/devices the checkpoint was written on.
    tree = mngr.item_metadata(step)["state"].tree
    restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree)
    out = mngr.restore(step, args=ocp.args.Composite(
        state=ocp.args.PyTreeRestore(restore_args=restore_args), meta=ocp.args.JsonRestore()))
    mngr.close()
    return out["state"]["params"], dict(out["meta"])


def write_json_atomic(path: str, obj: Any) -> None:
    """Write JSON to `path` via a temporary file and rename (never leaves a half-written file)."""
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=True, default=str)
    os.replace(tmp, path)
