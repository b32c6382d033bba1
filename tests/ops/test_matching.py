"""Tests of tfrcnn.ops.matching: a loop matcher, hand-made cases, sampler counts and coverage."""

import numpy as np
import pytest
import tensorflow as tf

from tfrcnn.ops.matching import (
    IGNORE,
    NEGATIVE,
    POSITIVE,
    balanced_sample,
    balanced_sample_mask,
    match_boxes,
)


def loop_iou(a, b):
    ay1, ax1, ay2, ax2 = [float(v) for v in a]
    by1, bx1, by2, bx2 = [float(v) for v in b]
    area_a = max(ay2 - ay1, 0) * max(ax2 - ax1, 0)
    area_b = max(by2 - by1, 0) * max(bx2 - bx1, 0)
    if area_a <= 0 or area_b <= 0:
        return 0.0
    inter = max(min(ay2, by2) - max(ay1, by1), 0) * max(min(ax2, bx2) - max(ax1, bx1), 0)
    return inter / (area_a + area_b - inter)


def loop_match(boxes, gt_boxes, gt_classes, pos, neg, lower, low_quality, valid):
    """One image, by the rules, box by box and gt by gt."""
    real = [m for m in range(len(gt_classes)) if gt_classes[m] >= 0]
    n_boxes = len(boxes)
    iou = np.zeros((n_boxes, len(gt_classes)))
    for n in range(n_boxes):
        for m in real:
            iou[n, m] = loop_iou(boxes[n], gt_boxes[m])
    matched, labels, max_iou = [0] * n_boxes, [IGNORE] * n_boxes, [0.0] * n_boxes
    for n in range(n_boxes):
        best, best_m = -1.0, 0
        for m in real:
            if iou[n, m] > best:
                best, best_m = iou[n, m], m
        max_iou[n] = max(best, 0.0)
        matched[n] = best_m
        if max_iou[n] >= pos:
            labels[n] = POSITIVE
        elif lower <= max_iou[n] < neg:
            labels[n] = NEGATIVE
    if low_quality:
        claims = {}
        for m in real:
            gt_best = max([iou[n, m] for n in range(n_boxes) if valid[n]], default=0.0)
            if gt_best <= 0:
                continue
            for n in range(n_boxes):
                if valid[n] and iou[n, m] == gt_best:
                    claims.setdefault(n, []).append(m)
        for n, ms in claims.items():
            labels[n] = POSITIVE
            matched[n] = max(ms, key=lambda m: (iou[n, m], -m))
    for n in range(n_boxes):
        if not valid[n]:
            labels[n] = IGNORE
    return np.array(matched), np.array(labels), np.array(max_iou)


def random_scene(rng, batch, n, m):
    """Gt boxes with padding, and boxes that are jittered copies of gt or random."""
    centres = rng.uniform(20, 180, (batch, m, 2))
    sizes = rng.uniform(10, 60, (batch, m, 2))
    gt = np.concatenate([centres - sizes / 2, centres + sizes / 2], -1).astype(np.float32)
    classes = rng.integers(0, 5, (batch, m)).astype(np.int32)
    classes[rng.uniform(size=(batch, m)) < 0.3] = -1
    src = gt[np.arange(batch)[:, None], rng.integers(0, m, (batch, n))]
    jitter = rng.normal(0, 6, (batch, n, 4))
    boxes = src + jitter
    random_centres = rng.uniform(0, 200, (batch, n, 2))
    random_boxes = np.concatenate([random_centres - 15, random_centres + 15], -1)
    use_random = rng.uniform(size=(batch, n, 1)) < 0.3
    boxes = np.where(use_random, random_boxes, boxes).astype(np.float32)
    return boxes, gt, classes


@pytest.mark.parametrize(
    "pos,neg,lower,low_quality",
    [
        (0.7, 0.3, 0.0, True),  # RPN
        (0.5, 0.5, 0.0, False),  # Fast R-CNN ROIs
        (0.6, 0.4, 0.1, True),
    ],
)
def test_matches_loop_reference(pos, neg, lower, low_quality):
    rng = np.random.default_rng(7)
    boxes, gt, classes = random_scene(rng, 3, 60, 6)
    classes[2] = -1  # one image without objects
    valid = rng.uniform(size=(3, 60)) < 0.85
    matched, labels, max_iou = match_boxes(
        boxes, gt, classes, pos, neg, lower, low_quality, valid_mask=valid
    )
    assert matched.dtype == tf.int32 and labels.dtype == tf.int32 and max_iou.dtype == tf.float32
    assert matched.shape == labels.shape == max_iou.shape == (3, 60)
    counts = {POSITIVE: 0, NEGATIVE: 0, IGNORE: 0}
    for b in range(3):
        ref_m, ref_l, ref_iou = loop_match(
            boxes[b], gt[b], classes[b], pos, neg, lower, low_quality, valid[b]
        )
        np.testing.assert_array_equal(labels[b].numpy(), ref_l)
        np.testing.assert_allclose(max_iou[b].numpy(), ref_iou, atol=1e-5)
        positive = ref_l == POSITIVE
        np.testing.assert_array_equal(matched[b].numpy()[positive], ref_m[positive])
        for label in counts:
            counts[label] += int((ref_l == label).sum())
    assert min(counts.values()) > 5  # the scene exercises every label


