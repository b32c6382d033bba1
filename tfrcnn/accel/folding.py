"""Batch norm folded into the convolution before it, for inference calls of a backbone.

At inference a batch norm is the per-channel affine map ``y = x * a + b`` with
``a = gamma / sqrt(moving_variance + epsilon)`` and ``b = beta - moving_mean * a``. After a
convolution ``x = conv(u, K) + c`` that is ``conv(u, K * a) + (c * a + b)``: one convolution with a
rescaled kernel and a bias, which TensorFlow fuses with the activation after it, instead of a
convolution, a multiply and an add over the whole feature map.

:func:`pair_conv_batch_norms` finds the pairs of a functional model: an accelerated
``Conv2D`` or ``DepthwiseConv2D`` without activation, called once, whose output goes to exactly
one layer, an accelerated ``BatchNormalization`` over the channel axis, and is not also a model
output. The pairs fold only inside :func:`folding_scope` with that model's plan, which the
accelerated backbone opens around its own inference calls (``training`` false, no gradient tape
recording) and only where both layers compute in float32: there the convolution computes the
normalised output and the batch norm passes it through. Anywhere else (training, a gradient
tape, another model built from the same layers, mixed precision) both layers compute exactly
what they would unpaired.
"""

import contextlib
import threading

import keras
import tensorflow as tf

__all__ = [
    "FoldPlan",
    "folding_scope",
    "pair_conv_batch_norms",
    "folded_batch_norm",
    "is_folded",
    "folds_as_affine",
    "inference_affine",
    "fold",
]

_STATE = threading.local()


class FoldPlan:
    """The convolution / batch-norm pairs of one model (:func:`pair_conv_batch_norms`)."""

    def __init__(self):
        self.norm_of = {}  # id(conv) -> batch norm
        self.conv_of = {}  # id(batch norm) -> conv

    def add(self, conv, batch_norm):
        self.norm_of[id(conv)] = batch_norm
        self.conv_of[id(batch_norm)] = conv

    def __len__(self):
        return len(self.norm_of)


@contextlib.contextmanager
def folding_scope(plan):
    """Within this block (a backbone's inference call) the pairs of ``plan`` fold; an inner
    scope (a nested backbone) replaces the outer one until it ends."""
    previous = getattr(_STATE, "plan", None)
    _STATE.plan = plan
    try:
        yield
    finally:
        _STATE.plan = previous


def active_plan():
    """The :class:`FoldPlan` of the innermost :func:`folding_scope`, or None."""
    return getattr(_STATE, "plan", None)


def folded_batch_norm(conv):
    """The batch norm ``conv`` folds on this call, or None: ``conv`` is paired in the active
    plan and both layers compute in float32."""
    plan = active_plan()
    batch_norm = None if plan is None else plan.norm_of.get(id(conv))
    if (
        batch_norm is None
        or conv.compute_dtype != "float32"
        or batch_norm.compute_dtype != "float32"
    ):
        return None
    return batch_norm


def is_folded(batch_norm):
    """Whether ``batch_norm`` passes its input through on this call (its convolution folded it)."""
    plan = active_plan()
    conv = None if plan is None else plan.conv_of.get(id(batch_norm))
    return conv is not None and folded_batch_norm(conv) is batch_norm


def _producer(tensor):
    history = getattr(tensor, "_keras_history", None)
    return None if history is None else history.operation


def _output_ids(model):
    """ids of the output tensors of ``model`` and of every functional model nested in it."""
    ids = set()
    for layer in model._flatten_layers(include_self=True):
        if isinstance(layer, keras.Model) and hasattr(layer, "_outputs_struct"):
            ids.update(id(t) for t in tf.nest.flatten(layer.outputs))
    return ids


def _accelerated(layer):
    """Whether ``layer`` runs an accelerated call (:func:`tfrcnn.accel.apply`)."""
    return layer.__dict__.get("_tfrcnn_accelerated", False)


def folds_as_affine(batch_norm, inputs):
    """Whether the inference of ``batch_norm`` on ``inputs`` (a tensor or Keras tensor) is the
    channel affine map of :func:`inference_affine`, which a convolution before it can absorb."""
    axis = batch_norm.axis if batch_norm.axis >= 0 else batch_norm.axis + len(inputs.shape)
    return (
        len(inputs.shape) == 4
        and axis == 3
        and not batch_norm.renorm
        and not batch_norm.synchronized
    )


def inference_affine(batch_norm):
    """``(a, b)``, float32 ``[C]``: the inference of ``batch_norm`` maps ``x`` to ``x * a + b``."""
    channels = batch_norm.moving_mean.shape[-1]
    gamma = tf.cast(batch_norm.gamma, tf.float32) if batch_norm.scale else tf.ones([channels])
    beta = tf.cast(batch_norm.beta, tf.float32) if batch_norm.center else tf.zeros([channels])
    scale = gamma * tf.math.rsqrt(
        tf.cast(batch_norm.moving_variance, tf.float32) + batch_norm.epsilon
    )
    return scale, beta - tf.cast(batch_norm.moving_mean, tf.float32) * scale


def pair_conv_batch_norms(model):
    """The :class:`FoldPlan` of ``model`` (a functional model; nested models included): every
    accelerated ``Conv2D`` / ``DepthwiseConv2D`` without activation, called once, whose output
    goes only to an accelerated ``BatchNormalization`` over the channel axis (not also to a model
    output), paired with that batch norm."""
    plan = FoldPlan()
    outputs = _output_ids(model)
    for layer in model._flatten_layers(include_self=False):
        if (
            not isinstance(layer, keras.layers.BatchNormalization)
            or not _accelerated(layer)
            or len(layer._inbound_nodes) != 1
        ):
            continue
        node = layer._inbound_nodes[0]
        if len(node.input_tensors) != 1 or not folds_as_affine(layer, node.input_tensors[0]):
            continue
        conv = _producer(node.input_tensors[0])
        if (
            isinstance(conv, (keras.layers.Conv2D, keras.layers.DepthwiseConv2D))
            and _accelerated(conv)
            and len(conv._inbound_nodes) == 1
            and len(conv._outbound_nodes) == 1
            and id(node.input_tensors[0]) not in outputs
            and conv.data_format == "channels_last"
            and getattr(conv.activation, "__name__", "") == "linear"
        ):
            plan.add(conv, layer)
    return plan


def fold(kernel, bias, batch_norm, depthwise=False):
    """``(kernel * a, bias * a + b)`` for the batch norm's ``a``, ``b`` (module docstring); the
    kernel is ``[kh, kw, in, out]``, or ``[kh, kw, in, multiplier]`` when ``depthwise``."""
    scale, offset = inference_affine(batch_norm)
    kernel = tf.convert_to_tensor(kernel)
    if depthwise:
        scaled = kernel * tf.reshape(scale, [kernel.shape[2], kernel.shape[3]])
    else:
        scaled = kernel * scale
    if bias is not None:
        offset = offset + tf.convert_to_tensor(bias) * scale
    return scaled, offset
