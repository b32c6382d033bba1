"""Tests of tfrcnn.ops.nms against a greedy numpy loop."""

import warnings

import numpy as np
import pytest
import tensorflow as tf
from ai_edge_litert.interpreter import Interpreter

from tfrcnn.ops.nms import (
    batched_class_aware_non_max_suppression_padded,
    batched_non_max_suppression_padded,
    class_aware_non_max_suppression_padded,
    index_ordered_ties,
    non_max_suppression_padded,
)


def loop_iou(a, b):
    area_a = max(a[2] - a[0], 0) * max(a[3] - a[1], 0)
    area_b = max(b[2] - b[0], 0) * max(b[3] - b[1], 0)
    if area_a <= 0 or area_b <= 0:
        return 0.0
    inter = max(min(a[2], b[2]) - max(a[0], b[0]), 0) * max(min(a[3], b[3]) - max(a[1], b[1]), 0)
    return inter / (area_a + area_b - inter)


def greedy_nms(boxes, scores, max_output, iou_threshold, score_threshold=-np.inf, classes=None):
    """Highest score first; drop what overlaps a kept box (of the same class) by > threshold."""
    order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
    keep = []
    for i in order:
        if len(keep) == max_output:
            break
        if not scores[i] > score_threshold:
            continue
        if all(
            loop_iou(boxes[i], boxes[k]) <= iou_threshold
            or (classes is not None and classes[i] != classes[k])
            for k in keep
        ):
            keep.append(i)
    return keep


def padded(keep, size):
    return np.array(keep + [-1] * (size - len(keep)), np.int32)


def run_tflite(concrete, function, inputs):
    """Converts ``concrete`` (of the ``tf.function`` ``function``) with builtin operators only and
    runs it on ``inputs`` with LiteRT; the outputs in the interpreter's order."""
    converter = tf.lite.TFLiteConverter.from_concrete_functions([concrete], function)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        flatbuffer = converter.convert()
    interpreter = Interpreter(model_content=flatbuffer)
    interpreter.allocate_tensors()
    for detail, value in zip(interpreter.get_input_details(), inputs):
        interpreter.set_tensor(detail["index"], value)
    interpreter.invoke()
    return [interpreter.get_tensor(d["index"]) for d in interpreter.get_output_details()]


