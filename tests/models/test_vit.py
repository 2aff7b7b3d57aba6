"""ViT: shapes, parameter counts per variant, pooling types, options."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vitx.models import build_model, get_model_module, vit


def n_params(model, res, channels=3, **kw):
    shapes = jax.eval_shape(
        lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, res, res, channels)), **kw))
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(shapes))


@pytest.mark.parametrize("variant,expected", [
    # Published counts (vit_jax layout, 1000 classes, 224 px): B/16 86,567,656 and L/16
    # 304,326,632. vitx stores no posemb slot for the cls token (big_vision layout), so it
    # has exactly `width` fewer parameters.
    ("B/16", 86_567_656 - 768),
    ("L/16", 304_326_632 - 1024),
])
def test_published_param_counts(variant, expected):
    assert n_params(vit.Model(1000, variant=variant), 224) == expected


@pytest.mark.parametrize("variant", ["pico/4", "nano/8", "mu/4", "Ti/16", "S/16", "B/32"])
def test_variant_shapes(variant):
    cfg = vit.decode_variant(variant)
    m = vit.Model(7, variant=variant)
    res = 2 * cfg["patch_size"][0]
    logits, aux = jax.eval_shape(
        lambda: m.init_with_output(jax.random.PRNGKey(0), jnp.zeros((3, res, res, 3)))[0])
    assert logits.shape == (3, 7)
    assert aux["encoded"].shape == (3, 4 + 1, cfg["width"])  # 2x2 grid + cls
    assert aux["pre_logits"].shape == (3, cfg["width"])


def test_decode_variant_and_errors():
    assert vit.decode_variant("S/16") == dict(width=384, depth=12, mlp_dim=1536, num_heads=6,
                                              patch_size=(16, 16))
    assert vit.decode_variant("B/16x8")["patch_size"] == (16, 8)
    with pytest.raises(ValueError, match="model.variant='Q/16'"):
        vit.decode_variant("Q/16")


@pytest.mark.parametrize("pool_type,has", [("tok", "cls"), ("gap", None), ("map", "MAPHead_0")])
def test_pool_types(pool_type, has):
    m = vit.Model(5, variant="pico/4", pool_type=pool_type)
    x = jax.random.normal(jax.random.PRNGKey(1), (2, 16, 16, 3))
    params = m.init(jax.random.PRNGKey(0), x)["params"]
    logits, aux = m.apply({"params": params}, x)
    assert logits.shape == (2, 5)
    n_tok = 16 + (pool_type == "tok")
    assert aux["encoded"].shape == (2, n_tok, 32)
    if has:
        assert has in params
    assert ("cls" in params) == (pool_type == "tok")
    if pool_type == "gap":
        np.testing.assert_allclose(aux["pre_logits"], aux["encoded"].mean(1), atol=1e-6)
    if pool_type == "tok":
        np.testing.assert_allclose(aux["pre_logits"], aux["encoded"][:, 0], atol=1e-6)


def test_head_is_zero_initialised_and_logits_zero():
    m = vit.Model(4, variant="pico/4")
    x = jax.random.normal(jax.random.PRNGKey(1), (2, 8, 8, 3))
    params = m.init(jax.random.PRNGKey(0), x)["params"]
    assert not np.any(params["head"]["kernel"]) and not np.any(params["head"]["bias"])
    assert not np.any(m.apply({"params": params}, x)[0])


def test_patch_embedding_equals_dense_on_flattened_patches():
    m = vit.Model(3, variant="pico/4", head_zeroinit=False)
    x = jax.random.normal(jax.random.PRNGKey(1), (2, 8, 8, 3))
    params = m.init(jax.random.PRNGKey(0), x)["params"]
    _, state = m.apply({"params": params}, x, capture_intermediates=True)
    emb = state["intermediates"]["embedding"]["__call__"][0]
    k, b = params["embedding"]["kernel"], params["embedding"]["bias"]
    patches = x.reshape(2, 2, 4, 2, 4, 3).transpose(0, 1, 3, 2, 4, 5).reshape(2, 2, 2, 48)
    dense = patches @ k.reshape(48, -1) + b
    np.testing.assert_allclose(emb, dense, atol=1e-5)


def test_scan_remat_matches_unrolled():
    x = jax.random.normal(jax.random.PRNGKey(1), (2, 8, 8, 3))
    plain = vit.Model(3, variant="pico/4", head_zeroinit=False)
    scanned = vit.Model(3, variant="pico/4", head_zeroinit=False, scan=True,
                        remat_policy="nothing_saveable")
    p = plain.init(jax.random.PRNGKey(0), x)["params"]
    blocks = [p["Transformer"].pop(f"encoderblock_{i}") for i in range(2)]
    p["Transformer"]["encoderblock"] = jax.tree.map(lambda *a: jnp.stack(a), *blocks)
    ps = jax.tree.map(jnp.shape, scanned.init(jax.random.PRNGKey(0), x)["params"])
    assert jax.tree.map(jnp.shape, p) == ps
    p_plain = plain.init(jax.random.PRNGKey(0), x)["params"]
    np.testing.assert_allclose(plain.apply({"params": p_plain}, x)[0],
                               scanned.apply({"params": p}, x)[0], atol=1e-5)


def test_sincos_posemb_has_no_params_and_bf16_runs():
    m = vit.Model(3, variant="pico/4", posemb="sincos2d", dtype_mm="bfloat16")
    x = jnp.ones((1, 8, 8, 3))
    params = m.init(jax.random.PRNGKey(0), x)["params"]
    assert "pos_embedding" not in params
    assert params["embedding"]["kernel"].dtype == jnp.float32  # params stay f32
    assert m.apply({"params": params}, x)[0].shape == (1, 3)


def test_dropout_changes_output_only_in_train():
    m = vit.Model(3, variant="pico/4", dropout=0.5, head_zeroinit=False)
    x = jnp.ones((2, 8, 8, 3))
    params = m.init(jax.random.PRNGKey(0), x)["params"]
    a = m.apply({"params": params}, x)[0]
    b = m.apply({"params": params}, x)[0]
    c = m.apply({"params": params}, x, train=True, rngs={"dropout": jax.random.PRNGKey(2)})[0]
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)


def test_patch_size_must_divide_image():
    m = vit.Model(3, variant="pico/4")
    with pytest.raises(ValueError, match="does not divide the image size 10x10"):
        m.init(jax.random.PRNGKey(0), jnp.ones((1, 10, 10, 3)))


def test_registry():
    assert get_model_module("vit") is vit
    assert build_model("vit", 3, variant="pico/4").num_classes == 3
    with pytest.raises(ValueError, match="model_name='nope' does not exist"):
        get_model_module("nope")
