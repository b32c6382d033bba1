"""The multi-task loss of Faster R-CNN as pure functions.

Shapes: ``B`` images, ``N`` anchors (all levels), ``S`` sampled ROIs an image, ``C`` user classes
(the classifier has ``C + 1`` logits, index 0 being the internal background class).

Both stages use ``L = L_cls / N_cls + lambda * L_reg / N_reg`` (Ren et al., 2015, eq. 1):
cross-entropy over the sampled examples and a smooth-L1 loss on the box deltas of positives.
Every function returns float32 scalars, stays finite when an image has no ground truth (the box
terms are then exactly 0) and ignores padding.
"""

import tensorflow as tf

from tfrcnn.ops.matching import IGNORE, POSITIVE


def smooth_l1(x, beta=1.0):
    """Elementwise smooth-L1 (Huber with slope 1): ``0.5 x^2 / beta`` for ``|x| < beta``, else ``|x| - 0.5 beta``.

    ``beta = 1 / sigma^2`` in the notation of py-faster-rcnn (RPN: sigma 3, detector: sigma 1).
    ``beta = 0`` is plain L1.

    Example:
        >>> smooth_l1(tf.constant([0.5, 2.0])).numpy()
        array([0.125, 1.5], dtype=float32)
    """
    x = tf.cast(x, tf.float32)
    ax = tf.abs(x)
    if beta <= 0:
        return ax
    return tf.where(ax < beta, 0.5 * tf.square(ax) / beta, ax - 0.5 * beta)


def rpn_losses(
    objectness,
    deltas,
    labels,
    box_targets,
    *,
    num_locations=None,
    beta=1.0 / 9.0,
    box_normalizer="anchor_locations",
    box_loss_weight=10.0,
):
    """RPN classification and box losses.

    Args:
        objectness: float [B, N, 2] logits (background, object) of every anchor.
        deltas: float [B, N, 4] predicted ``(dy, dx, dh, dw)``.
        labels: int32 [B, N] after sampling: ``POSITIVE``, ``NEGATIVE`` or ``IGNORE``.
        box_targets: float [B, N, 4] encoded targets (zero where not positive).
        num_locations: scalar, anchor locations an image (``N_reg`` of the paper, e.g. ~2400);
            used when ``box_normalizer="anchor_locations"``.
        beta: smooth-L1 transition point.
        box_normalizer: ``"anchor_locations"`` (the paper: ``lambda * sum / (B * num_locations)``,
            lambda = 10) or ``"sampled"`` (``lambda * sum / number of sampled anchors``, as most
            later implementations do).
        box_loss_weight: ``lambda``.

    Returns:
        ``(cls_loss, box_loss)`` float32 scalars.
    """
    objectness = tf.cast(objectness, tf.float32)
    deltas = tf.cast(deltas, tf.float32)
    sampled = tf.not_equal(labels, IGNORE)
    sampled_f = tf.cast(sampled, tf.float32)
    num_sampled = tf.maximum(tf.reduce_sum(sampled_f), 1.0)
    ce = tf.nn.sparse_softmax_cross_entropy_with_logits(
        labels=tf.cast(tf.equal(labels, POSITIVE), tf.int32), logits=objectness
    )
    cls_loss = tf.reduce_sum(ce * sampled_f) / num_sampled
    positive = tf.cast(tf.equal(labels, POSITIVE), tf.float32)
    per_anchor = tf.reduce_sum(smooth_l1(deltas - tf.cast(box_targets, tf.float32), beta), axis=-1)
    box_sum = tf.reduce_sum(per_anchor * positive)
    if box_normalizer == "anchor_locations":
        if num_locations is None:
            raise ValueError("box_normalizer='anchor_locations' needs num_locations")
        batch = tf.cast(tf.shape(labels)[0], tf.float32)
        denom = tf.maximum(batch * tf.cast(num_locations, tf.float32), 1.0)
    elif box_normalizer == "sampled":
        denom = num_sampled
    else:
        raise ValueError(
            f"box_normalizer must be 'anchor_locations' or 'sampled', got {box_normalizer!r}"
        )
    box_loss = box_loss_weight * box_sum / denom
    return cls_loss, box_loss


def rcnn_losses(
    class_logits, box_deltas, labels, box_targets, weights, *, beta=1.0, box_loss_weight=1.0
):
    """Fast R-CNN head losses (Girshick, 2015): softmax over ``C + 1`` classes, class-specific smooth-L1.

    Args:
        class_logits: float [B, S, C + 1], index 0 = background.
        box_deltas: float [B, S, C, 4], one box a user class.
        labels: int32 [B, S], 0 = background, ``c + 1`` for user class ``c``.
        box_targets: float [B, S, 4] encoded against the ROI (zero for background).
        weights: float [B, S], 1 for a sampled ROI, 0 for padding.
        beta: smooth-L1 transition point.
        box_loss_weight: ``lambda``.

    Returns:
        ``(cls_loss, box_loss)``: cross-entropy averaged over sampled ROIs, and the box loss of
        the foreground ROIs summed and divided by the number of sampled ROIs (as Fast R-CNN does).
    """
    class_logits = tf.cast(class_logits, tf.float32)
    box_deltas = tf.cast(box_deltas, tf.float32)
    weights = tf.cast(weights, tf.float32)
    labels = tf.cast(labels, tf.int32)
    num = tf.maximum(tf.reduce_sum(weights), 1.0)
    ce = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=class_logits)
    cls_loss = tf.reduce_sum(ce * weights) / num
    foreground = tf.cast(labels > 0, tf.float32) * weights
    class_index = tf.maximum(labels - 1, 0)
    chosen = tf.gather(box_deltas, class_index, axis=2, batch_dims=2)  # [B, S, 4]
    per_roi = tf.reduce_sum(smooth_l1(chosen - tf.cast(box_targets, tf.float32), beta), axis=-1)
    box_loss = box_loss_weight * tf.reduce_sum(per_roi * foreground) / num
    return cls_loss, box_loss
