"""Where tfrcnn may compile with XLA: :func:`xla_disabled` turns it off for a block.

tfrcnn compiles some of its own computations with XLA (the backbone at inference, Winograd
convolutions, the ROI Align feature gradient). A SavedModel or TFLite file must not need an XLA
compiler (TF Serving builds, the TFLite converter and other runtimes may have none), so the
exporters trace, and save, under :func:`xla_disabled`. Thread-local; blocks nest. The other
conditions of those paths live here too: :func:`sees_a_gpu` (GPUs keep their own kernels) and
:func:`tape_is_recording` (inference-only paths need no gradient tape recording).
"""

import contextlib
import functools
import threading

import tensorflow as tf

__all__ = ["xla_disabled", "xla_is_disabled", "sees_a_gpu", "tape_is_recording"]

try:  # TensorFlow's own check "is any GradientTape active", cheap (one C call).
    from tensorflow.python.eager.record import could_possibly_record as tape_is_recording
except ImportError:  # pragma: no cover - moved in a future TensorFlow: assume a tape records
    def tape_is_recording():
        """Whether a ``tf.GradientTape`` may be recording (unknown here: True)."""
        return True

_STATE = threading.local()


@contextlib.contextmanager
def xla_disabled():
    """Within this block nothing of tfrcnn runs under XLA: backbones run as plain TensorFlow ops
    even when ``jit_inference`` is set, :class:`tfrcnn.layers.Conv2D` does not take its Winograd
    path, and gradients traced here (a SavedModel saves custom gradients) use plain ops."""
    previous = getattr(_STATE, "disabled", False)
    _STATE.disabled = True
    try:
        yield
    finally:
        _STATE.disabled = previous


def xla_is_disabled():
    """Whether the caller is inside :func:`xla_disabled`."""
    return getattr(_STATE, "disabled", False)


@functools.lru_cache(maxsize=None)
def sees_a_gpu():
    """Whether TensorFlow sees a GPU. tfrcnn's CPU-specific compiled computations (Winograd
    convolutions, the compiled ROI Align gather) stand aside there for the GPU's own kernels."""
    return bool(tf.config.list_physical_devices("GPU"))
