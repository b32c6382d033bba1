"""Tests for tfrcnn.ops.roi: slow numpy references written from the definitions, hand fixtures on a
numbered map, gradients, K = 0, dynamic shapes in tf.function, FPN levels."""

import math
import sys

import numpy as np
import pytest
import tensorflow as tf
from ai_edge_litert.interpreter import Interpreter

from tfrcnn.ops.roi import (
    assign_fpn_levels,
    multilevel_roi_align,
    precise_roi_pool,
    roi_align,
    roi_pool,
)

METHODS = ("auto", "crop_and_resize", "gather")
F32 = np.float32


def numbered_map():
    """F[i, j] = 10 * i + j on a 6 x 6 map, one image, one channel: [1, 6, 6, 1]."""
    i, j = np.meshgrid(np.arange(6), np.arange(6), indexing="ij")
    return (10 * i + j).astype(F32)[None, :, :, None]


def random_boxes(rng, n, img_h, img_w):
    """Boxes of every kind: inside, crossing each border, fully outside, tiny, zero-area, inverted."""
    out = []
    for _ in range(n):
        y1, y2 = np.sort(rng.uniform(-0.3 * img_h, 1.3 * img_h, 2))
        x1, x2 = np.sort(rng.uniform(-0.3 * img_w, 1.3 * img_w, 2))
        out.append([y1, x1, y2, x2])
    h, w = img_h, img_w
    out += [
        [0.2 * h, 0.1 * w, 0.8 * h, 0.9 * w],  # inside
        [-0.4 * h, 0.2 * w, 0.5 * h, 0.6 * w],  # crosses the top
        [0.3 * h, -0.5 * w, 0.6 * h, 0.4 * w],  # crosses the left
        [0.5 * h, 0.3 * w, 1.6 * h, 0.7 * w],  # crosses the bottom
        [0.1 * h, 0.6 * w, 0.4 * h, 1.7 * w],  # crosses the right
        [-0.5 * h, -0.5 * w, 1.5 * h, 1.5 * w],  # contains the image
        [-3.0 * h, -3.0 * w, -2.0 * h, -2.0 * w],  # far outside, top-left
        [1.5 * h, 1.2 * w, 2.5 * h, 2.0 * w],  # far outside, bottom-right
        [-0.2 * h, 0.3 * w, -0.05 * h, 0.5 * w],  # just above the image
        [0.31 * h, 0.47 * w, 0.31 * h + 0.01, 0.47 * w + 0.02],  # tiny
        [0.5 * h, 0.2 * w, 0.5 * h, 0.7 * w],  # zero height
        [0.4 * h, 0.4 * w, 0.4 * h, 0.4 * w],  # a point
        [0.7 * h, 0.6 * w, 0.2 * h, 0.1 * w],  # inverted
    ]
    return np.asarray(out, F32)


def random_case(seed, batch=2, height=7, width=9, channels=3, stride=2.0, n=12):
    rng = np.random.default_rng(seed)
    features = rng.uniform(-1, 1, (batch, height, width, channels)).astype(F32)
    boxes = random_boxes(rng, n, height * stride, width * stride)
    indices = rng.integers(0, batch, len(boxes)).astype(np.int32)
    return features, boxes, indices


# --------------------------------------------------------------------------------------------------
# numpy references, written from the definitions (loops over ROIs, bins and samples)


def round_half_away(v):
    """std::round of a float32 value (adding 0.5 in float64 is exact for it)."""
    v = float(F32(v))
    return int(math.floor(abs(v) + 0.5)) * (1 if v >= 0 else -1)


def ref_roi_pool(features, boxes, indices, oh, ow, scale):
    _, height, width, channels = features.shape
    out = np.zeros((len(boxes), oh, ow, channels), F32)
    for k, (y1, x1, y2, x2) in enumerate(boxes):
        f = features[indices[k]]
        sy, sx = round_half_away(F32(y1) * F32(scale)), round_half_away(F32(x1) * F32(scale))
        ey, ex = round_half_away(F32(y2) * F32(scale)), round_half_away(F32(x2) * F32(scale))
        bin_h = F32(max(ey - sy + 1, 1)) / F32(oh)
        bin_w = F32(max(ex - sx + 1, 1)) / F32(ow)
        for p in range(oh):
            hs = min(max(int(math.floor(F32(p) * bin_h)) + sy, 0), height)
            he = min(max(int(math.ceil(F32(p + 1) * bin_h)) + sy, 0), height)
            for q in range(ow):
                ws = min(max(int(math.floor(F32(q) * bin_w)) + sx, 0), width)
                we = min(max(int(math.ceil(F32(q + 1) * bin_w)) + sx, 0), width)
                if he <= hs or we <= ws:
                    continue  # empty bin: 0
                out[k, p, q] = f[hs:he, ws:we].reshape(-1, channels).max(axis=0)
    return out


def ref_bilinear(f, y, x):
    """The reference RoIAlign sample, border rule included (f: [H, W, C])."""
    height, width = f.shape[:2]
    if y < -1.0 or y > height or x < -1.0 or x > width:
        return np.zeros(f.shape[-1])
    y, x = max(y, 0.0), max(x, 0.0)
    y0, x0 = int(y), int(x)
    if y0 >= height - 1:
        y0 = y1 = height - 1
        y = float(y0)
    else:
        y1 = y0 + 1
    if x0 >= width - 1:
        x0 = x1 = width - 1
        x = float(x0)
    else:
        x1 = x0 + 1
    ly, lx = y - y0, x - x0
    return (
        (1 - ly) * (1 - lx) * f[y0, x0]
        + (1 - ly) * lx * f[y0, x1]
        + ly * (1 - lx) * f[y1, x0]
        + ly * lx * f[y1, x1]
    )


