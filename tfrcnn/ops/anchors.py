"""Anchor grids for the region proposal network.

Shape shorthand: ``B`` images, ``H, W`` the feature map height and width, ``A`` anchors a location
(``A = len(aspect_ratios) * len(scales)``), ``N`` anchors in all.

ANCHOR ORDER. At each location the ``A`` anchors are ordered **aspect ratio outer, scale inner**:
anchor ``a = ratio_index * len(scales) + scale_index`` (the order of py-faster-rcnn). For scales
``(128, 256, 512)`` and ratios ``(0.5, 1, 2)``: a=0 is (0.5, 128), a=1 (0.5, 256), a=2 (0.5, 512),
a=3 (1, 128), ... The RPN head's ``A`` objectness channels and ``4A`` delta channels follow this
order (channel ``4a + k`` is component ``k`` of anchor ``a``), and the anchors of a grid are
ordered row ``i`` major, then column ``j``, then ``a``, so ``[H*W*A, 4]`` reshapes to
``[H, W, A, 4]`` exactly like the head's output ``[H, W, A*4]``.

Anchors are float32 ``[..., 4]`` yxyx in pixels of the network input, continuous coordinates
(an anchor of size ``s`` has ``y2 - y1 == s``; unlike py-faster-rcnn there is no "+1" and no
rounding of sizes). An aspect ratio is ``r = height / width``; an anchor of scale ``s`` and ratio
``r`` has height ``s * sqrt(r)`` and width ``s / sqrt(r)`` (area ``s**2``).
"""

import tensorflow as tf


def _float(x):
    x = tf.convert_to_tensor(x)
    if x.dtype != tf.float32:
        x = tf.cast(x, tf.float32)
    return x


def anchor_shapes(scales, aspect_ratios):
    """Heights and widths of the ``A`` anchors of one location.

    Args:
      scales: ``[S]`` anchor sizes in input pixels (square root of the area).
      aspect_ratios: ``[R]`` ratios ``height / width``.

    Returns:
      float32 ``[A, 2]`` = ``(height, width)`` with ``A = R * S``, ordered aspect ratio outer,
      scale inner: row ``a = ratio_index * S + scale_index``. Height is ``s * sqrt(r)``, width
      ``s / sqrt(r)``.

    Example:
      >>> anchor_shapes([16.], [0.5, 1., 2.]).numpy()
      array([[11.313708, 22.627417],
             [16.      , 16.      ],
             [22.627417, 11.313708]], dtype=float32)
    """
    scales = tf.reshape(_float(scales), [-1])
    ratios = tf.sqrt(tf.reshape(_float(aspect_ratios), [-1]))
    heights = ratios[:, None] * scales[None, :]  # [R, S]
    widths = scales[None, :] / ratios[:, None]  # [R, S]
    return tf.reshape(tf.stack([heights, widths], axis=-1), [-1, 2])


def generate_anchors(feature_size, stride, scales, aspect_ratios, offset=0.5):
    """All anchors of one feature map.

    The centre of location ``(i, j)`` is ``((i + offset) * stride, (j + offset) * stride)`` in
    input pixels; around it sit the ``A`` anchors of :func:`anchor_shapes`.

    Args:
      feature_size: ``(H, W)`` of the feature map: Python ints, scalar int tensors, or a ``[2]``
        int tensor (these may be dynamic, e.g. ``tf.shape(features)[1:3]`` inside a
        ``tf.function`` with an unknown image size).
      stride: input pixels per feature cell (a number or a scalar tensor).
      scales: ``[S]`` anchor sizes in input pixels.
      aspect_ratios: ``[R]`` ratios ``height / width``.
      offset: where in a cell the centre sits, in cells; 0.5 (default) is the cell centre,
        0 the cell's top-left corner (the py-faster-rcnn convention up to its "+1" pixels).

    Returns:
      float32 ``[H * W * A, 4]`` yxyx, pixels, ordered row ``i`` major, then column ``j``, then the
      ``A`` anchors (ratio outer, scale inner): reshaping to ``[H, W, A, 4]`` matches the RPN head.
      The first dimension is static when ``H`` and ``W`` are Python ints.

    Example:
      >>> a = generate_anchors((2, 2), 16, [8., 16.], [0.5, 1., 2.])  # 2*2*6 = 24 anchors
      >>> a[2].numpy()  # location (0, 0), ratio 1, scale 8: a = 1 * 2 + 0; centre (8, 8)
      array([ 4.,  4., 12., 12.], dtype=float32)
    """
    height, width = feature_size[0], feature_size[1]  # a tuple, or a [2] int tensor
    stride = _float(stride)
    offset = _float(offset)
    shapes = anchor_shapes(scales, aspect_ratios)  # [A, 2]
    ys = (tf.cast(tf.range(height), tf.float32) + offset) * stride  # [H]
    xs = (tf.cast(tf.range(width), tf.float32) + offset) * stride  # [W]
    cy, cx = tf.meshgrid(ys, xs, indexing="ij")  # [H, W]
    centres = tf.stack([cy, cx, cy, cx], axis=-1)[:, :, None, :]  # [H, W, 1, 4]
    half = 0.5 * shapes
    corners = tf.concat([-half, half], axis=-1)  # [A, 4]: (-h/2, -w/2, h/2, w/2)
    anchors = centres + corners[None, None, :, :]  # [H, W, A, 4]
    return tf.reshape(anchors, [-1, 4])


