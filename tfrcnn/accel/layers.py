"""Accelerated calls for plain Keras layers, installed on layer instances by :func:`apply`.

:func:`apply` gives each layer it knows an accelerated ``call`` (or ``convolution_op`` /
``pool``) bound to that instance; the class, constructor arguments, weights, config and saved
files stay those of the plain layer, and every accelerated call computes the plain layer's
function (up to float rounding) and its gradients. Inside :func:`tfrcnn.accel.disabled` every
one of them runs the plain layer's own code.

- ``keras.layers.Conv2D``: float32 3x3 stride-1 "same" convolutions whose shape
  :func:`tfrcnn.accel.winograd.winograd_pays_off` accepts run Winograd's F(4x4, 3x3) compiled by
  XLA (with a tape recording, on static shapes: :func:`tfrcnn.accel.conv.winograd_conv2d`;
  without one the bias and a relu are applied inside the compiled computation, and a map whose
  size is unknown while tracing is sent there by a ``tf.cond`` on its size); other convolutions take
  :func:`tfrcnn.accel.conv.conv2d`'s gradient when a tape records. An empty batch gets the
  convolution's output shape (TensorFlow's oneDNN convolution returns its input there on some
  CPUs).
- ``keras.layers.Conv2D`` / ``DepthwiseConv2D`` followed by a ``BatchNormalization``: in a
  backbone's inference call the batch norm is folded into the convolution
  (:mod:`tfrcnn.accel.folding`).
- ``keras.layers.BatchNormalization``: TensorFlow's fused kernel (:mod:`tfrcnn.accel.batch_norm`).
- :class:`tfrcnn.backbones.common.BackboneModel`: inference calls fold the batch norms, and for
  the backbones in :data:`XLA_BACKBONES` run the whole network as one XLA cluster.
- :class:`tfrcnn.layers.ROIAlign` / :class:`tfrcnn.layers.MultiLevelROIAlign` with
  ``method="auto"``: XLA-compiled interpolation kernels (:mod:`tfrcnn.accel.roi`).

A GPU, a half-precision compute dtype or a configuration a path does not cover falls back to the
plain computation layer by layer.
"""

import types
import weakref

import keras
import tensorflow as tf

from tfrcnn.accel import roi as accel_roi
from tfrcnn.accel.batch_norm import batch_norm_call
from tfrcnn.accel.conv import conv2d, has_fast_gradient, winograd_conv2d, with_conv_output_shape
from tfrcnn.accel.folding import fold, folded_batch_norm, folding_scope, pair_conv_batch_norms
from tfrcnn.accel.state import is_disabled, sees_a_gpu
from tfrcnn.accel.winograd import winograd_conv3x3_xla, winograd_decision, winograd_pays_off
from tfrcnn.backbones.common import BackboneModel
from tfrcnn.layers.multilevel_roi_align import MultiLevelROIAlign
from tfrcnn.layers.roi_align import ROIAlign
from tfrcnn.ops.gradients import tape_is_recording

__all__ = ["apply", "XLA_BACKBONES", "accelerated"]

#: Backbones (by model name) whose inference runs faster as one XLA cluster in float32 on a CPU.
#: Depthwise convolutions (``mobilenet_v3_fpn``) are several times slower under XLA on CPUs.
XLA_BACKBONES = ("resnet50_fpn", "resnet50_c4")

_MARK = "_tfrcnn_accelerated"

# backbone -> its XLA-compiled inference function; kept outside the layer, so that a SavedModel
# export does not take the function for a child to save
_COMPILED = weakref.WeakKeyDictionary()


def accelerated(layer):
    """Whether :func:`apply` installed an accelerated call on ``layer``."""
    return layer.__dict__.get(_MARK, False)


def _install(layer, name, function):
    # Stored past Keras' attribute tracking: a bound method is no layer state.
    object.__setattr__(layer, name, types.MethodType(function, layer))


# ------------------------------------------------------------------------------------ Conv2D


def _winograd_layer(self, inputs):
    """Whether Conv2D ``self`` is a convolution F(4x4, 3x3) computes (its shape aside)."""
    return (
        len(inputs.shape) == 4
        and self.data_format == "channels_last"
        and self.groups == 1
        and tuple(self.kernel_size) == (3, 3)
        and tuple(self.strides) == (1, 1)
        and tuple(self.dilation_rate) == (1, 1)
        and self.padding == "same"
        and self.compute_dtype == "float32"
        and not sees_a_gpu()
    )


