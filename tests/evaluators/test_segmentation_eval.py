"""The `segmentation` evaluator's metrics (mIoU, pixel accuracy) on hand-made masks."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

from vitx.evaluators.segmentation import confusion_matrix, segmentation_metrics

# Two 2x3 masks over classes {0, 1, 2} (class 3 never occurs) and a prediction.
LABELS = np.array([[[0, 0, 1], [1, 1, 2]],
                   [[2, 2, 0], [0, 0, 0]]])
PREDS = np.array([[[0, 1, 1], [1, 0, 2]],
                  [[2, 0, 0], [0, 0, 3]]])


def test_confusion_matrix_counts_pixels() -> None:
    conf = np.asarray(confusion_matrix(jnp.asarray(LABELS), jnp.asarray(PREDS), 4))
    expected = np.zeros((4, 4))
    for t, p in zip(LABELS.reshape(-1), PREDS.reshape(-1), strict=True):
        expected[t, p] += 1
    np.testing.assert_array_equal(conf, expected)
    # Weights drop pixels (the padding of the last batch).
    w = np.zeros_like(LABELS, np.float32)
    w[0] = 1
    conf0 = np.asarray(confusion_matrix(jnp.asarray(LABELS), jnp.asarray(PREDS), 4,
                                        jnp.asarray(w)))
    assert conf0.sum() == 6 and conf0[2, 2] == 1 and conf0[0, 3] == 0


def test_miou_exact_on_hand_made_masks() -> None:
    res = segmentation_metrics(confusion_matrix(jnp.asarray(LABELS), jnp.asarray(PREDS), 4))
    # By hand. Class 0: true at 6 pixels, predicted at 6, both at 4 -> IoU 4 / (6 + 6 - 4) = 4/8.
    # Class 1: true 3, predicted 3, both 2 -> 2/4. Class 2: true 3, predicted 2, both 2 -> 2/3.
    # Class 3: never true, predicted once -> 0/1 (it counts: a false class is an error).
    iou = [4 / 8, 2 / 4, 2 / 3, 0.0]
    np.testing.assert_allclose(res["iou"], iou)
    assert res["mIoU"] == pytest.approx(np.mean(iou))
    assert res["pixel_accuracy"] == pytest.approx(8 / 12)
    # A class neither true nor predicted is left out of the mean (NaN), not counted as 0 or 1.
    res5 = segmentation_metrics(confusion_matrix(jnp.asarray(LABELS), jnp.asarray(PREDS), 5))
    assert np.isnan(res5["iou"][4]) and res5["mIoU"] == pytest.approx(np.mean(iou))


def test_perfect_predictions_give_one() -> None:
    res = segmentation_metrics(confusion_matrix(jnp.asarray(LABELS), jnp.asarray(LABELS), 11))
    assert res["mIoU"] == 1.0 and res["pixel_accuracy"] == 1.0
    assert segmentation_metrics(np.zeros((3, 3))) == {"mIoU": 0.0, "pixel_accuracy": 0.0,
                                                      "iou": pytest.approx([np.nan] * 3,
                                                                           nan_ok=True)}
