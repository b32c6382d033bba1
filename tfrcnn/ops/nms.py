"""Greedy non-maximum suppression with fixed-size (padded) outputs.

Shape shorthand: ``B`` images, ``N`` candidate boxes an image, ``K = max_output_size``.

Boxes are float32 ``[..., 4]`` yxyx in pixels. All functions return ``K`` indices padded with
``PADDING_INDEX`` (-1) and the number of valid entries, so shapes are fixed. They are built on
``tf.raw_ops.NonMaxSuppressionV4`` (``pad_to_max_output_size=True``), which the TFLite converter
maps to the builtin ``NON_MAX_SUPPRESSION_V4``: a model using them exports without Flex ops.

Selection rule (that of ``tf.image.non_max_suppression``): take the highest-scoring remaining box
whose score is strictly greater than ``score_threshold``; drop every remaining box whose IoU with
it is strictly greater than ``iou_threshold``; repeat until ``K`` boxes are taken. Equal scores are
taken in index order.

TensorFlow's ``NonMaxSuppressionV4`` kernel takes equal scores in index order itself; TFLite's
``NON_MAX_SUPPRESSION_V4`` takes them in the order of its priority queue (e.g. ``[0, 2, 5, 4, 1,
3]`` for six disjoint boxes of one score). Inside :func:`index_ordered_ties` (the TFLite export
traces there) the graph orders them itself: a stable sort by score (``TOPK_V2``, equal values
lower index first in both runtimes), then NMS on strictly decreasing rank keys.
"""

import contextlib
import threading

import tensorflow as tf

#: Value of the padded entries of the returned indices.
PADDING_INDEX = -1

# NonMaxSuppressionV4 needs a finite score threshold; -inf is mapped to the lowest float32. (Scores
# must be strictly greater than the threshold, so a score of -inf is never selected either way.)
_LOWEST_FLOAT32 = float(tf.float32.min)


_STATE = threading.local()


@contextlib.contextmanager
def index_ordered_ties():
    """Within this block the NMS functions build graphs that order equal scores by index
    themselves, so a runtime whose NMS kernel takes ties in another order (TFLite) selects what
    TensorFlow selects. Same selection as outside the block; costs a sort of the ``N``
    candidates. Affects graphs traced in the block; thread-local; blocks nest.

    Example:
      >>> with index_ordered_ties():
      ...     concrete = serve.get_concrete_function()   # then convert it to TFLite
    """
    previous = getattr(_STATE, "index_ordered_ties", False)
    _STATE.index_ordered_ties = True
    try:
        yield
    finally:
        _STATE.index_ordered_ties = previous


def _float(x):
    x = tf.convert_to_tensor(x)
    if x.dtype != tf.float32:
        x = tf.cast(x, tf.float32)
    return x


def _finite_threshold(score_threshold):
    return tf.maximum(_float(score_threshold), _LOWEST_FLOAT32)


def non_max_suppression_padded(
    boxes, scores, max_output_size, iou_threshold, score_threshold=float("-inf")
):
    """Greedy NMS of one image, padded to ``max_output_size``.

    Args:
      boxes: ``[N, 4]`` yxyx, pixels (``N`` may be 0 and may be smaller than ``K``).
      scores: ``[N]``.
      max_output_size: ``K``, Python int (or a scalar int tensor; the output length is then
        dynamic).
      iou_threshold: a box is dropped when its IoU with a kept box is > this.
      score_threshold: only boxes scoring > this are kept; default ``-inf`` (all finite scores).

    Returns:
      ``(indices, num_valid)``: int32 ``[K]`` indices into ``N`` in decreasing score order, the
      entries from ``num_valid`` on set to -1; and int32 scalar ``num_valid``.

    Example:
      >>> boxes = [[0., 0., 10., 10.], [0., 1., 10., 11.], [20., 20., 30., 30.]]
      >>> idx, n = non_max_suppression_padded(boxes, [0.9, 0.8, 0.7], 4, 0.5)
      >>> idx.numpy(), int(n)
      (array([ 0,  2, -1, -1], dtype=int32), 2)
    """
    boxes = _float(boxes)
    scores = _float(scores)
    if getattr(_STATE, "index_ordered_ties", False):
        return _index_ordered_nms(boxes, scores, max_output_size, iou_threshold, score_threshold)
    selected, num_valid = tf.raw_ops.NonMaxSuppressionV4(
        boxes=boxes,
        scores=scores,
        max_output_size=max_output_size,
        iou_threshold=_float(iou_threshold),
        score_threshold=_finite_threshold(score_threshold),
        pad_to_max_output_size=True,
    )
    keep = tf.range(tf.shape(selected)[0]) < num_valid
    indices = tf.where(keep, selected, PADDING_INDEX)
    return indices, num_valid


def _index_ordered_nms(boxes, scores, max_output_size, iou_threshold, score_threshold):
    """:func:`non_max_suppression_padded` with the order of equal scores in the graph: the boxes
    sorted by decreasing score, equal scores lower index first (top-k of all ``N``), then NMS on
    the keys ``N - rank`` (exact in float32 for ``N < 2**24``; 0 for the boxes not above
    ``score_threshold``, so NMS takes the boxes in exactly the sorted order)."""
    threshold = _finite_threshold(score_threshold)
    count = tf.shape(scores)[0]
    # NaN and scores not above the threshold go last (-inf): a sort never compares NaN
    ranked = tf.where(scores > threshold, scores, float("-inf"))
    sorted_scores, order = tf.math.top_k(ranked, k=count)
    keys = tf.where(sorted_scores > threshold, tf.cast(count - tf.range(count), tf.float32), 0.0)
    selected, num_valid = tf.raw_ops.NonMaxSuppressionV4(
        boxes=tf.gather(boxes, order),
        scores=keys,
        max_output_size=max_output_size,
        iou_threshold=_float(iou_threshold),
        score_threshold=tf.constant(0.0),
        pad_to_max_output_size=True,
    )
    # one extra entry, so the padded selections (index 0) gather a valid entry even when N = 0
    order = tf.concat([order, [PADDING_INDEX]], axis=0)
    keep = tf.range(tf.shape(selected)[0]) < num_valid
    indices = tf.where(keep, tf.gather(order, selected), PADDING_INDEX)
    return indices, num_valid