def ref_roi_align(features, boxes, indices, oh, ow, scale, sampling_ratio, aligned):
    channels = features.shape[-1]
    out = np.zeros((len(boxes), oh, ow, channels))
    offset = F32(0.5 if aligned else 0.0)
    sr = sampling_ratio
    for k, (y1, x1, y2, x2) in enumerate(boxes):
        f = features[indices[k]].astype(np.float64)
        sy, sx = F32(y1) * F32(scale) - offset, F32(x1) * F32(scale) - offset
        rh, rw = F32(y2) * F32(scale) - offset - sy, F32(x2) * F32(scale) - offset - sx
        if not aligned:
            rh, rw = max(rh, F32(1)), max(rw, F32(1))
        bin_h, bin_w = rh / F32(oh), rw / F32(ow)
        for p in range(oh):
            for q in range(ow):
                acc = np.zeros(channels)
                for iy in range(sr):
                    y = sy + F32(p) * bin_h + (F32(iy) + F32(0.5)) * bin_h / F32(sr)
                    for ix in range(sr):
                        x = sx + F32(q) * bin_w + (F32(ix) + F32(0.5)) * bin_w / F32(sr)
                        acc += ref_bilinear(f, float(y), float(x))
                out[k, p, q] = acc / (sr * sr)
    return out


def ref_precise_roi_pool(features, boxes, indices, oh, ow, scale):
    """Cell by cell exact integration of the bilinear surface (F = 0 outside), float64."""
    _, height, width, channels = features.shape

    def value(f, i, j):
        return f[i, j] if 0 <= i < height and 0 <= j < width else np.zeros(channels)

    def lin_integrals(a, b, cell):
        # integrals over [a, b] (inside [cell, cell + 1]) of the two hat pieces: (1 - (t - cell), t - cell)
        up = ((b - cell) ** 2 - (a - cell) ** 2) / 2.0
        return (b - a) - up, up

    out = np.zeros((len(boxes), oh, ow, channels))
    for k, (y1, x1, y2, x2) in enumerate(np.asarray(boxes, np.float64)):
        f = features[indices[k]].astype(np.float64)
        y1, x1, y2, x2 = y1 * scale, x1 * scale, y2 * scale, x2 * scale
        bin_h, bin_w = max(y2 - y1, 0.0) / oh, max(x2 - x1, 0.0) / ow
        if bin_h * bin_w == 0:
            continue
        for p in range(oh):
            ya, yb = y1 + p * bin_h, y1 + (p + 1) * bin_h
            for q in range(ow):
                xa, xb = x1 + q * bin_w, x1 + (q + 1) * bin_w
                total = np.zeros(channels)
                for h in range(math.floor(ya), math.ceil(yb)):
                    wy0, wy1 = lin_integrals(max(ya, h), min(yb, h + 1), h)
                    for w in range(math.floor(xa), math.ceil(xb)):
                        wx0, wx1 = lin_integrals(max(xa, w), min(xb, w + 1), w)
                        total += (
                            wy0 * wx0 * value(f, h, w)
                            + wy0 * wx1 * value(f, h, w + 1)
                            + wy1 * wx0 * value(f, h + 1, w)
                            + wy1 * wx1 * value(f, h + 1, w + 1)
                        )
                out[k, p, q] = total / (bin_h * bin_w)
    return out


def bilinear_zero_outside(f, y, x):
    """f(y, x) = sum_ij F[i, j] k(y - i) k(x - j), F = 0 outside; y, x arrays of the same shape."""
    height, width = f.shape[:2]
    out = np.zeros(y.shape + f.shape[2:])
    y0, x0 = np.floor(y).astype(int), np.floor(x).astype(int)
    for dy in (0, 1):
        for dx in (0, 1):
            i, j = y0 + dy, x0 + dx
            weight = np.maximum(0, 1 - np.abs(y - i)) * np.maximum(0, 1 - np.abs(x - j))
            inside = (i >= 0) & (i < height) & (j >= 0) & (j < width)
            vals = f[np.clip(i, 0, height - 1), np.clip(j, 0, width - 1)]
            out += (weight * inside)[..., None] * vals
    return out


def dense_precise_roi_pool(features, boxes, indices, oh, ow, scale, n):
    """Midpoint rule with n x n points a bin."""
    out = np.zeros((len(boxes), oh, ow, features.shape[-1]))
    t = (np.arange(n) + 0.5) / n
    for k, (y1, x1, y2, x2) in enumerate(np.asarray(boxes, np.float64) * scale):
        bin_h, bin_w = (y2 - y1) / oh, (x2 - x1) / ow
        ys = y1 + (np.arange(oh)[:, None] + t[None, :]) * bin_h  # [oh, n]
        xs = x1 + (np.arange(ow)[:, None] + t[None, :]) * bin_w  # [ow, n]
        yy, xx = np.meshgrid(ys.ravel(), xs.ravel(), indexing="ij")
        v = bilinear_zero_outside(features[indices[k]].astype(np.float64), yy, xx)
        out[k] = v.reshape(oh, n, ow, n, -1).mean(axis=(1, 3))
    return out


def torchvision_ops():
    """torchvision.ops if torch was imported before TensorFlow (TFRCNN_TEST_TORCH=1, see
    conftest; importing torch after TensorFlow can crash the interpreter), else None."""
    if "torch" not in sys.modules:
        return None
    try:
        import torch
        import torchvision.ops
    except Exception:  # noqa: BLE001 - any import problem means "not available"
        return None
    return torch, torchvision.ops


