"""Tests of tfrcnn.ops.boxes against hand-computed values and slow numpy references."""

import math

import numpy as np
import pytest
import tensorflow as tf

from tfrcnn.ops.boxes import (
    BOX_FORMATS,
    box_area,
    box_iou,
    clip_boxes,
    convert_boxes,
    decode_boxes,
    denormalize_boxes,
    encode_boxes,
    normalize_boxes,
    valid_box_mask,
)


def random_boxes(rng, n, size=100.0, degenerate=0.0):
    """yxyx boxes inside [0, size]; a fraction `degenerate` of them zero-area or inverted."""
    p = rng.uniform(0, size, (n, 2, 2))
    y1, y2 = np.sort(p[:, :, 0], axis=1).T
    x1, x2 = np.sort(p[:, :, 1], axis=1).T
    boxes = np.stack([y1, x1, y2, x2], axis=1)
    bad = rng.uniform(size=n) < degenerate
    inverted = boxes[:, [2, 1, 0, 3]]
    flat = boxes.copy()
    flat[:, 2] = flat[:, 0]
    boxes[bad] = np.where(rng.uniform(size=(n, 1)) < 0.5, inverted, flat)[bad]
    return boxes.astype(np.float32)


def loop_iou(a, b):
    """IoU by the definition, one pair at a time."""
    out = np.zeros((len(a), len(b)))
    for i, (ay1, ax1, ay2, ax2) in enumerate(a.astype(np.float64)):
        for j, (by1, bx1, by2, bx2) in enumerate(b.astype(np.float64)):
            area_a = max(ay2 - ay1, 0) * max(ax2 - ax1, 0)
            area_b = max(by2 - by1, 0) * max(bx2 - bx1, 0)
            if area_a <= 0 or area_b <= 0:
                continue
            ih = max(min(ay2, by2) - max(ay1, by1), 0)
            iw = max(min(ax2, bx2) - max(ax1, bx1), 0)
            inter = ih * iw
            out[i, j] = inter / (area_a + area_b - inter)
    return out


def test_box_area_counts_negative_extents_as_zero():
    area = box_area([[0, 0, 10, 20], [5, 5, 2, 9], [0, 0, 3, -1], [1, 1, 1, 5]])
    assert area.dtype == tf.float32
    np.testing.assert_allclose(area.numpy(), [200, 0, 0, 0])
    assert box_area(np.zeros((2, 3, 4))).shape == (2, 3)


def test_iou_hand_fixtures():
    a = [[0.0, 0.0, 10.0, 10.0]]
    others = [
        [0.0, 10.0, 10.0, 20.0],  # touching along an edge: 0
        [10.0, 10.0, 20.0, 20.0],  # touching at a corner: 0
        [2.0, 2.0, 7.0, 7.0],  # nested: 25 / 100
        [30.0, 30.0, 40.0, 40.0],  # disjoint: 0
        [0.0, 5.0, 10.0, 15.0],  # half overlap: 50 / 150
        [0.0, 0.0, 10.0, 10.0],  # identical: 1
        [5.0, 5.0, 5.0, 9.0],  # zero-area inside a: 0
        [10.0, 10.0, 0.0, 0.0],  # inverted: 0
    ]
    iou = box_iou(a, others).numpy()
    np.testing.assert_allclose(iou, [[0, 0, 0.25, 0, 1 / 3, 1, 0, 0]], rtol=1e-6)
    zero = [[5.0, 5.0, 5.0, 5.0], [1.0, 1.0, 1.0, 1.0]]
    z = box_iou(zero, zero).numpy()
    assert np.all(np.isfinite(z)) and np.all(z == 0)


