"""Layout changes from torchvision's tensors to tfrcnn's Keras weights (numpy in, numpy out).

Shapes: ``O`` output channels / units, ``I`` input channels / units, ``kh x kw`` kernel, ``A`` anchors
a location, ``C x H x W`` a pooled ROI map, ``N`` user classes.

- convolutions: torch ``[O, I, kh, kw]`` -> Keras ``[kh, kw, I, O]``; depthwise: torch ``[C, 1, kh, kw]``
  -> Keras ``DepthwiseConv2D`` ``[kh, kw, C, 1]``;
- dense layers: torch ``[O, I]`` (``y = W x``) -> Keras ``[I, O]`` (``y = x K``);
- the first fc layer after ROI pooling: torch flattens the pooled ``[C, H, W]`` map channel first
  (input ``c * H * W + y * W + x``), tfrcnn flattens ``[H, W, C]`` channel last
  (``(y * W + x) * C + c``), so the kernel's rows are permuted;
- batch norm: ``weight, bias, running_mean, running_var`` -> Keras ``gamma, beta, moving_mean,
  moving_variance`` (the epsilon is a setting of the layer, not a weight);
- RPN objectness: torchvision has one logit ``l`` an anchor (``sigmoid(l)``), tfrcnn two (background,
  object) under a softmax; ``softmax([0, l])[1] == sigmoid(l)``, so the background channel gets zero
  weights and bias;
- box deltas: torchvision ``(dx, dy, dw, dh)``, tfrcnn ``(dy, dx, dh, dw)``: each group of four is
  reordered ``[1, 0, 3, 2]`` (RPN: per anchor; second stage: per class);
- second-stage outputs: torchvision row 0 is background and rows ``1 .. classes - 1`` the classes
  (for COCO the category ids, see :mod:`tfrcnn.weights.registry`); tfrcnn's logit 0 is background
  and user class ``i`` takes torchvision row ``rows[i]``; the box regressor has no background rows.
"""

import numpy as np

DELTA_ORDER = np.array([1, 0, 3, 2])  # torchvision (dx, dy, dw, dh) -> tfrcnn (dy, dx, dh, dw)


def _check(array, ndim, name):
    array = np.asarray(array)
    if array.ndim != ndim:
        raise ValueError(f"{name}: expected a {ndim}-D tensor, got shape {array.shape}")
    return array


def conv_kernel(weight, name="conv"):
    """torch ``[O, I, kh, kw]`` -> Keras ``[kh, kw, I, O]``."""
    return np.ascontiguousarray(_check(weight, 4, name).transpose(2, 3, 1, 0))


def depthwise_kernel(weight, name="depthwise conv"):
    """torch depthwise ``[C, 1, kh, kw]`` -> Keras ``DepthwiseConv2D`` ``[kh, kw, C, 1]``."""
    weight = _check(weight, 4, name)
    if weight.shape[1] != 1:
        raise ValueError(
            f"{name}: a depthwise kernel has 1 input channel a group, got shape {weight.shape}"
        )
    return np.ascontiguousarray(weight.transpose(2, 3, 0, 1))


def dense_kernel(weight, name="dense"):
    """torch ``[O, I]`` -> Keras ``[I, O]``."""
    return np.ascontiguousarray(_check(weight, 2, name).T)


def flatten_dense_kernel(weight, channels, height, width, name="fc6"):
    """torch ``[O, C * H * W]`` over a channel-first flatten -> Keras ``[H * W * C, O]`` over a
    channel-last flatten of the same pooled map."""
    weight = _check(weight, 2, name)
    if weight.shape[1] != channels * height * width:
        raise ValueError(
            f"{name}: {weight.shape[1]} inputs, but the pooled map is {channels} x "
            f"{height} x {width} = {channels * height * width}"
        )
    out = weight.shape[0]
    return np.ascontiguousarray(
        weight.reshape(out, channels, height, width).transpose(2, 3, 1, 0).reshape(-1, out)
    )


def batch_norm(weight, bias, mean, var):
    """torch batch norm tensors -> Keras ``[gamma, beta, moving_mean, moving_variance]``."""
    return [np.asarray(a) for a in (weight, bias, mean, var)]


def rpn_objectness(weight, bias):
    """torchvision ``cls_logits`` (``[A, I, 1, 1]``, ``[A]``, sigmoid) -> tfrcnn's ``[1, 1, I, 2A]``
    kernel and ``[2A]`` bias (channel ``2a`` background = 0, ``2a + 1`` object = the logit)."""
    kernel = conv_kernel(weight, "rpn cls_logits")
    num_anchors = kernel.shape[-1]
    out_kernel = np.zeros(kernel.shape[:-1] + (2 * num_anchors,), kernel.dtype)
    out_kernel[..., 1::2] = kernel
    out_bias = np.zeros((2 * num_anchors,), np.asarray(bias).dtype)
    out_bias[1::2] = bias
    return out_kernel, out_bias


def _reorder_deltas(columns):
    """Reorder the last axis (groups of four) from (dx, dy, dw, dh) to (dy, dx, dh, dw)."""
    size = columns.shape[-1]
    if size % 4:
        raise ValueError(f"box deltas: {size} channels is not a multiple of 4")
    index = (np.arange(size // 4)[:, None] * 4 + DELTA_ORDER[None, :]).reshape(-1)
    return np.ascontiguousarray(columns[..., index])


def rpn_deltas(weight, bias):
    """torchvision ``bbox_pred`` ``[4A, I, 1, 1]`` -> tfrcnn ``[1, 1, I, 4A]`` with each anchor's
    four channels reordered to ``(dy, dx, dh, dw)``."""
    return _reorder_deltas(conv_kernel(weight, "rpn bbox_pred")), _reorder_deltas(np.asarray(bias))


def class_logits(weight, bias, rows):
    """torchvision ``cls_score`` ``[classes, I]`` -> tfrcnn ``[I, N + 1]``: background (row 0), then
    row ``rows[i]`` for user class ``i``."""
    weight = _check(weight, 2, "cls_score")
    keep = np.concatenate([[0], np.asarray(rows, np.int64)])
    _check_rows(keep, weight.shape[0], "cls_score")
    return dense_kernel(weight[keep]), np.asarray(bias)[keep]


def box_deltas(weight, bias, rows):
    """torchvision ``bbox_pred`` ``[classes * 4, I]`` -> tfrcnn ``[I, N * 4]``: the four rows of
    torchvision class ``rows[i]`` for user class ``i``, reordered to ``(dy, dx, dh, dw)``."""
    weight = _check(weight, 2, "bbox_pred")
    rows = np.asarray(rows, np.int64)
    _check_rows(rows, weight.shape[0] // 4, "bbox_pred")
    index = (rows[:, None] * 4 + DELTA_ORDER[None, :]).reshape(-1)
    return dense_kernel(weight[index]), np.asarray(bias)[index]


def _check_rows(rows, available, name):
    if rows.size and (rows.min() < 0 or rows.max() >= available):
        raise ValueError(
            f"{name}: class rows {rows.min()}..{rows.max()} asked of a tensor with "
            f"{available} classes"
        )