def to_torch_rois(torch, boxes, indices):
    b = np.asarray(boxes, F32)
    rois = np.concatenate([indices[:, None].astype(F32), b[:, [1, 0, 3, 2]]], axis=1)
    return torch.from_numpy(rois)


# --------------------------------------------------------------------------------------------------
# roi_pool


@pytest.mark.parametrize("output_size,scale", [((7, 7), 0.5), ((3, 5), 1.0), ((2, 2), 0.25)])
def test_roi_pool_matches_reference(output_size, scale):
    features, boxes, indices = random_case(1, stride=1.0 / scale)
    # add boxes whose scaled coordinates are exact halves (round half away from zero, also negative)
    halves = (
        np.asarray([[0.5, 1.5, 2.5, 3.5], [-2.5, -0.5, 4.5, 6.5], [-1.5, 2.5, 5.5, 9.5]], F32)
        / scale
    )
    boxes = np.concatenate([boxes, halves])
    indices = np.concatenate([indices, [0, 1, 1]]).astype(np.int32)
    got = roi_pool(features, boxes, indices, output_size, scale).numpy()
    want = ref_roi_pool(features, boxes, indices, *output_size, scale)
    np.testing.assert_array_equal(got, want)
    tv = torchvision_ops()
    if tv is not None:
        torch, ops = tv
        theirs = ops.roi_pool(
            torch.from_numpy(features).permute(0, 3, 1, 2),
            to_torch_rois(torch, boxes, indices),
            output_size,
            scale,
        )
        np.testing.assert_allclose(got, theirs.permute(0, 2, 3, 1).numpy(), atol=1e-6)


@pytest.mark.parametrize("output_size", [(7, 7), (6, 5), (14, 3)])
def test_roi_pool_in_a_graph_matches_reference_for_every_length(output_size):
    """Inside tf.function Grappler turns ``x / 7.0`` into ``x * (1 / 7.0)``, which is one ulp off
    for e.g. 22 / 7 and moved a bin edge by a whole cell; every ROI length 1..90 is checked."""
    rng = np.random.default_rng(3)
    features = rng.uniform(-1, 1, (1, 96, 96, 2)).astype(F32)
    lengths = np.arange(1, 91, dtype=F32)
    starts = rng.integers(0, 6, (len(lengths), 2)).astype(F32)
    # integer cell edges (scale 1): rows of length L, columns of length 91 - L
    boxes = np.stack(
        [starts[:, 0], starts[:, 1], starts[:, 0] + lengths - 1, starts[:, 1] + lengths[::-1] - 1],
        axis=1,
    )
    indices = np.zeros(len(boxes), np.int32)
    graph = tf.function(lambda f, b, i: roi_pool(f, b, i, output_size, 1.0))
    got = graph(features, boxes, indices).numpy()
    want = ref_roi_pool(features, boxes, indices, *output_size, 1.0)
    np.testing.assert_array_equal(got, want)


def test_roi_pool_fixture():
    # F[i, j] = 10 i + j grows along both axes, so each bin's max is its bottom-right cell.
    boxes = np.asarray(
        [
            # start = (1, 2), end = (4, 5): 4 x 4 cells, bins of 2: rows [1,3) [3,5), cols [2,4) [4,6)
            # -> max at (2,3)=23 (2,5)=25 (4,3)=43 (4,5)=45
            [1.0, 2.0, 4.0, 5.0],
            # round(0.4)=0, round(0.6)=1, round(2.5)=3 (half away from zero), round(3.49)=3:
            # rows 0..3 (bins [0,2) [2,4)), cols 1..3, bin 1.5: [0+1, ceil(1.5)+1) = [1,3), [1+1, 3+1) = [2,4)
            # -> (1,2)=12 (1,3)=13 (3,2)=32 (3,3)=33
            [0.4, 0.6, 2.5, 3.49],
            # start 4, end 9: 6 cells, bins of 3: [4,7) -> [4,6), [7,10) -> empty -> 0
            # -> (5,5)=55, the other three bins are empty
            [4.0, 4.0, 9.0, 9.0],
            # start -3, end 1: 5 cells, bin 2.5: [-3, 0) -> empty, [floor(2.5)-3, ceil(5)-3) = [-1, 2) -> [0, 2)
            # -> only bin (1,1) is non-empty: (1,1)=11
            [-3.0, -3.0, 1.0, 1.0],
            # pooled to 1 x 1 below: rows round(-2.5) = -3 (away from zero) .. round(-0.5) = -1, i.e. 3 cells
            # [-3, 0), all outside the map -> empty -> 0
            [-2.5, -0.5, -0.5, 3.0],
        ],
        F32,
    )
    want = np.asarray(
        [
            [[23, 25], [43, 45]],
            [[12, 13], [32, 33]],
            [[55, 0], [0, 0]],
            [[0, 0], [0, 11]],
        ],
        F32,
    )
    got = roi_pool(numbered_map(), boxes[:4], np.zeros(4, np.int32), (2, 2), 1.0).numpy()[..., 0]
    np.testing.assert_array_equal(got, want)
    got = roi_pool(numbered_map(), boxes[4:], [0], 1, 1.0).numpy()
    np.testing.assert_array_equal(got, np.zeros((1, 1, 1, 1), F32))
    # negative values: the maximum, not the maximum magnitude; empty bins still 0
    got = roi_pool(-numbered_map(), boxes[:1], [0], (2, 2), 1.0).numpy()[..., 0]
    np.testing.assert_array_equal(got, [[[-12, -14], [-32, -34]]])


