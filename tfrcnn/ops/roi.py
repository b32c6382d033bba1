"""Region-of-interest feature extraction: RoIPool, RoIAlign, Precise RoI Pooling, FPN level mapping.

Shape shorthand used in this module:

- ``B``: images in the batch,
- ``H``, ``W``: height and width of a feature map (in feature cells),
- ``C``: channels,
- ``K``: ROIs (``K = 0`` is allowed everywhere and gives ``[0, oh, ow, C]``),
- ``oh``, ``ow``: the pooled output size (``output_size``),
- ``L``: pyramid levels (for :func:`multilevel_roi_align`).

Common contract of the pooling functions:

- ``features``: ``[B, H, W, C]`` of any float dtype. The computation runs in float32 (precise ROI
  pooling accumulates in float64, see there) and the result is cast back to ``features.dtype``, so
  the ops are correct under mixed precision.
- ``boxes``: float ``[K, 4]`` as ``[y1, x1, y2, x2]`` in absolute pixels of the network input,
  continuous coordinates (a box covering pixels 0..9 is ``[0, 0, 10, 10]``).
- ``box_indices``: int ``[K]``, the image of ``features`` each ROI is pooled from.
- ``spatial_scale``: feature cells per input pixel (``1 / stride``, default ``1 / 16``).
- the output is ``[K, oh, ow, C]``. Every shape is fixed given ``K`` and ``output_size``; ``K``,
  ``H`` and ``W`` may be dynamic (``None``) inside ``tf.function``. Nothing loops over ROIs or
  images in Python.

Only core TensorFlow ops are used. :func:`roi_pool` and ``roi_align(..., method="gather")`` use only
ops that TFLite has as builtins (slicing, gather, max, where, arithmetic, a while loop), so they
convert without Flex. ROI Align's interpolation kernels (:data:`REFERENCE_KERNELS`) can be
replaced by compiled versions of the same functions (``kernels=``; :mod:`tfrcnn.accel` does that).
"""

import collections

import tensorflow as tf

from tfrcnn.ops.gradients import tape_is_recording

__all__ = [
    "roi_pool",
    "roi_align",
    "precise_roi_pool",
    "assign_fpn_levels",
    "multilevel_roi_align",
    "ROIAlignKernels",
    "REFERENCE_KERNELS",
]

ROI_ALIGN_METHODS = ("auto", "crop_and_resize", "gather")

# Edge replication around every map for RoIAlign. The reference sample rule only needs one pixel;
# two keep crop_and_resize's own float rounding of the sample position (~1e-6 cell) inside
# replicated pixels, so the border decision is taken once, exactly, by our own mask.
_ALIGN_PAD = 2

# Tolerance added to the FPN level before flooring (as torchvision's LevelMapper), so a box whose
# scale is exactly canonical_scale * 2**n lands on level canonical_level + n despite float rounding.
_FPN_LEVEL_EPS = 1e-6


# --------------------------------------------------------------------------------------------------
# argument checks and shared helpers


def _pair(output_size, name="output_size"):
    """``7`` or ``(7, 7)`` -> ``(7, 7)``, checked to be positive Python ints."""
    if isinstance(output_size, int) and not isinstance(output_size, bool):
        size = (output_size, output_size)
    else:
        try:
            size = tuple(output_size)
        except TypeError:
            size = ()

    def positive_int(v):
        return isinstance(v, int) and not isinstance(v, bool) and v > 0

    if len(size) != 2 or not all(positive_int(v) for v in size):
        raise ValueError(
            f"{name} must be a positive int or a pair (height, width) of positive ints, "
            f"got {output_size!r}."
        )
    return size


def _check_sampling_ratio(sampling_ratio):
    if isinstance(sampling_ratio, bool) or not isinstance(sampling_ratio, int):
        sampling_ratio_ok = False
    else:
        sampling_ratio_ok = sampling_ratio > 0
    if not sampling_ratio_ok:
        raise ValueError(
            f"sampling_ratio must be a positive int (samples per bin side), got "
            f"{sampling_ratio!r}. The adaptive choice of the reference (sampling_ratio <= 0: "
            "ceil(roi_size / output_size) samples, different for every ROI) gives data-dependent "
            "shapes, which this library does not allow on graph paths; pass e.g. 2."
        )


def _check_method(method):
    if method not in ROI_ALIGN_METHODS:
        raise ValueError(f"method must be one of {ROI_ALIGN_METHODS}, got {method!r}.")


def _inputs(features, boxes, box_indices):
    """Converts and checks the three common inputs; features come back as float32."""
    features = tf.convert_to_tensor(features)
    if features.shape.rank is not None and features.shape.rank != 4:
        raise ValueError(f"features must be [B, H, W, C], got shape {features.shape}.")
    boxes = tf.cast(tf.convert_to_tensor(boxes), tf.float32)
    if boxes.shape.rank is not None and (boxes.shape.rank != 2 or boxes.shape[-1] not in (None, 4)):
        raise ValueError(f"boxes must be [K, 4] as [y1, x1, y2, x2], got shape {boxes.shape}.")
    box_indices = tf.cast(tf.convert_to_tensor(box_indices), tf.int32)
    if box_indices.shape.rank is not None and box_indices.shape.rank != 1:
        raise ValueError(f"box_indices must be [K], got shape {box_indices.shape}.")
    boxes = tf.reshape(boxes, [-1, 4])
    return features.dtype, tf.cast(features, tf.float32), boxes, box_indices


def _round_half_away(x):
    """std::round: halves go away from zero (tf.round rounds them to even). Exact in float."""
    a = tf.abs(x)
    fl = tf.floor(a)
    r = fl + tf.cast(a - fl >= 0.5, x.dtype)  # a - fl is exact, so no double rounding
    return tf.where(x < 0, -r, r)


# --------------------------------------------------------------------------------------------------
# RoIPool