def test_shared_boxes_equal_per_image_boxes():
    rng = np.random.default_rng(8)
    boxes, gt, classes = random_scene(rng, 2, 40, 5)
    shared = match_boxes(boxes[0], gt, classes)
    tiled = match_boxes(np.stack([boxes[0]] * 2), gt, classes)
    for a, b in zip(shared, tiled):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


ANCHORS = np.array(
    [
        [0, 0, 10, 10],  # 0: exact hit of gt 0
        [0, 0, 10, 20],  # 1: IoU 0.5 with gt 0 (ignore band for the RPN)
        [50, 50, 60, 60],  # 2: far from everything
        [100, 100, 120, 120],  # 3: IoU 0.4 with gt 1, its best anchor
        [100, 100, 110, 110],  # 4: IoU 0.25 with gt 1
    ],
    np.float32,
)
GT = np.array([[[0, 0, 10, 10], [100, 100, 120, 125], [50, 50, 60, 60]]], np.float32)


def test_low_quality_rule_padding_and_thresholds():
    gt = GT.copy()
    gt[0, 1] = [100, 100, 120, 150]  # anchor 3 (inside it): 400 / 1000 = 0.4; anchor 4: 0.1
    classes = np.array([[2, 0, -1]], np.int32)  # the gt at anchor 2 is padding
    matched, labels, max_iou = match_boxes(ANCHORS, gt, classes)
    np.testing.assert_allclose(max_iou.numpy(), [[1.0, 0.5, 0.0, 0.4, 0.1]], rtol=1e-6)
    # Anchor 3's best IoU is only 0.4 but it is gt 1's best anchor: positive, matched to gt 1.
    np.testing.assert_array_equal(
        labels.numpy(), [[POSITIVE, IGNORE, NEGATIVE, POSITIVE, NEGATIVE]]
    )
    assert matched.numpy()[0, 0] == 0 and matched.numpy()[0, 3] == 1
    # Without the rule anchor 3 falls in the ignore band.
    _, labels, _ = match_boxes(ANCHORS, gt, classes, allow_low_quality_matches=False)
    np.testing.assert_array_equal(labels.numpy(), [[POSITIVE, IGNORE, NEGATIVE, IGNORE, NEGATIVE]])
    # A negative lower bound turns IoU below it into IGNORE (anchor 2 has IoU 0, anchor 4 0.1).
    _, labels, _ = match_boxes(ANCHORS, gt, classes, 0.7, 0.3, 0.05)
    np.testing.assert_array_equal(labels.numpy(), [[POSITIVE, IGNORE, IGNORE, POSITIVE, NEGATIVE]])
    # Fast R-CNN settings: one threshold at 0.5 (0.5 is positive), no low-quality matches.
    _, labels, _ = match_boxes(ANCHORS, gt, classes, 0.5, 0.5, 0.0, False)
    np.testing.assert_array_equal(
        labels.numpy(), [[POSITIVE, POSITIVE, NEGATIVE, NEGATIVE, NEGATIVE]]
    )


