"""Batch normalisation on TensorFlow's fused kernel, for ``keras.layers.BatchNormalization``.

Keras 3 computes batch norm from separate ops: in training ``tf.nn.moments`` (two reductions and
a squared difference) then ``x * inv + (beta - mean * inv)``, and autodiff through all of them.
:func:`batch_norm_call` computes the same function with ``FusedBatchNormV3``: one kernel forward,
one kernel (``FusedBatchNormGradV3``) backward, the same moving-average rule as Keras (the biased
batch variance, ``momentum`` on the old value).

At inference (and in a frozen layer) a float32 input is normalised as ``x * a + b`` with the
per-channel ``a = gamma / sqrt(moving_variance + epsilon)`` and ``b = beta - moving_mean * a``, a
multiply and a ``BiasAdd``, not the fused kernel: Grappler's remapper would fold a ``Conv2D ->
FusedBatchNormV3`` chain into one oneDNN convolution with the normalisation as post-ops, which
oneDNN runs many times slower than the convolution alone on AVX2 CPUs. Half-precision inputs keep
the fused kernel, which computes in float32 inside.

The fused kernel is used for 4-D channels-last inputs without a mask, renorm or synchronisation
and with ``epsilon >= 1.001e-5`` (TensorFlow raises smaller ones to that); anything else runs
Keras' own computation. Measurements: docs/accel.md, "Fused batch norm".
"""

import keras
import tensorflow as tf

from tfrcnn.accel.folding import inference_affine, is_folded

# tf.compat.v1.nn.fused_batch_norm raises any smaller epsilon to this (a cuDNN requirement).
_MIN_FUSED_EPSILON = 1.001e-5
_FUSED_DTYPES = (tf.float32, tf.float16, tf.bfloat16)


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


def batch_norm_call(self, inputs, training=None, mask=None):
    """The accelerated ``call`` of a ``keras.layers.BatchNormalization`` ``self``: the same
    outputs and moving-statistics updates (inputs ``[B, H, W, C]`` channels last on the fused
    kernel; anything else through Keras' own ``call``)."""
    plain = keras.layers.BatchNormalization.call
    if mask is None and is_folded(self):
        # the convolution before this layer already applied it (tfrcnn.accel.folding)
        return tf.cast(inputs, self.compute_dtype)
    if not _fused(self, inputs, mask):
        return plain(self, inputs, training=training, mask=mask)
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
        # BiasAdd. Not FusedBatchNormV3, which Grappler fuses into a slow oneDNN convolution
        # (module docstring).
        scale, offset = inference_affine(self)
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
