"""A small CNN with a feature pyramid, for real data on a CPU (the ``small_fpn`` preset).

Shapes: `B` images, `H x W` input pixels. Output: P3, P4, P5 (from the pyramid, `fpn_channels`
each) and P6 (max-pool of P5): `[B, ceil(H/s), ceil(W/s), fpn_channels]` for s = 8, 16, 32, 64.

    stem  conv3x3/2 32 -> conv3x3 32                      stride 2
    C2    conv3x3/2 64 -> conv3x3 64                      stride 4
    C3    conv3x3/2 128 -> conv3x3 128                    stride 8
    C4    conv3x3/2 192 -> conv3x3 192 -> conv3x3 192     stride 16
    C5    conv3x3/2 256 -> conv3x3 256                    stride 32

each conv without bias, followed by BatchNormalization and ReLU; "torch" input normalisation;
FPN (lateral 1x1, top-down nearest upsampling, 3x3 output convs) on C3-C5. Receptive field of a
P5 cell is over 500 px, so objects from about 16 px (P3) to the whole image are covered.
About 1.2 GMAC for a 480x640 image: it trains from scratch on a CPU in minutes.
"""

import keras
from keras.layers import BatchNormalization, Conv2D

from tfrcnn.backbones import common
from tfrcnn.layers.fpn import FeaturePyramid
from tfrcnn.layers.preprocessing import ImageNormalization

NAME = "small_fpn"
STRIDES = (8, 16, 32, 64)
NORMALIZATION = "torch"
# stages: (filters, number of convs); each stage starts with a stride-2 conv.
STAGES = ((32, 2), (64, 2), (128, 2), (192, 3), (256, 2))


def build_small_fpn(weights=None, trainable=True, fpn_channels=128, name_prefix=None):
    """The small pyramid CNN: P3-P6 at strides 8-64 with ``fpn_channels`` channels.

    Args:
        weights: None (random init) or a local weights file (from ``model.save_weights``).
        trainable: False freezes every layer, BatchNorm included.
        fpn_channels: channels of every pyramid level.
        name_prefix: optional prefix of the model name.

    Returns:
        ``(model, (8, 16, 32, 64))``.

    Example:
        >>> model, strides = build_small_fpn()
        >>> [f.shape for f in model(np.zeros((1, 96, 128, 3), "float32"))]
        [(1, 12, 16, 128), (1, 6, 8, 128), (1, 3, 4, 128), (1, 2, 2, 128)]
    """
    path = common.resolve_weights(weights, NAME)
    inputs = common.image_input()
    x = ImageNormalization(NORMALIZATION, name="normalization")(inputs)
    features = []
    for s, (filters, count) in enumerate(STAGES, start=1):
        for i in range(count):
            x = Conv2D(
                filters,
                3,
                strides=2 if i == 0 else 1,
                padding="same",
                use_bias=False,
                kernel_initializer="he_normal",
                name=f"stage{s}_conv{i + 1}",
            )(x)
            x = BatchNormalization(name=f"stage{s}_conv{i + 1}_bn")(x)
            x = keras.layers.ReLU(name=f"stage{s}_conv{i + 1}_relu")(x)
        features.append(x)
    pyramid = FeaturePyramid(int(fpn_channels), num_inputs=3, extra_pool_levels=1, name="fpn")
    outputs = pyramid(features[2:])
    model = common.BackboneModel(inputs, list(outputs), name=common.model_name(NAME, name_prefix))
    common.finish_backbone(model, weights_path=path, backbone=NAME, trainable=trainable)
    return model, STRIDES
