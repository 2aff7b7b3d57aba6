"""ViT variants of issue 20: ViT_REL (`model.attention="relative"`), overlapping patches
(`model.patch_stride`), `model.posemb` "learn_2d" / "none" and `model.cls_token`."""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vitx.models import flexi, get_model_module, posemb, relative, resize, strided, vit
from vitx.utils import npz, tree

X16 = jnp.asarray(np.random.default_rng(0).uniform(-1, 1, (2, 16, 16, 1)), jnp.float32)


@functools.cache
def _init(img: int = 16, **kw):
    """(model, random params (every param matters), jitted apply) of a pico ViT."""
    m = vit.Model(3, variant="pico/4", head_zeroinit=False, **kw)
    shapes = jax.eval_shape(m.init, jax.random.PRNGKey(0), jnp.zeros((1, img, img, 1)))["params"]
    r = np.random.default_rng(1)
    params = jax.tree_util.tree_map(
        lambda s: jnp.asarray(0.1 * r.standard_normal(s.shape), s.dtype), shapes)
    return m, params, jax.jit(m.apply)


def _flat(params):
    return dict(tree.flat_leaves(params))


# ---------------------------------------------------------------------------------------------
# ViT_REL


@pytest.mark.parametrize("kw", [dict(), dict(scan=True, pool_type="gap")])
def test_vit_rel_with_zero_table_equals_plain_vit(kw):
    m, params, apply = _init(attention="relative", **kw)
    flat = _flat(params)
    tables = [k for k in flat if k.endswith("rel_table")]
    heads, grid = 2, 4  # pico: 2 heads; 16 px / 4 = 4x4 tokens
    assert tables and all(flat[k].shape[-3:] == (heads, 2 * grid - 1, 2 * grid - 1) for k in tables)
    zero = tree.unflatten({k: (jnp.zeros_like(v) if k in tables else v) for k, v in flat.items()})
    plain_m, _, plain_apply = _init(**kw)
    plain = tree.unflatten({k: v for k, v in flat.items() if k not in tables})
    want = plain_apply({"params": plain}, X16)[0]
    np.testing.assert_array_equal(apply({"params": zero}, X16)[0], want)
    # and a (random, O(1)) table does change the logits
    strong = tree.unflatten({k: (30 * v if k in tables else v) for k, v in flat.items()})
    assert float(jnp.abs(apply({"params": strong}, X16)[0] - want).max()) > 1e-5


def test_vit_rel_bias_depends_only_on_the_offset():
    grid, prefix = (3, 4), 1

    class Block(nn.Module):
        @nn.compact
        def __call__(self, n):
            return relative.vit_bias(self, 2, n, grid)

    n = prefix + grid[0] * grid[1]
    b = Block()
    params = b.init(jax.random.PRNGKey(0), n)
    bias = np.asarray(b.apply(params, n))[0]  # (heads, N, N)
    table = np.asarray(params["params"]["rel_table"])
    assert bias.shape == (2, n, n)
    np.testing.assert_array_equal(bias[:, :prefix], 0)  # the class token: no bias
    np.testing.assert_array_equal(bias[:, :, :prefix], 0)
    r, c = np.divmod(np.arange(grid[0] * grid[1]), grid[1])
    by_offset: dict = {}
    for i in range(len(r)):
        for j in range(len(r)):
            off = (r[i] - r[j], c[i] - c[j])
            np.testing.assert_array_equal(bias[:, prefix + i, prefix + j],
                                          table[:, off[0] + grid[0] - 1, off[1] + grid[1] - 1])
            by_offset.setdefault(off, set()).add(tuple(bias[:, prefix + i, prefix + j]))
    assert all(len(v) == 1 for v in by_offset.values())  # one value per offset
    assert len({next(iter(v)) for v in by_offset.values()}) == len(by_offset)  # offsets differ


def test_vit_rel_registry_and_load_resizes_tables(tmp_path):
    mod = get_model_module("vit_rel")
    m = mod.Model(3, variant="pico/4")
    assert m.attention == "relative"
    _, small, _ = _init(attention="relative", scan=True)
    table = np.full((2, 2, 7, 7), 0.5, np.float32)  # (depth, heads, 2*4-1, 2*4-1), constant
    small = tree.unflatten({**_flat(small), "Transformer/encoderblock/rel_table": table})
    path = str(tmp_path / "rel.npz")
    npz.save_npz(path, small)
    big_m, big, _ = _init(img=32, attention="relative", scan=True)
    loaded = _flat(mod.load(big, path))
    assert loaded["Transformer/encoderblock/rel_table"].shape == (2, 2, 15, 15)
    np.testing.assert_allclose(loaded["Transformer/encoderblock/rel_table"], 0.5, rtol=1e-6)
    # unscanned and same size: the round trip is exact
    _, p, apply = _init(attention="relative")
    npz.save_npz(path, p)
    back = vit.load(p, path)
    np.testing.assert_array_equal(apply({"params": back}, X16)[0], apply({"params": p}, X16)[0])


