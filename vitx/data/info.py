"""A prepared TFDS dataset resolved once: `dataset_info` -> a frozen `DatasetInfo`.

`dataset_info(name, data_dir, label_subset)` looks the TFDS builder up (preparing vitx's own
datasets on first use, see `vitx.data.builders.ensure_built`) once per (name, data dir) and
keeps what the pipeline needs from it: features, split sizes, image keys, the classes of
`label`. `vitx.data.pipeline` reads and counts splits through it.
"""

from __future__ import annotations

import dataclasses
import functools
import types
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from vitx.data.builders import ensure_built


@dataclasses.dataclass(frozen=True, eq=False)
class DatasetInfo:
    """One prepared TFDS dataset, optionally restricted to the labels `label_subset`.

    Attributes:
        name: TFDS name as given, e.g. `"digits"` or `"digits:1.0.0"`.
        data_dir: TFDS data dir as given (`None`: `$TFDS_DATA_DIR` or `~/tensorflow_datasets`).
        builder: the prepared `tfds.core.DatasetBuilder`.
        features: `builder.info.features`.
        split_sizes: {named split: number of examples} of the whole dataset (no subset).
        image_keys: feature keys holding `tfds.features.Image`s (read encoded, decoded late).
        num_classes: number of classes of the `label` feature, or None if it has none.
        label_names: names of the `label` classes (index = class id), or None.
        label_subset: the kept labels (relabelled 0..len-1 in this order), or None for all.

    Raises:
        ValueError: (from `__post_init__`) `label_subset` empty, not non-negative ints, with
            duplicates, or with labels >= `num_classes`.
    """

    name: str
    data_dir: str | None
    builder: tfds.core.DatasetBuilder = dataclasses.field(repr=False)
    features: tfds.features.FeaturesDict = dataclasses.field(repr=False)
    split_sizes: Mapping[str, int]
    image_keys: tuple[str, ...]
    num_classes: int | None
    label_names: tuple[str, ...] | None
    label_subset: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        label_subset = self.label_subset
        if label_subset is None:
            return
        labels = tuple(label_subset)
        if not labels or not all(
            isinstance(c, int | np.integer) and not isinstance(c, bool) and c >= 0 for c in labels
        ):
            raise ValueError(
                f"label_subset={label_subset!r} must be a non-empty list of non-negative ints, "
                "e.g. [5, 6, 7, 8, 9]."
            )
        if len(set(labels)) != len(labels):
            raise ValueError(f"label_subset={label_subset!r} has duplicates; list each label once.")
        if self.num_classes is not None and max(labels) >= self.num_classes:
            raise ValueError(
                f"label_subset={label_subset!r} has labels >= num_classes={self.num_classes} of "
                f"dataset {self.builder.name!r}; use labels in [0, {self.num_classes})."
            )
        object.__setattr__(self, "label_subset", tuple(int(c) for c in labels))

    @classmethod
    def from_builder(
        cls, name: str, data_dir: str | None, builder: tfds.core.DatasetBuilder
    ) -> DatasetInfo:
        """The info of a prepared `builder` (all labels)."""
        features = builder.info.features
        label = features["label"] if "label" in features else None
        num_classes = getattr(label, "num_classes", None)
        names = getattr(label, "names", None) if num_classes is not None else None
        return cls(
            name=name,
            data_dir=data_dir,
            builder=builder,
            features=features,
            split_sizes=types.MappingProxyType(
                {str(k): int(v.num_examples) for k, v in builder.info.splits.items()}
            ),
            image_keys=tuple(k for k in features if isinstance(features[k], tfds.features.Image)),
            num_classes=None if num_classes is None else int(num_classes),
            label_names=None if names is None else tuple(str(n) for n in names),
        )

    def read(self, split: Any, *, skip_image_decoding: bool = True) -> tf.data.Dataset:
        """Reads `split` in file order, deterministically, keeping only `label_subset`.

        Images stay encoded (tf.string) with `skip_image_decoding`. Kept examples have
        `label` replaced by its index in `label_subset` (same dtype).

        Raises:
            ValueError: `split` is not a split of the dataset (naming the available ones).
        """
        options = tf.data.Options()
        options.deterministic = True
        read_config = tfds.ReadConfig(options=options, try_autocache=False, shuffle_seed=None)
        decoders = None
        if skip_image_decoding:
            decoders = {k: tfds.decode.SkipDecoding() for k in self.image_keys} or None
        try:
            ds = self.builder.as_dataset(
                split=split,
                shuffle_files=False,
                as_supervised=False,
                read_config=read_config,
                decoders=decoders,
            )
        except (ValueError, KeyError, AssertionError) as e:
            raise ValueError(
                f"cannot read split={getattr(split, 'split', split)!r} of dataset "
                f"{self.builder.name!r} (available splits: "
                f"{sorted(self.builder.info.splits)}): {e}"
            ) from None
        return _apply_label_subset(ds, self.label_subset)

    def count(self, split: Any) -> int:
        """Number of examples of `split` (a split spec or `tfds` read instruction) after
        `label_subset`; without a subset from the metadata, with one by reading the split.

        Raises:
            ValueError / KeyError: `split` is not a split of the dataset.
        """
        if self.label_subset is None:
            return int(self.builder.info.splits[split].num_examples)
        ds = self.read(split, skip_image_decoding=True)
        return int(ds.reduce(np.int64(0), lambda n, _: n + 1).numpy())


