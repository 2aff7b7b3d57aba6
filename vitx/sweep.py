"""`vitx sweep`: hyperparameter sweeps (grids, random / TPE searches, pruning) on Optuna.

Every sweep is one Optuna study in a database: by default the SQLite file
`<dir>/study.db`, or any database URL (`--storage postgresql://...`) so that workers on many
machines share one study. Each trial is an independent `vitx train` process with its own
workdir `<dir>/<trial name>`, named by its overrides (e.g. `lr=0.001,wd=0.1`).

  vitx sweep --config configs/vit_digits.py --dir workdirs/sweep \
      --sweep 'config.lr=[1e-3,3e-4]' --sweep 'config.wd=[0.0,0.1]' [--parallel 2]
  vitx sweep --config configs/vit_digits.py --dir workdirs/search --search tpe --trials 20 \
      --sweep 'config.lr=loguniform(1e-4,1e-2)' --sweep 'config.wd=uniform(0,0.3)' \
      [--prune median]
  vitx sweep ... --worker --storage postgresql://user@host/db   # on every machine

What is swept:
  * `--sweep KEY=[v1,v2,...]` (repeatable): a grid, the product of all lists (Optuna's
    GridSampler, one grid point per trial). Without `--sweep`, the config file's
    `get_hyper(h)` (big_vision style) gives the grid: `h.product([h.sweep("config.lr", [1e-3,
    3e-4]), h.sweep("config.wd", [0.0, 0.1])])`, `h.zip(...)`, `h.chain(...)`, `h.fixed(...)`.
  * `--search random|tpe --trials N` with ranges `KEY=loguniform(a,b)`, `uniform(a,b)`,
    `int(a,b)`, `logint(a,b)`, `choice(a,b,...)` (lists are choices too).
  * `--prune median`: Optuna's MedianPruner on the metric's intermediate values, which are the
    trainer's periodic evals (`eval_every_steps`) read from the trial's `metrics.jsonl`; a
    pruned trial is stopped with SIGTERM (it saves a checkpoint).
Other `--config.key=value` arguments apply to every trial.

Re-running the same command resumes the sweep: finished trials are not re-run (their
`results.json` is reused, also by a new study), a trial interrupted by Ctrl-C, SIGTERM or a
kill of the sweep process is retried in the same workdir (the trainer resumes from its last
checkpoint), and a trial whose trainer failed stays failed (`--retry-failed` retries it).
Trials of a dead process on another machine are retried after Optuna's heartbeat grace period.
Outputs: `<dir>/summary.csv` (one row per trial), `<dir>/summary.png` (the metric per trial),
`<dir>/logs/<trial>.log` (each trainer's output).
"""

from __future__ import annotations

import argparse
import ast
import csv
import dataclasses
import fcntl
import hashlib
import importlib.util
import inspect
import io
import itertools
import json
import math
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from vitx import config as config_lib

__all__ = ["Hyper", "SweepError", "add_arguments", "main", "parse_sweep", "run", "trial_name"]

#: Default study storage file inside the sweep folder.
STUDY_FILE = "study.db"
#: Seconds between polls of a running trial (exit status, new eval metrics for pruning).
POLL_SECONDS = 1.0
#: Optuna heartbeats: a RUNNING trial whose process stopped beating for `GRACE_SECONDS` is
#: failed and retried by the next worker (the way trials of dead machines come back).
HEARTBEAT_SECONDS = 60
GRACE_SECONDS = 300
_RANGES = ("uniform", "loguniform", "int", "logint", "choice")
_SAFE = re.compile(r"[^A-Za-z0-9._=,+\-]")


class SweepError(config_lib.ConfigError):
    """A bad sweep argument or study: the message names the argument and the fix."""


# ------------------------------------------------------------------------------------------------
# Grids: big_vision-style `h.sweep / h.product / h.zip` and `--sweep KEY=[...]`.


def _strip_key(key: str) -> str:
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
    key, body = _strip_key(key), body.strip()
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
                         f"{'/'.join(_RANGES)}(...); {example} (fixed values go in "
                         f"--config.{key}=VALUE)")
    fn, args = m[1], _split_args(m[2])
    if fn not in _RANGES:
        raise SweepError(f"--sweep {text!r}: unknown range {fn!r}; use one of "
                         f"{', '.join(_RANGES)}")
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


def _unique_names(points: Sequence[Mapping[str, Any]]) -> list[str]:
    """Trial names for grid points; points whose names collide get a hash of their values."""
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


