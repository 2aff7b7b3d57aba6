"""Distillation plugin: KL to a fixed teacher's logits, from `config.distill`.

    config.distill = dict(teacher="workdirs/vit8", label_weight=0.0, temperature=1.0)

The teacher is any vitx classifier run (a checkpoint spec, see `vitx.utils.checkpoints`; its
config.json says which model it is). It runs with the static call kwargs its own run's plugins
give a frozen model (`teacher_kwargs`; e.g. a FlexiViT teacher at its first patch size). The
per-example loss becomes `(1 - label_weight) * T^2 KL(teacher || student) + label_weight *
task_loss`.

Sources: Hinton et al., "Distilling the Knowledge in a Neural Network", 2015, Sec. 2 (T^2
scaling); FlexiViT (Beyer et al., CVPR 2023, Sec. 3.5; patent CN117556885A, claims 4-6) distils
a FlexiViT student from a fixed-patch-size teacher.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

from vitx import models
from vitx.config import ConfigError
from vitx.train import plugins
from vitx.train import sharding as shd
from vitx.train.plugins import Plugin, SetupContext
from vitx.utils import checkpoints

Array = jax.Array


def distill_loss(student_logits: Array, teacher_logits: Array, temperature: float = 1.0
                 ) -> Array:
    """T^2 * KL(softmax(teacher / T) || softmax(student / T)) per example, (B, K) -> (B,).

    Zero iff the two distributions are equal. The T^2 factor keeps gradient magnitudes
    comparable across temperatures (Hinton et al. 2015, Sec. 2).
    """
    lt = jax.nn.log_softmax(teacher_logits.astype(jnp.float32) / temperature)
    ls = jax.nn.log_softmax(student_logits.astype(jnp.float32) / temperature)
    return jnp.sum(jnp.exp(lt) * (lt - ls), axis=-1) * temperature**2


def teacher_kwargs(run_config: Mapping[str, Any]) -> dict[str, Any]:
    """The static call kwargs of a frozen model from the run `run_config` (its config.json).

    The union, in `plugins.PLUGINS` order, of `frozen_model_kwargs(run_config)` of every plugin
    module that defines it (a plugin whose per-step plan feeds the model static kwargs says
    which values a frozen model of its run takes; e.g. `vitx.train.flexi`: the first patch
    size). No model is named here.
    """
    kw: dict[str, Any] = {}
    for name in plugins.PLUGINS:
        hook = getattr(importlib.import_module(name), "frozen_model_kwargs", None)
        if hook is not None:
            kw.update(hook(run_config))
    return kw


class DistillPlugin(Plugin):
    """Passes the teacher's params to the step and mixes the KL term into the loss."""

    def __init__(self, teacher: Any, teacher_kw: dict, params: Any, shardings: Any, task: Any,
                 label_weight: float, temperature: float):
        self.params, self.shardings = params, shardings
        w, t = label_weight, temperature

        def extra_loss(logits: Array, batch: dict, task_loss: Array, teacher_params: Any
                       ) -> Array:
            t_logits, _ = teacher.apply({"params": teacher_params}, task.model_inputs(batch),
                                        train=False, **teacher_kw)
            kd = distill_loss(logits, jax.lax.stop_gradient(t_logits), t)
            return (1.0 - w) * kd + w * task_loss
        self.extra_loss = extra_loss

    def extra_args(self) -> tuple[tuple, tuple]:
        return (self.params,), (self.shardings,)


def from_config(config: ml_collections.ConfigDict, ctx: SetupContext) -> DistillPlugin | None:
    """The plugin for `config.distill.teacher`, or None when it is unset.

    Raises:
      ConfigError: the teacher is not a vitx run, or its class count differs from num_classes.
    """
    dcfg = config.get("distill") or {}
    if not dcfg.get("teacher"):
        return None
    try:
        tcfg = checkpoints.read_run_config(dcfg.teacher)
    except FileNotFoundError as e:
        raise ConfigError(f"distill.teacher: {e}") from None
    if tcfg["num_classes"] != config.num_classes:
        raise ConfigError(f"distill.teacher has {tcfg['num_classes']} classes but "
                          f"num_classes={config.num_classes}; they must match")
    teacher = models.build_model(tcfg["model_name"], tcfg["num_classes"], **tcfg["model"])
    params, _ = checkpoints.load_params(dcfg.teacher)
    shardings = shd.tree_shardings(params, ctx.mesh, list(config.get("sharding_rules") or []))
    params = jax.device_put(params, shardings)
    teacher_kw = teacher_kwargs(tcfg)
    print(f"vitx: distilling from {dcfg.teacher} ({tcfg['model_name']} "
          f"{tcfg['model'].get('variant')})", flush=True)
    return DistillPlugin(teacher, teacher_kw, params, shardings, ctx.task,
                         float(dcfg.get("label_weight", 0.0)),
                         float(dcfg.get("temperature", 1.0)))
