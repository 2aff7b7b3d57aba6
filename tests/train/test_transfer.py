"""Tests for vitx.train.transfer (ViT Sec. 3.2 fine-tune surgery; FlexiViT Sec. 3.4 PI-resize)."""

from __future__ import annotations

import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vitx.models import vit
from vitx.train import transfer as tr

RNG = np.random.default_rng(0)


@functools.cache
def _model_and_params(img: int = 16, num_classes: int = 10, variant: str = "pico/4",
                      seed: int = 0, **kw):
    """(model, params, images) for a tiny ViT.

    The params have the model's tree (from `jax.eval_shape`, no init compile) and random values,
    so the head, cls and every other param affect the logits.
    """
    m = vit.Model(num_classes, variant=variant, **kw)
    shapes = jax.eval_shape(m.init, jax.random.PRNGKey(0), jnp.zeros((1, img, img, 3)))["params"]
    r = np.random.default_rng(seed)
    params = jax.tree_util.tree_map_with_path(
        lambda path, s: jnp.asarray(0.1 * r.standard_normal(s.shape)
                                    + (path[-1].key == "scale"), s.dtype), shapes)
    x = jnp.asarray(r.uniform(-1, 1, (2, img, img, 3)), jnp.float32)
    return m, params, x


@functools.cache
def _jitted_apply(m):
    return jax.jit(m.apply)


def _logits(m, params, x):
    return np.asarray(_jitted_apply(m)({"params": params}, x)[0])


# A jitted `jax.image.resize`: the oracle, compiled once per shape (eager is ~40x slower).
_resize = jax.jit(jax.image.resize, static_argnames=("shape", "method", "antialias"))


def _flat(tree):
    return tr.flatten(tree)


# ------------------------------------------------------------------------------------------------
# Position-embedding resize.


def test_resize_posemb_identity_returns_input():
    pe = jnp.asarray(RNG.standard_normal((1, 1 + 12, 8)), jnp.float32)
    assert tr.resize_posemb(pe, (3, 4), (3, 4), num_prefix_tokens=1) is pe


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
    out = np.asarray(tr.resize_posemb(pe, old, new, antialias=antialias)).reshape(*new, 2)
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
    out = tr.resize_posemb(pe, (3, 5), (6, 4), num_prefix_tokens=1)
    assert out.shape == (1, 1 + 24, 6) and out.dtype == pe.dtype
    np.testing.assert_array_equal(np.asarray(out[:, :1]), np.asarray(pe[:, :1]))
    # The grid part is the 2-D image resize of the (3, 5) grid.
    want = _resize(pe[:, 1:].reshape(1, 3, 5, 6), (1, 6, 4, 6), "linear")
    np.testing.assert_allclose(np.asarray(out[:, 1:]), np.asarray(want).reshape(1, 24, 6),
                               atol=1e-6)


def test_resize_posemb_methods_jit_and_errors():
    pe = jnp.asarray(RNG.standard_normal((1, 16, 4)), jnp.float32)
    for method in ("bicubic", "nearest"):
        out = tr.resize_posemb(pe, (4, 4), (6, 6), method=method)
        assert out.shape == (1, 36, 4) and np.all(np.isfinite(np.asarray(out)))
    jitted = jax.jit(functools.partial(tr.resize_posemb, old_grid=(4, 4), new_grid=(2, 3)))
    np.testing.assert_allclose(np.asarray(jitted(pe)),
                               np.asarray(tr.resize_posemb(pe, (4, 4), (2, 3))), atol=1e-6)
    bf = tr.resize_posemb(pe.astype(jnp.bfloat16), (4, 4), (6, 6))
    assert bf.dtype == jnp.bfloat16
    with pytest.raises(ValueError, match="lanczos3"):
        tr.resize_posemb(pe, (4, 4), (6, 6), method="lanczos3")
    with pytest.raises(ValueError, match="num_prefix_tokens=1"):
        tr.resize_posemb(pe, (4, 4), (6, 6), num_prefix_tokens=1)
    with pytest.raises(ValueError, match="new_grid"):
        tr.resize_posemb(pe, (4, 4), (0, 6))


def test_infer_grid():
    assert tr.infer_grid(196) == (14, 14)
    for bad in (0, 12, -4):
        with pytest.raises(ValueError, match="pass the grid"):
            tr.infer_grid(bad)


# ------------------------------------------------------------------------------------------------
# PI-resize.


