"""Mixup / CutMix in the train step (`vitx.train.mixup`): label sums, Beta lambdas (KS test),
CutMix box areas, determinism in the rng, gradient accumulation and multi-task batches."""

from __future__ import annotations

import types

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from scipy import stats

from vitx.tasks import classification
from vitx.train import mixup, steps
from vitx.utils import ConfigError

K = 10
MIX = jax.jit(mixup.mix, static_argnums=0)  # one program per config (eager is slow)


# Few distinct configs and shapes: each (config, shape) is one compiled program (~4 s of CPU:
# the Beta sampler), shared by the tests through `MIX`'s jit cache.
MIXUP_ELEM = mixup.MixupConfig(mixup_alpha=0.8, prob=0.5, mode="elem")
CUT_ELEM = mixup.MixupConfig(cutmix_alpha=1.0, mode="elem")
CUT_BATCH = mixup.MixupConfig(cutmix_alpha=1.0, mode="batch")
BOTH_ELEM = mixup.MixupConfig(mixup_alpha=0.4, cutmix_alpha=1.0, switch_prob=0.3, mode="elem")
B, H, W = 16, 8, 12


def smoothed(labels: np.ndarray, eps: float = 0.1) -> jnp.ndarray:
    """(B,) int -> (B, K) labels smoothed as the `onehot(K, label_smoothing=eps)` pp op."""
    return jnp.asarray(np.eye(K)[labels] * (1 - eps) + eps / K, jnp.float32)


def constant_images() -> jnp.ndarray:
    """(B, H, W, 1): image i is all i, so each mixed pixel says whose it is."""
    return jnp.broadcast_to(jnp.arange(B, dtype=jnp.float32)[:, None, None, None],
                            (B, H, W, 1))


