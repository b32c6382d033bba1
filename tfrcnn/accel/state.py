"""When the accelerated paths apply: outside :func:`disabled` blocks, on machines without a GPU.

Imports nothing of TensorFlow at module level, so :mod:`tfrcnn.accel` can be imported (and the
process configured) before TensorFlow is.
"""

import contextlib
import functools
import threading

__all__ = ["disabled", "is_disabled", "sees_a_gpu"]

_STATE = threading.local()


@contextlib.contextmanager
def disabled():
    """Within this block every accelerated layer computes what its plain Keras class computes:
    no Winograd convolution, no batch-norm folding, no XLA-compiled backbone or ROI Align, no
    custom gradients. Thread-local; blocks nest.

    Example:
        >>> with tfrcnn.accel.disabled():
        ...     plain = model.predict(images)
    """
    previous = getattr(_STATE, "disabled", False)
    _STATE.disabled = True
    try:
        yield
    finally:
        _STATE.disabled = previous


def is_disabled():
    """Whether the caller is inside :func:`disabled`."""
    return getattr(_STATE, "disabled", False)


@functools.cache
def sees_a_gpu():
    """Whether TensorFlow sees a GPU (the CPU paths then stand aside for the GPU's kernels)."""
    import tensorflow as tf

    return bool(tf.config.list_physical_devices("GPU"))
