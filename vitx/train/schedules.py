"""Per-step patch-size schedules for FlexiViT training.

FlexiViT trains one set of weights at many patch sizes by picking one patch size per training
step, for the whole global batch, from a configured distribution (uniform, a fixed non-uniform
one such as a Gaussian over the ordered sizes, or a curriculum: a sequence of distributions each
tied to a range of steps). Source: Beyer et al., "FlexiViT: One Model for All Patch Sizes",
CVPR 2023 (patent CN117556885A, L169-175, claims 14-16).

Every choice here is a pure function of ``(seed, step)`` computed on the host with numpy (not
JAX): the result is a static Python ``int`` used to pick one compiled program per patch size.
No global RNG state is read or written, so every host agrees on the choice and a resumed run
replays exactly the same sizes, as in big_vision's ``np.random.default_rng((xid, wid, step))``.

Config schema (``config.flexi``; a plain ``dict`` or an ``ml_collections.ConfigDict``)::

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

A curriculum stage holds the keys of a non-curriculum kind (``kind`` defaults to "uniform"),
plus ``until_step`` and an optional ``patch_sizes`` (a subset of ``flexi.patch_sizes``; default
all of them). Stage ``k`` applies to steps ``until_step[k-1] <= step < until_step[k]`` (the first
stage starts at step 0). Only the last stage may have ``until_step=None`` (forever); if every
stage is finite, steps at or past the last ``until_step`` keep using the last stage. Unknown keys
are errors. Curriculum stages are a list of dicts, which ``ConfigDict`` accepts but
``FrozenConfigDict`` does not.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

__all__ = [
    "KINDS",
    "PATCH_SIZE_SALT",
    "PatchSizeSchedule",
    "ScheduleStage",
    "choice_at",
    "gaussian_probs",
    "validate_patch_sizes",
]

#: Salt that keys the patch-size draw; other per-step policies must use their own salt so their
#: choices are independent of the patch size drawn at the same ``(seed, step)``.
PATCH_SIZE_SALT = 0x9A7C5

#: Schedule kinds accepted in ``flexi.schedule.kind``.
KINDS = ("uniform", "weighted", "gaussian", "fixed", "curriculum")

# Extra keys each non-curriculum kind takes (besides "kind"; stages also take until_step and
# patch_sizes).
_KIND_KEYS: dict[str, tuple[str, ...]] = {
    "uniform": (),
    "weighted": ("probs",),
    "gaussian": ("mean", "std"),
    "fixed": ("patch_size",),
}


def _check_nonneg_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 0:
        raise ValueError(f"{name} must be an int >= 0, got {value!r}")
    return int(value)


def choice_at(seed: int, step: int, probs: Sequence[float], salt: int = 0) -> int:
    """Return the index drawn from ``probs`` for training step ``step``; pure in its arguments.

    One uniform ``u`` in [0, 1) comes from ``np.random.default_rng(SeedSequence([seed, step,
    salt])).random()`` and is mapped through the inverse CDF of ``probs`` (normalised to sum 1,
    so non-negative weights are fine). No global RNG state is used: the same arguments give the
    same index on every host and after a restart, which makes resumed runs replay exactly.
    Entries with zero probability are never drawn. Different ``salt`` values give independent
    draws at the same ``(seed, step)``; each per-step policy should use its own salt.

    Raises ValueError if ``seed``, ``step`` or ``salt`` is not an int >= 0, or ``probs`` is empty,
    has a negative or non-finite entry, or sums to 0.

    Source: per-step scheme sampling of FlexiViT (Beyer et al., CVPR 2023; big_vision seeds its
    host RNG with the step in the same way).
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
    """Return the discretised Gaussian ``p_i ∝ exp(-(s_i - mean)^2 / (2 std^2))`` over sizes.

    ``mean`` and ``std`` are in pixels (patch-size units), evaluated at the size values ``s_i``,
    so central sizes come up more often. The result is float64, aligned with ``patch_sizes`` and
    sums to 1; it is computed stably, so a ``mean`` far outside the sizes concentrates on the
    nearest size instead of underflowing to all zeros.

    Raises ValueError if ``std`` is not a finite number > 0 or ``mean`` is not finite.

    Source: "a Gaussian over the ordered schemes with a set centre and standard deviation"
    (FlexiViT, Beyer et al., CVPR 2023; patent CN117556885A L172).
    """
    if not _is_real(std) or not math.isfinite(std) or std <= 0:
        raise ValueError(f"std must be a finite number > 0, got {std!r}")
    if not _is_real(mean) or not math.isfinite(mean):
        raise ValueError(f"mean must be a finite number, got {mean!r}")
    s = np.asarray(patch_sizes, dtype=np.float64)
    logits = -((s - float(mean)) ** 2) / (2.0 * float(std) ** 2)
    w = np.exp(logits - logits.max())
    return w / w.sum()


