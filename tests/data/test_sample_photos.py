"""`sample_photos` (JPEG crops of scikit-learn's photos); scripts/bench_pipeline.py's smoke run."""

from __future__ import annotations

import importlib.util
import os

import numpy as np
import pytest

from vitx.data.builders import sample_photos

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_crops_are_deterministic_distinct_and_of_varied_size():
    a = list(sample_photos.make_crops(12, seed=3))
    b = list(sample_photos.make_crops(12, seed=3))
    assert all(np.array_equal(x, y) and i == j for (x, i), (y, j) in zip(a, b, strict=True))
    shapes = {c.shape for c, _ in a}
    assert len(shapes) > 6  # varied sizes
    assert all(sample_photos.MIN_SIDE <= h <= 427 and sample_photos.MIN_SIDE <= w <= 640
               and ch == 3 for h, w, ch in shapes)
    assert {which for _, which in a} == {0, 1}  # both photos
    assert not np.array_equal(a[0][0], next(sample_photos.make_crops(1, seed=4))[0])
    with pytest.raises(ValueError, match="min_side"):
        next(sample_photos.make_crops(1, min_side=500))


@pytest.fixture(scope="module")
def tiny_photos_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A data dir with `sample_photos` built from 12 crops (the real one has 3,000)."""
    from vitx.data.builders import ensure_built

    data_dir = str(tmp_path_factory.mktemp("tfds"))
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(sample_photos, "NUM_EXAMPLES", 12)
        ensure_built("sample_photos", data_dir)
    return data_dir


def test_built_dataset_holds_the_crops_as_jpeg(tiny_photos_dir):
    import tensorflow_datasets as tfds

    from vitx.data.builders import ensure_built

    builder = ensure_built("sample_photos", tiny_photos_dir)
    assert builder.info.splits["train"].num_examples == 12
    ex = next(iter(builder.as_dataset(split="train", decoders={
        "image": tfds.decode.SkipDecoding()}).as_numpy_iterator()))
    assert ex["image"][:2] == b"\xff\xd8"  # JPEG start-of-image
    decoded = next(iter(builder.as_dataset(split="train").skip(0).as_numpy_iterator()))
    assert decoded["image"].dtype == np.uint8 and decoded["image"].shape[-1] == 3


def test_bench_pipeline_smoke(tiny_photos_dir, capsys):
    spec = importlib.util.spec_from_file_location(
        "bench_pipeline", os.path.join(ROOT, "scripts", "bench_pipeline.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    out = mod.main(["--smoke", "--data_dir", tiny_photos_dir])
    assert out["vitx_images_per_sec"] > 0 and "ratio" not in out  # no timm row in smoke mode
    assert "vitx tf.data:" in capsys.readouterr().out
