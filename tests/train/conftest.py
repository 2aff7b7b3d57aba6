"""Shared helpers for the train tests."""

import jax
import numpy as np
import pytest


def assert_trees_bitwise_equal(a, b) -> None:
    """Same tree structure, and every leaf has the same dtype, shape and bytes."""
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for (path, x), y in zip(jax.tree_util.tree_leaves_with_path(a), jax.tree.leaves(b),
                            strict=True):
        x, y = np.asarray(x), np.asarray(y)
        name = jax.tree_util.keystr(path)
        assert (x.dtype, x.shape) == (y.dtype, y.shape), name
        assert x.tobytes() == y.tobytes(), f"{name} differs"


@pytest.fixture
def bitwise_equal():
    return assert_trees_bitwise_equal