def test_flexivit_relative_tables_are_stored_once_and_resized():
    m = flexi.Model(3, variant="pico/4", base_patch_size=(4, 4), posemb_grid=(4, 4),
                    attention="relative")
    variables = jax.eval_shape(m.init, jax.random.PRNGKey(0), X16)  # shapes only: fast
    assert _flat(variables["params"])["Transformer/encoderblock_0/rel_table"].shape == (2, 7, 7)
    out = jax.eval_shape(functools.partial(m.apply, patch_size=8), variables, X16)
    assert out[1]["encoded"].shape == (2, 1 + 4, 32)  # 2x2 grid: the 7x7 table resized to 3x3


# ---------------------------------------------------------------------------------------------
# Overlapping patches


def test_patch_stride_token_count_and_formula():
    m, params, apply = _init(img=16, patch_stride=2)
    assert strided.token_grid((16, 16), 4, 2) == (7, 7)  # (16 - 4) // 2 + 1
    assert apply({"params": params}, X16)[1]["encoded"].shape == (2, 1 + 49, 32)
    assert _flat(params)["pos_embedding"].shape == (1, 49, 32)
    assert _flat(params)["embedding/kernel"].shape == (4, 4, 1, 32)  # the kernel is unchanged


@pytest.mark.parametrize("patch,stride,size", [
    ((4, 4), (2, 2), (10, 12)), ((8, 4), (2, 1), (12, 9)), ((4, 4), (4, 4), (8, 8))])
@pytest.mark.parametrize("impl", ["matmul", "conv"])
def test_strided_patchify_equals_strided_conv(patch, stride, size, impl):
    r = np.random.default_rng(2)
    x = jnp.asarray(r.standard_normal((2, *size, 3)), jnp.float32)
    kernel = jnp.asarray(r.standard_normal((*patch, 3, 5)), jnp.float32)
    bias = jnp.asarray(r.standard_normal(5), jnp.float32)
    want = jax.lax.conv_general_dilated(x, kernel, stride, "VALID",
                                        dimension_numbers=("NHWC", "HWIO", "NHWC")) + bias
    got = strided.patchify(x, kernel, bias, stride, impl)
    assert got.shape == (2, *strided.token_grid(size, patch, stride), 5) == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("cfg,shape,match", [
    (dict(variant="pico/8", patch_stride=16), (32, 32, 1),
     r"model\.patch_stride=\(16, 16\) is larger"),
    (dict(variant="pico/8", patch_stride=3), (32, 32, 1),
     r"model\.patch_stride=\(3, 3\) does not divide"),
    (dict(variant="pico/8", patch_stride=4), (30, 30, 1), r"model\.patch_stride=4.*30x30"),
])
def test_bad_patch_stride_is_one_line_naming_the_key(cfg, shape, match):
    with pytest.raises(ValueError, match=match) as e:
        vit.check_input(cfg, shape)
    assert "\n" not in str(e.value)


def test_patch_stride_checkpoint_round_trip_and_pi_resize(tmp_path):
    m, params, apply = _init(img=16, patch_stride=2)
    path = str(tmp_path / "s.npz")
    npz.save_npz(path, params)
    back = vit.load(params, path)
    np.testing.assert_array_equal(apply({"params": back}, X16)[0],
                                  apply({"params": params}, X16)[0])
    # into patch 8 / stride 4 (same 3x3 grid at 16 px): the kernel is PI-resized, as without stride
    big = vit.Model(3, variant="pico/8", patch_stride=4, head_zeroinit=False)
    init = big.init(jax.random.PRNGKey(0), X16)["params"]
    loaded = _flat(vit.load(init, path))
    want = resize.pi_resize_patch_kernel(_flat(params)["embedding/kernel"], (8, 8))
    np.testing.assert_allclose(loaded["embedding/kernel"], want, rtol=1e-6)
    assert loaded["pos_embedding"].shape == (1, 9, 32)  # 7x7 -> (16 - 8) // 4 + 1 = 3 a side


