"""Model registry: `config.model_name` -> module with a `Model(num_classes, *, variant, **kw)`.

Every model is one file in this package; add it to `MODELS` to make it selectable from configs.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any

import flax.linen as nn

MODELS = {
    "vit": "vitx.models.vit",
    "flexivit": "vitx.models.flexi",
    "resnet": "vitx.models.resnet",
    "hybrid": "vitx.models.hybrid",
    "vit_hybrid": "vitx.models.hybrid",
    "coatnet": "vitx.models.coatnet",
    "assemblenet": "vitx.models.assemblenet",
    "polyvit": "vitx.models.polyvit",
}


def get_model_module(name: str) -> ModuleType:
    """The module implementing model `name`.

    Raises:
      ValueError: `name` is not registered (the message lists the registered names).
    """
    if name not in MODELS:
        raise ValueError(f"model_name={name!r} does not exist; use one of {sorted(MODELS)}")
    return importlib.import_module(MODELS[name])


def build_model(name: str, num_classes: int | None, **kw: Any) -> nn.Module:
    """`get_model_module(name).Model(num_classes, **kw)`."""
    return get_model_module(name).Model(num_classes, **kw)
