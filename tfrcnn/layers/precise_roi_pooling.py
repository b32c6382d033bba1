"""PreciseROIPooling: PrRoI pooling (Jiang et al., 2018) as a Keras layer.

Shapes: ``B`` images, ``R`` ROIs an image, ``C`` channels, ``oh x ow`` output.
"""

import keras

from tfrcnn.layers._roi_common import BatchedROILayer
from tfrcnn.ops.roi import precise_roi_pool


@keras.saving.register_keras_serializable(package="tfrcnn")
class PreciseROIPooling(BatchedROILayer):
    """Each bin is the exact integral of the bilinearly interpolated feature divided by its area.

    No sampling count and no quantisation; differentiable with respect to the ROI coordinates.

    Args:
        output_size: ``(oh, ow)`` bins.
        spatial_scale: feature pixels per input pixel.

    Call:
        ``layer(features [B, H, W, C], rois [B, R, 4])`` -> ``[B * R, oh, ow, C]``.
        See :func:`tfrcnn.ops.precise_roi_pool`.

    Example:
        >>> PreciseROIPooling((7, 7), 1 / 16)(tf.zeros([1, 38, 50, 256]), tf.zeros([1, 8, 4])).shape
        TensorShape([8, 7, 7, 256])
    """

    def __init__(self, output_size=(7, 7), spatial_scale=1.0 / 16, **kwargs):
        super().__init__(output_size=output_size, **kwargs)
        self.spatial_scale = float(spatial_scale)

    def pool(self, features, boxes, box_indices):
        return precise_roi_pool(
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