def test_flexivit_stride_equals_vit_stride():
    m, params, apply = _init(img=16, patch_stride=2, posemb="sincos2d")
    f = flexi.Model(3, variant="pico/4", base_patch_size=(4, 4), posemb="sincos2d",
                    head_zeroinit=False)
    got = f.apply({"params": params}, X16, patch_size=4, patch_stride=2)[0]
    np.testing.assert_allclose(got, apply({"params": params}, X16)[0], rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------------------------
# posemb learn_2d / none, cls_token


def test_learn_2d_is_row_and_column_tables_concatenated():
    m, params, apply = _init(posemb="learn_2d")
    flat = _flat(params)
    px, py = np.asarray(flat["pos_embedding_x"])[0], np.asarray(flat["pos_embedding_y"])[0]
    assert px.shape == py.shape == (4, 16)  # 4x4 grid, D/2 = 16
    assert "pos_embedding" not in flat

    class Probe(nn.Module):
        @nn.compact
        def __call__(self):
            return posemb.learn_2d(self, (4, 4), 32)

    pe = np.asarray(Probe().apply({"params": {"pos_embedding_x": px[None],
                                              "pos_embedding_y": py[None]}}))[0]
    for r in range(4):
        for c in range(4):
            np.testing.assert_array_equal(pe[r * 4 + c], np.concatenate([px[c], py[r]]))


def test_learn_2d_resize_is_exact_on_linear_ramps(tmp_path):
    _, params, _ = _init(posemb="learn_2d")
    ramp_x = (0.3 * np.arange(4) - 1.0)[None, :, None] * np.ones((1, 4, 16), np.float32)
    ramp_y = (2.0 - 0.5 * np.arange(4))[None, :, None] * np.linspace(1, 2, 16, dtype=np.float32)
    flat = {**_flat(params), "pos_embedding_x": ramp_x.astype(np.float32),
            "pos_embedding_y": ramp_y.astype(np.float32)}
    path = str(tmp_path / "l2d.npz")
    npz.save_npz(path, tree.unflatten(flat))
    _, big, _ = _init(img=32, posemb="learn_2d")  # 8x8 tokens
    loaded = _flat(vit.load(big, path))
    # half-pixel centres: new position j samples old coordinate (j + 0.5) * 4 / 8 - 0.5
    coords = (np.arange(8) + 0.5) * 0.5 - 0.5
    for name, ramp in (("pos_embedding_x", ramp_x), ("pos_embedding_y", ramp_y)):
        want = np.stack([np.interp(coords, np.arange(4), ramp[0, :, k]) for k in range(16)], -1)
        np.testing.assert_allclose(loaded[name][0], want, rtol=1e-5, atol=1e-6)
        inner = loaded[name][0, 1:-1]  # between the end samples: on the ramp itself
        np.testing.assert_allclose(np.diff(inner, axis=0), np.diff(inner, axis=0)[:1].repeat(5, 0),
                                   atol=1e-5)
    back = vit.load(params, path)  # same size: exact round trip
    np.testing.assert_array_equal(_flat(back)["pos_embedding_x"], flat["pos_embedding_x"])


def test_posemb_none_gap_is_invariant_to_patch_order():
    m, params, apply = _init(posemb="none", pool_type="gap")
    assert not [k for k in _flat(params) if "pos_embedding" in k or k == "cls"]
    x = np.asarray(X16)
    swapped = x.copy()
    swapped[:, 0:4, 0:4], swapped[:, 8:12, 4:8] = x[:, 8:12, 4:8], x[:, 0:4, 0:4]
    np.testing.assert_allclose(apply({"params": params}, swapped)[0],
                               apply({"params": params}, x)[0], rtol=1e-5, atol=1e-6)
    # with a position embedding the same swap changes the logits
    _, p2, apply2 = _init(posemb="learn", pool_type="gap")
    assert float(jnp.abs(apply2({"params": p2}, swapped)[0]
                         - apply2({"params": p2}, x)[0]).max()) > 1e-4


def test_cls_token_is_its_own_switch():
    m, params, apply = _init(pool_type="gap", cls_token=True)
    assert "cls" in _flat(params)
    out = apply({"params": params}, X16)[1]
    assert out["encoded"].shape == (2, 1 + 16, 32)
    np.testing.assert_allclose(out["pre_logits"], out["encoded"][:, 1:].mean(1), rtol=1e-5)
    with pytest.raises(ValueError, match=r"model\.cls_token=False"):
        vit.Model(3, variant="pico/4", cls_token=False).init(jax.random.PRNGKey(0), X16)
    with pytest.raises(ValueError, match=r"model\.posemb='learn_2d' needs an even"):
        vit.check_input(dict(variant="pico/4", width=33, num_heads=3, posemb="learn_2d"),
                        (16, 16, 1))
    with pytest.raises(ValueError, match=r"model\.attention='rel' is unknown"):
        vit.check_input(dict(variant="pico/4", attention="rel"), (16, 16, 1))