def generate_multilevel_anchors(feature_sizes, strides, scales, aspect_ratios, offset=0.5):
    """Anchors of several feature maps (e.g. FPN levels), concatenated fine to coarse.

    Args:
      feature_sizes: list of ``(H, W)``, one a level (ints or scalar int tensors), in the order of
        ``strides`` (fine to coarse, e.g. P2 .. P6).
      strides: list of strides, one a level.
      scales: either one list of scales used at every level, or a list of lists (one list a
        level; e.g. ``[[32], [64], [128], [256], [512]]`` for an FPN).
      aspect_ratios: ``[R]`` ratios ``height / width``, the same at every level.
      offset: see :func:`generate_anchors`.

    Returns:
      float32 ``[sum_l H_l * W_l * A_l, 4]`` yxyx, pixels: level 0's anchors first, each level in
      the order of :func:`generate_anchors`.

    Example:
      >>> a = generate_multilevel_anchors([(4, 4), (2, 2)], [8, 16], [[32.], [64.]], [0.5, 1., 2.])
      >>> a.shape  # 4*4*3 + 2*2*3
      TensorShape([60, 4])
    """
    feature_sizes = list(feature_sizes)
    strides = list(strides)
    if len(feature_sizes) != len(strides):
        raise ValueError(
            f"generate_multilevel_anchors: {len(feature_sizes)} feature sizes but "
            f"{len(strides)} strides; give one stride a level."
        )
    if _is_per_level(scales):
        per_level = list(scales)
        if len(per_level) != len(strides):
            raise ValueError(
                f"generate_multilevel_anchors: {len(per_level)} lists of scales for "
                f"{len(strides)} levels; give one list a level or one list for all."
            )
    else:
        per_level = [scales] * len(strides)
    levels = [
        generate_anchors(size, stride, level_scales, aspect_ratios, offset)
        for size, stride, level_scales in zip(feature_sizes, strides, per_level)
    ]
    return tf.concat(levels, axis=0)


def _is_per_level(scales):
    """True when ``scales`` is a list of lists (or a rank-2 array / tensor)."""
    if hasattr(scales, "shape") and not isinstance(scales, (list, tuple)):
        return len(scales.shape) == 2
    scales = list(scales)
    if not scales:
        return False
    first = scales[0]
    if isinstance(first, (list, tuple)):
        return True
    return hasattr(first, "shape") and len(first.shape) == 1


