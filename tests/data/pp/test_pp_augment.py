"""Train-time augmentation ops (`vitx.data.pp.augment`) and the eval-side `resize_small`."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from vitx.data.pp import augment, get_preprocess_fn


def _image(h: int = 24, w: int = 32, c: int = 3, seed: int = 0) -> tf.Tensor:
    """Noise in [20, 230] (not the full range, so that autocontrast has work to do)."""
    rng = np.random.default_rng(seed)
    return tf.constant(rng.integers(20, 231, (h, w, c), dtype=np.uint8))


def _run(spec: str, image: tf.Tensor, seed: int = 0) -> np.ndarray:
    ex = {"image": image, "_seed": tf.constant([seed, 11], tf.int64)}
    return get_preprocess_fn(spec)(ex)["image"].numpy()


SPECS = ["inception_crop(16)", "randaug(2, 9)", "value_range(-1, 1)|random_erasing(1.0)"]


@pytest.mark.parametrize("spec", SPECS)
def test_random_ops_are_a_pure_function_of_the_seed(spec: str) -> None:
    img = _image()
    outs = [_run(spec, img, seed) for seed in range(6)]
    np.testing.assert_array_equal(_run(spec, img, 3), outs[3])  # same seed, same output
    assert len({o.tobytes() for o in outs}) >= 5, "different seeds should give different outputs"
    fn = get_preprocess_fn(spec)  # the same inside a tf.data graph
    ds = tf.data.Dataset.from_tensors({"image": img, "_seed": tf.constant([3, 11], tf.int64)})
    np.testing.assert_array_equal(next(iter(ds.map(fn)))["image"].numpy(), outs[3])


@pytest.mark.parametrize("c", [1, 3])
@pytest.mark.parametrize("dtype", [tf.uint8, tf.float32])
def test_shapes_dtypes_and_grayscale(c: int, dtype: tf.DType) -> None:
    img = tf.cast(_image(c=c), dtype)
    crop = _run("inception_crop((16, 12))", img)
    assert crop.shape == (16, 12, c) and crop.dtype == dtype.as_numpy_dtype
    for seed in range(4):
        out = _run("randaug(3, 10)", img, seed)
        assert out.shape == (24, 32, c) and out.dtype == dtype.as_numpy_dtype
        assert out.min() >= 0 and out.max() <= 255 and np.all(out == np.round(out))
    erased = _run("random_erasing(1.0)", img)
    assert erased.shape == (24, 32, c) and erased.dtype == np.float32
    small = _run("resize_small(12)", img)
    assert small.shape == (12, 16, c) and small.dtype == dtype.as_numpy_dtype


def test_every_randaug_op_on_gray_and_rgb() -> None:
    for c in (1, 3):
        img = _image(c=c)
        for name in augment.RANDAUG_OPS:
            out = _run(f"randaug(1, 7, ops=[{name!r}])", img)
            assert out.shape == img.shape and out.dtype == np.uint8, name
            changed = not np.array_equal(out, img.numpy())
            # color of a gray image is gray; everything but identity changes a noise image
            assert changed == (name != "identity" and not (name == "color" and c == 1)), name


def test_randaug_magnitude_zero_geometric_ops_are_the_identity() -> None:
    img = _image()
    ops = "ops=['identity', 'rotate', 'shear_x', 'shear_y', 'translate_x', 'translate_y']"
    for seed in range(8):
        np.testing.assert_array_equal(_run(f"randaug(3, 0, {ops})", img, seed), img.numpy())
    # the same ops at a high magnitude do change it (for some seed: identity may be drawn)
    assert any(not np.array_equal(_run(f"randaug(3, 10, {ops})", img, s), img.numpy())
               for s in range(8))
    np.testing.assert_array_equal(_run("randaug(0, 10)", img), img.numpy())


def test_randaug_matches_pil_on_the_photometric_ops() -> None:
    image = pytest.importorskip("PIL.Image")
    ops = pytest.importorskip("PIL.ImageOps")
    enhance = pytest.importorskip("PIL.ImageEnhance")
    a = _image(c=3).numpy() // 2 + 40  # a narrow range: autocontrast and equalize do work
    pil, t, one = image.fromarray(a), tf.constant(a), tf.constant(1.0)
    f = 0.5 * 1.8 + 0.1
    refs = {"autocontrast": ops.autocontrast(pil), "equalize": ops.equalize(pil),
            "solarize": ops.solarize(pil, 128), "posterize": ops.posterize(pil, 2),
            "color": enhance.Color(pil).enhance(f), "contrast": enhance.Contrast(pil).enhance(f),
            "brightness": enhance.Brightness(pil).enhance(f),
            "sharpness": enhance.Sharpness(pil).enhance(f),
            "rotate": pil.rotate(15, fillcolor=(128, 128, 128))}
    for name, ref in refs.items():
        np.testing.assert_array_equal(augment._RANDAUG[name](t, 0.5, one).numpy(),
                                      np.asarray(ref), err_msg=name)


def test_randaug_fill_is_what_geometric_ops_move_in() -> None:
    image = pytest.importorskip("PIL.Image")
    a = _image(c=1).numpy()
    t, one = tf.constant(a), tf.constant(1.0)
    for fill in (0, 200):  # rotate = PIL's with that fill colour
        ref = np.asarray(image.fromarray(a[..., 0]).rotate(15, fillcolor=fill))[..., None]
        np.testing.assert_array_equal(augment._RANDAUG["rotate"](t, 0.5, one, fill).numpy(), ref)
    black = np.zeros((16, 16, 1), np.uint8)
    black[4:12, 4:12] = 255  # a white square on black: a translate with fill=0 moves in black
    for seed in range(6):
        out = _run("randaug(1, 5, ops=['translate_x'], fill=0)", tf.constant(black), seed)
        assert set(np.unique(out)) <= {0, 255} and (out == 255).sum() == 64
    with pytest.raises(ValueError, match="randaug: fill=300"):
        get_preprocess_fn("randaug(2, 5, fill=300)")


@pytest.mark.parametrize("lo,hi", [(5, 100), (20, 40)])
def test_inception_crop_area_and_aspect_within_bounds(lo: int, hi: int) -> None:
    img = _image(64, 80)
    areas, aspects = [], []
    for seed in range(60):
        crop = _run(f"inception_crop(area_min={lo}, area_max={hi})", img, seed)
        h, w, _ = crop.shape
        areas.append(h * w / (64 * 80))
        aspects.append(w / h)
        top_left = np.argwhere(np.all(img.numpy()[: 64 - h + 1, : 80 - w + 1] == crop[0, 0], -1))
        assert any(np.array_equal(img.numpy()[r:r + h, c:c + w], crop) for r, c in top_left)
    assert min(areas) >= lo / 100 - 0.01 and max(areas) <= hi / 100 + 0.01
    assert max(areas) - min(areas) > (hi - lo) / 100 / 3  # the range is used, not one size
    assert min(aspects) >= 3 / 4 - 0.06 and max(aspects) <= 4 / 3 + 0.06


def test_random_erasing_prob_zero_is_identity_and_one_erases_one_box() -> None:
    img = tf.cast(_image(), tf.float32) / 255.0
    for seed in range(5):
        np.testing.assert_array_equal(_run("random_erasing(0.0)", img, seed), img.numpy())
    fracs = []
    for seed in range(30):
        out = _run("random_erasing(1.0, mode='const')", img, seed)
        erased = np.all(out == 0, axis=-1) & ~np.all(img.numpy() == 0, axis=-1)
        rows, cols = np.nonzero(erased)
        assert rows.size, "prob 1 must erase a box"
        box = erased[rows.min():rows.max() + 1, cols.min():cols.max() + 1]
        assert box.all() and box.sum() == erased.sum()  # one solid rectangle
        fracs.append(erased.mean())
    assert 0.01 <= min(fracs) and max(fracs) <= 0.36


def test_resize_small_keeps_aspect_and_bad_args() -> None:
    assert _run("resize_small(16)", _image(40, 20)).shape == (32, 16, 3)
    assert _run("resize_small(16)|central_crop(16)", _image(20, 50)).shape == (16, 16, 3)
    flat = tf.fill([10, 30, 1], tf.constant(77, tf.uint8))
    np.testing.assert_array_equal(_run("resize_small(5)", flat), 77)
    for spec, msg in [("resize_small(0)", "resize_small: size"),
                      ("resize_small(8, method='cubic')", "resize_small: method='cubic'"),
                      ("inception_crop(area_min=50, area_max=10)", "area_max"),
                      ("randaug(2, 10, ops=['invert'])", "randaug: ops="),
                      ("randaug(-1)", "randaug: num_layers"),
                      ("random_erasing(1.5)", "random_erasing: prob"),
                      ("random_erasing(mode='noise')", "random_erasing: mode")]:
        with pytest.raises(ValueError, match=msg):
            get_preprocess_fn(spec)