def test_roi_pool_gradient_goes_to_argmax():
    rng = np.random.default_rng(3)
    # distinct values far apart compared with the finite-difference step
    features = (
        (rng.permutation(2 * 6 * 7 * 2).reshape(2, 6, 7, 2) * 0.05).astype(F32).astype(np.float64)
    )
    boxes = np.asarray(
        [[2.0, 3.0, 20.0, 24.0], [-6.0, 4.0, 9.0, 30.0], [10.0, -5.0, 30.0, 9.0]], F32
    )
    indices = np.asarray([0, 1, 0], np.int32)

    @tf.function
    def fn(f):
        return roi_pool(f, boxes, indices, (2, 3), 0.25)

    theoretical, numerical = tf.test.compute_gradient(fn, [tf.constant(features)], delta=1e-3)
    np.testing.assert_allclose(theoretical[0], numerical[0], atol=1e-3)
    # each output's gradient is a single 1 at its bin's argmax
    jac = theoretical[0].reshape(-1, features.size)
    out = fn(tf.constant(features)).numpy().ravel()
    nonempty = out != 0
    np.testing.assert_array_equal(jac.sum(axis=1)[nonempty], 1.0)
    np.testing.assert_array_equal(features.ravel()[jac.argmax(axis=1)][nonempty], out[nonempty])


def test_roi_pool_ties_go_to_the_first_cell_and_boxes_get_no_gradient():
    # a constant map (as after a ReLU): every bin's gradient goes to its first cell in row-major order
    features = tf.zeros([1, 6, 7, 1])
    boxes = tf.constant([[0.0, 0.0, 5.0, 6.0], [2.0, 3.0, 9.0, 9.0]])
    with tf.GradientTape(persistent=True) as tape:
        tape.watch([features, boxes])
        out = roi_pool(features, boxes, [0, 0], (2, 2), 1.0)
        weighted = tf.reduce_sum(out * tf.reshape(tf.range(1.0, 9.0), [2, 2, 2, 1]))
    grad = tape.gradient(weighted, features).numpy()[0, :, :, 0]
    assert tape.gradient(weighted, boxes) is None
    want = np.zeros((6, 7))
    # box 0: 6 x 7 cells, bin 3 x 3.5 -> bins start at rows 0, 3 and columns 0, 3 (floor(3.5) = 3)
    for (r, c), w in zip([(0, 0), (0, 3), (3, 0), (3, 3)], [1, 2, 3, 4]):
        want[r, c] += w
    # box 1: rows 2..9 (8 cells, bins [2, 6) [6, 10) -> the second is outside: empty, no gradient),
    # columns 3..9 (7 cells, bins [3, 6.5) -> start 3, and [floor(3.5) + 3, ...) -> start 6)
    for (r, c), w in zip([(2, 3), (2, 6)], [5, 6]):
        want[r, c] += w
    np.testing.assert_array_equal(grad, want)


# --------------------------------------------------------------------------------------------------
# roi_align


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize(
    "aligned,sampling_ratio,output_size",
    [(True, 2, (7, 7)), (False, 2, (3, 4)), (True, 1, (2, 3)), (False, 3, (5, 2))],
)
def test_roi_align_matches_reference(method, aligned, sampling_ratio, output_size):
    features, boxes, indices = random_case(2)
    got = roi_align(
        features, boxes, indices, output_size, 0.5, sampling_ratio, aligned, method
    ).numpy()
    want = ref_roi_align(features, boxes, indices, *output_size, 0.5, sampling_ratio, aligned)
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)
    tv = torchvision_ops()
    if tv is not None:
        torch, ops = tv
        theirs = ops.roi_align(
            torch.from_numpy(features).permute(0, 3, 1, 2),
            to_torch_rois(torch, boxes, indices),
            output_size,
            0.5,
            sampling_ratio,
            aligned,
        )
        np.testing.assert_allclose(got, theirs.permute(0, 2, 3, 1).numpy(), atol=1e-5)


