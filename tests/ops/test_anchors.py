"""Tests of tfrcnn.ops.anchors: a hand-written grid, a loop reference, dynamic sizes."""

import math

import numpy as np
import pytest
import tensorflow as tf

from tfrcnn.ops.anchors import (
    anchor_shapes,
    anchors_inside_mask,
    generate_anchors,
    generate_multilevel_anchors,
)

R2 = math.sqrt(2.0)


def loop_anchors(height, width, stride, scales, ratios, offset=0.5):
    """The obvious generator: rows, then columns, then ratios, then scales."""
    out = []
    for i in range(height):
        for j in range(width):
            cy, cx = (i + offset) * stride, (j + offset) * stride
            for r in ratios:
                for s in scales:
                    h, w = s * math.sqrt(r), s / math.sqrt(r)
                    out.append([cy - h / 2, cx - w / 2, cy + h / 2, cx + w / 2])
    return np.array(out, np.float64).reshape(-1, 4)


def test_anchor_shapes_order_area_and_ratio():
    shapes = anchor_shapes([8, 16], [0.5, 1, 2]).numpy()
    assert shapes.dtype == np.float32 and shapes.shape == (6, 2)
    # Ratio outer, scale inner: (0.5, 8), (0.5, 16), (1, 8), (1, 16), (2, 8), (2, 16).
    expected = [
        [8 / R2, 8 * R2],
        [16 / R2, 16 * R2],
        [8, 8],
        [16, 16],
        [8 * R2, 8 / R2],
        [16 * R2, 16 / R2],
    ]
    np.testing.assert_allclose(shapes, expected, rtol=1e-6)
    np.testing.assert_allclose(shapes[:, 0] * shapes[:, 1], [64, 256] * 3, rtol=1e-6)
    np.testing.assert_allclose(shapes[:, 0] / shapes[:, 1], [0.5, 0.5, 1, 1, 2, 2], rtol=1e-6)


def test_two_by_two_grid_by_hand():
    anchors = generate_anchors((2, 2), 16, (8, 16), (0.5, 1, 2)).numpy()
    assert anchors.shape == (2 * 2 * 6, 4) and anchors.dtype == np.float32
    h, w = 8 / R2, 8 * R2  # ratio 0.5, scale 8
    by_hand = {
        # index: location (i, j), anchor a = ratio_index * 2 + scale_index
        0: [8 - h / 2, 8 - w / 2, 8 + h / 2, 8 + w / 2],  # (0, 0), ratio 0.5, scale 8
        2: [4, 4, 12, 12],  # (0, 0), ratio 1, scale 8, centre (8, 8)
        3: [0, 0, 16, 16],  # (0, 0), ratio 1, scale 16
        8: [4, 20, 12, 28],  # (0, 1) -> 1 * 6 + 2: centre (8, 24)
        15: [16, 0, 32, 16],  # (1, 0) -> 2 * 6 + 3: centre (24, 8), ratio 1, scale 16
        # (1, 1) -> 3 * 6 + 5: centre (24, 24), ratio 2, scale 16: h = 16 sqrt 2, w = 16 / sqrt 2
        23: [24 - 8 * R2, 24 - 4 * R2, 24 + 8 * R2, 24 + 4 * R2],
    }
    for index, box in by_hand.items():
        np.testing.assert_allclose(anchors[index], box, rtol=1e-6, err_msg=f"anchor {index}")
    # Reshapes to [H, W, A, 4] like the RPN head: every anchor of location (1, 0) is centred there.
    grid = anchors.reshape(2, 2, 6, 4)
    np.testing.assert_allclose((grid[1, 0, :, :2] + grid[1, 0, :, 2:]) / 2, [[24, 8]] * 6)


@pytest.mark.parametrize(
    "size,stride,scales,ratios,offset",
    [
        ((3, 5), 16, (128, 256, 512), (0.5, 1, 2), 0.5),
        ((7, 2), 8, (32,), (0.5, 1, 2), 0.0),
        ((4, 4), 32.0, (20.0, 40.0), (1.0, 3.0, 0.25, 1.5), 0.25),
        ((1, 1), 4, (8,), (1,), 0.5),
    ],
)
def test_matches_loop_reference(size, stride, scales, ratios, offset):
    got = generate_anchors(size, stride, scales, ratios, offset).numpy()
    np.testing.assert_allclose(
        got, loop_anchors(*size, stride, scales, ratios, offset), rtol=1e-5, atol=1e-4
    )


