"""The `digits` TFDS builder and `ensure_built`."""

from __future__ import annotations

import os

import numpy as np
import pytest
import tensorflow_datasets as tfds
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from vitx.data.builders import ensure_built


def _load_split(data_dir: str, split: str) -> dict[str, np.ndarray]:
    builder = tfds.builder("digits", data_dir=data_dir)
    ds = builder.as_dataset(split=split, shuffle_files=False, batch_size=-1)
    return tfds.as_numpy(ds)


def _sklearn_split() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The reference split, computed independently of the builder's code."""
    d = load_digits()
    images = np.round(d.images * 255 / 16).astype(np.uint8)
    x_tr, x_te, y_tr, y_te = train_test_split(
        images, d.target, test_size=0.2, random_state=0, stratify=d.target
    )
    return {"train": (x_tr, y_tr), "test": (x_te, y_te)}


@pytest.mark.parametrize("split,size", [("train", 1437), ("test", 360)])
def test_split_sizes_and_features(digits_data_dir: str, split: str, size: int) -> None:
    builder = ensure_built("digits", digits_data_dir)
    assert builder.info.splits[split].num_examples == size
    data = _load_split(digits_data_dir, split)
    assert data["image"].shape == (size, 8, 8, 1)
    assert data["image"].dtype == np.uint8
    assert data["image"].max() == 255 and data["image"].min() == 0
    assert data["label"].min() >= 0 and data["label"].max() < 10
    assert set(np.unique(data["label"]).tolist()) == set(range(10))
    assert len(np.unique(data["id"])) == size


@pytest.mark.parametrize("split", ["train", "test"])
def test_same_split_as_sklearn(digits_data_dir: str, split: str) -> None:
    data = _load_split(digits_data_dir, split)
    ref_images, ref_labels = _sklearn_split()[split]
    np.testing.assert_array_equal(
        np.bincount(data["label"], minlength=10), np.bincount(ref_labels, minlength=10)
    )
    assert int(data["image"].astype(np.int64).sum()) == int(ref_images.astype(np.int64).sum())
    # Same multiset of (image, label) examples, whatever the on-disk order.
    ours = sorted(
        im.tobytes() + bytes([lb]) for im, lb in zip(data["image"], data["label"], strict=True)
    )
    ref = sorted(im.tobytes() + bytes([lb]) for im, lb in zip(ref_images, ref_labels, strict=True))
    assert ours == ref


def test_ids_point_at_the_sklearn_rows(digits_data_dir: str) -> None:
    data = _load_split(digits_data_dir, "test")
    d = load_digits()
    np.testing.assert_array_equal(d.target[data["id"]], data["label"])
    expected = np.round(d.images[data["id"]] * 255 / 16).astype(np.uint8)
    np.testing.assert_array_equal(data["image"][..., 0], expected)


def test_ensure_built_reuses_prepared_data(digits_data_dir: str) -> None:
    builder = ensure_built("digits", digits_data_dir)
    info_file = os.path.join(str(builder.data_dir), "dataset_info.json")
    before = os.stat(info_file).st_mtime_ns
    again = ensure_built("digits", digits_data_dir)
    assert again.is_prepared()
    assert os.stat(info_file).st_mtime_ns == before


def test_gcs_lookups_disabled() -> None:
    from tensorflow_datasets.core.utils import gcs_utils

    assert gcs_utils._is_gcs_disabled is True


def test_unknown_dataset_is_a_clear_error(tmp_path) -> None:
    with pytest.raises(ValueError, match=r"'no_such_dataset_xyz'.*data_dir=.*tfds build"):
        ensure_built("no_such_dataset_xyz", str(tmp_path))


def test_unprepared_foreign_dataset_is_not_built(tmp_path) -> None:
    with pytest.raises(ValueError, match=r"'mnist' is not prepared in data_dir=.*tfds build mnist"):
        ensure_built("mnist", str(tmp_path))
    assert not (tmp_path / "mnist").exists() or not any((tmp_path / "mnist").rglob("*.tfrecord*"))
