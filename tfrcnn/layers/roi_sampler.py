"""ROISampler: picks the ROIs the detection head trains on and their targets (Fast R-CNN, section 2.3).

Shapes: ``B`` images, ``R`` proposals an image, ``M`` ground-truth boxes an image (padded with
class -1), ``S = batch_size_per_image`` sampled ROIs an image.
"""

import keras
import tensorflow as tf

from tfrcnn.ops.boxes import encode_boxes
from tfrcnn.ops.matching import IGNORE, POSITIVE, balanced_sample, match_boxes

BACKGROUND = 0  # the internal background label of the detection head


@keras.saving.register_keras_serializable(package="tfrcnn")
class ROISampler(keras.layers.Layer):
    """Match proposals (plus the ground-truth boxes) to ground truth, sample ``S`` an image with at
    most ``positive_fraction`` foreground (IoU >= ``positive_iou``) and background in
    ``[negative_iou_low, negative_iou_high)``, and encode the foreground targets.

    The sampled ROI coordinates keep the proposals' gradient (non-approximate joint training pools
    them differentiably); labels and targets carry none.

    Args:
        batch_size_per_image: ``S`` (128; 512 for FPN).
        positive_fraction: 0.25.
        positive_iou: 0.5.
        negative_iou_high, negative_iou_low: background IoU range ``[low, high)`` (0, 0.5).
        box_weights: the head's delta weights (10, 10, 5, 5).
        add_gt_to_proposals: also offer the ground-truth boxes as ROIs (standard practice).

    Call:
        ``rois, labels, targets, weights = layer(proposals [B, R, 4], proposal_valid [B, R],
        gt_boxes [B, M, 4], gt_classes [B, M])``: rois ``[B, S, 4]``, labels int32 ``[B, S]``
        (``BACKGROUND = 0``, ``c + 1`` for user class ``c``), targets ``[B, S, 4]``, weights
        ``[B, S]`` (1 for a sampled ROI, 0 for padding when too few candidates exist).

    Example:
        >>> rois, labels, targets, weights = ROISampler(128)(proposals, valid, gt_boxes, gt_classes)
    """

    def __init__(
        self,
        batch_size_per_image=128,
        positive_fraction=0.25,
        positive_iou=0.5,
        negative_iou_high=0.5,
        negative_iou_low=0.0,
        box_weights=(10.0, 10.0, 5.0, 5.0),
        add_gt_to_proposals=True,
        **kwargs,
    ):
        kwargs.setdefault("dtype", "float32")  # pixel coordinates must not be autocast to 16 bits
        super().__init__(**kwargs)
        self.batch_size_per_image = int(batch_size_per_image)
        self.positive_fraction = float(positive_fraction)
        self.positive_iou = float(positive_iou)
        self.negative_iou_high = float(negative_iou_high)
        self.negative_iou_low = float(negative_iou_low)
        self.box_weights = tuple(float(w) for w in box_weights)
        self.add_gt_to_proposals = bool(add_gt_to_proposals)

    def call(self, proposals, proposal_valid, gt_boxes, gt_classes):
        proposals = tf.cast(proposals, tf.float32)
        gt_boxes = tf.cast(gt_boxes, tf.float32)
        gt_classes = tf.cast(gt_classes, tf.int32)
        candidates, valid = proposals, tf.cast(proposal_valid, tf.bool)
        if self.add_gt_to_proposals:
            candidates = tf.concat([candidates, gt_boxes], axis=1)
            valid = tf.concat([valid, gt_classes >= 0], axis=1)
        matched, labels, _ = match_boxes(
            tf.stop_gradient(candidates),
            gt_boxes,
            gt_classes,
            positive_threshold=self.positive_iou,
            negative_threshold=self.negative_iou_high,
            negative_lower_threshold=self.negative_iou_low,
            allow_low_quality_matches=False,
            valid_mask=valid,
        )
        index, sample_labels = balanced_sample(
            labels, self.batch_size_per_image, self.positive_fraction
        )
        rois = tf.gather(candidates, index, batch_dims=1)
        matched = tf.gather(matched, index, batch_dims=1)
        positive = tf.equal(sample_labels, POSITIVE)
        classes = tf.gather(gt_classes, matched, batch_dims=1)
        roi_labels = tf.where(positive, classes + 1, BACKGROUND)
        targets = encode_boxes(
            tf.gather(gt_boxes, matched, batch_dims=1),
            tf.stop_gradient(rois),
            weights=self.box_weights,
        )
        targets = tf.where(positive[..., None], targets, 0.0)
        weights = tf.cast(tf.not_equal(sample_labels, IGNORE), tf.float32)
        return (
            rois,
            tf.stop_gradient(roi_labels),
            tf.stop_gradient(targets),
            tf.stop_gradient(weights),
        )

    def compute_output_spec(self, proposals, proposal_valid, gt_boxes, gt_classes):
        b, s = proposals.shape[0], self.batch_size_per_image
        return (
            keras.KerasTensor((b, s, 4), dtype="float32"),
            keras.KerasTensor((b, s), dtype="int32"),
            keras.KerasTensor((b, s, 4), dtype="float32"),
            keras.KerasTensor((b, s), dtype="float32"),
        )

    def get_config(self):
        config = super().get_config()
        config.update(
            batch_size_per_image=self.batch_size_per_image,
            positive_fraction=self.positive_fraction,
            positive_iou=self.positive_iou,
            negative_iou_high=self.negative_iou_high,
            negative_iou_low=self.negative_iou_low,
            box_weights=self.box_weights,
            add_gt_to_proposals=self.add_gt_to_proposals,
        )
        return config
