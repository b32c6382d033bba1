"""AnchorGenerator: the anchors of ops.generate_anchors, counts, shapes, config and .keras round trips."""

import keras
import numpy as np
import tensorflow as tf
from conftest import global_policy

from tfrcnn.layers.anchor_generator import AnchorGenerator
from tfrcnn.ops.anchors import anchor_shapes, generate_anchors


def test_anchors_equal_the_op_for_the_feature_size():
    layer = AnchorGenerator(stride=16, scales=(32, 64), aspect_ratios=(0.5, 1.0, 2.0), offset=0.5)
    features = tf.zeros([2, 3, 5, 7])
    anchors = layer(features)
    expected = generate_anchors((3, 5), 16.0, (32.0, 64.0), (0.5, 1.0, 2.0), offset=0.5)
    assert anchors.shape == (3 * 5 * 6, 4)
    np.testing.assert_array_equal(anchors.numpy(), expected.numpy())
    np.testing.assert_array_equal(
        layer.anchor_shapes().numpy(), anchor_shapes((32.0, 64.0), (0.5, 1.0, 2.0)).numpy()
    )


def test_hand_computed_anchors_of_a_small_grid():
    # 1 x 2 grid, stride 8, one square anchor of side 4 at the cell centres (4, 4) and (4, 12).
    anchors = AnchorGenerator(stride=8, scales=(4,), aspect_ratios=(1,))(tf.zeros([1, 1, 2, 3]))
    np.testing.assert_allclose(anchors.numpy(), [[2, 2, 6, 6], [2, 10, 6, 14]])
    # offset 0: centres at the cell corners (0, 0) and (0, 8).
    anchors = AnchorGenerator(stride=8, scales=(4,), aspect_ratios=(1,), offset=0.0)(
        tf.zeros([1, 1, 2, 3])
    )
    np.testing.assert_allclose(anchors.numpy(), [[-2, -2, 2, 2], [-2, 6, 2, 10]])


def test_count_and_location_major_order():
    layer = AnchorGenerator(stride=4, scales=(8, 16, 32), aspect_ratios=(0.5, 2.0))
    h, w = 4, 6
    anchors = layer(tf.zeros([1, h, w, 1])).numpy()
    a = layer.num_anchors
    assert a == 6 and anchors.shape == (h * w * a, 4)
    grid = anchors.reshape(h, w, a, 4)
    centres_y = 0.5 * (grid[..., 0] + grid[..., 2])
    centres_x = 0.5 * (grid[..., 1] + grid[..., 3])
    np.testing.assert_allclose(
        centres_y, np.broadcast_to(((np.arange(h) + 0.5) * 4)[:, None, None], (h, w, a)), atol=1e-5
    )
    np.testing.assert_allclose(
        centres_x, np.broadcast_to(((np.arange(w) + 0.5) * 4)[None, :, None], (h, w, a)), atol=1e-5
    )
    # ratio outer, scale inner: a = r * 3 + s; height s * sqrt(r), width s / sqrt(r).
    heights = grid[0, 0, :, 2] - grid[0, 0, :, 0]
    widths = grid[0, 0, :, 3] - grid[0, 0, :, 1]
    expected_h = [s * np.sqrt(r) for r in (0.5, 2.0) for s in (8, 16, 32)]
    expected_w = [s / np.sqrt(r) for r in (0.5, 2.0) for s in (8, 16, 32)]
    np.testing.assert_allclose(heights, expected_h, rtol=1e-5)
    np.testing.assert_allclose(widths, expected_w, rtol=1e-5)


def test_compute_output_shape():
    layer = AnchorGenerator(stride=16, scales=(32, 64, 128))
    assert layer.compute_output_shape((2, 5, 7, 16)) == (5 * 7 * 9, 4)
    assert layer.compute_output_shape((None, None, 7, 16)) == (None, 4)
    assert tuple(layer(keras.Input((5, 7, 16))).shape) == (5 * 7 * 9, 4)
    assert tuple(layer(keras.Input((None, None, 16))).shape) == (None, 4)


def test_get_config_round_trip():
    layer = AnchorGenerator(
        stride=8, scales=[16, 32], aspect_ratios=[1.0, 2.0], offset=0.0, name="anc"
    )
    config = layer.get_config()
    assert config["stride"] == 8.0 and config["scales"] == (16.0, 32.0)
    assert config["aspect_ratios"] == (1.0, 2.0) and config["offset"] == 0.0
    assert AnchorGenerator.from_config(config).get_config() == config


def test_keras_round_trip_with_dynamic_feature_size(tmp_path):
    inputs = keras.Input((None, None, 3))
    model = keras.Model(inputs, AnchorGenerator(stride=8, scales=(16, 32), name="anchors")(inputs))
    path = str(tmp_path / "anchors.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    for size in ((2, 3), (5, 4)):
        x = np.zeros((1,) + size + (3,), "float32")
        out = model(x)
        np.testing.assert_array_equal(loaded(x).numpy(), out.numpy())
        np.testing.assert_array_equal(
            out.numpy(), generate_anchors(size, 8, (16.0, 32.0), (0.5, 1.0, 2.0)).numpy()
        )


def test_float32_anchors_under_mixed_bfloat16():
    with global_policy("mixed_bfloat16"):
        layer = AnchorGenerator(stride=16, scales=(90.5, 181.0))
        assert layer.compute_dtype == "float32"
        anchors = layer(tf.zeros([1, 40, 40, 2], tf.bfloat16))
        assert layer(keras.Input((40, 40, 2))).dtype == "float32"
    assert anchors.dtype == tf.float32
    np.testing.assert_array_equal(
        anchors.numpy(), generate_anchors((40, 40), 16, (90.5, 181.0), (0.5, 1.0, 2.0)).numpy()
    )
