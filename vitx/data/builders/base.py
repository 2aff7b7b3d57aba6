"""The base of vitx's own TFDS builders (datasets made offline from what packages ship)."""

from __future__ import annotations

import inspect

import tensorflow_datasets as tfds
from etils import epath


class LocalBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """A `GeneratorBasedBuilder` defined outside tensorflow_datasets.

    tfds 4.9.10's default `code_path` looks up `importlib_resources.abc.Traversable` for builders
    defined outside tensorflow_datasets; that backport is only installed on Python < 3.9, so the
    lookup raises ModuleNotFoundError on Python 3.11. Here it is the subclass's own source file.
    """

    @tfds.core.utils.classproperty
    @classmethod
    def code_path(cls) -> epath.Path:
        return epath.Path(inspect.getfile(cls))
