"""Batch norm folded into the convolution before it, for inference calls of a backbone.

At inference a batch norm is the per-channel affine map ``y = x * a + b`` with
``a = gamma / sqrt(moving_variance + epsilon)`` and ``b = beta - moving_mean * a``. After a
convolution ``x = conv(u, K) + c`` that is ``conv(u, K * a) + (c * a + b)``: one convolution with a
rescaled kernel and a bias, which TensorFlow fuses into a single kernel (with the activation after
it), instead of a convolution, a multiply and an add over the whole feature map. On
``mobilenet_v3_fpn`` at 800x800 (46 convolution + batch-norm pairs, graph mode with oneDNN, 2 AVX2
cores) the backbone's inference call went from 0.157 to 0.131 s at batch 1 and from 0.342 to
0.250 s at batch 2 (session 9, folded against unfolded, alternating in one process).

:func:`pair_conv_batch_norms` finds the pairs of a functional model: a ``tfrcnn`` ``Conv2D`` or
``DepthwiseConv2D`` without activation, called once, whose output goes to exactly one layer, a
``tfrcnn`` ``BatchNormalization`` over the channel axis, and is not also a model output. The
pairs fold only inside :func:`folding_scope` with that model's plan, which
:class:`tfrcnn.backbones.common.BackboneModel` opens around its own inference calls
(``training`` false, no gradient tape recording) and only where both layers compute in float32:
there the convolution computes the normalised output and the batch norm passes it through.
Anywhere else (training, a gradient tape, another model built from the same layers, mixed
precision) both layers compute exactly what they would unpaired, so a convolution's output is
never silently normalised.
"""

import contextlib
import threading

import keras
import tensorflow as tf

__all__ = ["FoldPlan", "folding_scope", "pair_conv_batch_norms", "folded_batch_norm", "is_folded"]

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
    if (batch_norm is None or conv.compute_dtype != "float32"
            or batch_norm.compute_dtype != "float32"):
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


def pair_conv_batch_norms(model):
    """The :class:`FoldPlan` of ``model`` (a functional model; nested models included): every
    ``tfrcnn`` ``Conv2D`` / ``DepthwiseConv2D`` without activation, called once, whose output goes
    only to a ``tfrcnn`` ``BatchNormalization`` over the channel axis (not also to a model
    output), paired with that batch norm."""
    from tfrcnn.layers.batch_norm import BatchNormalization
    from tfrcnn.layers.conv import Conv2D, DepthwiseConv2D

    plan = FoldPlan()
    outputs = _output_ids(model)
    for layer in model._flatten_layers(include_self=False):
        if not isinstance(layer, BatchNormalization) or len(layer._inbound_nodes) != 1:
            continue
        node = layer._inbound_nodes[0]
        if len(node.input_tensors) != 1 or not layer.folds_as_affine(node.input_tensors[0]):
            continue
        conv = _producer(node.input_tensors[0])
        if (isinstance(conv, (Conv2D, DepthwiseConv2D))
                and len(conv._inbound_nodes) == 1 and len(conv._outbound_nodes) == 1
                and id(node.input_tensors[0]) not in outputs
                and conv.data_format == "channels_last"
                and getattr(conv.activation, "__name__", "") == "linear"):
            plan.add(conv, layer)
    return plan


def fold(kernel, bias, batch_norm, depthwise=False):
    """``(kernel * a, bias * a + b)`` for the batch norm's ``a``, ``b`` (module docstring); the
    kernel is ``[kh, kw, in, out]``, or ``[kh, kw, in, multiplier]`` when ``depthwise``."""
    scale, offset = batch_norm.inference_affine()
    kernel = tf.convert_to_tensor(kernel)
    if depthwise:
        scaled = kernel * tf.reshape(scale, [kernel.shape[2], kernel.shape[3]])
    else:
        scaled = kernel * scale
    if bias is not None:
        offset = offset + tf.convert_to_tensor(bias) * scale
    return scaled, offset
