"""Assigning boxes (anchors or proposals) to ground truth, and sampling balanced minibatches.

Shape shorthand: ``B`` images, ``N`` boxes an image (anchors or proposals), ``M`` ground-truth boxes
an image (padded), ``S`` sampled boxes an image.

Boxes are float32 ``[..., 4]`` yxyx in pixels. Ground-truth classes are int32 ``[B, M]`` with
``-1`` marking padding rows. Labels use the named constants ``POSITIVE``, ``NEGATIVE``, ``IGNORE``.
"""

import tensorflow as tf

from tfrcnn.ops.boxes import box_iou

#: Label of a box matched to an object.
POSITIVE = 1
#: Label of a background box.
NEGATIVE = 0
#: Label of a box that takes no part in the loss (also the label of padded sample slots).
IGNORE = -1

#: Marks padding: rows of ``gt_classes``, and empty slots of ``detection_classes``.
PADDING_CLASS = -1


def _float(x):
    x = tf.convert_to_tensor(x)
    if x.dtype != tf.float32:
        x = tf.cast(x, tf.float32)
    return x


def match_boxes(
    boxes,
    gt_boxes,
    gt_classes,
    positive_threshold=0.7,
    negative_threshold=0.3,
    negative_lower_threshold=0.0,
    allow_low_quality_matches=True,
    valid_mask=None,
):
    """Match every box to its best ground truth by IoU and label it positive / negative / ignore.

    Rules, for box ``n`` of image ``b`` with ``iou`` its best IoU over the image's real gt:
      - ``iou >= positive_threshold``: ``POSITIVE``;
      - ``negative_lower_threshold <= iou < negative_threshold``: ``NEGATIVE``;
      - otherwise ``IGNORE`` (the band between the thresholds, and ``iou`` below
        ``negative_lower_threshold`` when that is > 0).
      - ``allow_low_quality_matches``: for every real gt, all boxes whose IoU with it equals that
        gt's maximum over the (valid) boxes (all ties, as in py-faster-rcnn), if that maximum is
        > 0, become ``POSITIVE`` and are matched to that gt (overriding their argmax match; a box
        that is the best for several gts goes to the one it overlaps most). So each gt gets at
        least one box even when its best IoU is below ``positive_threshold``.
      - ``valid_mask`` False: ``IGNORE`` whatever the IoU; such boxes take no part in the
        low-quality rule either (e.g. anchors crossing the image border).
    Padding gt rows (class -1) are never matched. An image with no real gt (or ``M == 0``) has
    every valid box ``NEGATIVE`` (``IGNORE`` if ``negative_lower_threshold > 0``), matched index 0.

    Presets: RPN ``(0.7, 0.3, 0.0, True)``; Fast R-CNN ROIs ``(0.5, 0.5, 0.0, False)``
    (Fast R-CNN's paper used a background band ``[0.1, 0.5)``: ``negative_lower_threshold=0.1``).

    Args:
      boxes: ``[N, 4]`` shared by all images (anchors) or ``[B, N, 4]`` (proposals); yxyx pixels.
      gt_boxes: ``[B, M, 4]`` yxyx pixels; ``M`` may be 0.
      gt_classes: int ``[B, M]``, -1 for padding.
      positive_threshold, negative_threshold, negative_lower_threshold: IoU thresholds.
      allow_low_quality_matches: Python bool, see above.
      valid_mask: optional bool ``[N]`` or ``[B, N]``.

    Returns:
      ``(matched_indices, labels, max_iou)``:
        - ``matched_indices`` int32 ``[B, N]``: the matched gt row for positives. For other boxes
          it is the argmax gt row (or 0 when the image has no real gt); use it for positives only.
        - ``labels`` int32 ``[B, N]``: ``POSITIVE`` / ``NEGATIVE`` / ``IGNORE``.
        - ``max_iou`` float32 ``[B, N]``: each box's best IoU with a real gt (0 when none).

    Example:
      >>> anchors = [[0., 0., 10., 10.], [0., 0., 10., 20.], [50., 50., 60., 60.]]
      >>> idx, labels, iou = match_boxes(anchors, [[[0., 0., 10., 10.], [0.] * 4]], [[3, -1]])
      >>> labels.numpy()  # exact hit; IoU 0.5 is in the ignore band; far away
      array([[ 1, -1,  0]], dtype=int32)
    """
    boxes = _float(boxes)
    gt_boxes = _float(gt_boxes)
    gt_classes = tf.convert_to_tensor(gt_classes)
    batch = tf.shape(gt_boxes)[0]
    if boxes.shape.rank == 2:
        boxes = tf.broadcast_to(boxes[None], tf.concat([[batch], tf.shape(boxes)], axis=0))

    # One extra padding column so reductions over M never run on an empty axis (M may be 0).
    gt_boxes = tf.concat([gt_boxes, tf.zeros([batch, 1, 4], tf.float32)], axis=1)  # [B, M+1, 4]
    gt_real = tf.concat([gt_classes >= 0, tf.zeros([batch, 1], tf.bool)], axis=1)  # [B, M+1]

    iou = box_iou(boxes, gt_boxes)  # [B, N, M+1]
    # Padding columns get -1, below any real IoU, so they never win an argmax or a max.
    masked_iou = tf.where(gt_real[:, None, :], iou, -tf.ones_like(iou))
    best_iou = tf.reduce_max(masked_iou, axis=2)  # [B, N]; -1 when the image has no real gt
    matched = tf.argmax(masked_iou, axis=2, output_type=tf.int32)
    has_gt = tf.reduce_any(gt_real, axis=1)  # [B]
    matched = tf.where(has_gt[:, None], matched, tf.zeros_like(matched))
    max_iou = tf.maximum(best_iou, 0.0)

    positive = max_iou >= positive_threshold
    negative = (max_iou >= negative_lower_threshold) & (max_iou < negative_threshold)

    if valid_mask is None:
        valid = tf.ones_like(max_iou, dtype=tf.bool)
    else:
        valid = tf.convert_to_tensor(valid_mask, dtype=tf.bool)
        valid = tf.broadcast_to(valid, tf.shape(max_iou))

    if allow_low_quality_matches:
        # Each real gt's best IoU over the valid boxes.
        candidate_iou = tf.where(valid[:, :, None], masked_iou, -tf.ones_like(masked_iou))
        gt_best = tf.reduce_max(candidate_iou, axis=1, keepdims=True)  # [B, 1, M+1]
        low_quality = (
            (candidate_iou == gt_best) & (gt_best > 0.0) & gt_real[:, None, :] & valid[:, :, None]
        )  # [B, N, M+1]
        has_low_quality = tf.reduce_any(low_quality, axis=2)
        low_quality_match = tf.argmax(
            tf.where(low_quality, masked_iou, -tf.ones_like(masked_iou)),
            axis=2,
            output_type=tf.int32,
        )
        matched = tf.where(has_low_quality, low_quality_match, matched)
        positive = positive | has_low_quality

    labels = tf.where(positive, POSITIVE, tf.where(negative, NEGATIVE, IGNORE))
    labels = tf.where(valid, labels, IGNORE)
    return matched, tf.cast(labels, tf.int32), max_iou


