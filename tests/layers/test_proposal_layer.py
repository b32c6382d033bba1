"""ProposalLayer against a slow numpy reference; padding, valid region, gradients, round trips."""

import math

import keras
import numpy as np
import tensorflow as tf
from conftest import global_policy

from tfrcnn.layers.anchor_generator import AnchorGenerator
from tfrcnn.layers.proposal_layer import ProposalLayer
from tfrcnn.layers.rpn_head import RPNHead
from tfrcnn.ops.anchors import generate_anchors

# ---------------------------------------------------------------- slow, obvious numpy reference


def _np_decode(deltas, anchors, weights):
    ha = anchors[:, 2] - anchors[:, 0]
    wa = anchors[:, 3] - anchors[:, 1]
    cya = anchors[:, 0] + 0.5 * ha
    cxa = anchors[:, 1] + 0.5 * wa
    dy, dx, dh, dw = (deltas[:, k] / weights[k] for k in range(4))
    clip = math.log(1000.0 / 16)
    dh, dw = np.minimum(dh, clip), np.minimum(dw, clip)
    cy, cx = cya + dy * ha, cxa + dx * wa
    h, w = ha * np.exp(dh), wa * np.exp(dw)
    return np.stack([cy - h / 2, cx - w / 2, cy + h / 2, cx + w / 2], axis=1)


def _np_iou(a, b):
    ih = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iw = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ih * iw
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _np_softmax_object(logits):
    e = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return e[:, 1] / e.sum(axis=-1)


def _reference(objectness, deltas, anchors, image_shape, pre, post, nms_iou, min_size, weights):
    """Per image: per level top-``pre`` by object probability, decode, clip; then drop small boxes,
    greedy NMS, keep ``post``, pad with zeros."""
    batch = objectness[0].shape[0]
    out_boxes = np.zeros((batch, post, 4), np.float32)
    out_scores = np.zeros((batch, post), np.float32)
    out_valid = np.zeros((batch, post), bool)
    for b in range(batch):
        h, w = image_shape[b]
        boxes, scores = [], []
        for logits, d, a in zip(objectness, deltas, anchors):
            p = _np_softmax_object(logits[b].astype(np.float64))
            order = np.argsort(-p, kind="stable")[:pre]
            level_boxes = _np_decode(
                d[b][order].astype(np.float64), a[order].astype(np.float64), weights
            )
            level_boxes[:, [0, 2]] = np.clip(level_boxes[:, [0, 2]], 0, h)
            level_boxes[:, [1, 3]] = np.clip(level_boxes[:, [1, 3]], 0, w)
            boxes.append(level_boxes)
            scores.append(p[order])
        boxes, scores = np.concatenate(boxes), np.concatenate(scores)
        keep = ((boxes[:, 2] - boxes[:, 0]) > min_size) & ((boxes[:, 3] - boxes[:, 1]) > min_size)
        boxes, scores = boxes[keep], scores[keep]
        order = list(np.argsort(-scores, kind="stable"))
        taken = []
        while order and len(taken) < post:
            best = order.pop(0)
            taken.append(best)
            order = [i for i in order if _np_iou(boxes[best], boxes[i]) <= nms_iou]
        for slot, i in enumerate(taken):
            out_boxes[b, slot] = boxes[i]
            out_scores[b, slot] = scores[i]
            out_valid[b, slot] = True
    return out_boxes, out_scores, out_valid


def _random_inputs(seed=0):
    rng = np.random.default_rng(seed)
    sizes, strides, scales = [(4, 4), (2, 2)], [8, 16], [(8.0, 16.0, 24.0), (24.0, 32.0, 48.0)]
    anchors = [
        generate_anchors(s, st, sc, (0.5, 1.0, 2.0)).numpy()
        for s, st, sc in zip(sizes, strides, scales)
    ]
    objectness = [rng.normal(size=(2, len(a), 2)).astype("float32") * 2 for a in anchors]
    deltas = [rng.normal(size=(2, len(a), 4)).astype("float32") * 0.4 for a in anchors]
    image_shape = np.array([[32, 32], [20, 26]], np.int32)  # a different valid region per image
    return objectness, deltas, anchors, image_shape


