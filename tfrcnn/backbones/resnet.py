"""ResNet50 (He et al., 2016) backbones: C4 (Detectron "C4"), the conv5 box head, and FPN.

Shapes: `B` images, `H x W` input pixels, `K` ROIs. Every stride-2 step gives `ceil(n/2)` cells, so
level `s` has `ceil(H/s) x ceil(W/s)` cells for any input size.

The network is written out here with exactly the layer names, layer order and weight shapes of
`keras.applications.ResNet50` (v1: stride on the first 1x1 conv of a stage, convs with biases,
BatchNorm epsilon 1.001e-5, Caffe normalisation), so the keras.applications ImageNet `.h5` file
loads by name into the backbones *and* into the conv5 head, and building C4 does not build conv5
layers that would sit unused in memory. `tests/backbones` checks the names, shapes and outputs
against keras.applications.

  - "resnet50_c4": conv1 .. conv4_block6_out, stride 16, 1024 channels.
  - `build_resnet50_c5_head`: conv5_block1 (stride 2) .. conv5_block3 + global average pool,
    `[K, 14, 14, 1024] -> [K, 2048]`: the Detectron C4 box head, a separate model (own layers).
  - "resnet50_fpn": C2..C5 (conv2_block3_out, conv3_block4_out, conv4_block6_out, conv5_block3_out)
    + `FeaturePyramid` -> P2..P6 with `fpn_channels` each, strides (4, 8, 16, 32, 64).
"""

import keras
from keras.layers import BatchNormalization, Conv2D

from tfrcnn.backbones import common
from tfrcnn.layers.fpn import FeaturePyramid
from tfrcnn.layers.preprocessing import ImageNormalization

NORMALIZATION = "caffe"
BN_EPSILON = 1.001e-5
IMAGENET_FILES = (
    "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5",
    "resnet50_weights_tf_dim_ordering_tf_kernels.h5",
)
# (stage name, bottleneck filters, blocks, stride of the first block).
STAGES = (("conv2", 64, 3, 1), ("conv3", 128, 4, 2), ("conv4", 256, 6, 2), ("conv5", 512, 3, 2))

C4_NAME = "resnet50_c4"
C4_STRIDES = (16,)
C4_CHANNELS = (1024,)
FPN_NAME = "resnet50_fpn"
FPN_STRIDES = (4, 8, 16, 32, 64)


def _bottleneck(x, filters, stride, conv_shortcut, name):
    """A v1 bottleneck block, named as keras.applications names it (`{name}_1_conv` ...)."""
    if conv_shortcut:
        shortcut = Conv2D(4 * filters, 1, strides=stride, name=f"{name}_0_conv")(x)
        shortcut = BatchNormalization(epsilon=BN_EPSILON, name=f"{name}_0_bn")(shortcut)
    else:
        shortcut = x
    y = Conv2D(filters, 1, strides=stride, name=f"{name}_1_conv")(x)
    y = BatchNormalization(epsilon=BN_EPSILON, name=f"{name}_1_bn")(y)
    y = keras.layers.Activation("relu", name=f"{name}_1_relu")(y)
    y = Conv2D(filters, 3, padding="same", name=f"{name}_2_conv")(y)
    y = BatchNormalization(epsilon=BN_EPSILON, name=f"{name}_2_bn")(y)
    y = keras.layers.Activation("relu", name=f"{name}_2_relu")(y)
    y = Conv2D(4 * filters, 1, name=f"{name}_3_conv")(y)
    y = BatchNormalization(epsilon=BN_EPSILON, name=f"{name}_3_bn")(y)
    y = keras.layers.Add(name=f"{name}_add")([shortcut, y])
    return keras.layers.Activation("relu", name=f"{name}_out")(y)


def _stage(x, stage):
    name, filters, blocks, stride = stage
    x = _bottleneck(x, filters, stride, True, f"{name}_block1")
    for i in range(2, blocks + 1):
        x = _bottleneck(x, filters, 1, False, f"{name}_block{i}")
    return x


def _stem(x):
    x = keras.layers.ZeroPadding2D(((3, 3), (3, 3)), name="conv1_pad")(x)
    x = Conv2D(64, 7, strides=2, name="conv1_conv")(x)
    x = BatchNormalization(epsilon=BN_EPSILON, name="conv1_bn")(x)
    x = keras.layers.Activation("relu", name="conv1_relu")(x)
    x = keras.layers.ZeroPadding2D(((1, 1), (1, 1)), name="pool1_pad")(x)
    return keras.layers.MaxPooling2D(3, strides=2, name="pool1_pool")(x)


def resnet50_stages(x, num_stages=4):
    """Applies the stem and the first `num_stages` stages (1..4); returns [C2, ..., C_(n+1)]."""
    x = _stem(x)
    outputs = []
    for stage in STAGES[:num_stages]:
        x = _stage(x, stage)
        outputs.append(x)
    return outputs