@pytest.mark.parametrize("method", METHODS)
def test_roi_align_fixture(method):
    f = numbered_map()
    # aligned, scale 1, sampling 2, 2 x 2 bins. Inside the map the bilinear surface is exactly 10 y + x.
    # box [1, 1, 3, 5]: start (0.5, 0.5), bins 1 x 2; samples y 0.75 1.25 | 1.75 2.25 (means 1, 2),
    # x 1 2 | 3 4 (means 1.5, 3.5) -> [[11.5, 13.5], [21.5, 23.5]]
    # box [-2, 4, 2, 8]: start (-2.5, 3.5), bins 2 x 2; samples y -2 -1 | 0 1, x 4 5 | 6 7.
    # y = -2 < -1 -> 0; y = -1 is clamped to row 0; x = 5 is the last column; x = 6 (= W) is clamped to
    # column 5; x = 7 > W -> 0.
    #   bin (0,0): (-1,4)=4 + (-1,5)=5 (and two zeros) -> 9 / 4 = 2.25
    #   bin (0,1): (-1,6)=5 -> 5 / 4 = 1.25
    #   bin (1,0): (0,4)=4 (0,5)=5 (1,4)=14 (1,5)=15 -> 38 / 4 = 9.5
    #   bin (1,1): (0,6)=5 (1,6)=15, x = 7 -> 0 -> 20 / 4 = 5
    boxes = np.asarray([[1, 1, 3, 5], [-2, 4, 2, 8]], F32)
    got = roi_align(f, boxes, [0, 0], (2, 2), 1.0, 2, True, method).numpy()[..., 0]
    np.testing.assert_allclose(
        got, [[[11.5, 13.5], [21.5, 23.5]], [[2.25, 1.25], [9.5, 5.0]]], atol=1e-5
    )
    # not aligned: box [1, 1, 3, 5] starts at (1, 1): y 1.25 1.75 | 2.25 2.75, x 1.5 2.5 | 3.5 4.5
    # -> [[17, 19], [27, 29]]; the point box [2, 2, 2, 2] is forced to 1 x 1: samples at 2.125 2.375 |
    # 2.625 2.875 on both axes (means 2.25, 2.75) -> [[24.75, 25.25], [29.75, 30.25]]
    boxes = np.asarray([[1, 1, 3, 5], [2, 2, 2, 2]], F32)
    got = roi_align(f, boxes, [0, 0], (2, 2), 1.0, 2, False, method).numpy()[..., 0]
    np.testing.assert_allclose(
        got, [[[17, 19], [27, 29]], [[24.75, 25.25], [29.75, 30.25]]], atol=1e-5
    )
    # spatial scale 1/2 with one sample: box [4, 2, 8, 10] -> start (1.5, 0.5), size 2 x 4,
    # 1 x 2 bins: sample y = 2.5, x = 1.5 | 3.5 -> [[26.5, 28.5]]
    got = roi_align(f, [[4, 2, 8, 10]], [0], (1, 2), 0.5, 1, True, method).numpy()[..., 0]
    np.testing.assert_allclose(got, [[[26.5, 28.5]]], atol=1e-5)


def test_roi_align_methods_agree_values_and_gradients():
    features, boxes, indices = random_case(
        4, batch=2, height=11, width=13, channels=4, stride=4.0, n=30
    )
    f = tf.constant(features)
    b = tf.constant(boxes)
    weights = tf.constant(
        np.cos(np.arange(len(boxes) * 7 * 7 * 4)).reshape(-1, 7, 7, 4).astype(F32)
    )
    results = []
    for method in METHODS:
        with tf.GradientTape() as tape:
            tape.watch([f, b])
            loss = tf.reduce_sum(roi_align(f, b, indices, (7, 7), 0.25, 2, True, method) * weights)
        out = roi_align(f, b, indices, (7, 7), 0.25, 2, True, method)
        results.append((out.numpy(), *[g.numpy() for g in tape.gradient(loss, [f, b])]))
    for result in results[:-1]:
        for a, c in zip(result, results[-1]):  # against the gather path (METHODS[-1])
            np.testing.assert_allclose(a, c, atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize("method", ["auto", "crop_and_resize"])
@pytest.mark.parametrize("op", ["roi_align", "multilevel_roi_align"])
def test_roi_align_feature_gradient_unknown_shapes_empty_and_repeatable(op, method):
    """The crop_and_resize and auto paths' feature gradient (the written-out scatter-add) inside a
    tf.function with unknown shapes: equal to the gather path's autodiff gradient, bitwise the
    same on a second call (TF's own CropAndResizeGradImage is not), zero for no ROIs."""
    features, boxes, indices = random_case(11, batch=2, height=12, width=9, channels=5, n=40)
    upstream_all = np.sin(np.arange(len(boxes) * 3 * 2 * 5)).reshape(-1, 3, 2, 5).astype(F32)

    def pooled(f, b, i, method):
        if op == "roi_align":
            return roi_align(f, b, i, (3, 2), 0.5, 2, True, method)
        return multilevel_roi_align(
            [f, f[:, ::2, ::2]],
            b,
            i,
            (3, 2),
            min_level=1,
            canonical_scale=8.0,
            canonical_level=2,
            method=method,
        )

    def gradient(method):
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
                out = pooled(f, b, i, method)
            return tape.gradient(out, f, output_gradients=upstream)

        return run

    fast, reference = gradient(method), gradient("gather")
    got = fast(features, boxes, indices, upstream_all).numpy()
    np.testing.assert_allclose(
        got, reference(features, boxes, indices, upstream_all).numpy(), atol=2e-5, rtol=1e-5
    )
    assert np.abs(got).max() > 0.1
    np.testing.assert_array_equal(fast(features, boxes, indices, upstream_all).numpy(), got)
    none = fast(
        features, np.zeros((0, 4), F32), np.zeros((0,), np.int32), np.zeros((0, 3, 2, 5), F32)
    ).numpy()
    assert none.shape == features.shape and not none.any()


def away_from_kinks(boxes, scale, output_size, sampling_ratio, aligned, margin=0.02):
    """True if no RoIAlign sample lies within `margin` cells of an integer (bilinear kink) or a border."""
    ys = []
    offset = 0.5 if aligned else 0.0
    for c1, c2, n in (
        (boxes[:, 0], boxes[:, 2], output_size[0]),
        (boxes[:, 1], boxes[:, 3], output_size[1]),
    ):
        start = c1 * scale - offset
        step = (c2 - c1) * scale / (n * sampling_ratio)
        ys.append(start[:, None] + (np.arange(n * sampling_ratio) + 0.5)[None, :] * step[:, None])
    frac = np.concatenate([np.abs(v - np.round(v)).ravel() for v in ys])
    return frac.min() > margin


@pytest.mark.parametrize("method", METHODS)
def test_roi_align_gradients(method):
    rng = np.random.default_rng(5)
    features = rng.uniform(-1, 1, (2, 5, 6, 2))
    # boxes crossing borders, chosen so that no sample sits near a kink (finite differences stay valid)
    boxes = None
    while boxes is None or not away_from_kinks(boxes, 0.5, (2, 3), 2, True):
        boxes = np.stack(
            [
                rng.uniform(-3, 6, 3),
                rng.uniform(-3, 6, 3),
                rng.uniform(8, 13, 3),
                rng.uniform(8, 15, 3),
            ],
            1,
        ).astype(np.float64)
    indices = np.asarray([0, 1, 1], np.int32)

    @tf.function
    def by_features(f):
        return roi_align(f, boxes, indices, (2, 3), 0.5, 2, True, method)

    @tf.function
    def by_boxes(b):
        return roi_align(features, b, indices, (2, 3), 0.5, 2, True, method)

    theoretical, numerical = tf.test.compute_gradient(
        by_features, [tf.constant(features)], delta=1e-3
    )
    np.testing.assert_allclose(theoretical[0], numerical[0], atol=1e-3)
    theoretical, numerical = tf.test.compute_gradient(by_boxes, [tf.constant(boxes)], delta=1e-2)
    assert np.abs(theoretical[0]).max() > 0.01
    np.testing.assert_allclose(theoretical[0], numerical[0], atol=2e-3)


def test_roi_align_rejects_bad_arguments():
    f = np.zeros((1, 4, 4, 1), F32)
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="sampling_ratio"):
            roi_align(f, [[0, 0, 1, 1]], [0], sampling_ratio=bad)
    with pytest.raises(ValueError, match="method"):
        roi_align(f, [[0, 0, 1, 1]], [0], method="nearest")
    with pytest.raises(ValueError, match="output_size"):
        roi_align(f, [[0, 0, 1, 1]], [0], output_size=(0, 7))
    with pytest.raises(ValueError, match="output_size"):
        roi_pool(f, [[0, 0, 1, 1]], [0], output_size=(7, 7, 7))


