"""Preprocessing ops addressed by strings, big_vision style (`"decode|resize(32)|onehot(10)"`).

`registry` holds the op registry, the spec parser (`get_preprocess_fn`), per-op seeding
(`SEED_KEY`) and the in-key/out-key mechanism (`register_key_op`, `key_op`); the ops live in
`general` (key and label ops), `image`, `dense` (`resize_mask`), `detection` (`pad_objects`),
`augment` (train-time augmentation: `inception_crop`, `randaug`, `random_erasing`), `video` and
`audio`. Importing this package registers them all.
"""

from __future__ import annotations

# Imported for their side effect: each module registers its ops.
from vitx.data.pp import audio, augment, dense, detection, general, image, video  # noqa: F401
from vitx.data.pp.registry import (
    SEED_KEY,
    Example,
    Op,
    TensorFn,
    check_key_names,
    example_seed,
    get_key,
    get_preprocess_fn,
    key_op,
    register,
    register_key_op,
    registered_ops,
)

__all__ = [
    "SEED_KEY",
    "Example",
    "Op",
    "TensorFn",
    "check_key_names",
    "example_seed",
    "get_key",
    "get_preprocess_fn",
    "key_op",
    "register",
    "register_key_op",
    "registered_ops",
]