def _winograd_applies(self, inputs):
    """Whether this call of Conv2D ``self`` on an input of static shape should run F(4x4, 3x3)
    (:mod:`tfrcnn.accel.winograd`)."""
    return _winograd_layer(self, inputs) and winograd_pays_off(tuple(inputs.shape), self.filters)


def _compiled_winograd(self, inputs):
    """For an inference call (no tape): False, True, or a scalar bool tensor where the map size
    is unknown while tracing (a serving signature): whether the compiled Winograd forward runs."""
    if tape_is_recording() or not _winograd_layer(self, inputs):
        return False
    return winograd_decision(inputs, self.filters)


def _either(choice, winograd, direct):
    """``winograd()`` where ``choice`` is True, ``direct()`` where False, else a ``tf.cond``."""
    if choice is True:
        return winograd()
    if choice is False:
        return direct()
    return tf.cond(choice, winograd, direct)


def _fast_gradient_applies(self, inputs):
    """Whether this call of Conv2D ``self`` should go through :func:`tfrcnn.accel.conv.conv2d`."""
    return (
        len(inputs.shape) == 4
        and inputs.shape[-1] is not None
        and self.data_format == "channels_last"
        and self.groups == 1
        and tuple(self.dilation_rate) == (1, 1)
        and self.padding in ("same", "valid")
        and has_fast_gradient(self.kernel_size, self.strides, self.padding, self.compute_dtype)
        and tape_is_recording()
    )


def _fused_activation(self):
    """``"relu"`` or ``"linear"`` when the activation of ``self`` is one the compiled Winograd
    convolution applies itself, else None."""
    activation = self.activation
    if activation is None or activation is keras.activations.linear:
        return "linear"
    if activation is keras.activations.relu:
        return "relu"
    return None


def _conv2d_call(self, inputs):
    if is_disabled():
        return keras.layers.Conv2D.call(self, inputs)
    choice = _compiled_winograd(self, inputs)
    batch_norm = folded_batch_norm(self)
    if batch_norm is not None:
        # The batch norm after this layer, folded in (tfrcnn.accel.folding); no activation.
        kernel, bias = fold(self.kernel, self.bias if self.use_bias else None, batch_norm)
        return _either(
            choice,
            lambda: winograd_conv3x3_xla(inputs, kernel, bias),
            lambda: tf.nn.bias_add(self.convolution_op(inputs, kernel), bias),
        )
    activation = _fused_activation(self)
    if activation is None or choice is False:
        return keras.layers.Conv2D.call(self, inputs)
    # bias and relu inside the compiled computation: the output is written once
    return _either(
        choice,
        lambda: winograd_conv3x3_xla(
            inputs,
            tf.convert_to_tensor(self.kernel),
            tf.convert_to_tensor(self.bias) if self.use_bias else None,
            activation == "relu",
        ),
        lambda: keras.layers.Conv2D.call(self, inputs),
    )


def _conv2d_convolution_op(self, inputs, kernel):
    plain = keras.layers.Conv2D.convolution_op
    if is_disabled():
        return plain(self, inputs, kernel)
    if _winograd_applies(self, inputs):
        if tape_is_recording():
            return winograd_conv2d(inputs, kernel)
        return winograd_conv3x3_xla(inputs, tf.convert_to_tensor(kernel))
    if not _fast_gradient_applies(self, inputs):
        outputs = plain(self, inputs, kernel)
        if self.data_format == "channels_last" and len(inputs.shape) == 4 and not inputs.shape[0]:
            # The batch may be empty (static size None or 0): TensorFlow's oneDNN convolution
            # returns its input there on some CPUs (tfrcnn.accel.conv.with_conv_output_shape).
            outputs = with_conv_output_shape(
                outputs,
                inputs,
                self.kernel_size,
                self.strides,
                self.padding,
                self.filters,
                self.dilation_rate,
            )
        return outputs
    outputs = conv2d(inputs, kernel, strides=self.strides, padding=self.padding.upper())
    if (
        outputs.shape.is_fully_defined()
        and outputs.shape.num_elements() == 0
        and inputs.shape.is_fully_defined()
        and inputs.shape.num_elements() != 0
    ):
        # Keras's own convolution refuses an input smaller than the kernel the same way.
        raise ValueError(
            f"Conv2D {self.name!r}: empty output {outputs.shape} for input "
            f"{inputs.shape} (input smaller than the kernel / strides)."
        )
    return outputs