def _load_module(path: str) -> Any:
    spec = importlib.util.spec_from_file_location(f"vitx_sweep_{abs(hash(path))}", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


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
    module = _load_module(path)
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


# ------------------------------------------------------------------------------------------------
# The sweep definition.


@dataclasses.dataclass
class Plan:
    """What a sweep runs: a grid (points and names) or a search space (distributions)."""

    config: str
    base_overrides: list[str]
    kind: str  # "grid" | "random" | "tpe"
    points: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    names: list[str] = dataclasses.field(default_factory=list)
    space: dict[str, Any] = dataclasses.field(default_factory=dict)
    trials: int = 0
    metric: str = "test/accuracy"
    direction: str = "maximize"

    @property
    def keys(self) -> list[str]:
        if self.kind == "grid":
            return list(dict.fromkeys(k for p in self.points for k in p))
        return list(self.space)

    def definition(self) -> str:
        """What must match for a re-run or another worker to join the study (not --trials)."""
        space = ([[n, list(p.items())] for n, p in zip(self.names, self.points, strict=True)]
                 if self.kind == "grid" else {k: repr(d) for k, d in self.space.items()})
        fixed = dict(o.partition("=")[::2] for o in self.base_overrides)  # order-free
        return json.dumps({"config": self.config, "overrides": fixed,
                           "kind": self.kind, "space": space, "metric": self.metric},
                          sort_keys=True, default=repr)


def _check_overrides(config_spec: str, base: Sequence[str],
                     points: Iterable[Mapping[str, Any]], source: str) -> None:
    """Apply the base overrides and each point to the config now, so a typo fails before any
    training (ConfigError names the key)."""
    for point in points:
        config = config_lib.load_config(config_spec)
        config_lib.apply_overrides(config, base)
        for k, v in point.items():
            config_lib.set_value(config, k, v, source=source)


def make_plan(*, config: str, sweeps: Sequence[str], overrides: Sequence[str] = (),
              search: str | None = None, trials: int | None = None,
              metric: str = "test/accuracy", direction: str | None = None) -> Plan:
    """Parse and check a sweep: the grid or search space, applied to the config once each.

    Raises:
      SweepError / ConfigError: a malformed `--sweep`, unknown config keys, a range without
        `--search`, `--search` without `--trials`, or a key both swept and fixed.
    """
    direction = direction or ("minimize" if re.search(r"loss|err", metric) else "maximize")
    items = [parse_sweep(s) for s in sweeps]
    keys = [k for k, _ in items]
    if len(set(keys)) < len(keys):
        dup = sorted({k for k in keys if keys.count(k) > 1})
        raise SweepError(f"--sweep: {', '.join(dup)} swept twice; give each key one --sweep")
    ranges = [k for k, v in items if not isinstance(v, list)]
    if search in (None, "grid"):
        if ranges:
            raise SweepError(f"--sweep {ranges[0]}=... is a range; add --search random or "
                             f"--search tpe with --trials N (a grid takes lists KEY=[v1,v2])")
        if trials is not None:
            raise SweepError("--trials is for --search random|tpe; a grid runs every point "
                             "(use --max-trials to stop early)")
        if items:
            points = grid_from_sweeps(items)
        else:
            points = grid_from_config(config)
            if points is None:
                raise SweepError(f"nothing to sweep: pass --sweep 'config.lr=[1e-3,3e-4]' or "
                                 f"define get_hyper(h) in {config.partition(':')[0]}")
        points = [{_strip_key(k): v for k, v in p.items()} for p in points]
        plan = Plan(config, list(overrides), "grid", points=points,
                    names=_unique_names(points), metric=metric, direction=direction)
    else:
        import optuna.distributions as od

        if not items:
            raise SweepError(f"--search {search}: no search space; pass ranges such as "
                             f"--sweep 'config.lr=loguniform(1e-4,1e-2)'")
        if trials is None or trials < 1:
            raise SweepError(f"--search {search} needs --trials N (N >= 1): how many trials "
                             f"in all")
        space = {k: (od.CategoricalDistribution(tuple(v)) if isinstance(v, list) else v)
                 for k, v in items}
        for k, d in space.items():
            if isinstance(d, od.CategoricalDistribution) and not all(
                    c is None or isinstance(c, bool | int | float | str) for c in d.choices):
                raise SweepError(f"--sweep {k}=[...]: a search takes choices that are numbers, "
                                 f"strings, bools or None; sweep other values as a grid")
        plan = Plan(config, list(overrides), search, space=space, trials=trials, metric=metric,
                    direction=direction)
    fixed = {o.partition("=")[0] for o in overrides}
    both = sorted(fixed & set(plan.keys))
    if both:
        raise SweepError(f"{both[0]} is both swept (--sweep/get_hyper) and fixed "
                         f"(--config.{both[0]}=...); drop one of them")
    if plan.kind == "grid":
        _check_overrides(config, overrides, plan.points, "--sweep / get_hyper")
    else:
        corners = [{k: _corner(d, i) for k, d in plan.space.items()} for i in (0, -1)]
        _check_overrides(config, overrides, corners, "--sweep")
    return plan


def _corner(dist: Any, i: int) -> Any:
    """The low (i=0) or high (i=-1) end of a distribution (to check its key and type)."""
    if hasattr(dist, "choices"):
        return dist.choices[i]
    return dist.low if i == 0 else dist.high


# ------------------------------------------------------------------------------------------------
# Running trials.


class _TrialFailed(Exception):
    """The trainer failed (a final FAIL, retried only with --retry-failed)."""


class _Interrupted(Exception):
    """The sweep was stopped while this trial ran (retried on the next run)."""


def _read_json(path: str) -> dict[str, Any] | None:
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _process_start(pid: int) -> str | None:
    """The start time of process `pid` (Linux /proc; None if unknown or not running)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _owner() -> dict[str, Any]:
    return {"host": socket.gethostname(), "pid": os.getpid(),
            "pid_start": _process_start(os.getpid())}


def _owner_dead(attrs: Mapping[str, Any]) -> bool:
    """True if the trial's sweep process ran on this host and is gone."""
    if attrs.get("host") != socket.gethostname() or not isinstance(attrs.get("pid"), int):
        return False  # another machine's: Optuna's heartbeat decides
    pid = attrs["pid"]
    if pid == os.getpid() and attrs.get("pid_start") == _process_start(pid):
        return False
    if os.path.isdir("/proc"):
        start = _process_start(pid)
        return start is None or start != attrs.get("pid_start")
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def _atomic_write(path: str, data: bytes) -> None:
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


class Sweep:
    """One sweep process: opens the study, retries interrupted trials, runs trials (N at a
    time) and writes the summary. Use `run(...)`."""

    def __init__(self, plan: Plan, directory: str, *, storage: str | None = None,
                 study_name: str | None = None, parallel: int = 1, worker: bool = False,
                 prune: str = "none", prune_startup: int = 5,
                 max_trials: int | None = None, seed: int = 0,
                 retry_failed: bool = False, train_command: Sequence[str] | None = None,
                 env: Mapping[str, str] | None = None, poll_seconds: float = POLL_SECONDS):
        if parallel < 1:
            raise SweepError(f"--parallel {parallel}: run at least 1 trial at a time")
        if max_trials is not None and max_trials < 0:
            raise SweepError(f"--max-trials {max_trials}: pass 0 or more")
        self.plan, self.dir = plan, directory
        self.parallel, self.worker, self.prune = parallel, worker, prune
        self.prune_startup = prune_startup
        self.max_trials, self.seed, self.retry_failed = max_trials, seed, retry_failed
        self.train_command = list(train_command or [sys.executable, "-m", "vitx.cli"])
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        self.poll_seconds = poll_seconds
        self.storage_url = storage or (
            f"sqlite:///{os.path.abspath(os.path.join(directory, STUDY_FILE))}")
        self.study_name = study_name or os.path.basename(os.path.abspath(directory))
        self.stopping = threading.Event()
        self._lock = threading.Lock()  # self._procs, self.started, asking for a trial
        self._procs: set[subprocess.Popen] = set()
        self.started = 0
        self.fatal: list[BaseException] = []  # errors of the trial threads, raised by run()

    # --- the study -------------------------------------------------------------------------

    def _storage(self) -> Any:
        import optuna
        import sqlalchemy.exc

        kwargs: dict[str, Any] = {}
        if self.storage_url.startswith("sqlite:"):
            kwargs["engine_kwargs"] = {"connect_args": {"timeout": 60}}
        for attempt in range(6):
            try:
                with warnings.catch_warnings():  # heartbeats are "experimental" (Optuna 2.8)
                    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                    return optuna.storages.RDBStorage(
                        self.storage_url, heartbeat_interval=HEARTBEAT_SECONDS,
                        grace_period=GRACE_SECONDS,
                        heartbeat_stale_trial_callback=(
                            optuna.storages.RetryHeartbeatStaleTrialCallback()),
                        **kwargs)
            except (sqlalchemy.exc.OperationalError, sqlalchemy.exc.IntegrityError,
                    sqlalchemy.exc.ProgrammingError) as e:
                # Workers starting together race to create the tables: try again.
                error: Exception = e
                time.sleep(0.2 * 2 ** attempt)
            except Exception as e:  # a bad URL or a missing database driver
                error = e
                break
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise SweepError(f"--storage {self.storage_url!r}: cannot open the database "
                         f"({first[:200]}); pass a database URL such as "
                         f"sqlite:///path/study.db or postgresql://user@host/db")

    def _sampler(self, n_trials: int = 0) -> Any:
        """Grid: GridSampler; random / TPE: seeded by `seed` + the trials the study holds, so
        a re-run continues with new points instead of repeating the first ones; `--worker`s
        are seeded at random (they must not suggest the same points)."""
        import optuna

        seed = None if self.worker else self.seed + n_trials
        if self.plan.kind == "grid":  # the same seed everywhere: grid ids must agree
            return _grid_sampler()({"grid": self.plan.names}, seed=0)
        if self.plan.kind == "random":
            return optuna.samplers.RandomSampler(seed=seed)
        return optuna.samplers.TPESampler(seed=seed)

    def _pruner(self) -> Any:
        import optuna

        return (optuna.pruners.MedianPruner(n_startup_trials=self.prune_startup)
                if self.prune == "median"
                else optuna.pruners.NopPruner())

    def open_study(self) -> Any:
        """Create or load the study; a study made for another sweep is an error.

        Raises:
          SweepError: the database cannot be opened, or the study holds another sweep.
        """
        import optuna

        os.makedirs(self.dir, exist_ok=True)
        self.storage = self._storage()
        study = optuna.create_study(storage=self.storage, study_name=self.study_name,
                                    sampler=self._sampler(), pruner=self._pruner(),
                                    direction=self.plan.direction, load_if_exists=True)
        study.sampler = self._sampler(len(study.get_trials(deepcopy=False)))
        if study.direction.name.lower() != self.plan.direction:
            raise SweepError(f"--direction {self.plan.direction}: study {self.study_name!r} "
                             f"maximizes/minimizes the other way ({study.direction.name.lower()})"
                             f"; pass --direction {study.direction.name.lower()} or a new "
                             f"--study NAME")
        definition = self.plan.definition()
        stored = study.user_attrs.get("vitx_sweep")
        if stored is None:
            study.set_user_attr("vitx_sweep", definition)
        elif stored != definition:
            raise SweepError(f"study {self.study_name!r} in {self.storage_url} was made for "
                             f"another sweep (config, overrides, grid/ranges or metric "
                             f"differ); pass a new --study NAME or --dir (finished trial "
                             f"workdirs in --dir are reused, not retrained)")
        for sub in ("logs", "locks"):
            os.makedirs(os.path.join(self.dir, sub), exist_ok=True)
        return study

    def reclaim(self, study: Any) -> None:
        """Fail trials left RUNNING by dead processes and queue retries of interrupted ones
        (Optuna's RetryHeartbeatStaleTrialCallback: same params, same workdir)."""
        import optuna
        from optuna.trial import TrialState

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            optuna.storages.fail_stale_trials(study)  # other machines' dead trials
            # Tells go through a plain sampler: GridSampler.after_trial may only run in optimize.
            plain = optuna.load_study(study_name=self.study_name, storage=self.storage,
                                      sampler=optuna.samplers.RandomSampler())
            retry = optuna.storages.RetryHeartbeatStaleTrialCallback()
            trials = study.get_trials(deepcopy=False)
            for t in trials:
                if t.state == TrialState.RUNNING and _owner_dead(t.user_attrs):
                    plain.tell(t.number, state=TrialState.FAIL, skip_if_finished=True)
            trials = study.get_trials(deepcopy=False)
            retried = {n for t in trials for n in t.system_attrs.get("retry_history", [])}
            for t in trials:
                if t.state != TrialState.FAIL or t.number in retried:
                    continue
                name = t.user_attrs.get("name")
                finished = bool(name) and os.path.exists(
                    os.path.join(self.dir, name, "results.json"))
                if not t.user_attrs.get("error") or finished or self.retry_failed:
                    retry(study, t)
                    print(f"vitx: sweep: trial {t.number} ({name or 'not started'}) will be "
                          f"retried", flush=True)

    def _settled(self, t: Any, retried: set[int]) -> bool:
        from optuna.trial import TrialState

        return t.state in (TrialState.COMPLETE, TrialState.PRUNED) or (
            t.state == TrialState.FAIL and t.number not in retried)

    def todo(self, study: Any) -> int:
        """Trials still to start: grid points (or search trials) neither finished, failed for
        good, nor running elsewhere."""
        from optuna.trial import TrialState

        trials = study.get_trials(deepcopy=False)
        retried = {n for t in trials for n in t.system_attrs.get("retry_history", [])}
        running = [t for t in trials if t.state == TrialState.RUNNING]
        if self.plan.kind == "grid":
            done = {t.params.get("grid") for t in trials if self._settled(t, retried)}
            busy = {t.params.get("grid") for t in running}
            return len(set(self.plan.names) - done - busy)
        settled = sum(self._settled(t, retried) for t in trials)
        return max(0, self.plan.trials - settled - len(running))

    # --- one trial -------------------------------------------------------------------------

    def _suggest(self, trial: Any) -> tuple[str, dict[str, Any]]:
        import optuna.distributions as od

        if self.plan.kind == "grid":
            name = trial.suggest_categorical("grid", self.plan.names)
            return name, self.plan.points[self.plan.names.index(name)]
        values: dict[str, Any] = {}
        for k, d in self.plan.space.items():
            if isinstance(d, od.FloatDistribution):
                values[k] = trial.suggest_float(k, d.low, d.high, log=d.log)
            elif isinstance(d, od.IntDistribution):
                values[k] = trial.suggest_int(k, d.low, d.high, log=d.log)
            else:
                values[k] = trial.suggest_categorical(k, d.choices)
        # A retry keeps the first attempt's name (and so its workdir).
        name = trial.user_attrs.get("name") or f"{trial.number:03d}-{trial_name(values)}"
        return name, values

    def objective(self, trial: Any) -> float:
        """Run (or reuse) one trial; its value is `plan.metric` from results.json.

        Raises:
          optuna.TrialPruned: the pruner stopped it.
          _TrialFailed / _Interrupted: the trainer failed / the sweep is stopping.
          SweepError: the metric is not in the trial's results.
        """
        name, overrides = self._suggest(trial)
        for k, v in {"name": name, "overrides": json.loads(json.dumps(overrides, default=repr)),
                     "error": None}.items():
            trial.set_user_attr(k, v)
        workdir = os.path.join(self.dir, name)
        label = f"trial {trial.number} {name}"
        try:
            with self._trial_lock(name, label) as fd:
                results = _read_json(os.path.join(workdir, "results.json"))
                if results is not None:
                    print(f"vitx: sweep: {label}: finished before, results.json reused",
                          flush=True)
                else:
                    results = self._train(trial, name, overrides, workdir, fd, label)
        except KeyboardInterrupt:
            trial.set_user_attr("interrupted", True)
            raise
        except _TrialFailed as e:
            trial.set_user_attr("error", str(e))
            print(f"vitx: sweep: {label}: failed: {e}", flush=True)
            raise
        trial.set_user_attr("results", {k: v for k, v in results.items()
                                        if isinstance(v, int | float)})
        if self.plan.metric not in results:
            known = ", ".join(sorted(k for k, v in results.items() if isinstance(v, float)))
            raise SweepError(f"--metric {self.plan.metric!r} is not in the results of "
                             f"{workdir} (it has: {known}); pass --metric with one of those "
                             f"and a new --study NAME (finished workdirs are reused)")
        value = float(results[self.plan.metric])
        if not math.isfinite(value):
            e = _TrialFailed(f"{self.plan.metric}={value} in {workdir}/results.json")
            trial.set_user_attr("error", str(e))
            raise e
        print(f"vitx: sweep: {label}: {self.plan.metric}={value:.4g}", flush=True)
        return value

    def _trial_lock(self, name: str, label: str) -> Any:
        """An exclusive flock on `<dir>/locks/<name>.lock`, held by the sweep process and its
        trainer (a second sweep process waits instead of training the same workdir)."""
        sweep = self

        class _Lock:
            def __enter__(self) -> int:
                self.fd = os.open(os.path.join(sweep.dir, "locks", f"{name}.lock"),
                                  os.O_CREAT | os.O_RDWR, 0o644)
                waited = False
                while True:
                    try:
                        fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                        return self.fd
                    except BlockingIOError:
                        if not waited:
                            print(f"vitx: sweep: {label}: another process trains this "
                                  f"workdir; waiting for it", flush=True)
                            waited = True
                        if sweep.stopping.is_set():
                            os.close(self.fd)
                            raise _Interrupted(f"{label}: stopped while waiting") from None
                        time.sleep(sweep.poll_seconds)

            def __exit__(self, *exc: Any) -> None:
                os.close(self.fd)  # releases the lock once the trainer has exited too

        return _Lock()

    def _train(self, trial: Any, name: str, overrides: Mapping[str, Any], workdir: str,
               lock_fd: int, label: str) -> dict[str, Any]:
        """`vitx train` for one trial, reporting eval metrics to the pruner as they come."""
        import optuna

        if self.stopping.is_set():
            raise _Interrupted(f"{label}: the sweep is stopping")
        cmd = [*self.train_command, "train", "--config", self.plan.config, "--workdir", workdir,
               *(f"--config.{o}" for o in self.plan.base_overrides),
               *(f"--config.{k}={v!r}" for k, v in overrides.items())]
        log_path = os.path.join(self.dir, "logs", f"{name}.log")
        resumed = os.path.isdir(os.path.join(workdir, "checkpoints"))
        print(f"vitx: sweep: {label}: {'resuming' if resumed else 'training'} "
              f"(log: {log_path})", flush=True)
        t0 = time.monotonic()
        with open(log_path, "ab") as log:
            log.write(f"$ {' '.join(cmd)}\n".encode())
            log.flush()
            proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=self.env,
                                    pass_fds=(lock_fd,))
        with self._lock:
            self._procs.add(proc)
        if self.stopping.is_set():  # a signal came while starting it
            proc.send_signal(signal.SIGTERM)
        metrics_path = os.path.join(workdir, "metrics.jsonl")
        reported: set[int] = set()
        pos, pruned_at = 0, None
        try:
            while True:
                try:
                    rc = proc.wait(timeout=self.poll_seconds)
                    break
                except subprocess.TimeoutExpired:
                    pass
                pos, new = self._report(trial, metrics_path, pos, reported)
                if new and pruned_at is None and trial.should_prune():
                    pruned_at = max(reported)
                    proc.send_signal(signal.SIGTERM)  # it saves a checkpoint and exits
        finally:
            if proc.poll() is None:  # KeyboardInterrupt: stop the trainer, then re-raise
                proc.send_signal(signal.SIGTERM)
                proc.wait()
            with self._lock:
                self._procs.discard(proc)
        self._report(trial, metrics_path, pos, reported)
        seconds = time.monotonic() - t0
        if pruned_at is not None:
            print(f"vitx: sweep: {label}: pruned at step {pruned_at} ({seconds:.0f} s)",
                  flush=True)
            raise optuna.TrialPruned(f"pruned at step {pruned_at}")
        results = _read_json(os.path.join(workdir, "results.json"))
        if results is not None:
            print(f"vitx: sweep: {label}: trained in {seconds:.0f} s", flush=True)
            return results
        if self.stopping.is_set() or rc == 0:  # rc 0 without results: stopped by a signal
            trial.set_user_attr("interrupted", True)
            print(f"vitx: sweep: {label}: interrupted; it resumes from its last checkpoint "
                  f"when the sweep is run again", flush=True)
            raise _Interrupted(f"{label}: interrupted")
        raise _TrialFailed(f"`vitx train` exited with status {rc}: {_last_line(log_path)}; "
                           f"log: {log_path}")

    def _report(self, trial: Any, path: str, pos: int, reported: set[int]) -> tuple[int, bool]:
        """Report new `plan.metric` lines of metrics.jsonl as intermediate values."""
        try:
            with open(path, "rb") as f:
                f.seek(pos)
                data = f.read()
        except OSError:
            return pos, False
        end = data.rfind(b"\n") + 1  # only whole lines
        new = False
        for line in data[:end].splitlines():
            try:
                row = json.loads(line)
            except ValueError:
                continue
            value, step = row.get(self.plan.metric), row.get("step")
            if isinstance(value, int | float) and isinstance(step, int) and step not in reported \
                    and math.isfinite(value):
                trial.report(float(value), step)
                reported.add(step)
                new = True
        return pos + end, new

    # --- the loop --------------------------------------------------------------------------

    def _on_signal(self, signum: int, frame: Any) -> None:
        del frame
        if self.stopping.is_set() and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.stopping.set()
        print(f"vitx: sweep: got signal {signum}; stopping the running trials (each saves a "
              f"checkpoint); run the same command again to resume", flush=True)
        with self._lock:
            for proc in self._procs:
                if proc.poll() is None:
                    proc.send_signal(signal.SIGTERM)

    def _next_trial(self, study: Any) -> Any | None:
        """Ask the study for the next trial (a queued retry first), or None when nothing is
        left for this process. One thread at a time: no two threads pop the same queued
        trial, and the count of what is left includes the trials just started."""
        import optuna

        with self._lock:
            if self.stopping.is_set() or self.fatal:
                return None
            optuna.storages.fail_stale_trials(study)  # trials of dead machines come back
            n = self.todo(study)
            if self.max_trials is not None:
                n = min(n, self.max_trials - self.started)
            if n <= 0:
                return None
            self.started += 1
            trial = study.ask()
            for k, v in _owner().items():  # so that a re-run can tell this process is gone
                trial.set_user_attr(k, v)
            return trial

    def _run_trial(self, study: Any, trial: Any) -> None:
        """objective(trial), then tell the study how it ended (with heartbeats meanwhile)."""
        import optuna
        from optuna.trial import TrialState

        with _Heartbeat(self.storage, trial._trial_id):
            try:
                value = self.objective(trial)
            except optuna.TrialPruned:
                study.tell(trial, state=TrialState.PRUNED, skip_if_finished=True)
            except (_TrialFailed, _Interrupted):
                study.tell(trial, state=TrialState.FAIL, skip_if_finished=True)
            except BaseException:
                study.tell(trial, state=TrialState.FAIL, skip_if_finished=True)
                raise
            else:  # a NaN value makes it a FAIL (with Optuna's warning)
                study.tell(trial, value, skip_if_finished=True)

    def _loop(self, study: Any) -> None:
        """One of `parallel` threads: run trials until none is left."""
        try:
            while (trial := self._next_trial(study)) is not None:
                self._run_trial(study, trial)
        except BaseException as e:  # re-raised by run()
            with self._lock:
                self.fatal.append(e)

    def run(self) -> dict[str, Any]:
        """Run trials, `parallel` at a time, until none is left (or `max_trials` were
        started); then write the summary.

        Returns: {"study": ..., "summary_csv": ..., "summary_png": ..., "rows": [...],
        "started": trials started by this process, "stopped": stopped by a signal}.

        Raises:
          SweepError / ConfigError: bad arguments or study; a trial's results lack the metric.
          KeyboardInterrupt: a second Ctrl-C (the trainers are aborted too).
        """
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
        # Heartbeats with ask/tell: `_Heartbeat` records them, as Study.optimize would.
        warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed")
        study = self.open_study()
        self.reclaim(study)
        old: dict[int, Any] = {}
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                old[sig] = signal.signal(sig, self._on_signal)
        threads = [threading.Thread(target=self._loop, args=(study,), daemon=True,
                                    name=f"vitx-sweep-{i}") for i in range(self.parallel)]
        try:
            for t in threads:
                t.start()
            for t in threads:
                while t.is_alive():
                    t.join(timeout=0.5)
        except KeyboardInterrupt:
            with self._lock:
                for proc in self._procs:
                    if proc.poll() is None:
                        proc.send_signal(signal.SIGINT)  # the trainer's second signal: abort
            raise
        finally:
            for sig, handler in old.items():
                signal.signal(sig, handler)
        rows = summary_rows(study, self.plan)
        csv_path = os.path.join(self.dir, "summary.csv")
        png_path = os.path.join(self.dir, "summary.png")
        write_summary_csv(rows, self.plan, csv_path)
        plot_summary(rows, self.plan, png_path, title=f"{self.study_name}: {self.plan.metric}")
        if self.fatal:
            raise self.fatal[0]
        return {"study": study, "rows": rows, "summary_csv": csv_path, "summary_png": png_path,
                "started": self.started, "stopped": self.stopping.is_set()}


