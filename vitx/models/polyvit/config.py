"""PolyViT's config schema: `Modality`, `Head`, `Routes` and `PolyViTCfg`, parsed once.

`config.model` (see the package docstring) is read here and nowhere else: every other part of
the package receives these frozen, self-validating types. Each error is one line naming the
config key and the fix.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from vitx.models import layers, vit
from vitx.utils import pair, positive_int, to_plain

__all__ = ["HEAD_KEYS", "MODALITY_KEYS", "VIT_KW", "Head", "Modality", "PolyViTCfg", "Routes",
           "check_input", "num_tokens"]

MODALITY_KEYS = ("patch_size", "tubelet", "input_shape")
HEAD_KEYS = ("modality", "num_classes")
#: The encoder options of `config.model` (as in `vitx.models.vit`).
VIT_KW = ("width", "depth", "mlp_dim", "num_heads", "dropout", "scan", "remat_policy",
          "dtype_mm", "head_zeroinit", "patch_embed", "attention_impl", "drop_path",
          "attention_dropout", "gelu")
_NAME_RE = re.compile(r"[A-Za-z0-9_.\-]+")
_NO_MODALITIES = ("model.modalities is empty; give at least one, e.g. {'image': {'patch_size': "
                  "(4, 4), 'input_shape': (32, 32, 3)}}")
_NO_HEADS = ("model.heads is empty; give one head per task, e.g. {'digits': {'modality': "
             "'image', 'num_classes': 10}}")


def _dict(x: Any, key: str) -> dict[str, Any]:
    """A Mapping / ConfigDict / FrozenDict as a plain nested dict (`vitx.utils.to_plain`).

    Raises:
      ValueError: `x` is not a mapping, naming `key`.
    """
    out = to_plain(x)
    if not isinstance(out, dict):
        raise ValueError(f"{key}={x!r} is not a dict ({type(x).__name__}); give a dict")
    return out


def _entry(name: Any, spec: Any, section: str, allowed: tuple[str, ...]) -> tuple[str, dict]:
    """(`section.name`, `spec` as a plain dict) of one named entry of `model.modalities` /
    `model.heads`, its keys checked against `allowed`.

    Raises:
      ValueError: a bad name, a spec that is not a dict, or unknown keys.
    """
    _check_name(name, section)
    key = f"{section}.{name}"
    spec = _dict(spec, key)
    unknown = sorted(set(spec) - set(allowed))
    if unknown:
        raise ValueError(f"{key} has unknown keys {unknown}; use {list(allowed)}")
    return key, spec


def _dims(value: Any, n: int, what: str) -> tuple[int, ...]:
    """`value` as `n` positive Python ints (an int is repeated `n` times).

    n = 2 is `vitx.utils.pair`; otherwise every entry goes through `vitx.utils.positive_int`.

    Raises:
      ValueError: not `n` positive ints, naming `what`.
    """
    if n == 2:
        return pair(value, what)
    dims = ((value,) * n if isinstance(value, int | np.integer) and not isinstance(value, bool)
            else value)
    try:
        dims = tuple(dims)
    except TypeError:
        dims = ()
    if len(dims) != n:
        raise ValueError(f"{what}={value!r} is not {n} positive ints; pass a tuple of {n} ints")
    return tuple(positive_int(v, f"{what}[{i}]") for i, v in enumerate(dims))


def _check_name(name: Any, what: str) -> str:
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
        raise ValueError(f"{what} name {name!r} is not a plain name; use letters, digits, '_', "
                         f"'.', '-' (it becomes part of param names)")
    return name


@dataclasses.dataclass(frozen=True)
class Modality:
    """One modality of `config.model.modalities`: its tokenizer and example shape.

    Attributes:
      name: a plain name (letters, digits, '_', '.', '-'); params `tokenizer_<name>/...` and
        `modality_layers_<name>/...`.
      patch: (ph, pw) of a 2D tokenizer (`patch_size`; images (H, W, C), spectrograms
        (time, mel, 1)) or (t, ph, pw) of a 3D one (`tubelet`; video (T, H, W, C)), in pixels
        (and frames).
      input_shape: one example's shape without the batch dim, channels last: (H, W, C) or
        (T, H, W, C). The learned posemb has one entry per token of its grid.

    Raises:
      ValueError: a bad name, a patch of neither 2 nor 3 positive ints, an input_shape of the
        wrong length, a patch that does not divide the input grid.
    """

    name: str
    patch: tuple[int, ...]
    input_shape: tuple[int, ...]

    def __post_init__(self) -> None:
        _check_name(self.name, "model.modalities")
        key = f"model.modalities.{self.name}"
        try:
            n = len(self.patch)
        except TypeError:
            n = 0
        if n not in (2, 3):
            raise ValueError(f"{key}: patch={self.patch!r} is neither (ph, pw) (patch_size) nor "
                             f"(t, ph, pw) (tubelet); pass one of them")
        object.__setattr__(self, "patch", _dims(self.patch, n, f"{key}.{self.kind}"))
        shape = _dims(self.input_shape, n + 1, f"{key}.input_shape")
        object.__setattr__(self, "input_shape", shape)
        if any(s % p for s, p in zip(shape[:-1], self.patch, strict=True)):
            raise ValueError(f"{key}.{self.kind}={self.patch} does not divide input_shape="
                             f"{shape[:-1]} (channels last); choose sizes that divide it or "
                             f"resize the data")

    @property
    def kind(self) -> str:
        """The tokenizer kind, as its config key: "patch_size" (2D) or "tubelet" (3D)."""
        return "patch_size" if len(self.patch) == 2 else "tubelet"

    @property
    def grid(self) -> tuple[int, ...]:
        """Token grid (H/ph, W/pw) or (T/t, H/ph, W/pw) of `input_shape`."""
        return tuple(s // p for s, p in zip(self.input_shape[:-1], self.patch, strict=True))

    @property
    def num_tokens(self) -> int:
        """Tokens the encoder sees: prod(grid) + 1 (cls); ViViT Sec. 3.2 for video."""
        return math.prod(self.grid) + 1

    @classmethod
    def from_config(cls, name: Any, spec: Any) -> Modality:
        """`config.model.modalities.<name>` (a dict of `MODALITY_KEYS`) -> a `Modality`.

        Raises:
          ValueError: a bad name, unknown keys, not exactly one of patch_size / tubelet, a
            missing or malformed input_shape, a patch that does not divide the input grid.
        """
        key, spec = _entry(name, spec, "model.modalities", MODALITY_KEYS)
        if ("patch_size" in spec) == ("tubelet" in spec):
            raise ValueError(f"{key} needs exactly one of patch_size (2D: images, spectrograms) "
                             f"or tubelet (3D: video); it has {sorted(spec)}")
        patch = (_dims(spec["patch_size"], 2, f"{key}.patch_size") if "patch_size" in spec
                 else _dims(spec["tubelet"], 3, f"{key}.tubelet"))
        if "input_shape" not in spec:
            dims = "(H, W, C)" if len(patch) == 2 else "(T, H, W, C)"
            raise ValueError(f"{key}.input_shape is missing; set it to the example shape {dims} "
                             f"of that modality's data (it sizes the posemb and the init)")
        shape = _dims(spec["input_shape"], len(patch) + 1, f"{key}.input_shape")
        return cls(name, patch, shape)

    @classmethod
    def all_from_config(cls, modalities: Any) -> tuple[Modality, ...]:
        """`config.model.modalities` (name -> settings) -> its `Modality`s, sorted by name.

        Sorted, so a dict and an ml_collections ConfigDict (sorted keys) give equal modules.

        Raises:
          ValueError: no modalities, or a bad entry (see `from_config`).
        """
        if modalities is None or not _dict(modalities, "model.modalities"):
            raise ValueError(_NO_MODALITIES)
        return tuple(sorted((cls.from_config(name, spec) for name, spec
                             in _dict(modalities, "model.modalities").items()),
                            key=lambda m: m.name))


@dataclasses.dataclass(frozen=True)
class Head:
    """One task head of `config.model.heads`: a linear layer on the cls token of a modality.

    Attributes:
      task: a plain name; params `head_<task>/{kernel (D, num_classes), bias (num_classes,)}`.
      modality: the name of the `Modality` whose tokens the task reads.
      num_classes: the head's outputs K_task (>= 1).

    Raises:
      ValueError: a bad task name or num_classes.
    """

    task: str
    modality: str
    num_classes: int

    def __post_init__(self) -> None:
        _check_name(self.task, "model.heads")
        key = f"model.heads.{self.task}"
        if not isinstance(self.modality, str):
            raise ValueError(f"{key}.modality={self.modality!r} is not a modality name; use "
                             f"a key of model.modalities")
        try:
            k = positive_int(self.num_classes, f"{key}.num_classes")
        except ValueError:
            raise ValueError(f"{key}.num_classes={self.num_classes!r} is not an int >= 1; set "
                             f"it (or the model's num_classes)") from None
        object.__setattr__(self, "num_classes", k)

    @classmethod
    def from_config(cls, task: Any, spec: Any, modalities: Sequence[str],
                    num_classes: int | None) -> Head:
        """`config.model.heads.<task>` (a dict of `HEAD_KEYS`) -> a `Head`.

        `modalities`: the modality names; `num_classes`: the default of the head's.

        Raises:
          ValueError: a bad name, unknown keys, an unknown modality, no or bad num_classes.
        """
        key, spec = _entry(task, spec, "model.heads", HEAD_KEYS)
        if spec.get("modality") not in modalities:
            raise ValueError(f"{key}.modality={spec.get('modality')!r} is not a modality of "
                             f"model.modalities; use one of {list(modalities)}")
        return cls(task, spec["modality"], spec.get("num_classes", num_classes))


@dataclasses.dataclass(frozen=True)
class Routes:
    """The modalities and heads of `config.model`, each sorted by name.

    A route is a (modality, task) pair of a head; `vitx.models.polyvit.routing` resolves one.

    Raises:
      ValueError: no modalities or heads, or a head reading a modality that is not there.
    """

    modalities: tuple[Modality, ...]
    heads: tuple[Head, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "modalities",
                           tuple(sorted(self.modalities, key=lambda m: m.name)))
        object.__setattr__(self, "heads", tuple(sorted(self.heads, key=lambda h: h.task)))
        if not self.modalities:
            raise ValueError(_NO_MODALITIES)
        if not self.heads:
            raise ValueError(_NO_HEADS)
        for h in self.heads:
            if h.modality not in self.names:
                raise ValueError(f"model.heads.{h.task}.modality={h.modality!r} is not a "
                                 f"modality of model.modalities; use one of {self.names}")

    @property
    def names(self) -> list[str]:
        """The modality names."""
        return [m.name for m in self.modalities]

    @property
    def head_modality(self) -> dict[str, str]:
        """{task: the modality its head reads}."""
        return {h.task: h.modality for h in self.heads}

    def modality(self, name: str) -> Modality:
        """The `Modality` called `name`.

        Raises:
          ValueError: no such modality.
        """
        for m in self.modalities:
            if m.name == name:
                return m
        raise ValueError(f"modality={name!r} is not in model.modalities; use one of "
                         f"{self.names}")

    @classmethod
    def from_config(cls, model_cfg: Mapping[str, Any] | None, *,
                    num_classes: int | None = 1) -> Routes:
        """`config.model`'s `modalities` and `heads` (other keys are not read).

        `num_classes`: the heads' default (the model's `num_classes`; 1 where only the
        structure matters, as `config.num_classes` is checked elsewhere).

        Raises:
          ValueError: a bad `model.modalities` / `model.heads` entry (see `Modality`, `Head`).
        """
        cfg = _dict(model_cfg or {}, "model")
        mods = Modality.all_from_config(cfg.get("modalities"))
        heads = cfg.get("heads")
        if heads is None or not _dict(heads, "model.heads"):
            raise ValueError(_NO_HEADS)
        names = [m.name for m in mods]
        return cls(mods, tuple(Head.from_config(t, spec, names, num_classes)
                               for t, spec in _dict(heads, "model.heads").items()))


@dataclasses.dataclass(frozen=True)
class PolyViTCfg:
    """The whole `config.model` of a PolyViT, typed (the fields of its flax module).

    Attributes:
      routes: the modalities and heads.
      width, depth, num_heads, mlp_dim: encoder size (D, blocks in all, heads, MLP width or
        None for 4 D), from `variant` and overrides.
      num_modality_layers: L_adapt of PolyViT: of the `depth` blocks, this many run per
        modality before the `depth - num_modality_layers` shared ones (0 <= it < depth).
      dropout, scan, remat_policy, dtype_mm, head_zeroinit, patch_embed, attention_impl: as in
        `vitx.models.vit` (`scan`: the shared encoder only).
      drop_path: stochastic-depth rate of the last block, linear over all `depth` blocks
        (modality layers are blocks 0..num_modality_layers - 1; Huang et al. 2016, Sec. 3).
      attention_dropout: dropout rate on the attention weights. Both in [0, 1), train only.
      gelu: the MLP's GELU, "tanh" (default) or "exact" (timm's ViTs; `layers.GELU_TYPES`).

    Raises:
      ValueError: num_modality_layers out of [0, depth - 1], an unknown remat_policy, a
        drop_path / attention_dropout outside [0, 1).
    """

    routes: Routes
    width: int
    depth: int
    num_heads: int
    num_modality_layers: int = 0
    mlp_dim: int | None = None
    dropout: float = 0.0
    scan: bool = False
    remat_policy: str | None = None
    dtype_mm: Any = "float32"
    head_zeroinit: bool = True
    patch_embed: str = "matmul"
    attention_impl: str = "auto"
    drop_path: float = 0.0
    attention_dropout: float = 0.0
    gelu: str = "tanh"

    def __post_init__(self) -> None:
        if self.gelu not in layers.GELU_TYPES:
            raise ValueError(f"model.gelu={self.gelu!r} is unknown; use one of "
                             f"{layers.GELU_TYPES}")
        nml = self.num_modality_layers
        try:
            n = positive_int(nml, "model.num_modality_layers", minimum=0)
        except ValueError:
            n = -1
        if not 0 <= n < self.depth:
            raise ValueError(f"model.num_modality_layers={nml!r} must be an int in "
                             f"[0, depth - 1 = {self.depth - 1}] (at least one shared block)")
        object.__setattr__(self, "num_modality_layers", n)
        if self.remat_policy is not None and self.remat_policy not in layers.REMAT_POLICIES:
            raise ValueError(f"model.remat_policy={self.remat_policy!r} is unknown; use one of "
                             f"{sorted(layers.REMAT_POLICIES)} or None")
        for key in ("drop_path", "attention_dropout"):
            vit.check_rate(getattr(self, key), f"model.{key}")

    def module_kwargs(self) -> dict[str, Any]:
        """The keyword arguments of the flax module (`routes` split into modalities, heads)."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
               if f.name != "routes"}
        return {"modalities": self.routes.modalities, "heads": self.routes.heads, **out}

    @classmethod
    def from_config(cls, model_cfg: Mapping[str, Any] | None, *,
                    num_classes: int | None = None) -> PolyViTCfg:
        """`config.model` -> a `PolyViTCfg` (schema in the package docstring).

        `num_classes`: the default of the heads' `num_classes`. A missing `variant` is
        "pico"; `variant=None` needs width, depth and num_heads.

        Raises:
          ValueError: one line naming the config key and the fix (unknown option, a variant with
            a patch part, a bad modality / head, num_modality_layers out of [0, depth - 1]).
        """
        cfg = _dict(model_cfg or {}, "model")
        variant = cfg.pop("variant", "pico")
        routes_cfg = {"modalities": cfg.pop("modalities", None), "heads": cfg.pop("heads", None)}
        num_modality_layers = cfg.pop("num_modality_layers", 0)
        unknown = sorted(set(cfg) - set(VIT_KW))
        if unknown:
            raise ValueError(f"model.{unknown[0]} is not a polyvit option; use variant, "
                             f"modalities, heads, num_modality_layers or one of {list(VIT_KW)}")
        size = vit.decode_variant(variant)
        if "patch_size" in size:
            raise ValueError(f"model.variant={variant!r} has a patch part; polyvit takes a size "
                             f"only (e.g. {variant.split('/')[0]!r}) and patch sizes per modality "
                             f"in model.modalities")
        args = {**size, **cfg}
        missing = [k for k in ("width", "depth", "num_heads") if k not in args]
        if missing:
            raise ValueError(f"model.{missing[0]} is not set; give model.variant (one of "
                             f"{list(vit.WIDTHS)}) or width, depth and num_heads")
        routes = Routes.from_config(routes_cfg, num_classes=num_classes)
        return cls(routes=routes, num_modality_layers=num_modality_layers, **args)