def _is_real(x: Any) -> bool:
    return isinstance(x, int | float | np.integer | np.floating) and not isinstance(x, bool)


def _image_hw(image_size: int | Sequence[int], key: str) -> tuple[int, int]:
    if isinstance(image_size, int | np.integer) and not isinstance(image_size, bool):
        hw = (int(image_size), int(image_size))
    elif isinstance(image_size, Sequence) and len(image_size) == 2:
        hw = (image_size[0], image_size[1])
    else:
        raise ValueError(f"{key}: image size {image_size!r} must be an int or (height, width)")
    if any(isinstance(v, bool) or not isinstance(v, int | np.integer) or v <= 0 for v in hw):
        raise ValueError(f"{key}: image size {image_size!r} must be positive ints")
    return int(hw[0]), int(hw[1])


def _check_patch_sizes(patch_sizes: Any, key: str) -> tuple[int, ...]:
    if isinstance(patch_sizes, str) or not isinstance(patch_sizes, Iterable):
        raise ValueError(f"{key}={patch_sizes!r}: must be a sequence of ints > 0, e.g. (8, 16)")
    sizes = tuple(patch_sizes)
    if not sizes:
        raise ValueError(f"{key}=(): give at least one patch size, e.g. (8, 16)")
    bad = [p for p in sizes if isinstance(p, bool) or not isinstance(p, int | np.integer) or p <= 0]
    if bad:
        raise ValueError(f"{key}={sizes!r}: {bad!r} are not ints > 0; use positive int sizes")
    sizes = tuple(int(p) for p in sizes)
    dups = sorted({p for p in sizes if sizes.count(p) > 1})
    if dups:
        raise ValueError(f"{key}={sizes!r}: {dups} repeated; list each size once")
    return sizes


def validate_patch_sizes(
    patch_sizes: Sequence[int],
    image_size: int | tuple[int, int],
    key: str = "flexi.patch_sizes",
) -> None:
    """Check that every patch size is a positive int dividing the image height and width.

    ``image_size`` is in pixels, an int (square) or ``(height, width)``. A size ``p`` gives
    ``(H / p) * (W / p)`` non-overlapping patches, so it must divide both sides exactly.

    Raises ValueError naming the offending sizes and suggesting valid ones, e.g.
    ``"flexi.patch_sizes: 5, 7 do not divide image size 48; use divisors of 48 such as 2, 3, 4,
    6, 8, 12, 16, 24"``; also for an empty list, non-int or repeated sizes, or a bad image size.

    Source: FlexiViT token count s = (h/p)(w/p) (Beyer et al., CVPR 2023; patent L177-178).
    """
    sizes = _check_patch_sizes(patch_sizes, key)
    h, w = _image_hw(image_size, key)
    bad = [p for p in sizes if h % p or w % p]
    if not bad:
        return
    shown = f"{h}" if h == w else f"{h}x{w}"
    good = [d for d in range(2, min(h, w)) if h % d == 0 and w % d == 0]
    hint = (
        f"use divisors of {shown} such as {', '.join(map(str, good))}"
        if good
        else f"no size between 1 and {min(h, w)} divides {shown}; change the image size"
    )
    raise ValueError(f"{key}: {', '.join(map(str, bad))} do not divide image size {shown}; {hint}")


