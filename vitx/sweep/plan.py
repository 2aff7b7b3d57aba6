"""The sweep plan: what a sweep runs (a grid or a search space), parsed once from the command
line and the config file's `get_hyper(h)`, and checked against the config before any training.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal, cast

from vitx import config as config_lib
from vitx.sweep.grid import (
    SweepError,
    grid_from_config,
    grid_from_sweeps,
    parse_sweep,
    strip_key,
    unique_names,
)

__all__ = ["SweepPlan", "make_plan"]

Kind = Literal["grid", "random", "tpe"]
Direction = Literal["maximize", "minimize"]
_SCALARS = bool | int | float | str


@dataclasses.dataclass(frozen=True)
class SweepPlan:
    """What a sweep runs: a grid (points and their trial names) or a search space (Optuna
    distributions and a number of trials).

    Attributes:
      config: the config spec `path/to/config.py[:arg]`.
      base_overrides: `key=value` overrides applied to every trial.
      kind: "grid", "random" or "tpe".
      points: grid points, each {config key (without `config.`): value}.
      names: the trial (workdir) name of each grid point, unique.
      space: search space, {config key: optuna distribution}.
      trials: trials in all for a search (0 for a grid).
      metric: the `results.json` key optimised.
      direction: "maximize" or "minimize".

    Raises (on construction):
      SweepError: an empty search space, a search without trials, a search choice that is
        not a number / string / bool / None, names that do not match the points, or a key
        both swept and fixed.
    """

    config: str
    base_overrides: tuple[str, ...]
    kind: Kind
    points: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    names: list[str] = dataclasses.field(default_factory=list)
    space: dict[str, Any] = dataclasses.field(default_factory=dict)
    trials: int = 0
    metric: str = "test/accuracy"
    direction: Direction = "maximize"

    def __post_init__(self) -> None:
        import optuna.distributions as od

        object.__setattr__(self, "base_overrides", tuple(self.base_overrides))
        if self.kind not in ("grid", "random", "tpe"):
            raise SweepError(f"--search {self.kind}: use grid, random or tpe")
        if self.direction not in ("maximize", "minimize"):
            raise SweepError(f"--direction {self.direction}: use maximize or minimize")
        if self.kind == "grid":
            if not self.points or len(self.names) != len(self.points) or len(
                    set(self.names)) < len(self.names):
                raise SweepError("a grid needs one unique trial name per point; build the plan "
                                 "with make_plan(...)")
        else:
            if not self.space:
                raise SweepError(f"--search {self.kind}: no search space; pass ranges such as "
                                 f"--sweep 'config.lr=loguniform(1e-4,1e-2)'")
            if self.trials < 1:
                raise SweepError(f"--search {self.kind} needs --trials N (N >= 1): how many "
                                 f"trials in all")
            for k, d in self.space.items():
                if isinstance(d, od.CategoricalDistribution) and not all(
                        c is None or isinstance(c, _SCALARS) for c in d.choices):
                    raise SweepError(f"--sweep {k}=[...]: a search takes choices that are "
                                     f"numbers, strings, bools or None; sweep other values as a "
                                     f"grid")
        fixed = {o.partition("=")[0] for o in self.base_overrides}
        both = sorted(fixed & set(self.keys))
        if both:
            raise SweepError(f"{both[0]} is both swept (--sweep/get_hyper) and fixed "
                             f"(--config.{both[0]}=...); drop one of them")

    @classmethod
    def from_args(cls, *, config: str, sweeps: Sequence[str], overrides: Sequence[str] = (),
                  search: str | None = None, trials: int | None = None,
                  metric: str = "test/accuracy", direction: str | None = None) -> SweepPlan:
        """Parse `--sweep` arguments (or the config's `get_hyper`) into a plan, then apply the
        overrides and each grid point (or each end of every range) to the config, so that a
        typo fails before any training.

        Raises:
          SweepError / ConfigError: a malformed `--sweep`, unknown config keys, a range
            without `--search`, `--search` without `--trials`, or a key both swept and fixed.
        """
        direction = direction or ("minimize" if re.search(r"loss|err", metric) else "maximize")
        items = [parse_sweep(s) for s in sweeps]
        keys = [k for k, _ in items]
        if len(set(keys)) < len(keys):
            dup = sorted({k for k in keys if keys.count(k) > 1})
            raise SweepError(f"--sweep: {', '.join(dup)} swept twice; give each key one --sweep")
        if search in (None, "grid"):
            plan = cls._grid(config, items, overrides, trials, metric, direction)
            _check_overrides(config, overrides, plan.points, "--sweep / get_hyper")
        else:
            import optuna.distributions as od

            space = {k: (od.CategoricalDistribution(tuple(v)) if isinstance(v, list) else v)
                     for k, v in items}
            plan = cls(config, tuple(overrides), cast(Kind, search), space=space,
                       trials=trials or 0, metric=metric, direction=cast(Direction, direction))
            corners = [{k: _corner(d, i) for k, d in plan.space.items()} for i in (0, -1)]
            _check_overrides(config, overrides, corners, "--sweep")
        return plan

    @classmethod
    def _grid(cls, config: str, items: Sequence[tuple[str, Any]], overrides: Sequence[str],
              trials: int | None, metric: str, direction: str) -> SweepPlan:
        """The grid plan of `--sweep KEY=[...]` lists, or else of the config's `get_hyper`."""
        ranges = [k for k, v in items if not isinstance(v, list)]
        if ranges:
            raise SweepError(f"--sweep {ranges[0]}=... is a range; add --search random or "
                             f"--search tpe with --trials N (a grid takes lists KEY=[v1,v2])")
        if trials is not None:
            raise SweepError("--trials is for --search random|tpe; a grid runs every point "
                             "(use --max-trials to stop early)")
        if items:
            points = grid_from_sweeps(items)
        else:
            found = grid_from_config(config)
            if found is None:
                raise SweepError(f"nothing to sweep: pass --sweep 'config.lr=[1e-3,3e-4]' or "
                                 f"define get_hyper(h) in {config.partition(':')[0]}")
            points = found
        points = [{strip_key(k): v for k, v in p.items()} for p in points]
        return cls(config, tuple(overrides), "grid", points=points, names=unique_names(points),
                   metric=metric, direction=cast(Direction, direction))

    @property
    def keys(self) -> list[str]:
        """The swept config keys, in order of first appearance."""
        if self.kind == "grid":
            return list(dict.fromkeys(k for p in self.points for k in p))
        return list(self.space)

    def point(self, name: str) -> dict[str, Any]:
        """The grid point of trial `name`."""
        return self.points[self.names.index(name)]

    def definition(self) -> str:
        """What must match for a re-run or another worker to join the study (not --trials)."""
        space = ([[n, list(p.items())] for n, p in zip(self.names, self.points, strict=True)]
                 if self.kind == "grid" else {k: repr(d) for k, d in self.space.items()})
        fixed = dict(o.partition("=")[::2] for o in self.base_overrides)  # order-free
        return json.dumps({"config": self.config, "overrides": fixed,
                           "kind": self.kind, "space": space, "metric": self.metric},
                          sort_keys=True, default=repr)


def make_plan(*, config: str, sweeps: Sequence[str], overrides: Sequence[str] = (),
              search: str | None = None, trials: int | None = None,
              metric: str = "test/accuracy", direction: str | None = None) -> SweepPlan:
    """Parse and check a sweep: `SweepPlan.from_args` (see there).

    Raises:
      SweepError / ConfigError: a malformed `--sweep`, unknown config keys, a range without
        `--search`, `--search` without `--trials`, or a key both swept and fixed.
    """
    return SweepPlan.from_args(config=config, sweeps=sweeps, overrides=overrides, search=search,
                               trials=trials, metric=metric, direction=direction)


def _check_overrides(config_spec: str, base: Sequence[str],
                     points: Iterable[Mapping[str, Any]], source: str) -> None:
    """Apply the base overrides and each point to the config now, so a typo fails before any
    training (ConfigError names the key)."""
    for point in points:
        config = config_lib.load_config(config_spec)
        config_lib.apply_overrides(config, base)
        for k, v in point.items():
            config_lib.set_value(config, k, v, source=source)


def _corner(dist: Any, i: int) -> Any:
    """The low (i=0) or high (i=-1) end of a distribution (to check its key and type)."""
    if hasattr(dist, "choices"):
        return dist.choices[i]
    return dist.low if i == 0 else dist.high
