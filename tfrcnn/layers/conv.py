"""Conv2D: ``keras.layers.Conv2D`` with the faster CPU gradient of :func:`tfrcnn.ops.conv.conv2d`.

A drop-in replacement: the constructor, the weights (``kernel``, ``bias``; same names, shapes and
order), ``get_config`` and the forward values are those of ``keras.layers.Conv2D``, so weights
saved from one load into the other. Only the convolution's gradient differs in how it is computed
(forward convolutions and matmuls instead of TensorFlow's CPU backprop kernels; equal up to float
rounding).

The custom-gradient convolution is used only when a gradient can be taken, i.e. when a
``tf.GradientTape`` is recording (``model.fit``'s train step, a user's tape, also inside
``tf.function``). Without a tape (inference, ``predict``, export) the layer calls the plain Keras
convolution, so Grappler can still fuse Conv2D + BiasAdd + Relu and the graph has no
``custom_gradient`` ``IdentityN`` nodes.

An empty batch gets the right output shape (``[0, Ho, Wo, filters]``) on every path: TensorFlow
2.21's oneDNN convolution returns its input there on some CPUs (see
:func:`tfrcnn.ops.conv.with_conv_output_shape`). Keras configurations the op does not cover (other
backends, ``channels_first``, groups, dilation) and float32 strided convolutions (where
:func:`tfrcnn.ops.conv.has_fast_gradient` is False) always use the plain Keras convolution.
"""

import keras

from tfrcnn.ops.conv import conv2d, has_fast_gradient, with_conv_output_shape

try:  # TensorFlow's own check "is any GradientTape active", cheap (one C call).
    from tensorflow.python.eager.record import could_possibly_record as tape_is_recording
except ImportError:  # pragma: no cover - moved in a future TensorFlow: assume a tape records
    def tape_is_recording():
        """Whether a ``tf.GradientTape`` may be recording (unknown here: True)."""
        return True


@keras.saving.register_keras_serializable(package="tfrcnn")
class Conv2D(keras.layers.Conv2D):
    """``keras.layers.Conv2D`` whose training gradient uses :func:`tfrcnn.ops.conv.conv2d`.

    Same arguments as ``keras.layers.Conv2D``. See the module docstring for when the custom
    gradient is used.

    Example:
        >>> layer = Conv2D(64, 3, padding="same", activation="relu")
        >>> with tf.GradientTape() as tape:
        ...     loss = tf.reduce_sum(layer(tf.ones([1, 32, 32, 16])))
        >>> [g.shape for g in tape.gradient(loss, layer.trainable_weights)]
        [TensorShape([3, 3, 16, 64]), TensorShape([64])]
    """

    def _fast_gradient_applies(self, inputs):
        """Whether this call should go through :func:`tfrcnn.ops.conv.conv2d`."""
        return (keras.backend.backend() == "tensorflow"
                and len(inputs.shape) == 4
                and inputs.shape[-1] is not None
                and self.data_format == "channels_last"
                and self.groups == 1
                and tuple(self.dilation_rate) == (1, 1)
                and self.padding in ("same", "valid")
                and has_fast_gradient(self.kernel_size, self.strides, self.padding,
                                      self.compute_dtype)
                and tape_is_recording())

    def convolution_op(self, inputs, kernel):
        if not self._fast_gradient_applies(inputs):
            outputs = super().convolution_op(inputs, kernel)
            if (keras.backend.backend() == "tensorflow" and self.data_format == "channels_last"
                    and len(inputs.shape) == 4 and not inputs.shape[0]):
                # The batch may be empty (static size None or 0): TensorFlow's oneDNN convolution
                # returns its input there on some CPUs (tfrcnn.ops.conv.with_conv_output_shape).
                outputs = with_conv_output_shape(outputs, inputs, self.kernel_size, self.strides,
                                                 self.padding, self.filters, self.dilation_rate)
            return outputs
        outputs = conv2d(inputs, kernel, strides=self.strides, padding=self.padding.upper())
        if (outputs.shape.is_fully_defined() and outputs.shape.num_elements() == 0
                and inputs.shape.is_fully_defined() and inputs.shape.num_elements() != 0):
            # Keras's own convolution refuses an input smaller than the kernel the same way.
            raise ValueError(f"Conv2D {self.name!r}: empty output {outputs.shape} for input "
                             f"{inputs.shape} (input smaller than the kernel / strides).")
        return outputs
