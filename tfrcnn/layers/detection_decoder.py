"""DetectionDecoder: from head outputs to final, padded detections in original-image pixels.

Shapes: ``B`` images, ``R`` ROIs an image, ``C`` user classes, ``D = max_detections``.
"""

import keras
import tensorflow as tf

from tfrcnn.ops.boxes import clip_boxes, decode_boxes, valid_box_mask
from tfrcnn.ops.matching import PADDING_CLASS  # also the detection_classes of empty slots
from tfrcnn.ops.nms import batched_class_aware_non_max_suppression_padded


@keras.saving.register_keras_serializable(package="tfrcnn")
class DetectionDecoder(keras.layers.Layer):
    """Per-class decode, clip, score threshold, per-class NMS, top ``max_detections``, rescale.

    Args:
        num_classes: ``C``.
        box_weights: the head's delta weights (10, 10, 5, 5).
        score_threshold: minimum class probability (0.05).
        nms_iou: per-class NMS IoU threshold (0.5; the paper used 0.3 on VOC).
        max_detections: ``D``.
        min_size: boxes with a side not above this (input pixels) are dropped before NMS
            (0: empty boxes only; torchvision drops sides below 0.01).

    Call:
        ``layer(class_logits [B, R, C + 1], box_deltas [B, R, C, 4], rois [B, R, 4],
        roi_valid [B, R] bool, image_shape int [B, 2], image_scale [B] or [B, 2], original_shape [B, 2])``
        -> dict
        ``detection_boxes [B, D, 4]`` (``[y1, x1, y2, x2]`` in the ORIGINAL image's pixels:
        network-input pixels divided by ``image_scale`` (one scale, or ``(scale_y, scale_x)``
        for a resize with one ratio an axis), clipped to ``original_shape``, which defaults
        to ``image_shape / image_scale``), ``detection_scores [B, D]``,
        ``detection_classes`` int32 ``[B, D]`` (user ids, ``-1`` where padded),
        ``num_detections`` int32 ``[B]``. Padded slots have zero boxes and scores.

    Example:
        >>> out = DetectionDecoder(num_classes=3)(logits, deltas, rois, valid, image_shape, scale)
        >>> out["detection_boxes"].shape
        TensorShape([2, 100, 4])
    """

    def __init__(
        self,
        num_classes,
        box_weights=(10.0, 10.0, 5.0, 5.0),
        score_threshold=0.05,
        nms_iou=0.5,
        max_detections=100,
        min_size=0.0,
        **kwargs,
    ):
        kwargs.setdefault("dtype", "float32")  # pixel coordinates must not be autocast to 16 bits
        super().__init__(**kwargs)
        self.num_classes = int(num_classes)
        self.box_weights = tuple(float(w) for w in box_weights)
        self.score_threshold = float(score_threshold)
        self.nms_iou = float(nms_iou)
        self.max_detections = int(max_detections)
        self.min_size = float(min_size)

    def call(
        self,
        class_logits,
        box_deltas,
        rois,
        roi_valid,
        image_shape,
        image_scale,
        original_shape=None,
    ):
        num_classes = self.num_classes
        probs = tf.nn.softmax(tf.cast(class_logits, tf.float32), axis=-1)[..., 1:]  # [B, R, C]
        rois = tf.cast(rois, tf.float32)
        boxes = decode_boxes(
            tf.cast(box_deltas, tf.float32), rois[:, :, None, :], weights=self.box_weights
        )  # [B, R, C, 4]
        boxes = clip_boxes(boxes, image_shape)
        keep = tf.logical_and(roi_valid[:, :, None], valid_box_mask(boxes, self.min_size))
        scores = tf.where(keep, probs, 0.0)
        batch = tf.shape(boxes)[0]
        boxes = tf.reshape(boxes, [batch, -1, 4])
        scores = tf.reshape(scores, [batch, -1])
        classes = tf.tile(
            tf.range(num_classes, dtype=tf.int32)[None, :], [tf.shape(scores)[1] // num_classes, 1]
        )
        classes = tf.tile(tf.reshape(classes, [1, -1]), [batch, 1])
        index, num = batched_class_aware_non_max_suppression_padded(
            boxes,
            scores,
            classes,
            self.max_detections,
            self.nms_iou,
            score_threshold=self.score_threshold,
        )
        valid = index >= 0
        safe = tf.maximum(index, 0)
        scale = tf.cast(image_scale, tf.float32)
        if scale.shape.rank == 2:  # (scale_y, scale_x)
            scale_yx = scale
            scale = tf.tile(scale, [1, 2])[:, None, :]
        else:
            scale_yx = tf.tile(scale[:, None], [1, 2])
            scale = scale[:, None, None]
        det_boxes = tf.gather(boxes, safe, batch_dims=1) / scale
        if original_shape is None:
            original_shape = tf.cast(image_shape, tf.float32) / scale_yx
        det_boxes = clip_boxes(det_boxes, original_shape)
        det_boxes = tf.where(valid[..., None], det_boxes, 0.0)
        det_scores = tf.where(valid, tf.gather(scores, safe, batch_dims=1), 0.0)
        det_classes = tf.where(valid, tf.gather(classes, safe, batch_dims=1), PADDING_CLASS)
        return {
            "detection_boxes": det_boxes,
            "detection_scores": det_scores,
            "detection_classes": det_classes,
            "num_detections": tf.cast(num, tf.int32),
        }

    def compute_output_spec(self, class_logits, *args, **kwargs):
        b, d = class_logits.shape[0], self.max_detections
        return {
            "detection_boxes": keras.KerasTensor((b, d, 4), dtype="float32"),
            "detection_scores": keras.KerasTensor((b, d), dtype="float32"),
            "detection_classes": keras.KerasTensor((b, d), dtype="int32"),
            "num_detections": keras.KerasTensor((b,), dtype="int32"),
        }

    def get_config(self):
        config = super().get_config()
        config.update(
            num_classes=self.num_classes,
            box_weights=self.box_weights,
            score_threshold=self.score_threshold,
            nms_iou=self.nms_iou,
            max_detections=self.max_detections,
            min_size=self.min_size,
        )
        return config
