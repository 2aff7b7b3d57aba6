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


# Stochastic depth (`drop_path`) and attention dropout in the shared encoder (issue 21).


def _encoder(**kw):
    return layers.Encoder(depth=4, mlp_dim=16, num_heads=2, **kw)


def test_drop_path_rates_are_linear_in_depth():
    assert layers.drop_path_rates(0.3, 4) == pytest.approx((0.0, 0.1, 0.2, 0.3))
    assert layers.drop_path_rates(0.2, 1) == (0.0,)
    assert layers.drop_path_rates((0.1, 0.2), 2) == (0.1, 0.2)
    with pytest.raises(ValueError, match="model.drop_path=1.0 must be in"):
        layers.drop_path_rates(1.0, 3)
    with pytest.raises(ValueError, match="2 per-block rates for 3 blocks"):
        layers.drop_path_rates((0.1, 0.2), 3)


@pytest.mark.parametrize("scan", [False, True])
def test_regularisation_off_is_bit_identical_and_eval_is_identity(scan):
    x = jax.random.normal(jax.random.PRNGKey(0), (3, 5, 8))
    plain = _encoder(scan=scan, dropout=0.1)
    params = plain.init(jax.random.PRNGKey(1), x)
    rngs = {"dropout": jax.random.PRNGKey(2)}
    zero = _encoder(scan=scan, dropout=0.1, drop_path=0.0, attention_dropout=0.0)
    on = _encoder(scan=scan, dropout=0.1, drop_path=0.5, attention_dropout=0.3)
    for m in (zero, on):  # same params, bit for bit
        p = m.init(jax.random.PRNGKey(1), x)
        assert jax.tree.structure(p) == jax.tree.structure(params)
        for a, b in zip(jax.tree.leaves(p), jax.tree.leaves(params), strict=True):
            np.testing.assert_array_equal(a, b)
    ref_train = plain.apply(params, x, train=True, rngs=rngs)
    np.testing.assert_array_equal(zero.apply(params, x, train=True, rngs=rngs), ref_train)
    ref_eval = plain.apply(params, x)
    np.testing.assert_array_equal(zero.apply(params, x), ref_eval)
    np.testing.assert_array_equal(on.apply(params, x), ref_eval)  # eval: both off
    assert not np.array_equal(on.apply(params, x, train=True, rngs=rngs), ref_train)
    att = _encoder(scan=scan, dropout=0.1, attention_dropout=0.3)  # attention dropout alone
    np.testing.assert_array_equal(att.apply(params, x), ref_eval)
    assert not np.allclose(att.apply(params, x, train=True, rngs=rngs), ref_train, atol=1e-3)


def test_drop_path_keeps_about_one_minus_rate_of_branches():
    rate, n = 0.3, 4000
    x = jax.random.normal(jax.random.PRNGKey(0), (n, 2, 8))
    block = layers.Encoder1DBlock(mlp_dim=16, num_heads=2, drop_path=rate)
    params = block.init(jax.random.PRNGKey(1), x)
    # Output projections zeroed: the attention branch adds exactly 1, the MLP branch 100.
    p = params["params"]
    p["MultiHeadDotProductAttention_0"]["out"] = {
        "kernel": jnp.zeros_like(p["MultiHeadDotProductAttention_0"]["out"]["kernel"]),
        "bias": jnp.full((8,), 1.0)}
    p["MlpBlock_0"]["Dense_1"] = {"kernel": jnp.zeros_like(p["MlpBlock_0"]["Dense_1"]["kernel"]),
                                  "bias": jnp.full((8,), 100.0)}
    np.testing.assert_allclose(block.apply(params, x)[0], x + 101.0, rtol=1e-6)  # eval: no drop
    y, _ = block.apply(params, x, False, rngs={"dropout": jax.random.PRNGKey(3)})
    d = np.asarray(y - x)
    assert np.allclose(d, d[:, :1, :1], atol=1e-3)  # per example: all or nothing of a branch
    d = d[:, 0, 0]
    kept_attn = np.isclose(d % 100, 1 / (1 - rate), atol=1e-3) | np.isclose(d, 101 / (1 - rate),
                                                                           atol=1e-3)
    kept_mlp = d > 50
    scale = {0.0, 1 / (1 - rate), 100 / (1 - rate), 101 / (1 - rate)}  # kept ones scaled
    assert all(np.isclose(v, list(scale), atol=1e-3).any() for v in d)
    tol = 4 * np.sqrt(rate * (1 - rate) / n)  # 4 sigma of the binomial mean
    assert abs(kept_attn.mean() - (1 - rate)) < tol and abs(kept_mlp.mean() - (1 - rate)) < tol
    assert abs((kept_attn & kept_mlp).mean() - (1 - rate) ** 2) < tol  # independent branches


