"""RPNTargetAssigner against a numpy reference of the paper's rule; sampling, targets, no-gt images."""

import keras
import numpy as np
import tensorflow as tf
from conftest import global_policy

from tfrcnn.layers.anchor_generator import AnchorGenerator
from tfrcnn.layers.rpn_targets import RPNTargetAssigner
from tfrcnn.ops.anchors import generate_anchors
from tfrcnn.ops.boxes import encode_boxes
from tfrcnn.ops.matching import IGNORE, NEGATIVE, POSITIVE


def _np_iou(anchors, gt):
    """float32 IoU [N, M] computed like ops.box_iou (so ties compare equal); 0 for degenerate boxes."""
    a, g = anchors[:, None, :], gt[None, :, :]
    ih = np.maximum(
        np.minimum(a[..., 2], g[..., 2]) - np.maximum(a[..., 0], g[..., 0]), np.float32(0)
    )
    iw = np.maximum(
        np.minimum(a[..., 3], g[..., 3]) - np.maximum(a[..., 1], g[..., 1]), np.float32(0)
    )
    inter = ih * iw
    area = lambda b: np.maximum(b[..., 2] - b[..., 0], 0) * np.maximum(b[..., 3] - b[..., 1], 0)  # noqa: E731
    a1, a2 = area(a), area(g)
    union = a1 + a2 - inter
    ok = (a1 > 0) & (a2 > 0) & (union > 0)
    return np.where(ok, inter / np.where(ok, union, 1), 0).astype(np.float32)


def _reference(anchors, gt_boxes, gt_classes, image_shape, allowed_border=0.0, pos=0.7, neg=0.3):
    """The paper's rule, one image and one anchor at a time: labels [B, N] and matched gt [B, N]."""
    batch, n = len(gt_boxes), len(anchors)
    labels = np.full((batch, n), IGNORE, np.int32)
    matched = np.zeros((batch, n), np.int32)
    for b in range(batch):
        h, w = image_shape[b]
        if allowed_border is None:
            inside = np.ones(n, bool)
        else:
            inside = (
                (anchors[:, 0] >= -allowed_border)
                & (anchors[:, 1] >= -allowed_border)
                & (anchors[:, 2] <= h + allowed_border)
                & (anchors[:, 3] <= w + allowed_border)
            )
        real = np.flatnonzero(gt_classes[b] >= 0)
        if len(real) == 0:
            labels[b][inside] = NEGATIVE
            continue
        iou = _np_iou(anchors, gt_boxes[b][real])  # [N, M_real]
        for i in range(n):
            if not inside[i]:
                continue
            best = iou[i].max()
            matched[b, i] = real[iou[i].argmax()]
            labels[b, i] = POSITIVE if best >= pos else (NEGATIVE if best < neg else IGNORE)
        # The best anchor(s) of each gt are positive (ties included), if they overlap it at all.
        best_of = np.full(n, -1.0)
        for m in range(len(real)):
            column = np.where(inside, iou[:, m], -1.0)
            top = column.max()
            if top <= 0:
                continue
            for i in np.flatnonzero(column == top):
                labels[b, i] = POSITIVE
                if iou[i, m] > best_of[i]:
                    best_of[i] = iou[i, m]
                    matched[b, i] = real[m]
    return labels, matched


def _problem():
    anchors = generate_anchors(
        (4, 6), 8, (8.0, 16.0), (0.5, 1.0, 2.0)
    ).numpy()  # 144 anchors, 32 x 48
    gt_boxes = np.array(
        [
            [[2, 3, 18, 14], [14, 20, 30, 44], [0, 0, 0, 0]],
            [[5, 5, 9, 11], [0, 0, 0, 0], [0, 0, 0, 0]],
        ],
        np.float32,
    )
    gt_classes = np.array([[0, 3, -1], [1, -1, -1]], np.int32)
    image_shape = np.array([[32, 48], [24, 40]], np.int32)
    return anchors, gt_boxes, gt_classes, image_shape


def _check_against_reference(layer, allowed_border):
    anchors, gt_boxes, gt_classes, image_shape = _problem()
    labels, targets = layer(anchors, gt_boxes, gt_classes, image_shape)
    ref_labels, ref_matched = _reference(anchors, gt_boxes, gt_classes, image_shape, allowed_border)
    np.testing.assert_array_equal(labels.numpy(), ref_labels)
    positive = ref_labels == POSITIVE
    expected = encode_boxes(
        np.take_along_axis(gt_boxes, ref_matched[..., None], axis=1), anchors[None]
    ).numpy()
    expected = np.where(positive[..., None], expected, 0.0)
    np.testing.assert_allclose(targets.numpy(), expected, rtol=1e-5, atol=1e-5)
    return ref_labels


def test_matches_the_paper_rule_with_border_anchors_ignored():
    # batch_size_per_image >= 2 N keeps every labelled anchor, so the sample is the whole rule.
    ref_labels = _check_against_reference(RPNTargetAssigner(batch_size_per_image=288), 0.0)
    # A meaningful case: positives in both images, some negatives, some ignored.
    for b in range(2):
        assert (ref_labels[b] == POSITIVE).sum() >= 1
        assert (ref_labels[b] == NEGATIVE).sum() >= 1 and (ref_labels[b] == IGNORE).sum() >= 1