# --------------------------------------------------------------------------------------------------
# precise_roi_pool


@pytest.mark.parametrize("output_size,scale", [((7, 7), 0.5), ((2, 3), 1.0)])
def test_precise_roi_pool_matches_reference(output_size, scale):
    features, boxes, indices = random_case(6, stride=1.0 / scale)
    got = precise_roi_pool(features, boxes, indices, output_size, scale).numpy()
    want = ref_precise_roi_pool(features, boxes, indices, *output_size, scale)
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)


def test_precise_roi_pool_fixture():
    f = numbered_map()
    # Inside [0, 5]^2 the surface is 10 y + x, so a bin's mean is its centre's value.
    # box [1, 2, 4, 5] at scale 1 (no half-pixel offset), 2 x 2 bins of 1.5: centres y 1.75 3.25,
    # x 2.75 4.25 -> [[20.25, 21.75], [35.25, 36.75]]
    # box [4, 4, 9, 9]: bins [4, 6.5] and [6.5, 9]. f = 10 S1(y) S0(x) + S0(y) S1(x) with
    # S0 = sum_i k(t - i) (1 on [0, 5], 6 - t on [5, 6], 0 beyond) and S1 = sum_i i k(t - i)
    # (t on [0, 5], 5 (6 - t) on [5, 6]). Over [4, 6.5]: int S0 = 1 + 0.5 = 1.5, int S1 = 4.5 + 2.5 = 7,
    # so bin (0,0) = (10 * 7 * 1.5 + 1.5 * 7) / 2.5**2 = 115.5 / 6.25 = 18.48; the others lie beyond
    # one cell outside the map -> 0.
    # box [3, 3, 3, 5] has zero height -> 0 (the reference's choice); the inverted box too.
    boxes = np.asarray([[1, 2, 4, 5], [4, 4, 9, 9], [3, 3, 3, 5], [4, 4, 2, 2]], F32)
    got = precise_roi_pool(f, boxes, [0] * 4, (2, 2), 1.0).numpy()[..., 0]
    want = [
        [[20.25, 21.75], [35.25, 36.75]],
        [[18.48, 0.0], [0.0, 0.0]],
        [[0.0, 0.0], [0.0, 0.0]],
        [[0.0, 0.0], [0.0, 0.0]],
    ]
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_precise_roi_pool_matches_dense_integration():
    features, boxes, indices = random_case(7, n=6)
    keep = (boxes[:, 2] - boxes[:, 0] > 0.5) & (boxes[:, 3] - boxes[:, 1] > 0.5)
    boxes, indices = boxes[keep], indices[keep]
    got = precise_roi_pool(features, boxes, indices, (3, 4), 0.5).numpy()
    errors = [
        np.abs(dense_precise_roi_pool(features, boxes, indices, 3, 4, 0.5, n) - got).max()
        for n in (3, 9, 27)
    ]
    assert errors[0] > errors[1] > errors[2], errors
    assert errors[2] < 2e-3, errors


def test_precise_roi_pool_gradients():
    rng = np.random.default_rng(8)
    features = rng.uniform(-1, 1, (2, 5, 6, 2))
    boxes = np.asarray(
        [[1.3, -2.2, 7.9, 9.1], [-3.1, 4.4, 12.7, 14.2], [2.6, 2.2, 4.1, 6.3]], np.float64
    )
    indices = np.asarray([1, 0, 1], np.int32)

    @tf.function
    def by_features(f):
        return precise_roi_pool(f, boxes, indices, (2, 3), 0.5)

    @tf.function
    def by_boxes(b):
        return precise_roi_pool(features, b, indices, (2, 3), 0.5)

    theoretical, numerical = tf.test.compute_gradient(
        by_features, [tf.constant(features)], delta=1e-3
    )
    np.testing.assert_allclose(theoretical[0], numerical[0], atol=1e-4)
    theoretical, numerical = tf.test.compute_gradient(by_boxes, [tf.constant(boxes)], delta=1e-3)
    assert np.abs(theoretical[0]).max() > 0.01
    np.testing.assert_allclose(theoretical[0], numerical[0], atol=1e-3)


