"""ProposalLayer: turns RPN outputs into a fixed number of proposals an image.

Shapes: ``B`` images, ``N_l`` anchors of level ``l``, ``R = post_nms_top_n`` proposals an image.
"""

import keras
import tensorflow as tf

from tfrcnn.ops.boxes import clip_boxes, decode_boxes, valid_box_mask
from tfrcnn.ops.nms import (
    batched_class_aware_non_max_suppression_padded,
    batched_non_max_suppression_padded,
)

_SUPPRESSED = -1.0  # score given to boxes removed before NMS (object probabilities are in [0, 1])


@keras.saving.register_keras_serializable(package="tfrcnn")
class ProposalLayer(keras.layers.Layer):
    """Decode, clip, drop small boxes, top-N before NMS, NMS, top-N after; fixed output shape.

    For each level: keep the ``pre_nms_top_n`` anchors with the highest object score, decode their
    deltas, clip to the image's valid region ``image_shape``; then across levels: drop boxes with a
    side below ``min_size``, NMS at ``nms_iou`` and keep the ``post_nms_top_n`` best. Use two
    instances for the training and test settings (12000/2000 and 6000/300 in the paper).

    Args:
        pre_nms_top_n: boxes kept a level before NMS.
        post_nms_top_n: ``R``, proposals an image (padded).
        nms_iou: NMS IoU threshold (0.7).
        min_size: minimum box side in input pixels (0 keeps all non-empty boxes).
        box_weights: delta weights of the RPN (1, 1, 1, 1).
        nms_per_level: run NMS within each level only (torchvision: boxes of different pyramid
            levels never suppress each other); ``False`` runs one NMS over all levels.
        score_threshold: drop boxes whose object probability is below this before NMS
            (torchvision's ``rpn_score_thresh``; 0 keeps all).

    Call:
        ``proposals, scores, valid = layer(objectness, deltas, anchors, image_shape)`` with lists
        (one entry a level) of objectness ``[B, N_l, 2]``, deltas ``[B, N_l, 4]``, anchors
        ``[N_l, 4]``, and image_shape int ``[B, 2]``. Returns proposals ``[B, R, 4]``
        (``[y1, x1, y2, x2]``, input pixels, zeros where padded), object probabilities ``[B, R]``
        (0 where padded) and a bool mask ``[B, R]`` of real proposals. Gradients flow from the
        proposal coordinates back to the deltas (for non-approximate joint training).

    Example:
        >>> layer = ProposalLayer(pre_nms_top_n=6000, post_nms_top_n=300)
        >>> boxes, scores, valid = layer([obj], [deltas], [anchors], image_shape)
    """

    def __init__(
        self,
        pre_nms_top_n=6000,
        post_nms_top_n=300,
        nms_iou=0.7,
        min_size=0.0,
        box_weights=(1.0, 1.0, 1.0, 1.0),
        nms_per_level=False,
        score_threshold=0.0,
        **kwargs,
    ):
        kwargs.setdefault("dtype", "float32")  # pixel coordinates must not be autocast to 16 bits
        super().__init__(**kwargs)
        # top-k of a data-dependent size and padded NMS: keep Keras' "auto" XLA choice off.
        self.supports_jit = False
        self.pre_nms_top_n = int(pre_nms_top_n)
        self.post_nms_top_n = int(post_nms_top_n)
        self.nms_iou = float(nms_iou)
        self.min_size = float(min_size)
        self.box_weights = tuple(float(w) for w in box_weights)
        self.nms_per_level = bool(nms_per_level)
        self.score_threshold = float(score_threshold)

    def call(self, objectness, deltas, anchors, image_shape):
        if not isinstance(objectness, (list, tuple)):
            objectness, deltas, anchors = [objectness], [deltas], [anchors]
        boxes_per_level, scores_per_level, level_ids = [], [], []
        for level, (logits, level_deltas, level_anchors) in enumerate(
            zip(objectness, deltas, anchors)
        ):
            logits = tf.cast(logits, tf.float32)
            # log-odds of "object": monotone in the softmax probability, cheaper to rank.
            log_odds = logits[..., 1] - logits[..., 0]
            k = tf.minimum(self.pre_nms_top_n, tf.shape(log_odds)[1])
            top, index = tf.math.top_k(log_odds, k=k, sorted=False)
            top_deltas = tf.gather(tf.cast(level_deltas, tf.float32), index, batch_dims=1)
            top_anchors = tf.gather(tf.cast(level_anchors, tf.float32), index)
            boxes = decode_boxes(top_deltas, top_anchors, weights=self.box_weights)
            boxes_per_level.append(clip_boxes(boxes, image_shape))
            scores_per_level.append(tf.sigmoid(top))
            level_ids.append(tf.fill(tf.shape(top), level))
        boxes = tf.concat(boxes_per_level, axis=1)
        scores = tf.concat(scores_per_level, axis=1)
        keep = valid_box_mask(boxes, self.min_size)
        if self.score_threshold > 0:
            keep = keep & (scores >= self.score_threshold)
        scores = tf.where(keep, scores, _SUPPRESSED)
        if self.nms_per_level:
            index, _ = batched_class_aware_non_max_suppression_padded(
                tf.stop_gradient(boxes),
                tf.stop_gradient(scores),
                tf.concat(level_ids, axis=1),
                self.post_nms_top_n,
                self.nms_iou,
                score_threshold=_SUPPRESSED / 2,
            )
        else:
            index, _ = batched_non_max_suppression_padded(
                tf.stop_gradient(boxes),
                tf.stop_gradient(scores),
                self.post_nms_top_n,
                self.nms_iou,
                score_threshold=_SUPPRESSED / 2,
            )
        valid = index >= 0
        safe = tf.maximum(index, 0)
        proposals = tf.gather(boxes, safe, batch_dims=1)
        proposals = tf.where(valid[..., None], proposals, tf.zeros_like(proposals))
        proposal_scores = tf.where(valid, tf.gather(scores, safe, batch_dims=1), 0.0)
        return proposals, proposal_scores, valid

    def compute_output_spec(self, objectness, deltas, anchors, image_shape):
        if isinstance(objectness, (list, tuple)):
            b = objectness[0].shape[0]
        else:
            b = objectness.shape[0]
        r = self.post_nms_top_n
        return (
            keras.KerasTensor((b, r, 4), dtype="float32"),
            keras.KerasTensor((b, r), dtype="float32"),
            keras.KerasTensor((b, r), dtype="bool"),
        )

    def get_config(self):
        config = super().get_config()
        config.update(
            pre_nms_top_n=self.pre_nms_top_n,
            post_nms_top_n=self.post_nms_top_n,
            nms_iou=self.nms_iou,
            min_size=self.min_size,
            box_weights=self.box_weights,
            nms_per_level=self.nms_per_level,
            score_threshold=self.score_threshold,
        )
        return config
