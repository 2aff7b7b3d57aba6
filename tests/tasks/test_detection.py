"""Detection pieces: the Hungarian matcher vs scipy, GIoU vs its closed form, the DETR loss."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.optimize import linear_sum_assignment

from vitx.tasks import boxes as box_ops
from vitx.tasks import detection, get_task
from vitx.tasks.matcher import hungarian_matching


@pytest.mark.parametrize("n,m", [(7, 3), (5, 5), (16, 4), (4, 0)])
def test_matcher_equals_scipy(n, m):
    rng = np.random.default_rng(n * 10 + m)
    b = 6
    cost = rng.normal(size=(b, n, m)).astype(np.float32)
    valid = rng.random((b, m)) < 0.7
    valid[0] = True          # all slots used
    valid[1] = False         # an image with zero objects
    idx = np.asarray(jax.jit(hungarian_matching)(jnp.asarray(cost), jnp.asarray(valid)))
    assert idx.shape == (b, m) and idx.dtype == np.int32
    for i in range(b):
        cols = np.flatnonzero(valid[i])
        assert np.all(idx[i][~valid[i]] == -1)
        if not len(cols):
            continue
        rows, order = linear_sum_assignment(cost[i][:, cols].astype(np.float64))
        assert np.array_equal(idx[i][cols[order]], rows)
        assert len(set(idx[i][cols])) == len(cols)  # one-to-one


def test_matcher_rejects_more_objects_than_tokens():
    with pytest.raises(ValueError, match="max_objects"):
        hungarian_matching(jnp.zeros((1, 3, 4)), jnp.ones((1, 4), bool))


def _giou_closed_form(a, b):
    """GIoU of two corner boxes from its definition (Rezatofighi et al., CVPR 2019)."""
    ih = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iw = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ih * iw
    area_a = (a[2] - a[0]) * (a[3] - a[1])
    area_b = (b[2] - b[0]) * (b[3] - b[1])
    union = area_a + area_b - inter
    hull = (max(a[2], b[2]) - min(a[0], b[0])) * (max(a[3], b[3]) - min(a[1], b[1]))
    return inter / union - (hull - union) / hull


def test_giou_closed_form():
    a = np.array([[0.0, 0.0, 0.5, 0.5], [0.1, 0.2, 0.3, 0.9]])
    b = np.array([[0.25, 0.25, 0.75, 0.75], [0.6, 0.6, 0.9, 0.8], [0.0, 0.0, 0.5, 0.5]])
    got = np.asarray(box_ops.generalized_iou(jnp.asarray(a), jnp.asarray(b)))
    want = np.array([[_giou_closed_form(x, y) for y in b] for x in a])
    np.testing.assert_allclose(got, want, atol=1e-5)
    # Hand values: identical boxes 1; quarter overlap IoU 1/7, hull 9/16 -> 1/7 - (9/16-7/16)/(9/16)
    assert got[0, 2] == pytest.approx(1.0, abs=1e-6)
    assert got[0, 0] == pytest.approx(1 / 7 - (2 / 16) / (9 / 16), abs=1e-5)
    assert got[0, 1] < 0  # disjoint boxes


def test_box_formats_round_trip():
    x = jnp.array([[0.1, 0.2, 0.5, 0.9]])
    np.testing.assert_allclose(box_ops.center_to_corners(box_ops.corners_to_center(x)), x,
                               atol=1e-6)


def _perfect_logits(gt_boxes, gt_labels, n, k, wrong=False):
    """Predictions where token j holds object j (boxes exact, class logit 20), rest no-object."""
    b, m = gt_labels.shape
    out = np.zeros((b, n, 4 + k + 1), np.float32)
    out[:, :, :4] = [0.5, 0.5, 0.1, 0.1]
    out[:, :, 4 + k] = 20.0
    for i in range(b):
        for j in range(m):
            if gt_labels[i, j] >= 0:
                out[i, j, :4] = np.asarray(box_ops.corners_to_center(jnp.asarray(gt_boxes[i, j])))
                out[i, j, 4 + k] = 0.0
                out[i, j, 4 + (gt_labels[i, j] + 1 if wrong else gt_labels[i, j]) % k] = 20.0
    return jnp.asarray(out)


def test_detr_loss_near_zero_for_perfect_and_larger_for_wrong():
    k, n = 3, 6
    gt_boxes = np.array([[[0.1, 0.1, 0.4, 0.3], [0.5, 0.5, 0.9, 0.8]],
                         [[0.2, 0.2, 0.6, 0.6], [0, 0, 0, 0]]], np.float32)
    gt_labels = np.array([[0, 2], [1, -1]])
    batch = {"image": jnp.zeros((2, 8, 8, 1)), "boxes": jnp.asarray(gt_boxes),
             "box_labels": jnp.asarray(gt_labels)}
    task = get_task(dict(type="detection"), k)
    assert isinstance(task, detection.Task)
    good = _perfect_logits(gt_boxes, gt_labels, n, k)
    loss = np.asarray(jax.jit(task.loss)(good, batch))
    assert loss.shape == (2,) and np.all(loss < 1e-3)
    np.testing.assert_array_equal(task.correct(good, batch), [1.0, 1.0])
    np.testing.assert_array_equal(task.match(good, batch), [[0, 1], [0, -1]])
    bad = _perfect_logits(gt_boxes, gt_labels, n, k, wrong=True)
    assert np.all(np.asarray(task.loss(bad, batch)) > 5)
    np.testing.assert_array_equal(task.correct(bad, batch), [0.0, 0.0])
    grads = jax.grad(lambda x: task.loss(x, batch).sum())(good + 0.1)
    assert np.all(np.isfinite(np.asarray(grads))) and float(jnp.abs(grads).sum()) > 0


def test_detection_task_bad_input():
    task = get_task(dict(type="detection"), 3)
    logits = jnp.zeros((2, 4, 8))
    with pytest.raises(ValueError, match=r"no \['boxes', 'box_labels'\].*pad_objects"):
        task.loss(logits, {"image": jnp.zeros((2, 8, 8, 1)), "label": jnp.zeros((2,))})
    batch = {"boxes": jnp.zeros((2, 5, 4)), "box_labels": jnp.zeros((2, 5), jnp.int32)}
    with pytest.raises(ValueError, match="5 object slots but only 4 tokens"):
        task.loss(logits, batch)
    with pytest.raises(ValueError, match="head_classes"):
        task.loss(jnp.zeros((2, 4, 7)), batch)
