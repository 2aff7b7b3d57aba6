"""Configs: load `file.py[:arg]`, apply `--config.a.b=value` overrides, validate.

A config file defines `get_config(arg: str | None = None) -> ml_collections.ConfigDict`, as in
big_vision and scenic. Every error here is a `ConfigError` with a one-line message naming the key,
file or value and the fix; the CLI prints it as `vitx: error: ...` and exits with status 2.
"""

from __future__ import annotations

import ast
import difflib
import importlib.util
import json
import os
from collections.abc import Iterable, Sequence
from typing import Any

import ml_collections


class ConfigError(ValueError):
    """A bad config: the message names the key/file/value and the fix."""


def load_config(spec: str) -> ml_collections.ConfigDict:
    """Load `path/to/config.py[:arg]` by calling its `get_config(arg)`.

    Raises:
      ConfigError: the file does not exist or has no `get_config`.
    """
    path, _, arg = spec.partition(":")
    if not os.path.isfile(path):
        raise ConfigError(f"--config {path!r}: no such file; pass a config file such as "
                          f"configs/vit_digits.py")
    module_spec = importlib.util.spec_from_file_location(
        f"vitx_config_{abs(hash(path))}", path)
    assert module_spec and module_spec.loader
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    if not hasattr(module, "get_config"):
        raise ConfigError(f"--config {path!r} has no get_config(arg) function; define one that "
                          f"returns an ml_collections.ConfigDict")
    config = module.get_config(arg or None) if arg else module.get_config()
    if not isinstance(config, ml_collections.ConfigDict):
        config = ml_collections.ConfigDict(config)
    return config


def _parse_value(text: str) -> Any:
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        if text in ("true", "True"):
            return True
        if text in ("false", "False"):
            return False
        if text in ("none", "None", "null"):
            return None
        return text  # a bare string, e.g. --config.model.variant=S/16


def _unknown_key(key: str, parent: Any, part: str, source: str) -> ConfigError:
    known = sorted(parent.keys()) if hasattr(parent, "keys") else []
    close = difflib.get_close_matches(part, known, n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    return ConfigError(f"unknown config key {key!r} ({source}); {hint}known keys here: "
                       f"{', '.join(known)}")


def set_value(config: ml_collections.ConfigDict, key: str, value: Any,
              source: str = "--config override") -> None:
    """Set dotted `key` (e.g. "model.variant") to `value`, refusing unknown keys.

    The value is converted to the type of the existing field (int -> float, list -> tuple).

    Raises:
      ConfigError: the key does not exist, or the value has the wrong type.
    """
    parts = key.split(".")
    node: Any = config
    for i, part in enumerate(parts[:-1]):
        if not isinstance(node, ml_collections.ConfigDict) or part not in node:
            raise _unknown_key(key, node, part, source)
        node = node[part]
        if node is None:
            raise ConfigError(f"config key {'.'.join(parts[:i + 1])!r} is None; set it as a "
                              f"whole (e.g. --config.{'.'.join(parts[:i + 1])}=...)")
    last = parts[-1]
    if not isinstance(node, ml_collections.ConfigDict) or last not in node:
        raise _unknown_key(key, node, last, source)
    old = node[last]
    if isinstance(old, float) and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if isinstance(old, tuple) and isinstance(value, list):
        value = tuple(value)
    if isinstance(old, ml_collections.ConfigDict) and isinstance(value, dict):
        value = ml_collections.ConfigDict(value)
    try:
        node[last] = value
    except TypeError as e:
        raise ConfigError(f"config key {key!r}: cannot set {value!r} "
                          f"({type(value).__name__}) where a {type(old).__name__} is expected; "
                          f"pass a value like {old!r}") from e


def apply_overrides(config: ml_collections.ConfigDict, overrides: Iterable[str]) -> None:
    """Apply `a.b=value` strings (the part after `--config.`), in order.

    Raises:
      ConfigError: malformed override, unknown key or wrongly typed value.
    """
    for item in overrides:
        key, eq, text = item.partition("=")
        if not eq:
            raise ConfigError(f"override --config.{item!r} has no value; write "
                              f"--config.{key}=VALUE")
        set_value(config, key, _parse_value(text))


def split_argv(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """Split argv into (other args, config override strings without the `--config.` prefix).

    Both `--config.a=1` and `--config.a 1` are accepted.
    """
    rest, overrides = [], []
    it = iter(range(len(argv)))
    for i in it:
        arg = argv[i]
        if arg.startswith("--config."):
            body = arg[len("--config."):]
            if "=" not in body and i + 1 < len(argv):
                body = f"{body}={argv[i + 1]}"
                next(it, None)
            overrides.append(body)
        else:
            rest.append(arg)
    return rest, overrides


REQUIRED_KEYS = ("model_name", "num_classes", "input", "total_steps", "lr", "mesh")


def validate(config: ml_collections.ConfigDict, *, num_devices: int) -> None:
    """Check what can be checked before data and model are built.

    Raises:
      ConfigError: a missing key, an unknown model name, or a batch size not divisible by the
        number of devices.
    """
    from vitx import models  # local: keep `vitx.config` importable without flax

    for key in REQUIRED_KEYS:
        if key not in config:
            raise ConfigError(f"config key {key!r} is missing; add it to the config file")
    if config.model_name not in models.MODELS:
        raise ConfigError(f"model_name={config.model_name!r} does not exist; use one of "
                          f"{sorted(models.MODELS)}")
    bs = config.input.batch_size
    if bs <= 0 or bs % num_devices:
        raise ConfigError(f"input.batch_size={bs} is not divisible by the {num_devices} devices; "
                          f"use a positive multiple of {num_devices}")
    for name, ev in (config.get("evals") or {}).items():
        ebs = ev.get("batch_size", bs)
        if ebs <= 0 or ebs % num_devices:
            raise ConfigError(f"evals.{name}.batch_size={ebs} is not divisible by the "
                              f"{num_devices} devices; use a positive multiple of {num_devices}")
    accum = config.get("grad_accum_steps", 1)
    if accum < 1 or bs % (accum * num_devices):
        raise ConfigError(f"grad_accum_steps={accum}: input.batch_size={bs} must be divisible by "
                          f"grad_accum_steps * devices = {accum * num_devices}")


def validate_image_size(config: ml_collections.ConfigDict, image_hw: tuple[int, int]) -> None:
    """Check that the model's patch size divides the image size that the input pipeline makes.

    Raises:
      ConfigError: naming `model.variant`/`model.patch_size` and the sizes that would work.
    """
    from vitx.models.vit import decode_variant

    model_cfg = config.get("model") or {}
    ps = model_cfg.get("patch_size") or decode_variant(model_cfg.get("variant")).get("patch_size")
    if ps is None:
        return
    ph, pw = (ps, ps) if isinstance(ps, int) else tuple(ps)
    h, w = image_hw
    if h % ph or w % pw:
        divisors = [p for p in range(1, min(h, w) + 1) if h % p == 0 and w % p == 0]
        raise ConfigError(
            f"model patch size {ph}x{pw} (model.variant={model_cfg.get('variant')!r}, "
            f"model.patch_size={model_cfg.get('patch_size')!r}) does not divide the image size "
            f"{h}x{w} made by input.pp; use a patch size in {divisors} or change the resize")


def to_json(config: ml_collections.ConfigDict) -> str:
    """The resolved config as JSON (the file saved as `config.json` in the workdir)."""
    return json.dumps(config.to_dict(), indent=2, sort_keys=True, default=str)