@pytest.mark.parametrize("old,new,method,antialias", [
    ((4, 4), (6, 6), "bilinear", False), ((5, 3), (2, 7), "bilinear", True),
    ((8, 8), (3, 3), "bilinear", False), ((4, 5), (7, 3), "bicubic", False),
    ((3, 3), (7, 5), "nearest", False)])
def test_resize_matrix_matches_jax_image_resize(old, new, method, antialias):
    b = tr.resize_matrix(old, new, method, antialias=antialias)
    assert b.shape == (new[0] * new[1], old[0] * old[1])
    x = RNG.standard_normal((5, *old)).astype(np.float32)
    want = _resize(x, (5, *new), tr.RESIZE_METHODS[method], antialias=antialias)
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
    w_hat = tr.pi_resize_patch_kernel(w, new)
    assert w_hat.shape == (*new, 3, 5) and w_hat.dtype == w.dtype
    err = np.abs(_tokens(x, w) - _tokens(x_up, w_hat))
    assert err.max() < 1e-4, err.max()
    # A naive bilinear resize of the kernel does not preserve the tokens (the test can fail).
    w_naive = _resize(w, (*new, 3, 5), "linear")
    assert np.abs(_tokens(x, w) - _tokens(x_up, w_naive)).max() > 0.1


def test_pi_resize_downsampling_is_least_squares():
    old, new = (16, 16), (8, 8)
    w = jnp.asarray(RNG.standard_normal((*old, 2, 3)), jnp.float32)
    w_hat = np.asarray(tr.pi_resize_patch_kernel(w, new), np.float64)
    bt = tr.resize_matrix(old, new).T  # (256, 64)
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
    assert tr.pi_resize_patch_kernel(w, (4, 4)) is w
    p = tr.pi_resize_matrix((4, 4), (6, 6))
    assert p is tr.pi_resize_matrix([4, 4], 6) and p.shape == (36, 16)
    with pytest.raises(ValueError):
        p[0, 0] = 1.0  # cached matrices are read-only
    # First use of an uncached size happens inside a jit trace.
    w5 = jnp.asarray(RNG.standard_normal((5, 5, 3, 2)), jnp.float32)
    jitted = jax.jit(tr.pi_resize_patch_kernel, static_argnums=1)(w5, (7, 7))
    np.testing.assert_allclose(np.asarray(jitted),
                               np.asarray(tr.pi_resize_patch_kernel(w5, (7, 7))), atol=1e-6)
    assert tr.pi_resize_patch_kernel(w.astype(jnp.bfloat16), (8, 8)).dtype == jnp.bfloat16
    grad = jax.grad(lambda k: jnp.sum(tr.pi_resize_patch_kernel(k, (6, 6)) ** 2))(w)
    assert np.all(np.abs(np.asarray(grad)).sum(axis=(0, 1)) > 0)
    with pytest.raises(ValueError, match="4-D"):
        tr.pi_resize_patch_kernel(w[0], (6, 6))


# ------------------------------------------------------------------------------------------------
# Head and strict merge.


def test_reinit_head_and_pre_logits():
    m, params, x = _model_and_params(representation_size=16)
    out = tr.reinit_head(params, 7)
    assert out["head"]["kernel"].shape == (16, 7) and out["head"]["bias"].shape == (7,)
    assert not np.any(np.asarray(out["head"]["kernel"])) and "pre_logits" in out
    assert "head" in params and params["head"]["kernel"].shape == (16, 10)  # input untouched
    out = tr.reinit_head(params, 7, keep_pre_logits=False)
    assert "pre_logits" not in out and out["head"]["kernel"].shape == (32, 7)
    logits, _ = vit.Model(7, variant="pico/4").apply({"params": out}, x)
    np.testing.assert_array_equal(np.asarray(logits), np.zeros((2, 7)))


def _tiny_trees():
    init = {"a": {"w": jnp.zeros((2, 3)), "b": jnp.ones((3,))}, "keep": jnp.full((4,), 7.0)}
    loaded = {"a": {"w": np.ones((3, 3)), "b": np.arange(3.0)}, "extra": np.ones((5,))}
    return init, loaded