def _output_signature(max_output_size):
    length = max_output_size if isinstance(max_output_size, int) else None
    return (tf.TensorSpec([length], tf.int32), tf.TensorSpec([], tf.int32))


def _map_images(fn, elems, max_output_size):
    """``tf.map_fn(fn, elems)`` over the batch; with a static batch of 1 (a fixed-size TFLite
    export), ``fn`` is called once directly, so the graph holds no WHILE loop (which TFLite's int8
    calibrator cannot run)."""
    if elems[0].shape.rank is not None and elems[0].shape[0] == 1:
        return tuple(out[None] for out in fn(tuple(e[0] for e in elems)))
    return tf.map_fn(fn, elems, fn_output_signature=_output_signature(max_output_size))


def batched_non_max_suppression_padded(
    boxes, scores, max_output_size, iou_threshold, score_threshold=float("-inf")
):
    """:func:`non_max_suppression_padded` for each image of a batch.

    Args:
      boxes: ``[B, N, 4]`` yxyx, pixels (``B`` may be dynamic).
      scores: ``[B, N]``.
      max_output_size, iou_threshold, score_threshold: as in :func:`non_max_suppression_padded`.

    Returns:
      ``(indices, num_valid)``: int32 ``[B, K]`` (padded with -1) and int32 ``[B]``.

    Example:
      >>> idx, n = batched_non_max_suppression_padded(tf.zeros([2, 5, 4]), tf.zeros([2, 5]), 3, 0.5)
      >>> idx.shape, n.shape
      (TensorShape([2, 3]), TensorShape([2]))
    """
    boxes = _float(boxes)
    scores = _float(scores)

    def one_image(args):
        image_boxes, image_scores = args
        return non_max_suppression_padded(
            image_boxes, image_scores, max_output_size, iou_threshold, score_threshold
        )

    return _map_images(one_image, (boxes, scores), max_output_size)


def _class_offset_boxes(boxes, classes):
    """Shift each class's boxes to its own region so boxes of different classes never overlap.

    Boxes are moved to start at 0, then class ``c`` is offset by ``c * (extent + 1)`` on both axes.
    (Large offsets cost float32 precision: IoUs change by about ``ulp(offset) / box size``.)
    """
    lowest = tf.minimum(tf.reduce_min(boxes), 0.0)  # empty boxes give +inf -> 0
    boxes = boxes - lowest
    extent = tf.maximum(tf.reduce_max(boxes), 0.0)  # empty boxes give -inf -> 0
    offsets = tf.cast(classes, tf.float32) * (extent + 1.0)
    return boxes + offsets[:, None]


def class_aware_non_max_suppression_padded(
    boxes, scores, classes, max_output_size, iou_threshold, score_threshold=float("-inf")
):
    """Greedy NMS run independently for each class, merged by decreasing score.

    Boxes of different classes never suppress each other (implemented by offsetting each class's
    boxes to a disjoint region and running one NMS).

    Args:
      boxes: ``[N, 4]`` yxyx, pixels.
      scores: ``[N]``.
      classes: int ``[N]``.
      max_output_size, iou_threshold, score_threshold: as in :func:`non_max_suppression_padded`.

    Returns:
      ``(indices, num_valid)``: int32 ``[K]`` indices into ``N``, decreasing score, padded with -1;
      int32 scalar.

    Example:
      >>> boxes = [[0., 0., 10., 10.], [0., 1., 10., 11.]]
      >>> idx, n = class_aware_non_max_suppression_padded(boxes, [0.9, 0.8], [0, 1], 3, 0.5)
      >>> idx.numpy()  # overlapping, but of different classes: both kept
      array([ 0,  1, -1], dtype=int32)
    """
    boxes = _float(boxes)
    classes = tf.convert_to_tensor(classes)
    return non_max_suppression_padded(
        _class_offset_boxes(boxes, classes), scores, max_output_size, iou_threshold, score_threshold
    )


def batched_class_aware_non_max_suppression_padded(
    boxes, scores, classes, max_output_size, iou_threshold, score_threshold=float("-inf")
):
    """:func:`class_aware_non_max_suppression_padded` for each image of a batch.

    Args:
      boxes: ``[B, N, 4]`` yxyx, pixels.
      scores: ``[B, N]``.
      classes: int ``[B, N]``.
      max_output_size, iou_threshold, score_threshold: as in :func:`non_max_suppression_padded`.

    Returns:
      ``(indices, num_valid)``: int32 ``[B, K]`` (padded with -1) and int32 ``[B]``.

    Example:
      >>> idx, n = batched_class_aware_non_max_suppression_padded(
      ...     tf.zeros([2, 5, 4]), tf.zeros([2, 5]), tf.zeros([2, 5], tf.int32), 3, 0.5)
      >>> idx.shape
      TensorShape([2, 3])
    """
    boxes = _float(boxes)
    scores = _float(scores)
    classes = tf.convert_to_tensor(classes)

    def one_image(args):
        image_boxes, image_scores, image_classes = args
        return class_aware_non_max_suppression_padded(
            image_boxes,
            image_scores,
            image_classes,
            max_output_size,
            iou_threshold,
            score_threshold,
        )

    return _map_images(one_image, (boxes, scores, classes), max_output_size)
