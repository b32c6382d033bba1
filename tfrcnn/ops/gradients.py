"""Whether a gradient can be asked for at this point of a computation."""

__all__ = ["tape_is_recording"]


def tape_is_recording():
    """Whether a ``tf.GradientTape`` may be recording here (TensorFlow's own check, one C call;
    True where TensorFlow does not offer it). Ops use it to leave out custom-gradient wrappers
    where no gradient can be taken (inference, ``predict``, export)."""
    try:
        from tensorflow.python.eager.record import could_possibly_record
    except ImportError:  # moved in a future TensorFlow: assume a tape records
        return True
    return could_possibly_record()
