"""aux["token_map"] (B, h, w, D) of every image model: the input of the dense heads."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vitx.models import coatnet, flexi, hybrid, vit

TINY = dict(width=16, depth=1, mlp_dim=32, num_heads=2)


def _aux_shapes(model, size: int, **kw) -> dict:
    x = jnp.zeros((2, size, size, 1))

    def fwd(x):
        variables = model.init(jax.random.PRNGKey(0), x, **kw)
        return model.apply(variables, x, **kw)[1]

    return jax.eval_shape(fwd, x)


@pytest.mark.parametrize("pool", ["tok", "gap", "map"])
@pytest.mark.parametrize("patch", [2, 4, 8])
def test_vit_token_map_shape(pool: str, patch: int) -> None:
    aux = _aux_shapes(vit.Model(3, variant=f"pico/{patch}", **TINY, pool_type=pool), 16)
    assert aux["token_map"].shape == (2, 16 // patch, 16 // patch, 16)


@pytest.mark.parametrize("patch", [2, 4, 8, 16])
def test_flexivit_token_map_shape_at_every_patch_size(patch: int) -> None:
    m = flexi.Model(3, variant="pico/8", **TINY, base_patch_size=8, posemb_grid=2)
    aux = _aux_shapes(m, 16, patch_size=patch)
    assert aux["token_map"].shape == (2, 16 // patch, 16 // patch, 16)


def test_hybrid_token_map_shape() -> None:
    m = hybrid.Model(3, variant="R26x0.25+pico/8", **TINY, gn_groups=4)
    assert hybrid.input_stride(m) == (8, 8)
    assert _aux_shapes(m, 16)["token_map"].shape == (2, 2, 2, 16)


@pytest.mark.parametrize("strides,grid", [((1, 1, 1, 1), 8), ((1, 2, 2, 1), 2)])
def test_coatnet_token_map_is_the_last_stage(strides: tuple, grid: int) -> None:
    m = coatnet.Model(3, variant="coatnet-pico", stage_strides=strides)
    aux = _aux_shapes(m, 16)
    assert aux["token_map"].shape == (2, grid, grid, 128)
    assert aux["token_map"].shape == aux["stage4"].shape


def test_vit_token_map_is_the_patch_grid_of_encoded() -> None:
    """Row-major patch tokens without cls; with no encoder blocks, changing the pixels of patch
    (i, j) changes token (i, j) alone."""
    m = vit.Model(3, variant="pico/4", **{**TINY, "depth": 0})
    x = jax.random.normal(jax.random.PRNGKey(1), (1, 16, 16, 1))
    y = x.at[:, 8:12, 4:8].add(1.0)  # patch (2, 1)

    @jax.jit
    def run(x, y):
        variables = m.init(jax.random.PRNGKey(0), x)
        aux = m.apply(variables, x)[1]
        return aux["token_map"], aux["encoded"], m.apply(variables, y)[1]["token_map"]

    tmap, encoded, tmap_y = run(x, y)
    np.testing.assert_array_equal(tmap.reshape(1, 16, 16), encoded[:, 1:])
    changed = np.any(np.asarray(tmap_y != tmap), -1)
    expected = np.zeros((1, 4, 4), bool)
    expected[0, 2, 1] = True
    np.testing.assert_array_equal(changed, expected)
