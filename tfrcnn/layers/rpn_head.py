"""RPNHead: the Region Proposal Network of Ren et al. (2015), section 3.1.

Shapes: ``B`` images, ``h x w`` feature map, ``C`` channels, ``A`` anchors a location.
"""

import keras
import tensorflow as tf
from keras.layers import Conv2D


@keras.saving.register_keras_serializable(package="tfrcnn")
class RPNHead(keras.layers.Layer):
    """An ``n x n`` conv (n = 3) with ReLU, then two sibling 1x1 convs.

    - objectness: ``2A`` channels, the paper's two-class softmax: channel ``2a`` is the background
      logit and ``2a + 1`` the object logit of anchor ``a``;
    - box deltas: ``4A`` channels, ``(dy, dx, dh, dw)`` of anchor ``a`` at ``4a .. 4a + 3``.

    Anchor ``a`` follows the order of :class:`AnchorGenerator`. Weights start from a zero-mean
    Gaussian with standard deviation 0.01 (the paper), biases 0. The two outputs are float32 even
    under a mixed precision policy.

    Args:
        num_anchors: ``A``.
        channels: width of the ``n x n`` conv (512 for VGG16, 256 for ZF / FPN).
        kernel_size: ``n``.
        num_convs: ``n x n`` convolutions before the outputs (1; torchvision's v2 RPN: 2).

    Call:
        ``objectness, deltas = head(features)``: ``[B, h * w * A, 2]`` and ``[B, h * w * A, 4]``,
        location-major then anchor, matching the anchors. ``head(features, return_maps=True)``
        returns the raw maps ``[B, h, w, 2A]`` and ``[B, h, w, 4A]``.

    Example:
        >>> head = RPNHead(num_anchors=9, channels=512)
        >>> s, d = head(tf.zeros([1, 38, 50, 512]), return_maps=True)
        >>> s.shape, d.shape
        (TensorShape([1, 38, 50, 18]), TensorShape([1, 38, 50, 36]))
    """

    def __init__(self, num_anchors, channels=512, kernel_size=3, num_convs=1, **kwargs):
        super().__init__(**kwargs)
        self.num_anchors = int(num_anchors)
        self.channels = int(channels)
        self.kernel_size = int(kernel_size)
        self.num_convs = int(num_convs)
        init = keras.initializers.RandomNormal(stddev=0.01)
        self.conv = Conv2D(
            self.channels,
            self.kernel_size,
            padding="same",
            activation="relu",
            kernel_initializer=init,
            name="rpn_conv",
        )
        # torchvision's v2 RPN: further n x n convolutions with ReLU before the two outputs
        self.extra_convs = [
            Conv2D(
                self.channels,
                self.kernel_size,
                padding="same",
                activation="relu",
                kernel_initializer=init,
                name=f"rpn_conv_{i + 2}",
            )
            for i in range(self.num_convs - 1)
        ]
        self.objectness = Conv2D(
            2 * self.num_anchors, 1, kernel_initializer=init, dtype="float32", name="rpn_objectness"
        )
        self.box_deltas = Conv2D(
            4 * self.num_anchors, 1, kernel_initializer=init, dtype="float32", name="rpn_box_deltas"
        )

    def build(self, input_shape):
        self.conv.build(input_shape)
        shape = tuple(input_shape[:-1]) + (self.channels,)
        for conv in self.extra_convs:
            conv.build(shape)
        self.objectness.build(shape)
        self.box_deltas.build(shape)

    def call(self, features, return_maps=False):
        x = self.conv(features)
        for conv in self.extra_convs:
            x = conv(x)
        scores = self.objectness(x)
        deltas = self.box_deltas(x)
        if return_maps:
            return scores, deltas
        batch = tf.shape(features)[0]
        return (tf.reshape(scores, [batch, -1, 2]), tf.reshape(deltas, [batch, -1, 4]))

    def compute_output_spec(self, features, return_maps=False):
        b, h, w = features.shape[0], features.shape[1], features.shape[2]
        if return_maps:
            return (
                keras.KerasTensor((b, h, w, 2 * self.num_anchors), dtype="float32"),
                keras.KerasTensor((b, h, w, 4 * self.num_anchors), dtype="float32"),
            )
        n = None if h is None or w is None else h * w * self.num_anchors
        return (
            keras.KerasTensor((b, n, 2), dtype="float32"),
            keras.KerasTensor((b, n, 4), dtype="float32"),
        )

    def get_config(self):
        config = super().get_config()
        config.update(
            num_anchors=self.num_anchors,
            channels=self.channels,
            kernel_size=self.kernel_size,
            num_convs=self.num_convs,
        )
        return config