def test_scan_and_unscanned_encoders_use_the_same_per_layer_rates():
    x = jnp.ones((2, 3, 8))
    rngs = {"dropout": jax.random.PRNGKey(0)}
    seen = {}
    for scan in (False, True):
        m = _encoder(scan=scan, drop_path=0.3, remat_policy="nothing_saveable")
        params = m.init(jax.random.PRNGKey(1), x)
        _, state = m.apply(params, x, train=True, rngs=rngs, mutable=["intermediates"])
        inter = state["intermediates"]
        if scan:
            seen[scan] = np.asarray(inter["encoderblock"]["drop_path_rate"][0])
        else:
            seen[scan] = np.array([inter[f"encoderblock_{i}"]["drop_path_rate"][0]
                                   for i in range(4)])
    np.testing.assert_allclose(seen[False], [0.0, 0.1, 0.2, 0.3], rtol=1e-6)
    np.testing.assert_allclose(seen[True], seen[False], rtol=1e-6)


def test_vit_and_polyvit_thread_the_fields():
    x = jnp.ones((2, 8, 8, 3))
    m = vit.Model(4, variant="pico/4", drop_path=0.2, attention_dropout=0.1, scan=True)
    _, state = m.apply(m.init(jax.random.PRNGKey(0), x), x, train=True, mutable=["intermediates"],
                       rngs={"dropout": jax.random.PRNGKey(1)})
    rates = state["intermediates"]["Transformer"]["encoderblock"]["drop_path_rate"][0]
    np.testing.assert_allclose(rates, [0.0, 0.2], rtol=1e-6)  # pico: depth 2
    cfg = vit.ViTCfg.from_config({"variant": "pico/4", "drop_path": 0.1})
    assert cfg.drop_path == 0.1
    with pytest.raises(ValueError, match=r"model.drop_path=1.5 must be a rate in \[0, 1\)"):
        vit.ViTCfg.from_config({"variant": "pico/4", "drop_path": 1.5})
    with pytest.raises(ValueError, match="model.attention_dropout=-0.1 must be a rate"):
        vit.check_input({"variant": "pico/4", "attention_dropout": -0.1}, (8, 8, 3))
    mods = {"image": {"patch_size": (4, 4), "input_shape": (8, 8, 3)}}
    heads = {"t": {"modality": "image", "num_classes": 3}}
    pv = polyvit.Model(3, variant="pico", modalities=mods, heads=heads, num_modality_layers=1,
                       drop_path=0.4, attention_dropout=0.1)
    assert (pv.drop_path, pv.attention_dropout) == (0.4, 0.1)
    params = pv.init(jax.random.PRNGKey(0), x)
    _, state = pv.apply(params, x, train=True, rngs={"dropout": jax.random.PRNGKey(1)},
                        mutable=["intermediates"])
    inter = state["intermediates"]
    rates = [inter["modality_layers_image"]["encoderblock_0"]["drop_path_rate"][0],
             inter["Transformer"]["encoderblock_0"]["drop_path_rate"][0]]
    np.testing.assert_allclose(rates, [0.0, 0.4], rtol=1e-6)  # linear over all depth-2 blocks
    with pytest.raises(ValueError, match="model.drop_path=2 must be a rate"):
        polyvit.Model(3, variant="pico", modalities=mods, heads=heads, drop_path=2)