def test_merge_params_lists_every_problem_in_one_error():
    init, loaded = _tiny_trees()
    with pytest.raises(ValueError) as e:
        tr.merge_params(init, loaded)
    msg = str(e.value)
    assert "\n" not in msg
    for part in ("a/w (model (2, 3) vs checkpoint (3, 3))", "keep (model (4,), missing",
                 "extra (checkpoint (5,), not in model)", "model_load.dont_load",
                 "fix the model config"):
        assert part in msg, (part, msg)
    assert "a/b" not in msg
    # re.fullmatch semantics: "a" does not excuse "a/w"; "extra" alone leaves the others.
    with pytest.raises(ValueError, match="a/w"):
        tr.merge_params(init, loaded, dont_load=["a", "keep", "extra"])
    with pytest.raises(ValueError, match="not a valid regex"):
        tr.merge_params(init, loaded, dont_load=["a/("])


def test_merge_params_dont_load_keeps_init_and_casts_dtype():
    init, loaded = _tiny_trees()
    out = tr.merge_params(init, loaded, dont_load=[r"a/w", "keep", "ext.*"])
    assert out["a"]["w"] is init["a"]["w"] and out["keep"] is init["keep"]
    assert "extra" not in out
    assert out["a"]["b"].dtype == jnp.float32  # loaded was float64
    np.testing.assert_array_equal(np.asarray(out["a"]["b"]), [0.0, 1.0, 2.0])
    # numpy init -> numpy result (the trainer passes host arrays).
    out = tr.merge_params(jax.device_get(init), loaded, dont_load=["a/w", "keep", "extra"])
    assert isinstance(out["a"]["b"], np.ndarray) and out["a"]["b"].dtype == np.float32


def test_merge_params_adapter_only_on_shape_mismatch():
    init, loaded = _tiny_trees()
    calls = []

    def adapt(name, value, ref):
        calls.append(name)
        return np.zeros(ref.shape) if name == "a/w" else None

    out = tr.merge_params(init, loaded, dont_load=["keep", "extra"], adapt=adapt)
    assert calls == ["a/w"] and not np.any(np.asarray(out["a"]["w"]))


# ------------------------------------------------------------------------------------------------
# Fine-tune surgery.


def test_adapt_for_finetune_resolution_and_classes():
    _, src, _ = _model_and_params(16, 10)
    m_dst, dst_init, x = _model_and_params(32, 5, seed=3)
    out = tr.adapt_for_finetune(dst_init, src)
    assert jax.tree.structure(out) == jax.tree.structure(dst_init)
    want_pe = tr.resize_posemb(src["pos_embedding"], (4, 4), (8, 8))
    assert out["pos_embedding"].shape == (1, 64, 32)
    np.testing.assert_array_equal(np.asarray(out["pos_embedding"]), np.asarray(want_pe))
    assert out["head"]["kernel"].shape == (32, 5)
    assert not np.any(np.asarray(out["head"]["kernel"])) and not np.any(out["head"]["bias"])
    fo, fs = _flat(out), _flat(src)
    for name, v in fo.items():
        if name != "pos_embedding" and not name.startswith("head/"):
            np.testing.assert_array_equal(v, fs[name], err_msg=name)
    assert _logits(m_dst, out, x).shape == (2, 5)


def test_adapt_for_finetune_same_config_is_identity():
    _, src, _ = _model_and_params(16, 10)
    _, init, _ = _model_and_params(16, 10, seed=3)
    out = _flat(tr.adapt_for_finetune(init, src))
    for name, v in _flat(src).items():
        np.testing.assert_array_equal(out[name], v, err_msg=name)


def test_adapt_for_finetune_patch_size_scan_and_errors():
    _, src, _ = _model_and_params(16, 10)  # pico/4, 4x4 grid
    _, init, _ = _model_and_params(32, 10, variant="pico/8", seed=3, scan=True)  # 4x4 grid
    out = tr.adapt_for_finetune(init, src)
    np.testing.assert_allclose(
        np.asarray(out["embedding"]["kernel"]),
        np.asarray(tr.pi_resize_patch_kernel(src["embedding"]["kernel"], (8, 8))), atol=1e-6)
    stacked = tr.stack_blocks(src)["Transformer"]["encoderblock"]
    np.testing.assert_array_equal(np.asarray(out["Transformer"]["encoderblock"]["LayerNorm_0"]
                                             ["scale"]),
                                  np.asarray(stacked["LayerNorm_0"]["scale"]))
    # A different width cannot be adapted: every mismatching param is named.
    _, wide, _ = _model_and_params(16, 10, variant="nano/4", seed=3)
    with pytest.raises(ValueError) as e:
        tr.adapt_for_finetune(wide, src)
    for name in ("embedding/bias (model (64,) vs checkpoint (32,))", "cls (", "pos_embedding (",
                 "Transformer/encoder_norm/scale (", "encoderblock_2/LayerNorm_0/scale (model "
                 "(64,), missing in checkpoint)", "model_load.dont_load"):
        assert name in str(e.value), name
    # Non-square grids must be given explicitly.
    _, rect, _ = _model_and_params(16, 10, seed=3)
    bad = dict(src, pos_embedding=src["pos_embedding"][:, :12])
    with pytest.raises(ValueError, match="pass the grid"):
        tr.adapt_for_finetune(rect, bad)
    out = tr.adapt_for_finetune(rect, bad, old_grid=(3, 4))
    assert out["pos_embedding"].shape == (1, 16, 32)


