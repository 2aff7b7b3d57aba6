"""Tests for vitx.train.schedules (FlexiViT per-step patch-size sampling, Beyer et al. 2023)."""

from __future__ import annotations

import ml_collections
import numpy as np
import pytest
from scipy import stats

from vitx.train.schedules import (
    PatchSizeSchedule,
    ScheduleStage,
    choice_at,
    gaussian_probs,
)
from vitx.utils.patch_sizes import validate_patch_sizes

SIZES = (4, 6, 8, 12, 16, 24)  # all divide 48
N_STEPS = 20_000


def _counts(sizes: np.ndarray, patch_sizes: tuple[int, ...]) -> np.ndarray:
    return np.array([(sizes == p).sum() for p in patch_sizes])


def _chisquare_p(sched: PatchSizeSchedule, steps: range) -> float:
    counts = _counts(sched.sizes_for(steps), sched.patch_sizes)
    expected = sched.probs_at(steps[0]) * len(steps)
    assert counts.sum() == len(steps)
    return stats.chisquare(counts, expected).pvalue


@pytest.mark.parametrize(
    ("schedule", "expected_probs"),
    [
        (dict(kind="uniform"), np.full(6, 1 / 6)),
        (dict(kind="weighted", probs=(1, 2, 3, 4, 5, 5)), np.array([1, 2, 3, 4, 5, 5]) / 20),
        (
            dict(kind="gaussian", mean=10.0, std=6.0),
            np.exp(-((np.array(SIZES) - 10.0) ** 2) / 72.0)
            / np.exp(-((np.array(SIZES) - 10.0) ** 2) / 72.0).sum(),
        ),
    ],
    ids=["uniform", "weighted", "gaussian"],
)
def test_frequencies_match_probs(schedule: dict, expected_probs: np.ndarray) -> None:
    sched = PatchSizeSchedule.from_config(
        dict(patch_sizes=SIZES, schedule=schedule), image_size=48, seed=3
    )
    np.testing.assert_allclose(sched.probs_at(0), expected_probs, rtol=1e-12)
    np.testing.assert_allclose(sched.probs_at(10**9), expected_probs, rtol=1e-12)
    assert _chisquare_p(sched, range(N_STEPS)) > 1e-3


def test_chisquare_has_power() -> None:
    """The frequency test above would catch a sampler that ignored the weights."""
    uniform = PatchSizeSchedule.from_config(dict(patch_sizes=SIZES), seed=3)
    counts = _counts(uniform.sizes_for(range(N_STEPS)), SIZES)
    weighted = np.array([1, 2, 3, 4, 5, 5]) / 20
    assert stats.chisquare(counts, weighted * N_STEPS).pvalue < 1e-10


def test_choice_at_frequencies_and_zero_probs() -> None:
    probs = [0.0, 0.25, 0.0, 0.75, 0.0]
    idx = np.array([choice_at(11, s, probs, salt=5) for s in range(8000)])
    assert set(idx.tolist()) == {1, 3}
    n3 = (idx == 3).sum()
    # Binomial(8000, 0.75): std ~ 38.7; allow 5 std.
    assert abs(n3 - 6000) < 5 * np.sqrt(8000 * 0.75 * 0.25)


def test_choice_at_is_pure_and_salts_are_independent() -> None:
    probs = np.full(10, 0.1)
    a = [choice_at(7, s, probs, salt=1) for s in range(2000)]
    assert a == [choice_at(7, s, probs, salt=1) for s in range(2000)]
    b = [choice_at(7, s, probs, salt=2) for s in range(2000)]
    # Independent uniform draws over 10 values agree ~10% of the time.
    agree = np.mean(np.array(a) == np.array(b))
    assert 0.06 < agree < 0.14
    # Same marginal over the ten indices regardless of global RNG state.
    np.random.seed(0)
    assert choice_at(7, 123, probs, salt=1) == a[123]


