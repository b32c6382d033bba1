"""ROISampler: labels, foreground fraction, gt as proposals, targets, padding weights, gradients."""

import keras
import numpy as np
import tensorflow as tf
from conftest import global_policy

from tfrcnn.layers.roi_sampler import BACKGROUND, ROISampler
from tfrcnn.ops.boxes import box_iou, encode_boxes

GT = np.array([[[0, 0, 10, 10], [20, 20, 40, 40], [0, 0, 5, 5]]], np.float32)
GT_CLASSES = np.array([[2, 0, -1]], np.int32)  # the third row is padding
PROPOSALS = np.array(
    [
        [
            [0, 0, 10, 10],  # IoU 1 with gt 0 -> class 2 + 1
            [0, 0, 10, 8],  # IoU 0.8 with gt 0 -> 3
            [20, 20, 40, 30],  # IoU 0.5 with gt 1 -> 0 + 1
            [20, 20, 40, 29],  # IoU 0.45 -> background
            [0, 0, 5, 5],  # IoU 0.25 with gt 0 (1 with the padding row) -> background
            [50, 50, 60, 60],
        ]
    ],  # no overlap -> background
    np.float32,
)
EXPECTED_LABELS = [3, 3, 1, 0, 0, 0]


def _as_numpy(outputs):
    return [t.numpy() for t in outputs]


def _row_of(roi, boxes):
    hits = np.flatnonzero(np.all(np.isclose(boxes, roi), axis=-1))
    assert len(hits) == 1, (roi, boxes)
    return hits[0]


def test_labels_are_gt_class_plus_one_for_foreground():
    sampler = ROISampler(batch_size_per_image=10, positive_fraction=0.5, add_gt_to_proposals=False)
    rois, labels, targets, weights = _as_numpy(
        sampler(PROPOSALS, np.ones((1, 6), bool), GT, GT_CLASSES)
    )
    assert rois.shape == (1, 10, 4) and labels.shape == (1, 10) and targets.shape == (1, 10, 4)
    assert weights.shape == (1, 10) and labels.dtype == np.int32
    # All 6 candidates sampled (3 foreground <= 5 slots), then 4 padding slots.
    np.testing.assert_array_equal(weights[0], [1] * 6 + [0] * 4)
    seen = sorted(_row_of(rois[0, s], PROPOSALS[0]) for s in range(6))
    assert seen == list(range(6))
    for s in range(6):
        assert labels[0, s] == EXPECTED_LABELS[_row_of(rois[0, s], PROPOSALS[0])]
    np.testing.assert_array_equal(labels[0, 6:], BACKGROUND)
    np.testing.assert_array_equal(targets[0, 6:], 0.0)


def test_targets_encode_gt_against_roi_with_head_weights():
    sampler = ROISampler(batch_size_per_image=10, positive_fraction=0.5, add_gt_to_proposals=False)
    rois, labels, targets, _ = _as_numpy(sampler(PROPOSALS, np.ones((1, 6), bool), GT, GT_CLASSES))
    for s in range(10):
        if labels[0, s] > 0:
            gt = GT[0, 0] if labels[0, s] == 3 else GT[0, 1]
            expected = encode_boxes(gt[None], rois[0, s][None], weights=(10, 10, 5, 5)).numpy()[0]
            np.testing.assert_allclose(targets[0, s], expected, rtol=1e-5, atol=1e-6)
        else:
            np.testing.assert_array_equal(targets[0, s], 0.0)
    # Proposal 1 ([0, 0, 10, 8] for gt [0, 0, 10, 10]): dx = 10 * 1 / 8, dw = 5 * log(10 / 8).
    s = [i for i in range(10) if np.allclose(rois[0, i], [0, 0, 10, 8])][0]
    np.testing.assert_allclose(
        targets[0, s], [0, 10 * 1 / 8, 0, 5 * np.log(10 / 8)], rtol=1e-5, atol=1e-6
    )


