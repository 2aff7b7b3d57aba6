"""BiT ResNet: sizes, stage resolutions, weight standardisation, unit types, surgery."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vitx.models import get_model_module, resnet
from vitx.utils import npz

# Compile tests' programs without XLA's backend optimisations (~3x faster compiles on CPU).
_FAST = {"xla_backend_optimization_level": 0}


def fast(fn, *args):
    """`jax.jit(fn)(*args)`, compiled with `_FAST`; pass only arrays (or pytrees of them)."""
    return jax.jit(fn).lower(*args).compile(compiler_options=_FAST)(*args)


def shapes(model, res, channels=3):
    return jax.eval_shape(
        lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, res, res, channels))))["params"]


def n_params(tree):
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


@pytest.mark.parametrize("variant,published", [
    # BiT-v2 (timm resnetv2_{50x1,101x1,50x3}_bit, 1000 classes): 25.55M, 44.54M, 217.32M.
    ("R50x1", 25_549_352), ("R101x1", 44_541_480), ("R50x3", 217_319_080),
])
def test_param_counts(variant, published):
    assert n_params(shapes(resnet.Model(1000, variant=variant), 224)) == published


def test_stage_resolutions_and_aux():
    m = resnet.Model(1000, variant="R50x1")
    _, aux = jax.eval_shape(lambda: m.init_with_output(
        jax.random.PRNGKey(0), jnp.zeros((2, 224, 224, 3)))[0])
    res = {k: aux[k].shape[1:] for k in ("root", "stem", "stage1", "stage2", "stage3", "stage4")}
    assert res == {"root": (112, 112, 64), "stem": (56, 56, 64), "stage1": (56, 56, 256),
                   "stage2": (28, 28, 512), "stage3": (14, 14, 1024), "stage4": (7, 7, 2048)}
    assert aux["feature_map"].shape == (2, 7, 7, 2048) and aux["pre_logits"].shape == (2, 2048)
    assert resnet.input_stride(m) == (32, 32)


def test_unit_types_follow_their_references():
    pre = shapes(resnet.Model(10, variant="R26x1"), 64)
    post = shapes(resnet.Model(10, variant="R26x1", unit="post"), 64)
    # BiT-v2: no root GN, GN before each conv, plain conv_proj, pre-head GN.
    assert "gn_root" not in pre and "gn_pre_head" in pre
    assert sorted(pre["block2"]["unit1"]) == ["conv1", "conv2", "conv3", "conv_proj", "gn1",
                                              "gn2", "gn3"]
    assert pre["block2"]["unit1"]["gn1"]["scale"].shape == (256,)  # normalises the unit input
    # vit_jax / big_vision bit.py: root GN, GN after each conv and on the projection.
    assert "gn_root" in post and "gn_pre_head" not in post
    assert sorted(post["block2"]["unit1"]) == ["conv1", "conv2", "conv3", "conv_proj", "gn1",
                                               "gn2", "gn3", "gn_proj"]
    assert post["block2"]["unit1"]["gn1"]["scale"].shape == (128,)


def test_weight_standardisation():
    """StdConv's output is invariant to scaling and shifting its stored kernel (per filter)."""
    conv = resnet.StdConv(4, (3, 3), use_bias=False)
    x = jax.random.normal(jax.random.PRNGKey(0), (1, 6, 6, 2))
    p = fast(lambda x: conv.init(jax.random.PRNGKey(1), x)["params"], x)
    k2 = p["kernel"] * 5.0 + 0.3
    y1, y2 = fast(lambda p, k2, x: (conv.apply({"params": p}, x),
                                    conv.apply({"params": {"kernel": k2}}, x)), p, k2, x)
    np.testing.assert_allclose(y1, y2, rtol=1e-4, atol=1e-4)
    w = resnet.weight_standardize(p["kernel"], axis=(0, 1, 2), eps=0.0)
    np.testing.assert_allclose(w.mean(axis=(0, 1, 2)), 0, atol=1e-6)
    np.testing.assert_allclose(w.std(axis=(0, 1, 2)), 1, atol=1e-5)


@pytest.fixture(scope="module")
def tiny():
    """R26x0.125 (8-channel root, GN with 8 groups), 10 classes, non-zero head, 32x32x3."""
    model = resnet.Model(10, variant="R26x0.125", gn_groups=8, head_zeroinit=False)
    params = fast(lambda x: model.init(jax.random.PRNGKey(0), x)["params"],
                  jnp.zeros((1, 32, 32, 3)))
    return model, params


def test_forward_and_zero_head(tiny):
    model, params = tiny
    zero = resnet.Model(10, variant="R26x0.125", gn_groups=8)
    x = jax.random.normal(jax.random.PRNGKey(1), (2, 32, 32, 3))
    (logits, aux), zero_logits = fast(
        lambda p, x: (model.apply({"params": p}, x),
                      zero.apply({"params": zero.init(jax.random.PRNGKey(0), x)["params"]},
                                 x)[0]), params, x)
    assert logits.shape == (2, 10) and np.any(logits != 0)
    assert aux["stage4"].shape == (2, 1, 1, 256)
    assert not np.any(zero_logits)


def test_adapt_params_and_load(tiny, tmp_path):
    _, params = tiny
    new = resnet.Model(3, variant="R26x0.125", gn_groups=8)
    init = jax.tree.map(lambda s: np.ones(s.shape, s.dtype), shapes(new, 32))
    out = resnet.adapt_params(init, params)
    assert out["head"]["kernel"].shape == (256, 3) and not np.any(out["head"]["kernel"])
    np.testing.assert_array_equal(out["block1"]["unit1"]["conv1"]["kernel"],
                                  params["block1"]["unit1"]["conv1"]["kernel"])
    # Pre-linen GroupNorm shapes (1, 1, 1, C) are squeezed.
    old = jax.tree.map(np.asarray, params)
    old["gn_pre_head"] = {k: v.reshape(1, 1, 1, -1) for k, v in old["gn_pre_head"].items()}
    same = resnet.adapt_params(params, old)
    np.testing.assert_array_equal(same["gn_pre_head"]["scale"], params["gn_pre_head"]["scale"])
    # A feature extractor (no head) drops the checkpoint's head.
    body = resnet.Model(None, variant="R26x0.125", gn_groups=8)
    body_init = jax.tree.map(lambda s: np.ones(s.shape, s.dtype), shapes(body, 32))
    assert "head" not in body_init
    assert "head" not in resnet.adapt_params(body_init, params)
    path = tmp_path / "r26.npz"
    npz.save_npz(path, params)
    loaded = resnet.load(params, str(path), None)
    jax.tree.map(np.testing.assert_array_equal, loaded, jax.tree.map(np.asarray, params))
    with pytest.raises(ValueError, match="conv_root/kernel"):
        resnet.adapt_params(params, {k: v for k, v in params.items() if k != "conv_root"})


def test_errors_and_registry():
    with pytest.raises(ValueError, match="model.variant='R34x1'"):
        resnet.decode_variant("R34x1")
    with pytest.raises(ValueError, match="model.gn_groups=32"):
        shapes(resnet.Model(3, variant="R26x0.25"), 32)
    with pytest.raises(ValueError, match="model.unit='v1'"):
        resnet.check_input({"variant": "R50x1", "unit": "v1"}, (224, 224, 3))
    resnet.check_input({"variant": "R50x1"}, (225, 225, 3))
    assert resnet.decode_variant("R101x3") == dict(blocks=(3, 4, 23, 3), width=3.0)
    assert get_model_module("resnet") is resnet