def test_gaussian_concentrates_on_mean_and_is_stable() -> None:
    p = gaussian_probs(SIZES, mean=12, std=2)
    assert int(np.argmax(p)) == SIZES.index(12)
    assert p[SIZES.index(8)] > p[SIZES.index(4)]
    # mean far outside: all mass on the nearest size instead of NaN/zeros.
    far = gaussian_probs(SIZES, mean=1000.0, std=0.5)
    assert np.isfinite(far).all() and far[-1] == pytest.approx(1.0)


def test_determinism_across_instances_and_seeds() -> None:
    cfg = dict(patch_sizes=SIZES, schedule=dict(kind="gaussian", mean=8, std=5))
    a = PatchSizeSchedule.from_config(cfg, seed=42).sizes_for(range(1000))
    b = PatchSizeSchedule.from_config(cfg, seed=42).sizes_for(range(1000))
    c = PatchSizeSchedule.from_config(cfg, seed=43).sizes_for(range(1000))
    np.testing.assert_array_equal(a, b)
    assert np.mean(a != c) > 0.5
    assert len(set(a.tolist())) == len(SIZES)  # different steps use different sizes (L149)


def test_resume_replay() -> None:
    cfg = dict(patch_sizes=SIZES, schedule=dict(kind="weighted", probs=(3, 1, 1, 1, 1, 3)))
    original = PatchSizeSchedule.from_config(cfg, seed=9)
    full = [original(s) for s in range(1000)]
    resumed = PatchSizeSchedule.from_config(cfg, seed=9)  # fresh process after a restart
    np.testing.assert_array_equal(resumed.sizes_for(range(500, 1000)), full[500:])
    # Calling order does not matter (no hidden state): replay backwards too.
    assert [resumed(s) for s in reversed(range(500, 1000))] == full[500:][::-1]


def test_configdict_and_dict_agree() -> None:
    cfg = dict(patch_sizes=SIZES, schedule=dict(kind="weighted", probs=(1, 1, 1, 1, 1, 5)))
    a = PatchSizeSchedule.from_config(cfg, seed=1)
    b = PatchSizeSchedule.from_config(ml_collections.ConfigDict(cfg), seed=1)
    assert a == b
    np.testing.assert_array_equal(a.sizes_for(range(300)), b.sizes_for(range(300)))


def test_fixed_and_default_uniform() -> None:
    fixed = PatchSizeSchedule.from_config(
        dict(patch_sizes=SIZES, schedule=dict(kind="fixed", patch_size=16))
    )
    assert set(fixed.sizes_for(range(200)).tolist()) == {16}
    default = PatchSizeSchedule.from_config(dict(patch_sizes=SIZES))
    np.testing.assert_allclose(default.probs_at(0), np.full(6, 1 / 6))


def _curriculum_cfg(last_until: int | None) -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(
        dict(
            patch_sizes=SIZES,
            schedule=dict(
                kind="curriculum",
                stages=[
                    dict(until_step=100, kind="uniform", patch_sizes=(16, 24)),
                    dict(
                        until_step=last_until,
                        kind="weighted",
                        patch_sizes=(4, 6, 8),
                        probs=(1, 1, 2),
                    ),
                ],
            ),
        )
    )


def test_curriculum_stage_switching() -> None:
    sched = PatchSizeSchedule.from_config(_curriculum_cfg(None), image_size=48, seed=5)
    before = sched.sizes_for(range(100))
    after = sched.sizes_for(range(100, 400))
    assert set(before.tolist()) == {16, 24}
    assert set(after.tolist()) == {4, 6, 8}
    # Boundary is exact: step 99 is stage 1, step 100 is stage 2.
    np.testing.assert_allclose(sched.probs_at(99), [0, 0, 0, 0, 0.5, 0.5])
    np.testing.assert_allclose(sched.probs_at(100), [0.25, 0.25, 0.5, 0, 0, 0])
    assert sched.stage_index(99) == 0 and sched.stage_index(100) == 1
    assert sched(99) in (16, 24) and sched(100) in (4, 6, 8)


def test_curriculum_past_last_finite_stage_keeps_last() -> None:
    sched = PatchSizeSchedule.from_config(_curriculum_cfg(1000), seed=5)
    np.testing.assert_allclose(sched.probs_at(5000), sched.probs_at(500))
    assert set(sched.sizes_for(range(1000, 1200)).tolist()) == {4, 6, 8}


