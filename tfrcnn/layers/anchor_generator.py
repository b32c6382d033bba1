"""AnchorGenerator: the reference boxes of one feature level.

Shapes: ``B`` images, ``h x w`` feature map, ``A = len(aspect_ratios) * len(scales)`` anchors a location.
"""

import keras
import tensorflow as tf

from tfrcnn.ops.anchors import anchor_shapes, generate_anchors, generate_anchors_from_image_size


@keras.saving.register_keras_serializable(package="tfrcnn")
class AnchorGenerator(keras.layers.Layer):
    """Anchors of one feature level, in input-image pixels ``[y1, x1, y2, x2]``.

    The anchor of location ``(i, j)`` is centred at ``((i + offset) * stride, (j + offset) * stride)``
    with height ``s * sqrt(r)`` and width ``s / sqrt(r)`` for every aspect ratio ``r = h / w`` and scale
    ``s``. Order: location row-major, then aspect ratio outer, scale inner (the order the RPN's
    ``2A`` / ``4A`` channels follow).

    Args:
        stride: the feature level's stride in input pixels (16 for VGG16 conv5_3).
        scales: anchor sizes in input pixels, e.g. ``(128, 256, 512)``.
        aspect_ratios: ``h / w`` ratios, e.g. ``(0.5, 1, 2)``.
        offset: centre offset within a cell (0.5 = the cell centre).
        torchvision: torchvision's anchors: base anchors rounded to whole pixels, the stride of
            each axis ``padded image size // grid size`` (the image is the second call argument)
            rather than ``stride``, centres at ``(i + offset) * stride`` with ``offset=0``.

    Call:
        ``anchors = layer(feature_map)``: feature_map ``[B, h, w, C]`` -> anchors ``[h * w * A, 4]``
        (shared by every image of the batch).

    Example:
        >>> gen = AnchorGenerator(stride=16, scales=(128, 256, 512))
        >>> gen(tf.zeros([1, 38, 50, 512])).shape
        TensorShape([17100, 4])
    """

    def __init__(
        self, stride, scales, aspect_ratios=(0.5, 1.0, 2.0), offset=0.5, torchvision=False, **kwargs
    ):
        kwargs.setdefault("dtype", "float32")  # pixel coordinates must not be autocast to 16 bits
        super().__init__(**kwargs)
        self.stride = float(stride)
        self.scales = tuple(float(s) for s in scales)
        self.aspect_ratios = tuple(float(r) for r in aspect_ratios)
        self.offset = float(offset)
        self.torchvision = bool(torchvision)

    @property
    def num_anchors(self):
        """``A``, the anchors a location."""
        return len(self.scales) * len(self.aspect_ratios)

    def anchor_shapes(self):
        """float32 ``[A, 2]`` (height, width) of the ``A`` anchors of a location, in channel order."""
        return anchor_shapes(self.scales, self.aspect_ratios)

    def call(self, feature_map, images=None):
        shape = tf.shape(feature_map)
        if self.torchvision:
            if images is None:
                raise ValueError(
                    "AnchorGenerator(torchvision=True) needs the padded images as "
                    "its second argument (the stride is image size // grid size)"
                )
            image_size = tf.shape(images)[1:3]
            return generate_anchors_from_image_size(
                (shape[1], shape[2]),
                image_size,
                self.scales,
                self.aspect_ratios,
                offset=self.offset,
                rounded=True,
            )
        return generate_anchors(
            (shape[1], shape[2]), self.stride, self.scales, self.aspect_ratios, offset=self.offset
        )

    def compute_output_shape(self, feature_map_shape, images_shape=None):
        h, w = feature_map_shape[1], feature_map_shape[2]
        n = None if h is None or w is None else h * w * self.num_anchors
        return (n, 4)

    def get_config(self):
        config = super().get_config()
        config.update(
            stride=self.stride,
            scales=self.scales,
            aspect_ratios=self.aspect_ratios,
            offset=self.offset,
            torchvision=self.torchvision,
        )
        return config