def _pool_bin_edges(c1, c2, pooled, size, scale):
    """Caffe / torchvision RoIPool bin edges along one axis.

    c1, c2: [K] box edges in input pixels. Returns (start, end), int32 [K, pooled], clipped to [0,
    size], bin p covering cells [start, end). All float arithmetic in float32 like the reference
    kernels.
    """
    roi_start = _round_half_away(c1 * scale)
    roi_end = _round_half_away(c2 * scale)
    roi_len = tf.maximum(roi_end - roi_start + 1.0, 1.0)
    # The reference divides in float32. Grappler rewrites a division by a *constant* into a product
    # with the rounded reciprocal, which is 1 ulp off for e.g. 22 / 7 and moves a bin edge by a
    # whole cell. So the divisor is made data-dependent: ``zero`` is exactly 0 (every roi_len is
    # >= 1; an empty min is +inf) but not a constant the graph optimiser can fold. Builtin ops
    # only, for TFLite.
    zero = tf.minimum(tf.reduce_min(roi_len), 0.0)
    bin_len = roi_len / (float(pooled) + zero)
    p = tf.range(pooled, dtype=tf.float32)
    lo = tf.floor(p[None, :] * bin_len[:, None]) + roi_start[:, None]
    hi = tf.math.ceil((p + 1.0)[None, :] * bin_len[:, None]) + roi_start[:, None]
    size_f = tf.cast(size, tf.float32)
    lo = tf.clip_by_value(lo, 0.0, size_f)
    hi = tf.clip_by_value(hi, 0.0, size_f)
    return tf.cast(lo, tf.int32), tf.cast(hi, tf.int32)


def _doubling_argmax_levels(values, index, lengths, axis):
    """Running maxima along ``axis`` (1 or 2) over windows of 1, 2, 4, ... cells, with their argmax.

    ``values`` and ``index`` (the flat position in the feature map of each value) have the same
    shape. Level ``a`` holds, for each position ``i``, the maximum of ``values[..., i : i + 2**a,
    ...]`` and the index where it is (the earliest on ties: the shifted half always lies after the
    current one). The last ``2**a - 1`` positions hold filler that is never queried. Levels are
    built while ``2**a <= max(lengths)`` (at least level 0), so the table holds exactly what the
    bins need.

    Returns ``(value_stack, index_stack, level, window)``: stacks ``[L, *values.shape]``, and for
    each window length ``n`` in ``lengths`` the largest ``window = 2**level <= n``.
    """
    size = tf.shape(values)[axis]
    longest = tf.maximum(tf.reduce_max(tf.concat([tf.reshape(lengths, [-1]), [1]], 0)), 1)

    def shift(t, width):
        # t[i + width] along the axis for i < size - width, then filler
        if axis == 1:
            return tf.concat([t[:, width:], t[:, size - width :]], axis=1)
        return tf.concat([t[:, :, width:], t[:, :, size - width :]], axis=2)

    def cond(width, *_):
        return width * 2 <= longest  # longest <= size, so width < size in the body

    def body(width, lev, cur, cur_index, value_stack, index_stack, level, window):
        later = shift(cur, width)
        take = later > cur
        cur = tf.where(take, later, cur)
        cur_index = tf.where(take, shift(cur_index, width), cur_index)
        width2, lev2 = width * 2, lev + 1
        longer = lengths >= width2
        level = tf.where(longer, lev2, level)
        window = tf.where(longer, width2, window)
        value_stack = tf.concat([value_stack, tf.expand_dims(cur, 0)], 0)
        index_stack = tf.concat([index_stack, tf.expand_dims(cur_index, 0)], 0)
        return width2, lev2, cur, cur_index, value_stack, index_stack, level, window

    stacked = tf.TensorShape([None]).concatenate(values.shape)
    start = (
        tf.constant(1),
        tf.constant(0),
        values,
        index,
        tf.expand_dims(values, 0),
        tf.expand_dims(index, 0),
        tf.zeros_like(lengths),
        tf.ones_like(lengths),
    )
    scalar = tf.TensorShape([])
    invariants = (scalar, scalar) + (values.shape,) * 2 + (stacked,) * 2 + (lengths.shape,) * 2
    result = tf.while_loop(cond, body, start, shape_invariants=invariants)
    _, _, _, _, value_stack, index_stack, level, window = result
    return value_stack, index_stack, level, window