class _Heartbeat:
    """Record an Optuna heartbeat for a trial every HEARTBEAT_SECONDS (in a thread) while
    it runs, as `Study.optimize` does: a trial whose beats stop is failed and retried by the
    next worker after GRACE_SECONDS."""

    def __init__(self, storage: Any, trial_id: int) -> None:
        self.storage, self.trial_id = storage, trial_id
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, daemon=True)

    def _beat(self) -> None:
        while True:
            try:
                self.storage.record_heartbeat(self.trial_id)
            except Exception:  # retried next interval
                pass
            if self._stop.wait(HEARTBEAT_SECONDS):
                return

    def __enter__(self) -> _Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()


def _grid_sampler() -> type:
    """GridSampler whose after_trial does not call `study.stop()` (which only works inside
    `Study.optimize`; the sweep loop counts what is left itself)."""
    import optuna

    class _GridSampler(optuna.samplers.GridSampler):
        def after_trial(self, study: Any, trial: Any, state: Any, values: Any) -> None:
            pass

    return _GridSampler


def _last_line(path: str) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(max(0, os.path.getsize(path) - 4000))
            lines = [ln.strip() for ln in f.read().decode(errors="replace").splitlines()]
    except OSError:
        return "(no log)"
    errors = [ln for ln in lines if ln.startswith("vitx: error")]
    line = (errors or [ln for ln in lines if ln] or ["(empty log)"])[-1]
    return line[:300]


