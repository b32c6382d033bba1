"""Whether a gradient can be asked for at this point of a computation."""

__all__ = ["tape_is_recording", "backward_after", "recompute"]


def tape_is_recording():
    """Whether a ``tf.GradientTape`` may be recording here (TensorFlow's own check, one C call;
    True where TensorFlow does not offer it). Ops use it to leave out custom-gradient wrappers
    where no gradient can be taken (inference, ``predict``, export)."""
    try:
        from tensorflow.python.eager.record import could_possibly_record
    except ImportError:  # moved in a future TensorFlow: assume a tape records
        return True
    return could_possibly_record()


def backward_after(x):
    """``x`` unchanged; its gradient passes ``dy`` on only once ``x`` itself has been computed.

    Applied to a loss, the backward pass starts after the whole forward pass: a loss term that
    depends on part of the computation (a detector's first-stage loss) then does not start its
    backward pass, and allocate its gradient buffers, while the rest of the forward pass still
    runs (its gradient seed is otherwise a constant, ready at once)."""
    import tensorflow as tf

    @tf.custom_gradient
    def seal(value):
        def grad(dy):
            with tf.control_dependencies([value]):
                return tf.identity(dy)

        return tf.identity(value), grad

    return seal(x)


def recompute(fn, x, state=()):
    """``fn(x)`` computed without keeping its intermediate tensors for the backward pass: the
    gradient runs ``fn`` again (once the gradient of its output is there) and differentiates that.

    Args:
        fn: a function of one tensor returning one tensor, differentiable, whose only side
            effects are assignments to the variables in ``state``.
        x: the input tensor.
        state: variables ``fn`` assigns (a batch norm's moving statistics); the recomputation's
            assignments are undone, so they change once a step, as without recomputation.

    Returns:
        ``fn(x)``. Gradients equal those of ``fn(x)`` up to float rounding of the recomputation
        (the same ops on the same inputs).
    """
    import tensorflow as tf

    state = list(state)

    @tf.custom_gradient
    def run(x):
        y = fn(x)

        def grad(dy, variables=None):
            variables = list(variables or ())
            saved = [tf.identity(v) for v in state]
            with tf.control_dependencies([dy]):  # recompute only when the gradient is needed
                x_again = tf.identity(x)
            with tf.GradientTape() as tape:
                tape.watch(x_again)
                y_again = fn(x_again)
            dx, dvariables = tape.gradient(y_again, (x_again, variables), output_gradients=dy)
            for variable, value in zip(state, saved):
                variable.assign(value)
            return dx, dvariables

        return y, grad

    return run(x)