def build_resnet50_c4(weights=None, trainable=True, name_prefix=None):
    """ResNet50 conv1 .. conv4_block6_out: stride 16, 1024 channels, Caffe normalisation.

    Args:
        weights: None (random init), "imagenet" (Keras cache only) or a local weights file (the
            keras.applications ResNet50 `.h5` file loads by name; conv5 entries are ignored).
        trainable: False freezes every layer, BatchNorm included.
        name_prefix: optional prefix of the model name.

    Returns:
        `(model, (16,))`; `model` maps `[B, H, W, 3]` RGB in [0, 255] to `[C4]`,
        `[B, ceil(H/16), ceil(W/16), 1024]`.

    Example:
        >>> model, strides = build_resnet50_c4()
        >>> [f.shape for f in model(np.zeros((1, 64, 96, 3), "float32"))]  # [(1, 4, 6, 1024)]
    """
    path = common.resolve_weights(weights, C4_NAME, IMAGENET_FILES)
    inputs = common.image_input()
    x = ImageNormalization(NORMALIZATION, name="normalization")(inputs)
    c4 = resnet50_stages(x, num_stages=3)[-1]
    model = common.BackboneModel(inputs, [c4], name=common.model_name(C4_NAME, name_prefix))
    common.finish_backbone(model, weights_path=path, backbone=C4_NAME, trainable=trainable)
    return model, C4_STRIDES


def build_resnet50_c5_head(weights=None, trainable=True, name="resnet50_c5_head"):
    """The conv5 stage of ResNet50 + global average pooling: the Detectron C4 box head.

    conv5_block1 has stride 2 (14x14 ROI features -> 7x7), then conv5_block2, conv5_block3 and a
    global average pool. Its layers are its own (it shares nothing with a "resnet50_c4"
    backbone); the keras.applications ResNet50 `.h5` file loads into it by name, as it does into
    the backbone.

    Args:
        weights: None (random init), "imagenet" (Keras cache only) or a local weights file.
        trainable: False freezes every layer, BatchNorm included.
        name: the model name.

    Returns:
        keras.Model mapping ROI features `[K, S, S, 1024]` (S = 14 in the C4 preset; any size works)
        to `[K, 2048]`.

    Example:
        >>> head = build_resnet50_c5_head()
        >>> head(np.zeros((3, 14, 14, 1024), "float32")).shape  # (3, 2048)
    """
    path = common.resolve_weights(weights, name, IMAGENET_FILES)
    inputs = keras.Input(shape=(None, None, C4_CHANNELS[0]), name="roi_features")
    x = _stage(inputs, STAGES[3])
    x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
    model = keras.Model(inputs, x, name=name)
    common.finish_backbone(model, weights_path=path, backbone=name, trainable=trainable)
    return model


def build_resnet50_fpn(weights=None, trainable=True, fpn_channels=256, name_prefix=None):
    """ResNet50 C2..C5 + FPN: P2..P6, `fpn_channels` each, strides (4, 8, 16, 32, 64).

    Args:
        weights: None, "imagenet" (Keras cache only) or a local weights file; it fills the ResNet
            layers (the FPN keeps its random initialisation when the file is an ImageNet `.h5`).
        trainable: False freezes every layer, the FPN included.
        fpn_channels: channels of every pyramid level.
        name_prefix: optional prefix of the model name.

    Returns:
        `(model, (4, 8, 16, 32, 64))`; `model` maps `[B, H, W, 3]` RGB in [0, 255] to
        `[P2, P3, P4, P5, P6]`, `P_s` of shape `[B, ceil(H/s), ceil(W/s), fpn_channels]`.

    Example:
        >>> model, strides = build_resnet50_fpn(fpn_channels=64)
        >>> [f.shape[1:3] for f in model(np.zeros((1, 64, 96, 3), "float32"))]
        [(16, 24), (8, 12), (4, 6), (2, 3), (1, 2)]
    """
    path = common.resolve_weights(weights, FPN_NAME, IMAGENET_FILES)
    inputs = common.image_input()
    x = ImageNormalization(NORMALIZATION, name="normalization")(inputs)
    c_maps = resnet50_stages(x, num_stages=4)
    p_maps = FeaturePyramid(fpn_channels, num_inputs=4, extra_pool_levels=1, name="fpn")(c_maps)
    model = common.BackboneModel(inputs, p_maps, name=common.model_name(FPN_NAME, name_prefix))
    # An ImageNet .h5 file must provide every ResNet layer; the FPN keeps its initialisation.
    common.finish_backbone(
        model,
        weights_path=path,
        backbone=FPN_NAME,
        trainable=trainable,
        required_layers=common.weighted_layer_names(model, exclude=(FeaturePyramid,)),
    )
    # the stride-4 and stride-8 activations (stem, conv2, conv3) are computed again in the
    # backward pass
    model.recompute_until("conv2_block3_out", "conv3_block4_out")
    return model, FPN_STRIDES
