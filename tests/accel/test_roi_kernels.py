"""Accelerated ROI Align (tfrcnn.accel.roi): the reference's values and gradients.

Tolerance: 2e-5 absolute (float32 rounding of a different summation order).
"""

import numpy as np
import pytest
import tensorflow as tf

from tests.ops.test_roi import random_case, ref_roi_align
from tfrcnn import accel
from tfrcnn.accel import roi as accel_roi
from tfrcnn.ops import roi as reference

F32 = np.float32
TOLERANCE = dict(atol=2e-5, rtol=1e-5)


def _pool(module, op, f, b, i, method="auto"):
    if op == "roi_align":
        return module.roi_align(f, b, i, (3, 2), 0.5, 2, True, method=method)
    return module.multilevel_roi_align(
        [f, f[:, ::2, ::2]],
        b,
        i,
        (3, 2),
        min_level=1,
        canonical_scale=8.0,
        canonical_level=2,
        method=method,
    )


@pytest.mark.parametrize("op", ["roi_align", "multilevel_roi_align"])
@pytest.mark.parametrize("graph", [False, True])
def test_values_and_gradients_equal_the_reference(op, graph):
    """Forward values without a tape, and values plus the gradients with respect to features and
    boxes with one, equal the reference gather computation (eager and in a tf.function), and
    equal it inside accel.disabled() as well."""
    features, boxes, indices = random_case(5, batch=2, height=10, width=12, channels=3, n=20)
    f, b = tf.constant(features), tf.constant(boxes)
    upstream = tf.constant(np.cos(np.arange(len(boxes) * 18)).reshape(-1, 3, 2, 3).astype(F32))

    def run(module, method="auto"):
        forward = _pool(module, op, f, b, indices, method)
        with tf.GradientTape() as tape:
            tape.watch([f, b])
            out = _pool(module, op, f, b, indices, method)
        return [forward, out, *tape.gradient(out, [f, b], output_gradients=upstream)]

    if graph:
        want = tf.function(lambda: run(reference, "gather"))()
        got = tf.function(lambda: run(accel_roi))()
    else:
        want, got = run(reference, "gather"), run(accel_roi)
    with accel.disabled():
        plain = run(accel_roi)
    assert np.abs(want[2].numpy()).max() > 0.1
    for a, c, p in zip(got, want, plain):
        np.testing.assert_allclose(a.numpy(), c.numpy(), **TOLERANCE)
        np.testing.assert_allclose(p.numpy(), c.numpy(), **TOLERANCE)


@pytest.mark.parametrize("op", ["roi_align", "multilevel_roi_align"])
def test_feature_gradient_unknown_shapes_empty_and_repeatable(op):
    """Inside a tf.function with unknown shapes: the gather reference's feature gradient, bitwise
    the same on a second call, zero for no ROIs."""
    features, boxes, indices = random_case(11, batch=2, height=12, width=9, channels=5, n=40)
    upstream_all = np.sin(np.arange(len(boxes) * 3 * 2 * 5)).reshape(-1, 3, 2, 5).astype(F32)

    def gradient(module, method):
        @tf.function(
            input_signature=[
                tf.TensorSpec([None, None, None, None], tf.float32),
                tf.TensorSpec([None, 4], tf.float32),
                tf.TensorSpec([None], tf.int32),
                tf.TensorSpec([None, 3, 2, None], tf.float32),
            ]
        )
        def run(f, b, i, upstream):
            with tf.GradientTape() as tape:
                tape.watch(f)
                out = _pool(module, op, f, b, i, method)
            return tape.gradient(out, f, output_gradients=upstream)

        return run

    fast, want = gradient(accel_roi, "auto"), gradient(reference, "gather")
    got = fast(features, boxes, indices, upstream_all).numpy()
    np.testing.assert_allclose(
        got, want(features, boxes, indices, upstream_all).numpy(), **TOLERANCE
    )
    np.testing.assert_array_equal(fast(features, boxes, indices, upstream_all).numpy(), got)
    none = fast(
        features, np.zeros((0, 4), F32), np.zeros((0,), np.int32), np.zeros((0, 3, 2, 5), F32)
    ).numpy()
    assert none.shape == features.shape and not none.any()


