"""TFDS builder `digit_scenes`: 1-4 real digit scans per 64x64 canvas, with masks and boxes.

A scene is a black 64x64 canvas with 1 to 4 handwritten digit scans from
`vitx.data.builders.digits.load_arrays` (scikit-learn's 8x8 UCI scans, values 0..255) pasted
on it. Each scan is scaled by an integer factor k in {2, 3, 4} (nearest neighbour: every scan
pixel becomes a k x k block, so 16, 24 or 32 px sprites; exact and deterministic) and placed at
a random integer position such that no two sprites' squares overlap (so neither do their ink,
masks or boxes). Train scenes use only scans of the `digits` train split, test scenes only
scans of its test split (the same stratified split), so no test scan is seen in training.

Features of each example:

* `image`: uint8 (height=64, width=64, channels=1), values 0..255;
* `mask`: uint8 (64, 64, 1), the per-pixel class: 0 background, 1 + d on the ink of a scan
  of digit d (ink: the pasted scan's pixels > 0, so `mask > 0` exactly where `image > 0`);
* `objects`: a sequence of N in [1, 4] objects, each
  * `bbox`: float32 (4,) (ymin, xmin, ymax, xmax) in [0, 1] (`tfds.features.BBoxFeature`), the
    tight box of that scan's ink: pixel rows y0..y1 give ymin = y0 / 64, ymax = (y1 + 1) / 64
    (pixel edges, as COCO boxes), likewise columns;
  * `label`: int64 digit class in [0, 10).

Splits: `train` has 4,000 scenes, `test` 500. The number of scans (uniform in 1..4), the scans
(taken in the order of a seeded permutation of the split's scans, reshuffled each pass, so
every scan is used about equally often), scales and positions are drawn from
`numpy.random.default_rng(SPLIT_SEEDS[split])`: every build is bit-identical. Scales are drawn
uniformly and the whole draw is repeated while the sprites do not fit, so crowded scenes favour
small sprites (train: 45 % of the scans at 2x, 36 % at 3x, 18 % at 4x).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import tensorflow_datasets as tfds

from vitx.data.builders import digits
from vitx.data.builders.base import LocalBuilder

CANVAS = 64
IMAGE_SHAPE = (CANVAS, CANVAS, 1)
NUM_CLASSES = digits.NUM_CLASSES  # digit classes of `objects/label`
NUM_MASK_CLASSES = NUM_CLASSES + 1  # mask classes: background + 10 digits
SCALES = (2, 3, 4)  # sprite side = 8 * scale px
MAX_OBJECTS = 4
SPLIT_SIZES = {"train": 4000, "test": 500}
SPLIT_SEEDS = {"train": 20_261_201, "test": 20_261_202}
_TRIES = 64  # random positions tried per sprite before the scene is redrawn


class _ScanCycle:
    """The split's scan indices in seeded random order, reshuffled after each full pass."""

    def __init__(self, n: int, rng: np.random.Generator):
        self.n, self.rng = n, rng
        self.order: list[int] = []

    def take(self, k: int) -> list[int]:
        out = []
        for _ in range(k):
            if not self.order:
                self.order = self.rng.permutation(self.n).tolist()
            out.append(self.order.pop())
        return out


def _place(rng: np.random.Generator, sizes: list[int]) -> list[tuple[int, int]] | None:
    """Top-left corners (y, x) of squares of `sizes` px, pairwise disjoint, inside the canvas:
    each square takes the first free one of `_TRIES` random positions; None when none is free."""
    placed: list[tuple[int, int, int]] = []
    for s in sizes:
        yx = rng.integers(0, CANVAS - s + 1, size=(_TRIES, 2))
        free = np.ones(_TRIES, bool)
        for py, px, ps in placed:
            free &= ((yx[:, 0] + s <= py) | (py + ps <= yx[:, 0])
                     | (yx[:, 1] + s <= px) | (px + ps <= yx[:, 1]))
        if not free.any():
            return None
        y, x = (int(v) for v in yx[int(np.argmax(free))])
        placed.append((y, x, s))
    return [(y, x) for y, x, _ in placed]


