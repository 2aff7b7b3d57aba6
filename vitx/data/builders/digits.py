"""TFDS builder `digits`: scikit-learn's bundled 8x8 handwritten digit scans.

The data are the 1,797 real scans of the UCI "Optical Recognition of Handwritten Digits"
test set that ship inside scikit-learn (`sklearn.datasets.load_digits`), so building
this dataset needs no network access. Each example is

* `image`: uint8 tensor of shape (height=8, width=8, channels=1), values 0..255
  (the original 0..16 counts scaled by `round(v * 255 / 16)`);
* `label`: int64 class id in [0, 10);
* `id`: int64 row index into `load_digits()` (useful for debugging and de-duplication).

Splits come from `train_test_split(test_size=0.2, random_state=0, stratify=label)`:
`train` has 1,437 examples and `test` 360.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import tensorflow_datasets as tfds

from vitx.data.builders.base import LocalBuilder

NUM_CLASSES = 10
IMAGE_SHAPE = (8, 8, 1)
TEST_SIZE = 0.2
SPLIT_RANDOM_STATE = 0
# load_digits() stores pixel values as counts of set pixels in 4x4 blocks: 0..16.
_MAX_RAW_VALUE = 16


def load_arrays() -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Loads the digits scans and splits them exactly as the builder does.

    Returns:
        `{"train": (images, labels, ids), "test": (images, labels, ids)}` with
        images uint8 of shape (num_examples, 8, 8, 1) in 0..255, labels int64 of shape
        (num_examples,) in [0, 10) and ids int64 of shape (num_examples,) (row index in
        `load_digits()`). `train` has 1,437 examples, `test` 360.
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    raw = np.asarray(digits.images, dtype=np.float64)  # (N, 8, 8), values 0..16
    images = np.round(raw * 255.0 / _MAX_RAW_VALUE).astype(np.uint8)[..., None]
    labels = np.asarray(digits.target, dtype=np.int64)
    ids = np.arange(len(labels), dtype=np.int64)
    x_tr, x_te, y_tr, y_te, id_tr, id_te = train_test_split(
        images,
        labels,
        ids,
        test_size=TEST_SIZE,
        random_state=SPLIT_RANDOM_STATE,
        stratify=labels,
    )
    return {"train": (x_tr, y_tr, id_tr), "test": (x_te, y_te, id_te)}


class Digits(LocalBuilder):
    """scikit-learn's 1,797 8x8 handwritten digit scans (10 classes), built offline."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release (sklearn load_digits, stratified 80/20 split)."}

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description=(
                "8x8 grayscale scans of handwritten digits bundled with scikit-learn "
                "(UCI optical recognition of handwritten digits), pixel values scaled "
                "from 0..16 to 0..255."
            ),
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(shape=IMAGE_SHAPE, dtype=np.uint8),
                    "label": tfds.features.ClassLabel(num_classes=NUM_CLASSES),
                    "id": np.int64,
                }
            ),
            supervised_keys=("image", "label"),
            homepage="https://archive.ics.uci.edu/dataset/80",
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager) -> dict[str, Any]:
        del dl_manager  # Everything is bundled with scikit-learn: nothing to download.
        arrays = load_arrays()
        return {split: self._generate_examples(*arrays[split]) for split in ("train", "test")}

    def _generate_examples(
        self, images: np.ndarray, labels: np.ndarray, ids: np.ndarray
    ) -> Iterator[tuple[int, dict[str, Any]]]:
        for image, label, idx in zip(images, labels, ids, strict=True):
            yield int(idx), {"image": image, "label": int(label), "id": int(idx)}