def test_validate_patch_sizes_names_bad_sizes() -> None:
    validate_patch_sizes(SIZES, 48)
    validate_patch_sizes((8, 16), (32, 64))
    with pytest.raises(ValueError) as e:
        validate_patch_sizes((4, 5, 7, 8), 48)
    msg = str(e.value)
    assert msg.startswith("flexi.patch_sizes: 5, 7 do not divide image size 48")
    assert "4, 6, 8, 12, 16, 24" in msg and "\n" not in msg
    with pytest.raises(ValueError, match=r"16 do not divide image size 32x40; .* 2, 4, 8$"):
        validate_patch_sizes((8, 16), (32, 40))
    with pytest.raises(ValueError, match=r"flexi\.patch_sizes: 5 do not divide image size 48"):
        PatchSizeSchedule.from_config(dict(patch_sizes=(4, 5)), image_size=48)


@pytest.mark.parametrize(
    ("schedule", "pattern"),
    [
        (dict(kind="weighted", probs=(1, 2)), r"flexi\.schedule\.probs has 2 entries"),
        (dict(kind="weighted", probs=(1, -1, 1, 1, 1, 1)), r"flexi\.schedule\.probs=.*>= 0"),
        (dict(kind="weighted", probs=(0,) * 6), r"not all 0"),
        (dict(kind="weighted"), r"needs probs"),
        (dict(kind="gaussian", mean=8, std=0), r"std must be a finite number > 0"),
        (dict(kind="gaussian", mean=8, stdev=2), r"unknown key\(s\) stdev"),
        (dict(kind="linear"), r"flexi\.schedule\.kind='linear' is unknown; use one of"),
        (dict(kind="fixed", patch_size=10), r"patch_size=10 is not one of"),
        (
            dict(kind="curriculum", stages=[dict(until_step=None), dict(until_step=5)]),
            r"stages\[0\]\.until_step=None but it is not the last",
        ),
        (
            dict(kind="curriculum", stages=[dict(until_step=5), dict(until_step=5)]),
            r"stages\[1\]\.until_step=5 must be > 5",
        ),
        (
            dict(kind="curriculum", stages=[dict(until_step=5, patch_sizes=(4, 10))]),
            r"stages\[0\]\.patch_sizes: 10 not in flexi\.patch_sizes",
        ),
        (
            dict(kind="curriculum", stages=[dict(until_step=None, kind="bogus")]),
            r"stages\[0\]\.kind='bogus' is unknown",
        ),
    ],
)
def test_bad_schedule_config(schedule: dict, pattern: str) -> None:
    with pytest.raises(ValueError, match=pattern) as e:
        PatchSizeSchedule.from_config(dict(patch_sizes=SIZES, schedule=schedule))
    assert "\n" not in str(e.value)


def test_bad_patch_sizes_and_steps() -> None:
    with pytest.raises(ValueError, match=r"flexi\.patch_sizes is missing"):
        PatchSizeSchedule.from_config(dict(schedule=dict(kind="uniform")))
    with pytest.raises(ValueError, match=r"\[8\] repeated"):
        PatchSizeSchedule.from_config(dict(patch_sizes=(8, 8, 16)))
    with pytest.raises(ValueError, match=r"not ints > 0"):
        PatchSizeSchedule.from_config(dict(patch_sizes=(8, 0)))
    sched = PatchSizeSchedule.from_config(dict(patch_sizes=SIZES))
    with pytest.raises(ValueError, match=r"step must be an int >= 0"):
        sched(-1)
    with pytest.raises(ValueError, match=r"probs must have a positive sum"):
        choice_at(0, 0, [0.0, 0.0])
    with pytest.raises(ValueError, match=r"stages\[0\]\.until_step=None; only the last"):
        PatchSizeSchedule(
            SIZES,
            (ScheduleStage(None, (1.0,) + (0.0,) * 5), ScheduleStage(None, (1.0,) + (0.0,) * 5)),
        )
