"""Model `dense`: an image encoder with named heads (classification / detection / segmentation)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vitx.models import build_model, dense, get_model_module
from vitx.models.detection_head import box_bias

ENCODER = dict(variant="pico/4", width=16, depth=1, mlp_dim=32, num_heads=2, pool_type="gap",
               scan=False, dtype_mm="float32")
HEADS = dict(det=dict(type="detection"), seg=dict(type="segmentation"),
             digits=dict(type="classification"))


@pytest.fixture(scope="module")
def model_and_params():
    model = build_model("dense", 10, encoder="vit", encoder_cfg=ENCODER, heads=HEADS,
                        head_classes=dict(det=3, seg=5))
    x = jnp.linspace(-1, 1, 2 * 16 * 16).reshape(2, 16, 16, 1)
    params = model.init(jax.random.PRNGKey(0), x, head="det")["params"]
    return model, params, x


def test_every_head_is_built_at_init_and_has_its_shape(model_and_params):
    model, params, x = model_and_params
    assert set(params) == {"encoder", "det", "seg"}  # classification: the encoder's own head
    assert "head" in params["encoder"]
    det, aux = model.apply({"params": params}, x, head="det")
    assert det.shape == (2, 16, 4 + 3 + 1) and aux["token_map"].shape == (2, 4, 4, 16)
    assert model.apply({"params": params}, x, head="seg")[0].shape == (2, 16, 16, 5)
    assert model.apply({"params": params}, x, head="digits")[0].shape == (2, 10)
    # The default head is the first one.
    np.testing.assert_array_equal(model.apply({"params": params}, x)[0], det)


def test_detection_boxes_start_at_their_own_grid_cell(model_and_params):
    model, params, x = model_and_params
    boxes = np.asarray(model.apply({"params": params}, x, head="det")[0][0, :, :4])
    cy, cx = np.meshgrid((np.arange(4) + 0.5) / 4, (np.arange(4) + 0.5) / 4, indexing="ij")
    want = np.stack([cy.ravel(), cx.ravel(), np.full(16, 0.25), np.full(16, 0.25)], -1)
    np.testing.assert_allclose(boxes, want, atol=1e-5)
    np.testing.assert_allclose(jax.nn.sigmoid(box_bias(4, 4)), want, atol=1e-5)


def test_active_mask_trains_encoder_and_one_head(model_and_params):
    _, params, _ = model_and_params
    mask = dense.active_mask(params, head="seg")
    assert all(jax.tree.leaves(mask["encoder"])) and all(jax.tree.leaves(mask["seg"]))
    assert not any(jax.tree.leaves(mask["det"]))
    assert all(jax.tree.leaves(dense.active_mask(params)))


def test_bad_config_and_head_errors(model_and_params):
    model, params, x = model_and_params
    with pytest.raises(ValueError, match="head='nope' is not in model.heads"):
        model.apply({"params": params}, x, head="nope")
    with pytest.raises(ValueError, match=r"model.head_classes lacks \['det'\]"):
        build_model("dense", 10, encoder="vit", encoder_cfg=ENCODER, heads=HEADS,
                    head_classes=dict(seg=5))
    with pytest.raises(ValueError, match="model.heads.x.type='boxes' is unknown"):
        build_model("dense", 10, encoder="vit", encoder_cfg=ENCODER,
                    heads=dict(x=dict(type="boxes")))
    with pytest.raises(ValueError, match="does not divide the image size"):
        get_model_module("dense").check_input(
            dict(encoder="vit", encoder_cfg=dict(ENCODER, variant="pico/5"), heads=HEADS,
                 head_classes=dict(det=3, seg=5)), (16, 16, 1))


def test_flexivit_subpixel_decoder_serves_every_patch_size_with_one_set_of_weights():
    """FlexiViT's base patch is the subpixel decoder's cell: the params do not depend on the
    patch size, and at the base patch the decoder is exactly the plain (cell=None) one."""
    enc = dict(ENCODER, variant="pico/8", base_patch_size=(8, 8), posemb_grid=(2, 2))
    seg = dict(seg=dict(type="segmentation", upsample="subpixel"))
    model = build_model("dense", None, encoder="flexivit", encoder_cfg=enc, heads=seg,
                        head_classes=dict(seg=5))
    x = jnp.linspace(-1, 1, 2 * 16 * 16).reshape(2, 16, 16, 1)
    params = model.init(jax.random.PRNGKey(0), x, patch_size=(8, 8))["params"]
    assert params["seg"]["proj"]["kernel"].shape == (16, 8 * 8 * 5)
    for p in (4, 8, 16):
        logits, aux = model.apply({"params": params}, x, patch_size=(p, p))
        assert logits.shape == (2, 16, 16, 5) and aux["token_map"].shape[1:3] == (16 // p,) * 2
        assert np.isfinite(np.asarray(logits)).all()
    plain = build_model("dense", None, encoder="flexivit", encoder_cfg=enc,
                        heads=dict(seg=dict(type="segmentation", upsample="subpixel", cell=None)),
                        head_classes=dict(seg=5))
    np.testing.assert_array_equal(
        model.apply({"params": params}, x, patch_size=(8, 8))[0],
        plain.apply({"params": params}, x, patch_size=(8, 8))[0])
    # Resizing a cell of constant logits keeps them: a token's logits shrink/grow with its cell.
    dec = dense.LinearDecoder(3, "subpixel", cell=(4, 4))
    tm = jnp.ones((1, 2, 2, 8))
    v = dec.init(jax.random.PRNGKey(1), tm, (8, 8))
    v = jax.tree.map(jnp.zeros_like, v)
    v["params"]["proj"]["bias"] = jnp.tile(jnp.arange(3.0), 16)
    out = dec.apply(v, tm, (4, 4))  # 2x2 tokens, each now 2x2 pixels
    np.testing.assert_allclose(out, jnp.broadcast_to(jnp.arange(3.0), (1, 4, 4, 3)), atol=1e-6)