def test_iou_matches_loop_reference_on_random_boxes():
    rng = np.random.default_rng(1)
    a = random_boxes(rng, 30, degenerate=0.2)
    b = random_boxes(rng, 20, degenerate=0.2)
    np.testing.assert_allclose(box_iou(a, b).numpy(), loop_iou(a, b), atol=1e-5)
    # Batched [B, N, 4] x [B, M, 4] -> [B, N, M].
    a2 = np.stack([a, a[::-1]])
    b2 = np.stack([b, random_boxes(rng, 20)])
    got = box_iou(a2, b2).numpy()
    assert got.shape == (2, 30, 20)
    for i in range(2):
        np.testing.assert_allclose(got[i], loop_iou(a2[i], b2[i]), atol=1e-5)


def test_iou_of_nan_box_is_zero_and_gradient_finite():
    a = tf.constant([[0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 10.0, 10.0]])
    b = tf.constant([[0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 5.0, 10.0]])
    with tf.GradientTape() as tape:
        tape.watch(a)
        iou = box_iou(a, b)
    grad = tape.gradient(iou, a)
    np.testing.assert_allclose(iou.numpy(), [[0, 0], [0, 0.5]])
    assert np.all(np.isfinite(grad.numpy()))
    nan = box_iou([[0.0, 0.0, float("nan"), 1.0]], [[0.0, 0.0, 1.0, 1.0]]).numpy()
    assert nan[0, 0] == 0


def reference_encode(boxes, anchors, weights):
    b = boxes.astype(np.float64)
    a = anchors.astype(np.float64)
    h, w = b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]
    ha, wa = a[:, 2] - a[:, 0], a[:, 3] - a[:, 1]
    cy, cx = b[:, 0] + h / 2, b[:, 1] + w / 2
    cya, cxa = a[:, 0] + ha / 2, a[:, 1] + wa / 2
    wy, wx, wh, ww = weights
    return np.stack(
        [wy * (cy - cya) / ha, wx * (cx - cxa) / wa, wh * np.log(h / ha), ww * np.log(w / wa)],
        axis=1,
    )


def sized_boxes(rng, n, min_size, max_size, extent=500.0):
    """Boxes with centres in [0, extent] and heights / widths in [min_size, max_size]."""
    c = rng.uniform(0, extent, (n, 2))
    hw = rng.uniform(min_size, max_size, (n, 2))
    return np.concatenate([c - hw / 2, c + hw / 2], axis=1).astype(np.float32)


@pytest.mark.parametrize("weights", [(1.0, 1.0, 1.0, 1.0), (10.0, 10.0, 5.0, 5.0)])
def test_encode_matches_formula_and_decode_inverts_it(weights):
    rng = np.random.default_rng(2)
    boxes = sized_boxes(rng, 300, 2.0, 400.0)
    anchors = sized_boxes(rng, 300, 16.0, 400.0)
    # Below the decode clamp (which is one-sided): log(h / ha) < log(1000 / 16).
    assert np.all(reference_encode(boxes, anchors, (1, 1, 1, 1))[:, 2:] < math.log(1000 / 16))
    deltas = encode_boxes(boxes, anchors, weights)
    np.testing.assert_allclose(
        deltas.numpy(), reference_encode(boxes, anchors, weights), rtol=1e-4, atol=1e-4
    )
    decoded = decode_boxes(deltas, anchors, weights).numpy()
    np.testing.assert_allclose(decoded, boxes, rtol=1e-4, atol=1e-3)


def test_decode_clamps_scale_and_stays_finite_for_huge_deltas():
    anchors = np.array([[0.0, 0.0, 16.0, 16.0]] * 4, np.float32)
    deltas = np.array(
        [[0, 0, 10, 10], [100, -100, 100, -100], [-100, 100, -100, 100], [0, 0, 0, 0]], np.float32
    )
    boxes = decode_boxes(deltas, anchors).numpy()
    assert np.all(np.isfinite(boxes))
    # dh, dw = 10 are clamped to log(1000/16): the box is 1000 px, centred on the anchor.
    np.testing.assert_allclose(boxes[0], [8 - 500, 8 - 500, 8 + 500, 8 + 500], rtol=1e-5)
    np.testing.assert_allclose(boxes[3], [0, 0, 16, 16])
    # With weights (10, 10, 5, 5) the clamp applies after dividing by the weights.
    w = decode_boxes([[0.0, 0.0, 50.0, 5.0]], anchors[:1], (10, 10, 5, 5)).numpy()[0]
    np.testing.assert_allclose(w, [8 - 500, 8 - 8 * math.e, 8 + 500, 8 + 8 * math.e], rtol=1e-5)
    # clip=None disables the clamp.
    unclamped = decode_boxes([[0.0, 0.0, 5.0, 0.0]], anchors[:1], clip=None).numpy()[0]
    np.testing.assert_allclose(unclamped[2] - unclamped[0], 16 * math.exp(5), rtol=1e-5)


