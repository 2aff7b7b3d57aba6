"""Masked patch prediction (ViT Sec. 4.6 / App. B.1.2): corruption, targets, loss, model hook."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vitx import tasks
from vitx.models import masked_patch as mp
from vitx.models import vit
from vitx.train import steps

draw = jax.jit(mp.draw_corruption, static_argnums=(1, 2, 3))  # one compile, not one per op


def test_corruption_rates_within_binomial_bounds():
    b, n = 64, 64
    kind, source = jax.device_get(draw(jax.random.PRNGKey(3), b, n, 0.5))
    total = b * n
    corrupted = int(np.sum(kind != mp.KEEP))
    # 5 standard deviations of the binomial counts (fails by chance with p < 1e-6 each).
    assert abs(corrupted - 0.5 * total) < 5 * np.sqrt(total * 0.25), corrupted
    for k, p in ((mp.MASK, 0.8), (mp.RANDOM, 0.1), (mp.UNCHANGED, 0.1)):
        count = int(np.sum(kind == k))
        assert abs(count - p * corrupted) < 5 * np.sqrt(corrupted * p * (1 - p)), (k, count)
    own = np.broadcast_to(np.arange(n), (b, n))
    rand = kind == mp.RANDOM
    assert np.all(source[rand] != own[rand]) and np.all((source >= 0) & (source < n))
    np.testing.assert_array_equal(source[~rand], own[~rand])
    # A pure function of the key.
    again = jax.device_get(draw(jax.random.PRNGKey(3), b, n, 0.5))
    np.testing.assert_array_equal(again[0], kind)
    other = jax.device_get(draw(jax.random.PRNGKey(4), b, n, 0.5))
    assert np.any(other[0] != kind)
    with pytest.raises(ValueError, match="masked_patch_rate=1.5"):
        mp.draw_corruption(jax.random.PRNGKey(0), 2, 4, 1.5)


def test_apply_corruption_replaces_rows():
    x = jax.random.normal(jax.random.PRNGKey(0), (4, 9, 5))
    kind, source = draw(jax.random.PRNGKey(1), 4, 9, 0.7)
    emb = jnp.full((1, 1, 5), 7.0)
    out, x, kind, source = jax.device_get((jax.jit(mp.apply_corruption)(x, kind, source, emb),
                                           x, kind, source))
    for i in range(4):
        for j in range(9):
            want = {mp.MASK: np.full(5, 7.0), mp.RANDOM: x[i, source[i, j]]}.get(kind[i, j],
                                                                               x[i, j])
            np.testing.assert_array_equal(out[i, j], want)
    assert {mp.MASK, mp.RANDOM} <= set(np.unique(kind))


def numpy_targets(images: np.ndarray, p: int, bits: int = 3) -> np.ndarray:
    b, h, w, c = images.shape
    levels = 2 ** bits
    out = np.zeros((b, (h // p) * (w // p)), np.int64)
    for i in range(b):
        for r in range(h // p):
            for q in range(w // p):
                cls = 0
                for ch in range(c):
                    m = images[i, r * p:(r + 1) * p, q * p:(q + 1) * p, ch].mean()
                    level = min(int(np.floor((m + 1) / 2 * levels)), levels - 1)
                    cls = cls * levels + level
                out[i, r * (w // p) + q] = cls
    return out


@pytest.mark.parametrize("channels", [1, 3])
def test_targets_equal_numpy_recomputation(channels):
    rng = np.random.default_rng(channels)
    images = rng.uniform(-1, 1, (3, 8, 12, channels)).astype(np.float32)
    images[0, :4, :4] = 1.0  # the top of the range: the last level, not one past it
    t = tasks.get_task({"type": "masked_patch", "patch_size": 4}, 8 ** channels)
    got = np.asarray(t.targets({"image": jnp.asarray(images)}))
    want = numpy_targets(images, 4)
    np.testing.assert_array_equal(got, want)
    assert got[0, 0] == 8 ** channels - 1 and len(np.unique(got)) > 3


def test_loss_and_correct_over_corrupted_patches_only():
    t = tasks.get_task({"type": "masked_patch", "patch_size": 2}, 8)
    images = jnp.asarray(np.random.default_rng(0).uniform(-1, 1, (2, 4, 4, 1)), jnp.float32)
    targets = np.asarray(t.targets({"image": images}))  # (2, 4)
    logits = jax.random.normal(jax.random.PRNGKey(0), (2, 4, 8))
    logits = logits.at[0, 0, targets[0, 0]].set(50.0)  # patch (0, 0) right, others random
    mask = jnp.array([[1.0, 0.0, 0.0, 0.0], [0.0, 1.0, 1.0, 0.0]])
    batch, aux = {"image": images}, {"patch_mask": mask}
    logp = np.asarray(jax.nn.log_softmax(logits))
    xent = -np.take_along_axis(logp, targets[..., None], -1)[..., 0]
    want = [xent[0, 0], (xent[1, 1] + xent[1, 2]) / 2]
    np.testing.assert_allclose(t.loss(logits, batch, aux=aux), want, rtol=1e-5)
    hit = np.asarray(jnp.argmax(logits, -1)) == targets
    np.testing.assert_allclose(t.correct(logits, batch, aux=aux),
                               [1.0, (hit[1, 1] + hit[1, 2]) / 2])
    assert steps.aux_kw(t, aux) == {"aux": aux} and steps.aux_kw(tasks.get_task(None, 2),
                                                                   aux) == {}
    with pytest.raises(ValueError, match="set num_classes=512"):
        tasks.get_task({"type": "masked_patch", "patch_size": 2}, 8).targets(
            {"image": jnp.zeros((1, 4, 4, 3))})
    with pytest.raises(ValueError, match="its keys are patch_size, inputs, bits, value_range"):
        tasks.get_task({"type": "masked_patch", "patch": 4}, 8)
    with pytest.raises(ValueError, match="model.masked_patch_rate=0.5"):
        t.loss(logits, batch, aux={})
    with pytest.raises(ValueError, match="task.patch_size"):
        tasks.get_task({"type": "masked_patch", "patch_size": 4}, 8).loss(logits, batch, aux=aux)


@pytest.fixture(scope="module")
def tiny():
    model = vit.Model(8, variant="pico/4", width=16, depth=1, mlp_dim=32, num_heads=2,
                      masked_patch_rate=0.5)
    x = jax.random.uniform(jax.random.PRNGKey(0), (3, 8, 8, 1), minval=-1, maxval=1)
    params = jax.jit(model.init)(jax.random.PRNGKey(1), x)["params"]  # one compile, not per op
    return model, x, params


def test_vit_corrupts_and_predicts_per_patch(tiny):
    model, x, params = tiny
    assert params["masked_patch"]["mask_embedding"].shape == (1, 1, 16)
    assert params["head"]["kernel"].shape == (16, 8)
    apply = jax.jit(lambda p, rng, train: model.apply({"params": p}, x, train=train,
                                                      rngs={"dropout": rng}),
                    static_argnums=2)
    logits, aux = apply(params, jax.random.PRNGKey(0), False)
    assert logits.shape == (3, 4, 8) and aux["patch_mask"].shape == (3, 4)
    again = apply(params, jax.random.PRNGKey(1), False)[1]["patch_mask"]  # eval: fixed
    np.testing.assert_array_equal(aux["patch_mask"], again)
    masks = [apply(params, jax.random.PRNGKey(s), True)[1]["patch_mask"] for s in range(4)]
    assert any(np.any(m != masks[0]) for m in masks[1:])  # train: drawn from the step's rng


def test_train_step_learns_mask_embedding(tiny):
    model, x, params = tiny
    params = jax.tree.map(lambda p: p + 0.1, params)  # a non-zero head: gradients flow back
    task = tasks.get_task({"type": "masked_patch", "patch_size": 4}, 8)
    loss_fn = jax.jit(jax.value_and_grad(steps.make_loss_fn(model, task)))
    loss, grads = loss_fn(params, {"image": x}, jax.random.PRNGKey(2))
    assert np.isfinite(loss) and loss > 0
    assert np.any(np.asarray(grads["masked_patch"]["mask_embedding"]) != 0)
    # Fine-tuning: a classifier loads everything but the head and the [mask] embedding.
    clf = vit.Model(10, variant="pico/4", width=16, depth=1, mlp_dim=32, num_heads=2)
    shapes = jax.eval_shape(clf.init, jax.random.PRNGKey(0), x)["params"]
    init = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), shapes)
    loaded = vit.adapt_params(init, jax.device_get(params),
                              dont_load=["head/.*", "masked_patch/.*"])
    np.testing.assert_array_equal(loaded["embedding"]["kernel"], params["embedding"]["kernel"])
    assert "masked_patch" not in loaded and loaded["head"]["kernel"].shape == (16, 10)