def test_pyramid_borders_match_the_numpy_reference():
    """Boxes inside, across and outside the borders of four levels, in two images: the slow
    numpy reference's values."""
    rng = np.random.default_rng(21)
    maps = [
        rng.normal(size=(2, 80 // 2**level, 112 // 2**level, 4)).astype(F32)
        for level in (2, 3, 4, 5)
    ]
    centers = rng.uniform([-12, -12], [92, 124], (40, 2))
    sizes = np.exp(rng.uniform(np.log(4), np.log(500), (40, 2)))
    boxes = np.concatenate([centers - sizes / 2, centers + sizes / 2], 1).astype(F32)
    extra = [[76, 108, 80, 112], [0, 0, 80, 112], [10, 10, 10, 10], [-300, -300, -250, -250]]
    boxes = np.concatenate([boxes, extra]).astype(F32)
    indices = rng.integers(0, 2, len(boxes)).astype(np.int32)
    levels = reference.assign_fpn_levels(boxes, 2, 5).numpy()
    got = accel_roi.multilevel_roi_align(maps, boxes, indices, (7, 7), 2, True, 2).numpy()
    want = np.stack(
        [
            ref_roi_align(m, boxes, indices, 7, 7, 1.0 / 2 ** (2 + i), 2, True)
            for i, m in enumerate(maps)
        ]
    )[levels - 2, np.arange(len(boxes))]
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)


@pytest.mark.parametrize("kernel", ["reference", "in place", "compiled"])
@pytest.mark.parametrize("sr", [1, 2])
def test_bilinear_scatter_equals_a_numpy_scatter_add(kernel, sr):
    """The table gradient of the bilinear sampling, the reference's one scatter-add and the
    accelerated one that adds its terms one at a time (plain and compiled), equals a numpy loop
    that sends every sample's share of the upstream bin to its four neighbours."""

    rng = np.random.default_rng(3)
    k, oh, ow, channels, canvas_h, canvas_w, batch = 9, 3, 2, 4, 8, 7, 2
    upstream = rng.normal(size=(k, oh, ow, channels)).astype(F32)
    image = rng.integers(0, batch, k)
    # ROIs that overlap and repeat cells, so several terms add into the same cell
    ys = np.sort(rng.uniform(0, canvas_h - 1, (k, oh * sr)), 1).astype(F32)
    xs = np.sort(rng.uniform(0, canvas_w - 1, (k, ow * sr)), 1).astype(F32)
    y0, x0 = np.floor(ys), np.floor(xs)
    y1, x1 = np.ceil(ys), np.ceil(xs)
    wy = (rng.uniform(size=ys.shape) > 0.2).astype(F32)
    wx = (rng.uniform(size=xs.shape) > 0.2).astype(F32)
    row0 = ((image[:, None] * canvas_h + y0) * canvas_w).astype(np.int32)
    row1 = ((image[:, None] * canvas_h + y1) * canvas_w).astype(np.int32)
    cells = batch * canvas_h * canvas_w
    expected = np.zeros((cells, channels), np.float64)
    for r in range(k):
        for i in range(oh * sr):
            for j in range(ow * sr):
                share = upstream[r, i // sr, j // sr] * wy[r, i] * wx[r, j] / sr**2
                ly, lx = ys[r, i] - y0[r, i], xs[r, j] - x0[r, j]
                for row, a in ((row0[r, i], 1 - ly), (row1[r, i], ly)):
                    for col, b in ((int(x0[r, j]), 1 - lx), (int(x1[r, j]), lx)):
                        np.add.at(expected, row + col, share * a * b)
    scatter = {
        "reference": tf.function(reference._bilinear_scatter),
        "in place": tf.function(accel_roi.bilinear_scatter_in_place),
        "compiled": accel_roi.COMPILED_KERNELS.bilinear_scatter,
    }[kernel]
    got = scatter(
        tf.constant(upstream),
        row0,
        row1,
        x0.astype(np.int32),
        x1.astype(np.int32),
        tf.constant(ys - y0),
        tf.constant(xs - x0),
        wy,
        wx,
        cells,
        sr,
    ).numpy()
    assert np.abs(expected).max() > 0.5
    np.testing.assert_allclose(got, expected, **TOLERANCE)