def test_encode_is_finite_for_degenerate_boxes_and_anchors():
    boxes = np.array([[10.0, 10.0, 20.0, 10.0 + 1e-7], [0, 0, 0, 0], [5, 5, 1, 1]], np.float32)
    anchors = np.array([[0.0, 0.0, 16.0, 16.0], [3, 3, 3, 3], [0, 0, 0, 0]], np.float32)
    deltas = encode_boxes(boxes, anchors).numpy()
    assert np.all(np.isfinite(deltas))
    assert np.all(np.isfinite(decode_boxes(deltas, anchors).numpy()))
    # A box 1e-7 wide is floored at 1e-6 px: dw = log(1e-6 / 16).
    np.testing.assert_allclose(deltas[0, 3], math.log(1e-6 / 16), rtol=1e-5)


def test_encode_broadcasts_anchors():
    rng = np.random.default_rng(3)
    anchors = random_boxes(rng, 5) + np.array([0, 0, 1, 1], np.float32)
    boxes = np.stack([random_boxes(rng, 5) + np.array([0, 0, 1, 1], np.float32)] * 2)  # [2, 5, 4]
    deltas = encode_boxes(boxes, anchors)
    assert deltas.shape == (2, 5, 4)
    np.testing.assert_allclose(decode_boxes(deltas, anchors).numpy(), boxes, rtol=1e-4, atol=1e-3)


def test_clip_boxes_single_and_per_image_shapes():
    boxes = np.array([[-5.0, 3.0, 50.0, 120.0], [10.0, -1.0, 20.0, 30.0]], np.float32)
    np.testing.assert_allclose(
        clip_boxes(boxes, (40, 100)).numpy(), [[0, 3, 40, 100], [10, 0, 20, 30]]
    )
    np.testing.assert_allclose(
        clip_boxes(boxes, tf.constant([40.0, 100.0])).numpy(), [[0, 3, 40, 100], [10, 0, 20, 30]]
    )
    batch = np.stack([boxes, boxes])  # [2, 2, 4]
    shapes = np.array([[40, 100], [15, 25]], np.int32)
    got = clip_boxes(batch, shapes).numpy()
    np.testing.assert_allclose(got[0], [[0, 3, 40, 100], [10, 0, 20, 30]])
    np.testing.assert_allclose(got[1], [[0, 3, 15, 25], [10, 0, 15, 25]])
    # [B, K, N, 4] boxes broadcast over the middle dims; [B, 4] boxes too.
    deep = np.stack([batch, batch], axis=1)  # [2, 2, 2, 4]
    np.testing.assert_allclose(clip_boxes(deep, shapes).numpy()[:, 0], got)
    np.testing.assert_allclose(
        clip_boxes(boxes, shapes).numpy(), [[0, 3, 40, 100], [10, 0, 15, 25]]
    )


def test_clip_boxes_in_tf_function_with_unknown_shapes():
    fn = tf.function(
        clip_boxes,
        input_signature=[
            tf.TensorSpec([None, None, 4], tf.float32),
            tf.TensorSpec([None, 2], tf.int32),
        ],
    )
    boxes = np.array([[[-5.0, 3.0, 50.0, 120.0]], [[1.0, 2.0, 3.0, 4.0]]], np.float32)
    got = fn(boxes, np.array([[40, 100], [2, 3]], np.int32)).numpy()
    np.testing.assert_allclose(got, [[[0, 3, 40, 100]], [[1, 2, 2, 3]]])


