"""Relative attention (`vitx.models.relative`, CoAtNet's): bias lookup, equivariance, errors,
table resize."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vitx.models import relative

# Compile tests' programs without XLA's backend optimisations (~3x faster compiles on CPU).
_FAST = {"xla_backend_optimization_level": 0}


def fast(fn, *args):
    """`jax.jit(fn)(*args)`, compiled with `_FAST`; pass only arrays (or pytrees of them)."""
    return jax.jit(fn).lower(*args).compile(compiler_options=_FAST)(*args)


# ------------------------------------------------------------------------------------------------
# Relative attention.


def _attention(mode="pre_softmax", features=8, head_size=4, grid=(3, 4), seed=0):
    att = relative.RelativeAttention(features, head_size, mode)
    x = jax.random.normal(jax.random.PRNGKey(seed), (2, grid[0] * grid[1], 6))
    params = fast(lambda x: att.init(jax.random.PRNGKey(1), x, grid)["params"], x)
    return att, x, params


@pytest.mark.parametrize("mode", relative.REL_POS_MODES)
def test_zero_table_equals_plain_attention(mode):
    grid = (3, 4)
    att, x, params = _attention(mode, grid=grid)
    params = {**params, "rel_table": jnp.zeros_like(params["rel_table"])}
    y = fast(lambda p, x: att.apply({"params": p}, x, grid), params, x)
    qkv = x @ params["qkv"]["kernel"] + params["qkv"]["bias"]
    q, k, v = jnp.split(qkv.reshape(2, 12, 3, 2, 4), 3, axis=2)
    plain = jax.nn.dot_product_attention(q[:, :, 0], k[:, :, 0], v[:, :, 0])  # (B, N, h, d)
    plain = plain.reshape(2, 12, 8) @ params["proj"]["kernel"] + params["proj"]["bias"]
    np.testing.assert_allclose(y, plain, atol=1e-5)
    # A non-zero table changes the output.
    table = jnp.linspace(0.0, 2.0, 2 * 5 * 7).reshape(2, 5, 7)
    y_table = fast(lambda p, x: att.apply({"params": p}, x, grid),
                   {**params, "rel_table": table}, x)
    assert not np.allclose(y_table, plain, atol=1e-3)


def test_bias_depends_only_on_relative_offset():
    h, w = 3, 4
    table = jax.random.normal(jax.random.PRNGKey(0), (2, 2 * h - 1, 2 * w - 1))
    bias = np.asarray(relative.relative_bias(table, (h, w)))
    assert bias.shape == (2, h * w, h * w)
    pos = [(r, c) for r in range(h) for c in range(w)]
    for i, (ri, ci) in enumerate(pos):
        for j, (rj, cj) in enumerate(pos):
            np.testing.assert_array_equal(bias[:, i, j], table[:, ri - rj + h - 1, ci - cj + w - 1])
    # Toeplitz in each direction: shifting query and key together leaves the bias unchanged.
    b4 = bias.reshape(2, h, w, h, w)
    np.testing.assert_array_equal(b4[:, 1:, :, 1:, :], b4[:, :-1, :, :-1, :])
    np.testing.assert_array_equal(b4[:, :, 1:, :, 1:], b4[:, :, :-1, :, :-1])


def test_shift_equivariance_1d():
    """Translating the tokens of a 1 x W sequence translates the output (away from borders).

    The table allows offsets |i - j| <= k (others -1e9, so softmax weight exactly 0): an output
    then sees only its 2k+1 neighbours, and the content term x_i.x_j and the static kernel
    w_{i-j} are both unchanged by a shift, so y(shift(x))[i + s] == y(x)[i] wherever both
    windows lie inside the sequence.
    """
    w, k, s = 16, 2, 3
    att, _, params = _attention(grid=(1, w))
    x = jax.random.normal(jax.random.PRNGKey(3), (2, w, 6))
    offsets = np.arange(2 * w - 1) - (w - 1)
    table = np.where(np.abs(offsets) <= k, np.asarray(params["rel_table"]), -1e9)
    params = {**params, "rel_table": jnp.asarray(table, jnp.float32)}
    y, y_shift = fast(lambda p, x: (att.apply({"params": p}, x, (1, w)),
                                    att.apply({"params": p}, jnp.roll(x, s, axis=1), (1, w))),
                      params, x)
    idx = np.arange(k, w - k - s)
    np.testing.assert_allclose(y_shift[:, idx + s], y[:, idx], atol=1e-5)
    # Sanity: the output is not shift-invariant (it moved with the input).
    assert not np.allclose(y_shift[:, idx], y[:, idx], atol=1e-3)


def test_attention_errors():
    with pytest.raises(ValueError, match="model.head_size=32"):
        relative.RelativeAttention(48).init(jax.random.PRNGKey(0), jnp.zeros((1, 4, 8)), (2, 2))
    with pytest.raises(ValueError, match="model.rel_pos_mode='both'"):
        relative.RelativeAttention(8, 4, "both").init(jax.random.PRNGKey(0),
                                                     jnp.zeros((1, 4, 8)), (2, 2))
    with pytest.raises(ValueError, match="does not fit the 3x3 token grid"):
        relative.relative_bias(jnp.zeros((2, 3, 3)), (3, 3))




# ------------------------------------------------------------------------------------------------
# Relative-table resize.


def test_resize_rel_table():
    table = jax.random.normal(jax.random.PRNGKey(0), (12, 27, 27))
    assert relative.resize_rel_table(table, (14, 14)) is table  # identity at equal size
    np.testing.assert_array_equal(relative.resize_rel_table(table, 14), table)
    big = relative.resize_rel_table(table, (24, 24))
    assert big.shape == (12, 47, 47) and big.dtype == table.dtype
    const = jnp.full((2, 13, 13), 0.7)
    np.testing.assert_allclose(relative.resize_rel_table(const, (12, 5)), 0.7, atol=1e-6)
    # The offset-0 entry stays at the centre when upsampling a centred bump.
    bump = jnp.zeros((1, 7, 7)).at[0, 3, 3].set(1.0)
    out = relative.resize_rel_table(bump, (8, 8))
    assert np.unravel_index(np.argmax(out[0]), out.shape[1:]) == (7, 7)
    with pytest.raises(ValueError, match="is not \\(heads, 2H-1, 2W-1\\)"):
        relative.resize_rel_table(jnp.zeros((2, 4, 5)), 3)
