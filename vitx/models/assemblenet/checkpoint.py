"""AssembleNet++ checkpoint surgery: `load` (pruned graphs, and their unpruned checkpoints)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import jax

from vitx.utils import checkpoints, tree

__all__ = ["load"]

Params = dict[str, Any]
logger = logging.getLogger("vitx.models.assemblenet")


def load(init_params: Any, init_file: str, model_cfg: Any = None, dont_load: Sequence[str] = (),
         *, from_unpruned: bool = False, **kw: Any) -> Params:
    """The params of checkpoint `init_file`, merged strictly into this model's init.

    `init_file` is any checkpoint spec (`vitx.utils.checkpoints.load_params`); the checkpoint
    must be of the same graph, or of the pruned graph the config now holds (`prune_graph`'s
    params). `from_unpruned=True` (config.model_load) also accepts the checkpoint of the graph
    *before* pruning: its params of blocks the model lacks and its connection / peer params
    (under `{block}/fusion/`) the model lacks are dropped (logged); pruning changes no surviving
    shape, so everything else loads as is. Everything else is `vitx.utils.tree.merge_params`
    (strict; `dont_load` regexes keep init values). BatchNorm statistics are not in `params`: they
    start from init (mean 0, var 1) unless the trainer restores `batch_stats` itself.

    Raises:
      FileNotFoundError / ValueError: see `vitx.utils.checkpoints.load_params`; one ValueError
        listing every param that cannot be loaded; unknown keyword arguments.
    """
    del model_cfg  # the structure of init_params is the graph
    if kw:
        raise ValueError(f"model_load keys {sorted(kw)} are unknown to assemblenet; use "
                         f"from_unpruned")
    loaded, _ = checkpoints.load_params(init_file)
    init = jax.device_get(init_params)
    if from_unpruned:
        init_flat, loaded_flat = tree.flat_leaves(init), tree.flat_leaves(loaded)
        blocks = {n.split("/")[0] for n in init_flat}
        drop = [n for n in loaded_flat if n not in init_flat and (
            n.split("/")[0] not in blocks or n.split("/")[1:2] == ["fusion"])]
        if drop:
            logger.info("assemblenet.load: dropping %d pruned params of the checkpoint: %s",
                        len(drop), drop)
            loaded = tree.unflatten({n: v for n, v in loaded_flat.items() if n not in drop})
    return tree.merge_params(init, loaded, dont_load=dont_load)
