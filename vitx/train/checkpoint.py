"""Checkpoints with orbax's CheckpointManager: async save, keep-N, resume, preemption.

A checkpoint `WORKDIR/checkpoints/<step>/` holds everything needed to continue bit-for-bit:
  state   params, optimizer state, step, RNG (the train-state dict of `vitx.train.steps`)
  meta    JSON: step, the data position (examples consumed = step * batch size; the input
          pipeline is a pure function of (seed, position)), and the config that made it.
Orbax writes into a temporary directory and renames it when complete, so a crashed or killed
save never damages the checkpoints already on disk. A finalized checkpoint damaged later (a
truncated or deleted file) is skipped on resume by `restore_with_fallback`: it is moved aside to
`<step>.corrupt` (never deleted; orbax ignores that name) and the previous step is restored.
Bit flips inside array data are not detected (orbax stores no checksums). Reading params out of
a checkpoint (for fine-tuning, eval, export) is `vitx.utils.checkpoints`, which needs no train
state.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import sys
from collections.abc import Callable, Iterator
from typing import Any

import jax
import orbax.checkpoint as ocp

from vitx.train.sharding import path_name
from vitx.utils.checkpoints import short_reason

#: {'/'-joined leaf name (e.g. "params/head/kernel"): (shape, dtype name)} of a train state.
Shapes = dict[str, tuple[tuple[int, ...], str]]


class CheckpointUnreadable(ValueError):
    """No checkpoint of a directory restores; the message names each step and its reason."""


def shapes_of(tree: Any) -> Shapes:
    """`Shapes` of a tree of arrays, ShapeDtypeStructs or orbax array metadata."""
    return {path_name(p): (tuple(int(d) for d in x.shape), str(getattr(x, "dtype", "")))
            for p, x in jax.tree_util.tree_leaves_with_path(tree)}


def _chain(e: BaseException) -> Iterator[BaseException]:
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        yield e
        e = e.__cause__ or e.__context__


class _NoOrbaxTracebacks(logging.Filter):
    """Keep orbax's error log lines but drop their tracebacks (the run raises one clear error
    itself); VITX_TRACEBACK=1 keeps them."""

    def filter(self, record: logging.LogRecord) -> bool:
        if "orbax" in record.pathname and not os.environ.get("VITX_TRACEBACK"):
            record.exc_info, record.exc_text, record.stack_info = None, None, None
        return True


@contextlib.contextmanager
def _quiet_asyncio() -> Iterator[None]:
    """Silence asyncio's "Task exception was never retrieved" dumps of a failed restore."""
    logger = logging.getLogger("asyncio")
    old = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(old)