# ------------------------------------------------------------------------------------------------
# Summary: CSV and PNG.

_STATE_ORDER = {"COMPLETE": 0, "PRUNED": 1, "RUNNING": 2, "WAITING": 3, "FAIL": 4}


def summary_rows(study: Any, plan: Plan) -> list[dict[str, Any]]:
    """One row per trial name (its most useful attempt), grid points not yet started included
    (state PENDING): name, state, trial, each swept key, the metric, other results, note."""
    best: dict[str, Any] = {}
    for t in study.get_trials(deepcopy=False):
        name = t.user_attrs.get("name") or (t.params.get("grid") if plan.kind == "grid" else None)
        if name is None:
            continue
        rank = (_STATE_ORDER.get(t.state.name, 9), -t.number)
        if name not in best or rank < best[name][0]:
            best[name] = (rank, t)
    names = list(plan.names) if plan.kind == "grid" else []
    names += sorted((n for n in best if n not in set(names)),
                    key=lambda n: best[n][1].number)
    rows = []
    for name in names:
        row: dict[str, Any] = {"name": name}
        if name not in best:
            row.update(state="PENDING", trial="")
            row.update(plan.points[plan.names.index(name)])
            rows.append(row)
            continue
        t = best[name][1]
        state = t.state.name
        if state == "FAIL" and not t.user_attrs.get("error"):
            state = "INTERRUPTED"  # retried (resumed) by the next run
        row.update(state=state, trial=t.number)
        row.update(t.user_attrs.get("overrides") or (
            plan.points[plan.names.index(name)] if plan.kind == "grid" else t.params))
        results = t.user_attrs.get("results") or {}
        value = t.value if t.state.name == "COMPLETE" else None
        note = t.user_attrs.get("error") or ""
        if t.state.name == "PRUNED" and t.intermediate_values:
            step = max(t.intermediate_values)
            value, note = t.intermediate_values[step], f"pruned at step {step}"
        row[plan.metric] = value
        row.update({k: v for k, v in results.items() if k != plan.metric})
        row["note"] = note
        rows.append(row)
    return rows


