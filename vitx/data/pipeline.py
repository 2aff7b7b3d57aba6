"""Input pipeline: a prepared TFDS split -> tf.data batches -> global, sharded `jax.Array`s.

Reproducibility contract (train): the stream of examples is a pure function of (dataset,
split, process, `seed`). Example number `i` of the repeated, shuffled stream gets the
stateless preprocessing seed `fold_in(fold_in([seed, SALT], process_index), i)`, so a run
resumed with `start_step=s` yields bit-for-bit the batches a fresh run yields from step
`s` on (the skipped examples are read, but neither decoded nor preprocessed).

Eval: one pass, no shuffling; the last batch is padded with zeros up to the per-process batch
size and every example carries `_mask` (float32, 1 real / 0 padding). All processes yield
the same number of batches, so metrics summed with `_mask` are exact over the whole split.

A dataset is resolved once per (name, data dir) by `dataset_info` (a frozen `DatasetInfo`:
builder, features, split sizes, classes; see `vitx.data.info`), which `num_examples`,
`build_dataset` and `element_spec` share.
"""

from __future__ import annotations

import collections
import math
from collections.abc import Iterator, Sequence
from typing import Any

import jax
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from vitx.data.builders import ensure_built, hide_accelerators_from_tf
from vitx.data.info import DatasetInfo, dataset_info
from vitx.data.pp import SEED_KEY, get_preprocess_fn

__all__ = ["MASK_KEY", "SEED_KEY", "DatasetInfo", "build_dataset", "dataset_info",
           "element_spec", "ensure_built", "global_batches", "num_examples"]

hide_accelerators_from_tf()

MASK_KEY = "_mask"
# Mixed into every per-example seed so data seeds differ from other uses of the same `seed`.
_SEED_SALT = 0x5EED_DA7A
# Eval preprocessing uses this fixed seed (eval results must not depend on the train seed).
_EVAL_SEED = 0


def _check_batch_size(global_batch_size: Any) -> int:
    """Returns the per-process batch size or raises a ValueError naming `batch_size`."""
    count = jax.process_count()
    if (
        not isinstance(global_batch_size, int | np.integer)
        or isinstance(global_batch_size, bool)
        or global_batch_size <= 0
    ):
        raise ValueError(
            f"batch_size={global_batch_size!r} must be a positive int (global batch size "
            "over all processes)."
        )
    if global_batch_size % count:
        raise ValueError(
            f"batch_size={global_batch_size} is not divisible by jax.process_count()={count}; "
            f"use a multiple of {count}."
        )
    return int(global_batch_size) // count


def num_examples(
    *,
    name: str,
    split: str,
    data_dir: str | None,
    label_subset: Sequence[int] | None = None,
) -> int:
    """Number of examples in the WHOLE `split` (all processes), after `label_subset`.

    Args:
        name: TFDS dataset name, e.g. `"digits"`.
        split: TFDS split spec, e.g. `"test"` or `"train[:90%]"`.
        data_dir: TFDS data dir (`None`: `$TFDS_DATA_DIR` or `~/tensorflow_datasets`).
        label_subset: if given, only examples with these labels are counted.

    Raises:
        ValueError: unknown/unprepared dataset, bad split or bad `label_subset`.
    """
    info = dataset_info(name, data_dir, label_subset)
    try:
        return info.count(split)
    except (ValueError, KeyError, AssertionError) as e:
        raise ValueError(
            f"cannot count split={split!r} of dataset {name!r} (available splits: "
            f"{sorted(info.builder.info.splits)}): {e}"
        ) from None


def _no_autograph(fn: Any) -> Any:
    """`fn` for `Dataset.map` without AutoGraph's source conversion: the pp ops are plain
    TensorFlow graph code (tensor-dependent branches use `tf.cond` / `tf.where`), and converting
    them cost ~2 s of every run's start-up here (each process converts them anew)."""
    return tf.autograph.experimental.do_not_convert(fn)


