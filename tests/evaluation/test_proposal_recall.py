"""Proposal recall (Faster R-CNN Fig. 2 / Hosang et al.) and its producers and reports."""

import os

import numpy as np
import pytest

from tests.conftest import bccd_path
from tfrcnn.evaluation.proposals import (
    DEFAULT_IOU_THRESHOLDS,
    format_recall_table,
    plot_recall_curves,
    proposal_recall,
    rpn_proposals,
)

GT = [0, 0, 10, 10]
IOU_045 = [0, 0, 10, 4.5]  # IoU with GT: 45 / 100
IOU_060 = [0, 0, 10, 6]
IOU_080 = [0, 0, 10, 8]


def test_default_thresholds():
    np.testing.assert_allclose(
        DEFAULT_IOU_THRESHOLDS, [0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95]
    )


def test_recall_hand_case_depends_on_top_n():
    proposals = [np.array([IOU_045, IOU_060, IOU_080], np.float32)]
    r = proposal_recall(proposals, [np.array([GT])], top_n=(1, 2, 3, 300))
    # top 1: only the 0.45 box -> nothing recalled at any threshold >= 0.5.
    np.testing.assert_array_equal(r["recall"][1], np.zeros(10))
    # top 2: best IoU 0.6 -> recalled at 0.5, 0.55, 0.6 (IoU equal to the threshold counts).
    np.testing.assert_array_equal(r["recall"][2], [1, 1, 1, 0, 0, 0, 0, 0, 0, 0])
    # top 3 (and any larger N): best IoU 0.8 -> recalled at 0.5 .. 0.8.
    np.testing.assert_array_equal(r["recall"][3], [1] * 7 + [0] * 3)
    np.testing.assert_array_equal(r["recall"][300], r["recall"][3])
    assert r["average_recall"] == pytest.approx({1: 0.0, 2: 0.3, 3: 0.7, 300: 0.7})
    assert r["num_gt"] == 1 and r["num_images"] == 1
    assert r["mean_proposals"] == {1: 1, 2: 2, 3: 3, 300: 3}
    # The 0.45 box last: one proposal is enough.
    r = proposal_recall(
        [np.array([IOU_060, IOU_045])], [np.array([GT])], iou_thresholds=[0.5], top_n=1
    )
    np.testing.assert_array_equal(r["recall"][1], [1.0])


def test_recall_counts_over_all_gt_and_skips_images_without_gt():
    gt_a = np.array([GT, [20, 20, 30, 30], [-1, -1, -1, -1]], np.float32)  # last row is padding
    props_a = np.array([IOU_080, [0, 0, 0, 0]], np.float32)  # the second gt is missed
    gt_b = np.array([[0, 0, 50, 50]], np.float32)
    props_b = np.array([[0, 0, 50, 50]], np.float32)
    gt_c = np.zeros((0, 4), np.float32)  # no ground truth: does not count
    props_c = np.array([[5, 5, 9, 9]], np.float32)
    r = proposal_recall(
        [props_a, props_b, props_c], [gt_a, gt_b, gt_c], iou_thresholds=[0.5, 0.85], top_n=(1, 2)
    )
    assert r["num_gt"] == 3 and r["num_images"] == 2
    np.testing.assert_allclose(r["recall"][1], [2 / 3, 1 / 3])
    np.testing.assert_allclose(r["recall"][2], [2 / 3, 1 / 3])
    assert r["average_recall"][2] == pytest.approx(0.5)
    # Dropping the image without gt changes nothing.
    r2 = proposal_recall([props_a, props_b], [gt_a, gt_b], iou_thresholds=[0.5, 0.85], top_n=(1, 2))
    np.testing.assert_allclose(r2["recall"][2], r["recall"][2])


def test_empty_proposals_and_no_gt():
    r = proposal_recall([np.zeros((0, 4)), []], [np.array([GT]), np.array([[1, 1, 5, 5]])])
    for n in (300, 1000, 2000):
        np.testing.assert_array_equal(r["recall"][n], np.zeros(10))
        assert r["average_recall"][n] == 0.0
    assert r["num_gt"] == 2
    r = proposal_recall([np.array([GT])], [np.zeros((0, 4))])
    assert r["num_gt"] == 0 and r["average_recall"][300] == 0.0
    r = proposal_recall([], [])
    assert r["num_images"] == 0 and r["recall"][2000].shape == (10,)