def test_adapt_for_finetune_drops_pre_logits_the_model_lacks():
    _, src, _ = _model_and_params(16, 10, representation_size=16)
    m, init, x = _model_and_params(16, 3, seed=3)
    out = tr.adapt_for_finetune(init, src)
    assert "pre_logits" not in out and out["head"]["kernel"].shape == (32, 3)
    np.testing.assert_array_equal(_logits(m, out, x), np.zeros((2, 3)))


# ------------------------------------------------------------------------------------------------
# npz interop.


@pytest.mark.parametrize("pool", ["tok", "gap"])
def test_vit_jax_npz_round_trip_gives_identical_logits(tmp_path, pool):
    m, params, x = _model_and_params(pool_type=pool)
    path = str(tmp_path / "ckpt.npz")
    tr.save_npz(path, params, layout="vit_jax")
    with np.load(path) as z:
        names = set(z.files)
        pe = z["Transformer/posembed_input/pos_embedding"]
    assert "Transformer/encoderblock_1/MultiHeadDotProductAttention_1/query/kernel" in names
    assert "Transformer/encoderblock_0/MlpBlock_3/Dense_1/bias" in names
    assert "pos_embedding" not in names
    assert pe.shape == (1, 16 + (pool == "tok"), 32)
    loaded = tr.load_npz(path)  # layout auto-detected
    assert jax.tree.structure(loaded) == jax.tree.structure(params)
    np.testing.assert_array_equal(_logits(m, loaded, x), _logits(m, params, x))


def test_from_vit_jax_folds_cls_posemb():
    m, params, x = _model_and_params(pool_type="tok")
    flat = tr.to_vit_jax(params)
    r = RNG.standard_normal((1, 1, 32)).astype(np.float32)
    flat["Transformer/posembed_input/pos_embedding"][:, :1] = r  # a real vit_jax cls posemb
    flat["cls"] = flat["cls"] - r
    back = tr.from_vit_jax(flat)
    np.testing.assert_allclose(back["cls"], np.asarray(params["cls"]), atol=1e-6)
    np.testing.assert_allclose(_logits(m, back, x), _logits(m, params, x), rtol=1e-5)
    with pytest.raises(ValueError, match="MAPHead"):
        tr.to_vit_jax(_model_and_params(pool_type="map")[1])


def test_big_vision_round_trip_and_params_prefix(tmp_path):
    m, params, x = _model_and_params(pool_type="map")
    path = str(tmp_path / "bv.npz")
    tr.save_npz(path, params, layout="big_vision")
    np.testing.assert_array_equal(_logits(m, tr.load_npz(path), x), _logits(m, params, x))
    # A big_vision checkpoint: params under "params/" next to optimizer state.
    full = {f"params/{k}": v for k, v in tr.flatten(params).items()}
    full["opt/mu/head/kernel"] = np.zeros((3,))
    path2 = str(tmp_path / "bv_full.npz")
    np.savez(path2, **full)
    assert tr.detect_layout(full) == "big_vision"
    np.testing.assert_array_equal(_logits(m, tr.load_npz(path2), x), _logits(m, params, x))
    np.testing.assert_array_equal(_logits(m, tr.load_npz(path2, subtree="params"), x),
                                  _logits(m, params, x))
    sub = tr.load_npz(path2, subtree="params/Transformer")
    assert set(sub) == {"encoderblock_0", "encoderblock_1", "encoder_norm"}
    with pytest.raises(ValueError, match=r"\['opt', 'params'\]"):
        tr.load_npz(path2, subtree="model")


