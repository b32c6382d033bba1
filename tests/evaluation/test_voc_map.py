"""VOC AP / mAP by hand: a worked PR curve (all-point and 11-point), the matching rules (threshold,
duplicates, difficult boxes, images without ground truth, classes without ground truth) and
evaluate_model against a fake model.

(tests/evaluation/test_voc_ap.py holds the first VOC tests and a COCO cross-check.)
"""

import numpy as np
import pytest
import tensorflow as tf

from tfrcnn.evaluation.voc import evaluate_detections, evaluate_model, voc_ap


def _gt(boxes, classes, difficult=None):
    gt = {
        "boxes": np.array(boxes, np.float32).reshape(-1, 4),
        "classes": np.array(classes, np.int32).reshape(-1),
    }
    if difficult is not None:
        gt["difficult"] = np.array(difficult, bool)
    return gt


def _det(boxes, classes, scores):
    return {
        "boxes": np.array(boxes, np.float32).reshape(-1, 4),
        "classes": np.array(classes, np.int32).reshape(-1),
        "scores": np.array(scores, np.float32).reshape(-1),
    }


# Worked example, class 0, four positives (g1, g2 in image A; g3, g4 in image B), five detections
# in score order:
#   0.9  g1 exactly                                  TP
#   0.8  a box far from everything in image B        FP
#   0.7  [0, 0, 20, 18] on g3 = [0, 0, 20, 20], IoU 360/400 = 0.9            TP
#   0.6  g1 again (a duplicate of a matched box)     FP
#   0.5  [25, 20, 45, 40] on g2 = [20, 20, 40, 40], IoU 300/500 = 0.6        TP
#   g4 is never found.
# cumulative TP 1 1 2 2 3, FP 0 1 1 2 2
#   recall    .25  .25  .50  .50  .75
#   precision 1    1/2  2/3  1/2  3/5
# all-point: the precision envelope (max to the right) is 1 at recall .25, 2/3 at .5, 3/5 at .75:
#   AP = .25 * 1 + .25 * 2/3 + .25 * 3/5 = 0.25 + 0.1667 + 0.15 = 0.56667
# 11-point: t = 0, .1, .2 -> 1 (3 points); t = .3, .4, .5 -> max(2/3, 1/2, 3/5) = 2/3 (3 points);
#   t = .6, .7 -> 3/5 (2 points); t = .8, .9, 1 -> 0 (3 points):
#   AP = (3 + 2 + 1.2) / 11 = 6.2 / 11 = 0.56364
RECALL = np.array([0.25, 0.25, 0.5, 0.5, 0.75])
PRECISION = np.array([1.0, 0.5, 2 / 3, 0.5, 0.6])
ALL_POINT = 0.25 + 0.25 * 2 / 3 + 0.25 * 0.6
ELEVEN_POINT = 6.2 / 11


def _worked_example():
    gts = [
        _gt([[0, 0, 10, 10], [20, 20, 40, 40]], [0, 0]),
        _gt([[0, 0, 20, 20], [50, 50, 60, 60], [70, 0, 90, 20]], [0, 0, 2]),
    ]
    dets = [
        _det([[0, 0, 10, 10], [0, 0, 10, 10], [25, 20, 45, 40]], [0, 0, 0], [0.9, 0.6, 0.5]),
        _det([[80, 80, 90, 90], [0, 0, 20, 18], [5, 5, 15, 15]], [0, 0, 1], [0.8, 0.7, 0.99]),
    ]
    return dets, gts


def test_voc_ap_on_the_worked_curve():
    assert voc_ap(RECALL, PRECISION) == pytest.approx(ALL_POINT)
    assert voc_ap(RECALL, PRECISION, use_07_metric=True) == pytest.approx(ELEVEN_POINT)


def test_voc_ap_edge_cases():
    for use_07 in (False, True):
        assert voc_ap([0.5, 1.0], [1.0, 1.0], use_07) == pytest.approx(1.0)  # perfect
        assert voc_ap([], [], use_07) == 0.0  # no detections
        assert voc_ap([0.0, 0.0], [0.0, 0.0], use_07) == 0.0  # only false positives
    # half the positives at precision 1, none after: all-point 0.5, 11-point 6/11 (t = 0 .. 0.5)
    assert voc_ap([0.5], [1.0]) == pytest.approx(0.5)
    assert voc_ap([0.5], [1.0], use_07_metric=True) == pytest.approx(6 / 11)