class Checkpointer:
    """Thin wrapper over `ocp.CheckpointManager` for the train state and its metadata.

    Args:
      directory: where step directories live (created if missing).
      keep: how many most recent checkpoints to keep (None: all).
      async_save: write in a background thread (the train loop continues).
    """

    def __init__(self, directory: str, *, keep: int | None = 3, async_save: bool = True):
        self.directory = os.path.abspath(directory)
        absl_logger = logging.getLogger("absl")
        if not any(isinstance(f, _NoOrbaxTracebacks) for f in absl_logger.filters):
            absl_logger.addFilter(_NoOrbaxTracebacks())
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

    def _reader(self) -> ocp.CheckpointManager:
        return ocp.CheckpointManager(
            self.directory, options=ocp.CheckpointManagerOptions(read_only=True),
            item_handlers={"state": ocp.StandardCheckpointHandler(),
                           "meta": ocp.JsonCheckpointHandler()})

    def read_meta(self, step: int) -> dict:
        """The `meta` item of `step` (step, examples_seen, config).

        Raises:
          Exception: whatever orbax raises for a missing or damaged item.
        """
        with self._reader() as r:
            return dict(r.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
                        ["meta"])

    def state_shapes(self, step: int) -> Shapes:
        """The saved train state's leaf shapes and dtypes at `step` (from its metadata only).

        Raises:
          Exception: whatever orbax raises for missing or damaged metadata.
        """
        with self._reader() as r:
            tree = r.item_metadata(step)["state"]
        tree = getattr(tree, "tree", tree)
        if tree is None:
            raise ValueError("no state metadata")
        return shapes_of(tree)

    def restore_with_fallback(self, abstract_state: Any,
                              check: Callable[[int, dict, Shapes], None] | None = None
                              ) -> tuple[Any, dict, list[tuple[int, str]]]:
        """Restore the newest checkpoint that reads, trying older steps when one does not.

        For each step, newest first: read its meta and state metadata, call `check(step, meta,
        shapes)` (the caller's compatibility check: its errors propagate, they are not
        damage), then restore. A step that fails to read or restore is damaged: once an older
        step restores, each damaged newer one is renamed to `<step>.corrupt` (kept, never
        deleted, so a later save of that step number works) and logged as a warning.

        Returns:
          (state, meta, [(damaged step, one-line reason), ...]).

        Raises:
          FileNotFoundError: no checkpoint in the directory.
          CheckpointUnreadable: no step restores (nothing is renamed); names each reason.
        """
        steps = sorted(self.all_steps(), reverse=True)
        if not steps:
            raise FileNotFoundError(f"no checkpoint in {self.directory}")
        damaged: list[tuple[int, str]] = []
        for step in steps:
            with _quiet_asyncio():
                try:
                    meta, shapes = self.read_meta(step), self.state_shapes(step)
                except Exception as e:  # noqa: BLE001 - any failure to read is damage
                    damaged.append((step, short_reason(e)))
                    continue
                if check is not None:
                    check(step, meta, shapes)
                try:
                    state, meta = self.restore(abstract_state, step)
                except Exception as e:  # noqa: BLE001
                    damaged.append((step, short_reason(e)))
                    continue
            self._set_aside(damaged, step)
            return state, meta, damaged
        reasons = "; ".join(f"step {s}: {r[:90]}" for s, r in damaged[:2])
        raise CheckpointUnreadable(
            f"no checkpoint in {self.directory} restores ({reasons}); move that directory aside "
            f"to start afresh, or use another --workdir")

    def _set_aside(self, damaged: list[tuple[int, str]], restored: int) -> None:
        """Rename each damaged step directory to `<step>.corrupt` (kept) and warn on stderr."""
        for step, reason in damaged:
            src = os.path.join(self.directory, str(step))
            dst, n = f"{src}.corrupt", 1
            while os.path.exists(dst):
                n += 1
                dst = f"{src}.corrupt{n}"
            if jax.process_index() == 0:
                os.rename(src, dst)
            print(f"vitx: warning: checkpoint {src} does not restore ({reason}); kept as "
                  f"{os.path.basename(dst)} (not deleted); resuming from step {restored}",
                  file=sys.stderr, flush=True)
        if damaged:
            self._mngr.reload()

    def save(self, step: int, state: Any, meta: dict, *, force: bool = True) -> bool:
        """Start saving `state` at `step` (async unless disabled). Returns True if a save began.

        Raises:
          OSError: ENOSPC, no space left on device (here or in an earlier async save).
        """
        with self._disk_errors():
            return self._mngr.save(
                step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                              meta=ocp.args.JsonSave(meta)), force=force)

    @contextlib.contextmanager
    def _disk_errors(self) -> Iterator[None]:
        """orbax/tensorstore report a full disk as ValueError('RESOURCE_EXHAUSTED ... No space
        left on device'): raise it as OSError(ENOSPC) naming the checkpoints directory."""
        try:
            yield
        except Exception as e:
            text = " ".join(str(x) for x in _chain(e))
            if "No space left on device" in text or "os_error_code='28'" in text:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), self.directory) from e
            raise

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
        """Block until pending async saves are on disk.

        Raises:
          OSError: ENOSPC (see `save`).
        """
        with self._disk_errors():
            self._mngr.wait_until_finished()

    def close(self) -> None:
        """Wait for pending saves and close.

        Raises:
          OSError: ENOSPC (see `save`).
        """
        with self._disk_errors():
            self._mngr.wait_until_finished()
        self._mngr.close()


def abstract_like(tree: Any, shardings: Any) -> Any:
    """ShapeDtypeStructs of `tree` carrying `shardings` (the restore target)."""
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                        tree, shardings)
