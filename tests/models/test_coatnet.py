"""CoAtNet: sizes, stage resolutions, config errors, surgery, training (its relative attention:
test_relative.py)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from vitx.models import coatnet, get_model_module, relative
from vitx.utils import npz

# Compile tests' programs without XLA's backend optimisations: ~3x faster compiles on CPU (the
# programs run once or a few times), which keeps this file well under 30 s on two cores.
_FAST = {"xla_backend_optimization_level": 0}


def fast(fn, *args):
    """`jax.jit(fn)(*args)`, compiled with `_FAST`; pass only arrays (or pytrees of them)."""
    return jax.jit(fn).lower(*args).compile(compiler_options=_FAST)(*args)


def n_params(model, res, channels=3):
    shapes = jax.eval_shape(
        lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, res, res, channels))))
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(shapes["params"]))


@pytest.mark.parametrize("variant,target", [
    # timm's paper-faithful port (`coatnet_0..3`, 1000 classes, 224 px); paper Table 3: 25M,
    # 42M, 75M, 168M, 275M.
    ("coatnet-0", 25.04e6), ("coatnet-1", 42.23e6), ("coatnet-2", 74.68e6),
    ("coatnet-3", 166.97e6), ("coatnet-4", 275e6),
])
def test_param_counts(variant, target):
    n = n_params(coatnet.Model(1000, variant=variant), 224)
    assert abs(n / target - 1) < 0.02, (variant, n)


def test_param_count_exact_coatnet0():
    # Summed by hand from the structure (timm's coatnet_0 has the same count).
    assert n_params(coatnet.Model(1000, variant="coatnet-0"), 224) == 25_036_820


def test_stage_resolutions_at_224():
    m = coatnet.Model(1000, variant="coatnet-0")
    _, aux = jax.eval_shape(lambda: m.init_with_output(
        jax.random.PRNGKey(0), jnp.zeros((2, 224, 224, 3)))[0])
    shapes = {k: aux[k].shape for k in ("stem", "stage1", "stage2", "stage3", "stage4")}
    assert shapes == {"stem": (2, 112, 112, 64), "stage1": (2, 56, 56, 96),
                      "stage2": (2, 28, 28, 192), "stage3": (2, 14, 14, 384),
                      "stage4": (2, 7, 7, 768)}
    assert aux["pre_logits"].shape == (2, 768) and aux["logits"].shape == (2, 1000)
    assert coatnet.input_stride(m) == (32, 32)


@pytest.mark.parametrize("layout", ["CCTT", "CCCT", "CTTT", "CCCC"])
def test_layouts(layout):
    m = coatnet.Model(3, variant="coatnet-pico", layout=layout)
    p = jax.eval_shape(lambda: m.init(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 1))))
    for s, kind in enumerate(layout, 1):
        block = p["params"][f"stage{s}"]["block0"]
        assert ("attention" in block) == (kind == "T")
        assert ("depthwise_conv" in block) == (kind == "C")
    n_bn = len(jax.tree.leaves(p["batch_stats"]))
    assert n_bn == 2 * (1 + 3 * layout.count("C"))  # mean + var: stem + 3 per MBConv


def test_config_errors():
    with pytest.raises(ValueError, match="model.layout='TTCC'"):
        coatnet.Model(3, variant="pico", layout="TTCC").init(
            jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)))
    with pytest.raises(ValueError, match="does not divide the image size 40x40"):
        coatnet.Model(3, variant="pico").init(jax.random.PRNGKey(0), jnp.zeros((1, 40, 40, 3)))
    with pytest.raises(ValueError, match="model.variant='coatnet-9'"):
        coatnet.decode_variant("coatnet-9")
    with pytest.raises(ValueError, match="model.stage_strides"):
        coatnet.check_input({"variant": "coatnet-pico"}, (40, 40, 1))
    coatnet.check_input({"variant": "coatnet-pico", "stage_strides": (1, 2, 2, 2)}, (16, 16, 1))
    assert coatnet.decode_variant("CoAtNet-2")["widths"] == (128, 256, 512, 1024)


def test_registry():
    assert get_model_module("coatnet") is coatnet


# ------------------------------------------------------------------------------------------------
# Fine-tune surgery.


@pytest.fixture(scope="module")
def pico():
    """A tiny CoAtNet (4 classes, 32x32x1): (model, variables), initialised once for the module
    in one compiled program (an eager init costs ~10 s of per-op compiles on CPU)."""
    model = coatnet.Model(4, variant="coatnet-pico")
    variables = fast(lambda x: model.init(jax.random.PRNGKey(0), x), jnp.zeros((8, 32, 32, 1)))
    return model, variables


def _random_like(shapes, seed=0):
    """Random numpy params of the given shape tree (no compile, unlike a real init)."""
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda s: rng.normal(size=s.shape).astype(s.dtype), shapes)


def test_adapt_params_resizes_tables_and_reinits_head(pico):
    _, variables = pico
    src_p = variables["params"]
    dst = coatnet.Model(10, variant="coatnet-pico")
    dst_p = _random_like(jax.eval_shape(
        lambda: dst.init(jax.random.PRNGKey(0), jnp.zeros((1, 64, 64, 1))))["params"])
    assert src_p["stage3"]["block0"]["attention"]["rel_table"].shape == (2, 3, 3)
    assert dst_p["stage3"]["block0"]["attention"]["rel_table"].shape == (2, 7, 7)
    out = coatnet.adapt_params(dst_p, src_p)
    assert jax.tree.map(np.shape, out) == jax.tree.map(np.shape, dst_p)
    assert out["head"]["kernel"].shape == (128, 10)
    assert not np.any(out["head"]["kernel"]) and not np.any(out["head"]["bias"])
    np.testing.assert_array_equal(out["stage1"]["block0"]["expand_conv"]["kernel"],
                                  src_p["stage1"]["block0"]["expand_conv"]["kernel"])
    np.testing.assert_allclose(
        out["stage4"]["block0"]["attention"]["rel_table"],
        relative.resize_rel_table(src_p["stage4"]["block0"]["attention"]["rel_table"], (2, 2)),
        atol=1e-6)
    # Same resolution and classes: everything loads unchanged.
    same = coatnet.adapt_params(src_p, src_p)
    jax.tree.map(np.testing.assert_array_equal, same, jax.tree.map(np.asarray, src_p))
    # dont_load keeps init; an unknown extra param is an error.
    kept = coatnet.adapt_params(dst_p, src_p, dont_load=(".*rel_table",))
    np.testing.assert_array_equal(kept["stage3"]["block0"]["attention"]["rel_table"],
                                  dst_p["stage3"]["block0"]["attention"]["rel_table"])
    with pytest.raises(ValueError, match="extra/w"):
        coatnet.adapt_params(src_p, {**src_p, "extra": {"w": np.zeros(3)}})


def test_load_from_npz(pico, tmp_path):
    params = pico[1]["params"]
    path = tmp_path / "coat.npz"
    npz.save_npz(path, params)
    loaded = coatnet.load(params, str(path), None)
    jax.tree.map(np.testing.assert_array_equal, loaded, jax.tree.map(np.asarray, params))


# ------------------------------------------------------------------------------------------------
# BatchNorm state and training.


def test_batchnorm_state_semantics():
    """BN statistics live in `batch_stats`; train mode updates them with momentum 0.9 (running
    = 0.9 running + 0.1 batch), eval mode normalises with them and mutates nothing."""
    stem = coatnet._Stem(4)
    x = jax.random.normal(jax.random.PRNGKey(1), (4, 8, 8, 1)) * 2 + 1
    v = fast(lambda x: stem.init(jax.random.PRNGKey(0), x), x)
    assert set(v) == {"params", "batch_stats"}
    assert set(v["batch_stats"]["norm1"]) == {"mean", "var"}
    _, new = fast(lambda v, x: stem.apply(v, x, train=True, mutable=["batch_stats"]), v, x)
    conv = jax.lax.conv_general_dilated(x, v["params"]["conv1"]["kernel"], (2, 2), "SAME",
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"))
    np.testing.assert_allclose(new["batch_stats"]["norm1"]["mean"],
                               0.1 * conv.mean(axis=(0, 1, 2)), rtol=1e-4, atol=1e-6)
    # Eval: normalised with the running statistics, so an example's output is independent of
    # the rest of the batch.
    a, b = fast(lambda v, x: (stem.apply(v, x), stem.apply(v, x[:1])), {**v, **new}, x)
    np.testing.assert_allclose(a[:1], b, atol=1e-5)


def test_training_lowers_loss_and_updates_batch_stats(pico):
    model, variables = pico
    x = jax.random.normal(jax.random.PRNGKey(0), (8, 32, 32, 1))
    y = jnp.arange(8) % 4
    params, stats = variables["params"], variables["batch_stats"]
    opt = optax.adam(3e-3)
    opt_state = opt.init(params)

    def loss_fn(p, s, key):
        (logits, _), new = model.apply({"params": p, "batch_stats": s}, x, train=True,
                                       mutable=["batch_stats"], rngs={"dropout": key})
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), new

    def step(p, s, o, key):
        (loss, new), g = jax.value_and_grad(loss_fn, has_aux=True)(p, s, key)
        updates, o = opt.update(g, o, p)
        return optax.apply_updates(p, updates), new["batch_stats"], o, loss

    step = jax.jit(step).lower(params, stats, opt_state, jax.random.PRNGKey(0)).compile(
        compiler_options=_FAST)
    losses = []
    for i in range(12):
        params, stats, opt_state, loss = step(params, stats, opt_state, jax.random.PRNGKey(i))
        losses.append(float(loss))
    assert np.isclose(losses[0], np.log(4), atol=1e-4)  # zero-initialised head
    assert losses[-1] < 0.7 * losses[0], losses
    before = variables["batch_stats"]["stage1"]["block0"]["pre_norm"]["mean"]
    after = stats["stage1"]["block0"]["pre_norm"]["mean"]
    assert not np.allclose(before, after)
    assert all(np.all(np.isfinite(v)) for v in jax.tree.leaves(stats))
