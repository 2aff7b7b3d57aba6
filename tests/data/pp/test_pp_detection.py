"""`pad_objects`: TFDS objects (N boxes) -> fixed (M, 4) boxes and (M,) labels, -1 padding."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from vitx.data.pp import get_preprocess_fn


def _scene(n: int) -> dict:
    boxes = np.arange(4 * n, dtype=np.float32).reshape(n, 4) / 100
    return {"image": tf.zeros((8, 8, 1), tf.uint8),
            "objects": {"bbox": tf.constant(boxes), "label": tf.constant(np.arange(n) + 3)}}


def test_pad_objects_pads_and_keeps_order():
    out = get_preprocess_fn("pad_objects(4)")(_scene(2))
    assert "objects" not in out and out["image"].shape == (8, 8, 1)
    np.testing.assert_array_equal(out["box_labels"].numpy(), [3, 4, -1, -1])
    np.testing.assert_allclose(out["boxes"].numpy()[:2], [[0, .01, .02, .03], [.04, .05, .06, .07]])
    np.testing.assert_array_equal(out["boxes"].numpy()[2:], 0)
    assert out["boxes"].dtype == tf.float32 and out["box_labels"].dtype == tf.int32
    empty = get_preprocess_fn("pad_objects(2, boxes_key='b', labels_key='l')")(_scene(0))
    np.testing.assert_array_equal(empty["l"].numpy(), [-1, -1])


def test_pad_objects_bad_input():
    with pytest.raises(ValueError, match="max_objects=0 must be a positive int"):
        get_preprocess_fn("pad_objects(0)")
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"raise max_objects"):
        get_preprocess_fn("pad_objects(1)")(_scene(3))
    with pytest.raises(ValueError, match="needs key 'objects'.*"):
        get_preprocess_fn("pad_objects(4)")({"image": tf.zeros((8, 8, 1)), "label": 1})