def test_recall_matches_a_slow_reference():
    rng = np.random.default_rng(1)

    def random_boxes(k):
        yx = rng.uniform(0, 80, (k, 2))
        hw = rng.uniform(2, 40, (k, 2))
        return np.concatenate([yx, yx + hw], axis=1).astype(np.float32)

    proposals = [random_boxes(int(k)) for k in rng.integers(0, 60, 5)]
    gts = [random_boxes(int(k)) for k in rng.integers(0, 6, 5)]
    thresholds = [0.3, 0.5, 0.7]
    r = proposal_recall(proposals, gts, iou_thresholds=thresholds, top_n=(5, 20, 100))

    def iou(a, b):
        h = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
        w = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
        union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - h * w
        return h * w / union

    for n in (5, 20, 100):
        expected = []
        for t in thresholds:
            hit = sum(
                any(iou(g, p) >= t for p in props[:n])
                for props, g_all in zip(proposals, gts)
                for g in g_all
            )
            expected.append(hit / sum(len(g) for g in gts))
        np.testing.assert_allclose(r["recall"][n], expected)


def test_recall_input_errors():
    with pytest.raises(ValueError, match="one of each an image"):
        proposal_recall([np.zeros((1, 4))], [])
    with pytest.raises(ValueError, match=r"image 0: ground-truth box 0 .*degenerate"):
        proposal_recall([np.zeros((1, 4))], [np.array([[5, 5, 5, 9]])])
    with pytest.raises(ValueError, match=r"image 0: proposals must be \[P, 4\]"):
        proposal_recall([np.zeros((1, 3))], [np.array([GT])])
    with pytest.raises(ValueError, match="top_n"):
        proposal_recall([np.zeros((1, 4))], [np.array([GT])], top_n=(0,))


def _results():
    r = proposal_recall([np.array([IOU_045, IOU_060, IOU_080])], [np.array([GT])], top_n=(1, 3))
    s = proposal_recall(
        [np.array([IOU_080])], [np.array([GT])], iou_thresholds=[0.5, 0.6], top_n=(1,)
    )
    return {"RPN": {**r, "seconds": 0.0123}, "selective search": s}


def test_format_recall_table():
    table = format_recall_table(_results())
    lines = table.splitlines()
    assert lines[0].split() == ["method", "N", "recall@0.5", "recall@0.7", "AR", "s/image"]
    assert lines[1].split() == ["RPN", "1", "0.0000", "0.0000", "0.0000", "0.0123"]
    assert lines[2].split() == ["RPN", "3", "1.0000", "1.0000", "0.7000", "0.0123"]
    # 0.7 was not computed for the second method, and it has no time.
    assert lines[3].split() == ["selective", "search", "1", "1.0000", "n/a", "1.0000", "n/a"]


def test_plot_writes_a_png(tmp_path):
    path = tmp_path / "sub" / "recall.png"
    assert plot_recall_curves(_results(), path) == path
    data = path.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 1000
    assert os.listdir(path.parent) == ["recall.png"]  # no temporary file left


def test_rpn_proposals_of_an_untrained_model_on_bccd():
    root = bccd_path()
    if not os.path.isdir(root):
        pytest.fail(f"the BCCD dataset is not at {root} (set TFRCNN_BCCD)")
    from tfrcnn.data.voc import read_voc
    from tfrcnn.models.faster_rcnn import FasterRCNN

    records, _, _ = read_voc(root, "test")
    records = records[:2]
    model = FasterRCNN(num_classes=3)
    proposals, seconds = rpn_proposals(model, records, max_proposals=100)
    assert len(proposals) == 2 and seconds > 0
    for record, boxes in zip(records, proposals):
        assert boxes.dtype == np.float32 and boxes.ndim == 2 and 0 < len(boxes) <= 100
        assert np.all(boxes >= -1e-3)
        assert np.all(boxes[:, [0, 2]] <= record["height"] + 1e-3)
        assert np.all(boxes[:, [1, 3]] <= record["width"] + 1e-3)
        assert np.all(boxes[:, 2] >= boxes[:, 0]) and np.all(boxes[:, 3] >= boxes[:, 1])
    # Sorted by score: the first proposals are the model's top scoring ones.
    import tensorflow as tf

    from tfrcnn.data.images import load_image

    image = load_image(records[0]["path"])[None]
    out = model.propose(tf.constant(image), max_proposals=100)
    scores = out["proposal_scores"].numpy()[0][: int(out["num_proposals"][0])]
    assert np.all(np.diff(scores) <= 1e-6)
    np.testing.assert_allclose(
        proposals[0], out["proposal_boxes"].numpy()[0][: len(scores)], atol=1e-3
    )
    r = proposal_recall(proposals, [rec["boxes"] for rec in records], top_n=(100,))
    assert r["num_gt"] == sum(len(rec["boxes"]) for rec in records)
    assert 0.0 <= r["average_recall"][100] <= 1.0