def test_precise_roi_pool_degenerate_boxes_give_zero_without_nan():
    f = tf.constant(np.random.default_rng(9).uniform(-1, 1, (1, 4, 5, 3)).astype(F32))
    boxes = tf.constant(
        [[2.0, 2.0, 2.0, 6.0], [1.0, 1.0, 1.0, 1.0], [5.0, 5.0, 1.0, 1.0], [0.0, 0.0, 0.0, 0.0]]
    )
    with tf.GradientTape() as tape:
        tape.watch([f, boxes])
        out = precise_roi_pool(f, boxes, [0] * 4, (2, 2), 1.0)
        loss = tf.reduce_sum(out)
    grads = tape.gradient(loss, [f, boxes])
    np.testing.assert_array_equal(out.numpy(), 0.0)
    for g in grads:
        assert np.all(np.isfinite(g.numpy()))


# --------------------------------------------------------------------------------------------------
# common behaviour: K = 0, dynamic shapes, dtypes


def all_ops():
    return {
        "roi_pool": lambda f, b, i: roi_pool(f, b, i, (3, 2), 0.5),
        "roi_align_crop_and_resize": lambda f, b, i: roi_align(
            f, b, i, (3, 2), 0.5, 2, True, "crop_and_resize"
        ),
        "roi_align_gather": lambda f, b, i: roi_align(f, b, i, (3, 2), 0.5, 2, False, "gather"),
        "roi_align_auto": lambda f, b, i: roi_align(f, b, i, (3, 2), 0.5, 2, True, "auto"),
        "precise_roi_pool": lambda f, b, i: precise_roi_pool(f, b, i, (3, 2), 0.5),
        "multilevel_roi_align": lambda f, b, i: multilevel_roi_align(
            [f, f[:, ::2, ::2]], b, i, (3, 2), min_level=1, canonical_scale=8.0, canonical_level=2
        ),
    }


@pytest.mark.parametrize("name", sorted(all_ops()))
def test_zero_rois_and_dynamic_shapes_in_tf_function(name):
    op = all_ops()[name]
    features, boxes, indices = random_case(10, height=8, width=10, channels=3)
    eager = op(features, boxes, indices).numpy()
    assert eager.shape == (len(boxes), 3, 2, 3)
    empty = op(features, np.zeros((0, 4), F32), np.zeros((0,), np.int32))
    assert empty.shape == (0, 3, 2, 3)

    @tf.function(
        input_signature=[
            tf.TensorSpec([None, None, None, None], tf.float32),
            tf.TensorSpec([None, 4], tf.float32),
            tf.TensorSpec([None], tf.int32),
        ]
    )
    def graph(f, b, i):
        return op(f, b, i)

    np.testing.assert_allclose(graph(features, boxes, indices).numpy(), eager, atol=1e-6)
    assert graph(features, np.zeros((0, 4), F32), np.zeros((0,), np.int32)).shape == (0, 3, 2, 3)
    # another map size through the same trace
    other = graph(features[:, :5, :7], boxes, indices).numpy()
    np.testing.assert_allclose(other, op(features[:, :5, :7], boxes, indices).numpy(), atol=1e-6)


@pytest.mark.parametrize("name", sorted(all_ops()))
@pytest.mark.parametrize("dtype", [tf.float16, tf.bfloat16])
def test_mixed_precision_dtype(name, dtype):
    op = all_ops()[name]
    features, boxes, indices = random_case(11, height=8, width=10, channels=3)
    low = tf.cast(features, dtype)
    out = op(low, boxes, indices)
    assert out.dtype == dtype
    want = op(tf.cast(low, tf.float32), boxes, indices).numpy()
    np.testing.assert_allclose(tf.cast(out, tf.float32).numpy(), want, atol=2e-2, rtol=2e-2)


# --------------------------------------------------------------------------------------------------
# FPN


def test_assign_fpn_levels_hand_cases():
    boxes = np.asarray(
        [
            [0, 0, 224, 224],  # canonical -> 4
            [0, 0, 448, 448],  # 2x -> 5 (exactly at the boundary)
            [0, 0, 112, 112],  # 1/2 -> 3
            [0, 0, 223, 223],  # just under 224 -> 3
            [0, 0, 56, 56],  # 1/4 -> 2
            [0, 0, 55, 55],  # < 1/4 -> floor gives 1, clamped to 2
            [10, 10, 10, 50],  # zero area -> min level
            [0, 0, 2000, 2000],  # huge -> clamped to 5
            [0, 0, 112, 448],  # sqrt(112 * 448) = 224 -> 4
            [5, 5, 0, 0],  # inverted -> treated as zero area
        ],
        F32,
    )
    np.testing.assert_array_equal(assign_fpn_levels(boxes).numpy(), [4, 5, 3, 3, 2, 2, 2, 5, 4, 2])
    np.testing.assert_array_equal(
        assign_fpn_levels(
            boxes[:3], min_level=3, max_level=4, canonical_scale=112.0, canonical_level=3
        ).numpy(),
        [4, 4, 3],
    )
    assert assign_fpn_levels(np.zeros((0, 4), F32)).shape == (0,)
    assert assign_fpn_levels(boxes).dtype == tf.int32
    with pytest.raises(ValueError, match="min_level"):
        assign_fpn_levels(boxes, min_level=5, max_level=2)


