"""Image preprocessing ops (eager TensorFlow, one example at a time)."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf
from pp_examples import _example, _run

from vitx.data.pp import get_preprocess_fn


def test_decode_gray_to_rgb_and_from_png() -> None:
    ex = _example(c=1)
    out = _run("decode", ex)
    assert out["image"].dtype == np.uint8 and out["image"].shape == (8, 8, 3)
    for ch in range(3):
        np.testing.assert_array_equal(out["image"][..., ch], ex["image"].numpy()[..., 0])
    png = tf.io.encode_png(ex["image"])
    out_png = _run("decode(channels=3)", {**ex, "image": png})
    np.testing.assert_array_equal(out_png["image"], out["image"])
    assert "_seed" not in out and out["label"] == 3


def test_resize_and_crops_shapes() -> None:
    ex = _example()
    assert _run("resize(16)", ex)["image"].shape == (16, 16, 1)
    assert _run("resize((12, 20), method='nearest')", ex)["image"].shape == (12, 20, 1)
    assert _run("decode|resize(32)|random_crop(28)", ex)["image"].shape == (28, 28, 3)
    assert _run("central_crop((4, 6))", ex)["image"].shape == (4, 6, 1)
    assert _run("pad(2)", ex)["image"].shape == (12, 12, 1)


def test_resize_is_float32_in_same_range() -> None:
    ex = {"image": tf.fill([8, 8, 3], tf.constant(255, tf.uint8)), "label": tf.constant(0)}
    out = _run("resize(5)", ex)["image"]
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, 255.0, rtol=0, atol=1e-3)


def test_central_crop_takes_the_middle() -> None:
    ex = _example()
    img = ex["image"].numpy()
    np.testing.assert_array_equal(_run("central_crop(4)", ex)["image"], img[2:6, 2:6])
    np.testing.assert_array_equal(_run("central_crop((3, 5))", ex)["image"], img[2:5, 1:6])


def test_pad_values() -> None:
    out = _run("pad((1, 2), value=9)", _example())["image"]
    assert out.shape == (10, 12, 1)
    assert (out[0] == 9).all() and (out[:, :2] == 9).all() and (out[:, -2:] == 9).all()
    np.testing.assert_array_equal(out[1:-1, 2:-2], _example()["image"].numpy())


def test_value_range_endpoints() -> None:
    ex = {"image": tf.constant([[[0], [255], [51]]], tf.uint8), "label": tf.constant(1)}
    out = _run("value_range(-1, 1)", ex)["image"]
    assert out.dtype == np.float32
    np.testing.assert_allclose(out.ravel(), [-1.0, 1.0, 51 / 127.5 - 1], atol=1e-6)
    out01 = _run("value_range(0, 1, in_min=0, in_max=51)", ex)["image"]
    np.testing.assert_allclose(out01.ravel(), [0.0, 5.0, 1.0], atol=1e-6)


def test_random_crop_is_deterministic_per_seed() -> None:
    crops = []
    for seed in range(8):
        first = _run("random_crop(5)", _example(seed=seed))["image"]
        second = _run("random_crop(5)", _example(seed=seed))["image"]
        np.testing.assert_array_equal(first, second)
        crops.append(first)
    assert len({c.tobytes() for c in crops}) > 1
    img = _example()["image"].numpy()
    windows = {img[i : i + 5, j : j + 5].tobytes() for i in range(4) for j in range(4)}
    assert all(c.tobytes() in windows for c in crops)


def test_flip_lr_flips_or_keeps() -> None:
    img = _example()["image"].numpy()
    outcomes = set()
    for seed in range(16):
        out = _run("flip_lr", _example(seed=seed))["image"]
        if np.array_equal(out, img[:, ::-1]):
            outcomes.add("flipped")
        else:
            np.testing.assert_array_equal(out, img)
            outcomes.add("kept")
    assert outcomes == {"flipped", "kept"}


def test_image_ops_work_on_any_key() -> None:
    ex = _example()
    img = ex["image"].numpy()
    moved = {"frames": ex["image"], "label": ex["label"], "_seed": ex["_seed"]}
    out = _run("resize(4, key='frames')|value_range(0, 1, key='frames')", moved)
    want = _run("resize(4)|value_range(0, 1)", ex)["image"]
    assert set(out) == {"frames", "label"}
    np.testing.assert_array_equal(out["frames"], want)
    crop = _run("random_crop(5, key='frames')", moved)["frames"]
    np.testing.assert_array_equal(crop, _run("random_crop(5)", ex)["image"])
    both = _run("central_crop(4, inkey='image', outkey='small')", ex)
    np.testing.assert_array_equal(both["image"], img)
    np.testing.assert_array_equal(both["small"], img[2:6, 2:6])
    with pytest.raises(ValueError, match="'frames'"):
        _run("flip_lr(key='frames')", ex)


def test_bad_keys_name_the_op() -> None:
    for spec in ("resize(4, key='k', inkey='image')", "resize(4, key='_seed')",
                 "pad(1, outkey='')"):
        with pytest.raises(ValueError, match=spec.split("(")[0]):
            get_preprocess_fn(spec)


def test_video_value_range_is_value_range_on_video() -> None:
    video = tf.constant(np.arange(2 * 4 * 4, dtype=np.uint8).reshape(2, 4, 4, 1))
    ex = {"video": video, "label": tf.constant(1)}
    old = _run("video_value_range(-1, 1)", ex)["video"]
    new = _run("value_range(-1, 1, key='video')", ex)["video"]
    assert old.dtype == new.dtype == np.float32
    np.testing.assert_array_equal(old, new)
