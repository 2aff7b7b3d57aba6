"""The `moving_digits` TFDS builder and the key-generic preprocessing ops it needs."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds
from sklearn.datasets import load_digits

from vitx.data.builders import digits, ensure_built, moving_digits
from vitx.data.pipeline import build_dataset
from vitx.data.pp import get_preprocess_fn

T, S = moving_digits.NUM_FRAMES, moving_digits.FRAME_SIZE
ARRAY_KEYS = ("video", "mask", "flow")


@pytest.fixture(scope="session")
def moving_digits_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A TFDS data dir holding the prepared `moving_digits` dataset, built once per session."""
    data_dir = tmp_path_factory.mktemp("tfds_moving_digits")
    ensure_built("moving_digits", str(data_dir))
    return str(data_dir)


def _load(data_dir: str, split: str, arrays: bool = True) -> dict[str, np.ndarray]:
    """The whole split as numpy; `arrays=False` skips decoding video/mask/flow."""
    builder = tfds.builder("moving_digits", data_dir=data_dir)
    decoders = None if arrays else {k: tfds.decode.SkipDecoding() for k in ARRAY_KEYS}
    ds = builder.as_dataset(split=split, shuffle_files=False, batch_size=-1, decoders=decoders)
    return tfds.as_numpy(ds)


@pytest.fixture(scope="module")
def test_split(moving_digits_dir: str) -> dict[str, np.ndarray]:
    return _load(moving_digits_dir, "test")


def _ink(mask_frame: np.ndarray) -> set[tuple[int, int]]:
    return {(int(y), int(x)) for y, x in np.argwhere(mask_frame[..., 0] > 0)}


def _displacement(flow_frame: np.ndarray, mask_frame: np.ndarray) -> tuple[int, int]:
    """The single (dy, dx) the flow holds on the ink pixels of one frame."""
    on = flow_frame[mask_frame[..., 0] > 0]
    assert on.shape[0] > 0
    assert np.all(on == on[0]), "flow must be one rigid displacement per frame"
    dy, dx = on[0]
    assert dy == int(dy) and dx == int(dx)
    return int(dy), int(dx)


@pytest.mark.parametrize("split,size", [("train", 2874), ("test", 360)])
def test_split_sizes_features_and_labels(moving_digits_dir: str, split: str, size: int) -> None:
    builder = ensure_built("moving_digits", moving_digits_dir)
    assert builder.info.splits[split].num_examples == size
    feats = builder.info.features
    assert feats["video"].shape == (T, S, S, 1) and feats["video"].dtype == np.uint8
    assert feats["mask"].shape == (T, S, S, 1) and feats["mask"].dtype == np.uint8
    assert feats["flow"].shape == (T, S, S, 2) and feats["flow"].dtype == np.float32
    assert feats["direction"].names == list(moving_digits.DIRECTIONS)
    assert feats["digit"].num_classes == 10 and feats["label"].num_classes == 8
    data = _load(moving_digits_dir, split, arrays=False)
    assert len(data["id"]) == size
    assert 0 <= data["digit"].min() and data["digit"].max() < 10
    assert 0 <= data["direction"].min() and data["direction"].max() < 8
    np.testing.assert_array_equal(data["label"], data["direction"])
    counts = np.bincount(data["direction"], minlength=8)
    assert counts.max() - counts.min() <= 1  # balanced directions
    assert set(np.unique(data["digit"]).tolist()) == set(range(10))


def test_no_scan_leaks_between_splits(moving_digits_dir: str) -> None:
    ref = digits.load_arrays()
    target = load_digits().target
    for split, per_scan in (("train", 2), ("test", 1)):
        data = _load(moving_digits_dir, split, arrays=False)
        ids, counts = np.unique(data["id"], return_counts=True)
        np.testing.assert_array_equal(ids, np.sort(ref[split][2]))  # every scan of this split
        assert np.all(counts == per_scan)
        np.testing.assert_array_equal(data["digit"], target[data["id"]])
    train_ids = set(_load(moving_digits_dir, "train", arrays=False)["id"].tolist())
    test_ids = set(_load(moving_digits_dir, "test", arrays=False)["id"].tolist())
    assert not train_ids & test_ids


def test_video_shows_the_source_scan_and_mask_is_its_ink(test_split) -> None:
    images = np.round(load_digits().images * 255 / 16).astype(np.uint8)
    video, mask = test_split["video"], test_split["mask"]
    np.testing.assert_array_equal(mask, (video > 0).astype(np.uint8))
    for i in range(0, len(video), 7):
        sprite = moving_digits.upsample(images[test_split["id"][i]])
        for t in range(T):
            # The whole 16x16 sprite is inside the frame in every frame.
            assert int(video[i, t].astype(np.int64).sum()) == int(sprite.astype(np.int64).sum())
            assert mask[i, t].sum() == (sprite > 0).sum()


