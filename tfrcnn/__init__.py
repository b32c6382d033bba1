"""tfrcnn: Faster R-CNN (Ren, He, Girshick, Sun, 2015) as TensorFlow 2 / Keras 3 layers.

Boxes are ``[y1, x1, y2, x2]`` in absolute pixels; user class ids are ``0 .. num_classes - 1``.

``import tfrcnn`` imports nothing of TensorFlow: the public names below load their module on
first use, so ``tfrcnn --help`` and the command line's argument checks answer at once.

Example:
    >>> import tfrcnn
    >>> model = tfrcnn.FasterRCNN.from_preset("tiny", num_classes=3)
"""
import importlib as _importlib

__version__ = "0.1.0"

_LAYERS = (
    "AnchorGenerator", "BatchNormalization", "Conv2D", "DepthwiseConv2D", "DetectionDecoder",
    "FeaturePyramid", "ImageNormalization", "ImageResizer", "MultiLevelROIAlign",
    "PreciseROIPooling", "ProposalLayer", "RCNNHead", "ROIAlign", "ROIPooling", "ROISampler",
    "RPNHead", "RPNTargetAssigner",
)
_SUBMODULES = ("backbones", "config", "data", "evaluation", "export", "layers", "models", "ops",
               "runtime", "training", "visualize")

__all__ = [  # noqa: RUF022  (the model, its layers, the submodules)
    "FasterRCNN",
    "AnchorGenerator", "BatchNormalization", "Conv2D", "DepthwiseConv2D", "DetectionDecoder",
    "FeaturePyramid", "ImageNormalization", "ImageResizer", "MultiLevelROIAlign",
    "PreciseROIPooling", "ProposalLayer", "RCNNHead", "ROIAlign", "ROIPooling", "ROISampler",
    "RPNHead", "RPNTargetAssigner",
    "backbones", "config", "data", "evaluation", "export", "layers", "models", "ops", "runtime",
    "training", "visualize", "__version__",
]


def __getattr__(name):
    if name == "FasterRCNN":
        value = _importlib.import_module("tfrcnn.models").FasterRCNN
    elif name in _LAYERS:
        value = getattr(_importlib.import_module("tfrcnn.layers"), name)
    elif name in _SUBMODULES:
        value = _importlib.import_module(f"tfrcnn.{name}")
    else:
        raise AttributeError(f"module 'tfrcnn' has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))
