"""COCO metrics through pycocotools: hand cases."""

import numpy as np
import pytest

from tfrcnn.evaluation.coco import COCO_STAT_NAMES, evaluate_coco

NAMES = ["cell", "blob"]


def _gt(boxes, classes, **extra):
    return {
        "boxes": np.array(boxes, "float32").reshape(-1, 4),
        "classes": np.array(classes),
        **extra,
    }


def _det(boxes, classes, scores):
    return {
        "boxes": np.array(boxes, "float32").reshape(-1, 4),
        "classes": np.array(classes),
        "scores": np.array(scores, "float32"),
    }


def test_perfect_detections_score_one():
    gts = [_gt([[10, 10, 50, 60], [100, 100, 180, 150]], [0, 1]), _gt([[5, 5, 40, 40]], [0])]
    dets = [_det(g["boxes"], g["classes"], [0.9] * len(g["classes"])) for g in gts]
    stats = evaluate_coco(dets, gts, NAMES)
    assert set(COCO_STAT_NAMES) <= set(stats)
    assert stats["AP"] == pytest.approx(1.0) and stats["AP50"] == pytest.approx(1.0)
    assert stats["per_class"]["cell"]["AP50"] == pytest.approx(1.0)


def test_half_the_objects_found():
    # Two objects of one class, one detected exactly, one missed: precision 1 up to recall 0.5,
    # so AP50 = 0.5 (pycocotools' 101 recall points: 51 of 101 points at precision 1 -> 51/101).
    gts = [_gt([[10, 10, 50, 60], [100, 100, 180, 150]], [0, 0])]
    dets = [_det([[10, 10, 50, 60]], [0], [0.8])]
    stats = evaluate_coco(dets, gts, ["cell"])
    assert stats["AP50"] == pytest.approx(51 / 101, abs=1e-6)


def test_a_shifted_box_counts_only_at_low_iou():
    # IoU of the detection with the object is 0.6: a hit at 0.5 and 0.55, a miss from 0.65 up.
    gt_box = [0, 0, 100, 100]
    det_box = [0, 25, 100, 125]  # overlap 75 x 100 = 7500, union 12500 -> IoU 0.6
    stats = evaluate_coco([_det([det_box], [0], [0.9])], [_gt([gt_box], [0])], ["cell"])
    assert stats["AP50"] == pytest.approx(1.0)
    assert stats["AP75"] == pytest.approx(0.0)
    assert stats["AP"] == pytest.approx(0.3)  # 3 of the 10 IoU thresholds (0.50, 0.55, 0.60)


def test_difficult_objects_are_ignored_and_empty_results_are_fine():
    gts = [_gt([[10, 10, 50, 60], [100, 100, 180, 150]], [0, 0], difficult=np.array([False, True]))]
    dets = [_det([[10, 10, 50, 60], [100, 100, 180, 150]], [0, 0], [0.9, 0.8])]
    assert evaluate_coco(dets, gts, ["cell"])["AP50"] == pytest.approx(1.0)
    empty = evaluate_coco([_det(np.zeros((0, 4)), [], [])], gts, ["cell"])
    assert empty["AP50"] == pytest.approx(0.0)
    # a class with no ground truth is NaN in the per-class table
    assert np.isnan(evaluate_coco(dets, gts, ["cell", "blob"])["per_class"]["blob"]["AP50"])
