"""smooth_l1, rpn_losses and rcnn_losses against hand-computed numbers on tiny inputs."""

import math

import numpy as np
import pytest
import tensorflow as tf

from tfrcnn.ops.losses import rcnn_losses, rpn_losses, smooth_l1
from tfrcnn.ops.matching import IGNORE, NEGATIVE, POSITIVE

LN2, LN3 = math.log(2.0), math.log(3.0)


# ------------------------------------------------------------------------------------- smooth_l1


def test_smooth_l1_hand_values_beta_one():
    x = tf.constant([0.0, 0.5, -0.5, 1.0, 2.0, -3.0])
    np.testing.assert_allclose(smooth_l1(x).numpy(), [0.0, 0.125, 0.125, 0.5, 1.5, 2.5], rtol=1e-6)


def test_smooth_l1_hand_values_small_beta():
    beta = 1.0 / 9.0  # the RPN's sigma = 3
    x = tf.constant([0.1, -0.1, 1.0, -2.0])
    expected = [0.5 * 0.01 / beta, 0.5 * 0.01 / beta, 1.0 - 0.5 * beta, 2.0 - 0.5 * beta]
    np.testing.assert_allclose(smooth_l1(x, beta).numpy(), expected, rtol=1e-6)
    # Continuous at |x| = beta.
    np.testing.assert_allclose(
        smooth_l1(tf.constant([beta, beta * (1 - 1e-6)]), beta).numpy(),
        [0.5 * beta, 0.5 * beta],
        rtol=1e-5,
    )


def test_smooth_l1_beta_zero_is_l1_and_casts():
    np.testing.assert_allclose(
        smooth_l1(tf.constant([0.05, -2.0, 0.0]), beta=0.0).numpy(), [0.05, 2.0, 0.0], rtol=1e-6
    )
    out = smooth_l1(tf.constant([1, -4], tf.int32), beta=2.0)
    assert out.dtype == tf.float32
    np.testing.assert_allclose(out.numpy(), [0.25, 3.0])


# ------------------------------------------------------------------------------------ rpn_losses


def _rpn_case():
    """2 images x 4 anchors; ignored anchors have extreme logits and deltas that must not count."""
    objectness = np.array(
        [
            [[0.0, 0.0], [LN3, 0.0], [0.0, 50.0], [0.0, LN3]],
            [[2.0, 0.0], [100.0, -100.0], [0.0, 0.0], [0.0, 0.0]],
        ],
        np.float32,
    )
    labels = np.array(
        [[POSITIVE, NEGATIVE, IGNORE, POSITIVE], [NEGATIVE, IGNORE, NEGATIVE, IGNORE]], np.int32
    )
    targets = np.zeros((2, 4, 4), np.float32)
    targets[0, 0] = [0.1, 0.5, 0.2, -1.0]
    targets[0, 3] = [0.3, 0.0, 0.0, 0.0]
    deltas = np.full((2, 4, 4), 7.0, np.float32)  # far from 0: only positives may count
    deltas[0, 0] = [0.15, 0.0, 0.2, 0.0]  # diff (0.05, -0.5, 0, 1)
    deltas[0, 3] = [0.4, 0.0, 0.0, 0.0]  # diff (0.1, 0, 0, 0)
    return objectness, deltas, labels, targets


# cross-entropy of the 5 sampled anchors: ln 2, -ln 0.75, -ln 0.75, ln(1 + e^-2), ln 2
RPN_CLS = (2 * LN2 - 2 * math.log(0.75) + math.log(1 + math.exp(-2.0))) / 5
_B = 1.0 / 9.0
RPN_BOX_SUM = (0.5 * 0.05**2 / _B) + (0.5 - 0.5 * _B) + 0.0 + (1.0 - 0.5 * _B) + (0.5 * 0.1**2 / _B)