def roi_pool(features, boxes, box_indices, output_size=(7, 7), spatial_scale=1.0 / 16):
    """Fast R-CNN RoIPool (max over a grid of integer bins), as Caffe / torchvision compute it.

    For each ROI (``[y1, x1, y2, x2]`` in input pixels) and axis: ``start = round(c1 *
    spatial_scale)``, ``end = round(c2 * spatial_scale)`` (round half away from zero), ``size =
    max(end - start + 1, 1)`` cells, ``bin = size / pooled`` (float); bin ``p`` covers cells
    ``[floor(p * bin) + start, ceil((p + 1) * bin) + start)`` clipped to ``[0, H]`` (``[0, W]``).
    Each output is the maximum of its bin; an empty bin (entirely outside the map) gives 0.

    The gradient w.r.t. ``features`` goes to the argmax of each bin; the op is piecewise constant in
    the box coordinates, so there is no gradient w.r.t. ``boxes``.

    Ties go to the first maximum in row-major order, as in the reference.

    Implementation: a 2-D sparse table of maxima and their positions over windows of ``2**a x 2**b``
    cells (built by doubling, only up to the largest bin present); each bin's maximum is the best of
    four overlapping table lookups, and the gradient scatters to the argmax directly (no backward
    pass through the table). Memory is ``La * Lb`` float32 + int32 copies of the map, ``La, Lb ~
    log2`` of the largest bin side (4 x 4 for bins of up to 15 cells, e.g. whole-image ROIs on a
    stride-16 map of an 800 x 1216 image). Only TFLite builtin ops.

    Args:
      features: ``[B, H, W, C]`` float feature maps.
      boxes: ``[K, 4]`` float ``[y1, x1, y2, x2]``, input-image pixels.
      box_indices: ``[K]`` int, which image of ``features`` each ROI comes from.
      output_size: int or ``(oh, ow)``; default ``(7, 7)``.
      spatial_scale: feature cells per input pixel; default ``1 / 16``.

    Returns:
      ``[K, oh, ow, C]`` in ``features.dtype``.

    Example:
      >>> features = tf.random.normal([2, 38, 50, 512])
      >>> boxes = tf.constant([[10.0, 20.0, 200.0, 300.0], [0.0, 0.0, 64.0, 64.0]])
      >>> roi_pool(features, boxes, tf.constant([0, 1]), output_size=7).shape
      TensorShape([2, 7, 7, 512])
    """
    oh, ow = _pair(output_size)
    dtype, f, boxes, box_indices = _inputs(features, boxes, box_indices)
    shape = tf.shape(f)
    batch, height, width, channels = shape[0], shape[1], shape[2], shape[3]
    y1, x1, y2, x2 = tf.unstack(boxes, num=4, axis=1)
    scale = tf.constant(spatial_scale, tf.float32)
    hs, he = _pool_bin_edges(y1, y2, oh, height, scale)  # [K, oh]
    ws, we = _pool_bin_edges(x1, x2, ow, width, scale)  # [K, ow]
    n_h = tf.maximum(he - hs, 1)
    n_w = tf.maximum(we - ws, 1)

    @tf.custom_gradient
    def pool(f):
        position = tf.reshape(tf.range(tf.size(f)), tf.shape(f))
        # Sparse table of maxima and argmax positions: windows of 2**b columns ([Lb, B, H, W, C]),
        # then 2**a rows of those.
        values_w, index_w, lev_w, win_w = _doubling_argmax_levels(f, position, n_w, 2)
        num_lev_w = tf.shape(values_w)[0]
        merged = tf.concat([[num_lev_w * batch], shape[1:]], 0)  # at most 5-D tensors (TFLite)
        values_w = tf.reshape(values_w, merged)
        index_w = tf.reshape(index_w, merged)
        value_table, index_table, lev_h, win_h = _doubling_argmax_levels(values_w, index_w, n_h, 1)
        flat_value = tf.reshape(value_table, [-1, channels])  # rows: [La, Lb * B, H, W]
        flat_index = tf.reshape(index_table, [-1, channels])

        # Two overlapping windows per axis: one from the bin start, one up to the bin end.
        last_row, last_col = tf.maximum(height - 1, 0), tf.maximum(width - 1, 0)
        rows = tf.clip_by_value(tf.stack([hs, he - win_h], 0), 0, last_row)  # [2, K, oh]
        cols = tf.clip_by_value(tf.stack([ws, we - win_w], 0), 0, last_col)  # [2, K, ow]
        # table row = (((a * Lb + b) * B + image) * H + row) * W + col
        base_h = (lev_h * num_lev_w)[:, :, None] * batch + box_indices[:, None, None]
        base_h = base_h * height  # [K, oh, 1]
        lev_w_part = lev_w[:, None, :] * (batch * height)  # [K, 1, ow]
        best_value, best_index = None, None
        for r in range(2):
            for c in range(2):
                row = (base_h + rows[r][:, :, None] + lev_w_part) * width + cols[c][:, None, :]
                value = tf.gather(flat_value, row)  # [K, oh, ow, C]
                index = tf.gather(flat_index, row)  # its position in the map
                if best_value is None:
                    best_value, best_index = value, index
                else:
                    # the reference keeps the first maximum in row-major order
                    take = (value > best_value) | ((value == best_value) & (index < best_index))
                    best_value = tf.where(take, value, best_value)
                    best_index = tf.where(take, index, best_index)
        result = tf.where(empty[..., None], tf.zeros_like(best_value), best_value)

        def grad(upstream):
            upstream = tf.where(empty[..., None], tf.zeros_like(upstream), upstream)
            scattered = tf.math.unsorted_segment_sum(
                tf.reshape(upstream, [-1]), tf.reshape(best_index, [-1]), tf.size(f)
            )
            return tf.reshape(scattered, tf.shape(f))

        return result, grad

    empty = (he <= hs)[:, :, None] | (we <= ws)[:, None, :]  # [K, oh, ow]
    return tf.cast(pool(f), dtype)


# --------------------------------------------------------------------------------------------------
# RoIAlign


def _align_sample_coords(c1, c2, scale, pooled, sampling_ratio, aligned):
    """Reference RoIAlign sample coordinates along one axis, in feature cells.

    c1, c2: [K] box edges in input pixels; scale: scalar or [K]. Returns [K, pooled *
    sampling_ratio], computed in float32 in the reference's own order: ``start + p * bin + (i + 0.5)
    * bin / sampling_ratio``.
    """
    offset = 0.5 if aligned else 0.0
    start = c1 * scale - offset
    end = c2 * scale - offset
    length = end - start
    if not aligned:
        length = tf.maximum(length, 1.0)
    bin_len = length / float(pooled)
    p = tf.range(pooled, dtype=tf.float32)
    i = tf.range(sampling_ratio, dtype=tf.float32)
    coarse = start[:, None] + p[None, :] * bin_len[:, None]  # [K, pooled]
    fine = (i + 0.5)[None, :] * bin_len[:, None] / float(sampling_ratio)  # [K, sr]
    coords = coarse[:, :, None] + fine[:, None, :]  # [K, pooled, sr]
    return tf.reshape(coords, [-1, pooled * sampling_ratio])


def _edge_pad(x, pad):
    """Replicates the border rows and columns of [B, H, W, C] ``pad`` times (builtin ops only)."""
    top = tf.repeat(x[:, :1], pad, axis=1)
    bottom = tf.repeat(x[:, -1:], pad, axis=1)
    x = tf.concat([top, x, bottom], axis=1)
    left = tf.repeat(x[:, :, :1], pad, axis=2)
    right = tf.repeat(x[:, :, -1:], pad, axis=2)
    return tf.concat([left, x, right], axis=2)


def _align_canvas(maps):
    """Edge-pads each level by ``_ALIGN_PAD`` and packs them into one canvas per image.

    Level 0 sits at the top-left; the other levels are stacked top to bottom in a column to its
    right (for an FPN pyramid this is ~1.5x the largest level, against L x for stacking padded
    copies). The unused area is zero and never read by a valid sample.

    Returns (canvas [B, Hc, Wc, C], heights [L], widths [L], offset_y [L], offset_x [L]), sizes
    being the unpadded level sizes and offsets the canvas position of each padded level.
    """
    padded = [_edge_pad(m, _ALIGN_PAD) for m in maps]
    heights = tf.stack([tf.shape(m)[1] for m in maps])
    widths = tf.stack([tf.shape(m)[2] for m in maps])
    if len(maps) == 1:
        zero = tf.zeros([1], tf.int32)
        return padded[0], heights, widths, zero, zero
    p2 = 2 * _ALIGN_PAD
    rest_h = heights[1:] + p2
    rest_w = widths[1:] + p2
    column_w = tf.reduce_max(rest_w)
    column = tf.concat(
        [
            tf.pad(m, [[0, 0], [0, 0], [0, column_w - w], [0, 0]])
            for m, w in zip(padded[1:], tf.unstack(rest_w))
        ],
        axis=1,
    )
    canvas_h = tf.maximum(heights[0] + p2, tf.reduce_sum(rest_h))
    left = tf.pad(padded[0], [[0, 0], [0, canvas_h - heights[0] - p2], [0, 0], [0, 0]])
    column = tf.pad(column, [[0, 0], [0, canvas_h - tf.reduce_sum(rest_h)], [0, 0], [0, 0]])
    canvas = tf.concat([left, column], axis=2)
    offset_y = tf.concat([[0], tf.cumsum(rest_h, exclusive=True)], 0)
    offset_x = tf.concat([[0], tf.fill([len(maps) - 1], widths[0] + p2)], 0)
    return canvas, heights, widths, offset_y, offset_x


