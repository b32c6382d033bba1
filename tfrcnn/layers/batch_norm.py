"""Batch normalisation on TensorFlow's fused kernel: a drop-in ``keras.layers.BatchNormalization``.

Keras 3 computes batch norm from separate ops: in training ``tf.nn.moments`` (two reductions and
a squared difference) then ``x * inv + (beta - mean * inv)``, and autodiff through all of them;
at inference the multiply-add, which TensorFlow's graph optimiser cannot fold into the preceding
convolution. ``tfrcnn.layers.BatchNormalization`` computes the same function with
``FusedBatchNormV3``: one kernel forward, one kernel (``FusedBatchNormGradV3``) backward.

At inference (and in a frozen layer) a float32 input is normalised as ``x * a + b`` with the
per-channel ``a = gamma / sqrt(moving_variance + epsilon)`` and ``b = beta - moving_mean * a``,
a multiply and a ``BiasAdd``. The fused kernel there would let Grappler's remapper fold a
``Conv2D -> FusedBatchNormV3`` chain into one convolution, and where TensorFlow runs oneDNN's
operations that convolution carries the normalisation as oneDNN post-ops, which ran 50x slower
than the convolution alone on session 7's AVX2 CPU (``[1, 400, 400, 16]`` 1x1 -> 64 channels:
1,364 ms fused, 24 ms as convolution, multiply and BiasAdd; without oneDNN 46 and 48 ms); a whole
``mobilenet_v3_fpn`` inference took 5.8 s instead of 0.5. Half-precision inputs keep the fused
kernel, which computes in float32 inside.

Measured on this project's 2-core CPU (``[1, 200, 200, 256]`` float32, a ResNet50-FPN stage-2
map at 800x800): forward + backward 220 ms with Keras' layer, 114 ms fused.

Same weights (``gamma``, ``beta``, ``moving_mean``, ``moving_variance``, in Keras' order), same
config, same moving-average rule as Keras (the biased batch variance, ``momentum`` on the old
value), so a model with either layer loads the other's weights. The class keeps Keras' name on
purpose: Keras 3 files address a layer's weights by its class name in snake case
(``layers/batch_normalization``), so models and checkpoints saved with Keras' layer load into
this one and the other way round. The fused kernel is used for 4-D
channels-last inputs without a mask, renorm or synchronisation and with ``epsilon >= 1.001e-5``
(TensorFlow raises smaller ones to that); anything else runs Keras' own computation.
"""

import keras
import tensorflow as tf

from tfrcnn.layers.folding import is_folded

# tf.compat.v1.nn.fused_batch_norm raises any smaller epsilon to this (a cuDNN requirement).
_MIN_FUSED_EPSILON = 1.001e-5
_FUSED_DTYPES = (tf.float32, tf.float16, tf.bfloat16)


@keras.saving.register_keras_serializable(package="tfrcnn")
class BatchNormalization(keras.layers.BatchNormalization):
    """``keras.layers.BatchNormalization`` computed by TensorFlow's fused batch-norm kernel
    (``tfrcnn>BatchNormalization`` when serialised).

    Constructor, weights and config are Keras'. Inputs ``[B, H, W, C]`` (channels last); the output
    has the input's shape and the layer's compute dtype. In training mode (``training=True`` and
    the layer trainable) it normalises with the batch statistics and updates the moving ones;
    otherwise it uses the moving statistics.

    Example:
        >>> layer = BatchNormalization(epsilon=1e-3)
        >>> y = layer(tf.random.normal([2, 8, 8, 16]), training=True)
        >>> y.shape
        TensorShape([2, 8, 8, 16])
    """

    def _fused(self, inputs, mask):
        axis = self.axis if self.axis >= 0 else self.axis + len(inputs.shape)
        return (
            mask is None
            and len(inputs.shape) == 4
            and axis == 3
            and not self.renorm
            and not self.synchronized
            and self.epsilon >= _MIN_FUSED_EPSILON
        )

    def folds_as_affine(self, inputs):
        """Whether this layer's inference on ``inputs`` (a tensor or Keras tensor) is the channel
        affine map of :meth:`inference_affine`, which a convolution before it can absorb
        (:mod:`tfrcnn.layers.folding`)."""
        axis = self.axis if self.axis >= 0 else self.axis + len(inputs.shape)
        return (len(inputs.shape) == 4 and axis == 3 and not self.renorm
                and not self.synchronized)

    def inference_affine(self):
        """``(a, b)``, float32 ``[C]``: inference maps ``x`` to ``x * a + b``."""
        channels = self.moving_mean.shape[-1]
        gamma = tf.cast(self.gamma, tf.float32) if self.scale else tf.ones([channels])
        beta = tf.cast(self.beta, tf.float32) if self.center else tf.zeros([channels])
        scale = gamma * tf.math.rsqrt(tf.cast(self.moving_variance, tf.float32) + self.epsilon)
        return scale, beta - tf.cast(self.moving_mean, tf.float32) * scale

    def call(self, inputs, training=None, mask=None):
        if mask is None and is_folded(self):
            # the convolution before this layer already applied it (tfrcnn.layers.folding)
            return tf.cast(inputs, self.compute_dtype)
        if not self._fused(inputs, mask):
            return super().call(inputs, training=training, mask=mask)
        x = tf.convert_to_tensor(inputs)
        if x.dtype not in _FUSED_DTYPES:
            x = tf.cast(x, tf.float32)
        channels = x.shape[-1]
        gamma = tf.cast(self.gamma, tf.float32) if self.scale else tf.ones([channels])
        beta = tf.cast(self.beta, tf.float32) if self.center else tf.zeros([channels])
        if training and self.trainable:
            y, mean, unbiased_variance = tf.compat.v1.nn.fused_batch_norm(
                x, gamma, beta, epsilon=self.epsilon, is_training=True
            )
            # The kernel returns the unbiased variance; Keras tracks the biased one.
            shape = tf.shape(x)
            count = tf.cast(shape[0] * shape[1] * shape[2], tf.float32)
            variance = unbiased_variance * tf.math.divide_no_nan(count - 1.0, count)
            momentum = self.momentum
            self.moving_mean.assign(
                tf.cast(self.moving_mean, tf.float32) * momentum + mean * (1.0 - momentum)
            )
            self.moving_variance.assign(
                tf.cast(self.moving_variance, tf.float32) * momentum + variance * (1.0 - momentum)
            )
        elif x.dtype == tf.float32:
            # y = x * a + b with a = gamma / sqrt(var + eps), b = beta - mean * a: a multiply and a
            # BiasAdd. Not FusedBatchNormV3: Grappler fuses Conv2D -> FusedBatchNormV3 into one
            # oneDNN convolution with the normalisation as post-ops, which oneDNN runs 50x slower
            # than the convolution itself on AVX2 CPUs (module docstring).
            scale, offset = self.inference_affine()
            y = tf.nn.bias_add(x * scale, offset)
        else:
            y, _, _ = tf.compat.v1.nn.fused_batch_norm(
                x,
                gamma,
                beta,
                mean=tf.cast(self.moving_mean, tf.float32),
                variance=tf.cast(self.moving_variance, tf.float32),
                epsilon=self.epsilon,
                is_training=False,
            )
        return tf.cast(y, self.compute_dtype)
