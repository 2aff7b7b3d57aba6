"""TFDS builder `sample_photos`: JPEG crops of varied size cut from scikit-learn's two photos.

The source is `sklearn.datasets.load_sample_images()` (china.jpg and flower.jpg, 427x640 RGB
photographs that ship inside scikit-learn), so building needs no network. It stands in for
ImageNet's JPEGs in input-pipeline benchmarks (`scripts/bench_pipeline.py`): decoding and
augmenting real photos of ImageNet-like sizes, without the 150 GB download. Each example is

* `image`: a JPEG-encoded uint8 (height, width, 3) crop: height and width each uniform in
  [MIN_SIDE, the photo's side] (random aspect), at a random position in a random photo,
  flipped left-right with probability 1/2; deterministic in `SEED`;
* `label`: int64, 0 for china.jpg, 1 for flower.jpg;
* `id`: int64 index of the crop.

One split, `train`, of NUM_EXAMPLES = 3,000 crops (about 0.5 s of JPEG encoding per 100).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import tensorflow_datasets as tfds

from vitx.data.builders.base import LocalBuilder

NUM_EXAMPLES = 3_000
MIN_SIDE = 96
SEED = 0


def make_crops(num: int, seed: int = SEED,
               min_side: int = MIN_SIDE) -> Iterator[tuple[np.ndarray, int]]:
    """Yields `num` (crop uint8 (height, width, 3), photo index) pairs, deterministic in `seed`.

    Raises:
        ValueError: `num` < 0 or `min_side` outside [1, 427] (the photos' shorter side).
    """
    from sklearn.datasets import load_sample_images

    photos = [np.asarray(p, np.uint8) for p in load_sample_images().images]
    shortest = min(min(p.shape[:2]) for p in photos)
    if num < 0 or not 1 <= min_side <= shortest:
        raise ValueError(f"make_crops: num={num} must be >= 0 and min_side={min_side} in "
                         f"[1, {shortest}]")
    rng = np.random.default_rng(seed)
    for _ in range(num):
        which = int(rng.integers(len(photos)))
        photo = photos[which]
        h = int(rng.integers(min_side, photo.shape[0] + 1))
        w = int(rng.integers(min_side, photo.shape[1] + 1))
        top = int(rng.integers(photo.shape[0] - h + 1))
        left = int(rng.integers(photo.shape[1] - w + 1))
        crop = photo[top:top + h, left:left + w]
        yield (crop[:, ::-1] if rng.random() < 0.5 else crop), which


class SamplePhotos(LocalBuilder):
    """3,000 JPEG crops (96..427 x 96..640 px) of scikit-learn's two sample photos."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release (crops of load_sample_images, seed 0)."}

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description="JPEG crops of varied size of scikit-learn's sample photos "
                        "(china.jpg, flower.jpg), for input-pipeline benchmarks.",
            features=tfds.features.FeaturesDict({
                "image": tfds.features.Image(shape=(None, None, 3), encoding_format="jpeg"),
                "label": tfds.features.ClassLabel(names=["china", "flower"]),
                "id": np.int64,
            }),
            supervised_keys=("image", "label"),
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager) -> dict[str, Any]:
        del dl_manager  # Everything is bundled with scikit-learn: nothing to download.
        return {"train": self._generate_examples()}

    def _generate_examples(self) -> Iterator[tuple[int, dict[str, Any]]]:
        for i, (crop, which) in enumerate(make_crops(NUM_EXAMPLES)):
            yield i, {"image": np.ascontiguousarray(crop), "label": which, "id": i}