def write_summary_csv(rows: Sequence[Mapping[str, Any]], plan: Plan, path: str) -> str:
    """Write the summary rows as CSV (atomically). Returns `path`."""
    first = ["name", "state", "trial", *plan.keys, plan.metric]
    extra = sorted({k for r in rows for k in r} - set(first) - {"note"})
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=[*first, *extra, "note"], restval="",
                            extrasaction="ignore")
    writer.writeheader()
    for r in rows:
        writer.writerow({k: ("" if v is None else v) for k, v in r.items()})
    _atomic_write(path, out.getvalue().encode())
    return path


def plot_summary(rows: Sequence[Mapping[str, Any]], plan: Plan, path: str, *,
                 title: str = "") -> str:
    """A PNG of the metric per trial: horizontal bars (the best one highlighted; pruned trials
    hatched at their last value; pending or failed ones labelled), or for more than 40 trials
    the metric vs trial number with the best so far. Returns `path`."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    metric = plan.metric
    values = [r.get(metric) if isinstance(r.get(metric), int | float) else None for r in rows]
    done = [(i, v) for i, v in enumerate(values) if v is not None and math.isfinite(v)
            and rows[i]["state"] == "COMPLETE"]
    pick = max if plan.direction == "maximize" else min
    best_i = pick(done, key=lambda iv: iv[1])[0] if done else None
    many = len(rows) > 40
    fig = Figure(figsize=(9, 4.5 if many else 1.2 + 0.4 * max(len(rows), 1)), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    if many:
        xs = [r["trial"] for r in rows]
        pts = [(x, v) for x, v, r in zip(xs, values, rows, strict=True)
               if v is not None and r["state"] == "COMPLETE"]
        if pts:
            pts.sort()
            ax.scatter([x for x, _ in pts], [v for _, v in pts], s=14, label="trial")
            run_best, best_line = None, []
            for _, v in pts:
                run_best = v if run_best is None else pick(run_best, v)
                best_line.append(run_best)
            ax.step([x for x, _ in pts], best_line, where="post", color="C3", label="best so far")
            ax.legend()
        ax.set_xlabel("trial")
        ax.set_ylabel(metric)
    else:
        ys = list(range(len(rows)))[::-1]
        for y, r, v, i in zip(ys, rows, values, range(len(rows)), strict=True):
            state = r["state"]
            if v is not None and math.isfinite(v):
                color = "C3" if i == best_i else "C0" if state == "COMPLETE" else "0.6"
                ax.barh(y, v, color=color, hatch="//" if state == "PRUNED" else None)
                ax.text(v, y, f" {v:.4g}" + ("" if state == "COMPLETE" else f" ({state})"),
                        va="center", fontsize=8)
            else:
                ax.text(0, y, f" {state}", va="center", fontsize=8, color="0.4")
        ax.set_yticks(ys)
        ax.set_yticklabels([r["name"] for r in rows], fontsize=8)
        ax.set_xlabel(metric + (" (best in red)" if best_i is not None else ""))
        if done:
            hi = max(v for _, v in done)
            ax.set_xlim(0, hi * 1.2 if hi > 0 else 1)
    ax.grid(True, axis="x", alpha=0.3)
    if title:
        ax.set_title(title)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    _atomic_write(path, buf.getvalue())
    return path


# ------------------------------------------------------------------------------------------------
# The command line.


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The `vitx sweep` arguments (config overrides `--config.k=v` are split off before)."""
    p.add_argument("--config", required=True,
                   help="path/to/config.py[:arg]; may define get_hyper(h) with the grid")
    p.add_argument("--dir", required=True,
                   help="sweep folder: one workdir per trial, study.db, summary.csv/.png, logs/")
    p.add_argument("--sweep", action="append", default=[], metavar="KEY=VALUES",
                   help="repeatable: a grid list 'config.lr=[1e-3,3e-4]' (grids: the product "
                        "of all) or a range 'config.lr=loguniform(1e-4,1e-2)', uniform(a,b), "
                        "int(a,b), logint(a,b), choice(a,b,...) for --search")
    p.add_argument("--search", choices=("grid", "random", "tpe"), default=None,
                   help="grid (default: every point) or an Optuna random / TPE search")
    p.add_argument("--trials", type=int, default=None,
                   help="--search random|tpe: trials in all (across workers and re-runs)")
    p.add_argument("--prune", choices=("none", "median"), default="none",
                   help="median: Optuna's MedianPruner on the metric of periodic evals")
    p.add_argument("--prune-startup", type=int, default=5, metavar="N",
                   help="--prune median: prune only once N trials have finished (default 5)")
    p.add_argument("--metric", default="test/accuracy",
                   help="the results.json key to optimise and plot (default test/accuracy)")
    p.add_argument("--direction", choices=("maximize", "minimize"), default=None,
                   help="default: minimize for metrics named *loss* or *err*, else maximize")
    p.add_argument("--parallel", type=int, default=1,
                   help="trials run at once by this process (default 1)")
    p.add_argument("--worker", action="store_true",
                   help="one of many processes/machines sharing the study (--storage URL): "
                        "pull trials until none is left")
    p.add_argument("--storage", default=None,
                   help="database URL of the study (default sqlite:///DIR/study.db)")
    p.add_argument("--study", default=None, help="study name (default: the folder's name)")
    p.add_argument("--max-trials", type=int, default=None,
                   help="start at most N trials in this run, then stop (0: summary only)")
    p.add_argument("--seed", type=int, default=0, help="sampler seed (random/tpe)")
    p.add_argument("--retry-failed", action="store_true",
                   help="retry trials whose trainer failed (interrupted ones always are)")


