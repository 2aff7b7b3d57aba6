"""The grid language of `vitx sweep`: big_vision-style `h.sweep / h.product / h.zip / h.chain`,
`--sweep KEY=[...]` lists and `KEY=range(...)` Optuna distributions, and trial names.

A grid is a list of points, each a {"config.key": value} dict (big_vision / scenic `hyper`
style); a search space maps keys to `optuna.distributions` objects.
"""

from __future__ import annotations

import ast
import hashlib
import inspect
import itertools
import json
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from vitx.utils import ConfigError, load_module

__all__ = ["RANGES", "Hyper", "SweepError", "grid_from_config", "grid_from_sweeps",
           "parse_sweep", "strip_key", "trial_name", "unique_names"]

#: The range functions `--sweep KEY=RANGE(...)` understands.
RANGES = ("uniform", "loguniform", "int", "logint", "choice")
_SAFE = re.compile(r"[^A-Za-z0-9._=,+\-]")


class SweepError(ConfigError):
    """A bad sweep argument or study: the message names the argument and the fix."""


def strip_key(key: str) -> str:
    """`config.model.width` -> `model.width` (the `--config.` override key)."""
    key = key.strip()
    return key[len("config."):] if key.startswith("config.") else key


def _as_sweeps(sweeps: tuple[Any, ...], what: str) -> list[list[dict[str, Any]]]:
    """`(s1, s2)` or `([s1, s2],)` -> [s1, s2], each a list of {key: value} dicts."""
    if len(sweeps) == 1 and isinstance(sweeps[0], list | tuple) and sweeps[0] and all(
            isinstance(s, list | tuple) for s in sweeps[0]):
        sweeps = tuple(sweeps[0])
    out = []
    for s in sweeps:
        if not isinstance(s, list | tuple) or not all(isinstance(p, Mapping) for p in s):
            raise SweepError(f"h.{what}(...): {s!r} is not a sweep; pass sweeps such as "
                             f"h.sweep('config.lr', [1e-3, 3e-4])")
        out.append([dict(p) for p in s])
    return out


def _merge(points: Iterable[Mapping[str, Any]], what: str) -> dict[str, Any]:
    merged: dict[str, Any] = {}
    for p in points:
        for k, v in p.items():
            if k in merged:
                raise SweepError(f"h.{what}(...): key {k!r} is swept twice; sweep each key in "
                                 f"one h.sweep only")
            merged[k] = v
    return merged


class Hyper:
    """The `h` a config's `get_hyper(h)` gets: grids as lists of {"config.key": value} dicts
    (big_vision / scenic `hyper` style).

    Example: `h.product([h.sweep("config.lr", [1e-3, 3e-4]), h.zip([h.sweep("config.wd",
    [0.0, 0.1]), h.sweep("config.seed", [0, 1])])])` -> 4 points.
    """

    @staticmethod
    def sweep(key: str, values: Iterable[Any]) -> list[dict[str, Any]]:
        """One point per value: [{key: v1}, {key: v2}, ...].

        Raises:
          SweepError: no values, or `key` is not a string.
        """
        values = list(values)
        if not isinstance(key, str) or not key:
            raise SweepError(f"h.sweep({key!r}, ...): the key must be a config key such as "
                             f"'config.lr'")
        if not values:
            raise SweepError(f"h.sweep({key!r}, []): no values; pass at least one")
        return [{key: v} for v in values]

    @staticmethod
    def fixed(key: str, value: Any, length: int = 1) -> list[dict[str, Any]]:
        """`length` copies of {key: value} (to zip a constant along a sweep)."""
        return [{key: value} for _ in range(length)]

    @staticmethod
    def product(*sweeps: Any) -> list[dict[str, Any]]:
        """Every combination, the last sweep varying fastest (like itertools.product).

        Raises:
          SweepError: an argument is not a sweep, or a key appears in two sweeps.
        """
        return [_merge(c, "product") for c in itertools.product(*_as_sweeps(sweeps, "product"))]

    @staticmethod
    def zip(*sweeps: Any) -> list[dict[str, Any]]:
        """Point i of every sweep together; all sweeps must have the same length.

        Raises:
          SweepError: sweeps of different lengths, or a key appears in two sweeps.
        """
        lists = _as_sweeps(sweeps, "zip")
        if len({len(s) for s in lists}) > 1:
            raise SweepError(f"h.zip(...): sweeps of lengths {[len(s) for s in lists]}; zip "
                             f"needs equal lengths (use h.product for all combinations)")
        return [_merge(c, "zip") for c in zip(*lists, strict=True)]

    @staticmethod
    def chain(*sweeps: Any) -> list[dict[str, Any]]:
        """The points of each sweep, one sweep after the other."""
        return [p for s in _as_sweeps(sweeps, "chain") for p in s]


def _literal(text: str) -> Any:
    """A Python literal, or the bare text (e.g. `S/16`)."""
    text = text.strip()
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return {"true": True, "false": False, "none": None, "null": None}.get(text.lower(),
                                                                             text)


def _split_args(body: str) -> list[Any]:
    """`1e-3, 'a,b', [1,2]` -> [0.001, 'a,b', [1, 2]] (commas inside quotes/brackets kept)."""
    try:
        value = ast.literal_eval(f"({body},)")
        return list(value)
    except (ValueError, SyntaxError):
        return [_literal(t) for t in body.split(",") if t.strip()]


