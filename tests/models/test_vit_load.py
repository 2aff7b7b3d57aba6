"""ViT checkpoint surgery (`vit.load`, ViT Sec. 3.2), strict merges and the .npz layouts."""

from __future__ import annotations

import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vitx.models import resize, vit
from vitx.utils import npz, tree

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


def _flat(params):
    return tree.flatten(params)


# Head and strict merge.


def test_reinit_head_and_pre_logits():
    m, params, x = _model_and_params(representation_size=16)
    out = vit.reinit_head(params, 7)
    assert out["head"]["kernel"].shape == (16, 7) and out["head"]["bias"].shape == (7,)
    assert not np.any(np.asarray(out["head"]["kernel"])) and "pre_logits" in out
    assert "head" in params and params["head"]["kernel"].shape == (16, 10)  # input untouched
    out = vit.reinit_head(params, 7, keep_pre_logits=False)
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
        tree.merge_params(init, loaded)
    msg = str(e.value)
    assert "\n" not in msg
    for part in ("a/w (model (2, 3) vs checkpoint (3, 3))", "keep (model (4,), missing",
                 "extra (checkpoint (5,), not in model)", "model_load.dont_load",
                 "fix the model config"):
        assert part in msg, (part, msg)
    assert "a/b" not in msg
    # re.fullmatch semantics: "a" does not excuse "a/w"; "extra" alone leaves the others.
    with pytest.raises(ValueError, match="a/w"):
        tree.merge_params(init, loaded, dont_load=["a", "keep", "extra"])
    with pytest.raises(ValueError, match="not a valid regex"):
        tree.merge_params(init, loaded, dont_load=["a/("])


def test_merge_params_dont_load_keeps_init_and_casts_dtype():
    init, loaded = _tiny_trees()
    out = tree.merge_params(init, loaded, dont_load=[r"a/w", "keep", "ext.*"])
    assert out["a"]["w"] is init["a"]["w"] and out["keep"] is init["keep"]
    assert "extra" not in out
    assert out["a"]["b"].dtype == jnp.float32  # loaded was float64
    np.testing.assert_array_equal(np.asarray(out["a"]["b"]), [0.0, 1.0, 2.0])
    # numpy init -> numpy result (the trainer passes host arrays).
    out = tree.merge_params(jax.device_get(init), loaded, dont_load=["a/w", "keep", "extra"])
    assert isinstance(out["a"]["b"], np.ndarray) and out["a"]["b"].dtype == np.float32


def test_merge_params_adapter_only_on_shape_mismatch():
    init, loaded = _tiny_trees()
    calls = []

    def adapt(name, value, ref):
        calls.append(name)
        return np.zeros(ref.shape) if name == "a/w" else None

    out = tree.merge_params(init, loaded, dont_load=["keep", "extra"], adapt=adapt)
    assert calls == ["a/w"] and not np.any(np.asarray(out["a"]["w"]))


# ------------------------------------------------------------------------------------------------
# Fine-tune surgery.


def test_vit_adapt_params_resolution_and_classes():
    _, src, _ = _model_and_params(16, 10)
    m_dst, dst_init, x = _model_and_params(32, 5, seed=3)
    out = vit.adapt_params(dst_init, src)
    assert jax.tree.structure(out) == jax.tree.structure(dst_init)
    want_pe = resize.resize_posemb(src["pos_embedding"], (4, 4), (8, 8))
    assert out["pos_embedding"].shape == (1, 64, 32)
    np.testing.assert_array_equal(np.asarray(out["pos_embedding"]), np.asarray(want_pe))
    assert out["head"]["kernel"].shape == (32, 5)
    assert not np.any(np.asarray(out["head"]["kernel"])) and not np.any(out["head"]["bias"])
    fo, fs = _flat(out), _flat(src)
    for name, v in fo.items():
        if name != "pos_embedding" and not name.startswith("head/"):
            np.testing.assert_array_equal(v, fs[name], err_msg=name)
    assert _logits(m_dst, out, x).shape == (2, 5)


def test_vit_adapt_params_same_config_is_identity():
    _, src, _ = _model_and_params(16, 10)
    _, init, _ = _model_and_params(16, 10, seed=3)
    out = _flat(vit.adapt_params(init, src))
    for name, v in _flat(src).items():
        np.testing.assert_array_equal(out[name], v, err_msg=name)


