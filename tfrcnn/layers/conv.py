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
:func:`tfrcnn.ops.conv.with_conv_output_shape`).

Float32 calls of wide 3x3 convolutions on large maps can run Winograd's F(4x4, 3x3) under XLA
instead (:mod:`tfrcnn.ops.winograd`; in training with :func:`tfrcnn.ops.conv.winograd_conv2d`'s
gradient), where ``winograd`` is set on the layer.

Keras configurations the op does not cover (other backends, ``channels_first``, groups, dilation)
and float32 strided convolutions (where :func:`tfrcnn.ops.conv.has_fast_gradient` is False)
always use the plain Keras convolution.
"""

import keras
import tensorflow as tf

from tfrcnn.layers.folding import fold, folded_batch_norm
from tfrcnn.ops.conv import (conv2d, has_fast_gradient, winograd_conv2d,
                             with_conv_output_shape)
from tfrcnn.ops.winograd import winograd_conv3x3_xla, winograd_pays_off
from tfrcnn.xla import (  # noqa: F401  (xla_disabled, tape_is_recording: re-exported)
    sees_a_gpu, tape_is_recording, xla_disabled, xla_is_disabled)


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

    #: Set on a layer (``FasterRCNN`` does it with its ``xla`` setting; not saved in the config):
    #: float32 calls of a 3x3 stride-1 "same" convolution whose shape
    #: :func:`tfrcnn.ops.winograd.winograd_pays_off` accepts run F(4x4, 3x3) compiled by XLA, on
    #: a machine without a GPU and outside :func:`xla_disabled`; with a tape recording, with the
    #: gradient of :func:`tfrcnn.ops.conv.winograd_conv2d`.
    winograd = False

    def _winograd_applies(self, inputs):
        """Whether this call should run F(4x4, 3x3) (:mod:`tfrcnn.ops.winograd`)."""
        return (bool(self.winograd)
                and keras.backend.backend() == "tensorflow"
                and len(inputs.shape) == 4
                and self.data_format == "channels_last"
                and self.groups == 1
                and tuple(self.kernel_size) == (3, 3)
                and tuple(self.strides) == (1, 1)
                and tuple(self.dilation_rate) == (1, 1)
                and self.padding == "same"
                and self.compute_dtype == "float32"
                and winograd_pays_off(tuple(inputs.shape), self.filters)
                and not xla_is_disabled()
                and not sees_a_gpu())

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

    def _compiled_winograd_applies(self, inputs):
        """Whether this call runs the compiled forward Winograd convolution (no tape recording),
        which then also applies the bias and a relu / linear activation."""
        return self._winograd_applies(inputs) and not tape_is_recording()

    def _fused_activation(self):
        """``"relu"`` or ``"linear"`` when this layer's activation is one the compiled Winograd
        convolution applies itself (:func:`tfrcnn.ops.winograd.winograd_conv3x3`), else None."""
        activation = self.activation
        if activation is None or activation is keras.activations.linear:
            return "linear"
        if activation is keras.activations.relu:
            return "relu"
        return None

    def call(self, inputs):
        batch_norm = folded_batch_norm(self)
        if batch_norm is not None:
            # The batch norm after this layer, folded in (tfrcnn.layers.folding); no activation.
            kernel, bias = fold(self.kernel, self.bias if self.use_bias else None, batch_norm)
            if self._compiled_winograd_applies(inputs):
                return winograd_conv3x3_xla(inputs, kernel, bias)
            return tf.nn.bias_add(self.convolution_op(inputs, kernel), bias)
        activation = self._fused_activation()
        if activation is not None and self._compiled_winograd_applies(inputs):
            # Inference: bias and relu inside the compiled Winograd computation, so the output
            # is written once (not three times: convolution, bias, activation).
            return winograd_conv3x3_xla(
                inputs, tf.convert_to_tensor(self.kernel),
                tf.convert_to_tensor(self.bias) if self.use_bias else None,
                activation == "relu")
        return super().call(inputs)

    def convolution_op(self, inputs, kernel):
        if self._winograd_applies(inputs):
            if tape_is_recording():
                return winograd_conv2d(inputs, kernel)
            return winograd_conv3x3_xla(inputs, tf.convert_to_tensor(kernel))
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


@keras.saving.register_keras_serializable(package="tfrcnn")
class DepthwiseConv2D(keras.layers.DepthwiseConv2D):
    """``keras.layers.DepthwiseConv2D`` that can fold the batch norm after it at inference
    (:mod:`tfrcnn.layers.folding`); otherwise Keras' layer unchanged (same arguments, weights,
    config and values; Keras' class name, so weight files address it the same way).

    Example:
        >>> layer = DepthwiseConv2D(3, padding="same")
        >>> layer(tf.ones([1, 8, 8, 16])).shape
        TensorShape([1, 8, 8, 16])
    """

    def call(self, inputs):
        batch_norm = folded_batch_norm(self)
        if batch_norm is None:
            return super().call(inputs)
        kernel, bias = fold(self.kernel, self.bias if self.use_bias else None, batch_norm,
                            depthwise=True)
        outputs = keras.ops.depthwise_conv(inputs, kernel, strides=self.strides,
                                           padding=self.padding, dilation_rate=self.dilation_rate,
                                           data_format=self.data_format)
        return tf.nn.bias_add(outputs, bias)
