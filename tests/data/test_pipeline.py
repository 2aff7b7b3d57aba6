"""TFDS -> tf.data -> global jax.Array batches."""

from __future__ import annotations

import itertools

import jax
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P
from sklearn.datasets import load_digits

from vitx.data import pipeline
from vitx.data.pipeline import build_dataset, global_batches, num_examples

TRAIN_PP = "decode|pad(1)|random_crop(8)|flip_lr|value_range(-1, 1)|onehot(10)"
EVAL_PP = "decode|value_range(-1, 1)"


def _take(ds, n: int) -> list[dict[str, np.ndarray]]:
    return list(itertools.islice(ds.as_numpy_iterator(), n))


def _train(data_dir: str, **kw):
    args = dict(
        name="digits",
        split="train",
        data_dir=data_dir,
        pp=TRAIN_PP,
        global_batch_size=32,
        train=True,
        seed=0,
        shuffle_buffer=2_000,
    )
    return build_dataset(**{**args, **kw})


def _eval(data_dir: str, **kw):
    args = dict(
        name="digits",
        split="test",
        data_dir=data_dir,
        pp=EVAL_PP,
        global_batch_size=64,
        train=False,
    )
    return build_dataset(**{**args, **kw})


def test_train_batch_shapes_and_dtypes(digits_data_dir: str) -> None:
    (batch,) = _take(_train(digits_data_dir), 1)
    assert batch["image"].shape == (32, 8, 8, 3) and batch["image"].dtype == np.float32
    assert batch["label"].shape == (32, 10) and batch["label"].dtype == np.float32
    assert batch["id"].shape == (32,)
    assert "_seed" not in batch and "_mask" not in batch
    assert -1 <= batch["image"].min() and batch["image"].max() <= 1
    np.testing.assert_array_equal(batch["label"].sum(-1), 1.0)


def test_train_epoch_is_a_shuffled_permutation(digits_data_dir: str) -> None:
    batches = _take(_train(digits_data_dir, global_batch_size=479), 3)  # 3 * 479 = 1437
    ids = np.concatenate([b["id"] for b in batches])
    assert len(set(ids.tolist())) == 1437
    assert not np.array_equal(ids, np.sort(ids))


@pytest.mark.parametrize("start_step", [3, 50])  # 50 crosses the first epoch (~45 steps).
def test_resume_is_bitwise_identical(digits_data_dir: str, start_step: int) -> None:
    fresh = _take(_train(digits_data_dir, seed=7), start_step + 2)
    resumed = _take(_train(digits_data_dir, seed=7, start_step=start_step), 2)
    for want, got in zip(fresh[start_step:], resumed, strict=True):
        assert want.keys() == got.keys()
        for k in want:
            np.testing.assert_array_equal(got[k], want[k], err_msg=k)


def test_seed_changes_order_and_augmentation(digits_data_dir: str) -> None:
    (a,) = _take(_train(digits_data_dir, seed=0), 1)
    (b,) = _take(_train(digits_data_dir, seed=1), 1)
    assert not np.array_equal(a["id"], b["id"])
    # Same example, different seed -> (almost surely) different crop/flip over a batch.
    a2 = _take(_train(digits_data_dir, seed=0, shuffle_buffer=1), 1)[0]
    b2 = _take(_train(digits_data_dir, seed=1, shuffle_buffer=1), 1)[0]
    np.testing.assert_array_equal(a2["id"], b2["id"])
    assert not np.array_equal(a2["image"], b2["image"])


def test_eval_covers_each_test_example_once(digits_data_dir: str) -> None:
    batches = list(_eval(digits_data_dir).as_numpy_iterator())
    assert len(batches) == 6  # ceil(360 / 64)
    for b in batches:
        assert b["image"].shape == (64, 8, 8, 3) and b["_mask"].shape == (64,)
    mask = np.concatenate([b["_mask"] for b in batches])
    assert mask.sum() == 360 and set(np.unique(mask).tolist()) == {0.0, 1.0}
    ids = np.concatenate([b["id"] for b in batches])[mask == 1]
    assert len(set(ids.tolist())) == 360
    last = batches[-1]
    assert (last["image"][mask[-64:] == 0] == 0).all()
    # A second pass gives identical data (deterministic eval).
    again = list(_eval(digits_data_dir).as_numpy_iterator())
    for x, y in zip(batches, again, strict=True):
        np.testing.assert_array_equal(x["image"], y["image"])


def test_eval_multi_process_batches_line_up(digits_data_dir: str, monkeypatch) -> None:
    # 7 simulated processes split 360 examples 52/52/52/51/51/51/51; with 17 per process the
    # 52s need 4 batches and the 51s 3, so the 51s must get one all-padding batch.
    monkeypatch.setattr(jax, "process_count", lambda: 7)
    seen, lengths = [], set()
    for p in range(7):
        monkeypatch.setattr(jax, "process_index", lambda p=p: p)
        batches = list(_eval(digits_data_dir, global_batch_size=7 * 17).as_numpy_iterator())
        lengths.add(len(batches))
        mask = np.concatenate([b["_mask"] for b in batches])
        seen.append(np.concatenate([b["id"] for b in batches])[mask == 1])
    assert lengths == {4}
    all_ids = np.concatenate(seen)
    assert len(all_ids) == 360 and len(set(all_ids.tolist())) == 360