def render(scans: list[np.ndarray], labels: list[int], scales: list[int],
           corners: list[tuple[int, int]]) -> dict[str, Any]:
    """Pastes each (8, 8[, 1]) uint8 scan, scaled by its integer factor, at its top-left corner.

    Returns:
        `{"image": uint8 (64, 64, 1), "mask": uint8 (64, 64, 1), "objects": {"bbox": float32
        (N, 4), "label": int64 (N,)}}` as in the module docstring.

    Raises:
        ValueError: a sprite that leaves the canvas or overlaps another, or a scan without ink.
    """
    image = np.zeros(IMAGE_SHAPE, np.uint8)
    mask = np.zeros(IMAGE_SHAPE, np.uint8)
    boxes = np.zeros((len(scans), 4), np.float32)
    for i, (scan, label, k, (y, x)) in enumerate(zip(scans, labels, scales, corners, strict=True)):
        sprite = np.kron(np.asarray(scan).reshape(8, 8), np.ones((k, k), np.uint8))
        s = sprite.shape[0]
        if y < 0 or x < 0 or y + s > CANVAS or x + s > CANVAS or image[y:y + s, x:x + s].any():
            raise ValueError(f"scan {i} at (y, x)=({y}, {x}), size {s}: leaves the canvas or "
                             f"overlaps another; place sprites disjoint inside {CANVAS}x{CANVAS}")
        ink = sprite > 0
        if not ink.any():
            raise ValueError(f"scan {i} has no ink (all pixels 0); use a real scan")
        image[y:y + s, x:x + s, 0] = sprite
        mask[y:y + s, x:x + s, 0] = np.where(ink, 1 + int(label), 0)
        rows, cols = np.nonzero(ink.any(axis=1))[0], np.nonzero(ink.any(axis=0))[0]
        boxes[i] = np.array([y + rows[0], x + cols[0], y + rows[-1] + 1, x + cols[-1] + 1],
                            np.float32) / CANVAS
    return {"image": image, "mask": mask,
            "objects": {"bbox": boxes, "label": np.asarray(labels, np.int64)}}


def scene_plan(split: str) -> list[dict[str, Any]]:
    """What each scene of `split` holds, without rendering: a list of `{"rows": scan indices
    into `digits.load_arrays()[split]`, "ids": their rows in `load_digits()`, "scales",
    "corners"}`. A pure function of `split` (fixed seed `SPLIT_SEEDS`).

    Raises:
        ValueError: if `split` is not `"train"` or `"test"`.
    """
    if split not in SPLIT_SIZES:
        raise ValueError(f"split={split!r} is unknown; use one of {sorted(SPLIT_SIZES)}.")
    _, _, ids = digits.load_arrays()[split]
    rng = np.random.default_rng(SPLIT_SEEDS[split])
    cycle = _ScanCycle(len(ids), rng)
    plan = []
    for _ in range(SPLIT_SIZES[split]):
        rows = cycle.take(int(rng.integers(1, MAX_OBJECTS + 1)))
        while True:  # redraw scales and positions until the sprites fit (rarely more than once)
            scales = [int(s) for s in rng.choice(SCALES, size=len(rows))]
            corners = _place(rng, [8 * s for s in scales])
            if corners is not None:
                break
        plan.append({"rows": rows, "ids": [int(ids[r]) for r in rows], "scales": scales,
                     "corners": corners})
    return plan


def generate_scenes(split: str) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yields `(scene_index, example)` for `split`, exactly as the builder stores them.

    Raises:
        ValueError: if `split` is not `"train"` or `"test"`.
    """
    plan = scene_plan(split)
    images, labels, _ = digits.load_arrays()[split]
    for i, p in enumerate(plan):
        yield i, render([images[r] for r in p["rows"]], [int(labels[r]) for r in p["rows"]],
                        p["scales"], p["corners"])


class DigitScenes(LocalBuilder):
    """64x64 scenes of 1-4 real digit scans with per-pixel class masks and boxes."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release (4,000 train / 500 test scenes)."}

    def _info(self) -> tfds.core.DatasetInfo:
        zlib = tfds.features.Encoding.ZLIB
        return tfds.core.DatasetInfo(
            builder=self,
            description=(
                "64x64 uint8 canvases with 1-4 sklearn digit scans (scaled 2x, 3x or 4x by "
                "pixel replication, placed without overlap); per-pixel mask (0 background, "
                "1 + digit on the ink) and per-object boxes (ymin, xmin, ymax, xmax in [0, 1]) "
                "with digit labels. Train scenes from digits-train scans, test from digits-test."
            ),
            features=tfds.features.FeaturesDict({
                "image": tfds.features.Image(shape=IMAGE_SHAPE, dtype=np.uint8),
                "mask": tfds.features.Tensor(shape=IMAGE_SHAPE, dtype=np.uint8, encoding=zlib),
                "objects": tfds.features.Sequence({
                    "bbox": tfds.features.BBoxFeature(),
                    "label": tfds.features.ClassLabel(num_classes=NUM_CLASSES),
                }),
            }),
            supervised_keys=("image", "mask"),
            homepage="https://archive.ics.uci.edu/dataset/80",
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager) -> dict[str, Any]:
        del dl_manager  # Built from scikit-learn's bundled scans: nothing to download.
        return {split: self._generate_examples(split) for split in ("train", "test")}

    def _generate_examples(self, split: str) -> Iterator[tuple[int, dict[str, Any]]]:
        yield from generate_scenes(split)
