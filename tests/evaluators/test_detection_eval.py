"""The `detection` evaluator: COCO mAP (pycocotools) on hand-computed cases, a tiny run."""

from __future__ import annotations

import contextlib
import io
import os

import numpy as np
import pytest

from vitx import config as config_lib
from vitx import experiment
from vitx.config import ConfigError
from vitx.evaluators.detection import coco_map


def _case(iou_c: float):
    """One class, two images with one object each. Detections, by score: A (0.9) exact on
    image 0's object, B (0.8) elsewhere, C (0.7) on image 1's object with IoU `iou_c`, D (0.1)
    elsewhere."""
    gt_boxes = [np.array([[0.5, 0.5, 1.0, 1.0]]), np.array([[0.0, 0.0, 0.5, 0.5]])]
    gt_labels = [np.array([0]), np.array([0])]
    far = [0.0, 0.0, 0.1, 0.1]
    boxes = np.array([[[0.5, 0.5, 1.0, 1.0], far],
                      [[0.0, 0.0, 0.5, 0.5 * iou_c], [0.9, 0.9, 1.0, 1.0]]])
    scores = np.array([[0.9, 0.8], [0.7, 0.1]])
    return gt_boxes, gt_labels, boxes, scores, np.zeros((2, 2), int)


def test_map_equals_hand_computed():
    # C matches at IoU thresholds 0.5, 0.55, 0.6 (IoU 0.62). Ranked: TP, FP, TP, FP, so
    # precision 1 up to recall 0.5 and 2/3 up to recall 1: with COCO's 101 recall points
    # AP = (51 * 1 + 50 * 2/3) / 101. At the 7 higher thresholds C is a FP: recall stops at 0.5,
    # AP = 51 / 101.
    res = coco_map(*_case(0.62), image_hw=(64, 64))
    ap_hi, ap_lo = (51 + 50 * 2 / 3) / 101, 51 / 101
    assert res["mAP50"] == pytest.approx(ap_hi, abs=1e-6)
    assert res["mAP"] == pytest.approx((3 * ap_hi + 7 * ap_lo) / 10, abs=1e-6)


def test_map_is_one_for_perfect_detections_and_zero_without_any():
    gt_boxes, gt_labels, boxes, scores, classes = _case(1.0)
    scores = np.array([[0.9, 0.0], [0.7, 0.0]])  # the extra detections rank last
    res = coco_map(gt_boxes, gt_labels, boxes, scores, classes, image_hw=(64, 64))
    assert res == {"mAP": pytest.approx(1.0), "mAP50": pytest.approx(1.0)}
    # A wrong class everywhere: no true positive.
    res = coco_map(gt_boxes, gt_labels, boxes, scores, classes + 1, image_hw=(64, 64))
    assert res == {"mAP": 0.0, "mAP50": 0.0}
    # Padding labels (-1) are not objects.
    empty = coco_map([np.zeros((1, 4))], [np.array([-1])], boxes[:1], scores[:1], classes[:1])
    assert empty == {"mAP": 0.0, "mAP50": 0.0}


# --- End to end: a tiny dense ViT trained 2 steps on digit_scenes, then evaluated. ---

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _tiny(scenes_dir: str, *extra: str, encoder: str = "vit"):
    c = config_lib.load_config(os.path.join(REPO, "configs",
                                            f"detection_digits.py:quick,encoder={encoder}"))
    config_lib.apply_overrides(c, [
        f"data_dir={scenes_dir}", "total_steps=2", "schedule.warmup_steps=1", "input.batch_size=8",
        "evals.test.batch_size=24", "model.encoder_cfg.variant=pico/16",
        "model.encoder_cfg.width=16", "model.encoder_cfg.depth=1", "model.encoder_cfg.mlp_dim=32",
        "model.encoder_cfg.num_heads=2", "checkpoint.async_save=False", *extra])
    return c


@pytest.fixture(scope="module")
def tiny_flexi_run(scenes_dir, tmp_path_factory):
    """A FlexiViT encoder trained at patch 16 and evaluated at patches 16 and 32 (2x2 tokens)."""
    workdir = str(tmp_path_factory.mktemp("det") / "w")
    config = _tiny(scenes_dir, "flexi.patch_sizes=(16,)", "evals.test.patch_sizes=(16, 32)",
                   encoder="flexivit")
    with contextlib.redirect_stdout(io.StringIO()):
        results = experiment.train(config, workdir)
    return results, workdir


def test_tiny_flexivit_detection_run_reports_map_per_patch_size(tiny_flexi_run):
    results, workdir = tiny_flexi_run
    for suffix in ("@16", "@32", ""):
        assert 0.0 <= results[f"test/mAP{suffix}"] <= results[f"test/mAP50{suffix}"] <= 1.0
    assert results["test/mAP50"] == pytest.approx(
        (results["test/mAP50@16"] + results["test/mAP50@32"]) / 2)
    assert np.isfinite(results["test/loss@32"]) and results["test/loss@32"] > 0
    for png in ("test_detections.png", "test_map50_vs_patch_size.png"):
        assert os.path.getsize(os.path.join(workdir, png)) > 1000


def test_dataset_without_boxes_is_a_one_line_error(scenes_dir, tmp_path):
    no_boxes = "decode(channels=1)|value_range(-1,1)|keep('image', 'mask')"
    with pytest.raises(ValueError, match=r"no \['boxes', 'box_labels'\].*pad_objects") as e:
        experiment.train(_tiny(scenes_dir, f"evals.test.pp={no_boxes}"), str(tmp_path / "a"))
    assert "\n" not in str(e.value)
    with pytest.raises(ConfigError, match="box_labels.*input.pp") as e:
        experiment.train(_tiny(scenes_dir, f"input.pp={no_boxes}"), str(tmp_path / "b"))
    assert "\n" not in str(e.value)