def parse_sweep(text: str) -> tuple[str, Any]:
    """One `--sweep` argument: `KEY=[v1,v2]` -> (key, [v1, v2]); `KEY=range(...)` -> (key, an
    Optuna distribution). KEY may start with `config.`, which is dropped.

    Ranges: `uniform(a,b)`, `loguniform(a,b)` (0 < a < b), `int(a,b)`, `logint(a,b)` (1 <= a <
    b), `choice(v1,v2,...)` (numbers, strings, bools, None).

    Raises:
      SweepError: not `KEY=...`, not a list or a known range, or bad bounds.
    """
    import optuna.distributions as od

    key, eq, body = text.partition("=")
    key, body = strip_key(key), body.strip()
    example = "e.g. --sweep 'config.lr=[1e-3,3e-4]' or --sweep 'config.lr=loguniform(1e-4,1e-2)'"
    if not eq or not key or not body:
        raise SweepError(f"--sweep {text!r}: expected KEY=[v1,v2,...] or KEY=RANGE; {example}")
    if body.startswith("[") and body.endswith("]"):
        values = _split_args(body[1:-1])
        if not values:
            raise SweepError(f"--sweep {text!r}: the list is empty; give at least one value")
        return key, values
    m = re.fullmatch(r"([A-Za-z_]\w*)\((.*)\)", body, re.S)
    if not m:
        raise SweepError(f"--sweep {text!r}: {body!r} is neither a list [v1,v2,...] nor a range "
                         f"{'/'.join(RANGES)}(...); {example} (fixed values go in "
                         f"--config.{key}=VALUE)")
    fn, args = m[1], _split_args(m[2])
    if fn not in RANGES:
        raise SweepError(f"--sweep {text!r}: unknown range {fn!r}; use one of "
                         f"{', '.join(RANGES)}")
    if fn == "choice":
        if not args or not all(a is None or isinstance(a, bool | int | float | str)
                               for a in args):
            raise SweepError(f"--sweep {text!r}: choice(...) needs one or more numbers, strings, "
                             f"bools or None; list other values as a grid KEY=[...]")
        return key, od.CategoricalDistribution(tuple(args))
    is_int = fn in ("int", "logint")
    log = fn.startswith("log")
    kinds = int if is_int else int | float
    if len(args) != 2 or not all(isinstance(a, kinds) and not isinstance(a, bool) for a in args):
        want = "two ints" if is_int else "two numbers"
        raise SweepError(f"--sweep {text!r}: {fn}(low, high) takes {want}; e.g. {key}={fn}"
                         f"({'1, 8' if is_int else '1e-4, 1e-2'})")
    low, high = args
    if not low < high or (log and low <= 0) or (fn == "logint" and low < 1):
        floor = ">= 1" if fn == "logint" else "> 0" if log else ""
        raise SweepError(f"--sweep {text!r}: needs low < high{' and low ' + floor if floor else ''}"
                         f"; got low={low}, high={high}")
    if is_int:
        return key, od.IntDistribution(int(low), int(high), log=log)
    return key, od.FloatDistribution(float(low), float(high), log=log)


def grid_from_sweeps(items: Sequence[tuple[str, list[Any]]]) -> list[dict[str, Any]]:
    """The product of `--sweep KEY=[...]` lists, as a list of {key: value} points."""
    return Hyper.product(*[Hyper.sweep(k, v) for k, v in items])


def _format_value(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, str):
        return v
    return repr(v)


def trial_name(overrides: Mapping[str, Any]) -> str:
    """A filesystem-safe workdir name from a trial's overrides: {"lr": 1e-3, "wd": 0.1} ->
    `lr=0.001,wd=0.1`. Floats keep 4 significant digits; characters other than letters,
    digits and `._=,+-` become `_`; names over 100 characters are cut and end in a hash."""
    raw = ",".join(f"{k}={_format_value(v)}" for k, v in overrides.items())
    name = _SAFE.sub("_", raw) or "default"
    if len(name) > 100:
        digest = hashlib.sha1(raw.encode()).hexdigest()[:8]
        name = f"{name[:90]}-{digest}"
    return name


def unique_names(points: Sequence[Mapping[str, Any]]) -> list[str]:
    """Trial names for grid points; points whose names collide get a hash of their values.

    Raises:
      SweepError: two points are equal.
    """
    names = [trial_name(p) for p in points]
    for i, name in enumerate(names):
        if names.count(name) > 1:
            exact = json.dumps(list(points[i].items()), default=repr)
            names[i] = f"{name}-{hashlib.sha1(exact.encode()).hexdigest()[:6]}"
    if len(set(names)) < len(names):
        dup = sorted({n for n in names if names.count(n) > 1})
        raise SweepError(f"the grid has repeated points ({', '.join(dup)}); list each value "
                         f"once")
    return names


def grid_from_config(spec: str) -> list[dict[str, Any]] | None:
    """The grid of the config file's `get_hyper(h)` (None: the file has none). `get_hyper`
    may take a second argument, the config argument string after `:`.

    Raises:
      SweepError: the file is missing, or get_hyper returns something that is not a grid.
    """
    path, _, arg = spec.partition(":")
    if not os.path.isfile(path):
        raise SweepError(f"--config {path!r}: no such file; pass a config file such as "
                         f"configs/vit_digits.py")
    module = load_module(path, "vitx_sweep")
    fn = getattr(module, "get_hyper", None)
    if fn is None:
        return None
    n_params = len(inspect.signature(fn).parameters)
    points = fn(Hyper) if n_params < 2 else fn(Hyper, arg or None)
    if (not isinstance(points, list | tuple) or not points
            or not all(isinstance(p, Mapping) for p in points)):
        raise SweepError(f"get_hyper(h) in {path} returned {type(points).__name__}; return a "
                         f"non-empty list of points such as h.product([h.sweep('config.lr', "
                         f"[1e-3, 3e-4])])")
    return [dict(p) for p in points]
