"""Checkpoint surgery shared by the model modules' `load` functions.

Each model module's `load(init_params, init_file, model_cfg, dont_load, **kw)` reads a
checkpoint, adapts what differs from the fresh init (head, resolution-dependent params) and
merges the result strictly with `vitx.utils.tree.merge_params`. The steps that several models
share live here.

Source: Dosovitskiy et al., "An Image is Worth 16x16 Words", ICLR 2021, Sec. 3.2 (fine-tuning:
remove the pre-trained prediction head and attach a zero-initialised D x K feedforward layer).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import numpy as np

from vitx.utils import tree

Params = dict[str, Any]
logger = logging.getLogger(__name__)

__all__ = ["adapt_head"]


def adapt_head(init: Mapping[str, Any], loaded: Mapping[str, Any], *,
               who: str = "load") -> Params:
    """Head surgery: a copy of checkpoint params `loaded` (top level) fitted to `init`'s head.

    * `pre_logits` / `head` are dropped when `init` has none;
    * the whole `head` is replaced by zeros of init's shapes and dtypes when any head/* shape
      differs (another number of classes): head/kernel (D, K), head/bias (K,).
    Other entries are passed through untouched (the same objects). `who` prefixes the log lines
    (e.g. "vit.load"). Pure apart from logging.

    Source: Dosovitskiy et al., ICLR 2021, Sec. 3.2 (remove the pre-trained head, attach a
    zero-initialised D x K layer).
    """
    loaded = dict(loaded)
    for key in ("pre_logits", "head"):
        if key in loaded and key not in init:
            logger.info("%s: dropping checkpoint %s (the model has none)", who, key)
            del loaded[key]
    if isinstance(init.get("head"), Mapping) and isinstance(loaded.get("head"), Mapping):
        ih, lh = tree.flat_leaves(init["head"]), tree.flat_leaves(loaded["head"])
        if any(k in lh and tuple(np.shape(lh[k])) != tuple(np.shape(v)) for k, v in ih.items()):
            logger.info("%s: head %s -> %s, re-initialised to zeros", who,
                        {k: tuple(np.shape(v)) for k, v in lh.items()},
                        {k: tuple(np.shape(v)) for k, v in ih.items()})
            loaded["head"] = tree.unflatten({k: np.zeros(np.shape(v), np.asarray(v).dtype)
                                             for k, v in ih.items()})
    return loaded