def test_scan_params_round_trip_through_vit_jax(tmp_path):
    m, params, x = _model_and_params(scan=True)
    assert params["Transformer"]["encoderblock"]["LayerNorm_0"]["scale"].shape == (2, 32)
    path = str(tmp_path / "scan.npz")
    tr.save_npz(path, params, layout="vit_jax")
    loaded = tr.load_npz(path)
    assert "encoderblock_1" in loaded["Transformer"]
    restacked = tr.stack_blocks(loaded)
    np.testing.assert_array_equal(_logits(m, restacked, x), _logits(m, params, x))
    via_adapt = tr.adapt_for_finetune(params, loaded)
    np.testing.assert_array_equal(_logits(m, via_adapt, x), _logits(m, params, x))
    # stack(unstack(p)) == p exactly, and both are no-ops on the other layout.
    again = tr.stack_blocks(tr.unstack_blocks(params))
    for (ka, a), (kb, b) in zip(sorted(_flat(again).items()), sorted(_flat(params).items()),
                                strict=True):
        assert ka == kb
        np.testing.assert_array_equal(a, b)
    assert tr.unstack_blocks(loaded) == loaded and tr.stack_blocks(params) == params


def _read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def test_save_npz_is_atomic(tmp_path, monkeypatch):
    _, params, _ = _model_and_params()
    path = str(tmp_path / "ckpt.npz")
    tr.save_npz(path, params)
    before = _read(path)
    with pytest.raises(ValueError, match="non-numeric"):
        tr.save_npz(path, {**params, "bad": np.array(["x"])})
    assert _read(path) == before

    def failing_write(fp, arr, **kw):
        fp.write(b"partial bytes")
        raise OSError("disk full")

    monkeypatch.setattr(np.lib.format, "write_array", failing_write)
    with pytest.raises(OSError, match="disk full"):
        tr.save_npz(path, params, layout="vit_jax")
    monkeypatch.undo()
    assert _read(path) == before
    assert not os.path.exists(path + ".tmp")
    with np.load(path) as z:
        assert tr.detect_layout(z.files) == "vitx"
    with pytest.raises(ValueError, match="layout"):
        tr.save_npz(path, params, layout="torch")


def test_save_npz_bfloat16_and_load_errors(tmp_path):
    path = str(tmp_path / "bf.npz")
    tr.save_npz(path, {"w": jnp.ones((2,), jnp.bfloat16), "file": np.zeros(1)})
    loaded = tr.load_npz(path)
    assert loaded["w"].dtype == np.float32 and set(loaded) == {"w", "file"}
    missing = str(tmp_path / "nope.npz")
    with pytest.raises(FileNotFoundError, match="nope.npz"):
        tr.load_npz(missing)
    np.save(str(tmp_path / "single.npy"), np.zeros(3))
    with pytest.raises(ValueError, match="not an .npz"):
        tr.load_npz(str(tmp_path / "single.npy"))


def test_flatten_unflatten():
    tree = {"a": {"b": np.ones(2), "c": {"d": np.zeros((1, 2))}}, "e": np.float32(3.0)}
    flat = tr.flatten(tree)
    assert set(flat) == {"a/b", "a/c/d", "e"}
    back = tr.unflatten(flat)
    assert jax.tree.structure(back) == jax.tree.structure(tree)
    with pytest.raises(ValueError, match="'a/b'"):
        tr.unflatten({"a/b": 1, "a/b/c": 2})
    assert set(tr.flatten({"a/b": np.ones(1), "a": {"c": np.ones(1)}})) == {"a/b", "a/c"}
    with pytest.raises(ValueError, match="twice"):
        tr.flatten({"a/b": np.ones(1), "a": {"b": np.ones(1)}})
    with pytest.raises(ValueError, match="empty"):
        tr.flatten({"a//b": np.ones(1)})


@pytest.mark.parametrize("spec,want", [
    ("/abs/path.npz:params", ("/abs/path.npz", "params")),
    ("/abs/path.npz", ("/abs/path.npz", None)),
    ("rel/ckpt.npz:opt/target", ("rel/ckpt.npz", "opt/target")),
    ("gs://bucket/x.npz", ("gs://bucket/x.npz", None)),
    ("gs://bucket/x.npz:params/", ("gs://bucket/x.npz", "params")),
    ("workdir", ("workdir", None)),
])
def test_parse_init_spec(spec, want):
    assert tr.parse_init_spec(spec) == want


def test_parse_init_spec_errors():
    for bad in ("", "x.npz:", ":params"):
        with pytest.raises(ValueError, match="path:subtree"):
            tr.parse_init_spec(bad)
