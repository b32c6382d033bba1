"""What the ROI layers share: batched ROIs ``[B, R, 4]`` to the ops' ``(boxes [K, 4], box_indices [K])``."""

import keras
import tensorflow as tf


def flatten_rois(rois):
    """``rois [B, R, 4]`` -> ``boxes [B * R, 4]`` and ``box_indices [B * R]`` (image of each ROI)."""
    rois = tf.convert_to_tensor(rois)
    shape = tf.shape(rois)
    batch, count = shape[0], shape[1]
    boxes = tf.reshape(rois, [-1, 4])
    box_indices = tf.reshape(
        tf.repeat(tf.range(batch, dtype=tf.int32)[:, None], count, axis=1), [-1]
    )
    return boxes, box_indices


class BatchedROILayer(keras.layers.Layer):
    """Base of the ROI layers: ``layer(features, rois)``, rois ``[B, R, 4]`` -> ``[B * R, oh, ow, C]``."""

    def __init__(self, output_size=(7, 7), **kwargs):
        # float32 under a mixed precision policy too: autocasting to 16 bits would round the ROI
        # pixel coordinates (the ops compute in float32 anyway; the head casts the output down).
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        if isinstance(output_size, int):
            output_size = (output_size, output_size)
        self.output_size = tuple(int(s) for s in output_size)

    def pool(self, features, boxes, box_indices):  # overridden
        raise TypeError(f"{type(self).__name__} must define pool()")

    def call(self, features, rois):
        boxes, box_indices = flatten_rois(rois)
        return self.pool(features, boxes, box_indices)

    def compute_output_shape(self, features_shape, rois_shape):
        if isinstance(features_shape, (list, tuple)) and isinstance(
            features_shape[0], (list, tuple)
        ):
            features_shape = features_shape[0]
        b, r = rois_shape[0], rois_shape[1]
        k = None if b is None or r is None else b * r
        return (k,) + self.output_size + (features_shape[-1],)

    def get_config(self):
        config = super().get_config()
        config.update(output_size=self.output_size)
        return config