def num_tokens(model_cfg: Mapping[str, Any], modality: str) -> int:
    """Tokens the encoder sees for `modality`: prod(grid) + 1 (cls).

    Image / audio (H/ph)(W/pw) + 1; video (T/t)(H/ph)(W/pw) + 1 (ViViT Sec. 3.2).

    Raises:
      ValueError: a bad `model.modalities` or an unknown `modality`.
    """
    mods = {m.name: m for m in Modality.all_from_config(
        _dict(model_cfg, "model").get("modalities"))}
    if modality not in mods:
        raise ValueError(f"modality={modality!r} is not in model.modalities; use one of "
                         f"{list(mods)}")
    return mods[modality].num_tokens


def check_input(model_cfg: Mapping[str, Any], shape: Sequence[int] | None) -> None:
    """Validate `model.modalities` / `model.heads`, and that `shape` is one modality's input.

    `shape` is one example's shape without batch ((H, W, C) or (T, H, W, C)) of a task's data,
    or None (then only the config is checked). It must equal some modality's `input_shape`: the
    learned posembs are sized by it (PolyViT, method section).

    Raises:
      ValueError: a bad `model.modalities` / `model.heads` entry (see `Model`), or `shape`
        matching no `model.modalities.<m>.input_shape`.
    """
    routes = Routes.from_config(model_cfg, num_classes=1)  # num_classes is config.num_classes
    if shape is None:
        return
    shape = tuple(int(s) for s in shape)
    if not any(shape == m.input_shape for m in routes.modalities):
        have = {m.name: m.input_shape for m in routes.modalities}
        raise ValueError(f"data example shape {shape} (made by input.pp) is no "
                         f"model.modalities.<m>.input_shape ({have}); set that modality's "
                         f"input_shape to {shape} or change the preprocessing")