def test_dynamic_feature_size_in_tf_function():
    @tf.function(input_signature=[tf.TensorSpec([None, None, None, 3], tf.float32)])
    def anchors_for(images):
        shape = tf.shape(images)
        feature_size = (shape[1] // 16, shape[2] // 16)
        return generate_anchors(feature_size, 16, (32, 64), (0.5, 1, 2))

    got = anchors_for(tf.zeros([1, 64, 96, 3])).numpy()
    np.testing.assert_allclose(
        got, loop_anchors(4, 6, 16, (32, 64), (0.5, 1, 2)), rtol=1e-5, atol=1e-4
    )
    got = anchors_for(tf.zeros([1, 32, 16, 3])).numpy()  # same trace, another size
    assert got.shape == (2 * 1 * 6, 4)

    @tf.function(input_signature=[tf.TensorSpec([None, None, None, 8], tf.float32)])
    def anchors_for_features(features):  # feature_size as one [2] tensor
        return generate_anchors(tf.shape(features)[1:3], 8, (16,), (1,), offset=0.0)

    got = anchors_for_features(tf.zeros([2, 3, 2, 8])).numpy()
    np.testing.assert_allclose(got, loop_anchors(3, 2, 8, (16,), (1,), 0.0), atol=1e-5)
    # Static sizes give a static shape.
    assert generate_anchors((3, 4), 16, (8,), (1, 2)).shape == (24, 4)


def test_multilevel_per_level_and_shared_scales():
    sizes, strides, ratios = [(4, 4), (2, 3), (1, 1)], [8, 16, 32], (0.5, 1, 2)
    per_level = generate_multilevel_anchors(sizes, strides, [[32], [64], [128]], ratios).numpy()
    expected = np.concatenate(
        [
            loop_anchors(*sizes[0], 8, (32,), ratios),
            loop_anchors(*sizes[1], 16, (64,), ratios),
            loop_anchors(*sizes[2], 32, (128,), ratios),
        ]
    )
    assert per_level.shape == ((16 + 6 + 1) * 3, 4)
    np.testing.assert_allclose(per_level, expected, rtol=1e-5, atol=1e-4)
    shared = generate_multilevel_anchors(sizes, strides, (16, 24), ratios).numpy()
    expected = np.concatenate(
        [loop_anchors(*s, st, (16, 24), ratios) for s, st in zip(sizes, strides)]
    )
    np.testing.assert_allclose(shared, expected, rtol=1e-5, atol=1e-4)
    with pytest.raises(ValueError, match="one stride a level"):
        generate_multilevel_anchors(sizes, [8, 16], (16,), ratios)
    with pytest.raises(ValueError, match="lists of scales"):
        generate_multilevel_anchors(sizes, strides, [[32], [64]], ratios)


def test_anchors_inside_mask():
    anchors = np.array(
        [[0, 0, 10, 10], [-1, 0, 5, 5], [0, 0, 10, 11], [2, 2, 8, 8], [-3, -3, 12, 12]], np.float32
    )
    np.testing.assert_array_equal(
        anchors_inside_mask(anchors, (10, 10)).numpy(), [True, False, False, True, False]
    )
    np.testing.assert_array_equal(
        anchors_inside_mask(anchors, (10, 10), allowed_border=1).numpy(),
        [True, True, True, True, False],
    )
    per_image = anchors_inside_mask(anchors, np.array([[10, 10], [8, 20]], np.int32)).numpy()
    np.testing.assert_array_equal(
        per_image, [[True, False, False, True, False], [False, False, False, True, False]]
    )
    batched = anchors_inside_mask(np.stack([anchors, anchors + 100]), [[10, 10], [200, 200]])
    np.testing.assert_array_equal(batched.numpy(), [[True, False, False, True, False], [True] * 5])
