"""Backbones: `build_backbone(name, ...) -> (keras.Model, strides)`.

Shapes: `B` images, `H x W` input pixels (any size, odd included). Every backbone model takes
float32 RGB pixels in [0, 255], `[B, H, W, 3]`, normalises them itself (its first layer is an
`ImageNormalization`), and returns a LIST of feature maps ordered fine to coarse (a one-element list
for single-map backbones); level `s` has `ceil(H/s) x ceil(W/s)` cells.

| name               | strides              | channels                  | normalisation |
|--------------------|----------------------|---------------------------|---------------|
| "vgg16"            | (16,)                | (512,)                    | caffe         |
| "zf"               | (16,)                | (256,)                    | caffe         |
| "resnet50_c4"      | (16,)                | (1024,)                   | caffe         |
| "resnet50_fpn"     | (4, 8, 16, 32, 64)   | fpn_channels at each level| caffe         |
| "mobilenet_v3_fpn" | (16, 32, 64)         | fpn_channels at each level| tf            |
| "tiny"             | (8,)                 | (128,)                    | torch         |

Nothing downloads: `weights=None` is random initialisation; a path loads a local file; "imagenet"
works only when the Keras cache already holds the keras.applications file (see `common`).

Example:
    >>> model, strides = build_backbone("tiny")
    >>> features = model(np.zeros((1, 64, 96, 3), "float32"))  # [(1, 8, 12, 128)], strides == (8,)
"""

from tfrcnn.backbones import common
from tfrcnn.backbones.mobilenet_v3 import build_mobilenet_v3_fpn
from tfrcnn.backbones.resnet import build_resnet50_c4, build_resnet50_c5_head, build_resnet50_fpn
from tfrcnn.backbones.small_fpn import build_small_fpn
from tfrcnn.backbones.tiny import build_tiny
from tfrcnn.backbones.torchvision_mobilenet import build_torchvision_mobilenet_v3_large_fpn
from tfrcnn.backbones.torchvision_resnet import (
    build_torchvision_resnet50_fpn,
    build_torchvision_resnet50_fpn_v2,
)
from tfrcnn.backbones.vgg16 import build_vgg16
from tfrcnn.backbones.zf import LocalResponseNormalization, build_zf

_SINGLE_MAP = {
    "vgg16": build_vgg16,
    "zf": build_zf,
    "resnet50_c4": build_resnet50_c4,
    "tiny": build_tiny,
}
_PYRAMID = {
    "resnet50_fpn": build_resnet50_fpn,
    "torchvision_resnet50_fpn": build_torchvision_resnet50_fpn,
    "torchvision_resnet50_fpn_v2": build_torchvision_resnet50_fpn_v2,
    "torchvision_mobilenet_v3_large_fpn": build_torchvision_mobilenet_v3_large_fpn,
    "mobilenet_v3_fpn": build_mobilenet_v3_fpn,
    "small_fpn": build_small_fpn,
}

BACKBONE_NAMES = (
    "vgg16",
    "zf",
    "resnet50_c4",
    "resnet50_fpn",
    "mobilenet_v3_fpn",
    "tiny",
    "small_fpn",
    "torchvision_resnet50_fpn",
    "torchvision_resnet50_fpn_v2",
    "torchvision_mobilenet_v3_large_fpn",
)

BACKBONE_STRIDES = {
    "vgg16": (16,),
    "zf": (16,),
    "resnet50_c4": (16,),
    "resnet50_fpn": (4, 8, 16, 32, 64),
    "mobilenet_v3_fpn": (16, 32, 64),
    "tiny": (8,),
    "small_fpn": (8, 16, 32, 64),
    "torchvision_resnet50_fpn": (4, 8, 16, 32, 64),
    "torchvision_resnet50_fpn_v2": (4, 8, 16, 32, 64),
    "torchvision_mobilenet_v3_large_fpn": (32, 32, 64),
}


def backbone_channels(name, fpn_channels=256):
    """The channels of each output map of backbone `name`, fine to coarse (no model is built)."""
    fixed = {"vgg16": (512,), "zf": (256,), "resnet50_c4": (1024,), "tiny": (128,)}
    if name in fixed:
        return fixed[name]
    if name in _PYRAMID:
        return (int(fpn_channels),) * len(BACKBONE_STRIDES[name])
    raise ValueError(f"Unknown backbone {name!r}; choose one of {BACKBONE_NAMES}.")


def build_backbone(name, *, weights=None, trainable=True, fpn_channels=256, name_prefix=None):
    """Builds backbone `name`.

    Args:
        name: one of `BACKBONE_NAMES`.
        weights: None (random init, the default), a local weights file path (a legacy `.h5` such as
            the keras.applications ImageNet file loads by layer name; a Keras 3 `.weights.h5` from
            `model.save_weights` loads by structure), or "imagenet" (only if the Keras cache holds
            the file; otherwise ValueError, nothing downloads).
        trainable: False freezes the whole backbone (BatchNorm runs with its moving statistics).
        fpn_channels: channels of every pyramid level ("resnet50_fpn", "mobilenet_v3_fpn"; ignored
            by the others).
        name_prefix: the model is named `f"{name_prefix}_{name}"` (default `name`), so two backbones
            can live in one model.

    Returns:
        `(model, strides)`: a keras.Model `[B, H, W, 3]` -> list of `[B, ceil(H/s), ceil(W/s), C]`
        fine to coarse, and the tuple of strides `s`.

    Raises:
        ValueError: unknown name, bad weights argument, or a weights file that does not fit.
    """
    if name in _SINGLE_MAP:
        return _SINGLE_MAP[name](weights=weights, trainable=trainable, name_prefix=name_prefix)
    if name in _PYRAMID:
        return _PYRAMID[name](
            weights=weights, trainable=trainable, fpn_channels=fpn_channels, name_prefix=name_prefix
        )
    raise ValueError(f"Unknown backbone {name!r}; choose one of {BACKBONE_NAMES}.")


__all__ = [
    "BACKBONE_NAMES",
    "BACKBONE_STRIDES",
    "LocalResponseNormalization",
    "backbone_channels",
    "build_backbone",
    "build_mobilenet_v3_fpn",
    "build_resnet50_c4",
    "build_resnet50_c5_head",
    "build_resnet50_fpn",
    "build_small_fpn",
    "build_tiny",
    "build_vgg16",
    "build_zf",
    "common",
]
