"""VOC AP: hand-computed curves, the devkit's matching rules, and the two interpolations."""

import numpy as np
import pytest

from tfrcnn.evaluation import evaluate_detections, evaluate_model, voc_ap
from tfrcnn.evaluation.coco import evaluate_coco


def test_voc_ap_hand_cases():
    # detections TP, FP, TP with 2 positives: recall [.5, .5, 1], precision [1, .5, .667]
    recall = np.array([0.5, 0.5, 1.0])
    precision = np.array([1.0, 0.5, 2 / 3])
    # all-point: 0.5 * 1 + 0.5 * 2/3
    assert voc_ap(recall, precision) == pytest.approx(0.5 + 1 / 3)
    # 11-point: t = 0..0.5 (6 points) -> 1; t = 0.6..1.0 (5 points) -> 2/3
    assert voc_ap(recall, precision, use_07_metric=True) == pytest.approx((6 + 5 * 2 / 3) / 11)
    assert voc_ap(np.array([1.0]), np.array([1.0])) == pytest.approx(1.0)


def _gt(boxes, classes, difficult=None):
    gt = {"boxes": np.array(boxes, float).reshape(-1, 4), "classes": np.array(classes)}
    if difficult is not None:
        gt["difficult"] = np.array(difficult)
    return gt


def _det(boxes, classes, scores):
    return {
        "boxes": np.array(boxes, float).reshape(-1, 4),
        "classes": np.array(classes),
        "scores": np.array(scores, float),
    }


def test_devkit_rules():
    gts = [_gt([[0, 0, 10, 10], [20, 20, 30, 30]], [0, 0], [False, True]), _gt([], [])]
    dets = [
        _det([[0, 0, 10, 10], [0, 0, 10, 10], [20, 20, 30, 30]], [0, 0, 0], [0.9, 0.8, 0.7]),
        _det([[5, 5, 9, 9]], [0], [0.95]),
    ]
    result = evaluate_detections(dets, gts, num_classes=2, class_names=["a", "b"])
    # order by score: FP (no gt in image 2), TP, FP (duplicate), ignored (difficult)
    # recall [0, 1, 1], precision [0, .5, .333]: AP = 1 * 0.5
    assert result["ap"][0] == pytest.approx(0.5)
    assert np.isnan(result["ap"][1]) and result["mAP"] == pytest.approx(0.5)
    assert result["num_gt"][0] == 1
    assert result["per_class"]["a"] == pytest.approx(0.5)


def test_voc_and_coco_agree_on_one_class_at_iou_half():
    rng = np.random.default_rng(0)
    gts, dets = [], []
    for _ in range(20):
        boxes = rng.uniform(0, 200, (4, 2))
        boxes = np.concatenate([boxes, boxes + rng.uniform(20, 60, (4, 2))], 1)
        gts.append(_gt(boxes, [0] * 4))
        noisy = boxes + rng.normal(0, 6, boxes.shape)
        dets.append(_det(noisy, [0] * 4, rng.uniform(0, 1, 4)))
    voc = evaluate_detections(dets, gts, num_classes=1)["mAP"]
    coco = evaluate_coco(dets, gts, ["a"])["AP50"]
    # COCO interpolates at 101 recall points, VOC at every recall change: close, not identical
    assert coco == pytest.approx(voc, abs=0.01)


class _Echo:
    """A fake model that returns each image's ground truth (in original pixels) as detections."""

    def __init__(self, batches):
        self.batches = iter(batches)

    def __call__(self, inputs, training=False):
        import tensorflow as tf

        batch = next(self.batches)
        scale = batch["image_scale"][:, None, None]
        valid = batch["gt_classes"] >= 0
        return {
            "detection_boxes": tf.where(valid[..., None], batch["gt_boxes"] / scale, 0.0),
            "detection_scores": tf.cast(valid, tf.float32),
            "detection_classes": batch["gt_classes"],
            "num_detections": tf.reduce_sum(tf.cast(valid, tf.int32), axis=1),
        }


def test_evaluate_model_with_a_perfect_fake_model():
    from tfrcnn.data import make_dataset, make_synthetic_records

    records = make_synthetic_records(6, seed=3, empty_fraction=0.0)
    ds = make_dataset(
        records, batch_size=3, min_side=100, max_side=120, pad_to=(120, 120), max_boxes=8
    )
    result = evaluate_model(_Echo(list(ds)), ds, num_classes=3)
    assert result["mAP"] == pytest.approx(1.0)
    assert result["num_gt"].sum() == sum(len(r["boxes"]) for r in records)