def anchors_inside_mask(anchors, image_shape, allowed_border=0.0):
    """Which anchors lie inside the image (up to ``allowed_border`` pixels outside).

    Used in RPN training to ignore anchors that cross the image border.

    Args:
      anchors: ``[N, 4]`` yxyx, pixels (or ``[B, N, 4]`` with ``image_shape`` ``[B, 2]``).
      image_shape: ``(height, width)``: ``[2]``, or ``[B, 2]`` one size an image. Int or float.
      allowed_border: pixels an anchor may stick out on each side (default 0).

    Returns:
      bool ``[N]`` for ``image_shape`` ``[2]``; ``[B, N]`` for ``image_shape`` ``[B, 2]``. True
      when ``y1 >= -border``, ``x1 >= -border``, ``y2 <= H + border`` and ``x2 <= W + border``.

    Example:
      >>> anchors_inside_mask([[0., 0., 10., 10.], [-1., 0., 5., 5.]], (10, 10)).numpy()
      array([ True, False])
    """
    anchors = _float(anchors)
    hw = _float(image_shape)
    border = _float(allowed_border)
    if hw.shape.rank == 2:
        hw = hw[:, None, :]  # [B, 1, 2], broadcasts against [N, 4] or [B, N, 4]
    elif hw.shape.rank != 1:
        raise ValueError(
            f"anchors_inside_mask: image_shape must be [2] or [B, 2]; got shape {hw.shape}."
        )
    y1, x1, y2, x2 = tf.unstack(anchors, 4, axis=-1)
    return (
        (y1 >= -border)
        & (x1 >= -border)
        & (y2 <= hw[..., 0] + border)
        & (x2 <= hw[..., 1] + border)
    )


def rounded_anchor_corners(scales, aspect_ratios):
    """torchvision's base anchors of one location: ``round(-h/2, -w/2, h/2, w/2)``.

    torchvision rounds the corners of its base anchors to whole pixels (``torch.round``, half to
    even, as ``tf.round``); heights and widths are those of :func:`anchor_shapes`.

    Returns:
      float32 ``[A, 4]`` yxyx offsets from the anchor centre, in the order of :func:`anchor_shapes`.

    Example:
      >>> rounded_anchor_corners([32.], [0.5, 1., 2.]).numpy()
      array([[-11., -23.,  11.,  23.],
             [-16., -16.,  16.,  16.],
             [-23., -11.,  23.,  11.]], dtype=float32)
    """
    half = 0.5 * anchor_shapes(scales, aspect_ratios)
    return tf.round(tf.concat([-half, half], axis=-1))


def generate_anchors_from_image_size(
    feature_size, image_size, scales, aspect_ratios, offset=0.0, rounded=True
):
    """All anchors of one feature map, with torchvision's stride and base anchors.

    The stride of each axis is ``image_size // feature_size`` (the padded input size over the
    grid size, so a level whose grid was rounded up gets a stride below its nominal one, e.g.
    ``800 // 13 = 61`` for the pooled level of an 800-pixel input), the centre of location
    ``(i, j)`` is ``((i + offset) * stride_y, (j + offset) * stride_x)`` (``offset=0``: torchvision's
    ``j * stride``) and the base anchors are :func:`rounded_anchor_corners` (``rounded=False``:
    exact corners).

    Args:
      feature_size: ``(H, W)`` of the feature map (ints or scalar int tensors).
      image_size: ``(height, width)`` of the padded input (ints or scalar int tensors).
      scales, aspect_ratios: as :func:`anchor_shapes`.

    Returns:
      float32 ``[H * W * A, 4]`` yxyx pixels, ordered as :func:`generate_anchors`.
    """
    height, width = feature_size[0], feature_size[1]
    stride_y = tf.cast(tf.cast(image_size[0], tf.int32) // tf.cast(height, tf.int32), tf.float32)
    stride_x = tf.cast(tf.cast(image_size[1], tf.int32) // tf.cast(width, tf.int32), tf.float32)
    offset = _float(offset)
    if rounded:
        corners = rounded_anchor_corners(scales, aspect_ratios)
    else:
        half = 0.5 * anchor_shapes(scales, aspect_ratios)
        corners = tf.concat([-half, half], axis=-1)
    ys = (tf.cast(tf.range(height), tf.float32) + offset) * stride_y
    xs = (tf.cast(tf.range(width), tf.float32) + offset) * stride_x
    cy, cx = tf.meshgrid(ys, xs, indexing="ij")
    centres = tf.stack([cy, cx, cy, cx], axis=-1)[:, :, None, :]
    return tf.reshape(centres + corners[None, None, :, :], [-1, 4])