def test_foreground_count_at_most_the_fraction():
    rng = np.random.default_rng(0)
    jitter = rng.uniform(-1, 1, size=(1, 12, 4)).astype("float32")
    fg = GT[:, :1] + jitter  # 12 foreground proposals around gt 0
    bg = np.tile(np.array([[[60, 60, 70, 70]]], np.float32), (1, 12, 1)) + 3 * np.abs(jitter)
    proposals = np.concatenate([fg, bg], axis=1)
    assert np.all(box_iou(fg[0], GT[0, :1]).numpy() >= 0.5)
    sampler = ROISampler(batch_size_per_image=8, positive_fraction=0.25)
    for _ in range(3):
        _, labels, _, weights = _as_numpy(
            sampler(proposals, np.ones((1, 24), bool), GT, GT_CLASSES)
        )
        assert (labels > 0).sum() == 2  # int(8 * 0.25), with plenty available
        np.testing.assert_array_equal(weights, 1.0)


def test_gt_boxes_are_sampled_when_no_proposal_is_valid():
    sampler = ROISampler(batch_size_per_image=6, positive_fraction=0.5, add_gt_to_proposals=True)
    rois, labels, targets, weights = _as_numpy(
        sampler(PROPOSALS, np.zeros((1, 6), bool), GT, GT_CLASSES)
    )
    # Only the two real gt boxes are candidates: both foreground, then padding.
    np.testing.assert_array_equal(weights[0], [1, 1, 0, 0, 0, 0])
    assert sorted(labels[0, :2].tolist()) == [1, 3]
    for s in range(2):
        gt_row = 0 if labels[0, s] == 3 else 1
        np.testing.assert_allclose(rois[0, s], GT[0, gt_row])
    np.testing.assert_allclose(targets[0, :2], 0.0, atol=1e-6)
    np.testing.assert_array_equal(labels[0, 2:], BACKGROUND)
    np.testing.assert_array_equal(targets[0, 2:], 0.0)


def test_without_gt_as_proposals_nothing_valid_is_all_padding():
    sampler = ROISampler(batch_size_per_image=4, add_gt_to_proposals=False)
    _, labels, targets, weights = _as_numpy(
        sampler(PROPOSALS, np.zeros((1, 6), bool), GT, GT_CLASSES)
    )
    np.testing.assert_array_equal(weights, 0.0)
    np.testing.assert_array_equal(labels, BACKGROUND)
    np.testing.assert_array_equal(targets, 0.0)


def test_padded_gt_never_matched():
    # Only the padding row overlaps these proposals; they must be background, not class 0 (label 1).
    proposals = np.array([[[0, 0, 5, 5], [0, 0, 5, 4]]], np.float32)
    gt = np.array([[[100, 100, 120, 120], [0, 0, 5, 5]]], np.float32)
    classes = np.array([[1, -1]], np.int32)
    _, labels, targets, weights = _as_numpy(
        ROISampler(batch_size_per_image=4, positive_fraction=0.5)(
            proposals, np.ones((1, 2), bool), gt, classes
        )
    )
    # Candidates: 2 proposals (background) + the real gt (foreground, label 2); the padding gt row
    # is not a candidate and not a match.
    assert sorted(labels[0][weights[0] > 0].tolist()) == [0, 0, 2]
    assert (weights[0] > 0).sum() == 3


def test_image_without_gt_gives_background_only():
    gt_classes = np.full((1, 3), -1, np.int32)
    rois, labels, targets, weights = _as_numpy(
        ROISampler(batch_size_per_image=8)(PROPOSALS, np.ones((1, 6), bool), GT, gt_classes)
    )
    np.testing.assert_array_equal(labels, BACKGROUND)
    np.testing.assert_array_equal(targets, 0.0)
    assert weights.sum() == 6  # the six proposals; no gt candidates


def test_batch_of_two_images():
    proposals = np.concatenate([PROPOSALS, PROPOSALS[:, ::-1] + 1.0], axis=0)
    gt = np.concatenate([GT, GT + 1.0], axis=0)
    classes = np.array([[2, 0, -1], [1, -1, -1]], np.int32)
    valid = np.array([[True] * 6, [True, True, True, False, False, False]])
    rois, labels, _, weights = _as_numpy(
        ROISampler(batch_size_per_image=12, positive_fraction=0.5, add_gt_to_proposals=False)(
            proposals, valid, gt, classes
        )
    )
    np.testing.assert_array_equal(weights.sum(axis=1), [6, 3])
    # Image 1 reversed its proposals: valid rows are [50, 50, 60, 60], [0, 0, 5, 5], [20, 20, 40, 29] (+1),
    # with only gt 0 (class 1) real: all background.
    np.testing.assert_array_equal(labels[1], BACKGROUND)
    assert sorted(labels[0][weights[0] > 0].tolist()) == [0, 0, 0, 1, 3, 3]


