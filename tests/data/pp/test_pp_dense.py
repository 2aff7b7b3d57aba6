"""`resize_mask`: nearest-neighbour resize of class masks (exact class ids, dtype kept)."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from vitx.data.pp import get_preprocess_fn


def _mask(size: int = 16) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 11, (size, size, 1)).astype(np.uint8)


def test_upscale_replicates_pixels_and_keeps_dtype():
    mask = _mask()
    out = get_preprocess_fn("resize_mask(64)")({"mask": tf.constant(mask)})["mask"].numpy()
    assert out.dtype == np.uint8 and out.shape == (64, 64, 1)
    np.testing.assert_array_equal(out, np.repeat(np.repeat(mask, 4, 0), 4, 1))


def test_downscale_only_picks_existing_classes_and_other_keys():
    mask = _mask(64)
    ex = get_preprocess_fn("resize(16)|resize_mask((16, 8), key='seg')")(
        {"image": tf.zeros((64, 64, 1), tf.uint8), "seg": tf.constant(mask)})
    assert ex["image"].shape == (16, 16, 1) and ex["seg"].shape == (16, 8, 1)
    # Each output pixel is one input pixel of its own cell (no interpolated class ids).
    out = ex["seg"].numpy()[..., 0]
    for i in range(16):
        for j in range(8):
            assert out[i, j] in set(mask[4 * i:4 * i + 4, 8 * j:8 * j + 8, 0].ravel().tolist())


def test_bad_size():
    with pytest.raises(ValueError, match="resize_mask: size"):
        get_preprocess_fn("resize_mask(0)")
