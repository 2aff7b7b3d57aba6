"""The op-string registry: parser, errors, per-op seeding, tf.data tracing."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf
from pp_examples import _example, _run

from vitx.data import pp
from vitx.data.pp import get_preprocess_fn


@pytest.mark.parametrize(
    "spec,needle",
    [
        ("decode|no_such_op(3)", "'no_such_op'"),
        ("resize(32", "resize(32"),
        ("resize(x)", "'resize'"),
        ("decode||flip_lr", "empty op"),
        ("resize(0)", "resize"),
        ("onehot(10, label_smoothing=0.1, on=2.0)", "onehot"),
        ("central_crop(1, 2, 3)", "central_crop"),
    ],
)
def test_bad_specs_name_the_op(spec: str, needle: str) -> None:
    with pytest.raises(ValueError) as err:
        get_preprocess_fn(spec)
    assert needle in str(err.value)


def test_unknown_op_lists_registered_ops() -> None:
    with pytest.raises(ValueError, match="unknown preprocessing op 'nope'") as err:
        get_preprocess_fn("nope")
    for name in ("decode", "resize", "random_crop", "flip_lr", "onehot", "keep"):
        assert name in str(err.value)


def test_register_rejects_duplicates() -> None:
    with pytest.raises(ValueError, match="'resize' is already registered"):
        pp.register("resize")(lambda: lambda d: d)


def test_chained_random_ops_get_different_seeds() -> None:
    # If both flips shared one seed, flip_lr|flip_lr would always be the identity.
    img = _example()["image"].numpy()
    outs = [_run("flip_lr|flip_lr", _example(seed=s))["image"] for s in range(16)]
    assert any(np.array_equal(o, img[:, ::-1]) for o in outs)


def test_random_op_without_seed_errors() -> None:
    with pytest.raises(ValueError, match="'_seed'"):
        get_preprocess_fn("random_crop(4)")(_example(seed=None))


def test_works_inside_tf_data_graph() -> None:
    ds = tf.data.Dataset.from_tensors(_example()).map(
        get_preprocess_fn("decode|resize(10)|random_crop(8)|flip_lr|value_range(-1, 1)|onehot(10)")
    )
    (out,) = list(ds.as_numpy_iterator())
    assert set(out) == {"image", "label"}
    assert out["image"].shape == (8, 8, 3) and out["label"].shape == (10,)
    assert out["image"].min() >= -1 and out["image"].max() <= 1
