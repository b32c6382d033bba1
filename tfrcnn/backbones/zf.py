"""The ZF net (Zeiler & Fergus, 2014) as in Faster R-CNN: conv1 .. conv5, stride 16, 256 channels.

Shapes: `B` images, `H x W` input pixels, `C` channels. Output: one map
`[B, ceil(H/16), ceil(W/16), 256]`.

Layers follow py-faster-rcnn's ZF definition (names `conv1` .. `conv5`, `norm1`, `norm2`):

    conv1 96 7x7/2 (pad 3) ReLU -> norm1 -> pool1 3x3/2 (pad 1)
    conv2 256 5x5/2 (pad 2) ReLU -> norm2 -> pool2 3x3/2 (pad 1)
    conv3 384 3x3 ReLU -> conv4 384 3x3 ReLU -> conv5 256 3x3 ReLU

with `norm` a Caffe "within channel" local response normalisation (local_size 3, alpha 5e-5,
beta 0.75). Padding is explicit and symmetric, as in Caffe, and every stride-2 step gives
`ceil(n/2)` cells, so a 600x800 image gives a 38x50 map (Caffe's own ceil-mode pools with pad 1
would give one more row and column, 39x51; one size rule `ceil(H/16)` for all our stride-16
backbones is what the anchor grid expects).
"""

import keras
from keras import ops
from keras.layers import Conv2D

from tfrcnn.backbones import common
from tfrcnn.layers.preprocessing import ImageNormalization

NAME = "zf"
STRIDES = (16,)
CHANNELS = (256,)
NORMALIZATION = "caffe"

WITHIN_CHANNEL = "within_channel"
ACROSS_CHANNELS = "across_channels"


@keras.saving.register_keras_serializable(package="tfrcnn")
class LocalResponseNormalization(keras.layers.Layer):
    """Caffe's LRN layer: `x / (bias + alpha * mean(x^2 over a local window)) ** beta`.

    `region="within_channel"` averages over a `local_size x local_size` spatial window of the same
    channel (zero padded, always divided by `local_size**2`, as Caffe does);
    `region="across_channels"` averages over `local_size` neighbouring channels at the same
    position (AlexNet's LRN; `tf.nn.local_response_normalization` with `alpha / local_size`).

    Args:
        local_size: odd window size.
        alpha: scale of the mean of squares.
        beta: exponent.
        bias: additive constant (Caffe's `k`).
        region: `"within_channel"` or `"across_channels"`.

    Shapes:
        input: `[B, H, W, C]`; output: same shape.

    Example:
        >>> lrn = LocalResponseNormalization(local_size=3, alpha=5e-5, beta=0.75)
        >>> y = lrn(np.ones((1, 5, 5, 8), "float32"))  # y.shape == (1, 5, 5, 8)
    """

    def __init__(
        self, local_size=3, alpha=5e-5, beta=0.75, bias=1.0, region=WITHIN_CHANNEL, **kwargs
    ):
        super().__init__(**kwargs)
        if int(local_size) < 1 or int(local_size) % 2 != 1:
            raise ValueError(
                "LocalResponseNormalization: local_size must be a positive odd number, "
                f"got {local_size}."
            )
        if region not in (WITHIN_CHANNEL, ACROSS_CHANNELS):
            raise ValueError(
                f"LocalResponseNormalization: region must be {WITHIN_CHANNEL!r} or "
                f"{ACROSS_CHANNELS!r}, got {region!r}."
            )
        self.local_size = int(local_size)
        self.alpha = float(alpha)
        self.beta = float(beta)
        self.bias = float(bias)
        self.region = region

    def call(self, x):
        squares = ops.square(x)
        half = (self.local_size - 1) // 2
        if self.region == WITHIN_CHANNEL:
            padded = ops.pad(squares, [[0, 0], [half, half], [half, half], [0, 0]])
            mean = ops.average_pool(padded, self.local_size, strides=1, padding="valid")
        else:
            channels = x.shape[-1]
            padded = ops.pad(squares, [[0, 0], [0, 0], [0, 0], [half, half]])
            total = padded[..., 0:channels]
            for offset in range(1, self.local_size):
                total = total + padded[..., offset : offset + channels]
            mean = total / float(self.local_size)
        return x / ops.power(self.bias + self.alpha * mean, self.beta)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "local_size": self.local_size,
                "alpha": self.alpha,
                "beta": self.beta,
                "bias": self.bias,
                "region": self.region,
            }
        )
        return config


def _conv(x, filters, kernel, stride, name):
    pad = (kernel - 1) // 2
    if stride > 1:
        x = keras.layers.ZeroPadding2D(pad, name=f"{name}_pad")(x)
        return Conv2D(filters, kernel, strides=stride, activation="relu", name=name)(x)
    return Conv2D(filters, kernel, padding="same", activation="relu", name=name)(x)


def _pool(x, name):
    # Inputs are >= 0 (ReLU then LRN), so zero padding is the same as Caffe's ignored padding.
    x = keras.layers.ZeroPadding2D(1, name=f"{name}_pad")(x)
    return keras.layers.MaxPooling2D(3, strides=2, padding="valid", name=name)(x)


def build_zf(weights=None, trainable=True, name_prefix=None):
    """The ZF net to conv5 (after ReLU): stride 16, 256 channels, Caffe normalisation.

    Args:
        weights: None (random init) or a local weights file (there is no keras.applications ZF, so
            "imagenet" raises ValueError). Legacy `.h5` files load by the names `conv1` .. `conv5`.
        trainable: False freezes every layer.
        name_prefix: optional prefix of the model name.

    Returns:
        `(model, (16,))`; `model` maps `[B, H, W, 3]` RGB in [0, 255] to `[conv5]`,
        `[B, ceil(H/16), ceil(W/16), 256]`.

    Example:
        >>> model, strides = build_zf()
        >>> [f.shape for f in model(np.zeros((1, 600, 800, 3), "float32"))]  # [(1, 38, 50, 256)]
    """
    path = common.resolve_weights(weights, NAME)
    inputs = common.image_input()
    x = ImageNormalization(NORMALIZATION, name="normalization")(inputs)
    x = _conv(x, 96, 7, 2, "conv1")
    x = LocalResponseNormalization(3, 5e-5, 0.75, name="norm1")(x)
    x = _pool(x, "pool1")
    x = _conv(x, 256, 5, 2, "conv2")
    x = LocalResponseNormalization(3, 5e-5, 0.75, name="norm2")(x)
    x = _pool(x, "pool2")
    x = _conv(x, 384, 3, 1, "conv3")
    x = _conv(x, 384, 3, 1, "conv4")
    x = _conv(x, 256, 3, 1, "conv5")
    model = common.BackboneModel(inputs, [x], name=common.model_name(NAME, name_prefix))
    common.finish_backbone(model, weights_path=path, backbone=NAME, trainable=trainable)
    return model, STRIDES
