"""VGG16 conv1_1 .. conv5_3 (Simonyan & Zisserman, 2015), the Faster R-CNN paper's large backbone.

Shapes: `B` images, `H x W` input pixels. Output: one map `[B, ceil(H/16), ceil(W/16), 512]`.

Built here rather than taken from keras.applications because Caffe pooling rounds up (ceil mode): a
600x800 image gives a 38x50 conv5_3 map, as in the paper, where keras' floor pooling gives 37x50.
The pools use `padding="same"` (2x2, stride 2), which is exactly Caffe's ceil mode. The layer
names and weight shapes are those of `keras.applications.VGG16` (`block1_conv1` ...
`block5_conv3`), so the keras.applications ImageNet `.h5` files load by name. There is no
`block5_pool`.
"""

import keras
from keras.layers import Conv2D

from tfrcnn.backbones import common
from tfrcnn.layers.preprocessing import ImageNormalization

NAME = "vgg16"
STRIDES = (16,)
CHANNELS = (512,)
NORMALIZATION = "caffe"
IMAGENET_FILES = (
    "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5",
    "vgg16_weights_tf_dim_ordering_tf_kernels.h5",
)
# (filters, convs) per block.
BLOCKS = ((64, 2), (128, 2), (256, 3), (512, 3), (512, 3))


def vgg16_features(x):
    """Applies conv1_1 .. conv5_3 (ReLU after each conv, ceil-mode 2x2 pools after blocks 1-4)."""
    for b, (filters, convs) in enumerate(BLOCKS, start=1):
        for c in range(1, convs + 1):
            x = Conv2D(filters, 3, padding="same", activation="relu", name=f"block{b}_conv{c}")(x)
        if b < len(BLOCKS):
            x = keras.layers.MaxPooling2D(2, strides=2, padding="same", name=f"block{b}_pool")(x)
    return x


def build_vgg16(weights=None, trainable=True, name_prefix=None):
    """VGG16 to conv5_3 (after ReLU): stride 16, 512 channels, Caffe normalisation.

    Args:
        weights: None (random init), "imagenet" (Keras cache only) or a local weights file path.
        trainable: False freezes every layer.
        name_prefix: optional prefix of the model name.

    Returns:
        `(model, (16,))`; `model` maps `[B, H, W, 3]` RGB in [0, 255] to `[conv5_3]`,
        `[B, ceil(H/16), ceil(W/16), 512]`.

    Example:
        >>> model, strides = build_vgg16()
        >>> [f.shape for f in model(np.zeros((1, 600, 800, 3), "float32"))]  # [(1, 38, 50, 512)]
    """
    path = common.resolve_weights(weights, NAME, IMAGENET_FILES)
    inputs = common.image_input()
    x = ImageNormalization(NORMALIZATION, name="normalization")(inputs)
    x = vgg16_features(x)
    model = common.BackboneModel(inputs, [x], name=common.model_name(NAME, name_prefix))
    common.finish_backbone(model, weights_path=path, backbone=NAME, trainable=trainable)
    return model, STRIDES