def _per_offset(t, i, sr):
    """The ``i``-th of the ``sr`` samples of every bin: ``[K, pooled * sr] -> [K, pooled]``."""
    return t[:, i::sr] if sr > 1 else t


def _bilinear_gather(flat, row0, row1, col0, col1, ly, lx, wy, wx, sr):
    """RoIAlign's bins by explicit bilinear interpolation: ``[K, oh, ow, C]``, each bin the mean of
    its ``sr * sr`` samples, each sample the bilinear mix of its four neighbours in ``flat``
    (the flattened canvas ``[cells, C]``), times its 0/1 validity weights.

    Arguments as :func:`_bilinear_scatter`, of which this is the adjoint.
    """
    total = None
    for iy in range(sr):
        r0 = _per_offset(row0, iy, sr)[:, :, None]
        r1 = _per_offset(row1, iy, sr)[:, :, None]
        a_y = _per_offset(ly, iy, sr)[:, :, None, None]
        m_y = _per_offset(wy, iy, sr)[:, :, None, None]
        for ix in range(sr):
            c0 = _per_offset(col0, ix, sr)[:, None, :]
            c1 = _per_offset(col1, ix, sr)[:, None, :]
            a_x = _per_offset(lx, ix, sr)[:, None, :, None]
            m_x = _per_offset(wx, ix, sr)[:, None, :, None]
            v00 = tf.gather(flat, r0 + c0)
            v01 = tf.gather(flat, r0 + c1)
            v10 = tf.gather(flat, r1 + c0)
            v11 = tf.gather(flat, r1 + c1)
            top = v00 + (v01 - v00) * a_x
            bottom = v10 + (v11 - v10) * a_x
            value = (top + (bottom - top) * a_y) * (m_y * m_x)
            total = value if total is None else total + value
    return total / float(sr * sr)


def _scatter_terms(row0, row1, col0, col1, ly, lx, wy, wx, sr):
    """The ``4 sr**2`` (sample, neighbour) terms of :func:`_bilinear_scatter`: ``weights [T, K, oh,
    ow]`` (bilinear weight times validity, divided by ``sr**2`` for the bin average) and the table
    rows they go to, ``indices [T, K, oh, ow]`` (``T = 4 sr**2``; arguments as
    :func:`_bilinear_scatter`). Term ``t`` sends ``upstream * weights[t][..., None]`` to the rows
    ``indices[t]``."""
    wy = wy / float(sr * sr)  # the bin average, on the small [K, N] weights

    def per_offset(t, i):
        return _per_offset(t, i, sr)

    weights, indices = [], []
    for iy in range(sr):
        a_y, m_y = per_offset(ly, iy), per_offset(wy, iy)
        rows = ((per_offset(row0, iy), (1.0 - a_y) * m_y), (per_offset(row1, iy), a_y * m_y))
        for ix in range(sr):
            a_x, m_x = per_offset(lx, ix), per_offset(wx, ix)
            cols = ((per_offset(col0, ix), (1.0 - a_x) * m_x), (per_offset(col1, ix), a_x * m_x))
            for r, weight_y in rows:
                for c, weight_x in cols:
                    weights.append(weight_y[:, :, None] * weight_x[:, None, :])
                    indices.append(r[:, :, None] + c[:, None, :])
    return tf.stack(weights), tf.stack(indices)


def _bilinear_scatter(upstream, row0, row1, col0, col1, ly, lx, wy, wx, cells, sr):
    """The gradient of the bilinear sampling with respect to the flat table ``[cells, C]``: each of
    the ``sr * sr`` samples of a bin sends ``upstream / sr**2`` to its four neighbours with its
    bilinear weights (:func:`_scatter_terms`): the ``4 sr**2`` weighted copies of ``upstream``
    and one scatter-add over all of them.

    upstream: ``[K, oh, ow, C]``; row0, row1: ``[K, oh * sr]`` flat offsets of the neighbouring
    rows; col0, col1: ``[K, ow * sr]`` neighbouring columns; ly, lx: the fractional positions;
    wy, wx: 0/1 validity weights (all as :func:`_neighbours` returns them); cells: table rows.
    """
    channels = tf.shape(upstream)[-1]
    weights, indices = _scatter_terms(row0, row1, col0, col1, ly, lx, wy, wx, sr)
    values = upstream[None] * weights[..., None]  # [T, K, oh, ow, C]
    return tf.math.unsorted_segment_sum(
        tf.reshape(values, [-1, channels]), tf.reshape(indices, [-1]), cells
    )


def _flat_levels(maps):
    """The maps as one ``[cells, C]`` table (level after level, each ``[B * H_l * W_l, C]``), with
    ``heights [L]``, ``widths [L]`` and the first row of each level ``bases [L]``."""
    shapes = [tf.shape(m) for m in maps]
    channels = maps[0].shape[-1] if maps[0].shape[-1] is not None else shapes[0][3]
    heights = tf.stack([s[1] for s in shapes])
    widths = tf.stack([s[2] for s in shapes])
    bases = tf.cumsum(tf.stack([s[0] * s[1] * s[2] for s in shapes]), exclusive=True)
    flat = tf.concat([tf.reshape(m, [-1, channels]) for m in maps], 0)
    return flat, heights, widths, bases