def random_boxes(rng, n, extent=100.0):
    """Clusters of jittered boxes (like raw detections) plus some scattered ones."""
    centres = rng.uniform(0, extent, (max(n // 5, 1), 2))
    sizes = rng.uniform(8, 40, (max(n // 5, 1), 2))
    base = np.concatenate([centres - sizes / 2, centres + sizes / 2], 1)
    boxes = base[rng.integers(0, len(base), n)] + rng.normal(0, 3, (n, 4))
    boxes[:, 2:] = np.maximum(boxes[:, 2:], boxes[:, :2] + 1)
    return boxes.astype(np.float32)


@pytest.mark.parametrize(
    "n,max_output,iou_threshold,score_threshold",
    [
        (60, 20, 0.5, -np.inf),
        (60, 100, 0.3, -np.inf),  # N < max_output_size
        (80, 30, 0.7, 0.4),  # a score threshold
        (40, 10, 0.0, -np.inf),  # any overlap suppresses
        (0, 5, 0.5, -np.inf),  # no boxes
    ],
)
def test_equals_greedy_reference(n, max_output, iou_threshold, score_threshold):
    rng = np.random.default_rng(n + max_output)
    boxes = random_boxes(rng, n)
    scores = rng.uniform(size=n).astype(np.float32)
    indices, num_valid = non_max_suppression_padded(
        boxes, scores, max_output, iou_threshold, score_threshold
    )
    expected = greedy_nms(boxes, scores, max_output, iou_threshold, score_threshold)
    assert indices.dtype == tf.int32 and indices.shape == (max_output,)
    assert num_valid.dtype == tf.int32 and int(num_valid) == len(expected)
    np.testing.assert_array_equal(indices.numpy(), padded(expected, max_output))
    if n:  # the case is not trivial: something above the score threshold was suppressed
        by_score = [i for i in np.argsort(-scores, kind="stable") if scores[i] > score_threshold]
        assert expected != by_score[: len(expected)]
    # Same selection as tf.image.non_max_suppression.
    reference = tf.image.non_max_suppression(
        boxes.reshape(-1, 4), scores, max_output, iou_threshold, score_threshold
    ).numpy()
    np.testing.assert_array_equal(indices.numpy()[: len(reference)], reference)


def test_hand_fixture_and_score_threshold_is_strict():
    boxes = [
        [0.0, 0.0, 10.0, 10.0],
        [0.0, 1.0, 10.0, 11.0],
        [20.0, 20.0, 30.0, 30.0],
        [0.0, 0.0, 10.0, 5.0],
    ]
    scores = [0.9, 0.8, 0.7, 0.95]
    # Box 3 (best) has IoU 0.5 with box 0: not > 0.5, so box 0 stays; box 1 goes (IoU 0.82).
    indices, n = non_max_suppression_padded(boxes, scores, 5, 0.5)
    np.testing.assert_array_equal(indices.numpy(), [3, 0, 2, -1, -1])
    assert int(n) == 3
    indices, n = non_max_suppression_padded(boxes, scores, 5, 0.5, score_threshold=0.9)
    np.testing.assert_array_equal(indices.numpy(), [3, -1, -1, -1, -1])


def test_class_aware_keeps_overlapping_boxes_of_different_classes():
    boxes = [[0.0, 0.0, 10.0, 10.0], [0.0, 1.0, 10.0, 11.0], [0.0, 0.0, 10.0, 10.5]]
    scores = [0.9, 0.8, 0.7]
    indices, n = class_aware_non_max_suppression_padded(boxes, scores, [0, 1, 0], 4, 0.5)
    np.testing.assert_array_equal(indices.numpy(), [0, 1, -1, -1])
    indices, n = class_aware_non_max_suppression_padded(boxes, scores, [3, 3, 7], 4, 0.5)
    np.testing.assert_array_equal(indices.numpy(), [0, 2, -1, -1])
    assert int(n) == 2


@pytest.mark.parametrize("iou_threshold,score_threshold", [(0.5, -np.inf), (0.3, 0.2)])
def test_class_aware_equals_per_class_reference(iou_threshold, score_threshold):
    rng = np.random.default_rng(3)
    boxes = random_boxes(rng, 80) - 20.0  # negative coordinates too
    scores = rng.uniform(size=80).astype(np.float32)
    classes = rng.integers(0, 4, 80).astype(np.int32)
    indices, n = class_aware_non_max_suppression_padded(
        boxes, scores, classes, 40, iou_threshold, score_threshold
    )
    expected = greedy_nms(boxes, scores, 40, iou_threshold, score_threshold, classes=classes)
    np.testing.assert_array_equal(indices.numpy(), padded(expected, 40))
    assert int(n) == len(expected)
    # The classes matter: class-blind NMS keeps something else.
    assert expected != greedy_nms(boxes, scores, 40, iou_threshold, score_threshold)
    # Empty input.
    indices, n = class_aware_non_max_suppression_padded(
        np.zeros((0, 4)), np.zeros(0), np.zeros(0, np.int32), 3, 0.5
    )
    np.testing.assert_array_equal(indices.numpy(), [-1, -1, -1])


def test_batched_equals_per_image_in_tf_function_with_dynamic_batch():
    rng = np.random.default_rng(4)
    boxes = np.stack([random_boxes(rng, 50) for _ in range(3)])
    scores = rng.uniform(size=(3, 50)).astype(np.float32)
    classes = rng.integers(0, 3, (3, 50)).astype(np.int32)

    @tf.function(
        input_signature=[
            tf.TensorSpec([None, None, 4], tf.float32),
            tf.TensorSpec([None, None], tf.float32),
            tf.TensorSpec([None, None], tf.int32),
        ]
    )
    def run(b, s, c):
        plain = batched_non_max_suppression_padded(b, s, 25, 0.5, 0.1)
        aware = batched_class_aware_non_max_suppression_padded(b, s, c, 25, 0.5, 0.1)
        return plain, aware

    (indices, n), (aware_indices, aware_n) = run(boxes, scores, classes)
    assert indices.shape == aware_indices.shape == (3, 25)
    assert n.shape == aware_n.shape == (3,)
    for b in range(3):
        expected = greedy_nms(boxes[b], scores[b], 25, 0.5, 0.1)
        np.testing.assert_array_equal(indices.numpy()[b], padded(expected, 25))
        assert int(n[b]) == len(expected)
        expected = greedy_nms(boxes[b], scores[b], 25, 0.5, 0.1, classes=classes[b])
        np.testing.assert_array_equal(aware_indices.numpy()[b], padded(expected, 25))
        assert int(aware_n[b]) == len(expected)
    # Eager, and a static shape for a Python max_output_size.
    eager, _ = batched_non_max_suppression_padded(boxes, scores, 25, 0.5, 0.1)
    np.testing.assert_array_equal(eager.numpy(), indices.numpy())


def test_converts_to_tflite_builtins_and_gives_the_same_result():
    """No Flex ops: conversion with TFLITE_BUILTINS only must succeed, and run identically."""
    rng = np.random.default_rng(5)
    boxes = np.stack([random_boxes(rng, 30) for _ in range(2)])
    scores = rng.uniform(size=(2, 30)).astype(np.float32)
    classes = rng.integers(0, 3, (2, 30)).astype(np.int32)

    @tf.function(
        input_signature=[
            tf.TensorSpec([2, 30, 4], tf.float32),
            tf.TensorSpec([2, 30], tf.float32),
            tf.TensorSpec([2, 30], tf.int32),
        ]
    )
    def detect(b, s, c):
        single = non_max_suppression_padded(b[0], s[0], 8, 0.5)
        aware = class_aware_non_max_suppression_padded(b[0], s[0], c[0], 8, 0.5, 0.2)
        batched = batched_non_max_suppression_padded(b, s, 8, 0.5)
        return single + aware + batched

    got = run_tflite(detect.get_concrete_function(), detect, (boxes, scores, classes))
    expected = [t.numpy() for t in detect(boxes, scores, classes)]
    assert len(got) == len(expected) == 6
    for g, e in zip(got, expected):
        np.testing.assert_array_equal(g, e)


# Equal scores, hand-checked: six disjoint boxes of one score are all kept, in index order; of three
# pairs of overlapping boxes (IoU 9/11 > 0.5) of one score, the first of each pair is kept.
DISJOINT = np.array([[0, 10 * i, 5, 10 * i + 5] for i in range(6)], np.float32)
PAIRS = np.array(
    [
        [0, 0, 10, 10],
        [0, 1, 10, 11],
        [20, 20, 30, 30],
        [20, 21, 30, 31],
        [40, 40, 50, 50],
        [40, 41, 50, 51],
    ],
    np.float32,
)
TIES = [
    (DISJOINT, np.full(6, 0.5, np.float32), [0, 1, 2, 3, 4, 5]),
    (PAIRS, np.full(6, 0.5, np.float32), [0, 2, 4]),
    # the tie in a pair broken by index, the pairs by score: [4, 5] > [0, 1] > [2, 3]
    (PAIRS, np.array([0.5, 0.5, 0.25, 0.25, 0.75, 0.75], np.float32), [4, 0, 2]),
]


def _tied_scores(rng, n):
    """Scores with many exact ties (a quarter step), one NaN and one -inf."""
    scores = (rng.integers(0, 4, n) / 4).astype(np.float32)
    if n >= 2:
        scores[rng.integers(0, n)] = np.nan
        scores[rng.integers(0, n)] = -np.inf
    return scores


@pytest.mark.parametrize(
    "n,max_output,iou_threshold,score_threshold",
    [(60, 20, 0.5, -np.inf), (60, 100, 0.3, -np.inf), (80, 30, 0.7, 0.4), (0, 5, 0.5, -np.inf)],
)
def test_index_ordered_ties_select_what_tensorflow_selects(
    n, max_output, iou_threshold, score_threshold
):
    """Inside index_ordered_ties, the graph's own tie order gives the plain function's selection
    (the greedy reference: equal scores in index order), with NaN, -inf and a score threshold."""
    rng = np.random.default_rng(n + max_output + 1)
    boxes = random_boxes(rng, n)
    scores = _tied_scores(rng, n)
    plain = non_max_suppression_padded(boxes, scores, max_output, iou_threshold, score_threshold)
    with index_ordered_ties():
        ordered = non_max_suppression_padded(
            boxes, scores, max_output, iou_threshold, score_threshold
        )
        aware = class_aware_non_max_suppression_padded(
            boxes, scores, np.arange(n) % 3, max_output, iou_threshold, score_threshold
        )
    # the reference sorts in Python, where NaN breaks the order: NaN is never selected, like -inf
    scores = np.where(np.isnan(scores), -np.inf, scores)
    expected = greedy_nms(boxes, scores, max_output, iou_threshold, score_threshold)
    for indices, count in (plain, ordered):
        np.testing.assert_array_equal(indices.numpy(), padded(expected, max_output))
        assert int(count) == len(expected)
    expected = greedy_nms(
        boxes, scores, max_output, iou_threshold, score_threshold, classes=np.arange(n) % 3
    )
    np.testing.assert_array_equal(aware[0].numpy(), padded(expected, max_output))
    for boxes, scores, expected in TIES:
        with index_ordered_ties():
            indices, count = non_max_suppression_padded(boxes, scores, 6, 0.5)
        np.testing.assert_array_equal(indices.numpy(), padded(expected, 6))


def test_index_ordered_ties_in_tflite():
    """TFLite's NON_MAX_SUPPRESSION_V4 kernel takes equal scores in its priority queue's order;
    traced inside index_ordered_ties, the .tflite takes them in index order as TensorFlow does."""
    rng = np.random.default_rng(7)
    boxes, scores = random_boxes(rng, 60), _tied_scores(rng, 60)
    keep = greedy_nms(boxes, np.where(np.isnan(scores), -np.inf, scores), 30, 0.5, 0.2)
    cases = [(b, s, padded(keep, 6)) for b, s, keep in TIES] + [(boxes, scores, padded(keep, 30))]
    for boxes, scores, expected in cases:
        size = len(expected)

        @tf.function(
            input_signature=[
                tf.TensorSpec(boxes.shape, tf.float32),
                tf.TensorSpec(scores.shape, tf.float32),
            ]
        )
        def select(b, s, size=size):
            return non_max_suppression_padded(b, s, size, 0.5, 0.2 if size == 30 else -np.inf)

        with index_ordered_ties():
            concrete = select.get_concrete_function()
        indices, count = run_tflite(concrete, select, (boxes, scores))
        if indices.ndim == 0:
            indices, count = count, indices
        np.testing.assert_array_equal(indices, expected)
        assert int(count) == int((expected >= 0).sum())
