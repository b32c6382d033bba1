"""ROIPooling, ROIAlign, PreciseROIPooling, MultiLevelROIAlign: batched ROIs equal the ops on the
flattened ROIs (image-major order), symbolic shapes, config and .keras round trips."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import global_policy

from tfrcnn.layers._roi_common import flatten_rois
from tfrcnn.layers.multilevel_roi_align import MultiLevelROIAlign
from tfrcnn.layers.precise_roi_pooling import PreciseROIPooling
from tfrcnn.layers.roi_align import ROIAlign
from tfrcnn.layers.roi_pooling import ROIPooling
from tfrcnn.ops.roi import multilevel_roi_align, precise_roi_pool, roi_align, roi_pool

B, R, H, W, C = 2, 3, 8, 10, 3


def _features(seed=0, h=H, w=W):
    return np.random.default_rng(seed).normal(size=(B, h, w, C)).astype("float32")


def _rois():
    # Input pixels of a stride-4 map (32 x 40 image); different ROIs in the two images.
    return np.array(
        [
            [[0, 0, 16, 16], [4, 6, 30, 38], [10, 3, 14, 25]],
            [[2, 2, 9, 31], [0, 0, 32, 40], [20, 20, 28, 36]],
        ],
        np.float32,
    )


def _flat_reference(rois):
    boxes = rois.reshape(-1, 4)
    box_indices = np.repeat(np.arange(rois.shape[0]), rois.shape[1]).astype(np.int32)
    return boxes, box_indices


LAYERS = [
    (
        ROIPooling,
        dict(output_size=(2, 3), spatial_scale=0.25),
        lambda f, b, i: roi_pool(f, b, i, output_size=(2, 3), spatial_scale=0.25),
    ),
    (
        ROIAlign,
        dict(output_size=(3, 2), spatial_scale=0.25, sampling_ratio=2, aligned=True),
        lambda f, b, i: roi_align(
            f, b, i, output_size=(3, 2), spatial_scale=0.25, sampling_ratio=2, aligned=True
        ),
    ),
    (
        ROIAlign,
        dict(output_size=3, spatial_scale=0.25, sampling_ratio=1, aligned=False, method="gather"),
        lambda f, b, i: roi_align(
            f,
            b,
            i,
            output_size=(3, 3),
            spatial_scale=0.25,
            sampling_ratio=1,
            aligned=False,
            method="gather",
        ),
    ),
    (
        PreciseROIPooling,
        dict(output_size=(2, 2), spatial_scale=0.25),
        lambda f, b, i: precise_roi_pool(f, b, i, output_size=(2, 2), spatial_scale=0.25),
    ),
]
IDS = ["roi_pool", "roi_align", "roi_align_gather", "precise_roi_pool"]


def test_flatten_rois_is_image_major():
    boxes, box_indices = flatten_rois(tf.constant(_rois()))
    ref_boxes, ref_indices = _flat_reference(_rois())
    np.testing.assert_array_equal(boxes.numpy(), ref_boxes)
    np.testing.assert_array_equal(box_indices.numpy(), ref_indices)
    assert box_indices.dtype == tf.int32


@pytest.mark.parametrize("cls, kwargs, op", LAYERS, ids=IDS)
def test_equals_the_op_on_flattened_rois(cls, kwargs, op):
    features, rois = _features(), _rois()
    out = cls(**kwargs)(features, rois)
    boxes, box_indices = _flat_reference(rois)
    expected = op(features, boxes, box_indices)
    assert (
        out.shape
        == expected.shape
        == (B * R,) + tuple(np.broadcast_to(kwargs["output_size"], 2)) + (C,)
    )
    np.testing.assert_array_equal(out.numpy(), expected.numpy())
    # Order preserved: ROI r of image b is row b * R + r, pooled from image b only.
    for b in range(B):
        for r in range(R):
            single = op(features[b : b + 1], rois[b, r : r + 1], np.zeros([1], np.int32))
            np.testing.assert_allclose(
                out.numpy()[b * R + r], single.numpy()[0], rtol=1e-6, atol=1e-6
            )


def test_roi_pool_hand_values_on_a_numbered_map():
    # One channel numbered 0..H*W-1 row-major; spatial_scale 1; a 1x1 output is the max of the ROI.
    fmap = np.arange(H * W, dtype=np.float32).reshape(1, H, W, 1)
    fmap = np.concatenate([fmap, fmap + 1000], axis=0)
    rois = np.array([[[1, 2, 3, 4]], [[0, 0, 1, 1]]], np.float32)
    out = ROIPooling(output_size=1, spatial_scale=1.0)(fmap, rois).numpy()
    # cells rows 1..3, cols 2..4 (rounded ends are inclusive): max at (3, 4); image 1: (1, 1) + 1000.
    np.testing.assert_array_equal(out.reshape(-1), [3 * W + 4, 1000 + 1 * W + 1])


def test_multilevel_equals_the_op_on_flattened_rois():
    rng = np.random.default_rng(1)
    # Levels 2 and 3 of a 64 x 64 image: 16 x 16 and 8 x 8 maps.
    maps = [rng.normal(size=(B, 64 // 2**l, 64 // 2**l, C)).astype("float32") for l in (2, 3)]
    rois = np.array(
        [
            [[0, 0, 8, 8], [0, 0, 60, 60], [10, 12, 40, 30]],
            [[5, 5, 50, 62], [30, 30, 34, 36], [0, 0, 64, 64]],
        ],
        np.float32,
    )
    layer = MultiLevelROIAlign(
        output_size=(2, 2), sampling_ratio=2, min_level=2, canonical_scale=32.0, canonical_level=3
    )
    out = layer(maps, rois)
    boxes, box_indices = _flat_reference(rois)
    expected = multilevel_roi_align(
        maps,
        boxes,
        box_indices,
        output_size=(2, 2),
        sampling_ratio=2,
        min_level=2,
        canonical_scale=32.0,
        canonical_level=3,
    )
    assert out.shape == (B * R, 2, 2, C)
    np.testing.assert_array_equal(out.numpy(), expected.numpy())
    # Row b * R + r is ROI r of image b on its level: compare one ROI of each level with roi_align.
    small = roi_align(maps[0], rois[0, 0:1], np.array([0], np.int32), (2, 2), spatial_scale=0.25)
    large = roi_align(maps[1], rois[1, 2:3], np.array([1], np.int32), (2, 2), spatial_scale=0.125)
    np.testing.assert_allclose(out.numpy()[0], small.numpy()[0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out.numpy()[5], large.numpy()[0], rtol=1e-5, atol=1e-6)


def test_gradient_flows_to_roi_coordinates_for_align_and_prroi():
    features, rois = _features(), tf.Variable(_rois())
    for layer in (ROIAlign((2, 2), 0.25), PreciseROIPooling((2, 2), 0.25)):
        with tf.GradientTape() as tape:
            total = tf.reduce_sum(layer(features, rois) * np.arange(C, dtype=np.float32))
        grad = tape.gradient(total, rois)
        assert grad is not None and np.abs(tf.convert_to_tensor(grad).numpy()).sum() > 0


@pytest.mark.parametrize("cls, kwargs, op", LAYERS, ids=IDS)
def test_symbolic_shapes_and_get_config(cls, kwargs, op):
    layer = cls(**kwargs, name="roi")
    config = layer.get_config()
    assert config["output_size"] == tuple(np.broadcast_to(kwargs["output_size"], 2).tolist())
    for key, value in kwargs.items():
        if key != "output_size":
            assert config[key] == value
    assert cls.from_config(config).get_config() == config
    out = layer(keras.Input((None, None, C)), keras.Input((5, 4)))
    assert tuple(out.shape) == (None,) + config["output_size"] + (C,)
    assert layer.compute_output_shape((2, H, W, C), (2, 5, 4)) == (10,) + config["output_size"] + (
        C,
    )


def test_multilevel_symbolic_shapes_and_get_config():
    layer = MultiLevelROIAlign(
        output_size=(3, 3),
        sampling_ratio=1,
        aligned=False,
        min_level=3,
        canonical_scale=112.0,
        canonical_level=5,
        method="gather",
        name="ml",
    )
    config = layer.get_config()
    assert config["output_size"] == (3, 3) and config["sampling_ratio"] == 1
    assert config["aligned"] is False and config["min_level"] == 3
    assert config["canonical_scale"] == 112.0 and config["canonical_level"] == 5
    assert config["method"] == "gather"
    assert MultiLevelROIAlign.from_config(config).get_config() == config
    out = layer([keras.Input((None, None, C)), keras.Input((None, None, C))], keras.Input((4, 4)))
    assert tuple(out.shape) == (None, 3, 3, C)
    assert layer.compute_output_shape([(2, 8, 8, C), (2, 4, 4, C)], (2, 4, 4)) == (8, 3, 3, C)


@pytest.mark.parametrize("cls, kwargs, op", LAYERS, ids=IDS)
def test_keras_round_trip_reproduces_outputs(cls, kwargs, op, tmp_path):
    features, rois = keras.Input((None, None, C)), keras.Input((R, 4))
    model = keras.Model([features, rois], cls(**kwargs, name="roi")(features, rois))
    path = str(tmp_path / "roi.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    x = [_features(), _rois()]
    np.testing.assert_array_equal(loaded(x).numpy(), model(x).numpy())


def test_multilevel_keras_round_trip_reproduces_outputs(tmp_path):
    p2, p3, rois = keras.Input((16, 16, C)), keras.Input((8, 8, C)), keras.Input((R, 4))
    out = MultiLevelROIAlign(
        output_size=(2, 2), canonical_scale=32.0, canonical_level=3, name="ml"
    )([p2, p3], rois)
    model = keras.Model([p2, p3, rois], out)
    path = str(tmp_path / "ml.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    rng = np.random.default_rng(2)
    x = [
        rng.normal(size=(B, 16, 16, C)).astype("float32"),
        rng.normal(size=(B, 8, 8, C)).astype("float32"),
        _rois() * 2,
    ]
    np.testing.assert_array_equal(loaded(x).numpy(), model(x).numpy())


@pytest.mark.parametrize("cls, kwargs, op", LAYERS, ids=IDS)
def test_roi_coordinates_not_rounded_under_mixed_bfloat16(cls, kwargs, op):
    features, rois = _features(), _rois() + np.float32(0.37)  # 20.37 is not a bfloat16
    want = cls(**kwargs)(features, rois)
    with global_policy("mixed_bfloat16"):
        got = cls(**kwargs)(features, rois)
        bf16 = cls(**kwargs)(tf.cast(features, tf.bfloat16), rois)
    assert got.dtype == tf.float32
    np.testing.assert_array_equal(got.numpy(), want.numpy())
    # 16-bit features are fine; the ROIs are what must stay float32.
    boxes, box_indices = _flat_reference(rois)
    expected = op(tf.cast(tf.cast(features, tf.bfloat16), tf.float32), boxes, box_indices)
    np.testing.assert_allclose(bf16.numpy(), expected.numpy(), rtol=1e-6, atol=1e-6)
