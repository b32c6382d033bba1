"""FLOP counts of the dense arithmetic in a traced TensorFlow graph.

Counts the floating-point operations of convolutions and matrix products (a multiply-add is 2
FLOPs), the part of a detector that is bound by the machine's arithmetic peak. Element-wise ops,
reductions, NMS and gathers are left out: they are memory-bound and small next to the products.
Backward products (``Conv2DBackpropInput``, ``Conv2DBackpropFilter`` and the depthwise ones; the
matrix products of a gradient are plain ``MatMul`` ops) are counted, so the training step of a
model can be measured from its gradient graph.

Example:
    >>> spec = tf.TensorSpec([1, 800, 800, 3], tf.float32)
    >>> flops = count_flops(tf.function(lambda x: model(x, training=False)), spec)
    >>> flops["total"] / 1e9                                          # GFLOP an image
"""

import collections

import numpy as np
import tensorflow as tf

_CONV_FORWARD = ("Conv2D", "DepthwiseConv2dNative")
_CONV_INPUT_GRAD = ("Conv2DBackpropInput", "DepthwiseConv2dNativeBackpropInput")
_CONV_FILTER_GRAD = ("Conv2DBackpropFilter", "DepthwiseConv2dNativeBackpropFilter")
_MATMUL = ("MatMul", "BatchMatMul", "BatchMatMulV2", "BatchMatMulV3")


def _static(shape, op):
    dims = shape.as_list() if shape.rank is not None else None
    if dims is None or any(d is None for d in dims):
        raise ValueError(
            f"op {op.name!r} ({op.type}) has a shape that is not fully defined: {shape}; "
            "trace with fixed input shapes (tf.TensorSpec with every dimension set)"
        )
    return dims


def _conv_flops(op):
    """2 * output elements * multiply-adds an output element, for forward and both backprops."""
    if op.type in _CONV_FORWARD:
        out = _static(op.outputs[0].shape, op)
        kernel = _static(op.inputs[1].shape, op)
    elif op.type in _CONV_INPUT_GRAD:
        # the forward output is the incoming gradient; the kernel is a real tensor
        out = _static(op.inputs[2].shape, op)
        kernel = _static(op.inputs[1].shape, op)
    else:
        # the op's output is the kernel's gradient, shaped like the kernel
        out = _static(op.inputs[2].shape, op)
        kernel = _static(op.outputs[0].shape, op)
    kh, kw, cin, mult = kernel
    depthwise = op.type.startswith("Depthwise")
    data_format = (
        op.get_attr("data_format").decode() if "data_format" in op.node_def.attr else "NHWC"
    )
    out_channels = out[1] if data_format == "NCHW" else out[3]
    positions = int(np.prod(out)) // out_channels
    if depthwise:
        # out channels = cin * mult; each output element is a kh*kw dot product
        return 2 * positions * out_channels * kh * kw
    return 2 * positions * out_channels * kh * kw * cin


def _matmul_flops(op):
    a = _static(op.inputs[0].shape, op)
    b = _static(op.inputs[1].shape, op)
    if op.type == "MatMul":
        transpose_a = op.get_attr("transpose_a")
        m, k = (a[1], a[0]) if transpose_a else (a[0], a[1])
        transpose_b = op.get_attr("transpose_b")
        n = b[0] if transpose_b else b[1]
        return 2 * m * k * n
    out = _static(op.outputs[0].shape, op)
    adj_x = op.get_attr("adj_x")
    k = a[-2] if adj_x else a[-1]
    return 2 * int(np.prod(out)) * k


def _graphs(graph):
    """The graph and the bodies of the functions it calls (e.g. under a custom gradient)."""
    yield graph
    seen = set()
    functions = getattr(graph, "_functions", {})
    for name, function in list(functions.items()):
        if name in seen:
            continue
        seen.add(name)
        body = getattr(function, "graph", None)
        if body is not None:
            yield from _graphs(body)


def count_graph_flops(graph):
    """FLOPs of the convolutions and matrix products in ``graph`` (a ``tf.Graph``).

    Returns:
        dict: ``total`` and one entry an op type (e.g. ``Conv2D``, ``Conv2DBackpropFilter``,
        ``MatMul``), plus ``ops``, the number of ops counted.

    Raises:
        ValueError: naming an op whose shapes are not fully defined.
    """
    by_type = collections.Counter()
    ops = 0
    for g in _graphs(graph):
        for op in g.get_operations():
            if op.type in _CONV_FORWARD + _CONV_INPUT_GRAD + _CONV_FILTER_GRAD:
                by_type[op.type] += _conv_flops(op)
            elif op.type in _MATMUL:
                by_type[op.type] += _matmul_flops(op)
            else:
                continue
            ops += 1
    result = dict(by_type)
    result["total"] = int(sum(by_type.values()))
    result["ops"] = ops
    return result


def count_flops(function, *input_signature):
    """FLOPs of one call of ``function`` (a ``tf.function`` or a Python callable) on inputs of the
    given fully defined ``tf.TensorSpec`` s (nested structures allowed).

    Example:
        >>> count_flops(lambda x: tf.matmul(x, x), tf.TensorSpec([8, 8]))["total"]
        1024
    """
    if not isinstance(function, tf.types.experimental.GenericFunction):
        function = tf.function(function)
    concrete = function.get_concrete_function(*input_signature)
    return count_graph_flops(concrete.graph)