def _depthwise_call(self, inputs):
    plain = keras.layers.DepthwiseConv2D.call
    batch_norm = None if is_disabled() else folded_batch_norm(self)
    if batch_norm is None:
        return plain(self, inputs)
    kernel, bias = fold(
        self.kernel, self.bias if self.use_bias else None, batch_norm, depthwise=True
    )
    outputs = keras.ops.depthwise_conv(
        inputs,
        kernel,
        strides=self.strides,
        padding=self.padding,
        dilation_rate=self.dilation_rate,
        data_format=self.data_format,
    )
    return tf.nn.bias_add(outputs, bias)


def _batch_norm_call(self, inputs, training=None, mask=None):
    if is_disabled():
        return keras.layers.BatchNormalization.call(self, inputs, training=training, mask=mask)
    return batch_norm_call(self, inputs, training=training, mask=mask)


# ---------------------------------------------------------------------------------- backbone


def _inference_call(inputs, training, mask):
    """Whether a backbone call is an inference call on real tensors (batch norms then fold)."""
    return (
        not training
        and mask is None
        and tf.is_tensor(inputs)
        and not isinstance(inputs, keras.KerasTensor)
        and not tape_is_recording()
    )


def _backbone_call(self, inputs, training=None, mask=None):
    plain = type(self).call
    if is_disabled() or not _inference_call(inputs, training, mask):
        return plain(self, inputs, training=training, mask=mask)
    plan = self.__dict__.get("_fold_plan")
    if plan is None:
        plan = pair_conv_batch_norms(self)
        object.__setattr__(self, "_fold_plan", plan)  # references to layers, not state
    with folding_scope(plan):
        if not self.__dict__.get("_tfrcnn_xla", False):
            return plain(self, inputs, training=training, mask=mask)
        compiled = _COMPILED.get(self)
        if compiled is None:
            backbone = weakref.ref(self)  # the function must not keep its backbone alive
            compiled = tf.function(lambda x: plain(backbone(), x, training=False), jit_compile=True)
            _COMPILED[self] = compiled
        return list(compiled(inputs))


# ---------------------------------------------------------------------------------- ROI Align


def _roi_align_pool(self, features, boxes, box_indices):
    return accel_roi.roi_align(
        features,
        boxes,
        box_indices,
        output_size=self.output_size,
        spatial_scale=self.spatial_scale,
        sampling_ratio=self.sampling_ratio,
        aligned=self.aligned,
        method=self.method,
    )


def _multilevel_roi_align_pool(self, features, boxes, box_indices):
    return accel_roi.multilevel_roi_align(
        list(features),
        boxes,
        box_indices,
        output_size=self.output_size,
        sampling_ratio=self.sampling_ratio,
        aligned=self.aligned,
        min_level=self.min_level,
        canonical_scale=self.canonical_scale,
        canonical_level=self.canonical_level,
        method=self.method,
    )


# ------------------------------------------------------------------------------------- apply


def _unchanged(layer, cls, name):
    """``layer`` is a ``cls`` whose ``name`` method is ``cls``'s own (not a user override)."""
    return isinstance(layer, cls) and getattr(type(layer), name) is getattr(cls, name)


def apply(model):
    """Install the accelerated calls on ``model`` and every layer inside it (module docstring).

    ``model``: a Keras layer or model (built or not). Applying twice is harmless. The TensorFlow
    backend is required for any path; on another backend nothing is installed. Returns ``model``.
    """
    if keras.backend.backend() != "tensorflow":
        return model
    for layer in model._flatten_layers(include_self=True):
        if accelerated(layer):
            continue
        if _unchanged(layer, keras.layers.Conv2D, "call") and _unchanged(
            layer, keras.layers.Conv2D, "convolution_op"
        ):
            _install(layer, "call", _conv2d_call)
            _install(layer, "convolution_op", _conv2d_convolution_op)
        elif _unchanged(layer, keras.layers.DepthwiseConv2D, "call"):
            _install(layer, "call", _depthwise_call)
        elif _unchanged(layer, keras.layers.BatchNormalization, "call"):
            _install(layer, "call", _batch_norm_call)
        elif isinstance(layer, BackboneModel):
            xla = any(
                layer.name == name or layer.name.endswith("_" + name) for name in XLA_BACKBONES
            )
            compute = {
                sub.compute_dtype
                for sub in layer._flatten_layers(include_self=False)
                if isinstance(sub, keras.layers.Conv2D)
            }
            object.__setattr__(layer, "_tfrcnn_xla", xla and compute <= {"float32"})
            _install(layer, "call", _backbone_call)
        elif isinstance(layer, ROIAlign):
            _install(layer, "pool", _roi_align_pool)
        elif isinstance(layer, MultiLevelROIAlign):
            _install(layer, "pool", _multilevel_roi_align_pool)
        else:
            continue
        object.__setattr__(layer, _MARK, True)
    return model