def _apply_label_subset(ds: tf.data.Dataset, labels: tuple[int, ...] | None) -> tf.data.Dataset:
    """Keeps examples whose `label` is in `labels` and relabels them 0..len(labels)-1."""
    if labels is None:
        return ds
    table = np.full(max(labels) + 1, -1, dtype=np.int64)
    table[list(labels)] = np.arange(len(labels))
    table_t = tf.constant(table)
    size = len(table)

    def new_label(label: tf.Tensor) -> tf.Tensor:
        label = tf.cast(label, tf.int64)
        in_range = tf.logical_and(label >= 0, label < size)
        return tf.where(in_range, tf.gather(table_t, tf.clip_by_value(label, 0, size - 1)), -1)

    ds = ds.filter(lambda ex: new_label(ex["label"]) >= 0)
    return ds.map(
        lambda ex: {**ex, "label": tf.cast(new_label(ex["label"]), ex["label"].dtype)},
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=True,
    )


@functools.cache
def _resolve(name: str, data_dir: str | None, default_dir: str | None) -> DatasetInfo:
    """The (cached) info of dataset `name` in `data_dir`; `default_dir` (TFDS's default dir
    when `data_dir` is None) is part of the cache key only."""
    del default_dir
    return DatasetInfo.from_builder(name, data_dir, ensure_built(name, data_dir))


def dataset_info(
    name: str, data_dir: str | None, label_subset: Sequence[int] | None = None
) -> DatasetInfo:
    """The `DatasetInfo` of dataset `name` in `data_dir`, restricted to `label_subset`.

    The builder is looked up (and vitx's own datasets prepared) once per (name, data dir) per
    process; the result is cached (a failed lookup is not). `label_subset` is checked on each
    call (cheap, no data read).

    Args:
        name: TFDS name, e.g. `"digits"`; vitx's own builders are prepared on first use.
        data_dir: TFDS data dir (`None`: `$TFDS_DATA_DIR` or `~/tensorflow_datasets`).
        label_subset: keep only these labels, remapped to their index in the list.

    Raises:
        ValueError: unknown or unprepared dataset (see `ensure_built`), bad `label_subset`.
    """
    if not isinstance(name, str) or not isinstance(data_dir, str | None):
        # Unhashable or odd arguments: no caching, `ensure_built` gives the error.
        info = DatasetInfo.from_builder(name, data_dir, ensure_built(name, data_dir))
    else:
        default_dir = tfds.core.constants.get_default_data_dir() if data_dir is None else None
        info = _resolve(name, data_dir, default_dir)
    if label_subset is None:
        return info
    return dataclasses.replace(info, label_subset=label_subset)