@pytest.mark.parametrize("method", METHODS)
def test_multilevel_roi_align_equals_per_level_roi_align(method):
    rng = np.random.default_rng(12)
    image_h, image_w, min_level = 96, 128, 2
    maps = [
        rng.uniform(-1, 1, (2, image_h // 2**level, image_w // 2**level, 3)).astype(F32)
        for level in (2, 3, 4, 5)
    ]
    # sizes spread over all levels (canonical 224 at level 4 -> ~28 px at 2, ~448 px at 5), many crossing borders
    centers = rng.uniform([-10, -10], [image_h + 10, image_w + 10], (40, 2))
    sizes = np.exp(rng.uniform(np.log(8), np.log(600), (40, 2)))
    boxes = np.concatenate([centers - sizes / 2, centers + sizes / 2], 1).astype(F32)
    extra = [
        [0, 0, 0, 0],
        [200, 300, 260, 360],
        [-200, -180, 300, 320],
        [-20, 10, 460, 500],
        [40, 60, 41, 61],
    ]
    boxes = np.concatenate([boxes, extra]).astype(F32)
    indices = rng.integers(0, 2, len(boxes)).astype(np.int32)
    levels = assign_fpn_levels(boxes, 2, 5).numpy()
    assert set(levels) == {2, 3, 4, 5}
    got = multilevel_roi_align(
        maps, boxes, indices, (7, 7), 2, True, min_level, method=method
    ).numpy()
    per_level = [
        roi_align(m, boxes, indices, (7, 7), 1.0 / 2 ** (min_level + i), 2, True, method).numpy()
        for i, m in enumerate(maps)
    ]
    want = np.stack(per_level)[levels - min_level, np.arange(len(boxes))]
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)


@pytest.mark.parametrize("method", METHODS)
def test_multilevel_roi_align_borders_every_level_and_method(method):
    """Boxes inside, across and outside the borders, in two images, on every level: the
    reference's values, and a single-level roi_align with aligned=False too."""
    rng = np.random.default_rng(21)
    maps = [
        rng.normal(size=(2, 80 // 2**level, 112 // 2**level, 4)).astype(F32)
        for level in (2, 3, 4, 5)
    ]
    centers = rng.uniform([-12, -12], [92, 124], (60, 2))
    sizes = np.exp(rng.uniform(np.log(4), np.log(500), (60, 2)))
    boxes = np.concatenate([centers - sizes / 2, centers + sizes / 2], 1).astype(F32)
    # the last cell row / column, a box ending exactly on the map's edge, degenerate and far-out boxes
    extra = [
        [76, 108, 80, 112],
        [0, 0, 80, 112],
        [10, 10, 10, 10],
        [-300, -300, -250, -250],
        [79.5, 0, 81, 112],
    ]
    boxes = np.concatenate([boxes, extra]).astype(F32)
    indices = rng.integers(0, 2, len(boxes)).astype(np.int32)
    levels = assign_fpn_levels(boxes, 2, 5).numpy()
    got = multilevel_roi_align(maps, boxes, indices, (7, 7), 2, True, 2, method=method).numpy()
    want = np.stack(
        [
            ref_roi_align(m, boxes, indices, 7, 7, 1.0 / 2 ** (2 + i), 2, True)
            for i, m in enumerate(maps)
        ]
    )[levels - 2, np.arange(len(boxes))]
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)
    single = roi_align(maps[1], boxes, indices, (3, 5), 1.0 / 8, 2, False, method=method).numpy()
    np.testing.assert_allclose(
        single, ref_roi_align(maps[1], boxes, indices, 3, 5, 1.0 / 8, 2, False), atol=1e-5, rtol=0
    )


# --------------------------------------------------------------------------------------------------
# TFLite


def test_tflite_paths_convert_with_builtin_ops_only():
    """roi_pool and the gather RoIAlign paths convert without Flex and give the same numbers."""
    features, boxes, indices = random_case(13, batch=1, height=8, width=10, channels=3, n=4)

    @tf.function(
        input_signature=[
            tf.TensorSpec(features.shape, tf.float32),
            tf.TensorSpec(boxes.shape, tf.float32),
            tf.TensorSpec(indices.shape, tf.int32),
        ]
    )
    def model(f, b, i):
        return {
            "pool": roi_pool(f, b, i, (3, 3), 0.5),
            "align": roi_align(f, b, i, (3, 3), 0.5, 2, True, "gather"),
            "multilevel": multilevel_roi_align(
                [f, f[:, ::2, ::2]],
                b,
                i,
                (3, 3),
                min_level=1,
                canonical_scale=8.0,
                canonical_level=2,
                method="gather",
            ),
        }

    converter = tf.lite.TFLiteConverter.from_concrete_functions(
        [model.get_concrete_function()], model
    )
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]  # no Flex
    interpreter = Interpreter(model_content=converter.convert())
    interpreter.allocate_tensors()
    inputs = {tuple(v.shape): v for v in (features, boxes, indices)}
    for detail in interpreter.get_input_details():
        interpreter.set_tensor(detail["index"], inputs[tuple(detail["shape"])])
    interpreter.invoke()
    got = [interpreter.get_tensor(d["index"]) for d in interpreter.get_output_details()]
    want = model(features, boxes, indices)
    assert len(got) == 3
    for name, value in want.items():
        assert any(
            g.shape == value.shape and np.allclose(g, value.numpy(), atol=1e-5) for g in got
        ), name
