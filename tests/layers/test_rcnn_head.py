"""RCNNHead: shapes (fc, conv, rank-2), class-major delta layout, dropout, init, config, round trips."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfrcnn.layers.rcnn_head import RCNNHead


def _pooled(k=6, h=3, w=3, c=4, seed=0):
    return np.random.default_rng(seed).normal(size=(k, h, w, c)).astype("float32")


def test_fc_head_shapes():
    head = RCNNHead(num_classes=3, units=(16, 8))
    logits, deltas = head(_pooled())
    assert logits.shape == (6, 4) and deltas.shape == (6, 3, 4)
    assert logits.dtype == tf.float32 and deltas.dtype == tf.float32
    assert [fc.units for fc in head.fcs] == [16, 8] and head.convs == []


def test_conv_head_shapes():
    head = RCNNHead(num_classes=2, head_type="conv", conv_channels=(5, 7), units=(8,))
    logits, deltas = head(_pooled())
    assert logits.shape == (6, 3) and deltas.shape == (6, 2, 4)
    assert [c.filters for c in head.convs] == [5, 7]
    assert head.fcs[0].kernel.shape == (3 * 3 * 7, 8)


def test_fc_head_ignores_conv_channels():
    head = RCNNHead(num_classes=2, head_type="fc", conv_channels=(5,), units=(8,))
    assert head.conv_channels == () and head.convs == []


def test_rank2_input_with_no_fc_layers():
    head = RCNNHead(num_classes=4, units=())
    x = np.random.default_rng(0).normal(size=(5, 12)).astype("float32")
    logits, deltas = head(x)
    assert logits.shape == (5, 5) and deltas.shape == (5, 4, 4)
    # Only the two predictors: logits = x W + b.
    np.testing.assert_allclose(
        logits.numpy(),
        x @ head.classifier.kernel.numpy() + head.classifier.bias.numpy(),
        rtol=1e-5,
        atol=1e-6,
    )


def test_deltas_are_class_major():
    head = RCNNHead(num_classes=3, units=(8,))
    x = _pooled()
    head(x)
    rng = np.random.default_rng(1)
    head.regressor.kernel.assign(rng.normal(size=head.regressor.kernel.shape).astype("float32"))
    head.regressor.bias.assign(rng.normal(size=head.regressor.bias.shape).astype("float32"))
    _, deltas = head(x)
    hidden = head.fcs[0](head.flatten(x))
    raw = head.regressor(hidden).numpy()  # [K, 4C]
    assert raw.shape == (6, 12)
    for k in range(6):
        for c in range(3):
            np.testing.assert_array_equal(deltas.numpy()[k, c], raw[k, 4 * c : 4 * c + 4])


def test_predictor_initialisation():
    head = RCNNHead(num_classes=20, units=(256,))
    head(_pooled(k=2))
    cls_kernel, reg_kernel = head.classifier.kernel.numpy(), head.regressor.kernel.numpy()
    assert 0.009 < cls_kernel.std() < 0.011
    assert 0.0009 < reg_kernel.std() < 0.0011
    np.testing.assert_array_equal(head.classifier.bias.numpy(), 0.0)
    np.testing.assert_array_equal(head.regressor.bias.numpy(), 0.0)


def test_dropout_only_in_training():
    head = RCNNHead(num_classes=2, units=(64, 64), dropout=0.5)
    x = _pooled()
    inference = head(x)
    for a, b in zip(head(x, training=False), inference):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    for a, b in zip(head(x), inference):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    trained = head(x, training=True)
    assert not np.allclose(trained[0].numpy(), inference[0].numpy())
    # Without dropout, training changes nothing.
    plain = RCNNHead(num_classes=2, units=(8,))
    assert plain.drops == []
    for a, b in zip(plain(x, training=True), plain(x, training=False)):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_bad_head_type_raises():
    with pytest.raises(ValueError, match="head_type"):
        RCNNHead(num_classes=2, head_type="mlp")


def test_symbolic_shapes():
    logits, deltas = RCNNHead(num_classes=3, units=(8,))(keras.Input((3, 3, 4)))
    assert tuple(logits.shape) == (None, 4) and tuple(deltas.shape) == (None, 3, 4)
    logits, deltas = RCNNHead(num_classes=3, units=())(keras.Input((10,)))
    assert tuple(logits.shape) == (None, 4) and tuple(deltas.shape) == (None, 3, 4)


def test_get_config_round_trip():
    head = RCNNHead(
        num_classes=5, head_type="conv", units=[32], conv_channels=[8, 8], dropout=0.25, name="head"
    )
    config = head.get_config()
    assert config["num_classes"] == 5 and config["head_type"] == "conv"
    assert (
        config["units"] == (32,) and config["conv_channels"] == (8, 8) and config["dropout"] == 0.25
    )
    assert RCNNHead.from_config(config).get_config() == config


@pytest.mark.parametrize(
    "kwargs",
    [dict(units=(8, 8), dropout=0.5), dict(head_type="conv", conv_channels=(4,), units=(8,))],
    ids=["fc", "conv"],
)
def test_keras_round_trip_reproduces_outputs(kwargs, tmp_path):
    inputs = keras.Input((3, 3, 4))
    logits, deltas = RCNNHead(num_classes=3, name="head", **kwargs)(inputs)
    model = keras.Model(inputs, [logits, deltas])
    path = str(tmp_path / "head.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    x = _pooled()
    for got, want in zip(loaded(x), model(x)):
        np.testing.assert_array_equal(got.numpy(), want.numpy())