def test_vit_adapt_params_patch_size_scan_and_errors():
    _, src, _ = _model_and_params(16, 10)  # pico/4, 4x4 grid
    _, init, _ = _model_and_params(32, 10, variant="pico/8", seed=3, scan=True)  # 4x4 grid
    out = vit.adapt_params(init, src)
    np.testing.assert_allclose(
        np.asarray(out["embedding"]["kernel"]),
        np.asarray(resize.pi_resize_patch_kernel(src["embedding"]["kernel"], (8, 8))), atol=1e-6)
    stacked = npz.stack_blocks(src)["Transformer"]["encoderblock"]
    np.testing.assert_array_equal(np.asarray(out["Transformer"]["encoderblock"]["LayerNorm_0"]
                                             ["scale"]),
                                  np.asarray(stacked["LayerNorm_0"]["scale"]))
    # A different width cannot be adapted: the mismatching params are named, the first
    # tree.MAX_LISTED of them (issue 11: a bounded message), then how many more.
    _, wide, _ = _model_and_params(16, 10, variant="nano/4", seed=3)
    with pytest.raises(ValueError) as e:
        vit.adapt_params(wide, src)
    for name in ("cannot load 70 param(s)", "Transformer/encoder_norm/scale (model (64,) vs "
                 "checkpoint (32,))", "model_load.dont_load", "; ... and 50 more"):
        assert name in str(e.value), name
    # Non-square grids must be given explicitly.
    _, rect, _ = _model_and_params(16, 10, seed=3)
    bad = dict(src, pos_embedding=src["pos_embedding"][:, :12])
    with pytest.raises(ValueError, match="pass the grid"):
        vit.adapt_params(rect, bad)
    out = vit.adapt_params(rect, bad, old_grid=(3, 4))
    assert out["pos_embedding"].shape == (1, 16, 32)


def test_vit_adapt_params_drops_pre_logits_the_model_lacks():
    _, src, _ = _model_and_params(16, 10, representation_size=16)
    m, init, x = _model_and_params(16, 3, seed=3)
    out = vit.adapt_params(init, src)
    assert "pre_logits" not in out and out["head"]["kernel"].shape == (32, 3)
    np.testing.assert_array_equal(_logits(m, out, x), np.zeros((2, 3)))


# ------------------------------------------------------------------------------------------------
# npz interop.


@pytest.mark.parametrize("pool", ["tok", "gap"])
def test_vit_jax_npz_round_trip_gives_identical_logits(tmp_path, pool):
    m, params, x = _model_and_params(pool_type=pool)
    path = str(tmp_path / "ckpt.npz")
    npz.save_npz(path, params, layout="vit_jax")
    with np.load(path) as z:
        names = set(z.files)
        pe = z["Transformer/posembed_input/pos_embedding"]
    assert "Transformer/encoderblock_1/MultiHeadDotProductAttention_1/query/kernel" in names
    assert "Transformer/encoderblock_0/MlpBlock_3/Dense_1/bias" in names
    assert "pos_embedding" not in names
    assert pe.shape == (1, 16 + (pool == "tok"), 32)
    loaded = npz.load_npz(path)  # layout auto-detected
    assert jax.tree.structure(loaded) == jax.tree.structure(params)
    np.testing.assert_array_equal(_logits(m, loaded, x), _logits(m, params, x))


def test_from_vit_jax_folds_cls_posemb():
    m, params, x = _model_and_params(pool_type="tok")
    flat = npz.to_vit_jax(params)
    r = RNG.standard_normal((1, 1, 32)).astype(np.float32)
    flat["Transformer/posembed_input/pos_embedding"][:, :1] = r  # a real vit_jax cls posemb
    flat["cls"] = flat["cls"] - r
    back = npz.from_vit_jax(flat)
    np.testing.assert_allclose(back["cls"], np.asarray(params["cls"]), atol=1e-6)
    np.testing.assert_allclose(_logits(m, back, x), _logits(m, params, x), rtol=1e-5)
    with pytest.raises(ValueError, match="MAPHead"):
        npz.to_vit_jax(_model_and_params(pool_type="map")[1])