def test_evaluate_detections_worked_example():
    dets, gts = _worked_example()
    result = evaluate_detections(dets, gts, num_classes=3, class_names=["a", "b", "c"])
    np.testing.assert_allclose(result["recall"][0], RECALL)
    np.testing.assert_allclose(result["precision"][0], PRECISION)
    assert result["ap"][0] == pytest.approx(ALL_POINT)
    # class b: a detection but no ground truth -> NaN, left out of the mean
    assert np.isnan(result["ap"][1]) and np.isnan(result["per_class"]["b"])
    # class c: ground truth but no detection -> 0
    assert result["ap"][2] == 0.0
    assert result["mAP"] == pytest.approx(ALL_POINT / 2)
    np.testing.assert_array_equal(result["num_gt"], [4, 0, 1])
    assert result["per_class"]["a"] == pytest.approx(ALL_POINT)
    eleven = evaluate_detections(dets, gts, num_classes=3, use_07_metric=True)
    assert eleven["ap"][0] == pytest.approx(ELEVEN_POINT)
    assert set(eleven["per_class"]) == {"0", "1", "2"}


def test_perfect_detections_score_one():
    gts = [
        _gt([[0, 0, 10, 10], [5, 30, 25, 60]], [0, 1]),
        _gt([[40, 40, 80, 90]], [1]),
        _gt([], []),
    ]
    dets = [_det(g["boxes"], g["classes"], np.linspace(0.9, 0.5, len(g["classes"]))) for g in gts]
    for use_07 in (False, True):
        result = evaluate_detections(dets, gts, num_classes=2, use_07_metric=use_07)
        assert result["mAP"] == pytest.approx(1.0)
        np.testing.assert_allclose(result["ap"], [1.0, 1.0])


def test_iou_threshold_is_inclusive_and_uses_continuous_coordinates():
    gts = [_gt([[0, 0, 10, 10]], [0])]
    # IoU exactly 50 / 100 = 0.5 (with a "+1" convention it would be 66 / 121 = 0.545)
    half = [_det([[0, 0, 10, 5]], [0], [0.9])]
    assert evaluate_detections(half, gts, 1)["mAP"] == pytest.approx(1.0)
    assert evaluate_detections(half, gts, 1, iou_threshold=0.51)["mAP"] == 0.0
    # IoU 45 / 100 < 0.5
    below = [_det([[0, 0, 10, 4.5]], [0], [0.9])]
    assert evaluate_detections(below, gts, 1)["mAP"] == 0.0


def test_difficult_boxes_are_neither_positives_nor_false_positives():
    gts = [_gt([[0, 0, 10, 10], [50, 50, 70, 70]], [0, 0], [False, True])]
    # the best-scoring detection hits the difficult box: ignored, so precision stays 1
    dets = [_det([[50, 50, 70, 70], [0, 0, 10, 10], [50, 50, 70, 70]], [0, 0, 0], [0.9, 0.8, 0.7])]
    result = evaluate_detections(dets, gts, num_classes=1)
    assert result["num_gt"][0] == 1
    assert result["ap"][0] == pytest.approx(1.0)
    np.testing.assert_allclose(result["recall"][0], [0, 1, 1])  # ignored rows add nothing
    # without the difficult flag the same box is a positive: TP, TP, FP (duplicate)
    plain = evaluate_detections(dets, [_gt(gts[0]["boxes"], [0, 0])], num_classes=1)
    assert plain["num_gt"][0] == 2 and plain["ap"][0] == pytest.approx(1.0)
    np.testing.assert_allclose(plain["precision"][0], [1, 1, 2 / 3])
    # only a difficult box and no detection: no positives at all -> NaN
    only = evaluate_detections([_det([], [], [])], [_gt([[0, 0, 5, 5]], [0], [True])], 1)
    assert np.isnan(only["mAP"])


