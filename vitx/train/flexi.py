"""FlexiViT training plugin: one patch size per step from `config.flexi`'s schedule.

Source: Beyer et al., "FlexiViT: One Model for All Patch Sizes", CVPR 2023, Sec. 3.1 (a random
patch size per step; patent CN117556885A, claims 14-16). The model (`vitx.models.flexi`)
PI-resizes its kernel to the size it is called with; this plugin only puts `patch_size` into the
per-step plan, a pure function of (seed, step) (`vitx.train.schedules.PatchSizeSchedule`), so
every size is one compiled train step and a resumed run replays the same sizes.

    config.flexi = dict(patch_sizes=(4, 6, 8, 12, 16, 24), schedule=dict(kind="uniform"))
    config.flexi.patch_strides = (None, None, 4, 6, None, None)  # optional: (size, stride) pairs

With `patch_strides` (one per size, None = the size itself; claim 3: a stride per scheme) the
plan also holds `patch_stride`: every (size, stride) pair is one compiled step.

`frozen_model_kwargs(run_config)` gives the static call kwargs of a network trained with
`config.flexi` when it is used frozen (e.g. as a distillation teacher): its first patch size.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import ml_collections

from vitx.config import ConfigError
from vitx.train.plugins import Plugin, SetupContext
from vitx.train.schedules import PatchSizeSchedule
from vitx.utils.patch_sizes import check_patch_strides, validate_patch_sizes


class FlexiPlugin(Plugin):
    """Plans `{"patch_size": schedule(step)}` (a static Python int) for every step."""

    def __init__(self, schedule: PatchSizeSchedule, strides: tuple[int | None, ...] = ()):
        self.schedule = schedule
        self.strides = dict(zip(schedule.patch_sizes, strides, strict=True)) if strides else {}

    def plan(self, step: int) -> dict[str, Any]:
        p = self.schedule(step)
        return {"patch_size": p, "patch_stride": self.strides[p]} if self.strides else {
            "patch_size": p}


def from_config(config: ml_collections.ConfigDict, ctx: SetupContext) -> FlexiPlugin | None:
    """The plugin for `config.flexi`, or None without it.

    Raises:
      ConfigError: a bad schedule, or patch sizes that do not divide the model input's (H, W)
        (naming `flexi.patch_sizes` and sizes that would work).
    """
    if not config.get("flexi"):
        return None
    try:
        schedule = PatchSizeSchedule.from_config(config.flexi, seed=config.get("seed", 0))
        shape = ctx.spec[ctx.task.inputs][0]
        strides = config.flexi.get("patch_strides")
        if strides is None:
            validate_patch_sizes(schedule.patch_sizes, tuple(shape[:2]))
        else:
            strides = check_patch_strides(schedule.patch_sizes, strides, tuple(shape[:2]))
    except ValueError as e:
        raise ConfigError(str(e)) from None
    return FlexiPlugin(schedule, strides or ())


def frozen_model_kwargs(run_config: Mapping[str, Any]) -> dict[str, Any]:
    """The static call kwargs of a frozen model from the run `run_config` (its config.json):
    `{"patch_size": p}` with `p` the first of `flexi.patch_sizes` (pixels) when the run trained
    with `config.flexi`, else `{}`.
    """
    if not run_config.get("flexi"):
        return {}
    strides = run_config["flexi"].get("patch_strides")
    return {"patch_size": run_config["flexi"]["patch_sizes"][0],
            **({"patch_stride": strides[0]} if strides else {})}
