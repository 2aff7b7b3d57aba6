"""Model registry: `config.model_name` -> a model module, checked against `ModelModule`.

Every model is one module (or package) here; add it to `MODELS` to make it selectable from
configs. A model module provides the required members of `ModelModule` and may provide the
optional hooks of `ModelHooks`; the registry checks both when it imports the module, and callers
read the hooks with `hooks_of(module)` (never by probing attributes).
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable, Mapping, Sequence
from types import ModuleType
from typing import Any, Protocol, runtime_checkable

import flax.linen as nn

MODELS = {
    "vit": "vitx.models.vit",
    "vit_rel": "vitx.models.vit_rel",  # ViT_REL (CoAtNet Table 3)
    "flexivit": "vitx.models.flexi",
    "resnet": "vitx.models.resnet",
    "hybrid": "vitx.models.hybrid",
    "vit_hybrid": "vitx.models.hybrid",
    "coatnet": "vitx.models.coatnet",
    "assemblenet": "vitx.models.assemblenet",
    "polyvit": "vitx.models.polyvit",
    "dense": "vitx.models.dense",
}


@runtime_checkable
class ModelModule(Protocol):
    """What every model module provides (see docs/architecture.md, "Where things plug in").

    - `Model(num_classes, *, variant=None, **kw) -> nn.Module`: a flax module whose
      `__call__(x, *, train, **static_kw)` returns `(logits, aux)`; `aux` is a dict of named
      intermediate outputs (e.g. "pre_logits" (B, D), "encoded" (B, N, D)).
    - `load(init_params, init_file, model_cfg=None, dont_load=(), **kw) -> params`: the model's
      checkpoint surgery (big_vision's `load`): read, adapt (posemb / kernel resize, new heads),
      merge strictly into `init_params`.
    - `check_input(model_cfg, shape) -> None`: a one-line `ValueError` before compiling when the
      input shape (without the batch dim) does not fit the model config.
    """

    Model: Callable[..., nn.Module]

    def load(self, init_params: Any, init_file: str, model_cfg: Any = None,
             dont_load: Sequence[str] = (), **kw: Any) -> Any: ...

    def check_input(self, model_cfg: Any, shape: Any) -> None: ...


@dataclasses.dataclass(frozen=True)
class ModelHooks:
    """The optional hooks of a model module (None: the module does not have it).

    Attributes:
      active_mask: `(params, **route_model_kw) -> bool tree`, the params one route of a
        multi-task model trains (its masked update; inactive params and moments are kept).
      param_report: `(params, model_cfg) -> dict`, parameter counts by part (shared / modality /
        task), written to `WORKDIR/param_report.json`.
      prune: `(params, *, task, modality, model_cfg) -> params`, the params that one task or
        modality needs (`vitx export --task/--modality`).
      pruned_model_cfg: `(model_cfg, *, task, modality) -> dict`, the model config of `prune`'s
        params.
    """

    active_mask: Callable[..., Any] | None = None
    param_report: Callable[..., Mapping[str, Any]] | None = None
    prune: Callable[..., Any] | None = None
    pruned_model_cfg: Callable[..., Mapping[str, Any]] | None = None


_HOOKS: dict[str, ModelHooks] = {}


def hooks_of(module: ModuleType) -> ModelHooks:
    """The optional hooks (`ModelHooks`) that model module `module` defines."""
    if module.__name__ not in _HOOKS:
        _HOOKS[module.__name__] = ModelHooks(**{
            f.name: getattr(module, f.name, None) for f in dataclasses.fields(ModelHooks)})
    return _HOOKS[module.__name__]


def get_model_module(name: str) -> ModuleType:
    """The module implementing model `name`, checked against `ModelModule` and `ModelHooks`.

    Raises:
      ValueError: `name` is not registered (the message lists the registered names).
      TypeError: the registered module lacks a required member, or a hook is not callable.
    """
    if name not in MODELS:
        raise ValueError(f"model_name={name!r} does not exist; use one of {sorted(MODELS)}")
    module = importlib.import_module(MODELS[name])
    if not isinstance(module, ModelModule):
        missing = [m for m in ("Model", "load", "check_input") if not hasattr(module, m)]
        raise TypeError(f"model module {module.__name__} lacks {missing} (see "
                        f"vitx.models.ModelModule)")
    bad = [k for k, v in dataclasses.asdict(hooks_of(module)).items()
           if v is not None and not callable(v)]
    if bad:
        raise TypeError(f"model module {module.__name__}: hooks {bad} are not callable")
    return module


def build_model(name: str, num_classes: int | None, **kw: Any) -> nn.Module:
    """`get_model_module(name).Model(num_classes, **kw)`."""
    return get_model_module(name).Model(num_classes, **kw)