def run(*, config: str, directory: str, sweeps: Sequence[str] = (),
        overrides: Sequence[str] = (), search: str | None = None, trials: int | None = None,
        metric: str = "test/accuracy", direction: str | None = None, **kwargs: Any
        ) -> dict[str, Any]:
    """Plan and run a sweep (the keyword arguments of `Sweep` pass through); see `Sweep.run`.

    Raises:
      SweepError / ConfigError: bad arguments (one line naming the argument and the fix).
    """
    plan = make_plan(config=config, sweeps=sweeps, overrides=overrides, search=search,
                     trials=trials, metric=metric, direction=direction)
    return Sweep(plan, directory, **kwargs).run()


def main(args: argparse.Namespace, overrides: Sequence[str]) -> int:
    """`vitx sweep`: 0 when every trial finished (or the sweep was stopped by a signal), 1 when
    some trial failed."""
    if args.worker and not args.storage:
        print("vitx: sweep: note: --worker with the default SQLite file needs every worker to "
              "see the same --dir; use --storage URL (e.g. postgresql://...) across machines",
              flush=True)
    try:
        out = run(config=args.config, directory=args.dir, sweeps=args.sweep,
                  overrides=overrides, search=args.search, trials=args.trials,
                  metric=args.metric, direction=args.direction, storage=args.storage,
                  study_name=args.study, parallel=args.parallel, worker=args.worker,
                  prune=args.prune, prune_startup=args.prune_startup,
                  max_trials=args.max_trials, seed=args.seed,
                  retry_failed=args.retry_failed)
    except KeyboardInterrupt:
        print("vitx: sweep: aborted; run the same command again to resume", file=sys.stderr)
        return 130
    rows = out["rows"]
    counts = {s: sum(r["state"] == s for r in rows) for s in (
        "COMPLETE", "PRUNED", "FAIL", "INTERRUPTED", "RUNNING", "WAITING", "PENDING")}
    text = ", ".join(f"{n} {s.lower()}" for s, n in counts.items() if n)
    print(f"vitx: sweep: {len(rows)} trial{'s' * (len(rows) != 1)}: {text}; summary in "
          f"{out['summary_csv']}, plot in {out['summary_png']}", flush=True)
    try:
        best = out["study"].best_trial
        print(f"vitx: sweep: best {args.metric}={best.value:.4g}: {best.user_attrs.get('name')}"
              f" ({os.path.join(args.dir, str(best.user_attrs.get('name')))})", flush=True)
    except ValueError:
        pass  # no finished trial yet
    if out["stopped"]:
        print("vitx: sweep: stopped; run the same command again to resume", flush=True)
        return 0
    return 1 if counts["FAIL"] else 0
