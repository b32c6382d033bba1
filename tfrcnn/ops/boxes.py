"""Box arithmetic: area, IoU, delta encoding, clipping, format conversion.

Shape shorthand: ``B`` images, ``N`` and ``M`` boxes, ``...`` any leading dimensions.

Boxes are float32 ``[..., 4]`` in ``[y1, x1, y2, x2]`` order ("yxyx"), absolute pixels of the
network input, continuous coordinates: a box covering pixels 0..9 is ``[0, 0, 10, 10]`` and its
height is ``y2 - y1`` (no "+1"). Box deltas are ``(dy, dx, dh, dw)``.

``image_shape`` arguments are ``(height, width)``: shape ``[2]`` for boxes of any shape, or
``[B, 2]`` for boxes ``[B, ..., 4]`` (one size per image, broadcast over the middle dimensions).
Integer or float image shapes are accepted.

Every function casts its inputs to float32, runs eagerly and inside ``tf.function``, and accepts
unknown (``None``) dimensions except where noted.
"""

import math

import tensorflow as tf

#: Sizes below this (pixels) are floored in :func:`encode_boxes` / :func:`decode_boxes`, so a
#: degenerate box or anchor gives finite deltas instead of ``inf`` / ``NaN``.
SIZE_EPSILON = 1e-6

#: The default clamp of ``dh`` and ``dw`` in :func:`decode_boxes`: a box grows at most 1000/16 =
#: 62.5 times its anchor (as in the Faster R-CNN and Detectron code).
DEFAULT_SCALE_CLIP = math.log(1000.0 / 16)

#: Box formats understood by :func:`convert_boxes`.
BOX_FORMATS = ("yxyx", "xyxy", "xywh", "cxcywh")


def _float(x):
    """``x`` as a float32 tensor (casting from any numeric dtype)."""
    x = tf.convert_to_tensor(x)
    if x.dtype != tf.float32:
        x = tf.cast(x, tf.float32)
    return x


def _image_scale(image_shape, boxes):
    """``[h, w, h, w]`` from ``image_shape`` ([2] or [B, 2]), broadcastable against ``boxes``.

    ``image_shape`` [2] gives a [4] tensor. ``image_shape`` [B, 2] with boxes [B, ..., 4] gives
    [B, 1, ..., 1, 4] (as many ones as boxes has middle dimensions).
    """
    hw = _float(image_shape)
    rank = hw.shape.rank
    if rank is None:
        raise ValueError(
            "image_shape must have a known rank (1 for [2], 2 for [B, 2]); got an unknown rank."
        )
    if rank == 1:
        return tf.concat([hw, hw], axis=-1)
    if rank != 2:
        raise ValueError(
            f"image_shape must be [2] (height, width) or [B, 2]; got shape {hw.shape}."
        )
    scale = tf.concat([hw, hw], axis=-1)  # [B, 4]
    boxes_rank = boxes.shape.rank
    if boxes_rank is not None:
        if boxes_rank < 2:
            raise ValueError(
                f"image_shape [B, 2] needs boxes [B, ..., 4]; got boxes of shape {boxes.shape}."
            )
        middle = boxes_rank - 2
        if middle == 0:
            return scale
        new_shape = tf.concat([tf.shape(scale)[:1], tf.ones([middle], tf.int32), [4]], axis=0)
        return tf.reshape(scale, new_shape)
    middle = tf.maximum(tf.rank(boxes) - 2, 0)
    new_shape = tf.concat([tf.shape(scale)[:1], tf.ones([middle], tf.int32), [4]], axis=0)
    return tf.reshape(scale, new_shape)


def box_area(boxes):
    """Area of boxes, with negative extents counted as 0.

    Args:
      boxes: ``[..., 4]`` yxyx, pixels.

    Returns:
      float32 ``[...]``: ``max(y2 - y1, 0) * max(x2 - x1, 0)`` in square pixels.

    Example:
      >>> box_area([[0, 0, 10, 20], [5, 5, 2, 9]]).numpy()
      array([200.,   0.], dtype=float32)
    """
    boxes = _float(boxes)
    y1, x1, y2, x2 = tf.unstack(boxes, 4, axis=-1)
    return tf.maximum(y2 - y1, 0.0) * tf.maximum(x2 - x1, 0.0)


