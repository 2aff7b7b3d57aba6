"""Small helpers shared by every layer (the bottom of the import graph, with `vitx.config`).

`vitx.utils` imports nothing else from vitx: `ConfigError` (a bad config's one-line error),
`tree` ('/'-path param trees, strict merge), `npz`
(the vitx / vit_jax / big_vision .npz layouts), `checkpoints` (the one resolver of
`WORKDIR[/checkpoints[/STEP]]`, `file.npz` and `...:subtree` specs). Here: `TrainingDiverged`
(the NaN guard's error; `vitx train` exits 1), `check_writable` (a directory's writability and
free space, proven before a run writes anything) and `describe_os_error` (one line for an
OSError such as ENOSPC).
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import tempfile
from typing import Any

import numpy as np

__all__ = ["ConfigError", "TrainingDiverged", "check_writable", "describe_os_error", "pair",
           "write_json_atomic"]


class ConfigError(ValueError):
    """A bad config: the message names the key/file/value and the fix (`vitx.config` re-exports
    it; it lives here so the model zoo and train step import without ml_collections)."""


class TrainingDiverged(FloatingPointError):
    """A run's loss, gradients or state became NaN/inf (`vitx train` exits with status 1).

    The message names the first non-finite step and the last checkpoint with finite params.
    """


def describe_os_error(e: OSError) -> str:
    """One line for an OSError: what failed, on which path, and the usual fix."""
    path = e.filename if e.filename is not None else "?"
    what = e.strerror or str(e)
    if e.errno == errno.ENOSPC:
        return f"no space left on device writing {path}; free space or use another --workdir"
    if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return f"{path} is not writable ({what}); fix its permissions or use another path"
    return f"{path}: {what}"


def check_writable(path: str, what: str, *, need_bytes: int = 0) -> None:
    """Prove that directory `path` can be written (create, write 4 KiB, fsync, remove a file)
    without creating it: a missing `path` is checked through its nearest existing parent.

    `need_bytes`: also require that much free space there (e.g. one checkpoint's size).
    `what` names the setting in the error (e.g. "--workdir", "data_dir").

    Raises:
      ValueError: one line naming `what`, the path, the reason (permission, not a directory,
        read-only file system, no space left) and the fix.
    """
    probe_dir = os.path.abspath(os.path.expanduser(path))
    while not os.path.exists(probe_dir) and os.path.dirname(probe_dir) != probe_dir:
        probe_dir = os.path.dirname(probe_dir)
    try:
        if not os.path.isdir(probe_dir):
            raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), probe_dir)
        fd, probe = tempfile.mkstemp(prefix=".vitx-write-test-", dir=probe_dir)
        try:
            os.write(fd, b"\0" * 4096)
            os.fsync(fd)
        finally:
            os.close(fd)
            os.remove(probe)
        free = shutil.disk_usage(probe_dir).free
    except OSError as e:
        reason = ("no space left on device" if e.errno == errno.ENOSPC
                  else e.strerror or type(e).__name__)
        where = "" if probe_dir == os.path.abspath(path) else f" ({probe_dir})"
        raise ValueError(f"{what} {path!r} is not writable{where}: {reason}; fix it or choose "
                         f"another {what}") from None
    if free < need_bytes:
        raise ValueError(f"{what} {path!r} has {free / 2**20:.1f} MiB free but one checkpoint "
                         f"needs ~{need_bytes / 2**20:.1f} MiB; free space or choose another "
                         f"{what}")


def pair(size: Any, what: str) -> tuple[int, int]:
    """An int n (-> (n, n)) or a pair of ints, all > 0, as a tuple of Python ints.

    `what` names the config key or argument in the error (e.g. "model.posemb_grid").

    Raises:
      ValueError: `size` is not a static positive int / pair (bools and traced jax values
        included), naming `what` and the fix.
    """
    hw = (size, size) if isinstance(size, int | np.integer) else size
    try:
        hw = tuple(hw)
    except TypeError:
        hw = ()
    if len(hw) != 2 or not all(isinstance(v, int | np.integer) and not isinstance(v, bool)
                               and v > 0 for v in hw):
        raise ValueError(f"{what}={size!r} is not a size; pass a static Python int > 0 or a pair "
                         f"(height, width) of them")
    return int(hw[0]), int(hw[1])


def write_json_atomic(path: str, obj: Any) -> None:
    """Write JSON to `path` via a temporary file and rename (never leaves a half-written file).

    Raises:
      OSError: the directory is not writable (an existing file at `path` is left intact).
    """
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=True, default=str)
    os.replace(tmp, path)
