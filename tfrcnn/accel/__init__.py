"""CPU acceleration of tfrcnn models, behind one small face.

- :func:`apply` installs accelerated computations on the layers of a model: Winograd
  convolutions and faster convolution gradients, TensorFlow's fused batch norm, batch norms
  folded into convolutions at inference, the backbone compiled by XLA at inference, XLA-compiled
  ROI Align kernels. Same function, same weights, same config and saved files as the plain
  layers. ``FasterRCNN(accelerate="auto")`` (the default) calls it.
- :func:`disabled` is a block in which every accelerated layer computes what its plain Keras
  layer computes (exports to TFLite trace there).
- :func:`configure_process` sets TensorFlow's host allocator and oneDNN environment variables;
  call it before TensorFlow is imported. ``import tfrcnn`` never does.

This package imports nothing of TensorFlow until :func:`apply` is called, so
``import tfrcnn.accel; tfrcnn.accel.configure_process()`` can come first in a program. What each
technique buys, and how it is measured: docs/performance.md.

Example:
    >>> import tfrcnn.accel
    >>> tfrcnn.accel.configure_process()        # before TensorFlow is imported
    >>> import tfrcnn
    >>> model = tfrcnn.FasterRCNN.from_preset("tiny", num_classes=3)   # accelerated
    >>> with tfrcnn.accel.disabled():
    ...     plain = model.predict(images)          # the plain Keras computation
"""

from tfrcnn.accel.process import (
    check_cpu_allocator,
    configure_process,
    cpu_allocator,
    onednn_enabled,
)
from tfrcnn.accel.state import disabled

__all__ = [
    "apply",
    "disabled",
    "configure_process",
    "cpu_allocator",
    "onednn_enabled",
    "check_cpu_allocator",
]


def apply(model):
    """Install the accelerated computations on ``model`` and its layers; returns ``model``.

    ``model`` is any Keras layer or model; layers the package has no accelerated path for are
    left alone (:mod:`tfrcnn.accel.layers` lists the paths and when each applies).
    """
    from tfrcnn.accel.layers import apply as _apply

    return _apply(model)