def box_iou(boxes1, boxes2):
    """Pairwise intersection over union.

    Args:
      boxes1: ``[N, 4]`` or ``[B, N, 4]`` yxyx, pixels.
      boxes2: ``[M, 4]`` or ``[B, M, 4]`` yxyx, pixels (leading dimensions broadcast).

    Returns:
      float32 ``[N, M]`` (or ``[B, N, M]``) in [0, 1]. A zero-area or inverted box has IoU 0 with
      every box (also with another zero-area box): never NaN.

    Example:
      >>> box_iou([[0, 0, 10, 10]], [[0, 5, 10, 15], [20, 20, 30, 30]]).numpy()
      array([[0.33333334, 0.        ]], dtype=float32)
    """
    boxes1 = _float(boxes1)
    boxes2 = _float(boxes2)
    a = boxes1[..., :, None, :]  # [..., N, 1, 4]
    b = boxes2[..., None, :, :]  # [..., 1, M, 4]
    inter_h = tf.maximum(tf.minimum(a[..., 2], b[..., 2]) - tf.maximum(a[..., 0], b[..., 0]), 0.0)
    inter_w = tf.maximum(tf.minimum(a[..., 3], b[..., 3]) - tf.maximum(a[..., 1], b[..., 1]), 0.0)
    inter = inter_h * inter_w
    area1 = box_area(boxes1)[..., :, None]
    area2 = box_area(boxes2)[..., None, :]
    union = area1 + area2 - inter
    # Both areas must be positive: a degenerate box overlaps nothing. `union > 0` is also False
    # for NaN, so NaN boxes give 0 too. The safe denominator keeps gradients finite.
    ok = (area1 > 0.0) & (area2 > 0.0) & (union > 0.0)
    safe_union = tf.where(ok, union, tf.ones_like(union))
    return tf.where(ok, inter / safe_union, tf.zeros_like(union))


def _centre_size(boxes):
    """(cy, cx, h, w) of yxyx boxes, sizes floored at SIZE_EPSILON."""
    y1, x1, y2, x2 = tf.unstack(boxes, 4, axis=-1)
    h = tf.maximum(y2 - y1, SIZE_EPSILON)
    w = tf.maximum(x2 - x1, SIZE_EPSILON)
    return 0.5 * (y1 + y2), 0.5 * (x1 + x2), h, w


def encode_boxes(boxes, anchors, weights=(1.0, 1.0, 1.0, 1.0)):
    """Regression targets of ``boxes`` relative to ``anchors`` (the R-CNN parametrisation).

    ``dy = wy * (cy - cya) / ha``, ``dx = wx * (cx - cxa) / wa``, ``dh = wh * log(h / ha)``,
    ``dw = ww * log(w / wa)``, with centres ``c`` and sizes ``h, w`` in pixels. Heights and
    widths of both boxes and anchors are floored at ``SIZE_EPSILON`` (1e-6 px) so degenerate
    boxes (e.g. 1e-7 wide) and zero-size anchors give finite deltas.

    Args:
      boxes: ``[..., 4]`` yxyx, pixels (the targets, e.g. matched ground truth).
      anchors: ``[..., 4]`` yxyx, pixels; broadcasts against ``boxes``.
      weights: ``(wy, wx, wh, ww)``; ``(1, 1, 1, 1)`` for the RPN, ``(10, 10, 5, 5)`` for the
        detection head.

    Returns:
      float32 deltas ``[..., 4]`` = ``(dy, dx, dh, dw)``.

    Example:
      >>> encode_boxes([[0., 0., 20., 10.]], [[0., 0., 10., 10.]]).numpy()  # dy=0.5, dh=log 2
      array([[0.5      , 0.       , 0.6931472, 0.       ]], dtype=float32)
    """
    boxes = _float(boxes)
    anchors = _float(anchors)
    wy, wx, wh, ww = tf.unstack(_float(weights), 4, axis=-1)
    cy, cx, h, w = _centre_size(boxes)
    cya, cxa, ha, wa = _centre_size(anchors)
    dy = wy * (cy - cya) / ha
    dx = wx * (cx - cxa) / wa
    dh = wh * tf.math.log(h / ha)
    dw = ww * tf.math.log(w / wa)
    return tf.stack([dy, dx, dh, dw], axis=-1)