def test_label_subset(digits_data_dir: str) -> None:
    subset = [5, 6, 7, 8, 9]
    n = num_examples(name="digits", split="test", data_dir=digits_data_dir, label_subset=subset)
    target = load_digits().target
    batches = list(_eval(digits_data_dir, label_subset=subset).as_numpy_iterator())
    mask = np.concatenate([b["_mask"] for b in batches]) == 1
    labels = np.concatenate([b["label"] for b in batches])[mask]
    ids = np.concatenate([b["id"] for b in batches])[mask]
    assert n == mask.sum() == 180  # stratified split: 36 of each class in test
    assert set(labels.tolist()) == set(range(5))
    np.testing.assert_array_equal(labels, target[ids] - 5)
    (train_batch,) = _take(_train(digits_data_dir, label_subset=[9, 2]), 1)
    np.testing.assert_array_equal(train_batch["label"][:, 2:], 0)  # only 2 classes remain
    np.testing.assert_array_equal(
        train_batch["label"].argmax(-1), (target[train_batch["id"]] == 2).astype(int)
    )


def test_num_examples_without_subset(digits_data_dir: str) -> None:
    assert num_examples(name="digits", split="train", data_dir=digits_data_dir) == 1437
    assert num_examples(name="digits", split="test[:100]", data_dir=digits_data_dir) == 100


def test_global_batches_single_device_mesh(digits_data_dir: str) -> None:
    mesh = Mesh(np.array(jax.devices()[:1]).reshape(1, 1), ("data", "fsdp"))
    sharding = NamedSharding(mesh, P(("data", "fsdp")))
    ds = _eval(digits_data_dir)
    want = list(ds.as_numpy_iterator())
    got = list(global_batches(ds, sharding, prefetch=2))
    assert len(got) == len(want) == 6
    for g, w in zip(got, want, strict=True):
        assert g.keys() == w.keys()
        for k in g:
            assert isinstance(g[k], jax.Array)
            assert g[k].sharding == sharding
            assert g[k].shape == w[k].shape
            np.testing.assert_array_equal(np.asarray(g[k]), w[k])
    assert got[0]["id"].dtype == np.int32  # int64 narrowed (jax_enable_x64 is off)


@pytest.mark.parametrize("bad", [0, -8, 2.5])
def test_bad_batch_size(digits_data_dir: str, bad) -> None:
    with pytest.raises(ValueError, match="batch_size"):
        _train(digits_data_dir, global_batch_size=bad)


def test_batch_size_not_divisible_by_process_count(digits_data_dir: str, monkeypatch) -> None:
    monkeypatch.setattr(jax, "process_count", lambda: 3)
    with pytest.raises(ValueError, match=r"batch_size=32 is not divisible by .*process_count"):
        _train(digits_data_dir, global_batch_size=32)


@pytest.mark.parametrize(
    "kwargs,needle",
    [
        ({"label_subset": [10]}, "label_subset"),
        ({"label_subset": [1, 1]}, "duplicates"),
        ({"label_subset": []}, "label_subset"),
        ({"pp": "decode|warp(3)"}, "'warp'"),
        ({"start_step": -1}, "start_step"),
        ({"split": "validation"}, "validation"),
        ({"name": "no_such_dataset_xyz"}, "no_such_dataset_xyz"),
    ],
)
def test_bad_arguments(digits_data_dir: str, kwargs: dict, needle: str) -> None:
    with pytest.raises(ValueError) as err:
        _train(digits_data_dir, **kwargs)
    assert needle in str(err.value)


def test_tf_sees_no_accelerators() -> None:
    import tensorflow as tf

    assert tf.config.get_visible_devices("GPU") == []
    assert pipeline.MASK_KEY == "_mask"


def test_dataset_info_is_resolved_once(digits_data_dir: str) -> None:
    info = pipeline.dataset_info("digits", digits_data_dir)
    assert pipeline.dataset_info("digits", digits_data_dir) is info
    assert dict(info.split_sizes) == {"train": 1437, "test": 360}
    assert info.num_classes == 10 and info.image_keys == ("image",)
    sub = pipeline.dataset_info("digits", digits_data_dir, [7, 3])
    assert sub.builder is info.builder and sub.label_subset == (7, 3)
    per_label = [pipeline.dataset_info("digits", digits_data_dir, [c]).count("test")
                 for c in (7, 3)]
    assert sub.count("test") == sum(per_label) and info.count("test") == 360
    with pytest.raises(ValueError, match="duplicates"):
        pipeline.dataset_info("digits", digits_data_dir, [3, 3])