def _example_fn(info: DatasetInfo, pp: str, seed: int) -> Any:
    """(index, example) -> preprocessed example: decodes images, seeds, runs `pp`."""
    pp_fn = get_preprocess_fn(pp)
    features = info.features
    image_keys = info.image_keys
    base_seed = tf.random.experimental.stateless_fold_in(
        tf.constant([seed, _SEED_SALT], tf.int64), jax.process_index()
    )

    def fn(index: tf.Tensor, example: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        example = dict(example)
        for k in image_keys:
            if example[k].dtype == tf.string:
                example[k] = features[k].decode_example(example[k])
        example[SEED_KEY] = tf.random.experimental.stateless_fold_in(base_seed, index)
        out = pp_fn(example)
        out.pop(SEED_KEY, None)
        return out

    return fn


def build_dataset(
    *,
    name: str,
    split: str,
    data_dir: str | None,
    pp: str,
    global_batch_size: int,
    train: bool,
    seed: int = 0,
    start_step: int = 0,
    shuffle_buffer: int = 10_000,
    cache: bool = True,
    label_subset: Sequence[int] | None = None,
) -> tf.data.Dataset:
    """Builds this process's tf.data pipeline of batches for `split` of dataset `name`.

    Each process reads its own `tfds.split_for_jax_process(split)` part and produces
    batches of `per_process_batch = global_batch_size // jax.process_count()` examples.

    Args:
        name: TFDS name; vitx's own builders (`digits`) are prepared on first use.
        split: TFDS split spec (`"train"`, `"test"`, `"train[:90%]"`...).
        data_dir: TFDS data dir (`None`: `$TFDS_DATA_DIR` or `~/tensorflow_datasets`).
        pp: preprocessing spec for one example, see `vitx.data.pp`.
        global_batch_size: examples per step over all processes.
        train: True: shuffled, repeated forever, randomly augmented, `start_step` skipped.
            False: one ordered pass, last batch zero-padded, `_mask` key added.
        seed: shuffle and augmentation seed (train only; eval uses a fixed seed).
        start_step: train steps already done; skips `start_step * per_process_batch`
            examples so a resumed run sees the same batches as an uninterrupted one.
        shuffle_buffer: shuffle buffer size in examples (train only).
        cache: cache the (filtered, still encoded) examples in memory after the first pass.
        label_subset: keep only these labels, remapped to their index in the list.

    Returns:
        Dataset of dicts of batched tensors with leading dim `per_process_batch`, e.g.
        `image` (batch, height, width, channels) and `label` (batch,) or
        (batch, num_classes); eval batches also have `_mask` float32 (batch,).

    Raises:
        ValueError: bad `batch_size`/`start_step`/`shuffle_buffer`/`label_subset`/`pp`,
            unknown or unprepared dataset, unknown split.
    """
    local_batch = _check_batch_size(global_batch_size)
    if not isinstance(start_step, int | np.integer) or start_step < 0:
        raise ValueError(f"start_step={start_step!r} must be an int >= 0.")
    if train and (not isinstance(shuffle_buffer, int | np.integer) or shuffle_buffer < 1):
        raise ValueError(f"shuffle_buffer={shuffle_buffer!r} must be a positive int.")
    get_preprocess_fn(pp)  # Fail early (and outside tf.data tracing) on a bad spec.
    info = dataset_info(name, data_dir, label_subset)
    labels = info.label_subset
    process_split = tfds.split_for_jax_process(split)

    ds = info.read(process_split, skip_image_decoding=True)
    if cache:
        ds = ds.cache()
    options = tf.data.Options()
    options.deterministic = True

    if train:
        ds = ds.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
        ds = ds.repeat()
        ds = ds.enumerate()
        ds = ds.skip(int(start_step) * local_batch)
        ds = ds.map(
            _no_autograph(_example_fn(info, pp, seed)),
            num_parallel_calls=tf.data.AUTOTUNE,
            deterministic=True,
        )
        ds = ds.batch(local_batch, drop_remainder=True)
        return ds.prefetch(tf.data.AUTOTUNE).with_options(options)

    # Eval: every process must yield the same number of batches (collectives in lockstep).
    count = jax.process_count()
    counts = [
        info.count(tfds.split_for_jax_process(split, process_index=p, process_count=count))
        for p in range(count)
    ]
    num_batches = math.ceil(max(counts) / local_batch)
    if num_batches == 0:
        raise ValueError(
            f"split={split!r} of dataset {name!r} has no examples"
            + (f" with label_subset={list(labels)}" if labels else "")
            + "; pick a non-empty split."
        )
    example_fn = _example_fn(info, pp, _EVAL_SEED)

    def with_mask(index: tf.Tensor, example: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        out = example_fn(index, example)
        if MASK_KEY in out:
            raise ValueError(f"pp must not produce the reserved key {MASK_KEY!r}.")
        out[MASK_KEY] = tf.constant(1.0, tf.float32)
        return out

    def pad_batch(batch: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        def pad(x: tf.Tensor) -> tf.Tensor:
            missing = local_batch - tf.shape(x)[0]
            zeros = tf.zeros(tf.concat([[missing], tf.shape(x)[1:]], 0), x.dtype)
            out = tf.concat([x, zeros], 0)
            out.set_shape([local_batch, *x.shape[1:]])
            return out

        return {k: pad(v) for k, v in batch.items()}

    ds = ds.enumerate().map(_no_autograph(with_mask), num_parallel_calls=tf.data.AUTOTUNE,
                            deterministic=True)
    ds = ds.batch(local_batch, drop_remainder=False).map(_no_autograph(pad_batch))
    missing = num_batches - math.ceil(counts[jax.process_index()] / local_batch)
    if missing:
        zeros = tf.nest.map_structure(lambda s: tf.zeros(s.shape, s.dtype), ds.element_spec)
        ds = ds.concatenate(tf.data.Dataset.from_tensors(zeros).repeat(missing))
    ds = ds.apply(tf.data.experimental.assert_cardinality(num_batches))
    return ds.prefetch(tf.data.AUTOTUNE).with_options(options)


def _to_global(key: str, x: np.ndarray, sharding: jax.sharding.Sharding) -> jax.Array:
    if x.dtype.kind in "OSU":
        raise ValueError(
            f"batch key {key!r} has non-numeric dtype {x.dtype}; drop it in the pp spec, "
            "e.g. end it with keep('image', 'label')."
        )
    if not jax.config.jax_enable_x64:
        if x.dtype == np.int64:
            x = x.astype(np.int32)
        elif x.dtype == np.uint64:
            x = x.astype(np.uint32)
        elif x.dtype == np.float64:
            x = x.astype(np.float32)
    return jax.make_array_from_process_local_data(sharding, x)


def global_batches(
    ds: tf.data.Dataset, sharding: jax.sharding.Sharding, prefetch: int = 2
) -> Iterator[dict[str, jax.Array]]:
    """Yields each batch of `ds` as global `jax.Array`s sharded by `sharding`.

    Every process passes its own per-process batches (leading dim `per_process_batch`);
    each yielded array has leading dim `per_process_batch * jax.process_count()`.
    int64/float64 become int32/float32 unless `jax_enable_x64` is on.

    Args:
        ds: batched dataset from `build_dataset`.
        sharding: sharding of the batch, normally over the leading dim, e.g.
            `NamedSharding(mesh, P(("data", "fsdp")))`.
        prefetch: number of batches transferred to devices ahead of the consumer.

    Raises:
        ValueError: `prefetch` < 0, or a batch holds strings (drop them with `keep`).
    """
    if not isinstance(prefetch, int) or prefetch < 0:
        raise ValueError(f"prefetch={prefetch!r} must be an int >= 0.")
    queue: collections.deque[dict[str, jax.Array]] = collections.deque()
    for batch in ds.as_numpy_iterator():
        queue.append({k: _to_global(k, np.asarray(v), sharding) for k, v in batch.items()})
        if len(queue) > prefetch:
            yield queue.popleft()
    while queue:
        yield queue.popleft()


def element_spec(*, name: str, split: str, data_dir: str | None, pp: str,
                 label_subset: Sequence[int] | None = None
                 ) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """Per-example {key: (shape, numpy dtype)} of the batches `pp` makes (static, no data read).

    The dtypes are those `global_batches` delivers (int64/float64 narrowed to 32 bits unless
    `jax_enable_x64`); the eval-only `_mask` key is left out. E.g. for digits
    {"image": ((32, 32, 1), float32), "label": ((10,), float32)}.

    Raises:
      ValueError: as `build_dataset` (unknown dataset, bad pp).
    """
    ds = build_dataset(name=name, split=split, data_dir=data_dir, pp=pp,
                       global_batch_size=jax.process_count(),
                       train=False, cache=False, label_subset=label_subset)
    out = {}
    for key, spec in ds.element_spec.items():
        if key == MASK_KEY:
            continue
        dtype = np.dtype(spec.dtype.as_numpy_dtype)
        if not jax.config.jax_enable_x64:
            dtype = {np.dtype(np.int64): np.dtype(np.int32),
                     np.dtype(np.uint64): np.dtype(np.uint32),
                     np.dtype(np.float64): np.dtype(np.float32)}.get(dtype, dtype)
        out[key] = (tuple(int(d) for d in spec.shape[1:]), dtype)
    return out
