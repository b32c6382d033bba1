"""2-D convolution whose backward pass avoids TensorFlow's slow CPU backprop kernels.

:func:`conv2d` computes exactly ``tf.nn.conv2d(x, kernel, strides, padding)`` (NHWC, one group,
no dilation) and attaches a custom gradient built from the kernels that are fast on a CPU: the
forward convolution (oneDNN) and ``tf.matmul``. TensorFlow's own ``Conv2DBackpropInput`` and
``Conv2DBackpropFilter`` are kept where they measured faster.

Shapes: ``x`` is ``[N, H, W, C]``, ``kernel`` is ``[kh, kw, C, K]``, the output and the upstream
gradient ``dy`` are ``[N, Ho, Wo, K]``. ``N``, ``H`` and ``W`` may be unknown (``None``) inside
``tf.function``; ``kh``, ``kw``, ``C`` and ``K`` must be static.

Gradient paths (the rule :func:`gradient_plan` applies):

- input gradient, stride 1 (any kernel size, SAME or VALID): a forward convolution of ``dy`` with
  the kernel flipped in both spatial axes and its in/out channel axes swapped, padded with
  ``(kh - 1 - pad_top, kh - 1 - pad_bottom)`` rows and the same for columns (``"SAME"`` when that
  padding is symmetric, explicit padding otherwise; no copy of ``dy``). Method name
  ``"forward_conv"``.
- input gradient, stride > 1: ``tf.raw_ops.Conv2DBackpropInput``, as TensorFlow's own gradient
  (``"tf"``).
- filter gradient, 1x1 kernel, stride 1: one matmul ``x_rows^T @ dy_rows`` over the ``N*H*W``
  positions (``"matmul"``).
- filter gradient, kh x kw kernel, stride 1: ``dW[i, j] = sum_p xpad[p + (i, j)] dy[p]``, one matmul
  a kernel tap (``"shifted_matmul"``). ``x`` is padded once (as the forward pass pads it) and
  flattened to rows of ``C``; ``dy`` is padded with zeros to the padded input's width and height,
  so that the tap ``(i, j)`` is the contiguous row range that starts ``i * Wp + j`` rows later (the
  wrapped-around rows meet zeros of ``dy``): no im2col buffer, each tap a row-range slice. The
  padded positions cost ``Hp*Wp / (Ho*Wo)`` times the useful work, so this path is used only
  while that area ratio is at most :data:`SHIFTED_MATMUL_MAX_AREA_RATIO` (maps of ~17x17 and
  larger for 3x3); smaller maps (e.g. the 7x7 / 14x14 ROI heads) and strides > 1 use
  ``tf.raw_ops.Conv2DBackpropFilter`` (``"tf"``). With unknown ``H``/``W`` the ratio is checked
  at run time with a ``tf.cond``.

Half types (bfloat16 / float16, ``x`` and ``kernel`` both in that dtype): the forward convolutions
run in the half type, like the forward pass; the filter-gradient matmuls run in bfloat16 for
bfloat16 inputs (oneDNN accumulates in float32 and rounds each ``dW`` entry once, a relative error
of about 2e-3, as in other frameworks' bf16 training) and in float32 for float16 inputs (whose
range a sum over all positions could exceed); the ``"tf"`` paths cast to float32, because
TensorFlow's CPU backprop kernels for half types are 10-30x slower than its float32 ones. Gradients are returned in
the dtypes of ``x`` and ``kernel``. So for half types every configuration has a fast gradient.

Second derivatives (a gradient of this gradient) are not supported and not tested.

What these paths buy, and the command that measures them: docs/performance.md, "Convolution gradients".
"""

import collections

import tensorflow as tf

from tfrcnn.accel.winograd import (
    winograd_conv3x3_bands,
    winograd_conv3x3_xla,
    winograd_filter_gradient_bands,
)

__all__ = [
    "conv2d",
    "winograd_conv2d",
    "conv_output_shape",
    "with_conv_output_shape",
    "gradient_plan",
    "has_fast_gradient",
    "GradientPlan",
    "SHIFTED_MATMUL_MAX_AREA_RATIO",
]

#: The largest padded-input area / output area ``Hp*Wp / (Ho*Wo)`` for which the filter gradient
#: of a stride-1 kh x kw convolution uses the shifted matmuls (see the module docstring).
SHIFTED_MATMUL_MAX_AREA_RATIO = 1.25

_HALF_DTYPES = (tf.bfloat16, tf.float16)