@pytest.mark.parametrize("cfg", [MIXUP_ELEM, CUT_BATCH], ids=["mixup_elem", "cutmix_batch"])
def test_mixed_labels_sum_to_one_and_are_mixed(cfg):
    y = smoothed(np.arange(B) % K)
    _, mixed, lam = MIX(cfg, jax.random.PRNGKey(0), {"image": constant_images()}, y)
    np.testing.assert_allclose(np.sum(mixed, -1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(mixed, lam[:, None] * y + (1 - lam[:, None]) * y[::-1],
                               rtol=1e-6)
    assert not np.allclose(mixed, y)  # something was mixed
    assert lam.shape == ((1,) if cfg.mode == "batch" else (B,))


def test_lambdas_follow_beta_and_switch_prob():
    """Mixup's and CutMix's lambda draws pass KS tests against Beta(a, a) of their own alpha
    (and fail one against the other alpha, so the test can tell them apart); CutMix is picked
    with probability switch_prob."""
    n = 4000
    lam, use_cutmix = jax.jit(mixup.sample, static_argnums=(0, 2))(
        BOTH_ELEM, jax.random.PRNGKey(2), n)
    lam, use_cutmix = np.asarray(lam, np.float64), np.asarray(use_cutmix)
    assert abs(use_cutmix.mean() - 0.3) < 4 * np.sqrt(0.3 * 0.7 / n)
    assert stats.kstest(lam[use_cutmix], stats.beta(1.0, 1.0).cdf).pvalue > 0.01
    assert stats.kstest(lam[~use_cutmix], stats.beta(0.4, 0.4).cdf).pvalue > 0.01
    assert stats.kstest(lam[~use_cutmix], stats.beta(1.0, 1.0).cdf).pvalue < 1e-4


@pytest.mark.parametrize("cfg", [CUT_ELEM, CUT_BATCH], ids=["elem", "batch"])
def test_cutmix_box_area_matches_lambda(cfg):
    """Each CutMix'ed image is its own pixels outside one axis-aligned box and its partner's
    inside; the fraction of own pixels is exactly the label weight lam."""
    lams = []
    y = smoothed(np.arange(B) % K)
    for seed in range(3):
        out, mixed, lam = MIX(cfg, jax.random.PRNGKey(seed), {"image": constant_images()}, y)
        img = np.asarray(out["image"])[..., 0]
        lam = np.broadcast_to(np.asarray(lam), (B,))
        for i in range(B):
            own, partner = img[i] == i, img[i] == B - 1 - i
            assert np.all(own | partner)
            assert own.mean() == pytest.approx(lam[i], abs=1e-6)
            rows, cols = np.any(partner, 1), np.any(partner, 0)
            assert np.array_equal(partner, rows[:, None] & cols[None, :])  # a rectangle
        np.testing.assert_allclose(mixed, lam[:, None] * y + (1 - lam[:, None]) * y[::-1],
                                   rtol=1e-5)
        lams.append(lam)
    assert np.any(np.concatenate(lams) < 1)


def test_mixup_is_the_convex_combination_and_prob_leaves_examples_untouched():
    x = jax.random.normal(jax.random.PRNGKey(3), (B, H, W, 1))
    out, _, lam = MIX(MIXUP_ELEM, jax.random.PRNGKey(4), {"image": x},
                      smoothed(np.arange(B) % K))
    lam = np.asarray(lam)[:, None, None, None]
    np.testing.assert_allclose(out["image"], lam * x + (1 - lam) * x[::-1], rtol=1e-5,
                               atol=1e-6)
    kept = lam[:, 0, 0, 0] == 1.0
    assert 0 < kept.sum() < B  # prob=0.5: some examples are left as they are, bitwise
    assert np.array_equal(np.asarray(out["image"])[kept], np.asarray(x)[kept])


def test_batch_fn_is_a_pure_function_of_the_step_rng_and_mixes_each_task():
    """Same (seed, step) -> the same mixed batches bitwise; another step or seed -> others.
    A multi-task step mixes each task's batch with its own inputs, labels and rng."""
    t_a = classification.Task(num_classes=K)
    t_b = classification.Task(num_classes=3, inputs="video", labels="y")
    fn = jax.jit(mixup.batch_fn(mixup.MixupConfig(mixup_alpha=1.0, mode="batch"), [t_a, t_b]))
    a = {"image": jax.random.normal(jax.random.PRNGKey(5), (4, 8, 8, 1)),
         "label": jnp.arange(4)}
    b = {"video": jnp.ones((4, 2, 8, 8, 1)), "y": jnp.asarray(np.eye(3)[[0, 1, 2, 0]])}

    def at(seed: int, step: int) -> tuple:
        return jax.device_get(fn((a, b), jax.random.fold_in(jax.random.PRNGKey(seed), step)))
    (out_a, out_b), (again_a, _) = at(0, 3), at(0, 3)
    assert out_a["image"].tobytes() == again_a["image"].tobytes()
    assert out_a["label"].tobytes() == again_a["label"].tobytes()
    assert out_a["label"].shape == (4, K) and out_b["y"].shape == (4, 3)
    np.testing.assert_allclose(np.sum(out_b["y"], -1), 1.0, rtol=1e-6)
    assert not np.array_equal(out_a["label"], at(0, 4)[0]["label"])
    assert not np.array_equal(out_a["label"], at(1, 3)[0]["label"])
    lam_a = float(out_a["label"][0, 0])  # label 0 mixed with label 3: weight lam on class 0
    lam_b = float(out_b["y"][1, 1])  # label 1 mixed with label 2
    assert lam_a != pytest.approx(lam_b)


class Linear(nn.Module):
    @nn.compact
    def __call__(self, x, *, train: bool):
        del train
        return nn.Dense(K)(x.reshape(x.shape[0], -1)), {}


def test_gradient_accumulation_sees_the_same_mixed_batch():
    """The mix is applied to the global batch before micro-batching: accum 1 and 4 give the
    same loss and update (up to float rounding), which differ from the unmixed loss."""
    task = classification.Task(num_classes=K)
    model = Linear()
    params = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 4, 4, 1)), train=False)["params"]
    tx = optax.sgd(0.1)
    state = {"params": params, "opt_state": tx.init(params), "step": jnp.zeros((), jnp.int32),
             "rng": jax.random.PRNGKey(7)}
    batch = {"image": jax.random.normal(jax.random.PRNGKey(8), (16, 4, 4, 1)),
             "label": jnp.arange(16) % K}
    cfg = BOTH_ELEM
    loss_fn = steps.make_loss_fn(model, task)
    out = {}
    for accum in (1, 4):
        step = steps.build_train_step(loss_fn, tx, accum_steps=accum,
                                      batch_fn=mixup.batch_fn(cfg, [task]))
        out[accum] = jax.jit(step)(state, batch)
    (s1, m1), (s4, m4) = out[1], out[4]
    np.testing.assert_allclose(m1["loss"], m4["loss"], rtol=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
                 s1["params"], s4["params"])
    plain = jax.jit(loss_fn)(params, batch, state["rng"])  # the loss without mixing differs
    assert abs(float(m1["loss"]) - float(plain)) > 1e-3


def _route(spec: dict, inputs: str | tuple = "image") -> dict:
    task = classification.Task(num_classes=K, inputs=inputs)
    return {None: types.SimpleNamespace(name=None, task=task, spec=spec)}


def test_bad_configs_and_inputs_are_one_line_errors():
    with pytest.raises(ConfigError, match=r"mixup.mode='pair' is unknown"):
        mixup.MixupConfig(mixup_alpha=1.0, mode="pair")
    with pytest.raises(ConfigError, match=r"mixup.prob=1.5 must be a probability"):
        mixup.MixupConfig(mixup_alpha=1.0, prob=1.5)
    with pytest.raises(ConfigError, match=r"mixup has unknown keys \['alpha'\]"):
        mixup.MixupConfig.from_config({"mixup": {"alpha": 1.0}})
    assert mixup.MixupConfig.from_config({"mixup": {"mixup_alpha": 0.0}}) is None
    assert mixup.MixupConfig.from_config({}) is None
    cut = mixup.MixupConfig(cutmix_alpha=1.0)
    with pytest.raises(ConfigError, match=r"input 'image' is uint8; .*value_range"):
        mixup.check_routes(cut, _route({"image": ((8, 8, 1), np.uint8)}))
    with pytest.raises(ConfigError, match=r"cutmix_alpha=1.0 needs one input of shape"):
        mixup.check_routes(cut, _route({"image": ((64,), np.float32)}))
    mixup.check_routes(cut, _route({"image": ((8, 8, 1), np.float32)}))  # fine
    other = {None: types.SimpleNamespace(name=None, task=object(), spec={})}
    with pytest.raises(ConfigError, match=r"mixup needs a classification or multilabel task"):
        mixup.check_routes(cut, other)