def test_normalize_and_denormalize():
    boxes = np.array([[[10.0, 20.0, 30.0, 40.0]], [[10.0, 20.0, 30.0, 40.0]]], np.float32)
    shapes = np.array([[100, 200], [50, 40]])
    norm = normalize_boxes(boxes, shapes).numpy()
    np.testing.assert_allclose(norm[:, 0], [[0.1, 0.1, 0.3, 0.2], [0.2, 0.5, 0.6, 1.0]], rtol=1e-6)
    np.testing.assert_allclose(denormalize_boxes(norm, shapes).numpy(), boxes, rtol=1e-6)
    np.testing.assert_allclose(
        normalize_boxes(boxes[0], (100, 200)).numpy(), [[0.1, 0.1, 0.3, 0.2]], rtol=1e-6
    )


def test_convert_boxes_hand_values_and_round_trips():
    yxyx = np.array([[20.0, 10.0, 28.0, 15.0]], np.float32)
    expected = {
        "yxyx": [[20, 10, 28, 15]],
        "xyxy": [[10, 20, 15, 28]],
        "xywh": [[10, 20, 5, 8]],
        "cxcywh": [[12.5, 24, 5, 8]],
    }
    for fmt in BOX_FORMATS:
        np.testing.assert_allclose(convert_boxes(yxyx, "yxyx", fmt).numpy(), expected[fmt])
    rng = np.random.default_rng(4)
    boxes = random_boxes(rng, 10).reshape(2, 5, 4)
    for source in BOX_FORMATS:
        for target in BOX_FORMATS:
            there = convert_boxes(convert_boxes(boxes, "yxyx", source), source, target)
            back = convert_boxes(there, target, "yxyx")
            np.testing.assert_allclose(back.numpy(), boxes, atol=1e-4)
    with pytest.raises(ValueError, match="unknown source format 'ltrb'"):
        convert_boxes(yxyx, "ltrb", "yxyx")


def test_valid_box_mask():
    boxes = [
        [0, 0, 10, 10],
        [0, 0, 0, 10],
        [0, 0, 10, -1],
        [0, 0, float("nan"), 1],
        [0, 0, float("inf"), 5],
        [0, 0, 2, 2],
    ]
    np.testing.assert_array_equal(
        valid_box_mask(boxes).numpy(), [True, False, False, False, False, True]
    )
    np.testing.assert_array_equal(
        valid_box_mask(boxes, min_size=2.0).numpy(), [True, False, False, False, False, False]
    )
    assert valid_box_mask(np.zeros((2, 3, 4))).shape == (2, 3)


def test_functions_accept_other_dtypes_and_return_float32():
    ints = np.array([[0, 0, 10, 10]], np.int64)
    doubles = ints.astype(np.float64)
    assert box_iou(ints, doubles).dtype == tf.float32
    assert encode_boxes(doubles, ints).dtype == tf.float32
    assert decode_boxes(tf.zeros([1, 4], tf.float16), ints).dtype == tf.float32


def test_gradients_of_decode_and_iou_match_numeric():
    anchors = tf.constant([[0.0, 0.0, 16.0, 16.0], [10.0, 20.0, 40.0, 30.0]])
    deltas = tf.constant([[0.1, -0.2, 0.3, -0.1], [0.0, 0.5, -0.4, 0.2]])
    theoretical, numerical = tf.test.compute_gradient(
        lambda d: decode_boxes(d, anchors, (10.0, 10.0, 5.0, 5.0)), [deltas], delta=1e-2
    )
    np.testing.assert_allclose(theoretical[0], numerical[0], rtol=1e-2, atol=1e-2)
    boxes = tf.constant([[1.0, 2.0, 12.0, 15.0], [8.0, 18.0, 30.0, 33.0]])
    theoretical, numerical = tf.test.compute_gradient(
        lambda b: box_iou(b, anchors), [boxes], delta=1e-2
    )
    np.testing.assert_allclose(theoretical[0], numerical[0], rtol=1e-2, atol=1e-3)
