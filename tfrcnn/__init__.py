"""tfrcnn: Faster R-CNN (Ren, He, Girshick, Sun, 2015) as TensorFlow 2 / Keras 3 layers.

Boxes are ``[y1, x1, y2, x2]`` in absolute pixels; user class ids are ``0 .. num_classes - 1``.

Example:
    >>> import tfrcnn
    >>> model = tfrcnn.FasterRCNN.from_preset("tiny", num_classes=3)
"""
import os as _os

_os.environ.setdefault("KERAS_BACKEND", "tensorflow")

from tfrcnn import runtime  # noqa: E402  (imports nothing of TensorFlow)

# TensorFlow's BFC host allocator, before TensorFlow first allocates, and its oneDNN operations,
# before TensorFlow is imported (tfrcnn/runtime.py).
runtime.choose_cpu_allocator()
runtime.choose_onednn()

from tfrcnn import config, ops  # noqa: E402
from tfrcnn.layers import *  # noqa: E402,F401,F403
from tfrcnn.models import FasterRCNN  # noqa: E402

__version__ = "0.1.0"
