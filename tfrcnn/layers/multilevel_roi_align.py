"""MultiLevelROIAlign: ROI Align over a feature pyramid, each ROI on its FPN level (Lin et al., 2017).

Shapes: ``B`` images, ``R`` ROIs an image, ``C`` channels, ``oh x ow`` output, ``L`` levels.
"""

import keras

from tfrcnn.layers._roi_common import BatchedROILayer
from tfrcnn.ops.roi import multilevel_roi_align


@keras.saving.register_keras_serializable(package="tfrcnn")
class MultiLevelROIAlign(BatchedROILayer):
    """ROI Align where an ROI of size ``w x h`` is pooled from level
    ``k = floor(k0 + log2(sqrt(w h) / canonical_scale))`` clamped to the pyramid (FPN eq. 1).

    Args:
        output_size: ``(oh, ow)``.
        sampling_ratio, aligned, method: as :class:`ROIAlign`.
        min_level: the level of the first feature map (stride ``2 ** min_level``).
        canonical_scale, canonical_level: ``224`` and ``k0 = 4``.

    Call:
        ``layer([P_min, ..., P_max], rois [B, R, 4])`` -> ``[B * R, oh, ow, C]``. Extra pyramid
        levels used only by the RPN (e.g. P6) should not be passed.

    Example:
        >>> layer = MultiLevelROIAlign((7, 7), min_level=2)
        >>> layer([p2, p3, p4, p5], rois).shape  # [B * R, 7, 7, 256]
    """

    def __init__(
        self,
        output_size=(7, 7),
        sampling_ratio=2,
        aligned=True,
        min_level=2,
        canonical_scale=224.0,
        canonical_level=4,
        method="auto",
        **kwargs,
    ):
        super().__init__(output_size=output_size, **kwargs)
        self.sampling_ratio = int(sampling_ratio)
        self.aligned = bool(aligned)
        self.min_level = int(min_level)
        self.canonical_scale = float(canonical_scale)
        self.canonical_level = int(canonical_level)
        self.method = str(method)

    def pool(self, features, boxes, box_indices):
        return multilevel_roi_align(
            list(features),
            boxes,
            box_indices,
            output_size=self.output_size,
            sampling_ratio=self.sampling_ratio,
            aligned=self.aligned,
            min_level=self.min_level,
            canonical_scale=self.canonical_scale,
            canonical_level=self.canonical_level,
            method=self.method,
        )

    def get_config(self):
        config = super().get_config()
        config.update(
            sampling_ratio=self.sampling_ratio,
            aligned=self.aligned,
            min_level=self.min_level,
            canonical_scale=self.canonical_scale,
            canonical_level=self.canonical_level,
            method=self.method,
        )
        return config