def test_matches_numpy_reference_two_levels_two_image_sizes():
    objectness, deltas, anchors, image_shape = _random_inputs()
    weights = (2.0, 2.0, 1.0, 0.5)
    layer = ProposalLayer(
        pre_nms_top_n=20, post_nms_top_n=24, nms_iou=0.6, min_size=2.0, box_weights=weights
    )
    boxes, scores, valid = layer(objectness, deltas, anchors, image_shape)
    assert boxes.shape == (2, 24, 4) and scores.shape == (2, 24) and valid.shape == (2, 24)
    assert valid.dtype == tf.bool
    ref_boxes, ref_scores, ref_valid = _reference(
        objectness, deltas, anchors, image_shape, 20, 24, 0.6, 2.0, weights
    )
    np.testing.assert_array_equal(valid.numpy(), ref_valid)
    np.testing.assert_allclose(scores.numpy(), ref_scores, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(boxes.numpy(), ref_boxes, rtol=1e-5, atol=1e-4)
    assert ref_valid.sum(axis=1).min() > 3  # a meaningful comparison, not all padding


def test_matches_reference_when_post_nms_top_n_truncates():
    objectness, deltas, anchors, image_shape = _random_inputs(seed=3)
    layer = ProposalLayer(pre_nms_top_n=1000, post_nms_top_n=5, nms_iou=0.7)
    boxes, scores, valid = layer(objectness, deltas, anchors, image_shape)
    ref_boxes, ref_scores, ref_valid = _reference(
        objectness, deltas, anchors, image_shape, 1000, 5, 0.7, 0.0, (1.0, 1.0, 1.0, 1.0)
    )
    assert ref_valid.all()
    np.testing.assert_array_equal(valid.numpy(), ref_valid)
    np.testing.assert_allclose(scores.numpy(), ref_scores, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(boxes.numpy(), ref_boxes, rtol=1e-5, atol=1e-4)
    # Sorted by decreasing object probability.
    assert np.all(np.diff(scores.numpy(), axis=1) <= 0)


def test_single_level_tensors_equal_a_list_of_one():
    objectness, deltas, anchors, image_shape = _random_inputs()
    layer = ProposalLayer(pre_nms_top_n=30, post_nms_top_n=10)
    single = layer(objectness[0], deltas[0], anchors[0], image_shape)
    listed = layer([objectness[0]], [deltas[0]], [anchors[0]], image_shape)
    for a, b in zip(single, listed):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_padding_when_few_boxes_survive():
    anchors = np.array(
        [[0, 0, 10, 10], [0, 1, 10, 11], [20, 20, 30, 30], [50, 50, 60, 60]], np.float32
    )
    logits = np.array([[[0.0, 3.0], [0.0, 2.0], [0.0, 1.0], [0.0, 4.0]]], np.float32)
    deltas = np.zeros((1, 4, 4), np.float32)
    image_shape = np.array([[40, 40]], np.int32)  # the last anchor is entirely outside: zero area
    boxes, scores, valid = ProposalLayer(pre_nms_top_n=10, post_nms_top_n=6, nms_iou=0.7)(
        logits, deltas, anchors, image_shape
    )
    # Anchor 1 overlaps anchor 0 with IoU 9/11 > 0.7 and a lower score: suppressed.
    np.testing.assert_array_equal(valid.numpy(), [[True, True, False, False, False, False]])
    np.testing.assert_allclose(boxes.numpy()[0, :2], [[0, 0, 10, 10], [20, 20, 30, 30]])
    sig = lambda z: 1.0 / (1.0 + np.exp(-z))  # noqa: E731
    np.testing.assert_allclose(scores.numpy()[0, :2], [sig(3.0), sig(1.0)], rtol=1e-6)
    np.testing.assert_array_equal(boxes.numpy()[0, 2:], 0.0)
    np.testing.assert_array_equal(scores.numpy()[0, 2:], 0.0)


def test_min_size_drops_boxes_with_a_side_at_or_below_it():
    anchors = np.array(
        [[0, 0, 4, 20], [0, 0, 20, 3], [30, 30, 36, 36], [10, 40, 10, 50]], np.float32
    )
    logits = np.zeros((1, 4, 2), np.float32)
    logits[0, :, 1] = [4.0, 3.0, 2.0, 1.0]
    boxes, _, valid = ProposalLayer(10, 4, min_size=4.0)(
        logits, np.zeros((1, 4, 4), np.float32), anchors, np.array([[64, 64]], np.int32)
    )
    # height 4 (== min_size), width 3, zero height: dropped; 6 x 6 kept.
    np.testing.assert_array_equal(valid.numpy(), [[True, False, False, False]])
    np.testing.assert_allclose(boxes.numpy()[0, 0], [30, 30, 36, 36])


def test_proposals_inside_each_images_valid_region():
    rng = np.random.default_rng(5)
    objectness, _, anchors, image_shape = _random_inputs(seed=5)
    deltas = [rng.normal(size=(2, len(a), 4)).astype("float32") * 3 for a in anchors]  # big moves
    boxes, _, valid = ProposalLayer(100, 40, nms_iou=0.9)(objectness, deltas, anchors, image_shape)
    boxes, valid = boxes.numpy(), valid.numpy()
    for b, (h, w) in enumerate(image_shape):
        real = boxes[b][valid[b]]
        assert len(real) > 0
        assert np.all(real >= 0)
        assert np.all(real[:, [0, 2]] <= h) and np.all(real[:, [1, 3]] <= w)
        assert np.all(real[:, 2] > real[:, 0]) and np.all(real[:, 3] > real[:, 1])


def test_gradient_flows_from_proposals_to_deltas():
    objectness, deltas, anchors, image_shape = _random_inputs()
    layer = ProposalLayer(pre_nms_top_n=20, post_nms_top_n=10)
    deltas = [tf.Variable(d) for d in deltas]
    with tf.GradientTape() as tape:
        boxes, _, valid = layer(objectness, deltas, anchors, image_shape)
        total = tf.reduce_sum(boxes * tf.cast(valid, tf.float32)[..., None])
    grads = tape.gradient(total, deltas)
    assert all(g is not None for g in grads)
    grads = [tf.convert_to_tensor(g).numpy() for g in grads]
    assert all(np.all(np.isfinite(g)) for g in grads)
    assert sum(np.abs(g).sum() for g in grads) > 0


def test_symbolic_call_and_get_config_round_trip():
    layer = ProposalLayer(
        pre_nms_top_n=12,
        post_nms_top_n=7,
        nms_iou=0.6,
        min_size=1.5,
        box_weights=(1, 1, 2, 2),
        name="proposals",
    )
    config = layer.get_config()
    assert config["pre_nms_top_n"] == 12 and config["post_nms_top_n"] == 7
    assert config["nms_iou"] == 0.6 and config["min_size"] == 1.5
    assert config["box_weights"] == (1.0, 1.0, 2.0, 2.0)
    assert ProposalLayer.from_config(config).get_config() == config
    obj, dl = keras.Input((30, 2)), keras.Input((30, 4))
    anchors = keras.Input((4,), batch_size=30)
    p, s, v = layer([obj], [dl], [anchors], keras.Input((2,), dtype="int32"))
    assert (
        tuple(p.shape) == (None, 7, 4)
        and tuple(s.shape) == (None, 7)
        and tuple(v.shape) == (None, 7)
    )
    assert v.dtype == "bool"


def test_keras_round_trip_in_a_functional_rpn(tmp_path):
    features = keras.Input((None, None, 4))
    image_shape = keras.Input((2,), dtype="int32")
    anchors = AnchorGenerator(stride=8, scales=(8, 16), name="anchors")(features)
    obj, deltas = RPNHead(num_anchors=6, channels=8, name="rpn")(features)
    boxes, scores, valid = ProposalLayer(pre_nms_top_n=40, post_nms_top_n=8, name="proposals")(
        [obj], [deltas], [anchors], image_shape
    )
    model = keras.Model([features, image_shape], [boxes, scores, valid])
    path = str(tmp_path / "proposals.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    x = np.random.default_rng(0).normal(size=(2, 4, 5, 4)).astype("float32")
    shapes = np.array([[32, 40], [24, 30]], np.int32)
    want = model([x, shapes])
    got = loaded([x, shapes])
    for a, b in zip(got, want):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    assert want[2].numpy().any()


def test_same_proposals_under_mixed_bfloat16():
    # Pixel coordinates around 600 need more than bfloat16's 8 significant bits.
    objectness, deltas, anchors, _ = _random_inputs()
    anchors = [a + 600.37 for a in anchors]
    image_shape = np.array([[700, 700], [640, 650]], np.int32)
    want = ProposalLayer(20, 24, nms_iou=0.6)(objectness, deltas, anchors, image_shape)
    with global_policy("mixed_bfloat16"):
        layer = ProposalLayer(20, 24, nms_iou=0.6)
        got = layer(objectness, deltas, anchors, image_shape)
    for a, b in zip(got, want):
        assert a.dtype == b.dtype
        np.testing.assert_array_equal(a.numpy(), b.numpy())
