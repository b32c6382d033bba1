"""RPNHead: shapes, the flattened layout, initialisation, mixed precision, config and .keras round trips."""

import keras
import numpy as np
import tensorflow as tf

from tfrcnn.layers.rpn_head import RPNHead


def _features(b=2, h=3, w=4, c=5, seed=0):
    return np.random.default_rng(seed).normal(size=(b, h, w, c)).astype("float32")


def test_output_shapes_flat_and_maps():
    head = RPNHead(num_anchors=3, channels=8)
    x = _features()
    scores, deltas = head(x)
    assert scores.shape == (2, 3 * 4 * 3, 2) and deltas.shape == (2, 3 * 4 * 3, 4)
    s_map, d_map = head(x, return_maps=True)
    assert s_map.shape == (2, 3, 4, 6) and d_map.shape == (2, 3, 4, 12)
    assert scores.dtype == tf.float32 and deltas.dtype == tf.float32


def test_flattened_layout_matches_maps():
    a, h, w = 3, 3, 4
    head = RPNHead(num_anchors=a, channels=8)
    x = _features(h=h, w=w)
    head(x)
    # Non-trivial predictor weights and biases so every channel differs.
    rng = np.random.default_rng(1)
    for layer in (head.objectness, head.box_deltas):
        layer.kernel.assign(rng.normal(size=layer.kernel.shape).astype("float32"))
        layer.bias.assign(rng.normal(size=layer.bias.shape).astype("float32"))
    scores, deltas = (t.numpy() for t in head(x))
    s_map, d_map = (t.numpy() for t in head(x, return_maps=True))
    for b in range(2):
        for i in range(h):
            for j in range(w):
                for k in range(a):
                    n = (i * w + j) * a + k
                    for c in range(2):
                        assert scores[b, n, c] == s_map[b, i, j, 2 * k + c]
                    for c in range(4):
                        assert deltas[b, n, c] == d_map[b, i, j, 4 * k + c]


def test_initial_weights_gaussian_001_and_zero_bias():
    head = RPNHead(num_anchors=9, channels=64)
    head(_features(1, 4, 4, 32))
    for layer in (head.conv, head.objectness, head.box_deltas):
        kernel = layer.kernel.numpy()
        assert abs(kernel.mean()) < 0.002, layer.name
        assert 0.009 < kernel.std() < 0.011, (layer.name, kernel.std())
        np.testing.assert_array_equal(layer.bias.numpy(), 0.0)


def test_symbolic_call_shapes():
    head = RPNHead(num_anchors=3, channels=8)
    s, d = head(keras.Input((5, 6, 4)))
    assert tuple(s.shape) == (None, 90, 2) and tuple(d.shape) == (None, 90, 4)
    s, d = head(keras.Input((None, None, 4)))
    assert tuple(s.shape) == (None, None, 2) and tuple(d.shape) == (None, None, 4)
    s, d = head(keras.Input((5, 6, 4)), return_maps=True)
    assert tuple(s.shape) == (None, 5, 6, 6) and tuple(d.shape) == (None, 5, 6, 12)


def test_float32_outputs_under_mixed_bfloat16():
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        head = RPNHead(num_anchors=3, channels=8)
        scores, deltas = head(_features())
        assert scores.dtype == tf.float32 and deltas.dtype == tf.float32
        s_map, d_map = head(_features(), return_maps=True)
        assert s_map.dtype == tf.float32 and d_map.dtype == tf.float32
        assert head.conv.compute_dtype == "bfloat16"
        s, d = head(keras.Input((4, 4, 5)))
        assert s.dtype == "float32" and d.dtype == "float32"
    finally:
        keras.mixed_precision.set_global_policy(previous)
    assert keras.mixed_precision.global_policy().name == previous.name


def test_get_config_round_trip():
    head = RPNHead(num_anchors=6, channels=16, kernel_size=1, name="rpn")
    config = head.get_config()
    assert (config["num_anchors"], config["channels"], config["kernel_size"]) == (6, 16, 1)
    assert RPNHead.from_config(config).get_config() == config


def test_keras_round_trip_reproduces_outputs(tmp_path):
    inputs = keras.Input((None, None, 5))
    scores, deltas = RPNHead(num_anchors=3, channels=8, name="rpn")(inputs)
    model = keras.Model(inputs, [scores, deltas])
    path = str(tmp_path / "rpn.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    x = _features()
    for got, want in zip(loaded(x), model(x)):
        np.testing.assert_array_equal(got.numpy(), want.numpy())