def test_low_quality_ties_and_override_and_valid_mask():
    anchors = np.array(
        [[0, 0, 10, 10], [0, 0, 10, 10], [0, 0, 20, 20], [40, 40, 50, 50]], np.float32
    )
    gt = np.array([[[0, 0, 10, 10], [5, 5, 15, 15], [0, 0, 0, 0]]], np.float32)
    classes = np.array([[0, 1, -1]], np.int32)
    matched, labels, max_iou = match_boxes(anchors, gt, classes, 0.9, 0.1)
    # Ties: anchors 0 and 1 (identical) both have IoU 1 with gt 0: both positive, matched to it.
    # gt 1's IoUs: anchors 0, 1: 25 / 175 = 1/7; anchor 2: 100 / 400 = 0.25, the best, so anchor 2
    # (IoU 0.25, in the ignore band) becomes positive, matched to gt 1, although its argmax is
    # gt 0 (also 0.25: the tie goes to the lower index, then the low-quality rule overrides it).
    np.testing.assert_allclose(max_iou.numpy()[0], [1.0, 1.0, 0.25, 0.0], rtol=1e-6)
    np.testing.assert_array_equal(labels.numpy()[0], [POSITIVE, POSITIVE, POSITIVE, NEGATIVE])
    np.testing.assert_array_equal(matched.numpy()[0, :3], [0, 0, 1])
    # valid_mask: anchor 0 invalid -> IGNORE, and anchor 1 alone is gt 0's best.
    valid = np.array([False, True, True, True])
    matched, labels, _ = match_boxes(anchors, gt, classes, 0.9, 0.1, valid_mask=valid)
    np.testing.assert_array_equal(labels.numpy()[0], [IGNORE, POSITIVE, POSITIVE, NEGATIVE])
    # An invalid box does not take part in the low-quality rule: gt 1's best valid box is taken.
    valid = np.array([[True, True, False, True]])
    matched, labels, _ = match_boxes(anchors, gt, classes, 0.9, 0.1, valid_mask=valid)
    np.testing.assert_array_equal(labels.numpy()[0], [POSITIVE, POSITIVE, IGNORE, NEGATIVE])
    np.testing.assert_array_equal(matched.numpy()[0, :2], [0, 0])  # both tie for gt 1 too


def test_overriding_argmax_match():
    # Box 0's argmax is gt 0 (IoU 100 / 200 = 0.5) but it is gt 1's best box (IoU 50 / 250 = 0.2;
    # box 1 has 50 / 350 with gt 1 and 1.0 with gt 0).
    boxes = np.array([[0, 0, 10, 10], [0, 0, 10, 20], [100, 100, 110, 110]], np.float32)
    gt = np.array([[[0, 0, 10, 20], [0, -15, 10, 5]]], np.float32)
    matched, labels, _ = match_boxes(boxes, gt, [[0, 1]])
    np.testing.assert_array_equal(labels.numpy()[0], [POSITIVE, POSITIVE, NEGATIVE])
    np.testing.assert_array_equal(matched.numpy()[0, :2], [1, 0])


def test_images_without_ground_truth():
    # All padding, and M = 0.
    for gt, classes in [
        (np.zeros((2, 3, 4), np.float32), -np.ones((2, 3), np.int32)),
        (np.zeros((2, 0, 4), np.float32), np.zeros((2, 0), np.int32)),
    ]:
        matched, labels, max_iou = match_boxes(ANCHORS, gt, classes)
        np.testing.assert_array_equal(labels.numpy(), np.full((2, 5), NEGATIVE))
        np.testing.assert_array_equal(matched.numpy(), np.zeros((2, 5)))
        np.testing.assert_array_equal(max_iou.numpy(), np.zeros((2, 5)))
    # A padding row sitting exactly on an anchor is still never matched.
    gt = np.array([[[0, 0, 10, 10]]], np.float32)
    _, labels, _ = match_boxes(ANCHORS, gt, [[-1]], valid_mask=[True, True, True, True, False])
    np.testing.assert_array_equal(labels.numpy(), [[NEGATIVE] * 4 + [IGNORE]])


def test_match_in_tf_function_with_unknown_shapes():
    fn = tf.function(
        match_boxes,
        input_signature=[
            tf.TensorSpec([None, 4], tf.float32),
            tf.TensorSpec([None, None, 4], tf.float32),
            tf.TensorSpec([None, None], tf.int32),
        ],
    )
    eager = match_boxes(ANCHORS, GT, [[0, 1, 1]])
    graph = fn(tf.constant(ANCHORS), tf.constant(GT), tf.constant([[0, 1, 1]]))
    for a, b in zip(eager, graph):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


def check_sample(labels, indices, sample_labels, num_samples, fraction):
    labels = np.asarray(labels)
    indices, sample_labels = indices.numpy(), sample_labels.numpy()
    assert indices.shape == sample_labels.shape == (labels.shape[0], num_samples)
    for b in range(labels.shape[0]):
        taken = sample_labels[b] != IGNORE
        picked = indices[b][taken]
        assert len(set(picked)) == len(picked)  # no duplicates
        np.testing.assert_array_equal(labels[b][picked], sample_labels[b][taken])
        assert np.all(indices[b][~taken] == 0)
        n_pos = int((sample_labels[b] == POSITIVE).sum())
        n_neg = int((sample_labels[b] == NEGATIVE).sum())
        avail_pos = int((labels[b] == POSITIVE).sum())
        avail_neg = int((labels[b] == NEGATIVE).sum())
        assert n_pos == min(avail_pos, int(num_samples * fraction))
        assert n_neg == min(avail_neg, num_samples - n_pos)
        # Positives first, then negatives, then padding.
        expected = [POSITIVE] * n_pos + [NEGATIVE] * n_neg
        expected += [IGNORE] * (num_samples - n_pos - n_neg)
        np.testing.assert_array_equal(sample_labels[b], expected)


