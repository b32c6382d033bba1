"""torchvision's MobileNetV3-Large FPN backbone as plain Keras layers, computing what torchvision
computes (``fasterrcnn_mobilenet_v3_large_fpn`` and its ``_320`` variant).

Shapes: ``B`` images, ``H x W`` padded input, ``C`` FPN channels.

What differs from the keras.applications MobileNetV3 (:mod:`tfrcnn.backbones.mobilenet_v3`):

- symmetric zero padding ``k // 2`` of strided (depthwise) convolutions, as torch pads;
- batch norm epsilon ``1e-5`` (torchvision's detection backbone passes ``nn.BatchNorm2d`` /
  ``FrozenBatchNorm2d``), always in inference mode;
- squeeze-excite ``fc1 -> ReLU -> fc2 -> hardsigmoid`` with ``make_divisible(C / 4, 8)`` channels;
- the FPN reads ``features[13]`` (160 channels) and ``features[16]`` (960 channels), both at
  stride 32: its top-down step adds maps of the same size, and ``pool`` is
  ``max_pool2d(P, kernel_size=1, stride=2)`` of the last output.

Layers are named after torchvision's modules with ``.`` as ``_`` (``1_block_0_0``,
``fpn_inner_blocks_0_0``). ``trainable`` follows torchvision's ``trainable_backbone_layers`` (0..6):
the blocks from ``features[(0, 2, 4, 7, 13, 16)[6 - n]]`` on train.
"""

import keras
from keras import layers

from tfrcnn.backbones.torchvision_resnet import NearestResize, _name, torchvision_fpn
from tfrcnn.layers.preprocessing import ImageNormalization
from tfrcnn.weights.torchvision_spec import MOBILENET_V3_LARGE, _make_divisible

NAME = "torchvision_mobilenet_v3_large_fpn"
STRIDES = (32, 32, 64)
BN_EPSILON = 1e-5
# Whether each block of MOBILENET_V3_LARGE uses hard-swish (else ReLU); torchvision's table.
HARD_SWISH = (False,) * 6 + (True,) * 9
STAGE_INDICES = (0, 2, 4, 7, 13, 16)  # first block of each stage, and the last conv
FPN_FEATURES = (13, 16)


def _activation(x, hard_swish, name):
    return layers.Activation("hard_swish" if hard_swish else "relu", name=name)(x)


def _conv_bn(x, filters, kernel, stride, module, activation=None, depthwise=False):
    """torchvision's ``Conv2dNormActivation``: conv (no bias, symmetric padding), BN, activation."""
    pad = kernel // 2
    padding = "same" if stride == 1 else "valid"
    if stride > 1 and pad:
        x = layers.ZeroPadding2D(pad, name=_name(module + ".0") + "_pad")(x)
    if depthwise:
        x = layers.DepthwiseConv2D(
            kernel, stride, padding=padding, use_bias=False, name=_name(module + ".0")
        )(x)
    else:
        x = layers.Conv2D(
            filters, kernel, stride, padding=padding, use_bias=False, name=_name(module + ".0")
        )(x)
    x = layers.BatchNormalization(epsilon=BN_EPSILON, name=_name(module + ".1"))(x)
    if activation is not None:
        x = _activation(x, activation == "hard_swish", _name(module) + "_act")
    return x


