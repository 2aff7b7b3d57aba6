"""FlexiViT: every patch size runs, equals plain ViT at the base size, PI-resize token identity."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vitx.models import build_model, flexi, resize, vit

K = 5  # classes
WIDTH = 32  # "pico"
TINY = dict(depth=1)  # one encoder block: faster compiles, same code paths


def random_params(model, x, seed=0, **kw):
    """Random (not init) params of `model`'s shapes: no init compile, and non-zero heads."""
    shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), x, **kw))["params"]
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda s: jnp.asarray(rng.normal(0.0, 0.3, s.shape), jnp.float32), shapes)


def names_and_shapes(params):
    return {jax.tree_util.keystr(k): tuple(v.shape)
            for k, v in jax.tree_util.tree_flatten_with_path(params)[0]}


@pytest.fixture(scope="module")
def images():
    return jax.random.normal(jax.random.PRNGKey(1), (2, 16, 16, 3))


def test_forward_every_patch_size_one_program_each(images):
    m = flexi.Model(K, variant="pico/4", **TINY, base_patch_size=(8, 8), posemb_grid=(4, 4))
    params = random_params(m, images)
    apply = jax.jit(m.apply, static_argnames=("patch_size", "train"))
    logits = {}
    for _ in range(2):  # the second round must reuse the compiled programs
        for p in (2, 4, 8):
            logits[p], aux = apply({"params": params}, images, patch_size=p)
            assert logits[p].shape == (2, K)
            assert aux["encoded"].shape == (2, (16 // p) ** 2 + 1, WIDTH)
            assert np.all(np.isfinite(logits[p]))
    assert apply._cache_size() == 3
    assert not np.allclose(logits[2], logits[8])
    # Default (model.patch_size = 4) and rectangular sizes, shapes only.
    aux = jax.eval_shape(lambda: m.apply({"params": params}, images))[1]
    assert aux["encoded"].shape == (2, 16 + 1, WIDTH)
    aux = jax.eval_shape(lambda: m.apply({"params": params}, images, patch_size=(2, 4)))[1]
    assert aux["encoded"].shape == (2, 8 * 4 + 1, WIDTH)


@pytest.mark.parametrize("p", [8, 4])
def test_equals_plain_vit_with_baked_params(images, p):
    """p == base and posemb grid == token grid: FlexiViT is exactly plain ViT with the same
    params. p != base: it equals plain ViT/p with the kernel PI-resized and posemb resized."""
    flex = flexi.Model(K, variant="pico/8", **TINY, base_patch_size=8, posemb_grid=2,
                       head_zeroinit=False)
    plain = vit.Model(K, variant=f"pico/{p}", **TINY, head_zeroinit=False)
    params = random_params(flex, images)
    baked = jax.tree.map(lambda a: a, params)
    baked["embedding"]["kernel"] = resize.pi_resize_patch_kernel(
        params["embedding"]["kernel"], p)
    baked["pos_embedding"] = resize.resize_posemb(params["pos_embedding"], 2, 16 // p)
    plain_shapes = jax.eval_shape(lambda: plain.init(jax.random.PRNGKey(0), images))["params"]
    assert names_and_shapes(baked) == names_and_shapes(plain_shapes)

    out_f, aux_f = jax.jit(functools.partial(flex.apply, patch_size=p))({"params": params},
                                                                        images)
    out_p, aux_p = jax.jit(plain.apply)({"params": baked}, images)
    assert np.abs(out_p).max() > 1e-2  # the head is not zero: the comparison is not vacuous
    atol = 1e-6 if p == 8 else 1e-4
    np.testing.assert_allclose(out_f, out_p, atol=atol, rtol=0)
    np.testing.assert_allclose(aux_f["encoded"], aux_p["encoded"], atol=atol, rtol=0)


def test_pi_resize_token_equivalence():
    """FlexiViT Sec. 3.4: token(resize(x), PI-resize(w)) == token(x, w) for upsampling."""
    # depth=0: only the embedding is looked at; the encoder would only slow the compile.
    m = flexi.Model(K, variant="pico/8", depth=0, base_patch_size=8, posemb_grid=2)
    x8 = jax.random.normal(jax.random.PRNGKey(2), (3, 8, 8, 3))
    x16 = jax.image.resize(x8, (3, 16, 16, 3), "bilinear")
    params = random_params(m, x8)

    @functools.partial(jax.jit, static_argnums=2)
    def tokens(params, x, p):
        _, state = m.apply({"params": params}, x, patch_size=p,
                           capture_intermediates=lambda mdl, _: isinstance(
                               mdl, flexi.FlexiPatchEmbed))
        return state["intermediates"]["embedding"]["__call__"][0]

    t8, t16 = tokens(params, x8, 8), tokens(params, x16, 16)
    assert t8.shape == t16.shape == (3, 1, 1, WIDTH)
    np.testing.assert_allclose(t16, t8, atol=1e-4, rtol=0)
    # The identity is a property of the PI-resize: a plain bilinear kernel resize breaks it.
    k, b = params["embedding"]["kernel"], params["embedding"]["bias"]
    naive = jax.image.resize(k, (16, 16, 3, WIDTH), "bilinear")
    t_naive = jnp.einsum("nhwc,hwcd->nd", x16, naive) + b
    assert not np.allclose(t_naive, t8[:, 0, 0], atol=1e-2)


@pytest.mark.parametrize("p", [4, 2])
def test_downsampled_embedding_is_dense_on_patches_and_trains_base_kernel(p):
    embed = flexi.FlexiPatchEmbed(WIDTH, base_patch_size=(8, 8))
    x = jax.random.normal(jax.random.PRNGKey(3), (2, 8, 8, 3))
    params = random_params(embed, x, patch_size=(p, p))
    assert params["kernel"].shape == (8, 8, 3, WIDTH)
    apply = jax.jit(embed.apply, static_argnums=2)
    y = apply({"params": params}, x, (p, p))
    g = 8 // p
    k = resize.pi_resize_patch_kernel(params["kernel"], p)
    patches = x.reshape(2, g, p, g, p, 3).transpose(0, 1, 3, 2, 4, 5).reshape(2, g, g, -1)
    dense = patches @ k.reshape(p * p * 3, WIDTH) + params["bias"]
    assert y.shape == (2, g, g, WIDTH)
    np.testing.assert_allclose(y, dense, atol=1e-4, rtol=1e-4)
    grads = jax.jit(jax.grad(lambda v: jnp.sum(apply({"params": v}, x, (p, p)) ** 2)))(params)
    assert grads["kernel"].shape == (8, 8, 3, WIDTH)
    assert np.all(np.isfinite(grads["kernel"])) and np.abs(grads["kernel"]).max() > 0


def test_patch_size_errors(images):
    m = flexi.Model(K, variant="pico/4", **TINY, base_patch_size=8, posemb_grid=4)
    params = random_params(m, images)
    with pytest.raises(ValueError, match=r"patch_size=\(5, 5\) does not divide the image size "
                                         r"16x16"):
        jax.eval_shape(lambda: m.apply({"params": params}, images, patch_size=5))
    for bad in (0, -4, (4,), "4", 4.0):
        with pytest.raises(ValueError, match="is not a size"):
            jax.eval_shape(lambda bad=bad: m.apply({"params": params}, images, patch_size=bad))
    with pytest.raises(ValueError, match="static Python int"):  # a traced size
        jax.eval_shape(lambda p: m.apply({"params": params}, images, patch_size=p), 4)
    bad_method = flexi.Model(K, variant="pico/8", **TINY, base_patch_size=8, posemb_grid=2,
                             resize_method="area")
    with pytest.raises(ValueError, match="model.resize_method='area' is unknown"):
        jax.eval_shape(lambda: bad_method.init(jax.random.PRNGKey(0), images))


def test_param_tree_matches_plain_vit(images):
    flex = flexi.Model(K, variant="pico/4", **TINY, base_patch_size=(8, 8), posemb_grid=(4, 4))
    plain = vit.Model(K, variant="pico/4", **TINY)
    pf = names_and_shapes(jax.eval_shape(lambda: flex.init(jax.random.PRNGKey(0), images)))
    pp = names_and_shapes(jax.eval_shape(lambda: plain.init(jax.random.PRNGKey(0), images)))
    assert pf.keys() == pp.keys()
    kernel = "['params']['embedding']['kernel']"
    assert pf.pop(kernel) == (8, 8, 3, WIDTH)  # the base size, not the default patch size 4
    assert pp.pop(kernel) == (4, 4, 3, WIDTH)
    assert pf == pp  # incl. pos_embedding (1, 16, D) for the 4x4 posemb grid
    # Defaults: 32x32 kernel, 7x7 posemb grid, whatever the image and patch size.
    d = flexi.Model(K, variant="pico/4")
    shapes = jax.eval_shape(lambda: d.init(jax.random.PRNGKey(0), images))["params"]
    assert shapes["embedding"]["kernel"].shape == (32, 32, 3, WIDTH)
    assert shapes["pos_embedding"].shape == (1, 49, WIDTH)
    assert build_model("flexivit", K, variant="pico/4").base_patch_size == (32, 32)


def test_sincos_posemb_and_bf16(images):
    m = flexi.Model(K, variant="pico/4", **TINY, base_patch_size=8, posemb="sincos2d",
                    dtype_mm="bfloat16")
    params = random_params(m, images)
    assert "pos_embedding" not in params
    for p in (2, 8):
        aux = jax.eval_shape(lambda p=p: m.apply({"params": params}, images, patch_size=p))[1]
        assert aux["encoded"].shape == (2, (16 // p) ** 2 + 1, WIDTH)
    _, state = jax.eval_shape(lambda: m.apply({"params": params}, images, patch_size=4,
                                              capture_intermediates=True))
    emb = state["intermediates"]["embedding"]["__call__"][0]
    assert emb.dtype == jnp.bfloat16 and emb.shape == (2, 4, 4, WIDTH)