def test_balanced_sample_counts():
    rng = np.random.default_rng(9)
    labels = np.full((4, 50), IGNORE, np.int32)
    labels[0] = rng.choice([POSITIVE, NEGATIVE, IGNORE], 50)  # plenty of everything
    labels[1, :3] = POSITIVE  # few positives: filled with negatives
    labels[1, 10:40] = NEGATIVE
    labels[2, :2] = POSITIVE  # both few: padding
    labels[2, 5:8] = NEGATIVE
    # image 3: all IGNORE -> all padding
    for seed in (None, 3, np.int64(7), (4, 5), tf.constant([1, 2])):
        indices, sample_labels = balanced_sample(labels, 16, 0.5, seed=seed)
        check_sample(labels, indices, sample_labels, 16, 0.5)
    # int(S * fraction) positives: int(10 * 0.29) == 2.
    indices, sample_labels = balanced_sample(labels, 10, 0.29, seed=0)
    check_sample(labels, indices, sample_labels, 10, 0.29)
    assert (sample_labels.numpy()[0] == POSITIVE).sum() == 2
    # More samples than boxes.
    indices, sample_labels = balanced_sample(labels[:, :6], 12, 0.25, seed=0)
    check_sample(labels[:, :6], indices, sample_labels, 12, 0.25)


def test_balanced_sample_covers_all_candidates_across_seeds():
    labels = np.array([[POSITIVE] * 6 + [NEGATIVE] * 6 + [IGNORE] * 4], np.int32)
    seen_pos, seen_neg = set(), set()
    for seed in range(40):
        indices, sample_labels = balanced_sample(labels, 4, 0.5, seed=seed)
        idx, lab = indices.numpy()[0], sample_labels.numpy()[0]
        seen_pos.update(idx[lab == POSITIVE])
        seen_neg.update(idx[lab == NEGATIVE])
    assert seen_pos == set(range(6)) and seen_neg == set(range(6, 12))
    # Stateless: the same seed gives the same sample.
    a = balanced_sample(labels, 4, 0.5, seed=11)[0].numpy()
    b = balanced_sample(labels, 4, 0.5, seed=11)[0].numpy()
    np.testing.assert_array_equal(a, b)


def test_balanced_sample_mask_agrees_with_sample():
    rng = np.random.default_rng(10)
    labels = rng.choice([POSITIVE, NEGATIVE, IGNORE], (3, 80), p=[0.1, 0.6, 0.3]).astype(np.int32)
    labels[2] = IGNORE
    labels[2, :3] = NEGATIVE
    indices, sample_labels = balanced_sample(labels, 32, 0.25, seed=5)
    mask = balanced_sample_mask(labels, 32, 0.25, seed=5).numpy()
    assert mask.shape == (3, 80) and mask.dtype == bool
    for b in range(3):
        taken = sample_labels.numpy()[b] != IGNORE
        expected = np.zeros(80, bool)
        expected[indices.numpy()[b][taken]] = True
        np.testing.assert_array_equal(mask[b], expected)
        assert not np.any(mask[b] & (labels[b] == IGNORE))
    assert mask[2].sum() == 3
    assert balanced_sample_mask(labels, 32, 0.25).numpy().sum(axis=1).tolist() == [32, 32, 3]


def test_sampler_in_tf_function_with_unknown_shapes():
    @tf.function(input_signature=[tf.TensorSpec([None, None], tf.int32)])
    def sample(labels):
        indices, sample_labels = balanced_sample(labels, 8, 0.5)
        return indices, sample_labels, balanced_sample_mask(labels, 8, 0.5)

    labels = np.array([[1, 0, 0, -1, 1, 1, 0, 0, 0, 0, 0, 0], [-1] * 12], np.int32)
    indices, sample_labels, mask = sample(labels)
    assert indices.shape == (2, 8) and mask.shape == (2, 12)
    check_sample(labels, indices, sample_labels, 8, 0.5)
    assert mask.numpy().sum(axis=1).tolist() == [8, 0]
