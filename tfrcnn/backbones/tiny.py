"""A small, fast CNN for tests and the CPU demo: one map at stride 8 with 128 channels.

Shapes: `B` images, `H x W` input pixels. Output: `[B, ceil(H/8), ceil(W/8), 128]`.

    conv3x3/2 32 -> conv3x3 32 -> conv3x3/2 64 -> conv3x3 64 -> conv3x3/2 128 -> conv3x3 128

each conv without bias, followed by BatchNormalization and ReLU; "torch" input normalisation.
Receptive field of one output cell: 43x43 pixels (3, 7, 11, 19, 27, 43 after each conv), so objects
up to about 40-80 px are what it sees well. About 0.24 GMAC for a 160x160 image.
"""

import keras
from keras.layers import BatchNormalization, Conv2D

from tfrcnn.backbones import common
from tfrcnn.layers.preprocessing import ImageNormalization

NAME = "tiny"
STRIDES = (8,)
CHANNELS = (128,)
NORMALIZATION = "torch"
RECEPTIVE_FIELD = 43
# (filters, stride) per conv.
CONVS = ((32, 2), (32, 1), (64, 2), (64, 1), (128, 2), (128, 1))


def build_tiny(weights=None, trainable=True, name_prefix=None):
    """The tiny CNN: stride 8, 128 channels, receptive field 43 px.

    Args:
        weights: None (random init) or a local weights file (e.g. from `model.save_weights`);
            "imagenet" raises ValueError (there are no ImageNet weights for it).
        trainable: False freezes every layer, BatchNorm included.
        name_prefix: optional prefix of the model name.

    Returns:
        `(model, (8,))`; `model` maps `[B, H, W, 3]` RGB in [0, 255] to
        `[B, ceil(H/8), ceil(W/8), 128]` (in a one-element list).

    Example:
        >>> model, strides = build_tiny()
        >>> [f.shape for f in model(np.zeros((2, 160, 160, 3), "float32"))]  # [(2, 20, 20, 128)]
    """
    path = common.resolve_weights(weights, NAME)
    inputs = common.image_input()
    x = ImageNormalization(NORMALIZATION, name="normalization")(inputs)
    for i, (filters, stride) in enumerate(CONVS, start=1):
        x = Conv2D(
            filters,
            3,
            strides=stride,
            padding="same",
            use_bias=False,
            kernel_initializer="he_normal",
            name=f"conv{i}",
        )(x)
        x = BatchNormalization(name=f"conv{i}_bn")(x)
        x = keras.layers.ReLU(name=f"conv{i}_relu")(x)
    model = common.BackboneModel(inputs, [x], name=common.model_name(NAME, name_prefix))
    common.finish_backbone(model, weights_path=path, backbone=NAME, trainable=trainable)
    return model, STRIDES
