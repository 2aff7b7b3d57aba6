"""Key and label preprocessing ops (eager TensorFlow, one example at a time)."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf
from pp_examples import _example, _run

from vitx.data.pp import get_preprocess_fn


def test_onehot_label_smoothing() -> None:
    out = _run("onehot(10, label_smoothing=0.1)", _example(label=3))["label"]
    assert out.shape == (10,) and out.dtype == np.float32
    np.testing.assert_allclose(out.sum(), 1.0, atol=1e-6)
    np.testing.assert_allclose(out[3], 1 - 0.1 + 0.01, atol=1e-6)
    np.testing.assert_allclose(np.delete(out, 3), 0.01, atol=1e-6)
    plain = _run("onehot(4, key_result='target')", _example(label=2))
    np.testing.assert_array_equal(plain["target"], [0, 0, 1, 0])
    assert plain["label"] == 2


def test_keep_drops_other_keys() -> None:
    ex = {**_example(), "extra": tf.constant(1)}
    assert set(_run("keep('image', 'label')", ex)) == {"image", "label"}
    with pytest.raises(ValueError, match="'missing'"):
        get_preprocess_fn("keep('image', 'missing')")(ex)
