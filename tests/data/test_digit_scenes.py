"""The `digit_scenes` TFDS builder: split sizes, no leakage, determinism, masks vs boxes."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import tensorflow_datasets as tfds

from vitx.data.builders import digit_scenes, digits

C = digit_scenes.CANVAS


@pytest.fixture(scope="module")
def plans() -> dict[str, list[dict]]:
    return {split: digit_scenes.scene_plan(split) for split in ("train", "test")}


@pytest.fixture(scope="module")
def test_scenes() -> list[dict]:
    return [ex for _, ex in digit_scenes.generate_scenes("test")]


def test_split_sizes_and_no_scan_shared_across_splits(plans) -> None:
    ref = digits.load_arrays()
    assert {k: len(v) for k, v in plans.items()} == {"train": 4000, "test": 500}
    used = {}
    for split, plan in plans.items():
        ids = [i for p in plan for i in p["ids"]]
        assert all(1 <= len(p["ids"]) <= 4 for p in plan)
        assert {len(p["ids"]) for p in plan} == {1, 2, 3, 4}
        used[split] = set(ids)
        # Only (and every one of) this split's scans of the `digits` builder, about equally often.
        assert used[split] == set(ref[split][2].tolist())
        counts = np.bincount(ids)[sorted(used[split])]
        assert counts.max() - counts.min() <= 1
    assert not used["train"] & used["test"]


def test_deterministic(plans, test_scenes) -> None:
    assert digit_scenes.scene_plan("test") == plans["test"]
    again = [ex for _, ex in itertools.islice(digit_scenes.generate_scenes("test"), 60)]
    for a, b in zip(test_scenes[:60], again, strict=True):
        np.testing.assert_array_equal(a["image"], b["image"])
        np.testing.assert_array_equal(a["mask"], b["mask"])
        np.testing.assert_array_equal(a["objects"]["bbox"], b["objects"]["bbox"])
    assert plans["train"][:3] != plans["test"][:3]  # splits differ


def test_masks_consistent_with_boxes_and_scans(plans, test_scenes) -> None:
    images = _sklearn_images()
    targets = _sklearn_targets()
    for ex, p in zip(test_scenes, plans["test"], strict=True):
        image, mask = ex["image"][..., 0], ex["mask"][..., 0]
        assert ex["image"].shape == ex["mask"].shape == (C, C, 1)
        assert ex["image"].dtype == ex["mask"].dtype == np.uint8
        np.testing.assert_array_equal(mask > 0, image > 0)  # the mask is the ink
        boxes, labels = ex["objects"]["bbox"], ex["objects"]["label"]
        np.testing.assert_array_equal(labels, targets[p["ids"]])
        assert boxes.dtype == np.float32 and np.all((0 <= boxes) & (boxes <= 1))
        covered = np.zeros_like(mask, bool)
        for (y0, x0, y1, x1), d, i, k in zip(boxes * C, labels, p["ids"], p["scales"],
                                             strict=True):
            y0, x0, y1, x1 = (int(round(v)) for v in (y0, x0, y1, x1))
            assert y0 < y1 and x0 < x1
            inside = mask[y0:y1, x0:x1]
            assert not covered[y0:y1, x0:x1].any()  # boxes are disjoint
            covered[y0:y1, x0:x1] = True
            assert set(np.unique(inside).tolist()) <= {0, 1 + int(d)}
            # Tight: every border row and column of the box holds ink of this object.
            assert inside[0].any() and inside[-1].any()
            assert inside[:, 0].any() and inside[:, -1].any()
            # The box holds the scan's ink scaled k times (every ink pixel a k x k block).
            sprite = np.kron(images[i], np.ones((k, k)))
            rows, cols = np.nonzero(sprite.any(1))[0], np.nonzero(sprite.any(0))[0]
            np.testing.assert_array_equal(
                image[y0:y1, x0:x1], sprite[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1])
        assert not mask[~covered].any()  # no ink outside the boxes


def test_render_rejects_overlap() -> None:
    scan = np.full((8, 8), 255, np.uint8)
    with pytest.raises(ValueError, match="overlaps another"):
        digit_scenes.render([scan, scan], [1, 2], [2, 2], [(0, 0), (8, 8)])
    with pytest.raises(ValueError, match="unknown"):
        digit_scenes.scene_plan("validation")


def test_built_dataset_equals_the_generator(scenes_dir: str, plans) -> None:
    builder = tfds.builder("digit_scenes", data_dir=scenes_dir)
    feats = builder.info.features
    assert feats["image"].shape == feats["mask"].shape == (C, C, 1)
    assert feats["objects"]["bbox"].shape == (4,)
    assert feats["objects"]["label"].num_classes == 10
    ds = builder.as_dataset(split="test", shuffle_files=False)
    n = builder.info.splits["test"].num_examples
    assert n == 24
    ref = [ex for _, ex in itertools.islice(digit_scenes.generate_scenes("test"), n)]
    got = sorted(tfds.as_numpy(ds), key=lambda e: e["image"].tobytes())
    ref = sorted(ref, key=lambda e: e["image"].tobytes())
    for a, b in zip(got, ref, strict=True):
        np.testing.assert_array_equal(a["image"], b["image"])
        np.testing.assert_array_equal(a["mask"], b["mask"])
        np.testing.assert_allclose(a["objects"]["bbox"], b["objects"]["bbox"])
        np.testing.assert_array_equal(a["objects"]["label"], b["objects"]["label"])
        assert a["objects"]["label"].dtype == np.int64


def _sklearn_images() -> np.ndarray:
    from sklearn.datasets import load_digits

    return np.round(load_digits().images * 255 / 16).astype(np.uint8)


def _sklearn_targets() -> np.ndarray:
    from sklearn.datasets import load_digits

    return load_digits().target
