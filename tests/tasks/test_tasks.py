"""Tasks: registry, the keys they read, their per-example loss and hit."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vitx import tasks


def test_registry_and_errors():
    t = tasks.get_task(None, 3)
    assert (t.inputs, t.labels, t.num_classes) == ("image", "label", 3)
    assert tasks.get_task({"type": "classification", "inputs": "video"}, 3).inputs == "video"
    with pytest.raises(ValueError, match=r"task.type='seg' does not exist.*classification"):
        tasks.get_task({"type": "seg"}, 3)
    with pytest.raises(ValueError, match="task 'classification'.*keys are inputs, labels"):
        tasks.get_task({"input": "video"}, 3)


def test_classification_reads_its_keys_only():
    t = tasks.get_task({"inputs": "audio", "labels": "key"}, 3)
    logits = jnp.array([[5.0, 0.0, 0.0], [0.0, 0.0, 5.0]])
    batch = {"audio": jnp.ones((2, 4)), "key": jnp.array([0, 1])}
    assert t.model_inputs(batch) is batch["audio"]
    np.testing.assert_array_equal(t.correct(logits, batch), [1.0, 0.0])
    want = -jax.nn.log_softmax(logits)[jnp.arange(2), jnp.array([0, 1])]
    np.testing.assert_allclose(t.loss(logits, batch), want, rtol=1e-6)
    np.testing.assert_allclose(t.predict(logits).sum(-1), 1.0, rtol=1e-6)


def test_multilabel_sigmoid_loss_and_precision_at_1():
    t = tasks.get_task({"type": "multilabel"}, 3)
    logits = jnp.array([[3.0, -1.0, 2.0], [0.0, 4.0, -2.0]])
    labels = jnp.array([[1.0, 0.0, 1.0], [1.0, 0.0, 0.0]])
    batch = {"image": None, "label": labels}
    np.testing.assert_array_equal(t.correct(logits, batch), [1.0, 0.0])
    p = jax.nn.sigmoid(logits)
    want = -(labels * jnp.log(p) + (1 - labels) * jnp.log(1 - p)).sum(-1)
    np.testing.assert_allclose(t.loss(logits, batch), want, rtol=1e-5)
    np.testing.assert_allclose(t.predict(logits), p, rtol=1e-6)