def _random_keys(shape, seed):
    """Uniform [0, 1) keys; stateless (deterministic) when a seed is given."""
    if seed is None:
        return tf.random.uniform(shape, dtype=tf.float32)
    seed = tf.cast(tf.convert_to_tensor(seed), tf.int64)
    if seed.shape.rank == 0:  # an int: use (seed, 0)
        seed = tf.stack([seed, tf.zeros([], tf.int64)])
    return tf.random.stateless_uniform(shape, seed=seed, dtype=tf.float32)


def _num_positive_slots(num_samples, positive_fraction):
    return int(num_samples * positive_fraction)


def balanced_sample(labels, num_samples, positive_fraction, seed=None):
    """Sample a fixed number of boxes an image, at most a fraction of them positive.

    Up to ``P = int(num_samples * positive_fraction)`` positives are chosen uniformly at random
    among the ``POSITIVE`` entries; the remaining slots are filled with random ``NEGATIVE``
    entries. When there are not enough of either, the last slots are padding: their label is
    ``IGNORE`` and their index is 0, so a gather with the indices is always safe. ``IGNORE``
    entries are never sampled. Output order: positives, then negatives, then padding.

    Args:
      labels: int ``[B, N]`` of ``POSITIVE`` / ``NEGATIVE`` / ``IGNORE``.
      num_samples: ``S``, a Python int (e.g. 256 for the RPN, 128 or 512 ROIs for the head).
      positive_fraction: Python float, e.g. 0.5 (RPN) or 0.25 (head).
      seed: None (a stateful random op, different every call), or an int or an int pair / shape
        ``[2]`` tensor (e.g. from ``keras.random.SeedGenerator.next()``) for a stateless draw: the
        same seed and labels give the same sample.

    Returns:
      ``(indices, sample_labels)``, both int32 ``[B, S]``: indices into ``N`` and their labels
      (``POSITIVE`` / ``NEGATIVE``, ``IGNORE`` for padding slots).

    Example:
      >>> idx, lab = balanced_sample([[1, 0, 0, -1, 1, 1]], 4, 0.5, seed=1)
      >>> lab.numpy()  # 2 of the 3 positives, then both negatives
      array([[1, 1, 0, 0]], dtype=int32)
    """
    indices, sample_labels, _ = _balanced_sample(labels, num_samples, positive_fraction, seed)
    return indices, sample_labels


