"""The op-string preprocessing registry (eager TensorFlow, one example at a time)."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from vitx.data import preprocess
from vitx.data.preprocess import get_preprocess_fn


def _example(h: int = 8, w: int = 8, c: int = 1, label: int = 3, seed: int | None = 0) -> dict:
    image = tf.constant(np.arange(h * w * c, dtype=np.uint8).reshape(h, w, c))
    ex = {"image": image, "label": tf.constant(label, tf.int64)}
    if seed is not None:
        ex["_seed"] = tf.constant([seed, 7], tf.int64)
    return ex


def _run(spec: str, ex: dict) -> dict[str, np.ndarray]:
    return {k: v.numpy() for k, v in get_preprocess_fn(spec)(ex).items()}


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
        preprocess.register("resize")(lambda: lambda d: d)


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
