"""`vitx.train.steps.tree_all_finite`: the NaN guard's check of a whole train state."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vitx.train import steps


def _tree(n: int) -> dict:
    rng = np.random.default_rng(0)
    leaves = {f"w{i}": jnp.asarray(rng.normal(size=(1 + i % 3, 2 + i % 5)), jnp.float32)
              for i in range(n)}
    leaves["half"] = jnp.ones((3,), jnp.bfloat16)
    leaves["count"] = jnp.array(7, jnp.int32)  # not inexact: never checked
    return leaves


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_every_leaf_of_every_chunk_is_checked(bad):
    """More leaves than two chunks (the last one partial): a single NaN/inf in any leaf, the
    bfloat16 one included, makes the check False; the clean tree is True."""
    tree = _tree(2 * steps.FINITE_CHUNK + 5)
    check = jax.jit(steps.tree_all_finite)
    assert bool(check(tree))
    for name in ("w0", f"w{steps.FINITE_CHUNK}", f"w{2 * steps.FINITE_CHUNK + 4}", "half"):
        leaf = tree[name]
        broken = dict(tree, **{name: leaf.at[(0,) * leaf.ndim].set(bad)})
        assert not bool(check(broken)), name
    assert bool(steps.tree_all_finite({"count": jnp.array(1)}))
