"""Configs: load `file.py[:arg]`, apply `--config.a.b=value` overrides, validate.

A config file defines `get_config(arg: str | None = None) -> ml_collections.ConfigDict`, as in
big_vision and scenic. Every error here is a `ConfigError` with a one-line message naming the key,
file or value and the fix; the CLI prints it as `vitx: error: ...` and exits with status 2.
"""

from __future__ import annotations

import ast
import difflib
import json
import math
import os
from collections.abc import Iterable, Sequence
from typing import Any

import ml_collections

from vitx.utils import (
    ConfigError,  # noqa: F401 - re-exported: vitx.config.ConfigError
    load_module,
)


def load_config(spec: str) -> ml_collections.ConfigDict:
    """Load `path/to/config.py[:arg]` by calling its `get_config(arg)`.

    `arg` is the raw string after the first ':' (e.g. "variant=S/16,steps=200,quick"); config
    files parse it with `parse_arg`.

    Raises:
      ConfigError: the file does not exist, has no `get_config`, or rejects `arg`.
    """
    path, _, arg = spec.partition(":")
    if not os.path.isfile(path):
        raise ConfigError(f"--config {path!r}: no such file; pass a config file such as "
                          f"configs/vit_digits.py")
    module = load_module(path, "vitx_config")
    if not hasattr(module, "get_config"):
        raise ConfigError(f"--config {path!r} has no get_config(arg) function; define one that "
                          f"returns an ml_collections.ConfigDict")
    try:
        config = module.get_config(arg or None) if arg else module.get_config()
    except ConfigError as e:
        raise ConfigError(f"--config {spec!r}: {e}") from None
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


def _convert(key: str, text: str, default: Any) -> Any:
    """`text` as the type of `default` (bool, int, float, str; else a Python literal)."""
    try:
        if isinstance(default, bool):
            if text.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError(text)
            return text.lower() in ("true", "1", "yes")
        if isinstance(default, int):
            return int(text)
        if isinstance(default, float):
            return float(text)
        if isinstance(default, str):
            return text
    except ValueError:
        raise ConfigError(f"config argument {key}={text!r} is not a {type(default).__name__}; "
                          f"pass a value like {key}={default!r}") from None
    return _parse_value(text)


def parse_arg(arg: str | None, *, positional: str | None = None, choices: Sequence[str] = (),
              **spec: Any) -> ml_collections.ConfigDict:
    """Parse a config file's argument `key=value,flag,...` into a ConfigDict (big_vision's
    `bvcc.parse_arg`).

    `spec` gives every known argument with its default; a value is converted to its default's
    type (bool, int, float, str; other defaults take a Python literal). A bare `flag` sets a bool
    argument to True. With `positional`, a bare word that is not a flag sets that argument (e.g.
    `transfer_digits.py:finetune32` -> mode="finetune32"), checked against `choices` if given.
    Example: `parse_arg("variant=S/16,steps=200,quick", variant="mu/8", steps=1000,
    quick=False)` -> {variant: "S/16", steps: 200, quick: True}.

    Raises:
      ConfigError: an unknown argument (the message lists the known ones), a value of the wrong
        type, or a positional value outside `choices`.
    """
    out = ml_collections.ConfigDict(dict(spec))
    known = ", ".join(f"{k}={v!r}" for k, v in spec.items())
    for token in filter(None, (t.strip() for t in (arg or "").split(","))):
        key, eq, text = token.partition("=")
        if eq and key in spec:
            out[key] = _convert(key, text, spec[key])
        elif not eq and isinstance(spec.get(key), bool):
            out[key] = True
        elif not eq and positional is not None:
            if choices and token not in choices:
                raise ConfigError(f"config argument {token!r} is unknown; use one of "
                                  f"{', '.join(choices)} (or key=value with keys: {known})")
            out[positional] = token
        else:
            raise ConfigError(f"config argument {token!r} is unknown; known arguments (with "
                              f"defaults): {known}")
    return out


#: Top-level keys the trainer reads with a default when a config file lacks them; overrides may
#: set them anyway (e.g. `--config.skip_nonfinite_updates=True`).
OPTIONAL_KEYS: dict[str, Any] = {"skip_nonfinite_updates": False, "profile": None,
                                 "compilation_cache": "auto"}