def test_rpn_losses_anchor_locations_normaliser():
    cls_loss, box_loss = rpn_losses(*_rpn_case(), num_locations=2)
    assert cls_loss.dtype == tf.float32 and box_loss.dtype == tf.float32 and cls_loss.shape == ()
    np.testing.assert_allclose(cls_loss.numpy(), RPN_CLS, rtol=1e-5)
    # lambda * sum / (B * num_locations) = 10 * sum / 4
    np.testing.assert_allclose(box_loss.numpy(), 10.0 * RPN_BOX_SUM / 4.0, rtol=1e-5)


def test_rpn_losses_sampled_normaliser_and_weight():
    cls_loss, box_loss = rpn_losses(*_rpn_case(), box_normalizer="sampled", box_loss_weight=1.0)
    np.testing.assert_allclose(cls_loss.numpy(), RPN_CLS, rtol=1e-5)
    np.testing.assert_allclose(box_loss.numpy(), RPN_BOX_SUM / 5.0, rtol=1e-5)


def test_rpn_losses_beta():
    objectness, deltas, labels, targets = _rpn_case()
    _, box_loss = rpn_losses(
        objectness, deltas, labels, targets, beta=1.0, box_normalizer="sampled", box_loss_weight=1.0
    )
    # beta 1, diffs (0.05, -0.5, 0, 1) and (0.1, 0, 0, 0): 0.5 x^2 below 1, |x| - 0.5 from 1 on.
    expected = 0.5 * 0.0025 + 0.125 + 0.5 + 0.005
    np.testing.assert_allclose(box_loss.numpy(), expected / 5.0, rtol=1e-5)


def test_rpn_ignored_anchors_contribute_nothing():
    objectness, deltas, labels, targets = _rpn_case()
    changed_obj, changed_deltas = objectness.copy(), deltas.copy()
    ignored = labels == IGNORE
    changed_obj[ignored] = [-30.0, 30.0]
    changed_deltas[ignored] = -123.0
    for a, b in zip(
        rpn_losses(objectness, deltas, labels, targets, num_locations=2),
        rpn_losses(changed_obj, changed_deltas, labels, targets, num_locations=2),
    ):
        assert a.numpy() == b.numpy()


def test_rpn_no_positives_box_loss_exactly_zero():
    objectness, deltas, labels, targets = _rpn_case()
    labels = np.where(labels == POSITIVE, NEGATIVE, labels)
    for normaliser in ("anchor_locations", "sampled"):
        cls_loss, box_loss = rpn_losses(
            objectness,
            deltas,
            labels,
            np.zeros_like(targets),
            num_locations=2,
            box_normalizer=normaliser,
        )
        assert box_loss.numpy() == 0.0
        assert np.isfinite(cls_loss.numpy()) and cls_loss.numpy() > 0
    # Nothing sampled at all: both terms exactly 0, finite.
    cls_loss, box_loss = rpn_losses(
        objectness, deltas, np.full_like(labels, IGNORE), targets, num_locations=2
    )
    assert cls_loss.numpy() == 0.0 and box_loss.numpy() == 0.0


def test_rpn_gradients_only_reach_sampled_entries():
    objectness, deltas, labels, targets = (tf.constant(x) for x in _rpn_case())
    objectness, deltas = tf.Variable(objectness), tf.Variable(deltas)
    with tf.GradientTape() as tape:
        total = tf.add_n(rpn_losses(objectness, deltas, labels, targets, num_locations=2))
    g_obj, g_deltas = (
        tf.convert_to_tensor(g).numpy() for g in tape.gradient(total, [objectness, deltas])
    )
    ignored = labels.numpy() == IGNORE
    positive = labels.numpy() == POSITIVE
    np.testing.assert_array_equal(g_obj[ignored], 0.0)
    np.testing.assert_array_equal(g_deltas[~positive], 0.0)
    assert np.abs(g_deltas[positive]).sum() > 0 and np.all(np.isfinite(g_obj))


def test_rpn_bad_normaliser_raises():
    with pytest.raises(ValueError, match="box_normalizer"):
        rpn_losses(*_rpn_case(), num_locations=2, box_normalizer="anchors")
    with pytest.raises(ValueError, match="num_locations"):
        rpn_losses(*_rpn_case(), box_normalizer="anchor_locations")


