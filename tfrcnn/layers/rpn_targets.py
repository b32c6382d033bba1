"""RPNTargetAssigner: labels and regression targets of every anchor (Ren et al., 2015, section 3.1.2).

Shapes: ``B`` images, ``N`` anchors, ``M`` ground-truth boxes an image (padded with class -1).
"""

import keras
import tensorflow as tf

from tfrcnn.ops.anchors import anchors_inside_mask
from tfrcnn.ops.boxes import encode_boxes
from tfrcnn.ops.matching import IGNORE, POSITIVE, balanced_sample_mask, match_boxes


@keras.saving.register_keras_serializable(package="tfrcnn")
class RPNTargetAssigner(keras.layers.Layer):
    """IoU >= 0.7 positive, < 0.3 negative, the best anchor of each box positive, border-crossing
    anchors ignored; then ``batch_size_per_image`` anchors sampled, at most ``positive_fraction``
    positive. No trainable state; outputs carry no gradient.

    Args:
        positive_iou, negative_iou: the matcher thresholds (0.7, 0.3).
        batch_size_per_image: sampled anchors an image (256).
        positive_fraction: at most this fraction positive (0.5).
        allowed_border: anchors reaching more than this many pixels outside the valid image region
            are ignored in training (0, the paper); ``None`` keeps every anchor.
        box_weights: delta weights (1, 1, 1, 1).

    Call:
        ``labels, targets = layer(anchors [N, 4], gt_boxes [B, M, 4], gt_classes [B, M],
        image_shape [B, 2])``: labels int32 ``[B, N]`` (``POSITIVE`` / ``NEGATIVE`` for sampled
        anchors, ``IGNORE`` otherwise), targets ``[B, N, 4]`` (zero unless positive).

    Example:
        >>> labels, targets = RPNTargetAssigner()(anchors, gt_boxes, gt_classes, image_shape)
    """

    def __init__(
        self,
        positive_iou=0.7,
        negative_iou=0.3,
        batch_size_per_image=256,
        positive_fraction=0.5,
        allowed_border=0.0,
        box_weights=(1.0, 1.0, 1.0, 1.0),
        **kwargs,
    ):
        kwargs.setdefault("dtype", "float32")  # pixel coordinates must not be autocast to 16 bits
        super().__init__(**kwargs)
        self.positive_iou = float(positive_iou)
        self.negative_iou = float(negative_iou)
        self.batch_size_per_image = int(batch_size_per_image)
        self.positive_fraction = float(positive_fraction)
        self.allowed_border = None if allowed_border is None else float(allowed_border)
        self.box_weights = tuple(float(w) for w in box_weights)

    def call(self, anchors, gt_boxes, gt_classes, image_shape):
        anchors = tf.stop_gradient(tf.cast(anchors, tf.float32))
        gt_boxes = tf.cast(gt_boxes, tf.float32)
        gt_classes = tf.cast(gt_classes, tf.int32)
        if self.allowed_border is None:
            inside = None
        else:
            inside = anchors_inside_mask(anchors, image_shape, self.allowed_border)
        matched, labels, _ = match_boxes(
            anchors,
            gt_boxes,
            gt_classes,
            positive_threshold=self.positive_iou,
            negative_threshold=self.negative_iou,
            negative_lower_threshold=0.0,
            allow_low_quality_matches=True,
            valid_mask=inside,
        )
        sampled = balanced_sample_mask(labels, self.batch_size_per_image, self.positive_fraction)
        labels = tf.where(sampled, labels, IGNORE)
        matched_boxes = tf.gather(gt_boxes, matched, batch_dims=1)
        targets = encode_boxes(matched_boxes, anchors[None], weights=self.box_weights)
        targets = tf.where(tf.equal(labels, POSITIVE)[..., None], targets, 0.0)
        return tf.stop_gradient(labels), tf.stop_gradient(targets)

    def compute_output_spec(self, anchors, gt_boxes, gt_classes, image_shape):
        b, n = gt_boxes.shape[0], anchors.shape[0]
        return (
            keras.KerasTensor((b, n), dtype="int32"),
            keras.KerasTensor((b, n, 4), dtype="float32"),
        )

    def get_config(self):
        config = super().get_config()
        config.update(
            positive_iou=self.positive_iou,
            negative_iou=self.negative_iou,
            batch_size_per_image=self.batch_size_per_image,
            positive_fraction=self.positive_fraction,
            allowed_border=self.allowed_border,
            box_weights=self.box_weights,
        )
        return config