GradientPlan = collections.namedtuple("GradientPlan", ["input_method", "filter_method"])
GradientPlan.__doc__ = """How :func:`conv2d` computes its two gradients.

``input_method``: ``"forward_conv"`` or ``"tf"``. ``filter_method``: ``"matmul"`` (1x1),
``"shifted_matmul"``, ``"auto"`` (shifted matmuls or TF's, chosen at run time from the area ratio
because the spatial size is unknown) or ``"tf"``.
"""


def _spatial_pair(value, name):
    """``value`` as a pair of ints: an int, a pair, or a 4-list ``[1, h, w, 1]`` (strides)."""
    try:
        values = [int(v) for v in value]
    except TypeError:  # a scalar (Python or NumPy int)
        return int(value), int(value)
    if len(values) == 2:
        return values[0], values[1]
    if len(values) == 4 and values[0] == 1 and values[3] == 1:
        return values[1], values[2]
    raise ValueError(f"{name} must be an int, a pair or [1, h, w, 1], got {value!r}")


def _normalize_padding(padding):
    if not isinstance(padding, str) or padding.upper() not in ("SAME", "VALID"):
        raise ValueError(f"padding must be 'SAME' or 'VALID', got {padding!r}")
    return padding.upper()


def _same_pads(kernel_size):
    """(before, after) padding of a stride-1 SAME convolution along one axis."""
    before = (kernel_size - 1) // 2
    return before, kernel_size - 1 - before


def _stride1_pads(kh, kw, padding):
    """((top, bottom), (left, right)) input padding of a stride-1 convolution."""
    if padding == "VALID":
        return (0, 0), (0, 0)
    return _same_pads(kh), _same_pads(kw)


def _area_ratio(kh, kw, padding, height, width):
    """``Hp*Wp / (Ho*Wo)`` of a stride-1 convolution, for static or tensor ``height``/``width``."""
    (top, bottom), (left, right) = _stride1_pads(kh, kw, padding)
    padded = (height + top + bottom) * (width + left + right)
    out = (height + top + bottom - kh + 1) * (width + left + right - kw + 1)
    return padded / out


def gradient_plan(kernel_size, strides=1, padding="SAME", spatial_shape=None):
    """The gradient paths :func:`conv2d` takes for a configuration.

    Args:
        kernel_size: int or ``(kh, kw)``.
        strides: int, ``(sh, sw)`` or ``[1, sh, sw, 1]``.
        padding: ``"SAME"`` or ``"VALID"`` (any case).
        spatial_shape: ``(H, W)`` of the input, entries may be ``None``; ``None`` means unknown.

    Returns:
        A :class:`GradientPlan`. It does not depend on the dtype: for half types the ``"tf"`` paths
        run TensorFlow's kernels in float32 (see the module docstring).
    """
    kh, kw = _spatial_pair(kernel_size, "kernel_size")
    sh, sw = _spatial_pair(strides, "strides")
    padding = _normalize_padding(padding)
    if (sh, sw) != (1, 1):
        return GradientPlan("tf", "tf")
    if (kh, kw) == (1, 1):
        return GradientPlan("forward_conv", "matmul")
    height, width = spatial_shape if spatial_shape is not None else (None, None)
    if height is None or width is None:
        return GradientPlan("forward_conv", "auto")
    if _area_ratio(kh, kw, padding, height, width) <= SHIFTED_MATMUL_MAX_AREA_RATIO:
        return GradientPlan("forward_conv", "shifted_matmul")
    return GradientPlan("forward_conv", "tf")


def has_fast_gradient(kernel_size, strides=1, padding="SAME", dtype=tf.float32):
    """Whether :func:`conv2d` has a faster gradient than ``tf.nn.conv2d`` for a configuration.

    True for stride 1 (the input gradient always takes the forward-conv path) and for half types
    (whose TF backprop kernels are replaced by the float32 ones); False for float32 / float64 with
    strides > 1, where :func:`conv2d` would only add a ``custom_gradient`` wrapper around
    TensorFlow's own gradient kernels.
    """
    plan = gradient_plan(kernel_size, strides, padding)
    return plan != GradientPlan("tf", "tf") or tf.as_dtype(dtype) in _HALF_DTYPES


def _output_size(size, kernel, stride, dilation, padding):
    """Output length of a convolution along one axis (``size`` an int or an int32 tensor)."""
    if padding == "SAME":
        return (size + stride - 1) // stride
    effective = (kernel - 1) * dilation + 1
    out = (size - effective + stride) // stride
    return max(out, 0) if isinstance(out, int) else tf.maximum(out, 0)