def _neighbours(heights, widths, bases, image_index, ys, xs, level):
    """Where each sample's four bilinear neighbours are in the table of :func:`_flat_levels`.

    image_index, level: ``[K]``; ys, xs: ``[K, N]``, ``[K, M]`` sample coordinates in level cells
    (``N = oh * sr``, ``M = ow * sr``). Returns ``row0, row1 [K, N]`` (table rows of the two
    neighbouring map rows), ``col0, col1 [K, M]`` (the two neighbouring columns), ``ly [K, N]``,
    ``lx [K, M]`` (the fractional positions, which carry the gradient with respect to the box) and
    ``wy, wx`` (0/1 validity weights). Reference border rule: a sample with ``y < -1`` or
    ``y > H`` (x likewise) gets weight 0; otherwise the neighbours are clamped into the ROI's map.
    The neighbours are ``floor(c)`` and ``ceil(c)``, as ``crop_and_resize`` takes them, so a sample
    exactly on a cell centre has the same zero slope with respect to its position in every method.
    """
    lim_h = tf.gather(heights, level)[:, None]
    lim_w = tf.gather(widths, level)[:, None]
    lim_hf = tf.cast(lim_h, tf.float32)
    lim_wf = tf.cast(lim_w, tf.float32)
    cy = tf.clip_by_value(ys, -1.0, lim_hf)
    cx = tf.clip_by_value(xs, -1.0, lim_wf)
    y0, x0 = tf.floor(cy), tf.floor(cx)
    ly, lx = cy - y0, cx - x0

    def clamp(t, limit):
        return tf.clip_by_value(tf.cast(t, tf.int32), 0, limit - 1)

    first_row = tf.gather(bases, level)[:, None] + image_index[:, None] * lim_h * lim_w
    row0 = first_row + clamp(y0, lim_h) * lim_w
    row1 = first_row + clamp(tf.math.ceil(cy), lim_h) * lim_w
    col0 = clamp(x0, lim_w)
    col1 = clamp(tf.math.ceil(cx), lim_w)
    wy = tf.where((ys >= -1.0) & (ys <= lim_hf), 1.0, 0.0)
    wx = tf.where((xs >= -1.0) & (xs <= lim_wf), 1.0, 0.0)
    return row0, row1, col0, col1, ly, lx, wy, wx


def _gather_from_levels(maps, image_index, ys, xs, level, sampling_ratio):
    """RoIAlign's bins by explicit bilinear interpolation from the maps: ``[K, oh, ow, C]``.

    maps: list of ``[B, H_l, W_l, C]`` float32. image_index, level: ``[K]``. ys, xs: ``[K, oh * sr]``,
    ``[K, ow * sr]`` sample coordinates in level cells (as :func:`_neighbours`).
    """
    flat, heights, widths, bases = _flat_levels(maps)
    neighbours = _neighbours(heights, widths, bases, image_index, ys, xs, level)
    return _bilinear_gather(flat, *neighbours, sampling_ratio)


def _scatter_to_levels(
    maps, upstream, image_index, ys, xs, level, sampling_ratio, scatter=_bilinear_scatter
):
    """The gradient of :func:`_gather_from_levels` with respect to each map (a list like
    ``maps``), written out with ``scatter`` (:func:`_bilinear_scatter` or a compiled version)."""
    flat, heights, widths, bases = _flat_levels(maps)
    neighbours = _neighbours(heights, widths, bases, image_index, ys, xs, level)
    gradient = scatter(
        tf.cast(upstream, tf.float32), *neighbours, tf.shape(flat)[0], sampling_ratio
    )
    sizes = [tf.reduce_prod(tf.shape(m)[:3]) for m in maps]
    return [tf.reshape(g, tf.shape(m)) for g, m in zip(tf.split(gradient, tf.stack(sizes)), maps)]


#: The replaceable kernels of ROI Align: ``gather_from_levels(maps, image_index, ys, xs, level,
#: sampling_ratio)`` (the forward bins, :func:`_gather_from_levels`) and ``bilinear_scatter``
#: (its gradient on the flat table, :func:`_bilinear_scatter`). :mod:`tfrcnn.accel` passes
#: XLA-compiled versions of the same functions.
ROIAlignKernels = collections.namedtuple(
    "ROIAlignKernels", ["gather_from_levels", "bilinear_scatter"]
)
REFERENCE_KERNELS = ROIAlignKernels(_gather_from_levels, _bilinear_scatter)


def _crop_and_resize_bins(maps, image_index, ys, xs, level, pooled, sr):
    """RoIAlign's bins by ``tf.image.crop_and_resize`` on the edge-padded canvas of
    :func:`_align_canvas`, masked with the reference border rule and average-pooled: the same
    numbers as :func:`_gather_from_levels` up to float rounding. Returns ``[K, oh, ow, C]``."""
    oh, ow = pooled
    canvas, heights, widths, offset_y, offset_x = _align_canvas(maps)
    lim_hf = tf.cast(tf.gather(heights, level), tf.float32)[:, None]
    lim_wf = tf.cast(tf.gather(widths, level), tf.float32)[:, None]
    valid_y = (ys >= -1.0) & (ys <= lim_hf)  # [K, N]
    valid_x = (xs >= -1.0) & (xs <= lim_wf)  # [K, M]
    # level cells -> canvas cells
    cy = ys + float(_ALIGN_PAD) + tf.cast(tf.gather(offset_y, level), tf.float32)[:, None]
    cx = xs + float(_ALIGN_PAD) + tf.cast(tf.gather(offset_x, level), tf.float32)[:, None]
    shape = tf.shape(canvas)
    scale_h = tf.cast(shape[1] - 1, tf.float32)
    scale_w = tf.cast(shape[2] - 1, tf.float32)
    # crop_and_resize places N evenly spaced samples from the first to the last one
    crop_boxes = tf.stack(
        [cy[:, 0] / scale_h, cx[:, 0] / scale_w, cy[:, -1] / scale_h, cx[:, -1] / scale_w], 1
    )
    samples = tf.image.crop_and_resize(
        canvas,
        crop_boxes,
        image_index,
        [oh * sr, ow * sr],
        method="bilinear",
        extrapolation_value=0.0,
    )  # [K, N, M, C]
    mask = tf.cast(valid_y[:, :, None] & valid_x[:, None, :], tf.float32)
    samples = samples * mask[..., None]
    if sr == 1:
        return samples
    # average each sr x sr block of samples (avg_pool is far faster than a 6-D reduce_mean)
    return tf.nn.avg_pool2d(samples, sr, sr, "VALID")


