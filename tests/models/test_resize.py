"""Posemb resize (ViT Sec. 3.2) and PI-resize of the patch kernel (FlexiViT Sec. 3.4)."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vitx.models import resize

RNG = np.random.default_rng(0)


# A jitted `jax.image.resize`: the oracle, compiled once per shape (eager is ~40x slower).
_resize = jax.jit(jax.image.resize, static_argnames=("shape", "method", "antialias"))


# ------------------------------------------------------------------------------------------------
# Position-embedding resize.


def test_resize_posemb_identity_returns_input():
    pe = jnp.asarray(RNG.standard_normal((1, 1 + 12, 8)), jnp.float32)
    assert resize.resize_posemb(pe, (3, 4), (3, 4), num_prefix_tokens=1) is pe


@pytest.mark.parametrize("old,new,antialias", [((4, 4), (8, 8), True), ((3, 5), (7, 9), True),
                                               ((5, 4), (11, 6), False), ((8, 8), (3, 5), False)])
def test_resize_posemb_reproduces_linear_ramp(old, new, antialias):
    # f(u, v) = a*u + b*v + c at normalised pixel centres u = (i + 0.5) / h is reproduced exactly
    # by bilinear interpolation wherever the output centre lies inside the input's centre range.
    a, b, c = np.array([1.5, -0.7]), np.array([-2.0, 0.3]), np.array([0.25, 1.0])

    def ramp(h, w):
        u = (np.arange(h) + 0.5) / h
        v = (np.arange(w) + 0.5) / w
        return a * u[:, None, None] + b * v[None, :, None] + c  # (h, w, 2)

    pe = jnp.asarray(ramp(*old).reshape(1, -1, 2), jnp.float32)
    out = np.asarray(resize.resize_posemb(pe, old, new, antialias=antialias)).reshape(*new, 2)
    want = ramp(*new)
    u = (np.arange(new[0]) + 0.5) / new[0]
    v = (np.arange(new[1]) + 0.5) / new[1]
    inside_u = (u >= 0.5 / old[0] - 1e-9) & (u <= 1 - 0.5 / old[0] + 1e-9)
    inside_v = (v >= 0.5 / old[1] - 1e-9) & (v <= 1 - 0.5 / old[1] + 1e-9)
    mask = inside_u[:, None] & inside_v[None, :]
    assert mask.sum() >= 4
    np.testing.assert_allclose(out[mask], want[mask], atol=1e-5)


def test_resize_posemb_rectangular_keeps_prefix_bit_identical():
    pe = jnp.asarray(RNG.standard_normal((1, 1 + 3 * 5, 6)), jnp.float32)
    out = resize.resize_posemb(pe, (3, 5), (6, 4), num_prefix_tokens=1)
    assert out.shape == (1, 1 + 24, 6) and out.dtype == pe.dtype
    np.testing.assert_array_equal(np.asarray(out[:, :1]), np.asarray(pe[:, :1]))
    # The grid part is the 2-D image resize of the (3, 5) grid.
    want = _resize(pe[:, 1:].reshape(1, 3, 5, 6), (1, 6, 4, 6), "linear")
    np.testing.assert_allclose(np.asarray(out[:, 1:]), np.asarray(want).reshape(1, 24, 6),
                               atol=1e-6)


def test_resize_posemb_methods_jit_and_errors():
    pe = jnp.asarray(RNG.standard_normal((1, 16, 4)), jnp.float32)
    for method in ("bicubic", "nearest"):
        out = resize.resize_posemb(pe, (4, 4), (6, 6), method=method)
        assert out.shape == (1, 36, 4) and np.all(np.isfinite(np.asarray(out)))
    jitted = jax.jit(functools.partial(resize.resize_posemb, old_grid=(4, 4), new_grid=(2, 3)))
    np.testing.assert_allclose(np.asarray(jitted(pe)),
                               np.asarray(resize.resize_posemb(pe, (4, 4), (2, 3))), atol=1e-6)
    bf = resize.resize_posemb(pe.astype(jnp.bfloat16), (4, 4), (6, 6))
    assert bf.dtype == jnp.bfloat16
    with pytest.raises(ValueError, match="lanczos3"):
        resize.resize_posemb(pe, (4, 4), (6, 6), method="lanczos3")
    with pytest.raises(ValueError, match="num_prefix_tokens=1"):
        resize.resize_posemb(pe, (4, 4), (6, 6), num_prefix_tokens=1)
    with pytest.raises(ValueError, match="new_grid"):
        resize.resize_posemb(pe, (4, 4), (0, 6))


def test_infer_grid():
    assert resize.infer_grid(196) == (14, 14)
    for bad in (0, 12, -4):
        with pytest.raises(ValueError, match="pass the grid"):
            resize.infer_grid(bad)


# ------------------------------------------------------------------------------------------------
# PI-resize.


@pytest.mark.parametrize("old,new,method,antialias", [
    ((4, 4), (6, 6), "bilinear", False), ((5, 3), (2, 7), "bilinear", True),
    ((8, 8), (3, 3), "bilinear", False), ((4, 5), (7, 3), "bicubic", False),
    ((3, 3), (7, 5), "nearest", False)])
def test_resize_matrix_matches_jax_image_resize(old, new, method, antialias):
    b = resize.resize_matrix(old, new, method, antialias=antialias)
    assert b.shape == (new[0] * new[1], old[0] * old[1])
    x = RNG.standard_normal((5, *old)).astype(np.float32)
    want = _resize(x, (5, *new), resize.RESIZE_METHODS[method], antialias=antialias)
    np.testing.assert_allclose(x.reshape(5, -1) @ b.T, np.asarray(want).reshape(5, -1),
                               atol=1e-5)


def _tokens(x, w):
    """x (N, P, P, C), w (P, P, C, D) -> (N, D), as the patch-embedding conv computes them."""
    return np.einsum("nhwc,hwcd->nd", np.asarray(x, np.float64), np.asarray(w, np.float64))


@pytest.mark.parametrize("old,new", [((8, 8), (16, 16)), ((4, 4), (6, 6)), ((3, 4), (6, 5))])
def test_pi_resize_upsampling_preserves_tokens(old, new):
    w = jnp.asarray(RNG.standard_normal((*old, 3, 5)), jnp.float32)
    x = jnp.asarray(RNG.standard_normal((4, *old, 3)), jnp.float32)
    x_up = _resize(x, (4, *new, 3), "linear", antialias=False)
    w_hat = resize.pi_resize_patch_kernel(w, new)
    assert w_hat.shape == (*new, 3, 5) and w_hat.dtype == w.dtype
    err = np.abs(_tokens(x, w) - _tokens(x_up, w_hat))
    assert err.max() < 1e-4, err.max()
    # A naive bilinear resize of the kernel does not preserve the tokens (the test can fail).
    w_naive = _resize(w, (*new, 3, 5), "linear")
    assert np.abs(_tokens(x, w) - _tokens(x_up, w_naive)).max() > 0.1


def test_pi_resize_downsampling_is_least_squares():
    old, new = (16, 16), (8, 8)
    w = jnp.asarray(RNG.standard_normal((*old, 2, 3)), jnp.float32)
    w_hat = np.asarray(resize.pi_resize_patch_kernel(w, new), np.float64)
    bt = resize.resize_matrix(old, new).T  # (256, 64)
    w_flat = np.asarray(w, np.float64).reshape(256, 6)
    lstsq = np.linalg.lstsq(bt, w_flat, rcond=None)[0]
    np.testing.assert_allclose(w_hat.reshape(64, 6), lstsq, atol=1e-4)
    resid = lambda v: np.linalg.norm(bt @ v.reshape(64, 6) - w_flat, axis=0)
    best = resid(w_hat)
    for _ in range(5):
        assert np.all(best <= resid(w_hat + 1e-2 * RNG.standard_normal(w_hat.shape)) + 1e-9)
    naive = np.asarray(_resize(w, (*new, 2, 3), "linear"), np.float64)
    assert np.all(best < resid(naive))


def test_pi_resize_identity_cache_dtype_and_jit():
    w = jnp.asarray(RNG.standard_normal((4, 4, 3, 2)), jnp.float32)
    assert resize.pi_resize_patch_kernel(w, (4, 4)) is w
    p = resize.pi_resize_matrix((4, 4), (6, 6))
    assert p is resize.pi_resize_matrix([4, 4], 6) and p.shape == (36, 16)
    with pytest.raises(ValueError):
        p[0, 0] = 1.0  # cached matrices are read-only
    # First use of an uncached size happens inside a jit trace.
    w5 = jnp.asarray(RNG.standard_normal((5, 5, 3, 2)), jnp.float32)
    jitted = jax.jit(resize.pi_resize_patch_kernel, static_argnums=1)(w5, (7, 7))
    np.testing.assert_allclose(np.asarray(jitted),
                               np.asarray(resize.pi_resize_patch_kernel(w5, (7, 7))), atol=1e-6)
    assert resize.pi_resize_patch_kernel(w.astype(jnp.bfloat16), (8, 8)).dtype == jnp.bfloat16
    grad = jax.grad(lambda k: jnp.sum(resize.pi_resize_patch_kernel(k, (6, 6)) ** 2))(w)
    assert np.all(np.abs(np.asarray(grad)).sum(axis=(0, 1)) > 0)
    with pytest.raises(ValueError, match="4-D"):
        resize.pi_resize_patch_kernel(w[0], (6, 6))


# ------------------------------------------------------------------------------------------------