def test_flow_is_exact_and_direction_matches_velocity(test_split) -> None:
    video, mask, flow = test_split["video"], test_split["mask"], test_split["flow"]
    # Zero on the background, everywhere.
    assert np.all(flow[np.broadcast_to(mask == 0, flow.shape)] == 0)
    bounced = 0
    for i in range(len(video)):
        disps = [_displacement(flow[i, t], mask[i, t]) for t in range(T)]
        for t in range(T - 1):
            dy, dx = disps[t]
            # Warping frame t's ink pixels by the flow gives frame t+1's ink pixels and values.
            moved = {(y + dy, x + dx) for y, x in _ink(mask[i, t])}
            assert moved == _ink(mask[i, t + 1])
            ys, xs = np.nonzero(mask[i, t, ..., 0])
            np.testing.assert_array_equal(video[i, t + 1, ys + dy, xs + dx], video[i, t, ys, xs])
        assert disps[T - 1] == disps[T - 2]  # last frame repeats the previous displacement
        # Label = sign pattern of the initial velocity = the frame 0 -> 1 displacement.
        dy0, dx0 = disps[0]
        assert moving_digits.direction_index(dy0, dx0) == test_split["direction"][i]
        speed = max(abs(dy0), abs(dx0))
        assert speed in (2, 3) and {abs(dy0), abs(dx0)} <= {0, speed}
        # A step never moves further than the speed (a bounce can shorten it); an axis that
        # starts still stays still.
        assert all(abs(dy) <= speed and abs(dx) <= speed for dy, dx in disps)
        assert all(dy == 0 for dy, _ in disps) or dy0 != 0
        assert all(dx == 0 for _, dx in disps) or dx0 != 0
        bounced += any(dy * dy0 < 0 or dx * dx0 < 0 for dy, dx in disps)
    assert 0 < bounced < len(video)  # both bouncing and straight clips occur


def test_built_data_equal_the_deterministic_generator(test_split) -> None:
    regenerated = {ex["id"]: ex for _, ex in moving_digits.generate_clips("test")}
    assert len(regenerated) == len(test_split["id"])
    for i, idx in enumerate(test_split["id"]):
        ex = regenerated[int(idx)]
        for k in ARRAY_KEYS:
            np.testing.assert_array_equal(test_split[k][i], ex[k])
        assert (ex["digit"], ex["direction"]) == (
            test_split["digit"][i],
            test_split["direction"][i],
        )
    first = list(itertools.islice(moving_digits.generate_clips("train"), 40))
    again = list(itertools.islice(moving_digits.generate_clips("train"), 40))
    for (ka, a), (kb, b) in zip(first, again, strict=True):
        assert ka == kb and a.keys() == b.keys()
        for k in a:
            np.testing.assert_array_equal(a[k], b[k])


def test_loads_through_the_pipeline(moving_digits_dir: str, test_split) -> None:
    ds = build_dataset(
        name="moving_digits",
        split="test",
        data_dir=moving_digits_dir,
        pp="video_value_range(-1, 1)|keep('video', 'label')",
        global_batch_size=64,
        train=False,
    )
    batches = list(ds.as_numpy_iterator())
    assert len(batches) == 6  # ceil(360 / 64)
    b = batches[0]
    assert set(b) == {"video", "label", "_mask"}
    assert b["video"].shape == (64, T, S, S, 1) and b["video"].dtype == np.float32
    assert b["video"].min() == -1.0 and b["video"].max() == 1.0
    assert b["label"].shape == (64,)
    assert sum(float(x["_mask"].sum()) for x in batches) == 360

    digit_ds = build_dataset(
        name="moving_digits",
        split="test",
        data_dir=moving_digits_dir,
        pp="rename('digit', 'label')|keep('mask', 'label')",
        global_batch_size=360,
        train=False,
    )
    (d,) = list(digit_ds.as_numpy_iterator())
    np.testing.assert_array_equal(d["label"], test_split["digit"])
    np.testing.assert_array_equal(d["mask"], test_split["mask"])


def test_key_ops() -> None:
    ex = {
        "video": tf.constant(np.full((2, 4, 4, 1), 255, np.uint8)),
        "digit": tf.constant(7, tf.int64),
        "label": tf.constant(3, tf.int64),
    }
    out = get_preprocess_fn("video_value_range(0, 1)")(ex)
    assert out["video"].dtype == tf.float32 and np.all(out["video"].numpy() == 1.0)
    out = get_preprocess_fn("video_value_range(-1, 1, key='digit', in_max=10)")(ex)
    assert out["digit"].numpy() == pytest.approx(0.4)
    out = get_preprocess_fn("copy('digit', 'label')")(ex)
    assert int(out["label"]) == 7 and int(out["digit"]) == 7
    out = get_preprocess_fn("rename('digit', 'label')")(ex)
    assert int(out["label"]) == 7 and "digit" not in out
    with pytest.raises(ValueError, match="'nope'"):
        get_preprocess_fn("rename('nope', 'label')")(ex)
    with pytest.raises(ValueError, match="video_value_range"):
        get_preprocess_fn("video_value_range(0, 1, in_min=3, in_max=3)")
    with pytest.raises(ValueError, match="copy"):
        get_preprocess_fn("copy('digit', '_seed')")
