"""Multi-task batching policies on the toy U = (3, 5, 7) (PolyViT Sec. 3.2; seed 004 FIG. 3)."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from vitx.train import steps
from vitx.train.task_schedules import KINDS, TaskSchedule

U = (3, 5, 7)


def seq(kind, seed=0):
    s = TaskSchedule(kind, U, seed=seed)
    return [s(i) for i in range(len(s))]


def test_task_by_task_gives_contiguous_blocks():
    tasks = [t[0] for t in seq("task_by_task")]
    assert len(tasks) == 15
    blocks = [(k, len(list(g))) for k, g in itertools.groupby(tasks)]
    assert len(blocks) == 3 and sorted(n for _, n in blocks) == [3, 5, 7]
    assert all(U[k] == n for k, n in blocks)
    orders = {tuple(k for k, _ in itertools.groupby(
        [t[0] for t in seq("task_by_task", seed)])) for seed in range(20)}
    assert len(orders) > 1  # the order is seeded


def test_weighted_gives_exactly_u_j_steps_per_task():
    tasks = [t[0] for t in seq("weighted")]
    assert np.bincount(tasks).tolist() == [3, 5, 7]
    assert tasks != sorted(tasks)  # shuffled


def test_uniform_gives_u_over_t_steps_per_task():
    tasks = [t[0] for t in seq("uniform")]
    assert len(tasks) == 15 and np.bincount(tasks).tolist() == [5, 5, 5]


def test_alternating_is_periodic():
    tasks = [t[0] for t in seq("alternating")]
    assert tasks == [i % 3 for i in range(15)]


def test_accumulated_gives_u_over_t_updates_touching_all_tasks():
    s = seq("accumulated")
    assert len(s) == 5 and all(t == (0, 1, 2) for t in s)
    assert TaskSchedule("accumulated", U).counts_before(3) == [3, 3, 3]


@pytest.mark.parametrize("kind", KINDS)
def test_pure_function_of_seed_and_step_and_resume_counts(kind):
    a, b = TaskSchedule(kind, U, seed=7), TaskSchedule(kind, U, seed=7)
    assert [a(i) for i in range(15)] == [b(i) for i in range(15)]
    for step in range(len(a) + 1):
        want = np.zeros(3, int)
        for i in range(step):
            for j in a(i):
                want[j] += 1
        assert a.counts_before(step) == want.tolist()


def test_errors_are_one_line_and_name_the_key():
    with pytest.raises(ValueError, match="multitask.schedule='random' is unknown"):
        TaskSchedule("random", U)
    with pytest.raises(ValueError, match="must be ints >= 1"):
        TaskSchedule("weighted", (3, 0))
    with pytest.raises(ValueError, match="must be ints >= 1"):
        TaskSchedule("uniform", ())


def test_masked_update_keeps_inactive_params_and_adam_state_bit_identical():
    params = {"shared": jnp.ones(3), "head_a": {"kernel": jnp.ones((2, 2))},
              "head_b": {"kernel": jnp.full((2, 2), 2.0)}}
    active = {"shared": True, "head_a": {"kernel": True}, "head_b": {"kernel": False}}
    tx = optax.adamw(0.1, weight_decay=0.5)

    def loss_fn(p, batch, rng):
        return jnp.sum(p["shared"] * batch) + jnp.sum(p["head_a"]["kernel"]) \
            + 0.0 * jnp.sum(p["head_b"]["kernel"])
    step = jax.jit(steps.build_train_step(loss_fn, tx, active=active, lr_mult=0.5))
    # A first full update gives head_b non-zero moments to keep.
    full = jax.jit(steps.build_train_step(
        lambda p, b, r: sum(jnp.sum(x ** 2) for x in jax.tree.leaves(p)), tx))
    state = {"params": params, "opt_state": tx.init(params), "step": jnp.zeros((), jnp.int32),
             "rng": jax.random.PRNGKey(0)}
    state, _ = full(state, jnp.ones(3))
    before = jax.device_get(state)
    for _ in range(3):
        state, _ = step(state, jnp.ones(3))
    after = jax.device_get(state)
    assert after["params"]["head_b"]["kernel"].tobytes() == \
        before["params"]["head_b"]["kernel"].tobytes()
    mu_b = [after["opt_state"][0].mu["head_b"]["kernel"], after["opt_state"][0].nu[
        "head_b"]["kernel"]]
    mu_b0 = [before["opt_state"][0].mu["head_b"]["kernel"], before["opt_state"][0].nu[
        "head_b"]["kernel"]]
    assert all(a.tobytes() == b.tobytes() for a, b in zip(mu_b, mu_b0, strict=True))
    assert np.any(mu_b0[0])  # there was something to keep
    assert not np.array_equal(after["params"]["head_a"]["kernel"],
                              before["params"]["head_a"]["kernel"])
    assert int(after["opt_state"][0].count) == int(before["opt_state"][0].count) + 3
