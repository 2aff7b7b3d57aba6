"""The fast paths compute what the plain ones do: patch embedding as a matmul vs the strided
conv, and each attention implementation vs flax's einsum attention (values and gradients)."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vitx.models import layers, polyvit, vit
from vitx.utils import npz


@pytest.mark.parametrize("shape,patch", [((2, 8, 12, 3), (4, 6)), ((2, 4, 8, 8, 1), (2, 4, 4))])
def test_patchify_matmul_equals_conv_values_and_grads(shape, patch):
    x = jax.random.normal(jax.random.PRNGKey(0), shape)
    kernel = jax.random.normal(jax.random.PRNGKey(1), (*patch, shape[-1], 5))
    bias = jax.random.normal(jax.random.PRNGKey(2), (5,))
    f = lambda impl: lambda x, k, b: layers.patchify(x, k, b, impl)
    y_mm, y_conv = f("matmul")(x, kernel, bias), f("conv")(x, kernel, bias)
    grid = tuple(s // p for s, p in zip(shape[1:-1], patch, strict=True))
    assert y_mm.shape == (shape[0], *grid, 5)
    np.testing.assert_allclose(y_mm, y_conv, rtol=1e-5, atol=1e-5)
    loss = lambda impl: lambda *a: jnp.sum(jnp.sin(f(impl)(*a)))
    g_mm = jax.grad(loss("matmul"), argnums=(0, 1, 2))(x, kernel, bias)
    g_conv = jax.grad(loss("conv"), argnums=(0, 1, 2))(x, kernel, bias)
    for a, b in zip(g_mm, g_conv, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


def test_patch_embed_has_nn_conv_params_and_init():
    x = jnp.ones((1, 8, 8, 3))
    conv = nn.Conv(16, (4, 4), strides=(4, 4), padding="VALID")
    ours = layers.PatchEmbed(16, (4, 4))
    p_conv = conv.init(jax.random.PRNGKey(3), x)
    p_ours = ours.init(jax.random.PRNGKey(3), x)
    assert jax.tree.structure(p_conv) == jax.tree.structure(p_ours)
    for a, b in zip(jax.tree.leaves(p_conv), jax.tree.leaves(p_ours), strict=True):
        np.testing.assert_array_equal(a, b)  # same init, bit for bit
    np.testing.assert_allclose(conv.apply(p_conv, x), ours.apply(p_ours, x), rtol=1e-5, atol=1e-5)


def test_patch_embed_bad_impl_is_a_clear_error():
    with pytest.raises(ValueError, match="model.patch_embed='fft' is unknown"):
        layers.PatchEmbed(4, (2, 2), impl="fft").init(jax.random.PRNGKey(0), jnp.ones((1, 4, 4, 1)))
    with pytest.raises(ValueError, match="model.attention_impl='flash2' is unknown"):
        layers.attention_fn("flash2")
    with pytest.raises(ValueError, match="model.patch_embed"):
        vit.check_input({"variant": "pico/4", "patch_embed": "fft"}, (8, 8, 3))


@pytest.mark.parametrize("impl", ["bhnd", "jax", "auto"])
def test_attention_impls_match_flax_einsum(impl):
    q, k, v = (jax.random.normal(jax.random.PRNGKey(i), (2, 5, 3, 8)) for i in range(3))
    mask = jnp.tril(jnp.ones((1, 1, 5, 5), bool))
    for m in (None, mask):
        ref = nn.dot_product_attention(q, k, v, mask=m)
        out = layers.attention_fn(impl)(q, k, v, mask=m)
        np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)
    g = lambda fn: jax.grad(lambda *a: jnp.sum(fn(*a) ** 2), argnums=(0, 1, 2))(q, k, v)
    for a, b in zip(g(layers.attention_fn(impl)), g(nn.dot_product_attention), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def _vit(**kw):
    return vit.Model(10, variant="pico/4", pool_type="map", **kw)


def test_vit_fast_paths_give_the_plain_logits_and_grads():
    x = jax.random.uniform(jax.random.PRNGKey(0), (2, 16, 16, 3), minval=-1, maxval=1)
    fast, plain = _vit(head_zeroinit=False), _vit(head_zeroinit=False, patch_embed="conv",
                                                  attention_impl="einsum")
    params = fast.init(jax.random.PRNGKey(1), x)
    assert jax.tree.structure(params) == jax.tree.structure(plain.init(jax.random.PRNGKey(1), x))
    loss = lambda m: lambda p: jnp.sum(m.apply(p, x)[0] ** 2)
    np.testing.assert_allclose(fast.apply(params, x)[0], plain.apply(params, x)[0], rtol=1e-4,
                               atol=1e-5)
    g_fast, g_plain = jax.grad(loss(fast))(params), jax.grad(loss(plain))(params)
    for a, b in zip(jax.tree.leaves(g_fast), jax.tree.leaves(g_plain), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-5)


def test_vit_npz_round_trip_unchanged_by_fast_paths(tmp_path):
    x = jnp.ones((1, 16, 16, 3))
    tok = dict(pool_type="tok", head_zeroinit=False)
    params = vit.Model(10, variant="pico/4", **tok).init(jax.random.PRNGKey(0), x)["params"]
    path = str(tmp_path / "m.npz")
    npz.save_npz(path, params, layout="vit_jax")
    back = npz.load_npz(path)
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(back), strict=True):
        np.testing.assert_array_equal(a, b)
    plain = vit.Model(10, variant="pico/4", patch_embed="conv", attention_impl="einsum", **tok)
    np.testing.assert_array_equal(plain.apply({"params": back}, x)[0],
                                  plain.apply({"params": params}, x)[0])


def test_polyvit_tubelet_matmul_equals_conv():
    cfg = dict(variant="pico", modalities={"video": {"tubelet": (2, 4, 4),
                                                     "input_shape": (4, 8, 8, 1)}},
               heads={"t": {"modality": "video", "num_classes": 3}}, head_zeroinit=False)
    x = jax.random.normal(jax.random.PRNGKey(0), (2, 4, 8, 8, 1))
    fast = polyvit.Model(3, **cfg)
    plain = polyvit.Model(3, **cfg, patch_embed="conv", attention_impl="einsum")
    params = fast.init(jax.random.PRNGKey(1), x)
    np.testing.assert_allclose(fast.apply(params, x)[0], plain.apply(params, x)[0], rtol=1e-4,
                               atol=1e-5)