def test_big_vision_round_trip_and_params_prefix(tmp_path):
    m, params, x = _model_and_params(pool_type="map")
    path = str(tmp_path / "bv.npz")
    npz.save_npz(path, params, layout="big_vision")
    np.testing.assert_array_equal(_logits(m, npz.load_npz(path), x), _logits(m, params, x))
    # A big_vision checkpoint: params under "params/" next to optimizer state.
    full = {f"params/{k}": v for k, v in tree.flatten(params).items()}
    full["opt/mu/head/kernel"] = np.zeros((3,))
    path2 = str(tmp_path / "bv_full.npz")
    np.savez(path2, **full)
    assert npz.detect_layout(full) == "big_vision"
    np.testing.assert_array_equal(_logits(m, npz.load_npz(path2), x), _logits(m, params, x))
    np.testing.assert_array_equal(_logits(m, npz.load_npz(path2, subtree="params"), x),
                                  _logits(m, params, x))
    sub = npz.load_npz(path2, subtree="params/Transformer")
    assert set(sub) == {"encoderblock_0", "encoderblock_1", "encoder_norm"}
    with pytest.raises(ValueError, match=r"\['opt', 'params'\]"):
        npz.load_npz(path2, subtree="model")


def test_scan_params_round_trip_through_vit_jax(tmp_path):
    m, params, x = _model_and_params(scan=True)
    assert params["Transformer"]["encoderblock"]["LayerNorm_0"]["scale"].shape == (2, 32)
    path = str(tmp_path / "scan.npz")
    npz.save_npz(path, params, layout="vit_jax")
    loaded = npz.load_npz(path)
    assert "encoderblock_1" in loaded["Transformer"]
    restacked = npz.stack_blocks(loaded)
    np.testing.assert_array_equal(_logits(m, restacked, x), _logits(m, params, x))
    via_adapt = vit.adapt_params(params, loaded)
    np.testing.assert_array_equal(_logits(m, via_adapt, x), _logits(m, params, x))
    # stack(unstack(p)) == p exactly, and both are no-ops on the other layout.
    again = npz.stack_blocks(npz.unstack_blocks(params))
    for (ka, a), (kb, b) in zip(sorted(_flat(again).items()), sorted(_flat(params).items()),
                                strict=True):
        assert ka == kb
        np.testing.assert_array_equal(a, b)
    assert npz.unstack_blocks(loaded) == loaded and npz.stack_blocks(params) == params


def _read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def test_save_npz_is_atomic(tmp_path, monkeypatch):
    _, params, _ = _model_and_params()
    path = str(tmp_path / "ckpt.npz")
    npz.save_npz(path, params)
    before = _read(path)
    with pytest.raises(ValueError, match="non-numeric"):
        npz.save_npz(path, {**params, "bad": np.array(["x"])})
    assert _read(path) == before

    def failing_write(fp, arr, **kw):
        fp.write(b"partial bytes")
        raise OSError("disk full")

    monkeypatch.setattr(np.lib.format, "write_array", failing_write)
    with pytest.raises(OSError, match="disk full"):
        npz.save_npz(path, params, layout="vit_jax")
    monkeypatch.undo()
    assert _read(path) == before
    assert not os.path.exists(path + ".tmp")
    with np.load(path) as z:
        assert npz.detect_layout(z.files) == "vitx"
    with pytest.raises(ValueError, match="layout"):
        npz.save_npz(path, params, layout="torch")


def test_save_npz_bfloat16_and_load_errors(tmp_path):
    path = str(tmp_path / "bf.npz")
    npz.save_npz(path, {"w": jnp.ones((2,), jnp.bfloat16), "file": np.zeros(1)})
    loaded = npz.load_npz(path)
    assert loaded["w"].dtype == np.float32 and set(loaded) == {"w", "file"}
    missing = str(tmp_path / "nope.npz")
    with pytest.raises(FileNotFoundError, match="nope.npz"):
        npz.load_npz(missing)
    np.save(str(tmp_path / "single.npy"), np.zeros(3))
    with pytest.raises(ValueError, match="not an .npz"):
        npz.load_npz(str(tmp_path / "single.npy"))