def decode_boxes(deltas, anchors, weights=(1.0, 1.0, 1.0, 1.0), clip=DEFAULT_SCALE_CLIP):
    """Apply deltas to anchors: the inverse of :func:`encode_boxes`.

    ``dh`` and ``dw`` (after dividing by their weights) are clamped from above at ``clip`` so a box
    grows at most ``exp(clip)`` times its anchor; ``dy`` and ``dx`` are linear and not clamped.
    The result is finite for any finite deltas (e.g. +-100). Anchor sizes are floored at
    ``SIZE_EPSILON`` exactly as in :func:`encode_boxes`, so ``decode(encode(b, a), a) == b``
    (up to float rounding) for boxes with positive sizes.

    Args:
      deltas: ``[..., 4]`` ``(dy, dx, dh, dw)``.
      anchors: ``[..., 4]`` yxyx, pixels; broadcasts against ``deltas``.
      weights: ``(wy, wx, wh, ww)``, the same as used to encode.
      clip: upper bound of ``dh / wh`` and ``dw / ww``; default ``log(1000 / 16)``. ``None``
        disables the clamp.

    Returns:
      float32 boxes ``[..., 4]`` yxyx, pixels (not clipped to the image: see :func:`clip_boxes`).

    Example:
      >>> decode_boxes([[0.5, 0., 0.6931472, 0.]], [[0., 0., 10., 10.]]).numpy()
      array([[ 0.,  0., 20., 10.]], dtype=float32)
    """
    deltas = _float(deltas)
    anchors = _float(anchors)
    wy, wx, wh, ww = tf.unstack(_float(weights), 4, axis=-1)
    dy, dx, dh, dw = tf.unstack(deltas, 4, axis=-1)
    dy = dy / wy
    dx = dx / wx
    dh = dh / wh
    dw = dw / ww
    if clip is not None:
        clip = _float(clip)
        dh = tf.minimum(dh, clip)
        dw = tf.minimum(dw, clip)
    cya, cxa, ha, wa = _centre_size(anchors)
    cy = cya + dy * ha
    cx = cxa + dx * wa
    half_h = 0.5 * ha * tf.exp(dh)
    half_w = 0.5 * wa * tf.exp(dw)
    return tf.stack([cy - half_h, cx - half_w, cy + half_h, cx + half_w], axis=-1)


def clip_boxes(boxes, image_shape):
    """Clamp boxes to the image: y to ``[0, height]``, x to ``[0, width]``.

    Args:
      boxes: ``[..., 4]`` yxyx, pixels.
      image_shape: ``(height, width)``, int or float: ``[2]`` for any boxes, or ``[B, 2]`` for
        boxes ``[B, ..., 4]`` (broadcast over the middle dimensions).

    Returns:
      float32 ``[..., 4]``, same shape as ``boxes``. A box entirely outside becomes zero-area
      (see :func:`valid_box_mask`).

    Example:
      >>> clip_boxes([[-5., 3., 50., 120.]], (40, 100)).numpy()
      array([[  0.,   3.,  40., 100.]], dtype=float32)
    """
    boxes = _float(boxes)
    upper = _image_scale(image_shape, boxes)
    return tf.minimum(tf.maximum(boxes, 0.0), upper)


def normalize_boxes(boxes, image_shape):
    """Pixel boxes to [0, 1] coordinates: y divided by height, x by width.

    Args:
      boxes: ``[..., 4]`` yxyx, pixels.
      image_shape: ``(height, width)``: ``[2]`` or ``[B, 2]`` (see :func:`clip_boxes`).

    Returns:
      float32 ``[..., 4]`` yxyx, normalised.

    Example:
      >>> normalize_boxes([[10., 20., 30., 40.]], (100, 200)).numpy()
      array([[0.1, 0.1, 0.3, 0.2]], dtype=float32)
    """
    boxes = _float(boxes)
    return boxes / _image_scale(image_shape, boxes)


