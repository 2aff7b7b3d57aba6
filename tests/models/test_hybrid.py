"""Hybrid ViT (BiT ResNet stem + ViT): sizes, vit_jax names and npz round trip, training."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from vitx.models import get_model_module, hybrid
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


def _vit_jax_r50_b16_count(res, classes=1000):
    """Parameter count of vit_jax's `R50+ViT-B_16` (models_vit.py + models_resnet.py), by hand."""
    n = 7 * 7 * 3 * 64 + 2 * 64  # conv_root, gn_root
    cin = 64
    for stage, units in enumerate((3, 4, 9)):
        m = 64 * 2**stage
        for u in range(units):
            n += cin * m + 2 * m + 9 * m * m + 2 * m + m * 4 * m + 2 * 4 * m  # conv/gn 1..3
            if u == 0:
                n += cin * 4 * m + 2 * 4 * m  # conv_proj, gn_proj
            cin = 4 * m
    d, mlp, tokens = 768, 3072, (res // 16) ** 2
    n += cin * d + d  # embedding (1x1 patches)
    n += d + (tokens + 1) * d  # cls, posembed_input (with the cls slot)
    block = 2 * 2 * d + 4 * (d * d + d) + (d * mlp + mlp) + (mlp * d + d)
    n += 12 * block + 2 * d  # encoderblock_{i}, encoder_norm
    return n + d * classes + classes  # head


def test_r50_b16_param_count_at_384():
    params = shapes(hybrid.Model(1000, variant="R50+B/16"), 384)
    n = n_params(params)
    # vitx stores no posemb slot for the cls token (big_vision layout): `width` fewer.
    assert n + 768 == _vit_jax_r50_b16_count(384) == 98_950_952
    assert abs((n + 768) / 98.95e6 - 1) < 0.005  # timm's port: 98.95M


def test_vit_jax_param_names_and_shapes():
    p = shapes(hybrid.Model(1000, variant="R50+B/16"), 224)
    assert sorted(p) == ["Transformer", "block1", "block2", "block3", "cls", "conv_root",
                         "embedding", "gn_root", "head", "pos_embedding"]
    assert p["conv_root"]["kernel"].shape == (7, 7, 3, 64)
    assert sorted(p["block1"]["unit1"]) == ["conv1", "conv2", "conv3", "conv_proj", "gn1", "gn2",
                                            "gn3", "gn_proj"]
    assert sorted(p["block3"]) == [f"unit{i}" for i in range(1, 10)]
    assert p["block3"]["unit1"]["conv_proj"]["kernel"].shape == (1, 1, 512, 1024)
    assert p["embedding"]["kernel"].shape == (1, 1, 1024, 768)
    assert p["pos_embedding"].shape == (1, 14 * 14, 768)


@pytest.mark.parametrize("variant,blocks,width,patch,stride", [
    ("R50+B/16", (3, 4, 9), 1.0, (1, 1), 16),
    ("R50+ViT-B_16", (3, 4, 9), 1.0, (1, 1), 16),
    ("R26+S/32", (2, 2, 2, 2), 1.0, (1, 1), 32),
    ("R50+L/32", (3, 4, 6, 3), 1.0, (1, 1), 32),
    ("R26x0.25+pico/8", (2, 6), 0.25, (1, 1), 8),
    ("R50+B/64", (3, 4, 6, 3), 1.0, (2, 2), 64),
])
def test_decode_variant(variant, blocks, width, patch, stride):
    cfg = hybrid.decode_variant(variant)
    assert (cfg["resnet_blocks"], cfg["resnet_width"], cfg["patch_size"]) == (blocks, width, patch)
    assert hybrid.input_stride(hybrid.Model(10, variant=variant)) == (stride, stride)


def test_errors_and_image_size_check():
    with pytest.raises(ValueError, match="model.variant='R34\\+B/16'"):
        hybrid.decode_variant("R34+B/16")
    with pytest.raises(ValueError, match="power of two >= 4"):
        hybrid.decode_variant("R50+B/12")
    with pytest.raises(ValueError, match="effective patch 16x16 .* does not divide the image "
                                         "size 40x40"):
        shapes(hybrid.Model(3, variant="R50+B/16"), 40)
    with pytest.raises(ValueError, match="does not divide the image size 40x40"):
        hybrid.check_input({"variant": "R50+B/16"}, (40, 40, 3))
    hybrid.check_input({"variant": "R50+B/16"}, (384, 384, 3))
    hybrid.check_input({"variant": "R50+B/16", "patch_size": 2}, (32, 32, 3))
    with pytest.raises(ValueError, match="model.gn_groups=32"):
        shapes(hybrid.Model(3, variant="R26x0.125+pico/16"), 32)
    assert get_model_module("hybrid") is hybrid and get_model_module("vit_hybrid") is hybrid


TINY = dict(variant="R26x0.125+pico/16", gn_groups=8)  # 8-channel root, 3 stages, ViT pico


@pytest.fixture(scope="module")
def tiny():
    """A tiny hybrid (5 classes, non-zero head) on 32x32x3: 2x2 tokens; params init once."""
    model = hybrid.Model(5, head_zeroinit=False, **TINY)
    params = fast(lambda x: model.init(jax.random.PRNGKey(0), x)["params"],
                  jnp.zeros((2, 32, 32, 3)))
    return model, params


def test_vit_jax_npz_round_trip(tiny, tmp_path):
    model, params = tiny
    path = tmp_path / "r26_pico_vit_jax.npz"
    npz.save_npz(path, params, layout="vit_jax")
    with np.load(path) as f:
        names = set(f.files)
        assert f["Transformer/posembed_input/pos_embedding"].shape == (1, 1 + 4, 32)
    for name in ("conv_root/kernel", "gn_root/scale", "block1/unit1/conv1/kernel",
                 "block1/unit1/gn_proj/bias", "block3/unit4/gn3/scale", "embedding/kernel",
                 "cls", "Transformer/encoderblock_0/MultiHeadDotProductAttention_1/query/kernel",
                 "Transformer/encoderblock_1/MlpBlock_3/Dense_0/kernel", "head/kernel"):
        assert name in names, name
    loaded = hybrid.load(params, str(path), None)
    jax.tree.map(np.testing.assert_array_equal, loaded, jax.tree.map(np.asarray, params))
    x = jax.random.normal(jax.random.PRNGKey(1), (2, 32, 32, 3))
    a, b = fast(lambda p, q, x: (model.apply({"params": p}, x)[0],
                                 model.apply({"params": q}, x)[0]), params, loaded, x)
    assert np.any(a != 0)
    np.testing.assert_array_equal(a, b)


def test_pre_linen_groupnorm_shapes_load(tiny, tmp_path):
    """vit_jax's released files store GroupNorm scale/bias as (1, 1, 1, C) (pre-linen flax)."""
    _, params = tiny
    flat = npz.to_vit_jax(params)
    old = {k: (v.reshape(1, 1, 1, -1) if "/gn" in f"/{k}" and k.endswith(("scale", "bias"))
               else v) for k, v in flat.items()}
    assert old["block1/unit1/gn1/scale"].shape == (1, 1, 1, 8)
    path = tmp_path / "old.npz"
    np.savez(path, **old)
    loaded = hybrid.load(params, str(path), None)
    jax.tree.map(np.testing.assert_array_equal, loaded, jax.tree.map(np.asarray, params))


def test_finetune_surgery_to_new_resolution_and_classes(tiny):
    _, params = tiny
    new = hybrid.Model(3, **TINY)
    init = jax.tree.map(lambda s: np.ones(s.shape, s.dtype), shapes(new, 64))
    out = hybrid.adapt_params(init, params)
    assert out["pos_embedding"].shape == (1, 16, 32)  # 2x2 -> 4x4 tokens, resized
    assert not np.any(out["head"]["kernel"]) and out["head"]["kernel"].shape == (32, 3)
    np.testing.assert_array_equal(out["block2"]["unit1"]["conv2"]["kernel"],
                                  params["block2"]["unit1"]["conv2"]["kernel"])


def test_training_lowers_loss(tiny):
    model, params = tiny
    params = {**params, "head": jax.tree.map(jnp.zeros_like, params["head"])}
    x = jax.random.normal(jax.random.PRNGKey(0), (8, 32, 32, 3))
    y = jnp.arange(8) % 5
    opt = optax.adam(3e-3)

    def step(p, o):
        def loss_fn(p):
            logits, _ = model.apply({"params": p}, x, train=True)
            return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
        loss, g = jax.value_and_grad(loss_fn)(p)
        updates, o = opt.update(g, o, p)
        return optax.apply_updates(p, updates), o, loss

    opt_state = opt.init(params)
    step = jax.jit(step).lower(params, opt_state).compile(compiler_options=_FAST)
    losses = []
    for _ in range(12):
        params, opt_state, loss = step(params, opt_state)
        losses.append(float(loss))
    assert np.isclose(losses[0], np.log(5), atol=1e-4)  # zero head
    assert losses[-1] < 0.7 * losses[0], losses
