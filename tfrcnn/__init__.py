"""tfrcnn: Faster R-CNN (Ren, He, Girshick, Sun, 2015) as TensorFlow 2 / Keras 3 layers.

Boxes are ``[y1, x1, y2, x2]`` in absolute pixels; user class ids are ``0 .. num_classes - 1``.

``import tfrcnn`` changes no environment variable and no TensorFlow setting, and imports
TensorFlow only when a name below is first used (the subpackages load on first attribute
access). :func:`tfrcnn.accel.configure_process` chooses TensorFlow's allocator and oneDNN
settings for speed; call it before TensorFlow is imported.

Example:
    >>> import tfrcnn
    >>> model = tfrcnn.FasterRCNN.from_preset("tiny", num_classes=3)
    >>> model.save("tiny.keras")
    >>> model = tfrcnn.load_model("tiny.keras")
"""

import importlib
import sys

__version__ = "0.1.0"

_SUBPACKAGES = (
    "accel",
    "backbones",
    "config",
    "data",
    "evaluation",
    "export",
    "layers",
    "models",
    "ops",
    "training",
    "visualize",
    "weights",
)

# public name -> the module that defines it
_NAMES = {
    "FasterRCNN": "tfrcnn.models",
    "AnchorGenerator": "tfrcnn.layers",
    "DetectionDecoder": "tfrcnn.layers",
    "FeaturePyramid": "tfrcnn.layers",
    "ImageNormalization": "tfrcnn.layers",
    "ImageResizer": "tfrcnn.layers",
    "MultiLevelROIAlign": "tfrcnn.layers",
    "PreciseROIPooling": "tfrcnn.layers",
    "ProposalLayer": "tfrcnn.layers",
    "RCNNHead": "tfrcnn.layers",
    "ROIAlign": "tfrcnn.layers",
    "ROIPooling": "tfrcnn.layers",
    "ROISampler": "tfrcnn.layers",
    "RPNHead": "tfrcnn.layers",
    "RPNTargetAssigner": "tfrcnn.layers",
}

__all__ = ["__version__", "load_model", *_NAMES, *_SUBPACKAGES]


def _register():
    """Import the modules that register tfrcnn's serializable Keras classes."""
    importlib.import_module("tfrcnn.models")


def load_model(path, compile=True):
    """Load a ``FasterRCNN`` saved as ``.keras``, with Keras' ``safe_mode`` on (the model's config
    holds no code); a file that is not a tfrcnn model raises
    :class:`tfrcnn.models.ModelFileError` with one line naming it.

    Example:
        >>> model = tfrcnn.load_model("runs/tiny/model.keras")
    """
    from tfrcnn.models.loading import load_model as _load_model

    return _load_model(path, compile=compile)


def __getattr__(name):
    if name not in ("accel", "config"):  # those two import nothing of TensorFlow
        _register()
    if name in _SUBPACKAGES:
        module = importlib.import_module(f"tfrcnn.{name}")
    elif name in _NAMES:
        module = getattr(importlib.import_module(_NAMES[name]), name)
    else:
        raise AttributeError(f"module 'tfrcnn' has no attribute {name!r}")
    globals()[name] = module
    return module


def __dir__():
    return sorted(set(globals()) | set(__all__))


if "keras" in sys.modules:
    # Keras is loaded already (so is TensorFlow): registering the classes now costs nothing and
    # keeps keras.models.load_model("x.keras") working right after "import tfrcnn".
    _register()
