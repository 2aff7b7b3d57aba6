"""'/'-path trees: flatten / unflatten round trips and their errors."""

import jax
import numpy as np
import pytest

from vitx.utils import tree


def test_flatten_unflatten():
    params = {"a": {"b": np.ones(2), "c": {"d": np.zeros((1, 2))}}, "e": np.float32(3.0)}
    flat = tree.flatten(params)
    assert set(flat) == {"a/b", "a/c/d", "e"}
    back = tree.unflatten(flat)
    assert jax.tree.structure(back) == jax.tree.structure(params)
    with pytest.raises(ValueError, match="'a/b'"):
        tree.unflatten({"a/b": 1, "a/b/c": 2})
    assert set(tree.flatten({"a/b": np.ones(1), "a": {"c": np.ones(1)}})) == {"a/b", "a/c"}
    with pytest.raises(ValueError, match="twice"):
        tree.flatten({"a/b": np.ones(1), "a": {"b": np.ones(1)}})
    with pytest.raises(ValueError, match="empty"):
        tree.flatten({"a//b": np.ones(1)})
