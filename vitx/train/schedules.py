"""Per-step patch-size schedules for FlexiViT training.

FlexiViT trains one set of weights at many patch sizes by picking one patch size per training
step, for the whole global batch, from a configured distribution (uniform, a fixed non-uniform
one such as a Gaussian over the ordered sizes, or a curriculum: a sequence of distributions each
tied to a range of steps). Source: Beyer et al., "FlexiViT: One Model for All Patch Sizes",
CVPR 2023, Sec. 3 (a random patch size per step); patent CN117556885A, claims 14-16 (uniform,
Gaussian and curriculum distributions).

Every choice here is a pure function of `(seed, step)` computed on the host with numpy (not
JAX): the result is a static Python `int` used to pick one compiled program per patch size.
No global RNG state is read or written, so every host agrees on the choice and a resumed run
replays exactly the same sizes, as in big_vision's `np.random.default_rng((xid, wid, step))`.

Config schema (`config.flexi`; a plain `dict` or an `ml_collections.ConfigDict`):

    flexi = dict(
        patch_sizes=(8, 10, 12, 15, 16, 20, 24, 30, 40, 48),  # distinct ints > 0, any order
        schedule=dict(kind="uniform"),                          # default when omitted
    )
    # other schedules:
    schedule=dict(kind="weighted", probs=(1, 1, 2, ...))        # one weight >= 0 per size
    schedule=dict(kind="gaussian", mean=16.0, std=8.0)          # pixels; std > 0
    schedule=dict(kind="fixed", patch_size=16)                  # the standard ViT baseline
    schedule=dict(kind="curriculum", stages=[
        dict(until_step=10_000, kind="uniform", patch_sizes=(30, 40, 48)),
        dict(until_step=None, kind="gaussian", mean=12.0, std=6.0),
    ])

A curriculum stage holds the keys of a non-curriculum kind (`kind` defaults to "uniform"),
plus `until_step` and an optional `patch_sizes` (a subset of `flexi.patch_sizes`; default
all of them). Stage `k` applies to steps `until_step[k-1] <= step < until_step[k]` (the first
stage starts at step 0). Only the last stage may have `until_step=None` (forever); if every
stage is finite, steps at or past the last `until_step` keep using the last stage. Unknown keys
are errors. Curriculum stages are a list of dicts, which `ConfigDict` accepts but
`FrozenConfigDict` does not.

`PatchSizeSchedule.from_config` parses `config.flexi` once into one typed `StageSpec` per
distribution (each checks itself in `__post_init__`) and keeps their resolved `ScheduleStage`s.

Adding a schedule kind (the public hook): each non-curriculum kind is an entry of `STAGE_KINDS`,
registered with `register_stage_kind`: a function from the stage's patch sizes to non-negative
weights over them, naming the config keys it reads:

    @register_stage_kind("linear", keys=("slope",))
    def linear(sizes: tuple[int, ...], key: str, *, slope: float) -> np.ndarray:
        return np.maximum(1.0 + slope * np.arange(len(sizes)), 0.0)  # (len(sizes),)

It is then usable as `schedule=dict(kind="linear", slope=0.5)` and in curriculum stages, with
the checks of the built-in kinds (unknown and missing keys, `patch_sizes`).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from vitx.utils.patch_sizes import check_patch_sizes, validate_patch_sizes

__all__ = ["CURRICULUM", "PATCH_SIZE_SALT", "STAGE_KINDS", "PatchSizeSchedule", "ScheduleStage",
           "StageKind", "StageSpec", "choice_at", "gaussian_probs", "register_stage_kind"]

#: Salt that keys the patch-size draw; other per-step policies must use their own salt so their
#: choices are independent of the patch size drawn at the same `(seed, step)`.
PATCH_SIZE_SALT = 0x9A7C5

#: The kind that chains other kinds over ranges of steps (`flexi.schedule.stages`).
CURRICULUM = "curriculum"

#: `(sizes, key, **options) -> weights`: see `StageKind.probs`.
StageProbs = Callable[..., Any]


def _check_nonneg_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 0:
        raise ValueError(f"{name} must be an int >= 0, got {value!r}")
    return int(value)


def _is_real(x: Any) -> bool:
    return isinstance(x, int | float | np.integer | np.floating) and not isinstance(x, bool)


def choice_at(seed: int, step: int, probs: Sequence[float], salt: int = 0) -> int:
    """Return the index drawn from `probs` for training step `step`; pure in its arguments.

    One uniform `u` in [0, 1) comes from `np.random.default_rng(SeedSequence([seed, step,
    salt])).random()` and is mapped through the inverse CDF of `probs` (normalised to sum 1,
    so non-negative weights are fine). No global RNG state is used: the same arguments give the
    same index on every host and after a restart, which makes resumed runs replay exactly.
    Entries with zero probability are never drawn. Different `salt` values give independent
    draws at the same `(seed, step)`; each per-step policy should use its own salt.

    Raises:
      ValueError: `seed`, `step` or `salt` is not an int >= 0, or `probs` (shape (K,)) is
        empty, has a negative or non-finite entry, or sums to 0.

    Source: per-step patch-size sampling of FlexiViT (Beyer et al., CVPR 2023, Sec. 3;
    big_vision seeds its host RNG with the step in the same way).
    """
    seed = _check_nonneg_int(seed, "seed")
    step = _check_nonneg_int(step, "step")
    salt = _check_nonneg_int(salt, "salt")
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 1 or p.size == 0:
        raise ValueError(f"probs must be a non-empty 1-D sequence, got shape {p.shape}")
    if not np.all(np.isfinite(p)) or np.any(p < 0):
        raise ValueError(f"probs must be finite and >= 0, got {p.tolist()}")
    cdf = np.cumsum(p)
    if cdf[-1] <= 0:
        raise ValueError(f"probs must have a positive sum, got {p.tolist()}")
    cdf /= cdf[-1]  # last entry is exactly 1.0, so u < 1 always lands on a valid index
    u = np.random.default_rng(np.random.SeedSequence([seed, step, salt])).random()
    return min(int(np.searchsorted(cdf, u, side="right")), p.size - 1)


def gaussian_probs(patch_sizes: Sequence[int], mean: float, std: float) -> np.ndarray:
    """Return the discretised Gaussian `p_i ∝ exp(-(s_i - mean)^2 / (2 std^2))` over sizes.

    `mean` and `std` are in pixels (patch-size units), evaluated at the size values `s_i`,
    so central sizes come up more often. The result, shape (K,) for K sizes, is float64, aligned
    with `patch_sizes` and sums to 1; it is computed stably, so a `mean` far outside the sizes
    concentrates on the nearest size instead of underflowing to all zeros.

    Raises:
      ValueError: `std` is not a finite number > 0 or `mean` is not finite.

    Source: a Gaussian over the ordered sizes with a set centre and standard deviation
    (FlexiViT, Beyer et al., CVPR 2023; patent CN117556885A, claims 14-16).
    """
    if not _is_real(std) or not math.isfinite(std) or std <= 0:
        raise ValueError(f"std must be a finite number > 0, got {std!r}")
    if not _is_real(mean) or not math.isfinite(mean):
        raise ValueError(f"mean must be a finite number, got {mean!r}")
    s = np.asarray(patch_sizes, dtype=np.float64)
    logits = -((s - float(mean)) ** 2) / (2.0 * float(std) ** 2)
    w = np.exp(logits - logits.max())
    return w / w.sum()


# --- schedule kinds: the public hook --------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class StageKind:
    """A non-curriculum schedule kind, as registered in `STAGE_KINDS`.

    Attributes:
      keys: the config keys the kind reads besides `kind`, in the order errors list them; each
        must be set and not None.
      probs: `(sizes, key, **{k: value for k in keys}) -> weights`: `sizes` are the stage's
        patch sizes (pixels, K of them), `key` the config path for errors; returns K finite
        weights >= 0, not all 0 (normalised to sum 1 by the caller). Raises ValueError, naming
        `key` and the fix, for a bad value.
    """

    keys: tuple[str, ...]
    probs: StageProbs


#: Schedule kinds by name, in the order errors list them (`CURRICULUM` chains them).
STAGE_KINDS: dict[str, StageKind] = {}


def register_stage_kind(name: str,
                        keys: Sequence[str] = ()) -> Callable[[StageProbs], StageProbs]:
    """Decorator registering `fn` as the schedule kind `name` (see the module docstring).

    `keys`: the config keys `fn` takes as keyword arguments (besides `kind`).

    Raises:
      ValueError: `name` is not a non-empty str, is `CURRICULUM`, or is already registered.
    """
    if not isinstance(name, str) or not name or name == CURRICULUM or name in STAGE_KINDS:
        raise ValueError(f"schedule kind {name!r} is taken or invalid; registered: "
                         f"{', '.join((*STAGE_KINDS, CURRICULUM))}; choose a new name")

    def register(fn: StageProbs) -> StageProbs:
        STAGE_KINDS[name] = StageKind(tuple(keys), fn)
        return fn

    return register


@register_stage_kind("uniform")
def _uniform(sizes: tuple[int, ...], key: str) -> np.ndarray:
    return np.ones(len(sizes))


@register_stage_kind("weighted", keys=("probs",))
def _weighted(sizes: tuple[int, ...], key: str, *, probs: Any) -> np.ndarray:
    raw = probs
    if isinstance(raw, str) or not isinstance(raw, Iterable):
        raise ValueError(f"{key}.probs={raw!r}: give one weight per patch size")
    raw = tuple(raw)
    if len(raw) != len(sizes):
        raise ValueError(
            f"{key}.probs has {len(raw)} entries but there are {len(sizes)} patch sizes "
            f"{sizes}; give one weight per size"
        )
    if not all(_is_real(x) for x in raw):
        raise ValueError(f"{key}.probs={raw!r}: weights must be numbers >= 0")
    p = np.asarray(raw, dtype=np.float64)
    if not np.all(np.isfinite(p)) or np.any(p < 0) or p.sum() <= 0:
        raise ValueError(f"{key}.probs={raw!r}: weights must be finite, >= 0 and not all 0 "
                         "(they are normalised to sum to 1)")
    return p


@register_stage_kind("gaussian", keys=("mean", "std"))
def _gaussian(sizes: tuple[int, ...], key: str, *, mean: Any, std: Any) -> np.ndarray:
    try:
        return gaussian_probs(sizes, mean, std)
    except ValueError as e:
        raise ValueError(f"{key}: {e} (mean={mean!r}, std={std!r})") from None


@register_stage_kind("fixed", keys=("patch_size",))
def _fixed(sizes: tuple[int, ...], key: str, *, patch_size: Any) -> np.ndarray:
    if patch_size not in sizes:
        raise ValueError(f"{key}.patch_size={patch_size!r} is not one of the patch sizes {sizes}")
    return np.asarray([1.0 if s == patch_size else 0.0 for s in sizes])


# --- typed config ----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ScheduleStage:
    """One distribution of a schedule: applies to steps `< until_step` (None = forever).

    `probs` is aligned with the schedule's `patch_sizes` (zero for sizes the stage excludes)
    and sums to 1.
    """

    until_step: int | None
    probs: tuple[float, ...]


def _as_dict(cfg: Any, key: str) -> dict[str, Any]:
    if hasattr(cfg, "to_dict"):  # ml_collections.ConfigDict / FrozenConfigDict
        return dict(cfg.to_dict())
    if isinstance(cfg, Mapping):
        return dict(cfg)
    raise ValueError(f"{key}: expected a dict or ConfigDict, got {type(cfg).__name__}")


@dataclasses.dataclass(frozen=True, kw_only=True)
class StageSpec:
    """One configured distribution: a whole non-curriculum schedule, or one curriculum stage.

    Parse it with `from_config`; it checks itself in `__post_init__` and resolves `probs`.

    Attributes:
      schedule_sizes: `flexi.patch_sizes` (pixels), which `probs` is aligned with.
      kind: a key of `STAGE_KINDS`; `options`: the other keys given, as (name, value) pairs.
      patch_sizes: a curriculum stage's subset of `schedule_sizes` (None: all of them).
      until_step: a curriculum stage's end step (exclusive; None: forever, last stage only);
        `start`: its first step (the previous `until_step`, or 0); `last`: the last stage.
      in_stage: a curriculum stage (it takes `until_step` and `patch_sizes`).
      key: the config path named in errors, e.g. "flexi.schedule.stages[1]".
      probs: (derived) the distribution over `schedule_sizes` (K floats summing to 1).

    Raises:
      ValueError: (one line naming `key` and the fix) an `until_step` that is None before the
        last stage, not an int, or not above `start`; an unknown kind; unknown or missing keys;
        a `patch_sizes` subset that is invalid or not within `schedule_sizes`; a bad value for
        the kind (e.g. negative or all-zero weights, `std <= 0`, a `fixed` size not listed).
    """

    schedule_sizes: tuple[int, ...]
    kind: str = "uniform"
    options: tuple[tuple[str, Any], ...] = ()
    patch_sizes: tuple[int, ...] | None = None
    until_step: int | None = None
    start: int = 0
    last: bool = True
    in_stage: bool = False
    key: str = dataclasses.field(default="flexi.schedule", compare=False)
    probs: tuple[float, ...] = dataclasses.field(init=False)

    @classmethod
    def from_config(cls, cfg: Any, schedule_sizes: tuple[int, ...], *, key: str,
                    in_stage: bool = False, start: int = 0, last: bool = True) -> StageSpec:
        """Parse one schedule (or, `in_stage`, one curriculum stage) dict or ConfigDict.

        Raises:
          ValueError: `cfg` is not a dict; a stage's kind is "curriculum" or it lacks
            `until_step`; and everything `StageSpec` checks.
        """
        d = _as_dict(cfg, key)
        until = None
        sizes = None
        if in_stage:
            if d.get("kind") == CURRICULUM:
                raise ValueError(f"{key}.kind='curriculum' cannot be nested; use a flat list")
            if "until_step" not in d:
                raise ValueError(f"{key}.until_step is missing; set an int (None for the last)")
            until = d.pop("until_step")
            sizes = d.pop("patch_sizes", None)
        kind = d.pop("kind", "uniform")
        return cls(schedule_sizes=schedule_sizes, kind=kind, options=tuple(d.items()),
                   patch_sizes=sizes, until_step=until, start=start, last=last,
                   in_stage=in_stage, key=key)

    def __post_init__(self) -> None:
        key, until = self.key, self.until_step
        if until is None:
            if not self.last:
                raise ValueError(
                    f"{key}.until_step=None but it is not the last stage; only the last "
                    "stage may run forever"
                )
        else:
            if isinstance(until, bool) or not isinstance(until, int | np.integer):
                raise ValueError(f"{key}.until_step={until!r} must be an int or None")
            if until <= self.start:
                raise ValueError(
                    f"{key}.until_step={until} must be > {self.start} (the previous stage's "
                    "until_step, or 0); list stages in increasing until_step"
                )
            object.__setattr__(self, "until_step", int(until))

        if self.kind not in STAGE_KINDS:
            kinds = (*STAGE_KINDS,) if self.in_stage else (*STAGE_KINDS, CURRICULUM)
            raise ValueError(f"{key}.kind={self.kind!r} is unknown; use one of "
                             f"{', '.join(kinds)}")
        kind = STAGE_KINDS[self.kind]
        options = dict(self.options)
        allowed = {"kind", *kind.keys} | ({"until_step", "patch_sizes"} if self.in_stage else set())
        extra = sorted(set(options) - allowed)
        if extra:
            raise ValueError(f"{key}: unknown key(s) {', '.join(extra)} for kind {self.kind!r}; "
                             f"allowed: {', '.join(sorted(allowed))}")
        missing = [k for k in kind.keys if options.get(k) is None]
        if missing:
            raise ValueError(f"{key}: kind {self.kind!r} needs {', '.join(missing)}; add it to "
                             f"{key}")

        all_sizes = self.schedule_sizes
        sizes = all_sizes
        if self.patch_sizes is not None:
            sizes = check_patch_sizes(self.patch_sizes, f"{key}.patch_sizes")
            object.__setattr__(self, "patch_sizes", sizes)
            outside = [p for p in sizes if p not in all_sizes]
            if outside:
                raise ValueError(
                    f"{key}.patch_sizes: {', '.join(map(str, outside))} not in flexi.patch_sizes "
                    f"{all_sizes}; use a subset of flexi.patch_sizes"
                )

        p = np.asarray(kind.probs(sizes, key, **{k: options[k] for k in kind.keys}),
                       dtype=np.float64)
        if (p.shape != (len(sizes),) or not np.all(np.isfinite(p)) or np.any(p < 0)
                or p.sum() <= 0):
            raise ValueError(f"{key}: kind {self.kind!r} gave weights {p.tolist()} for sizes "
                             f"{sizes}; its function must return one finite weight >= 0 per "
                             "size, not all 0")
        full = np.zeros(len(all_sizes))
        for s, ps in zip(sizes, p / p.sum(), strict=True):
            full[all_sizes.index(s)] = ps
        object.__setattr__(self, "probs", tuple(full.tolist()))


def _parse_schedule(cfg: Any, sizes: tuple[int, ...], key: str) -> tuple[StageSpec, ...]:
    """`flexi.schedule` (None: uniform) -> its stages, in step order."""
    sched = {"kind": "uniform"} if cfg is None else _as_dict(cfg, key)
    if sched.get("kind", "uniform") != CURRICULUM:
        return (StageSpec.from_config(sched, sizes, key=key),)
    extra = sorted(set(sched) - {"kind", "stages"})
    if extra:
        raise ValueError(f"{key}: unknown key(s) {', '.join(extra)} for kind 'curriculum'; "
                         "allowed: kind, stages")
    raw = sched.get("stages")
    if isinstance(raw, str | Mapping) or not isinstance(raw, Iterable) or not list(raw):
        raise ValueError(f"{key}.stages={raw!r}: give a non-empty list of stage dicts, each with "
                         "until_step (int or None for the last) and a kind")
    specs: list[StageSpec] = []
    start, raw = 0, list(raw)
    for i, st in enumerate(raw):
        spec = StageSpec.from_config(st, sizes, key=f"{key}.stages[{i}]", in_stage=True,
                                     start=start, last=i == len(raw) - 1)
        start = start if spec.until_step is None else spec.until_step
        specs.append(spec)
    return tuple(specs)


@dataclasses.dataclass(frozen=True)
class PatchSizeSchedule:
    """Which patch size each training step uses; a pure function of `(seed, step)`.

    `patch_sizes` are pixels, in config order. `stages` are the distributions in step order
    (a single stage with `until_step=None` for non-curriculum kinds). `seed` keys the draws.
    Build it with `from_config`. Source: FlexiViT per-step patch-size sampling (Beyer et al.,
    "FlexiViT: One Model for All Patch Sizes", CVPR 2023, Sec. 3); uniform, Gaussian and
    curriculum distributions (patent CN117556885A, claims 14-16).

    Raises:
      ValueError: invalid `patch_sizes` or `seed`, no stages, a stage whose `probs` length
        differs from `patch_sizes`, or `until_step`s that are not increasing ints >= 0 (only
        the last may be None).
    """

    patch_sizes: tuple[int, ...]
    stages: tuple[ScheduleStage, ...]
    seed: int = 0

    def __post_init__(self) -> None:
        check_patch_sizes(self.patch_sizes, "patch_sizes")
        _check_nonneg_int(self.seed, "seed")
        if not self.stages:
            raise ValueError("stages is empty; give at least one ScheduleStage")
        prev = 0
        for i, st in enumerate(self.stages):
            if len(st.probs) != len(self.patch_sizes):
                raise ValueError(f"stages[{i}].probs has {len(st.probs)} entries for "
                                 f"{len(self.patch_sizes)} patch sizes; give one per size")
            if st.until_step is None:
                if i != len(self.stages) - 1:
                    raise ValueError(f"stages[{i}].until_step=None; only the last may be None")
                continue
            if _check_nonneg_int(st.until_step, f"stages[{i}].until_step") <= prev:
                raise ValueError(f"stages[{i}].until_step={st.until_step} must exceed the previous "
                                 f"boundary {prev}; list stages in increasing until_step")
            prev = st.until_step

    @classmethod
    def from_config(cls, cfg: Any, *, image_size: int | tuple[int, int] | None = None,
                    seed: int = 0, key: str = "flexi") -> PatchSizeSchedule:
        """Build the schedule from the `config.flexi` section (dict or ConfigDict).

        Reads `patch_sizes` and `schedule` (see the module docstring for the exact keys;
        a missing `schedule` means uniform). If `image_size` (pixels, int or (H, W)) is
        given, every patch size must divide it. `seed` (int >= 0) keys the per-step draws;
        `key` is the config path used in error messages.

        Raises:
          ValueError: naming the config key and the fix, for: missing/invalid patch sizes,
            sizes not dividing `image_size`, an unknown `kind` or unknown keys, weights that
            are negative, all zero or of the wrong length, `std <= 0`, a `fixed` size or stage
            subset outside `patch_sizes`, or curriculum `until_step` values that do not
            increase (only the last may be None).
        """
        d = _as_dict(cfg, key)
        if d.get("patch_sizes") is None:
            raise ValueError(f"{key}.patch_sizes is missing; set it, e.g. (8, 12, 16, 24, 48)")
        sizes = check_patch_sizes(d["patch_sizes"], f"{key}.patch_sizes")
        if image_size is not None:
            validate_patch_sizes(sizes, image_size, key=f"{key}.patch_sizes")
        specs = _parse_schedule(d.get("schedule"), sizes, f"{key}.schedule")
        stages = tuple(ScheduleStage(s.until_step, s.probs) for s in specs)
        return cls(patch_sizes=sizes, stages=stages, seed=_check_nonneg_int(seed, "seed"))

    def stage_index(self, step: int) -> int:
        """Index into `stages` of the stage used at `step` (int >= 0).

        Steps at or past the last finite `until_step` use the last stage.

        Raises:
          ValueError: a negative or non-int step.
        """
        step = _check_nonneg_int(step, "step")
        for i, st in enumerate(self.stages):
            if st.until_step is None or step < st.until_step:
                return i
        return len(self.stages) - 1

    def probs_at(self, step: int) -> np.ndarray:
        """Distribution over `patch_sizes` (float64, shape (K,), sums to 1) used at `step`.

        Raises:
          ValueError: a negative or non-int step.
        """
        return np.asarray(self.stages[self.stage_index(step)].probs, dtype=np.float64)

    def __call__(self, step: int) -> int:
        """The patch size (pixels, a Python int) for `step`; pure in `(seed, step)`.

        Uses `choice_at` with salt `PATCH_SIZE_SALT`, so a fresh schedule built from the same
        config and seed returns the same size for the same step (exact resume replay).

        Raises:
          ValueError: a negative or non-int step.
        """
        probs = self.stages[self.stage_index(step)].probs
        return self.patch_sizes[choice_at(self.seed, step, probs, salt=PATCH_SIZE_SALT)]

    def sizes_for(self, steps: Iterable[int]) -> np.ndarray:
        """Patch sizes (pixels) for each step in `steps` (e.g. a `range`), int64, shape (N,)."""
        return np.fromiter((self(s) for s in steps), dtype=np.int64)