def denormalize_boxes(boxes, image_shape):
    """[0, 1] boxes to pixels: y multiplied by height, x by width (inverse of normalize_boxes).

    Args:
      boxes: ``[..., 4]`` yxyx, normalised.
      image_shape: ``(height, width)``: ``[2]`` or ``[B, 2]`` (see :func:`clip_boxes`).

    Returns:
      float32 ``[..., 4]`` yxyx, pixels.

    Example:
      >>> denormalize_boxes([[0.25, 0.5, 0.75, 1.0]], (100, 200)).numpy()
      array([[ 25., 100.,  75., 200.]], dtype=float32)
    """
    boxes = _float(boxes)
    return boxes * _image_scale(image_shape, boxes)


def convert_boxes(boxes, source, target):
    """Convert boxes between formats.

    Formats (all in the same units, e.g. pixels):
      - ``"yxyx"``: ``[y1, x1, y2, x2]`` (ours),
      - ``"xyxy"``: ``[x1, y1, x2, y2]`` (Pascal VOC, torchvision),
      - ``"xywh"``: ``[x1, y1, width, height]`` (COCO),
      - ``"cxcywh"``: ``[centre x, centre y, width, height]``.

    Args:
      boxes: ``[..., 4]`` in ``source`` format.
      source: one of ``BOX_FORMATS``.
      target: one of ``BOX_FORMATS``.

    Returns:
      float32 ``[..., 4]`` in ``target`` format.

    Example:
      >>> convert_boxes([[10., 20., 5., 8.]], "xywh", "yxyx").numpy()  # COCO to ours
      array([[20., 10., 28., 15.]], dtype=float32)
    """
    for name, fmt in (("source", source), ("target", target)):
        if fmt not in BOX_FORMATS:
            raise ValueError(
                f"convert_boxes: unknown {name} format {fmt!r}; accepted: {', '.join(BOX_FORMATS)}."
            )
    boxes = _float(boxes)
    if source == target:
        return boxes
    a, b, c, d = tf.unstack(boxes, 4, axis=-1)
    if source == "yxyx":
        y1, x1, y2, x2 = a, b, c, d
    elif source == "xyxy":
        x1, y1, x2, y2 = a, b, c, d
    elif source == "xywh":
        x1, y1, x2, y2 = a, b, a + c, b + d
    else:  # cxcywh
        x1, y1, x2, y2 = a - 0.5 * c, b - 0.5 * d, a + 0.5 * c, b + 0.5 * d
    if target == "yxyx":
        out = [y1, x1, y2, x2]
    elif target == "xyxy":
        out = [x1, y1, x2, y2]
    elif target == "xywh":
        out = [x1, y1, x2 - x1, y2 - y1]
    else:  # cxcywh
        out = [0.5 * (x1 + x2), 0.5 * (y1 + y2), x2 - x1, y2 - y1]
    return tf.stack(out, axis=-1)


def valid_box_mask(boxes, min_size=0.0):
    """Which boxes are usable: finite, and height and width strictly greater than ``min_size``.

    Args:
      boxes: ``[..., 4]`` yxyx, pixels.
      min_size: pixels; the default 0 means "strictly positive height and width".

    Returns:
      bool ``[...]``.

    Example:
      >>> valid_box_mask([[0, 0, 10, 10], [0, 0, 0, 10], [0, 0, float("nan"), 1]]).numpy()
      array([ True, False, False])
    """
    boxes = _float(boxes)
    min_size = _float(min_size)
    y1, x1, y2, x2 = tf.unstack(boxes, 4, axis=-1)
    finite = tf.reduce_all(tf.math.is_finite(boxes), axis=-1)
    return finite & (y2 - y1 > min_size) & (x2 - x1 > min_size)
