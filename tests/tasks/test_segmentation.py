"""The `segmentation` task (per-pixel softmax cross-entropy) and the dense model's decoder."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vitx.models.segmentation_head import LinearDecoder
from vitx.tasks import get_task

K = 4


def _batch(rng: np.random.Generator, b: int = 2, h: int = 4, w: int = 6) -> dict:
    return {"image": jnp.zeros((b, h, w, 1)),
            "mask": jnp.asarray(rng.integers(0, K, (b, h, w, 1)).astype(np.uint8))}


def test_loss_is_mean_pixel_cross_entropy_and_correct_is_pixel_accuracy() -> None:
    rng = np.random.default_rng(0)
    task = get_task({"type": "segmentation"}, K)
    batch = _batch(rng)
    logits = jnp.asarray(rng.normal(size=(2, 4, 6, K)).astype(np.float32))
    lg = np.asarray(logits, np.float64)
    logp = lg - np.log(np.exp(lg).sum(-1, keepdims=True))
    m = np.asarray(batch["mask"])[..., 0]
    nll = -np.take_along_axis(logp, m[..., None], -1)[..., 0]
    np.testing.assert_allclose(task.loss(logits, batch), nll.mean((1, 2)), rtol=1e-5)
    np.testing.assert_allclose(task.correct(logits, batch),
                               (lg.argmax(-1) == m).mean((1, 2)), rtol=1e-6)
    # A (B, H, W) mask gives the same; one-hot-like logits give accuracy 1.
    flat = {**batch, "mask": batch["mask"][..., 0]}
    np.testing.assert_allclose(task.loss(logits, flat), task.loss(logits, batch))
    perfect = 10.0 * jax.nn.one_hot(m, K)
    np.testing.assert_array_equal(task.correct(perfect, batch), [1.0, 1.0])
    assert task.predict(logits).shape == (2, 4, 6, K)


def test_bad_input_is_one_line_naming_key_and_fix() -> None:
    task = get_task({"type": "segmentation"}, K)
    logits = jnp.zeros((2, 4, 6, K))
    with pytest.raises(ValueError) as e:
        task.loss(logits, {"image": jnp.zeros((2, 4, 6, 1)), "label": jnp.zeros((2,))})
    msg = str(e.value)
    assert "\n" not in msg and "'mask'" in msg and "digit_scenes" in msg
    with pytest.raises(ValueError, match=r"not \(B, H, W, num_classes\)"):
        task.loss(jnp.zeros((2, K)), _batch(np.random.default_rng(0)))


def _decode(upsample: str, token_map: jax.Array, hw: tuple[int, int]) -> jax.Array:
    dec = LinearDecoder(K, upsample)
    params = dec.init(jax.random.PRNGKey(0), token_map, hw)
    return dec.apply(params, token_map, hw), (dec, params)


def test_decoder_grid_must_divide_the_image() -> None:
    with pytest.raises(ValueError, match=r"token grid 3x3 does not divide the image size "
                                         r"64x64.*model.encoder_cfg patch size"):
        _decode("bilinear", jnp.zeros((1, 3, 3, 8)), (64, 64))
    with pytest.raises(ValueError, match="upsample='nearest' is unknown"):
        _decode("nearest", jnp.zeros((1, 4, 4, 8)), (64, 64))


@pytest.mark.parametrize("upsample", ["bilinear", "subpixel"])
def test_decoder_shapes_and_subpixel_locality(upsample: str) -> None:
    tm = jax.random.normal(jax.random.PRNGKey(1), (1, 2, 3, 8))
    out, (dec, params) = _decode(upsample, tm, (8, 12))
    assert out.shape == (1, 8, 12, K)
    if upsample == "subpixel":  # token (1, 2) decodes exactly the pixels [4:8, 8:12]
        out2 = dec.apply(params, tm.at[:, 1, 2].add(1.0), (8, 12))
        changed = np.any(np.asarray(out2 != out), -1)[0]
        expected = np.zeros((8, 12), bool)
        expected[4:8, 8:12] = True
        np.testing.assert_array_equal(changed, expected)
