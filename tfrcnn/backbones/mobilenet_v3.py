"""MobileNetV3-Large (Howard et al., 2019) + FPN, for CPU / mobile / TFLite.

Shapes: `B` images, `H x W` input pixels. Outputs `[B, ceil(H/s), ceil(W/s), fpn_channels]` for
`s` in (16, 32, 64).

The network is `keras.applications.MobileNetV3Large(weights=None, include_top=False,
include_preprocessing=False, minimalistic=False, alpha=1.0)` built on our own input normalisation
("tf" mode, `[-1, 1]`, what its ImageNet weights expect), so its `.h5` ImageNet file loads by name.
The FPN takes two maps:
  - stride 16: `expanded_conv_11_add`, the output of the last stride-16 block (112 channels);
  - stride 32: the last conv (`conv_1` + BN + hard-swish, 960 channels);
and adds one max-pooled level (stride 64), like torchvision's `fasterrcnn_mobilenet_v3_large_fpn`.
Stride-2 steps round up (`ceil(n/2)`) for any input size (see `build_mobilenet_v3_body`).
(torchvision itself takes the output of the first stride-32 block instead of a stride-16 map, so its
two FPN inputs have the same resolution, pytorch/vision#5838; we use the stride-16 stage as
intended.)
"""

import keras

from tfrcnn.backbones import common
from tfrcnn.layers.fpn import FeaturePyramid
from tfrcnn.layers.preprocessing import ImageNormalization

NAME = "mobilenet_v3_fpn"
STRIDES = (16, 32, 64)
NORMALIZATION = "tf"
STRIDE16_LAYER = "expanded_conv_11_add"
IMAGENET_FILES = (
    "weights_mobilenet_v3_large_224_1.0_float_no_top_v2.h5",
    "weights_mobilenet_v3_large_224_1.0_float.h5",
)


def build_mobilenet_v3_fpn(weights=None, trainable=True, fpn_channels=256, name_prefix=None):
    """MobileNetV3-Large C(16), C(32) + FPN + a pooled level: strides (16, 32, 64).

    Args:
        weights: None, "imagenet" (Keras cache only) or a local weights file (the keras.applications
            MobileNetV3Large `.h5` file loads by name; the FPN keeps its random initialisation).
        trainable: False freezes every layer, BatchNorm and the FPN included.
        fpn_channels: channels of every pyramid level.
        name_prefix: optional prefix of the model name.

    Returns:
        `(model, (16, 32, 64))`; `model` maps `[B, H, W, 3]` RGB in [0, 255] to three maps
        `[B, ceil(H/s), ceil(W/s), fpn_channels]`, fine to coarse.

    Example:
        >>> model, strides = build_mobilenet_v3_fpn(fpn_channels=64)
        >>> [f.shape[1:3] for f in model(np.zeros((1, 64, 96, 3), "float32"))]
        [(4, 6), (2, 3), (1, 2)]
    """
    path = common.resolve_weights(weights, NAME, IMAGENET_FILES)
    body = build_mobilenet_v3_body()
    inputs = common.image_input()
    x = ImageNormalization(NORMALIZATION, name="normalization")(inputs)
    c_maps = body(x)
    p_maps = FeaturePyramid(fpn_channels, num_inputs=2, extra_pool_levels=1, name="fpn")(c_maps)
    model = common.BackboneModel(inputs, p_maps, name=common.model_name(NAME, name_prefix))
    common.finish_backbone(
        model,
        weights_path=path,
        backbone=NAME,
        trainable=trainable,
        by_name_model=body,
        required_layers=common.weighted_layer_names(body),
    )
    return model, STRIDES


def _same_padding_clone(layer):
    """Clones `layer`; stride-2 depthwise convs pad "same" at run time (see the body's doc).

    Under ``mixed_bfloat16`` the depthwise convolutions compute in float32: oneDNN's bfloat16
    depthwise backward is slow on CPUs (docs/performance.md).
    """
    config = layer.get_config()
    if isinstance(layer, keras.layers.ZeroPadding2D):
        return keras.layers.Identity(name=layer.name)
    if type(layer) is keras.layers.DepthwiseConv2D:
        if tuple(config["strides"]) != (1, 1):
            config["padding"] = "same"
        if keras.mixed_precision.global_policy().name == "mixed_bfloat16":
            config["dtype"] = "float32"
        return keras.layers.DepthwiseConv2D.from_config(config)
    return layer.__class__.from_config(config)


def build_mobilenet_v3_body():
    """keras.applications MobileNetV3-Large (no top, no preprocessing) with "same" stride-2 padding.

    keras.applications pads a stride-2 depthwise conv with a fixed `ZeroPadding2D` computed from the
    static input size; with an unknown size it assumes an even one, which makes odd sizes round down
    (65 -> 32). With TF "same" padding instead, which is what keras.applications computes for any
    *known* size (so ImageNet weights mean the same thing), every stride-2 step gives `ceil(n/2)`.
    Layer names are unchanged; the `*_pad` layers become `Identity`.

    Returns:
        keras.Model `[B, H, W, 3]` (already normalised to [-1, 1]) ->
        `[stride-16 map (112 channels), stride-32 map (960 channels)]`.
    """
    net = keras.applications.MobileNetV3Large(
        input_shape=(None, None, 3),
        alpha=1.0,
        minimalistic=False,
        include_top=False,
        weights=None,
        include_preprocessing=False,
    )
    net = keras.models.clone_model(net, clone_function=_same_padding_clone)
    return keras.Model(
        net.inputs[0],
        [net.get_layer(STRIDE16_LAYER).output, net.outputs[0]],
        name="mobilenet_v3_large",
    )