def _squeeze_excite(x, channels, module):
    squeeze = _make_divisible(channels // 4)
    s = layers.GlobalAveragePooling2D(keepdims=True, name=_name(module) + "_pool")(x)
    s = layers.Conv2D(squeeze, 1, name=_name(module + ".fc1"))(s)
    s = layers.ReLU(name=_name(module) + "_relu")(s)
    s = layers.Conv2D(channels, 1, name=_name(module + ".fc2"))(s)
    s = layers.Activation("hard_sigmoid", name=_name(module) + "_scale")(s)
    return layers.Multiply(name=_name(module) + "_mul")([x, s])


def mobilenet_v3_large_features(x, prefix=""):
    """torchvision's ``mobilenet_v3_large().features`` (dilated=False); returns the output of
    every one of its 17 modules."""
    outputs = [_conv_bn(x, 16, 3, 2, f"{prefix}0", "hard_swish")]
    for i, (inp, k, exp, out, se, stride) in enumerate(MOBILENET_V3_LARGE, start=1):
        act = "hard_swish" if HARD_SWISH[i - 1] else "relu"
        p = f"{prefix}{i}.block."
        y = outputs[-1]
        j = 0
        if exp != inp:
            y = _conv_bn(y, exp, 1, 1, f"{p}{j}", act)
            j += 1
        y = _conv_bn(y, exp, k, stride, f"{p}{j}", act, depthwise=True)
        j += 1
        if se:
            y = _squeeze_excite(y, exp, f"{p}{j}")
            j += 1
        y = _conv_bn(y, out, 1, 1, f"{p}{j}")
        if stride == 1 and inp == out:
            y = layers.Add(name=_name(f"{prefix}{i}") + "_add")([outputs[-1], y])
        outputs.append(y)
    last = len(MOBILENET_V3_LARGE) + 1
    outputs.append(_conv_bn(outputs[-1], 960, 1, 1, f"{prefix}{last}", "hard_swish"))
    return outputs


def freeze_mobilenet(model, trainable_layers):
    """torchvision's ``trainable_backbone_layers`` for MobileNetV3 (0..6); batch norm always
    frozen. Layers named ``<block index>_...`` before the first trainable block are frozen."""
    if not 0 <= trainable_layers <= len(STAGE_INDICES):
        raise ValueError(
            f"trainable_backbone_layers must be in 0..{len(STAGE_INDICES)}, got {trainable_layers}"
        )
    first = (
        len(MOBILENET_V3_LARGE) + 2
        if trainable_layers == 0
        else STAGE_INDICES[len(STAGE_INDICES) - trainable_layers]
    )
    for layer in model.layers:
        if isinstance(layer, layers.BatchNormalization):
            layer.trainable = False
        elif layer.weights and layer.name.split("_")[0].isdigit():
            layer.trainable = int(layer.name.split("_")[0]) >= first


def build_torchvision_mobilenet_v3_large_fpn(
    weights=None, trainable=True, fpn_channels=256, name_prefix=None
):
    """torchvision's ``fasterrcnn_mobilenet_v3_large_fpn`` backbone.

    Args:
        weights: None (random), ``"imagenet"`` (torchvision's MobileNetV3-Large IMAGENET1K_V1,
            downloaded on demand) or the path of a torchvision ``mobilenet_v3_large`` ``.pth``.
        trainable: ``trainable_backbone_layers``: an int 0..6, True (3) or False (0).
        fpn_channels: channels of every pyramid level.
        name_prefix: optional prefix of the model name.

    Returns:
        ``(model, (32, 32, 64))``: ``model`` maps ``[B, H, W, 3]`` RGB in [0, 255] to
        ``["0", "1", "pool"]``, each ``[B, h, w, fpn_channels]``.
    """
    from tfrcnn.backbones.torchvision_resnet import _trainable_layers, load_torchvision_imagenet

    inputs = keras.Input((None, None, 3), name="image")
    x = ImageNormalization("torch", name="normalization")(inputs)
    features = mobilenet_v3_large_features(x)
    p_maps = torchvision_fpn([features[i] for i in FPN_FEATURES], fpn_channels)
    model = keras.Model(inputs, p_maps, name=f"{name_prefix}_{NAME}" if name_prefix else NAME)
    if weights is not None:
        load_torchvision_imagenet(model, weights, arch="mobilenet_v3_large", strip="features.")
    freeze_mobilenet(model, _trainable_layers(trainable))
    return model, STRIDES


__all__ = ["build_torchvision_mobilenet_v3_large_fpn", "NearestResize"]
