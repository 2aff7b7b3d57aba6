"""Start-up checks that need the model or the checkpoints: nothing is written before they pass.

`probe_loss` traces (abstractly) init + forward + the task's loss on a dummy batch of a route's
data; `resume_check` compares a checkpoint's config and state shapes with this run's.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import jax

from vitx import config as config_lib
from vitx.train import checkpoint as ckpt_lib
from vitx.train import state as state_lib
from vitx.train import steps
from vitx.train.multitask import Route


def resume_check(config: Mapping[str, Any], workdir: str,
                 want: ckpt_lib.Shapes) -> Callable[[int, dict, ckpt_lib.Shapes], None]:
    """check(step, meta, shapes) for `Checkpointer.restore_with_fallback`: the checkpoint's
    config and state shapes must fit `config` (this run's config as a dict, e.g.
    `RunConfig.config_dict`; its abstract state has shapes `want`).

    Raises (from check):
      ConfigError: a model/optimizer key changed (`config_lib.check_resume`), or the saved
        state's arrays differ from this config's (names the arrays and the changed keys).
    """
    def check(step: int, meta: dict, shapes: ckpt_lib.Shapes) -> None:
        old = meta.get("config") or {}
        if old:  # (a checkpoint without its config is checked by its shapes alone)
            config_lib.check_resume(old, config, workdir)
        diff = sorted((k for k in want.keys() | shapes.keys() if want.get(k) != shapes.get(k)),
                      key=lambda k: (not k.startswith("params/"), k))
        if not diff:
            return
        name = diff[0]
        changes = config_lib.changed_keys(old, config, skip=config_lib.RESUME_FREE_KEYS)
        raise config_lib.ConfigError(
            f"checkpoint {step} in {workdir} does not fit this config: {len(diff)} state "
            f"arrays differ (e.g. {name} {shapes.get(name, ('absent',))[0]} there, "
            f"{want.get(name, ('absent',))[0]} now); changed keys: "
            f"{config_lib.format_changes(changes, limit=2, width=24) or 'none'}; revert them to "
            f"resume, or train in a new --workdir")
    return check


def first_line(e: BaseException, limit: int = 160) -> str:
    """The first line of `str(e)`, cut to `limit` characters."""
    text = (str(e).strip().splitlines() or [""])[0]
    return text if len(text) <= limit else text[:limit - 3] + "..."


def probe_loss(model: Any, route: Route, plan_kw: dict, variables: Any = None) -> None:
    """Trace (abstractly: no compute, no memory) init + forward + the task's loss on a dummy
    batch of the route's data, so a loss that does not fit the model's outputs or the batch
    (labels key missing, num_classes vs label depth) fails here, before anything is written.

    `variables`: the route's abstract variables (`state.abstract_variables`) when the caller
    traced them already, so init is not traced again; else the probe traces them.

    Raises:
      ConfigError: the loss is not one value per example, or the task and data disagree.
      TypeError / KeyError / ValueError: whatever the trace raises (the caller names it).
    """
    kw = {**route.model_kw, **plan_kw}
    if variables is None:
        variables = state_lib.abstract_variables(model, route.task, route.spec, kw)
    batch_spec = {k: jax.ShapeDtypeStruct((2, *shape), dtype)
                  for k, (shape, dtype) in route.spec.items()}
    key = "task" if route.name is None else f"multitask.tasks[{route.name!r}].task"
    labels = getattr(route.task, "labels", None)
    if isinstance(labels, str) and labels not in route.spec:
        raise config_lib.ConfigError(
            f"{key}.labels={labels!r} is not in the batches made by its input.pp (keys: "
            f"{sorted(route.spec)}); fix one of them")

    def loss(variables: Any, batch: dict) -> jax.Array:
        logits, aux = model.apply(variables, route.task.model_inputs(batch), train=False, **kw)
        return route.task.loss(logits, batch, **steps.aux_kw(route.task, aux))
    try:
        out = jax.eval_shape(loss, variables, batch_spec)
    except (TypeError, ValueError) as e:
        if "shape" not in str(e).lower() and "broadcast" not in str(e).lower():
            raise
        logits = jax.eval_shape(
            lambda v, b: model.apply(v, route.task.model_inputs(b), train=False, **kw)[0],
            variables, batch_spec)
        labels_shape = (route.spec[labels][0] if isinstance(labels, str) else "?")
        raise config_lib.ConfigError(
            f"{key}: the model's logits {tuple(logits.shape[1:])} (num_classes) do not fit the "
            f"labels {tuple(labels_shape)} made by input.pp ({first_line(e, 80)}); make "
            f"num_classes and the labels' depth (e.g. onehot(K)) agree") from e
    if tuple(out.shape) != (2,):
        raise config_lib.ConfigError(
            f"{key}: the loss has shape {tuple(out.shape)}, not one value per example (2,); "
            f"check num_classes and the labels made by input.pp")
