"""ROIPooling: the Fast R-CNN RoI max pooling (Girshick, 2015) as a Keras layer.

Shapes: ``B`` images, ``R`` ROIs an image, ``C`` channels, ``oh x ow`` output.
"""

import keras

from tfrcnn.layers._roi_common import BatchedROILayer
from tfrcnn.ops.roi import roi_pool


@keras.saving.register_keras_serializable(package="tfrcnn")
class ROIPooling(BatchedROILayer):
    """RoIPool: box corners times ``spatial_scale`` rounded to the feature grid, max per bin.

    Args:
        output_size: ``(oh, ow)`` bins (7 x 7 in the paper).
        spatial_scale: feature pixels per input pixel (1/16 for a stride-16 backbone).

    Call:
        ``layer(features [B, H, W, C], rois [B, R, 4])`` -> ``[B * R, oh, ow, C]``; ROIs are
        ``[y1, x1, y2, x2]`` in input pixels. See :func:`tfrcnn.ops.roi_pool`.

    Example:
        >>> ROIPooling((7, 7), 1 / 16)(tf.zeros([2, 38, 50, 512]), tf.zeros([2, 128, 4])).shape
        TensorShape([256, 7, 7, 512])
    """

    def __init__(self, output_size=(7, 7), spatial_scale=1.0 / 16, **kwargs):
        super().__init__(output_size=output_size, **kwargs)
        self.spatial_scale = float(spatial_scale)

    def pool(self, features, boxes, box_indices):
        return roi_pool(
            features,
            boxes,
            box_indices,
            output_size=self.output_size,
            spatial_scale=self.spatial_scale,
        )

    def get_config(self):
        config = super().get_config()
        config.update(spatial_scale=self.spatial_scale)
        return config