def conv_output_shape(x, kernel_size, strides, padding, filters, dilation=1):
    """The ``[N, Ho, Wo, filters]`` shape of a convolution of ``x`` (NHWC): a list of Python ints
    where ``x``'s static shape gives them and scalar int32 tensors elsewhere."""
    kh, kw = _spatial_pair(kernel_size, "kernel_size")
    sh, sw = _spatial_pair(strides, "strides")
    dh, dw = _spatial_pair(dilation, "dilation")
    padding = _normalize_padding(padding)
    dynamic = None
    dims = []
    for axis in range(3):
        if x.shape[axis] is not None:
            dims.append(int(x.shape[axis]))
        else:
            dynamic = tf.shape(x) if dynamic is None else dynamic
            dims.append(dynamic[axis])
    return [
        dims[0],
        _output_size(dims[1], kh, sh, dh, padding),
        _output_size(dims[2], kw, sw, dw, padding),
        int(filters),
    ]


def with_conv_output_shape(y, x, kernel_size, strides, padding, filters, dilation=1):
    """``y``, the result of a convolution of ``x``, reshaped to the shape it must have.

    TensorFlow 2.21's oneDNN convolution returns its *input* unchanged when the batch is empty
    (``[0, 8, 8, 5]`` convolved to 6 channels comes back as ``[0, 8, 8, 5]``; seen on an AMD Zen 4
    CPU with AVX-512, not on AVX2 machines), which breaks every shape after it. The
    reshape of an empty tensor to the right empty shape repairs that; for a non-empty batch it is
    a no-op (no copy). Skipped when ``x``'s static shape proves the batch is not empty.
    """
    if x.shape[:3].is_fully_defined() and all(int(d) > 0 for d in x.shape[:3]):
        return y
    shape = conv_output_shape(x, kernel_size, strides, padding, filters, dilation)
    static = [d if isinstance(d, int) else None for d in shape]
    y = tf.reshape(y, tf.stack([tf.cast(d, tf.int32) for d in shape]))
    y.set_shape(static)
    return y


def _transposed_kernel(kernel):
    """``kernel[::-1, ::-1]`` with in/out channels swapped: ``[kh, kw, C, K] -> [kh, kw, K, C]``.

    Reversing the flattened ``kh*kw`` axis flips both spatial axes at once; this is several times
    faster on CPU than a negative-stride slice followed by a 4-D transpose.
    """
    kh, kw, c, k = kernel.shape
    taps = tf.reverse(tf.reshape(kernel, [kh * kw, c, k]), axis=[0])
    return tf.reshape(tf.linalg.matrix_transpose(taps), [kh, kw, k, c])


def _input_grad_forward_conv(dy, kernel, padding):
    """Input gradient of a stride-1 convolution as a forward convolution of ``dy``."""
    kh, kw = kernel.shape[0], kernel.shape[1]
    (top, bottom), (left, right) = _stride1_pads(kh, kw, padding)
    dy_pads = [[kh - 1 - top, kh - 1 - bottom], [kw - 1 - left, kw - 1 - right]]
    if padding == "SAME" and dy_pads[0][0] == dy_pads[0][1] and dy_pads[1][0] == dy_pads[1][1]:
        conv_padding = "SAME"
    else:
        conv_padding = [[0, 0], dy_pads[0], dy_pads[1], [0, 0]]
    return tf.nn.conv2d(dy, _transposed_kernel(kernel), strides=1, padding=conv_padding)


def _filter_grad_matmul(x, dy):
    """Filter gradient of a 1x1 stride-1 convolution: ``[1, 1, C, K]``."""
    c, k = x.shape[-1], dy.shape[-1]
    grad = tf.matmul(tf.reshape(x, [-1, c]), tf.reshape(dy, [-1, k]), transpose_a=True)
    return tf.reshape(grad, [1, 1, c, k])