def _balanced_sample(labels, num_samples, positive_fraction, seed):
    labels = tf.cast(tf.convert_to_tensor(labels), tf.int32)
    num_samples = int(num_samples)
    max_positives = _num_positive_slots(num_samples, positive_fraction)
    shape = tf.shape(labels)
    batch = shape[0]

    keys = _random_keys(shape, seed)  # [B, N] in [0, 1)
    # S padding columns of key -1 guarantee top_k has S entries even when N < S.
    pad = -tf.ones([batch, num_samples], tf.float32)
    pos_keys = tf.concat([tf.where(labels == POSITIVE, keys, -1.0), pad], axis=1)
    neg_keys = tf.concat([tf.where(labels == NEGATIVE, keys, -1.0), pad], axis=1)
    _, pos_order = tf.math.top_k(pos_keys, k=num_samples)  # [B, S], candidates first, at random
    _, neg_order = tf.math.top_k(neg_keys, k=num_samples)

    num_pos = tf.minimum(
        tf.reduce_sum(tf.cast(labels == POSITIVE, tf.int32), axis=1), max_positives
    )  # [B]
    num_neg = tf.minimum(
        tf.reduce_sum(tf.cast(labels == NEGATIVE, tf.int32), axis=1), num_samples - num_pos
    )

    slots = tf.range(num_samples)[None, :]  # [1, S]
    is_pos = slots < num_pos[:, None]
    is_neg = ~is_pos & (slots < (num_pos + num_neg)[:, None])
    neg_slot = tf.clip_by_value(slots - num_pos[:, None], 0, num_samples - 1)
    neg_pick = tf.gather(neg_order, neg_slot, batch_dims=1)
    indices = tf.where(is_pos, pos_order, tf.where(is_neg, neg_pick, 0))
    sample_labels = tf.where(is_pos, POSITIVE, tf.where(is_neg, NEGATIVE, IGNORE))
    return indices, tf.cast(sample_labels, tf.int32), is_pos | is_neg


def balanced_sample_mask(labels, num_samples, positive_fraction, seed=None):
    """The same sample as :func:`balanced_sample`, as a mask over all boxes.

    Args:
      labels: int ``[B, N]`` of ``POSITIVE`` / ``NEGATIVE`` / ``IGNORE``.
      num_samples, positive_fraction, seed: as in :func:`balanced_sample` (with the same stateless
        seed the mask marks exactly the indices that :func:`balanced_sample` returns).

    Returns:
      bool ``[B, N]``: True at the sampled entries (at most ``num_samples`` an image; never at an
      ``IGNORE`` entry). Used for the RPN loss over all anchors.

    Example:
      >>> int(balanced_sample_mask([[1, 0, 0, -1, 1, 1]], 4, 0.5, seed=1).numpy().sum())
      4
    """
    labels = tf.cast(tf.convert_to_tensor(labels), tf.int32)
    indices, _, taken = _balanced_sample(labels, num_samples, positive_fraction, seed)
    shape = tf.shape(labels)
    batch_index = tf.broadcast_to(tf.range(shape[0])[:, None], tf.shape(indices))
    scatter_at = tf.stack([batch_index, indices], axis=-1)  # [B, S, 2]
    counts = tf.scatter_nd(scatter_at, tf.cast(taken, tf.int32), shape)
    return counts > 0
