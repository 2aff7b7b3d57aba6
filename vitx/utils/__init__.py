"""Small helpers shared by every layer (the bottom of the import graph, with `vitx.config`).

`vitx.utils` imports nothing else from vitx: `tree` ('/'-path param trees, strict merge), `npz`
(the vitx / vit_jax / big_vision .npz layouts), `checkpoints` (the one resolver of
`WORKDIR[/checkpoints[/STEP]]`, `file.npz` and `...:subtree` specs).
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np

__all__ = ["pair", "write_json_atomic"]


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