def _filter_grad_shifted_matmul(x, dy, kh, kw, padding):
    """Filter gradient of a stride-1 kh x kw convolution, one matmul a kernel tap.

    With ``xpad`` the padded input ``[N, Hp, Wp, C]`` flattened to rows and ``dy`` zero-padded to
    ``[N, Hp, Wp, K]`` (its last ``kh - 1`` rows and ``kw - 1`` columns zero), the tap ``(i, j)`` is
    ``xrows[o : o + L]^T @ dyrows[:L]`` with ``o = i * Wp + j``: position ``p`` of ``dy`` meets
    input row ``p + o``, which is pixel ``(h + i, w + j)`` of the same image whenever ``dy`` at
    ``p`` is not a padding zero. ``L = N*Hp*Wp - (kh - 1) * Wp - (kw - 1)`` keeps every slice in
    range and still covers the last non-zero ``dy`` row.
    """
    c, k = x.shape[-1], dy.shape[-1]
    (top, bottom), (left, right) = _stride1_pads(kh, kw, padding)
    if top or bottom or left or right:
        x = tf.pad(x, [[0, 0], [top, bottom], [left, right], [0, 0]])
    dy = tf.pad(dy, [[0, 0], [0, kh - 1], [0, kw - 1], [0, 0]])
    x_shape = tf.shape(x)
    padded_width = x_shape[2]
    rows = x_shape[0] * x_shape[1] * padded_width
    # max(.., 0) and the min() below keep an empty batch valid (all slices empty -> zeros).
    length = tf.maximum(rows - (kh - 1) * padded_width - (kw - 1), 0)
    x_rows = tf.reshape(x, [-1, c])
    dy_rows = tf.slice(tf.reshape(dy, [-1, k]), [0, 0], tf.stack([length, k]))
    taps = []
    for i in range(kh):
        for j in range(kw):
            begin = tf.minimum(i * padded_width + j, rows - length)
            x_tap = tf.slice(x_rows, tf.stack([begin, 0]), tf.stack([length, c]))
            taps.append(tf.matmul(x_tap, dy_rows, transpose_a=True))
    return tf.reshape(tf.stack(taps), [kh, kw, c, k])


def _filter_grad_tf(x, dy, kernel_shape, strides, padding):
    return tf.raw_ops.Conv2DBackpropFilter(
        input=x,
        filter_sizes=kernel_shape,
        out_backprop=dy,
        strides=[1, *strides, 1],
        padding=padding,
    )


def _input_grad_tf(x_shape, kernel, dy, strides, padding):
    return tf.raw_ops.Conv2DBackpropInput(
        input_sizes=x_shape,
        filter=kernel,
        out_backprop=dy,
        strides=[1, *strides, 1],
        padding=padding,
    )


def conv2d(x, kernel, strides=1, padding="SAME"):
    """``tf.nn.conv2d(x, kernel, strides, padding)`` with a faster CPU gradient.

    Args:
        x: ``[N, H, W, C]`` float tensor (NHWC); ``N``, ``H``, ``W`` may be unknown.
        kernel: ``[kh, kw, C, K]`` tensor (or variable) of ``x``'s dtype, fully static shape.
        strides: int, ``(sh, sw)`` or ``[1, sh, sw, 1]``.
        padding: ``"SAME"`` or ``"VALID"``.

    Returns:
        ``[N, Ho, Wo, K]``, identical to ``tf.nn.conv2d``. Its gradients with respect to ``x``
        and ``kernel`` equal TensorFlow's up to float rounding; the paths are described in the
        module docstring and reported by :func:`gradient_plan`. One group, no dilation; first
        derivatives only.
    """
    x = tf.convert_to_tensor(x)
    kernel = tf.convert_to_tensor(kernel, dtype_hint=x.dtype)
    if x.shape.rank != 4 or kernel.shape.rank != 4 or not kernel.shape.is_fully_defined():
        raise ValueError(
            f"conv2d needs x [N, H, W, C] and a static kernel [kh, kw, C, K], got "
            f"{x.shape} and {kernel.shape}"
        )
    if x.shape[-1] is None or x.shape[-1] != kernel.shape[2]:
        raise ValueError(
            f"x channels {x.shape[-1]} must be static and equal the kernel's input "
            f"channels {kernel.shape[2]}"
        )
    if x.dtype != kernel.dtype:
        raise TypeError(f"x ({x.dtype.name}) and kernel ({kernel.dtype.name}) dtypes differ")
    stride_pair = _spatial_pair(strides, "strides")
    padding = _normalize_padding(padding)
    kh, kw = kernel.shape[0], kernel.shape[1]
    plan = gradient_plan((kh, kw), stride_pair, padding, (x.shape[1], x.shape[2]))
    dtype = x.dtype
    if plan == GradientPlan("tf", "tf") and dtype not in _HALF_DTYPES:
        # Nothing to gain (float32 strided): TensorFlow's own op and gradient, no wrapper.
        return with_conv_output_shape(
            tf.nn.conv2d(x, kernel, strides=[1, *stride_pair, 1], padding=padding),
            x,
            (kh, kw),
            stride_pair,
            padding,
            kernel.shape[3],
        )
    accumulate = tf.float32 if dtype in _HALF_DTYPES else dtype
    # The filter-gradient matmuls: bfloat16 operands where the inputs are bfloat16 (oneDNN
    # accumulates them in float32 and rounds the result once), float32 for float16 (a float16
    # result of a sum over all positions could overflow).
    matmul_dtype = tf.bfloat16 if dtype == tf.bfloat16 else accumulate

    @tf.custom_gradient
    def _conv(x, kernel):
        y = with_conv_output_shape(
            tf.nn.conv2d(x, kernel, strides=[1, *stride_pair, 1], padding=padding),
            x,
            (kh, kw),
            stride_pair,
            padding,
            kernel.shape[3],
        )

        def grad(dy):
            dy = tf.convert_to_tensor(dy, dtype=dtype)
            if plan.input_method == "forward_conv":
                dx = _input_grad_forward_conv(dy, kernel, padding)
                if not (x.shape.is_fully_defined() and x.shape.num_elements() > 0):
                    dx = tf.reshape(dx, tf.shape(x))  # the empty-batch repair, see above
            else:
                dx = _input_grad_tf(
                    tf.shape(x),
                    tf.cast(kernel, accumulate),
                    tf.cast(dy, accumulate),
                    stride_pair,
                    padding,
                )
            kernel_shape = kernel.shape.as_list()

            def tf_filter_grad():
                return tf.cast(
                    _filter_grad_tf(
                        tf.cast(x, accumulate),
                        tf.cast(dy, accumulate),
                        kernel_shape,
                        stride_pair,
                        padding,
                    ),
                    dtype,
                )

            def shifted_filter_grad():
                return tf.cast(
                    _filter_grad_shifted_matmul(
                        tf.cast(x, matmul_dtype), tf.cast(dy, matmul_dtype), kh, kw, padding
                    ),
                    dtype,
                )

            if plan.filter_method == "matmul":
                dw = _filter_grad_matmul(tf.cast(x, matmul_dtype), tf.cast(dy, matmul_dtype))
            elif plan.filter_method == "shifted_matmul":
                dw = shifted_filter_grad()
            elif plan.filter_method == "auto":
                x_shape = tf.shape(x)
                ratio = _area_ratio(
                    kh,
                    kw,
                    padding,
                    tf.cast(x_shape[1], tf.float32),
                    tf.cast(x_shape[2], tf.float32),
                )
                dw = tf.cond(
                    ratio <= SHIFTED_MATMUL_MAX_AREA_RATIO, shifted_filter_grad, tf_filter_grad
                )
            else:
                dw = tf_filter_grad()
            return tf.cast(dx, dtype), tf.cast(dw, dtype)

        return y, grad

    return _conv(x, kernel)


