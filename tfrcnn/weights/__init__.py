"""Pretrained weights: torchvision's Faster R-CNN checkpoints converted to tfrcnn models
(:func:`from_torchvision`), fine-tuning starts from a trained model (:func:`from_pretrained`), and
published files fetched on demand into the Keras cache, hash-checked (:mod:`.download`,
:mod:`.registry`). Importing this package imports no TensorFlow.

Example:
    >>> import tfrcnn
    >>> model = tfrcnn.weights.from_torchvision("model.pth", preset="torchvision_resnet50_fpn")
"""

from tfrcnn.weights.finetune import from_pretrained
from tfrcnn.weights.torchvision import from_torchvision

__all__ = ["from_pretrained", "from_torchvision"]
