"""CoAtNet: sizes, stage resolutions, relative attention, table resize, surgery, training."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from vitx.models import coatnet, get_model_module
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
# Relative attention.


def _attention(mode="pre_softmax", features=8, head_size=4, grid=(3, 4), seed=0):
    att = coatnet.RelativeAttention(features, head_size, mode)
    x = jax.random.normal(jax.random.PRNGKey(seed), (2, grid[0] * grid[1], 6))
    params = fast(lambda x: att.init(jax.random.PRNGKey(1), x, grid)["params"], x)
    return att, x, params


@pytest.mark.parametrize("mode", coatnet.REL_POS_MODES)
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
    bias = np.asarray(coatnet.relative_bias(table, (h, w)))
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
        coatnet.RelativeAttention(48).init(jax.random.PRNGKey(0), jnp.zeros((1, 4, 8)), (2, 2))
    with pytest.raises(ValueError, match="model.rel_pos_mode='both'"):
        coatnet.RelativeAttention(8, 4, "both").init(jax.random.PRNGKey(0),
                                                     jnp.zeros((1, 4, 8)), (2, 2))
    with pytest.raises(ValueError, match="does not fit the 3x3 token grid"):
        coatnet.relative_bias(jnp.zeros((2, 3, 3)), (3, 3))


# ------------------------------------------------------------------------------------------------
# Relative-table resize and fine-tune surgery.


def test_resize_rel_table():
    table = jax.random.normal(jax.random.PRNGKey(0), (12, 27, 27))
    assert coatnet.resize_rel_table(table, (14, 14)) is table  # identity at equal size
    np.testing.assert_array_equal(coatnet.resize_rel_table(table, 14), table)
    big = coatnet.resize_rel_table(table, (24, 24))
    assert big.shape == (12, 47, 47) and big.dtype == table.dtype
    const = jnp.full((2, 13, 13), 0.7)
    np.testing.assert_allclose(coatnet.resize_rel_table(const, (12, 5)), 0.7, atol=1e-6)
    # The offset-0 entry stays at the centre when upsampling a centred bump.
    bump = jnp.zeros((1, 7, 7)).at[0, 3, 3].set(1.0)
    out = coatnet.resize_rel_table(bump, (8, 8))
    assert np.unravel_index(np.argmax(out[0]), out.shape[1:]) == (7, 7)
    with pytest.raises(ValueError, match="is not \\(heads, 2H-1, 2W-1\\)"):
        coatnet.resize_rel_table(jnp.zeros((2, 4, 5)), 3)


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
        coatnet.resize_rel_table(src_p["stage4"]["block0"]["attention"]["rel_table"], (2, 2)),
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