@dataclasses.dataclass(frozen=True)
class ScheduleStage:
    """One distribution of a schedule: applies to steps ``< until_step`` (None = forever).

    ``probs`` is aligned with the schedule's ``patch_sizes`` (zero for sizes the stage excludes)
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


def _stage_probs(
    spec: dict[str, Any], all_sizes: tuple[int, ...], key: str, *, in_stage: bool
) -> np.ndarray:
    """Probabilities over ``all_sizes`` for one non-curriculum schedule spec."""
    kind = spec.get("kind", "uniform")
    if kind not in _KIND_KEYS:
        allowed = ", ".join(_KIND_KEYS) if in_stage else ", ".join(KINDS)
        raise ValueError(f"{key}.kind={kind!r} is unknown; use one of {allowed}")
    allowed_keys = {"kind", *_KIND_KEYS[kind]}
    if in_stage:
        allowed_keys |= {"until_step", "patch_sizes"}
    extra = sorted(set(spec) - allowed_keys)
    if extra:
        raise ValueError(
            f"{key}: unknown key(s) {', '.join(extra)} for kind {kind!r}; "
            f"allowed: {', '.join(sorted(allowed_keys))}"
        )
    missing = [k for k in _KIND_KEYS[kind] if spec.get(k) is None]
    if missing:
        raise ValueError(f"{key}: kind {kind!r} needs {', '.join(missing)}; add it to {key}")

    sizes = all_sizes
    if in_stage and spec.get("patch_sizes") is not None:
        sizes = _check_patch_sizes(spec["patch_sizes"], f"{key}.patch_sizes")
        outside = [p for p in sizes if p not in all_sizes]
        if outside:
            raise ValueError(
                f"{key}.patch_sizes: {', '.join(map(str, outside))} not in flexi.patch_sizes "
                f"{all_sizes}; use a subset of flexi.patch_sizes"
            )

    if kind == "uniform":
        p = np.ones(len(sizes))
    elif kind == "weighted":
        raw = spec["probs"]
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
            raise ValueError(
                f"{key}.probs={raw!r}: weights must be finite, >= 0 and not all 0 "
                "(they are normalised to sum to 1)"
            )
    elif kind == "gaussian":
        try:
            p = gaussian_probs(sizes, spec["mean"], spec["std"])
        except ValueError as e:
            raise ValueError(f"{key}: {e} (mean={spec['mean']!r}, std={spec['std']!r})") from None
    else:  # fixed
        ps = spec["patch_size"]
        if ps not in sizes:
            raise ValueError(f"{key}.patch_size={ps!r} is not one of the patch sizes {sizes}")
        p = np.asarray([1.0 if s == ps else 0.0 for s in sizes])

    full = np.zeros(len(all_sizes))
    for s, ps in zip(sizes, p / p.sum(), strict=True):
        full[all_sizes.index(s)] = ps
    return full


@dataclasses.dataclass(frozen=True)
class PatchSizeSchedule:
    """Which patch size each training step uses; a pure function of ``(seed, step)``.

    ``patch_sizes`` are pixels, in config order. ``stages`` are the distributions in step order
    (a single stage with ``until_step=None`` for non-curriculum kinds). ``seed`` keys the draws.
    Build it with :meth:`from_config`. Source: FlexiViT per-step patch-size sampling, uniform,
    Gaussian and curriculum (Beyer et al., "FlexiViT: One Model for All Patch Sizes", CVPR
    2023; patent CN117556885A L169-175, claims 14-16).
    """

    patch_sizes: tuple[int, ...]
    stages: tuple[ScheduleStage, ...]
    seed: int = 0

    def __post_init__(self) -> None:
        _check_patch_sizes(self.patch_sizes, "patch_sizes")
        _check_nonneg_int(self.seed, "seed")
        if not self.stages:
            raise ValueError("stages is empty; give at least one ScheduleStage")
        prev = 0
        for i, st in enumerate(self.stages):
            if len(st.probs) != len(self.patch_sizes):
                raise ValueError(
                    f"stages[{i}].probs has {len(st.probs)} entries for "
                    f"{len(self.patch_sizes)} patch sizes; give one per size"
                )
            if st.until_step is None:
                if i != len(self.stages) - 1:
                    raise ValueError(f"stages[{i}].until_step=None; only the last may be None")
                continue
            if _check_nonneg_int(st.until_step, f"stages[{i}].until_step") <= prev:
                raise ValueError(
                    f"stages[{i}].until_step={st.until_step} must exceed the previous "
                    f"boundary {prev}; list stages in increasing until_step"
                )
            prev = st.until_step

    @classmethod
    def from_config(
        cls,
        cfg: Any,
        *,
        image_size: int | tuple[int, int] | None = None,
        seed: int = 0,
        key: str = "flexi",
    ) -> PatchSizeSchedule:
        """Build the schedule from the ``config.flexi`` section (dict or ConfigDict).

        Reads ``patch_sizes`` and ``schedule`` (see the module docstring for the exact keys;
        a missing ``schedule`` means uniform). If ``image_size`` (pixels, int or (H, W)) is
        given, every patch size must divide it. ``seed`` (int >= 0) keys the per-step draws;
        ``key`` is the config path used in error messages.

        Raises ValueError, naming the config key and the fix, for: missing/invalid patch sizes,
        sizes not dividing ``image_size``, an unknown ``kind`` or unknown keys, weights that
        are negative, all zero or of the wrong length, ``std <= 0``, a ``fixed`` size or stage
        subset outside ``patch_sizes``, or curriculum ``until_step`` values that do not increase
        (only the last may be None).
        """
        d = _as_dict(cfg, key)
        if d.get("patch_sizes") is None:
            raise ValueError(f"{key}.patch_sizes is missing; set it, e.g. (8, 12, 16, 24, 48)")
        sizes = _check_patch_sizes(d["patch_sizes"], f"{key}.patch_sizes")
        if image_size is not None:
            validate_patch_sizes(sizes, image_size, key=f"{key}.patch_sizes")
        sched_key = f"{key}.schedule"
        sched = (
            {"kind": "uniform"} if d.get("schedule") is None else _as_dict(d["schedule"], sched_key)
        )
        kind = sched.get("kind", "uniform")

        if kind != "curriculum":
            stages = (
                ScheduleStage(
                    None, tuple(_stage_probs(sched, sizes, sched_key, in_stage=False).tolist())
                ),
            )
            return cls(patch_sizes=sizes, stages=stages, seed=_check_nonneg_int(seed, "seed"))

        extra = sorted(set(sched) - {"kind", "stages"})
        if extra:
            raise ValueError(
                f"{sched_key}: unknown key(s) {', '.join(extra)} for kind 'curriculum'; "
                "allowed: kind, stages"
            )
        raw = sched.get("stages")
        if isinstance(raw, str | Mapping) or not isinstance(raw, Iterable) or not list(raw):
            raise ValueError(
                f"{sched_key}.stages={raw!r}: give a non-empty list of stage dicts, each with "
                "until_step (int or None for the last) and a kind"
            )
        stages_list: list[ScheduleStage] = []
        prev = 0
        raw = list(raw)
        for i, st in enumerate(raw):
            skey = f"{sched_key}.stages[{i}]"
            sd = _as_dict(st, skey)
            if sd.get("kind") == "curriculum":
                raise ValueError(f"{skey}.kind='curriculum' cannot be nested; use a flat list")
            if "until_step" not in sd:
                raise ValueError(f"{skey}.until_step is missing; set an int (None for the last)")
            until = sd["until_step"]
            if until is None:
                if i != len(raw) - 1:
                    raise ValueError(
                        f"{skey}.until_step=None but it is not the last stage; only the last "
                        "stage may run forever"
                    )
            else:
                if isinstance(until, bool) or not isinstance(until, int | np.integer):
                    raise ValueError(f"{skey}.until_step={until!r} must be an int or None")
                if until <= prev:
                    raise ValueError(
                        f"{skey}.until_step={until} must be > {prev} (the previous stage's "
                        "until_step, or 0); list stages in increasing until_step"
                    )
                until = prev = int(until)
            probs = _stage_probs(sd, sizes, skey, in_stage=True)
            stages_list.append(ScheduleStage(until, tuple(probs.tolist())))
        return cls(
            patch_sizes=sizes, stages=tuple(stages_list), seed=_check_nonneg_int(seed, "seed")
        )

    def stage_index(self, step: int) -> int:
        """Index into ``stages`` of the stage used at ``step`` (int >= 0).

        Steps at or past the last finite ``until_step`` use the last stage. Raises ValueError for
        a negative or non-int step.
        """
        step = _check_nonneg_int(step, "step")
        for i, st in enumerate(self.stages):
            if st.until_step is None or step < st.until_step:
                return i
        return len(self.stages) - 1

    def probs_at(self, step: int) -> np.ndarray:
        """Distribution over ``patch_sizes`` (float64, sums to 1) used at ``step``.

        Raises ValueError for a negative or non-int step.
        """
        return np.asarray(self.stages[self.stage_index(step)].probs, dtype=np.float64)

    def __call__(self, step: int) -> int:
        """The patch size (pixels, a Python int) for ``step``; pure in ``(seed, step)``.

        Uses :func:`choice_at` with salt :data:`PATCH_SIZE_SALT`, so a fresh schedule built from
        the same config and seed returns the same size for the same step (exact resume replay).
        Raises ValueError for a negative or non-int step.
        """
        idx = choice_at(
            self.seed, step, self.stages[self.stage_index(step)].probs, salt=PATCH_SIZE_SALT
        )
        return self.patch_sizes[idx]

    def sizes_for(self, steps: Iterable[int]) -> np.ndarray:
        """Patch sizes for each step in ``steps`` (e.g. a ``range``), as an int64 array."""
        return np.fromiter((self(s) for s in steps), dtype=np.int64)