def set_value(config: ml_collections.ConfigDict, key: str, value: Any,
              source: str = "--config override") -> None:
    """Set dotted `key` (e.g. "model.variant") to `value`, refusing unknown keys (except the
    `OPTIONAL_KEYS`, added with their default first).

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
    if len(parts) == 1 and last in OPTIONAL_KEYS and last not in config:
        config[last] = OPTIONAL_KEYS[last]  # a key the trainer reads with a default
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


REQUIRED_KEYS = ("model_name", "lr", "mesh")
#: Single-task configs also need these; multi-task ones have `multitask.tasks` instead.
SINGLE_TASK_KEYS = ("num_classes", "input", "total_steps")


def _get(config: ml_collections.ConfigDict, key: str) -> Any:
    node: Any = config
    for part in key.split("."):
        if not hasattr(node, "get"):
            return None
        node = node.get(part)
    return node


def _check_number(config: ml_collections.ConfigDict, key: str, *, lo: float | None = None,
                  above: bool = False, integer: bool = False, none_ok: bool = True) -> None:
    """`config.<key>` (dotted) is a finite int/float (an int if `integer`) >= `lo` (> if
    `above`), or None / absent when `none_ok`.

    Raises:
      ConfigError: naming the key, the value and what it must be.
    """
    value = _get(config, key)
    if value is None and none_ok:
        return
    kind = "an int" if integer else "a number"
    bound = "" if lo is None else f" {'>' if above else '>='} {lo:g}"
    ok = (isinstance(value, int | float) and not isinstance(value, bool)
          and (not integer or isinstance(value, int)) and math.isfinite(value)
          and (lo is None or (value > lo if above else value >= lo)))
    if not ok:
        raise ConfigError(f"{key}={value!r} must be {kind}{bound}"
                          f"{' (or None)' if none_ok else ''}; fix it in the config or with "
                          f"--config.{key}=...")


def _check_profile(config: ml_collections.ConfigDict) -> None:
    """`profile` is None or dict(start_step=int >= 0, num_steps=int >= 1); `compilation_cache`
    is "auto", a folder or None (see `vitx.train.profiling`).

    Raises:
      ConfigError: naming the key, the value and the fix.
    """
    prof = config.get("profile")
    if prof is not None:
        if not hasattr(prof, "keys") or set(prof.keys()) != {"start_step", "num_steps"}:
            shown = prof.to_dict() if isinstance(prof, ml_collections.ConfigDict) else prof
            raise ConfigError(f"profile={shown!r} must be None or dict(start_step=S, "
                              f"num_steps=N); fix it in the config or with "
                              f"--config.profile=\"{{'start_step': 2, 'num_steps': 3}}\"")
        _check_number(config, "profile.start_step", lo=0, integer=True, none_ok=False)
        _check_number(config, "profile.num_steps", lo=1, integer=True, none_ok=False)
    cache = config.get("compilation_cache", "auto")
    if cache is not None and (not isinstance(cache, str) or not cache):
        raise ConfigError(f"compilation_cache={cache!r} must be 'auto', a folder or None; fix "
                          f"it in the config or with --config.compilation_cache=None (off)")


def validate(config: ml_collections.ConfigDict, *, num_devices: int) -> None:
    """Check what can be checked before data and model are built.

    Raises:
      ConfigError: a missing key, a value of the wrong type or out of range (lr, wd, step
        counts and frequencies, num_classes, profile, compilation_cache, ...), or a batch size
        not divisible by the number of devices.
    """
    multi = bool(config.get("multitask"))
    for key in REQUIRED_KEYS + (() if multi else SINGLE_TASK_KEYS):
        if key not in config:
            raise ConfigError(f"config key {key!r} is missing; add it to the config file")
    _check_number(config, "lr", lo=0, none_ok=False)
    for key in ("wd", "grad_clip_norm", "total_epochs"):
        _check_number(config, key, lo=0)
    for key in ("total_steps", "eval_every_steps", "checkpoint.every_steps",
                "schedule.warmup_steps"):
        _check_number(config, key, lo=0, integer=True)
    for key in ("log_every_steps", "checkpoint.keep", "grad_accum_steps"):
        _check_number(config, key, lo=1, integer=True)
    _check_number(config, "seed", integer=True)
    if not multi:
        _check_number(config, "num_classes", lo=1, integer=True)
    skip = config.get("skip_nonfinite_updates", False)
    if not isinstance(skip, bool):
        raise ConfigError(f"skip_nonfinite_updates={skip!r} must be True or False")
    _check_profile(config)
    if multi:
        sizes = {f"multitask.tasks[{i}].input.batch_size": t["input"]["batch_size"]
                 for i, t in enumerate(config.multitask.tasks)}
    else:
        sizes = {"input.batch_size": config.input.batch_size}
    for key, bs in sizes.items():
        if not isinstance(bs, int) or isinstance(bs, bool):
            raise ConfigError(f"{key}={bs!r} must be an int; use a positive multiple of "
                              f"{num_devices}")
        if bs <= 0 or bs % num_devices:
            raise ConfigError(f"{key}={bs} is not a positive multiple of the {num_devices} "
                              f"devices; use a positive multiple of {num_devices}")
    default_bs = next(iter(sizes.values()))
    for name, ev in (config.get("evals") or {}).items():
        ebs = ev.get("batch_size", default_bs)
        if ebs <= 0 or ebs % num_devices:
            raise ConfigError(f"evals.{name}.batch_size={ebs} is not divisible by the "
                              f"{num_devices} devices; use a positive multiple of {num_devices}")
    accum = config.get("grad_accum_steps", 1)
    for key, bs in sizes.items():
        if accum < 1 or bs % (accum * num_devices):
            raise ConfigError(f"grad_accum_steps={accum}: {key}={bs} must be divisible by "
                              f"grad_accum_steps * devices = {accum * num_devices}")


def to_json(config: ml_collections.ConfigDict) -> str:
    """The resolved config as JSON (the file saved as `config.json` in the workdir)."""
    return json.dumps(config.to_dict(), indent=2, sort_keys=True, default=str)


#: Keys whose values fix the structure of the params or of the optimizer state: the checkpoints
#: of a workdir resume only under the same values (`check_resume`).
RESUME_FIXED_KEYS = ("model_name", "model", "num_classes", "optax_name", "optax", "lr_mults",
                     "grad_clip_norm")
#: Keys that may change between the runs of one workdir (how long and how often, where data is).
RESUME_FREE_KEYS = ("total_steps", "total_epochs", "log_every_steps", "eval_every_steps",
                    "checkpoint", "data_dir", "evals", "skip_nonfinite_updates", "profile",
                    "compilation_cache")


def flat_config(config: Any, prefix: str = "") -> dict[str, Any]:
    """A config (ConfigDict or JSON dict) as {dotted key: JSON value} (tuples become lists)."""
    if isinstance(config, ml_collections.ConfigDict):
        config = config.to_dict()
    out: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict | ml_collections.ConfigDict):
            out.update(flat_config(value, name + "."))
        else:
            out[name] = json.loads(json.dumps(value, default=str))
    return out


def changed_keys(old: Any, new: Any, only: Sequence[str] | None = None,
                 skip: Sequence[str] = ()) -> list[tuple[str, Any, Any]]:
    """[(dotted key, old value, new value)] where two configs differ (absent == None).

    `only` / `skip`: top-level keys or dotted prefixes to restrict to / leave out.
    """
    a, b = flat_config(old), flat_config(new)

    def under(key: str, prefixes: Sequence[str]) -> bool:
        return any(key == p or key.startswith(p + ".") for p in prefixes)
    return [(k, a.get(k), b.get(k)) for k in sorted(a.keys() | b.keys())
            if a.get(k) != b.get(k) and (only is None or under(k, only))
            and not under(k, skip)]


def format_changes(changes: Sequence[tuple[str, Any, Any]], limit: int = 6,
                   width: int = 40) -> str:
    """'key old -> new, ...' of `changed_keys`: at most `limit` entries, values cut to about
    `width` characters around where they first differ."""
    def short(text: str, start: int) -> str:
        head = "..." if start else ""
        tail = "..." if len(text) > start + width else ""
        return head + text[start:start + width] + tail

    items = []
    for key, a, b in changes[:limit]:
        ta, tb = json.dumps(a, default=str), json.dumps(b, default=str)
        common = len(os.path.commonprefix([ta, tb]))
        start = max(0, common - 8) if max(len(ta), len(tb)) > width else 0
        items.append(f"{key} {short(ta, start)} -> {short(tb, start)}")
    if len(changes) > limit:
        items.append(f"and {len(changes) - limit} more")
    return ", ".join(items)


def check_resume(old: Any, new: Any, where: str) -> None:
    """Refuse to resume `where` (a workdir whose checkpoints were made under config `old`)
    with config `new` when a key of `RESUME_FIXED_KEYS` differs.

    Raises:
      ConfigError: naming the differing keys (old -> new) and the fix.
    """
    changes = changed_keys(old, new, only=RESUME_FIXED_KEYS)
    if changes:
        raise ConfigError(
            f"workdir {where} holds checkpoints of another model or optimizer: "
            f"{format_changes(changes)}; revert these keys to resume it, or train in a new "
            f"--workdir (model_init={where} fine-tunes from its params)")