def test_duplicates_and_detections_in_images_without_ground_truth_are_false_positives():
    gts = [_gt([[0, 0, 10, 10]], [0]), _gt([], [])]
    dets = [
        _det([[0, 0, 10, 10], [0, 0, 10, 10]], [0, 0], [0.9, 0.95]),
        _det([[0, 0, 10, 10]], [0], [0.99]),
    ]
    result = evaluate_detections(dets, gts, num_classes=1)
    # score order: FP (empty image), TP, FP (duplicate): recall 0, 1, 1; precision 0, 1/2, 1/3
    np.testing.assert_allclose(result["precision"][0], [0, 0.5, 1 / 3])
    assert result["ap"][0] == pytest.approx(0.5)


def test_no_ground_truth_at_all_and_bad_input():
    result = evaluate_detections([_det([[0, 0, 5, 5]], [0], [0.5])], [_gt([], [])], num_classes=2)
    assert np.isnan(result["mAP"]) and np.all(np.isnan(result["ap"]))
    with pytest.raises(ValueError, match="images"):
        evaluate_detections([], [_gt([], [])], num_classes=1)


class FakeModel:
    """Returns each image's ground truth (original pixels) nudged by 1 px, plus one low-scoring
    false positive, padded to ``D = 8`` detections with a valid count; records what it was given."""

    def __init__(self, records):
        self.records = {r["image_id"]: r for r in records}
        self.order = [r["image_id"] for r in records]
        self.calls = []

    def __call__(self, inputs, training=False):
        self.calls.append((sorted(inputs), training))
        b = int(inputs["images"].shape[0])
        ids = self.order[:b]
        del self.order[:b]
        boxes = np.zeros((b, 8, 4), np.float32)
        scores = np.zeros((b, 8), np.float32)
        classes = np.full((b, 8), -1, np.int32)
        counts = np.zeros(b, np.int32)
        for i, image_id in enumerate(ids):
            r = self.records[image_id]
            n = len(r["boxes"])
            boxes[i, :n] = r["boxes"] + [1, 1, 1, 1]
            scores[i, :n] = 0.9
            classes[i, :n] = r["classes"]
            boxes[i, n] = [0, 0, 8, 8]
            scores[i, n] = 0.1
            classes[i, n] = 0
            boxes[i, n + 1 :] = 999.0  # garbage past num_detections must be ignored
            classes[i, n + 1 :] = 1
            scores[i, n + 1 :] = 1.0
            counts[i] = n + 1
        return {
            "detection_boxes": tf.constant(boxes),
            "detection_scores": tf.constant(scores),
            "detection_classes": tf.constant(classes),
            "num_detections": tf.constant(counts),
        }


def test_evaluate_model_with_a_fake_model():
    from tfrcnn.data.pipeline import make_dataset
    from tfrcnn.data.synthetic import make_synthetic_records

    records = make_synthetic_records(5, seed=8, max_objects=4)
    ds = make_dataset(records, batch_size=2, min_side=96, max_side=120, max_boxes=6)
    model = FakeModel(records)
    result = evaluate_model(model, ds, num_classes=3, class_names=["r", "e", "t"])
    assert model.calls[0] == (["image_scale", "image_shape", "images", "original_shape"], False)
    assert len(model.calls) == 3
    # the same detections scored directly against the records' ground truth
    dets, gts = [], []
    for r in records:
        n = len(r["boxes"])
        dets.append(
            _det(
                np.concatenate([r["boxes"] + 1, [[0, 0, 8, 8]]]),
                np.concatenate([r["classes"], [0]]),
                [0.9] * n + [0.1],
            )
        )
        gts.append(_gt(r["boxes"], r["classes"]))
    expected = evaluate_detections(dets, gts, num_classes=3)
    assert result["mAP"] == pytest.approx(expected["mAP"], abs=1e-6)
    np.testing.assert_allclose(result["ap"], expected["ap"], atol=1e-6)
    np.testing.assert_array_equal(result["num_gt"], expected["num_gt"])
    assert 0.9 < result["mAP"] <= 1.0
    assert set(result["per_class"]) == {"r", "e", "t"}
    assert result["seconds_per_image"] > 0
    # max_batches: only the first batch (2 images)
    partial = evaluate_model(FakeModel(records), ds, num_classes=3, max_batches=1)
    assert partial["num_gt"].sum() == sum(len(r["boxes"]) for r in records[:2])
    assert np.isfinite(partial["seconds_per_image"])
