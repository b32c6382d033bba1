"""Mixed precision: choosing a Keras dtype policy for the machine, and building under it.

``"mixed_bfloat16"`` computes convolutions and matrix products in bfloat16 with float32 weights:
on CPUs with AVX512-BF16 / AMX (Intel Cooper Lake, Sapphire Rapids and later) oneDNN runs them
several times faster than float32, and on TPUs it is the native type. ``"mixed_float16"`` is the
GPU choice (Keras then scales the loss). Box coordinates, anchors, proposals, targets and losses
stay float32 in every policy (the coordinate layers pin their own dtype).

Example:
    >>> with precision_scope("auto"):                 # bf16 here if the CPU has it
    ...     model = FasterRCNN.from_preset("resnet50_fpn", num_classes=20)
"""

import contextlib

import keras
import tensorflow as tf

PRECISIONS = ("float32", "mixed_bfloat16", "mixed_float16", "auto")


def cpu_has_bfloat16():
    """True when the CPU advertises native bfloat16 arithmetic (``avx512_bf16`` or ``amx_bf16``).

    Reads ``/proc/cpuinfo``; False where it cannot be read (not Linux).
    """
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return bool(flags & {"avx512_bf16", "amx_bf16"})
    except OSError:
        return False
    return False


def resolve_precision(name):
    """The Keras policy name for ``name`` (one of :data:`PRECISIONS`).

    ``"auto"`` gives ``"mixed_float16"`` when TensorFlow sees a GPU, ``"mixed_bfloat16"`` on a CPU
    with native bfloat16 (see :func:`cpu_has_bfloat16`) and ``"float32"`` otherwise.

    Raises:
        ValueError: for a name not in :data:`PRECISIONS`.
    """
    if name not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}; got {name!r}")
    if name != "auto":
        return name
    if tf.config.list_physical_devices("GPU"):
        return "mixed_float16"
    return "mixed_bfloat16" if cpu_has_bfloat16() else "float32"


@contextlib.contextmanager
def precision_scope(name):
    """Build layers and models under the policy ``resolve_precision(name)``, then restore the
    previous global policy. Layers keep the policy they were built with (and save it)."""
    policy = resolve_precision(name)
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(policy)
    try:
        yield policy
    finally:
        keras.mixed_precision.set_global_policy(previous)
