"""vitx's own TFDS builders and `ensure_built`, the offline-safe way to get a builder.

Importing this package registers the builders below with TFDS (so `tfds.builder("digits")`
works) and switches off TFDS's lookups of the public `gs://tfds-data` bucket, which would
otherwise stall for minutes on a machine without network access.
"""

from __future__ import annotations

import tensorflow as tf
import tensorflow_datasets as tfds
from tensorflow_datasets.core.utils import gcs_utils

# Imported for their side effect: each module registers its builder with TFDS.
from vitx.data.builders import (  # noqa: F401
    digit_scenes,
    digits,
    dtmf_keys,
    moving_digits,
    sample_photos,
)
from vitx.utils import check_writable

# Builders that vitx can prepare itself, from data on this machine, on first use.
LOCAL_BUILDERS: frozenset[str] = frozenset({"digit_scenes", "digits", "dtmf_keys",
                                           "moving_digits", "sample_photos"})


def hide_accelerators_from_tf() -> None:
    """Keeps TensorFlow (used only for input pipelines) off GPUs/TPUs so JAX owns them."""
    for kind in ("GPU", "TPU"):
        try:
            tf.config.set_visible_devices([], kind)
        except (RuntimeError, ValueError):
            # RuntimeError: TF devices already initialised; ValueError: no such device type.
            pass


def disable_gcs() -> None:
    """Stops TFDS from probing `gs://tfds-data` (dataset info and prepared-data lookups).

    tensorflow-datasets 4.9.10 already ships with `_is_gcs_disabled = True`; earlier 4.x
    releases defaulted to False and every `tfds.builder` of an unprepared dataset tried to
    reach GCS. We set it explicitly so behaviour does not depend on the installed version.
    """
    gcs_utils._is_gcs_disabled = True


hide_accelerators_from_tf()
disable_gcs()


def _base_name(name: str) -> str:
    """`"digits:1.0.0"` / `"foo/config:1.2.0"` -> `"digits"` / `"foo"`."""
    return name.split(":", 1)[0].split("/", 1)[0].strip()


def ensure_built(name: str, data_dir: str | None) -> tfds.core.DatasetBuilder:
    """Returns the TFDS builder for `name`, preparing it on first use if vitx can.

    Datasets in `LOCAL_BUILDERS` (`digits`) are written into `data_dir` the first
    time they are requested and afterwards read from disk exactly like any other prepared
    TFDS dataset (e.g. `imagenet2012`). Other datasets must already be prepared there.

    Args:
        name: TFDS name, optionally with config/version (`"digits"`, `"digits:1.0.0"`).
        data_dir: TFDS data directory. `None` means TFDS's default: `$TFDS_DATA_DIR` if
            set, else `~/tensorflow_datasets`.

    Returns:
        A prepared `tfds.core.DatasetBuilder` (`builder.is_prepared()` is True).

    Raises:
        ValueError: if `name` is not a known TFDS dataset, or it is not prepared under
            `data_dir` and is not one vitx can build itself, or `data_dir` is not writable
            (or the build fails) when vitx has to build it.
    """
    disable_gcs()
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"dataset name={name!r} is invalid; pass a TFDS name such as 'digits'.")
    where = data_dir if data_dir is not None else tfds.core.constants.get_default_data_dir()
    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except tfds.core.registered.DatasetNotFoundError:
        raise ValueError(
            f"dataset {name!r} is unknown to TFDS and not prepared in data_dir={where!r}; "
            f"use one of vitx's builders {sorted(LOCAL_BUILDERS)} or prepare it first with "
            f"`tfds build {name} --data_dir={where}`."
        ) from None
    if builder.is_prepared():
        return builder
    if _base_name(name) not in LOCAL_BUILDERS:
        raise ValueError(
            f"dataset {name!r} is not prepared in data_dir={where!r}; prepare it there with "
            f"`tfds build {name} --data_dir=DATA_DIR` (manual-download datasets such as "
            f"imagenet2012 need their archives in DATA_DIR/downloads/manual), or point data_dir "
            f"at a directory that already holds it."
        )
    try:  # vitx builds it into data_dir: that must be writable
        check_writable(where, "data_dir")
    except ValueError as e:
        raise ValueError(f"dataset {name!r} is not prepared and cannot be built: {e}") from None
    config = tfds.download.DownloadConfig(try_download_gcs=False)
    try:
        builder.download_and_prepare(download_config=config)
    except Exception as e:
        # Another process sharing data_dir may have finished the same build first.
        if not tfds.builder(name, data_dir=data_dir).is_prepared():
            first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
            raise ValueError(f"dataset {name!r} could not be built in data_dir={where!r} "
                             f"({type(e).__name__}: {first}); fix data_dir or prepare the "
                             f"dataset there first") from e
    # Re-open so the builder reads its metadata from disk, like any prepared dataset.
    return tfds.builder(name, data_dir=data_dir)
