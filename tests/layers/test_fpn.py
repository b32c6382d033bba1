"""FeaturePyramid: odd-size shapes, hand-checked top-down sums, config and .keras round trips."""

import math

import keras
import numpy as np
import pytest

from tfrcnn.layers.fpn import FeaturePyramid


def _maps(sizes, channels, batch=1, seed=0):
    rng = np.random.default_rng(seed)
    return [
        rng.normal(size=(batch, h, w, c)).astype("float32") for (h, w), c in zip(sizes, channels)
    ]


def _ceil_sizes(h, w, levels):
    sizes = [(h, w)]
    for _ in range(levels - 1):
        h, w = math.ceil(h / 2), math.ceil(w / 2)
        sizes.append((h, w))
    return sizes


def test_output_shapes_for_odd_sizes():
    sizes = _ceil_sizes(17, 25, 4)  # 17x25, 9x13, 5x7, 3x4
    inputs = _maps(sizes, (8, 16, 24, 32), batch=2)
    fpn = FeaturePyramid(channels=6, num_inputs=4, extra_pool_levels=1)
    outputs = fpn(inputs)
    assert isinstance(outputs, list) and len(outputs) == 5
    expected = [(2, h, w, 6) for h, w in sizes] + [(2, 2, 2, 6)]
    assert [tuple(o.shape) for o in outputs] == expected
    assert fpn.compute_output_shape([x.shape for x in inputs]) == expected


def test_symbolic_shapes_with_unknown_sizes():
    inputs = [keras.Input((None, None, c)) for c in (4, 8)]
    outputs = FeaturePyramid(channels=5, num_inputs=2, extra_pool_levels=2)(inputs)
    assert [tuple(o.shape) for o in outputs] == [(None, None, None, 5)] * 4


def _set_identity_weights(fpn, channels):
    """Lateral 1x1 = identity, output 3x3 = identity at the centre tap, zero biases."""
    eye = np.eye(channels, dtype="float32")
    for conv in fpn.lateral_convs:
        conv.set_weights([eye[None, None], np.zeros(channels, "float32")])
    for conv in fpn.output_convs:
        kernel = np.zeros((3, 3, channels, channels), "float32")
        kernel[1, 1] = eye
        conv.set_weights([kernel, np.zeros(channels, "float32")])


def test_top_down_sum_by_hand():
    # Three levels of one channel: 3x3, 2x2, 1x1 (ceil halving of an odd size).
    c3 = np.arange(9, dtype="float32").reshape(1, 3, 3, 1)
    c4 = np.array([[10.0, 20.0], [30.0, 40.0]], "float32").reshape(1, 2, 2, 1)
    c5 = np.array([[100.0]], "float32").reshape(1, 1, 1, 1)
    fpn = FeaturePyramid(channels=1, num_inputs=3, extra_pool_levels=1)
    fpn.build([c3.shape, c4.shape, c5.shape])
    _set_identity_weights(fpn, 1)
    p3, p4, p5, p6 = [np.asarray(p)[0, ..., 0] for p in fpn([c3, c4, c5])]
    np.testing.assert_allclose(p5, [[100.0]])
    np.testing.assert_allclose(p4, [[110.0, 120.0], [130.0, 140.0]])
    # P4 upsampled 2x by nearest neighbour is 4x4; cropped to 3x3 and added to C3.
    np.testing.assert_allclose(
        p3,
        [[0 + 110, 1 + 110, 2 + 120], [3 + 110, 4 + 110, 5 + 120], [6 + 130, 7 + 130, 8 + 140]],
    )
    np.testing.assert_allclose(p6, [[100.0]])


def test_extra_levels_are_strided_max_pool_of_the_coarsest_output():
    inputs = _maps([(9, 7), (5, 4)], (3, 3))
    fpn = FeaturePyramid(channels=3, num_inputs=2, extra_pool_levels=2)
    outputs = [np.asarray(o) for o in fpn(inputs)]
    assert [o.shape[1:3] for o in outputs] == [(9, 7), (5, 4), (3, 2), (2, 1)]
    np.testing.assert_array_equal(outputs[2], outputs[1][:, ::2, ::2])
    np.testing.assert_array_equal(outputs[3], outputs[2][:, ::2, ::2])


def test_get_config_round_trip():
    fpn = FeaturePyramid(channels=12, num_inputs=3, extra_pool_levels=0, name="pyramid")
    config = fpn.get_config()
    assert (
        config["channels"] == 12 and config["num_inputs"] == 3 and config["extra_pool_levels"] == 0
    )
    clone = FeaturePyramid.from_config(config)
    assert clone.get_config() == config


def test_keras_round_trip_reproduces_outputs(tmp_path):
    inputs = [keras.Input((None, None, c)) for c in (4, 6, 8)]
    outputs = FeaturePyramid(channels=5, num_inputs=3, extra_pool_levels=1, name="fpn")(inputs)
    model = keras.Model(inputs, outputs)
    data = _maps(_ceil_sizes(11, 13, 3), (4, 6, 8), batch=2)
    expected = [np.asarray(o) for o in model(data)]
    path = str(tmp_path / "fpn.keras")
    model.save(path)
    restored = keras.saving.load_model(path)
    got = [np.asarray(o) for o in restored(data)]
    assert len(got) == 4
    for e, g in zip(expected, got):
        np.testing.assert_array_equal(e, g)


def test_bad_arguments_and_inputs():
    with pytest.raises(ValueError, match="num_inputs"):
        FeaturePyramid(num_inputs=0)
    with pytest.raises(ValueError, match="extra_pool_levels"):
        FeaturePyramid(extra_pool_levels=-1)
    fpn = FeaturePyramid(channels=4, num_inputs=2)
    with pytest.raises(ValueError, match="expected a list of 2"):
        fpn(_maps([(4, 4)], (3,)))
