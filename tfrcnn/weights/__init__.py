"""Pretrained weights: torchvision's Faster R-CNN checkpoints converted to tfrcnn models
(:func:`from_torchvision`), fine-tuning starts from a trained model (:func:`from_pretrained`), and
published files fetched on demand into the Keras cache, hash-checked (:mod:`.download`,
:mod:`.registry`). Importing this package imports nothing (not even numpy) until one of its
functions is first used, so the command line reads the registry quickly.

Example:
    >>> import tfrcnn
    >>> model = tfrcnn.weights.from_torchvision("model.pth", preset="torchvision_resnet50_fpn")
"""

import importlib

# public name -> the module that defines it (imported on first use)
_NAMES = {
    "from_pretrained": "tfrcnn.weights.finetune",
    "from_torchvision": "tfrcnn.weights.torchvision",
}

__all__ = list(_NAMES)


def __getattr__(name):
    if name not in _NAMES:
        raise AttributeError(f"module 'tfrcnn.weights' has no attribute {name!r}")
    value = getattr(importlib.import_module(_NAMES[name]), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))
