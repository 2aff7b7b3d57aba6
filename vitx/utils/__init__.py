"""Small helpers shared by every layer (the bottom of the import graph, with `vitx.config`).

`vitx.utils` imports nothing else from vitx: `ConfigError` (a bad config's one-line error),
`tree` ('/'-path param trees, strict merge), `npz`
(the vitx / vit_jax / big_vision .npz layouts), `checkpoints` (the one resolver of
`WORKDIR[/checkpoints[/STEP]]`, `file.npz` and `...:subtree` specs). Here: `TrainingDiverged`
(the NaN guard's error; `vitx train` exits 1), `check_writable` (a directory's writability and
free space, proven before a run writes anything) and `describe_os_error` (one line for an
OSError such as ENOSPC), and the one of each small helper every layer uses: `atomic_write` /
`write_json_atomic` (unique temp file, fsync, rename), `load_module` (a Python file by path),
`positive_int` / `pair` (static int and (h, w) validation), `to_plain` (ConfigDict / FrozenDict /
Mapping / tuple -> plain dicts and lists).
"""

from __future__ import annotations

import contextlib
import errno
import importlib.util
import json
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from types import ModuleType
from typing import IO, Any

import numpy as np

__all__ = ["ConfigError", "TrainingDiverged", "atomic_write", "check_writable",
           "describe_os_error", "load_module", "pair", "positive_int", "to_plain",
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


def positive_int(value: Any, what: str, *, minimum: int = 1) -> int:
    """`value` as a Python int >= `minimum` (bools and non-integers rejected).

    `what` names the config key or argument in the error (e.g. "model.depth").

    Raises:
      ValueError: `value` is not a static int >= `minimum`, naming `what` and the fix.
    """
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < minimum:
        raise ValueError(f"{what}={value!r} is not an integer >= {minimum}; pass one")
    return int(value)


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


def to_plain(x: Any) -> Any:
    """ConfigDict / FrozenDict / Mapping / list / tuple -> plain dicts and lists, recursively
    (leaves kept as they are)."""
    if hasattr(x, "to_dict") and callable(x.to_dict):
        x = x.to_dict()
    if isinstance(x, Mapping) or (hasattr(x, "items") and hasattr(x, "keys")):
        return {k: to_plain(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [to_plain(v) for v in x]
    return x


def load_module(path: str, prefix: str = "vitx_file") -> ModuleType:
    """Import the Python file at `path` as a fresh module (config files, sweep plans).

    Raises:
      FileNotFoundError: `path` is not a file.
      Exception: whatever executing the file raises.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(errno.ENOENT, "no such file", path)
    spec = importlib.util.spec_from_file_location(f"{prefix}_{abs(hash(path))}", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@contextlib.contextmanager
def atomic_write(path: str, mode: str = "w") -> Iterator[IO[Any]]:
    """Open a unique temporary file beside `path` for writing (`mode` "w" or "wb"); on a clean
    exit flush, fsync, make it world-readable (0644) and rename it onto `path`. On an error the
    temporary file is removed and an existing file at `path` is left intact, so a reader never
    sees a half-written file and two writers never share a temporary name.

    Raises:
      OSError: the directory is not writable or the disk is full.
    """
    folder = os.path.dirname(os.path.abspath(path))
    name = os.path.basename(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp creates 0600
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def write_json_atomic(path: str, obj: Any) -> None:
    """Write `obj` as indented, key-sorted JSON to `path` with `atomic_write`.

    Raises:
      OSError: the directory is not writable (an existing file at `path` is left intact).
    """
    with atomic_write(path) as f:
        json.dump(obj, f, indent=2, sort_keys=True, default=str)