def _winograd_input_gradient(dy, kernel):
    """The input gradient of :func:`winograd_conv2d`: the Winograd convolution of ``dy`` with the
    flipped, channel-swapped kernel, compiled by XLA (large maps one band at a time:
    :func:`tfrcnn.accel.winograd.winograd_conv3x3_bands`)."""
    return winograd_conv3x3_bands(dy, _transposed_kernel(kernel))


def _winograd_backward(x, kernel, dy):
    """Both gradients of :func:`winograd_conv2d`, the filter gradient's computations after the
    input gradient's, so that the work buffers of only one are allocated at a time
    (docs/performance.md, "Training memory")."""
    dx = _winograd_input_gradient(dy, kernel)
    with tf.control_dependencies([dx]):
        dw = winograd_filter_gradient_bands(x, dy)
    return dx, dw


def winograd_conv2d(x, kernel):
    """A float32 3x3 stride-1 SAME convolution by Winograd's F(4x4, 3x3) under XLA
    (:func:`tfrcnn.accel.winograd.winograd_conv3x3_xla`), with a gradient of the same kind: the input
    gradient is the Winograd convolution of ``dy`` with the flipped, channel-swapped kernel (the
    forward-conv rule above), the filter gradient goes through the transform
    (:func:`tfrcnn.accel.winograd.winograd_filter_gradient`); each compiled by XLA.

    Shapes as :func:`conv2d`, with static ``H``, ``W`` and ``C``. Input and filter gradients
    within about 1e-5 of the output's scale of the float64 result.
    """
    x = tf.convert_to_tensor(x)
    kernel = tf.convert_to_tensor(kernel, dtype_hint=x.dtype)
    if tuple(kernel.shape[:2]) != (3, 3) or x.dtype != tf.float32 or kernel.dtype != tf.float32:
        raise ValueError(
            f"winograd_conv2d needs float32 x and a float32 [3, 3, C, K] kernel, got "
            f"{x.dtype.name} {x.shape} and {kernel.dtype.name} {kernel.shape}"
        )

    @tf.custom_gradient
    def _conv(x, kernel):
        y = winograd_conv3x3_xla(x, kernel)

        def grad(dy):
            return _winograd_backward(x, kernel, tf.convert_to_tensor(dy, dtype=x.dtype))

        return y, grad

    return _conv(x, kernel)
