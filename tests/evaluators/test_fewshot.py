"""The representation evaluators: `fewshot_linear` (ridge = scikit-learn's RidgeClassifier) and
`knn` (cosine k-NN), plus an end-to-end smoke run on a tiny ViT."""

from __future__ import annotations

import os

import ml_collections
import numpy as np
import pytest
from sklearn.linear_model import RidgeClassifier

from vitx import config as config_lib
from vitx import evaluators
from vitx.evaluators import fewshot, knn
from vitx.train import startup

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _random_problem(k=4, d=16, shots=5, n_test=200, seed=0):
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(k, d))
    y_pool = np.repeat(np.arange(k), 30)
    x_pool = centers[y_pool] + 1.5 * rng.normal(size=(len(y_pool), d))
    idx = fewshot.draw_shots(y_pool, shots, num_classes=k, seed=seed)
    y_te = rng.integers(0, k, n_test)
    x_te = centers[y_te] + 1.5 * rng.normal(size=(n_test, d))
    return x_pool[idx], y_pool[idx], x_te, y_te


@pytest.mark.parametrize("d", [16, 64])  # N >= D (primal) and N < D (dual) solves
@pytest.mark.parametrize("l2", [0.01, 1.0, 100.0])
def test_ridge_equals_sklearn_ridge_classifier(d, l2):
    x, y, x_te, y_te = _random_problem(d=d)
    w, b = fewshot.ridge_fit(x, y, 4, [l2])
    ours = fewshot.ridge_predict(x_te, w, b)[0]
    ref = RidgeClassifier(alpha=l2, fit_intercept=True).fit(x, y)
    np.testing.assert_allclose(w[0], ref.coef_.T, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(b[0], ref.intercept_, rtol=1e-6, atol=1e-9)
    np.testing.assert_array_equal(ours, ref.predict(x_te))
    mean, std = x.mean(0), x.std(0) + fewshot.EPS_STD  # the evaluator's standardisation
    sk = RidgeClassifier(alpha=l2).fit((x - mean) / std, y).score((x_te - mean) / std, y_te)
    acc = fewshot.fewshot_accuracies(x, y, x_te, y_te, 4, [l2, 2 * l2])
    assert acc.shape == (2,) and acc[0] == pytest.approx(sk, abs=1e-12)


def test_draw_shots_deterministic_exact_and_nested():
    labels = np.random.default_rng(1).integers(0, 5, 300)
    a = fewshot.draw_shots(labels, 7, num_classes=5, seed=(3, 0))
    np.testing.assert_array_equal(a, fewshot.draw_shots(labels, 7, num_classes=5, seed=(3, 0)))
    assert np.bincount(labels[a], minlength=5).tolist() == [7] * 5 and len(set(a)) == 35
    b = fewshot.draw_shots(labels, 7, num_classes=5, seed=(3, 1))
    assert set(a) != set(b)
    small = fewshot.draw_shots(labels, 2, num_classes=5, seed=(3, 0))
    assert set(small) <= set(a)
    with pytest.raises(ValueError, match="shots per class"):
        fewshot.draw_shots(labels, 1000, num_classes=5, seed=0)
    pool, val = fewshot.holdout_split(labels, 0.2, num_classes=5, seed=0)
    assert not set(pool) & set(val) and len(pool) + len(val) == 300
    assert np.all(np.bincount(labels[val], minlength=5) >= 1)


def test_knn_separable_clusters_and_hand_made_case():
    rng = np.random.default_rng(0)
    centers = 10 * np.eye(6)
    y_tr, y_te = np.repeat(np.arange(6), 20), np.repeat(np.arange(6), 5)
    x_tr = centers[y_tr] + 0.1 * rng.normal(size=(120, 6))
    x_te = centers[y_te] + 0.1 * rng.normal(size=(30, 6))
    for t in (0.07, None):
        preds = knn.knn_predict(x_tr, y_tr, x_te, k=20, num_classes=6, temperature=t)
        assert np.mean(preds == y_te) == 1.0
    # One very similar neighbour of class 1 against two moderately similar ones of class 0:
    # the majority vote says 0, the weighted vote (exp(cos / 0.07)) says 1.
    train = np.array([[1.0, 0.0], [0.6, 0.8], [0.6, -0.8], [-1.0, 0.0]])
    labels = np.array([1, 0, 0, 2])
    test = np.array([[2.0, 0.0], [-3.0, 0.1]])  # norms differ: cosine only
    assert knn.knn_predict(train, labels, test, k=3, num_classes=3,
                           temperature=None).tolist() == [0, 0]
    assert knn.knn_predict(train, labels, test, k=3, num_classes=3,
                           temperature=0.07).tolist() == [1, 2]
    assert knn.knn_predict(train, labels, test, k=1, num_classes=3).tolist() == [1, 2]


PP_16 = "decode(channels=1)|resize(16)|value_range(-1,1)|onehot(10)"


def test_evaluators_on_a_tiny_vit(data_dir):
    config = config_lib.load_config(os.path.join(REPO, "configs", "vit_digits.py"))
    config_lib.apply_overrides(config, [
        "model.variant=pico/4", "model.width=32", "model.depth=2", "model.mlp_dim=64",
        "model.num_heads=2", f"input.pp={PP_16}", "input.batch_size=32", "total_steps=2",
        "schedule.warmup_steps=0", f"evals.test.pp={PP_16}", f"data_dir={data_dir}"])
    s = startup.setup(config)
    state, shardings = s.init_state()

    def context_for(name):
        return dict(predict_fn=s.predict_fn_for(name), task=s.routes[name].task, mesh=s.mesh,
                    variable_shardings=startup.variables_of(shardings), data_dir=data_dir,
                    default_batch_size=120)
    common = dict(dataset="digits", train_split="train[:400]", test_split="test[:100]",
                  pp=PP_16, batch_size=100)
    evals = ml_collections.ConfigDict(dict(
        fs=dict(type="fewshot_linear", shots=(1, 5), num_draws=2, **common),
        nn=dict(type="knn", k=5, **common)))
    metrics = {}
    for ev in evaluators.from_config(evals, context_for):
        metrics.update(ev.run(startup.variables_of(state)))
    assert sorted(metrics) == ["fs/1shot", "fs/1shot_std", "fs/5shot", "fs/5shot_std",
                               "nn/knn_accuracy"]
    assert all(0.0 <= v <= 1.0 for v in metrics.values()), metrics
    assert metrics["nn/knn_accuracy"] > 0.2  # random ViT features are far above chance here
    with pytest.raises(ValueError, match=r"evals.bad: shots=0 is not an integer"):
        evaluators.from_config(ml_collections.ConfigDict(
            dict(bad=dict(type="fewshot_linear", shots=(0,), **common))), context_for)
