"""Example dicts and a runner shared by the preprocessing-op tests."""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from vitx.data.pp import get_preprocess_fn


def _example(h: int = 8, w: int = 8, c: int = 1, label: int = 3, seed: int | None = 0) -> dict:
    image = tf.constant(np.arange(h * w * c, dtype=np.uint8).reshape(h, w, c))
    ex = {"image": image, "label": tf.constant(label, tf.int64)}
    if seed is not None:
        ex["_seed"] = tf.constant([seed, 7], tf.int64)
    return ex


def _run(spec: str, ex: dict) -> dict[str, np.ndarray]:
    return {k: v.numpy() for k, v in get_preprocess_fn(spec)(ex).items()}