def _align(maps, image_index, ys, xs, level, pooled, sampling_ratio, method, kernels):
    """RoIAlign's bins ``[K, oh, ow, C]`` float32 of the ROIs with sample coordinates ``ys``,
    ``xs`` (``[K, oh * sr]``, ``[K, ow * sr]``, level cells) on ``maps[level]`` of image
    ``image_index``, by ``method`` (see :func:`roi_align`) with ``kernels`` (None: the reference)."""
    sr = sampling_ratio
    if method == "gather":
        return _gather_from_levels(maps, image_index, ys, xs, level, sr)
    compiled = kernels is not None and method == "auto"
    kernels = kernels or REFERENCE_KERNELS

    def forward(maps, ys, xs):
        if compiled:
            return kernels.gather_from_levels(maps, image_index, ys, xs, level, sr)
        return _crop_and_resize_bins(maps, image_index, ys, xs, level, pooled, sr)

    if not tape_is_recording():  # no gradient can be asked for: the forward value alone
        return forward(maps, ys, xs)

    # TF's CPU kernel of CropAndResizeGradImage accumulates into the image gradient from several
    # threads without synchronisation: two identical calls can return feature gradients that
    # differ by O(1) (seen on TF 2.21 with 2 intra-op threads). The backward pass is therefore the
    # exact gradient of the gather computation, which computes the same function. It comes in two
    # terms so that each is computed only when asked for: the features' gradient, and the sample
    # coordinates' gradient (needed only when the boxes get a gradient, i.e. non-approximate
    # joint training). With boxes behind a stop_gradient (approximate joint training) TensorFlow
    # never calls the second term's gradient, which is the costlier one. The features' gradient
    # is written out (_bilinear_scatter) rather than taken by autodiff of the gather, which would
    # redo the 4 sr^2 gathers and about 4x the full-size products.
    sample_ys, sample_xs = tf.stop_gradient(ys), tf.stop_gradient(xs)

    @tf.custom_gradient
    def features_term(*maps):
        def grad(upstream):
            return _scatter_to_levels(
                list(maps),
                upstream,
                image_index,
                sample_ys,
                sample_xs,
                level,
                sr,
                kernels.bilinear_scatter,
            )

        return forward(list(maps), sample_ys, sample_xs), grad

    @tf.custom_gradient
    def coordinates_term(ys, xs):
        def grad(upstream):
            with tf.GradientTape() as tape:
                tape.watch([ys, xs])
                reference = _gather_from_levels(
                    [tf.stop_gradient(m) for m in maps], image_index, ys, xs, level, sr
                )
            return tape.gradient(reference, [ys, xs], output_gradients=upstream)

        # forward value 0: the term only carries the coordinates' gradient
        oh, ow = pooled
        return tf.zeros([tf.shape(ys)[0], oh, ow, tf.shape(maps[0])[-1]], tf.float32), grad

    return features_term(*maps) + coordinates_term(ys, xs)


def roi_align(
    features,
    boxes,
    box_indices,
    output_size=(7, 7),
    spatial_scale=1.0 / 16,
    sampling_ratio=2,
    aligned=True,
    method="auto",
    kernels=None,
):
    """RoIAlign (He et al., 2017), equal to torchvision.ops.roi_align / Detectron2 ROIAlign.

    For each ROI and axis: ``start = c1 * spatial_scale - offset`` with ``offset = 0.5`` if
    ``aligned`` (the half-pixel convention: cell ``i`` has its centre at ``i + 0.5`` input-scaled
    pixels) else 0; ``size = c2 * spatial_scale - offset - start`` (forced to >= 1 when not
    aligned); ``bin = size / pooled``. Bin ``p`` averages ``sampling_ratio**2`` bilinear samples at
    ``y = start + p * bin + (i + 0.5) * bin / sampling_ratio``, ``i < sampling_ratio`` (x likewise).
    Border rule of the reference: a sample with ``y < -1`` or ``y > H`` (or ``x < -1`` or ``x > W``)
    contributes 0; otherwise it is clamped to the map, i.e. takes the edge value within one cell of
    it.

    Differentiable w.r.t. ``features`` and ``boxes`` (for non-approximate joint training).

    Args:
      features: ``[B, H, W, C]`` float feature maps.
      boxes: ``[K, 4]`` float ``[y1, x1, y2, x2]``, input-image pixels.
      box_indices: ``[K]`` int, which image each ROI comes from.
      output_size: int or ``(oh, ow)``; default ``(7, 7)``.
      spatial_scale: feature cells per input pixel; default ``1 / 16``.
      sampling_ratio: samples per bin side, a positive int (fixed shapes: the reference's adaptive
        ``<= 0`` is rejected with ValueError); default 2.
      aligned: half-pixel offset (Detectron2 ``ROIAlignV2``); default True.
      method: ``"auto"`` (default), ``"crop_and_resize"`` or ``"gather"``, three computations of
        the same numbers (up to float rounding): ``"crop_and_resize"`` samples the edge-padded
        map with ``tf.image.crop_and_resize`` and average-pools the samples; ``"gather"``
        interpolates explicitly from gathered neighbours (TFLite builtin ops only); ``"auto"``
        is ``"crop_and_resize"``, or ``kernels.gather_from_levels`` where ``kernels`` is given.
        ``"auto"`` and ``"crop_and_resize"`` have the gradient of the gather computation,
        written out (``kernels.bilinear_scatter``).
      kernels: None (the reference functions) or a :data:`ROIAlignKernels` of compiled
        versions of them (:mod:`tfrcnn.accel` passes XLA-compiled ones on CPUs).

    Returns:
      ``[K, oh, ow, C]`` in ``features.dtype``.

    Example:
      >>> features = tf.random.normal([2, 50, 76, 256])
      >>> boxes = tf.constant([[16.0, 32.0, 400.0, 300.0]])
      >>> roi_align(features, boxes, tf.constant([1]), output_size=(7, 7)).shape
      TensorShape([1, 7, 7, 256])
    """
    oh, ow = _pair(output_size)
    _check_sampling_ratio(sampling_ratio)
    _check_method(method)
    dtype, f, boxes, box_indices = _inputs(features, boxes, box_indices)
    y1, x1, y2, x2 = tf.unstack(boxes, num=4, axis=1)
    scale = tf.constant(spatial_scale, tf.float32)
    ys = _align_sample_coords(y1, y2, scale, oh, sampling_ratio, aligned)
    xs = _align_sample_coords(x1, x2, scale, ow, sampling_ratio, aligned)
    level = tf.zeros([tf.shape(boxes)[0]], tf.int32)
    out = _align([f], box_indices, ys, xs, level, (oh, ow), sampling_ratio, method, kernels)
    return tf.cast(out, dtype)


