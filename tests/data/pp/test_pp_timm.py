"""`vgg_value_range` and the eval pp strings `vitx info` makes from timm's `pretrained_cfg`."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf
from pp_examples import _run

from vitx.utils import timm_hub


def test_vgg_value_range_is_per_channel_mean_std() -> None:
    image = tf.constant(np.arange(2 * 2 * 3, dtype=np.uint8).reshape(2, 2, 3) * 20)
    out = _run("vgg_value_range(mean=(10, 20, 30), std=(2, 4, 5))", {"image": image})["image"]
    ref = (image.numpy().astype(np.float32) - [10, 20, 30]) / [2, 4, 5]
    np.testing.assert_allclose(out, ref, rtol=1e-6)
    with pytest.raises(ValueError, match="vgg_value_range: mean"):
        _run("vgg_value_range(mean=(1, 2), std=(1, 2, 3))", {"image": image})


@pytest.mark.parametrize("pcfg,shape", [
    ({"input_size": [3, 16, 16], "crop_pct": 0.875, "interpolation": "bicubic",
      "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}, (16, 16, 3)),
    ({"input_size": [1, 8, 8], "crop_pct": 1.0, "mean": [0.5], "std": [0.5]}, (8, 8, 1)),
])
def test_pp_from_pretrained_cfg_runs_and_normalises(pcfg: dict, shape: tuple) -> None:
    """The pp string builds, gives the input size and (x / 255 - mean) / std for a flat image."""
    image = tf.io.encode_png(tf.fill((20, 24, shape[-1]), tf.constant(128, tf.uint8)))
    out = _run(timm_hub.pp_from_pretrained_cfg(pcfg), {"image": image})["image"]
    assert out.shape == shape
    ref = (128 / 255 - np.array(pcfg["mean"])) / np.array(pcfg["std"])
    np.testing.assert_allclose(out[0, 0], ref, rtol=1e-4)
