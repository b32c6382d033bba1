"""ROIAlign: bilinear RoI feature extraction (He et al., 2017) as a Keras layer.

Shapes: ``B`` images, ``R`` ROIs an image, ``C`` channels, ``oh x ow`` output.
"""

import keras

from tfrcnn.layers._roi_common import BatchedROILayer
from tfrcnn.ops.roi import roi_align


@keras.saving.register_keras_serializable(package="tfrcnn")
class ROIAlign(BatchedROILayer):
    """RoIAlign on ``tf.image.crop_and_resize``, or on gathers (TFLite builtin operators).

    Args:
        output_size: ``(oh, ow)`` bins.
        spatial_scale: feature pixels per input pixel.
        sampling_ratio: bilinear samples a bin side (averaged), a positive int.
        aligned: the half-pixel convention of Detectron2 / torchvision ``aligned=True``.
        method: ``"auto"`` (default), ``"crop_and_resize"`` or ``"gather"`` (TFLite builtin ops
            only); see :func:`tfrcnn.ops.roi_align`.

    Call:
        ``layer(features [B, H, W, C], rois [B, R, 4])`` -> ``[B * R, oh, ow, C]``; differentiable
        with respect to the features and the ROI coordinates. See :func:`tfrcnn.ops.roi_align`.

    Example:
        >>> ROIAlign((7, 7), 1 / 16)(tf.zeros([1, 38, 50, 256]), tf.zeros([1, 300, 4])).shape
        TensorShape([300, 7, 7, 256])
    """

    def __init__(
        self,
        output_size=(7, 7),
        spatial_scale=1.0 / 16,
        sampling_ratio=2,
        aligned=True,
        method="auto",
        **kwargs,
    ):
        super().__init__(output_size=output_size, **kwargs)
        self.spatial_scale = float(spatial_scale)
        self.sampling_ratio = int(sampling_ratio)
        self.aligned = bool(aligned)
        self.method = str(method)

    def pool(self, features, boxes, box_indices):
        return roi_align(
            features,
            boxes,
            box_indices,
            output_size=self.output_size,
            spatial_scale=self.spatial_scale,
            sampling_ratio=self.sampling_ratio,
            aligned=self.aligned,
            method=self.method,
        )

    def get_config(self):
        config = super().get_config()
        config.update(
            spatial_scale=self.spatial_scale,
            sampling_ratio=self.sampling_ratio,
            aligned=self.aligned,
            method=self.method,
        )
        return config