# --------------------------------------------------------------------------------------------------
# FPN


def assign_fpn_levels(boxes, min_level=2, max_level=5, canonical_scale=224.0, canonical_level=4):
    """FPN level of each ROI (Lin et al., 2017, eq. 1).

    ``k = floor(canonical_level + log2(sqrt(w * h) / canonical_scale))`` clamped to
    ``[min_level, max_level]``, with ``h = y2 - y1`` and ``w = x2 - x1`` in input pixels (negative
    sizes count as 0). A ``1e-6`` tolerance is added before the floor (as torchvision) so a box
    exactly at ``canonical_scale * 2**n`` gets level ``canonical_level + n`` despite float rounding.
    Zero-area (and NaN) boxes get ``min_level``.

    Args:
      boxes: ``[K, 4]`` float ``[y1, x1, y2, x2]``, input-image pixels.
      min_level, max_level: the pyramid levels available; default 2 and 5.
      canonical_scale: the ImageNet pre-training size; default 224.
      canonical_level: the level a ``canonical_scale`` box maps to; default 4.

    Returns:
      int32 ``[K]``.

    Example:
      >>> assign_fpn_levels(tf.constant([[0.0, 0.0, 224.0, 224.0], [0.0, 0.0, 32.0, 32.0]])).numpy()
      array([4, 2], dtype=int32)
    """
    if min_level > max_level:
        raise ValueError(f"min_level ({min_level}) must be <= max_level ({max_level}).")
    boxes = tf.reshape(tf.cast(tf.convert_to_tensor(boxes), tf.float32), [-1, 4])
    y1, x1, y2, x2 = tf.unstack(boxes, num=4, axis=1)
    h = tf.maximum(y2 - y1, 0.0)
    w = tf.maximum(x2 - x1, 0.0)
    size = tf.sqrt(h * w)
    tiny = 1e-30
    log2 = tf.math.log(tf.maximum(size, tiny) / float(canonical_scale)) / tf.math.log(2.0)
    level = tf.floor(float(canonical_level) + log2 + _FPN_LEVEL_EPS)
    level = tf.clip_by_value(level, float(min_level), float(max_level))
    level = tf.where(tf.math.is_nan(level), float(min_level), level)
    return tf.cast(level, tf.int32)


def multilevel_roi_align(
    features,
    boxes,
    box_indices,
    output_size=(7, 7),
    sampling_ratio=2,
    aligned=True,
    min_level=2,
    canonical_scale=224.0,
    canonical_level=4,
    method="auto",
    kernels=None,
):
    """RoIAlign on an FPN pyramid, each ROI pooled from its :func:`assign_fpn_levels` level.

    ``features`` lists the maps of levels ``min_level, min_level + 1, ...`` (level ``l`` has stride
    ``2**l``, i.e. ``spatial_scale = 1 / 2**l``); ``max_level = min_level + len(features) - 1``.
    Each ROI gets exactly the numbers :func:`roi_align` gives on its level. All levels are
    edge-padded and packed into one canvas per image (or flattened into one table for the gather),
    so a single crop_and_resize (or gather) serves every ROI and no level is computed for ROIs that do not use it.

    Args:
      features: list of ``[B, H_l, W_l, C]`` maps, finest first.
      boxes: ``[K, 4]`` float ``[y1, x1, y2, x2]``, input-image pixels.
      box_indices: ``[K]`` int, which image each ROI comes from.
      output_size, sampling_ratio, aligned, method, kernels: as :func:`roi_align`.
      min_level: the level of ``features[0]``; default 2.
      canonical_scale, canonical_level: as :func:`assign_fpn_levels`; default 224 and 4.

    Returns:
      ``[K, oh, ow, C]`` in the dtype of ``features[0]``.

    Example:
      >>> maps = [tf.random.normal([1, 800 // 2**l, 800 // 2**l, 256]) for l in (2, 3, 4, 5)]
      >>> boxes = tf.constant([[0.0, 0.0, 50.0, 60.0], [100.0, 100.0, 700.0, 600.0]])
      >>> multilevel_roi_align(maps, boxes, tf.constant([0, 0])).shape
      TensorShape([2, 7, 7, 256])
    """
    oh, ow = _pair(output_size)
    _check_sampling_ratio(sampling_ratio)
    _check_method(method)
    if isinstance(features, tf.Tensor) or not features:
        raise ValueError(
            "features must be a non-empty list of [B, H_l, W_l, C] maps, finest level first."
        )
    features = [tf.convert_to_tensor(m) for m in features]
    dtype = features[0].dtype
    num_levels = len(features)
    max_level = min_level + num_levels - 1
    _, _, boxes, box_indices = _inputs(features[0], boxes, box_indices)
    maps = [tf.cast(m, tf.float32) for m in features]

    level = assign_fpn_levels(boxes, min_level, max_level, canonical_scale, canonical_level)
    level = level - min_level
    scales = tf.constant([1.0 / 2.0 ** (min_level + i) for i in range(num_levels)], tf.float32)
    scale = tf.gather(scales, level)
    y1, x1, y2, x2 = tf.unstack(boxes, num=4, axis=1)
    ys = _align_sample_coords(y1, y2, scale, oh, sampling_ratio, aligned)
    xs = _align_sample_coords(x1, x2, scale, ow, sampling_ratio, aligned)
    out = _align(maps, box_indices, ys, xs, level, (oh, ow), sampling_ratio, method, kernels)
    return tf.cast(out, dtype)


# --------------------------------------------------------------------------------------------------
# Precise RoI Pooling