def test_gradient_flows_to_proposals_only_through_rois():
    proposals = tf.Variable(PROPOSALS)
    gt = tf.Variable(GT)
    # 6 proposals + 2 real gt = 8 candidates in 8 slots: every one sampled once, no padding.
    sampler = ROISampler(batch_size_per_image=8, positive_fraction=1.0, add_gt_to_proposals=True)
    with tf.GradientTape(persistent=True) as tape:
        rois, labels, targets, weights = sampler(proposals, np.ones((1, 6), bool), gt, GT_CLASSES)
        roi_sum = tf.reduce_sum(rois * tf.range(1, 5, dtype=tf.float32))
        target_sum = tf.reduce_sum(targets) + tf.reduce_sum(weights)
    grad = tape.gradient(roi_sum, proposals)
    assert grad is not None
    grad = tf.convert_to_tensor(grad).numpy()
    assert np.abs(grad).sum() > 0
    # Every proposal is sampled exactly once: d(roi_sum)/d(proposal) = [1, 2, 3, 4].
    np.testing.assert_array_equal(weights.numpy(), 1.0)
    np.testing.assert_allclose(grad[0], np.tile([1, 2, 3, 4], (6, 1)))
    assert tape.gradient(target_sum, proposals) is None
    assert tape.gradient(target_sum, gt) is None
    assert labels.dtype == tf.int32
    del tape


def test_get_config_round_trip():
    layer = ROISampler(
        batch_size_per_image=32,
        positive_fraction=0.5,
        positive_iou=0.6,
        negative_iou_high=0.4,
        negative_iou_low=0.1,
        box_weights=(1, 1, 1, 1),
        add_gt_to_proposals=False,
        name="sampler",
    )
    config = layer.get_config()
    assert config["batch_size_per_image"] == 32 and config["positive_fraction"] == 0.5
    assert config["positive_iou"] == 0.6 and config["negative_iou_high"] == 0.4
    assert config["negative_iou_low"] == 0.1 and config["box_weights"] == (1.0, 1.0, 1.0, 1.0)
    assert config["add_gt_to_proposals"] is False
    assert ROISampler.from_config(config).get_config() == config


def _sorted_rows(rois, labels, targets, weights):
    rows = np.concatenate([rois, labels[..., None], targets, weights[..., None]], axis=-1)
    return [r[np.lexsort(r.T[::-1])] for r in rows]


def test_keras_round_trip_in_a_functional_model(tmp_path):
    inputs = [
        keras.Input((6, 4)),
        keras.Input((6,), dtype="bool"),
        keras.Input((3, 4)),
        keras.Input((3,), dtype="int32"),
    ]
    outputs = ROISampler(batch_size_per_image=10, positive_fraction=0.5, name="sampler")(*inputs)
    assert [tuple(o.shape) for o in outputs] == [
        (None, 10, 4),
        (None, 10),
        (None, 10, 4),
        (None, 10),
    ]
    model = keras.Model(inputs, list(outputs))
    path = str(tmp_path / "sampler.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    x = [PROPOSALS, np.ones((1, 6), bool), GT, GT_CLASSES]
    # Everything fits in 10 slots, so only the (random) order may differ between calls.
    want = _sorted_rows(*(t.numpy() for t in model(x)))
    got = _sorted_rows(*(t.numpy() for t in loaded(x)))
    for a, b in zip(got, want):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)


def test_same_sample_under_mixed_bfloat16():
    shift = np.float32(600.37)  # pixel coordinates bfloat16 cannot hold
    args = (PROPOSALS + shift, np.ones((1, 6), bool), GT + shift, GT_CLASSES)
    want = ROISampler(batch_size_per_image=10, positive_fraction=0.5)(*args)
    with global_policy("mixed_bfloat16"):
        got = ROISampler(batch_size_per_image=10, positive_fraction=0.5)(*args)
    assert [t.dtype for t in got] == [t.dtype for t in want]
    for a, b in zip(
        _sorted_rows(*(t.numpy() for t in got)), _sorted_rows(*(t.numpy() for t in want))
    ):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)