def test_allowed_border_none_keeps_crossing_anchors():
    anchors = _problem()[0]
    ref_none = _check_against_reference(
        RPNTargetAssigner(batch_size_per_image=288, allowed_border=None), None
    )
    ref_zero = _reference(*_problem(), allowed_border=0.0)[0]
    crossing = (anchors[:, 0] < 0) | (anchors[:, 1] < 0)
    assert np.all(ref_zero[:, crossing] == IGNORE)
    assert np.any(ref_none[:, crossing] != IGNORE)


def test_positive_allowed_border():
    _check_against_reference(RPNTargetAssigner(batch_size_per_image=288, allowed_border=4.0), 4.0)


def test_sampling_limits_and_sampled_labels_agree_with_the_rule():
    anchors, gt_boxes, gt_classes, image_shape = _problem()
    ref_labels = _reference(anchors, gt_boxes, gt_classes, image_shape)[0]
    layer = RPNTargetAssigner(batch_size_per_image=16, positive_fraction=0.25)
    for _ in range(3):
        labels, targets = (t.numpy() for t in layer(anchors, gt_boxes, gt_classes, image_shape))
        sampled = labels != IGNORE
        assert np.all(sampled.sum(axis=1) <= 16)
        assert np.all((labels == POSITIVE).sum(axis=1) <= 4)
        assert np.all(labels[sampled] == ref_labels[sampled])
        # Enough negatives exist: every image gets exactly 16.
        np.testing.assert_array_equal(sampled.sum(axis=1), [16, 16])
        np.testing.assert_array_equal(targets[labels != POSITIVE], 0.0)
        assert np.all(np.abs(targets[labels == POSITIVE]).sum(axis=-1) > 0)


def test_image_without_ground_truth():
    anchors, gt_boxes, gt_classes, image_shape = _problem()
    gt_classes = gt_classes.copy()
    gt_classes[1] = -1
    labels, targets = RPNTargetAssigner(batch_size_per_image=32)(
        anchors, gt_boxes, gt_classes, image_shape
    )
    labels, targets = labels.numpy(), targets.numpy()
    assert set(np.unique(labels[1])) <= {NEGATIVE, IGNORE}
    assert (labels[1] == NEGATIVE).sum() == 32
    np.testing.assert_array_equal(targets[1], 0.0)
    assert np.all(np.isfinite(targets))
    assert (labels[0] == POSITIVE).sum() >= 1


def test_outputs_carry_no_gradient():
    anchors, gt_boxes, gt_classes, image_shape = _problem()
    gt = tf.Variable(gt_boxes)
    with tf.GradientTape() as tape:
        _, targets = RPNTargetAssigner(batch_size_per_image=288)(
            anchors, gt, gt_classes, image_shape
        )
        total = tf.reduce_sum(targets)
    assert tape.gradient(total, gt) is None


def test_get_config_round_trip():
    layer = RPNTargetAssigner(
        positive_iou=0.6,
        negative_iou=0.2,
        batch_size_per_image=64,
        positive_fraction=0.25,
        allowed_border=None,
        box_weights=(2, 2, 1, 1),
        name="rpn_targets",
    )
    config = layer.get_config()
    assert config["positive_iou"] == 0.6 and config["negative_iou"] == 0.2
    assert config["batch_size_per_image"] == 64 and config["positive_fraction"] == 0.25
    assert config["allowed_border"] is None and config["box_weights"] == (2.0, 2.0, 1.0, 1.0)
    assert RPNTargetAssigner.from_config(config).get_config() == config
    assert RPNTargetAssigner().get_config()["allowed_border"] == 0.0


def test_keras_round_trip_in_a_functional_model(tmp_path):
    features = keras.Input((4, 6, 2))
    gt_boxes, gt_classes = keras.Input((3, 4)), keras.Input((3,), dtype="int32")
    image_shape = keras.Input((2,), dtype="int32")
    anchors = AnchorGenerator(stride=8, scales=(8, 16), name="anchors")(features)
    labels, targets = RPNTargetAssigner(batch_size_per_image=288, name="targets")(
        anchors, gt_boxes, gt_classes, image_shape
    )
    assert tuple(labels.shape) == (None, 144) and tuple(targets.shape) == (None, 144, 4)
    assert labels.dtype == "int32"
    model = keras.Model([features, gt_boxes, gt_classes, image_shape], [labels, targets])
    path = str(tmp_path / "targets.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    _, boxes, classes, shapes = _problem()
    x = [np.zeros((2, 4, 6, 2), np.float32), boxes, classes, shapes]
    want, got = model(x), loaded(x)
    for a, b in zip(got, want):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    np.testing.assert_array_equal(want[0].numpy(), _reference(*_problem())[0])


def test_same_targets_under_mixed_bfloat16():
    anchors, gt_boxes, gt_classes, image_shape = _problem()
    shift = np.float32(600.37)  # pixel coordinates bfloat16 cannot hold
    args = (anchors + shift, gt_boxes + shift, gt_classes, image_shape + 700)
    want = RPNTargetAssigner(batch_size_per_image=288, allowed_border=None)(*args)
    with global_policy("mixed_bfloat16"):
        got = RPNTargetAssigner(batch_size_per_image=288, allowed_border=None)(*args)
    np.testing.assert_array_equal(got[0].numpy(), want[0].numpy())
    np.testing.assert_allclose(got[1].numpy(), want[1].numpy(), rtol=1e-6, atol=1e-6)
    assert got[1].dtype == tf.float32