def _hat_cdf_weights(coord, size):
    """Weights and rows for ``I(c) = sum_i G(c - i) * row_i`` through an exclusive prefix table.

    ``G(t) = integral_{-inf}^t max(0, 1 - |s|) ds``. With ``n = floor(c)``, ``t = c - n``:
    rows ``< n`` weigh 1, row ``n`` weighs ``1 - (1 - t)**2 / 2``, row ``n + 1`` weighs
    ``t**2 / 2``, so ``I(c) = u0 P[n] + u1 P[n+1] + u2 P[n+2]`` with ``P[r] = sum_{i<r} row_i``
    and ``u = ((1 - t)**2 / 2, 1/2 + t - t**2, t**2 / 2)``. Indices are clipped to ``[0, size]``
    (rows outside the map are 0, so ``P`` is constant there). Returns ([3] weights, [3] int32
    indices).
    """
    size_f = tf.cast(size, coord.dtype)
    c = tf.clip_by_value(coord, -2.0, size_f + 2.0)  # beyond, I is constant (0 or the full sum)
    n = tf.floor(c)
    t = c - n
    weights = [0.5 * tf.square(1.0 - t), 0.5 + t - tf.square(t), 0.5 * tf.square(t)]
    n = tf.cast(n, tf.int32)
    index = [tf.clip_by_value(n + a, 0, size) for a in range(3)]
    return weights, index


def precise_roi_pool(features, boxes, box_indices, output_size=(7, 7), spatial_scale=1.0 / 16):
    """Precise RoI Pooling (PrRoI pooling; Jiang et al., 2018, "Acquisition of Localization
    Confidence for Accurate Object Detection").

    The map is made continuous by bilinear interpolation,
    ``f(y, x) = sum_ij F[i, j] * k(y - i) * k(x - j)``, ``k(t) = max(0, 1 - |t|)``, with ``F = 0``
    outside the map (so ``f`` fades to 0 over the cell beyond the border, and is 0 further out).
    Cell ``(i, j)`` sits at the integer point ``(i, j)``: as in the paper's reference implementation
    (vacancy/PreciseRoIPooling) the box is only multiplied by ``spatial_scale``, with no half-pixel
    offset, and its size is clamped at 0. The box is split into ``oh x ow`` equal bins and each
    output is ``(integral of f over the bin) / (bin area)``, computed exactly: no sampling count. A
    zero-area bin (a zero-width, zero-height or inverted box) gives 0, as the reference does, and a
    zero gradient; never NaN.

    Differentiable w.r.t. ``features`` and ``boxes`` (autodiff of the closed form; the integral is
    C1 in the bin edges, so box gradients are continuous).

    Implementation: the integral of the hat function is piecewise quadratic and separable, so the
    integral of ``f`` over ``(-inf, y] x (-inf, x]`` is a 3 x 3 weighted sum of a summed-area table
    of ``F``; a bin's integral is the usual four-corner difference of it, with corners shared
    between neighbouring bins (9 gathers of ``[K, oh + 1, ow + 1, C]``, no ``[K, H, W, C]``
    intermediate). The table and corner differences are accumulated in float64 (a float32
    summed-area table loses ~1e-3 to cancellation on realistic maps); the result is cast to
    ``features.dtype``. The error is ~1e-7 for ordinary boxes and grows only for bins far below a
    cell (on a 50 x 76 map of values in [0, 10], stride 16: 1e-5 for a 0.05-pixel box, 2e-3 for a
    0.005-pixel one).

    Args:
      features: ``[B, H, W, C]`` float feature maps.
      boxes: ``[K, 4]`` float ``[y1, x1, y2, x2]``, input-image pixels.
      box_indices: ``[K]`` int, which image each ROI comes from.
      output_size: int or ``(oh, ow)``; default ``(7, 7)``.
      spatial_scale: feature cells per input pixel; default ``1 / 16``.

    Returns:
      ``[K, oh, ow, C]`` in ``features.dtype``.

    Example:
      >>> features = tf.random.normal([1, 50, 76, 256])
      >>> boxes = tf.constant([[16.0, 32.0, 400.0, 300.0]])
      >>> precise_roi_pool(features, boxes, tf.constant([0]), output_size=7).shape
      TensorShape([1, 7, 7, 256])
    """
    oh, ow = _pair(output_size)
    dtype, f, boxes, box_indices = _inputs(features, boxes, box_indices)
    f64 = tf.cast(f, tf.float64)
    shape = tf.shape(f64)
    height, width, channels = shape[1], shape[2], shape[3]
    # exclusive summed-area table P[b, r, c] = sum_{i < r, j < c} F[b, i, j]: [B, H + 1, W + 1, C]
    table = tf.cumsum(tf.cumsum(f64, axis=1), axis=2)
    table = tf.pad(table, [[0, 0], [1, 0], [1, 0], [0, 0]])
    flat = tf.reshape(table, [-1, channels])

    b = tf.cast(boxes, tf.float64) * spatial_scale
    y1, x1, y2, x2 = tf.unstack(b, num=4, axis=1)
    bin_h = tf.maximum(y2 - y1, 0.0) / float(oh)
    bin_w = tf.maximum(x2 - x1, 0.0) / float(ow)
    ys = y1[:, None] + tf.range(oh + 1, dtype=tf.float64)[None, :] * bin_h[:, None]  # [K, oh + 1]
    xs = x1[:, None] + tf.range(ow + 1, dtype=tf.float64)[None, :] * bin_w[:, None]  # [K, ow + 1]
    wy, ry = _hat_cdf_weights(ys, height)
    wx, rx = _hat_cdf_weights(xs, width)

    # corner integrals I[k, p, q, :] = sum_ab wy[a] wx[b] P[image, ry[a], rx[b], :]
    corner = None
    for a in range(3):
        row_base = (box_indices[:, None] * (height + 1) + ry[a]) * (width + 1)
        row_base = row_base[:, :, None]  # [K, oh + 1, 1]
        partial = None
        for c in range(3):
            value = tf.gather(flat, row_base + rx[c][:, None, :]) * wx[c][:, None, :, None]
            partial = value if partial is None else partial + value
        term = partial * wy[a][:, :, None, None]
        corner = term if corner is None else corner + term
    integral = (corner[:, 1:, 1:] - corner[:, :-1, 1:]) - (corner[:, 1:, :-1] - corner[:, :-1, :-1])
    area = (bin_h * bin_w)[:, None, None, None]
    positive = area > 0.0
    out = tf.where(positive, integral / tf.where(positive, area, 1.0), tf.zeros_like(integral))
    return tf.cast(out, dtype)