# ----------------------------------------------------------------------------------- rcnn_losses


def _rcnn_case():
    """2 images x 2 ROIs, 2 user classes (3 logits); the last ROI is padding (weight 0)."""
    logits = np.array(
        [
            [[0.0, 0.0, 0.0], [math.log(0.5), math.log(0.25), math.log(0.25)]],
            [[0.0, math.log(4.0), 0.0], [100.0, -100.0, 0.0]],
        ],
        np.float32,
    )
    labels = np.array([[2, 0], [1, 2]], np.int32)
    weights = np.array([[1.0, 1.0], [1.0, 0.0]], np.float32)
    deltas = np.full(
        (2, 2, 2, 4), 9.0, np.float32
    )  # the unchosen class / background / padding: ignored
    deltas[0, 0, 1] = [0.5, 0.0, 0.0, 2.0]  # class 1 of a label-2 ROI, target 0
    deltas[1, 0, 0] = [0.0, 0.0, 0.0, 0.0]  # class 0 of a label-1 ROI
    targets = np.zeros((2, 2, 4), np.float32)
    targets[1, 0] = [0.2, 0.0, -3.0, 0.0]
    targets[1, 1] = [5.0, 5.0, 5.0, 5.0]  # padding
    return logits, deltas, labels, targets, weights


RCNN_CLS = (LN3 + LN2 + math.log(1.5)) / 3  # -ln(1/3), -ln(0.5), -ln(4/6)
RCNN_BOX = ((0.125 + 1.5) + (0.02 + 2.5)) / 3  # smooth-L1 (beta 1) of the two foreground ROIs


def test_rcnn_losses_hand_values():
    cls_loss, box_loss = rcnn_losses(*_rcnn_case())
    assert cls_loss.dtype == tf.float32 and box_loss.shape == ()
    np.testing.assert_allclose(cls_loss.numpy(), RCNN_CLS, rtol=1e-5)
    np.testing.assert_allclose(box_loss.numpy(), RCNN_BOX, rtol=1e-5)
    _, box_loss = rcnn_losses(*_rcnn_case(), beta=0.0, box_loss_weight=2.0)
    np.testing.assert_allclose(box_loss.numpy(), 2.0 * (2.5 + 3.2) / 3, rtol=1e-5)


def test_rcnn_padding_contributes_nothing():
    logits, deltas, labels, targets, weights = _rcnn_case()
    base = [t.numpy() for t in rcnn_losses(logits, deltas, labels, targets, weights)]
    logits[1, 1] = [-50.0, 0.0, 50.0]
    deltas[1, 1] = -77.0
    targets[1, 1] = 3.0
    labels[1, 1] = 0
    changed = [t.numpy() for t in rcnn_losses(logits, deltas, labels, targets, weights)]
    assert base == changed


def test_rcnn_only_the_labelled_class_deltas_count():
    logits, deltas, labels, targets, weights = _rcnn_case()
    base = rcnn_losses(logits, deltas, labels, targets, weights)[1].numpy()
    deltas[0, 0, 0] = -40.0  # class 0 of a class-1 ROI
    deltas[0, 1] = 40.0  # background ROI
    assert rcnn_losses(logits, deltas, labels, targets, weights)[1].numpy() == base


def test_rcnn_no_foreground_box_loss_exactly_zero():
    logits, deltas, labels, targets, weights = _rcnn_case()
    labels = np.zeros_like(labels)
    cls_loss, box_loss = rcnn_losses(logits, deltas, labels, np.zeros_like(targets), weights)
    assert box_loss.numpy() == 0.0 and np.isfinite(cls_loss.numpy())
    cls_loss, box_loss = rcnn_losses(logits, deltas, labels, targets, np.zeros_like(weights))
    assert cls_loss.numpy() == 0.0 and box_loss.numpy() == 0.0
