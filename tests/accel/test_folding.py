"""Batch norm folded into the convolution before it (tfrcnn.accel.folding): which pairs fold,
equal values against the unfolded layers (numpy reference), and the cases that must not fold."""

import contextlib

import keras
import numpy as np
import pytest
import tensorflow as tf
from keras.layers import BatchNormalization, Conv2D, DepthwiseConv2D

from tfrcnn import accel
from tfrcnn.accel.folding import folding_scope, pair_conv_batch_norms
from tfrcnn.backbones.common import BackboneModel


def _randomise_batch_norms(model, seed=0):
    rng = np.random.default_rng(seed)
    for layer in model._flatten_layers():
        if isinstance(layer, keras.layers.BatchNormalization):
            shape = layer.moving_mean.shape
            layer.moving_mean.assign(rng.normal(0.0, 0.5, shape))
            layer.moving_variance.assign(rng.uniform(0.3, 2.0, shape))
            layer.gamma.assign(rng.uniform(0.5, 1.5, shape))
            layer.beta.assign(rng.normal(0.0, 0.5, shape))


def _net(name="net"):
    """conv(bias) -> bn -> relu -> depthwise(x2) -> bn; conv(no bias) -> bn (+ a second consumer
    of that conv, so it must not fold); conv(relu) -> bn (activation: must not fold)."""
    inputs = keras.Input((None, None, 3))
    a = Conv2D(8, 3, padding="same", name="a")(inputs)
    x = keras.layers.ReLU()(BatchNormalization(name="a_bn")(a))
    d = DepthwiseConv2D(3, padding="same", depth_multiplier=2, name="d")(x)
    x = BatchNormalization(name="d_bn")(d)
    b = Conv2D(4, 1, use_bias=False, name="b")(x)
    y = keras.layers.Add()([BatchNormalization(name="b_bn")(b), b])
    c = Conv2D(4, 1, activation="relu", name="c")(y)
    z = BatchNormalization(name="c_bn")(c)
    model = accel.apply(BackboneModel(inputs, [z, x], name=name))
    _randomise_batch_norms(model)
    return model


def _numpy_reference(model, x):
    """The network by hand in numpy (float64), batch norms from their moving statistics."""

    def weights(name):
        return [np.asarray(w, np.float64) for w in model.get_layer(name).weights]

    def bn(t, name):
        gamma, beta, mean, var = weights(name)
        return (t - mean) / np.sqrt(var + model.get_layer(name).epsilon) * gamma + beta

    def conv(t, kernel, bias=None):
        kh, kw = kernel.shape[:2]
        p = np.pad(t, [(0, 0), (kh // 2, kh // 2), (kw // 2, kw // 2), (0, 0)])
        out = np.zeros(t.shape[:3] + (kernel.shape[3],))
        for i in range(kh):
            for j in range(kw):
                out += p[:, i : i + t.shape[1], j : j + t.shape[2]] @ kernel[i, j]
        return out if bias is None else out + bias

    def depthwise(t, kernel, bias):
        kh, kw, cin, mult = kernel.shape
        p = np.pad(t, [(0, 0), (1, 1), (1, 1), (0, 0)])
        out = np.zeros(t.shape[:3] + (cin, mult))
        for i in range(kh):
            for j in range(kw):
                out += p[:, i : i + t.shape[1], j : j + t.shape[2], :, None] * kernel[i, j]
        return out.reshape(t.shape[:3] + (cin * mult,)) + bias

    x = np.asarray(x, np.float64)
    a = np.maximum(bn(conv(x, *weights("a")), "a_bn"), 0.0)
    d = bn(depthwise(a, *weights("d")), "d_bn")
    b = conv(d, *weights("b"))
    y = bn(b, "b_bn") + b
    c = np.maximum(conv(y, *weights("c")), 0.0)
    return [bn(c, "c_bn"), d]


def test_pairs_only_single_consumer_linear_convolutions():
    model = _net()
    plan = pair_conv_batch_norms(model)
    assert len(plan) == 2  # a -> a_bn and d -> d_bn
    pairs = {
        model.get_layer(n).name: plan.norm_of.get(id(model.get_layer(n)))
        for n in ("a", "d", "b", "c")
    }
    assert pairs["a"].name == "a_bn" and pairs["d"].name == "d_bn"
    assert pairs["b"] is None and pairs["c"] is None
    # a convolution whose output is also a model output does not fold
    both = accel.apply(
        BackboneModel(model.inputs, [model.get_layer("a").output, model.get_layer("a_bn").output])
    )
    assert len(pair_conv_batch_norms(both)) == 0


@pytest.mark.parametrize("name", ["net", "resnet50_fpn"], ids=["graph", "xla"])
def test_inference_call_folds_and_equals_the_reference(name):
    """Inference calls (folded; a backbone named as an XLA_BACKBONES one also compiled as one XLA
    cluster), eager and in a tf.function, equal the float64 numpy network within 1e-4."""
    model = _net(name)
    x = np.random.default_rng(1).uniform(-1, 1, (2, 9, 7, 3)).astype(np.float32)
    expected = _numpy_reference(model, x)
    for got in (
        tf.function(lambda t: model(t, training=False))(tf.constant(x)),
        model(tf.constant(x), training=False),
    ):
        for g, e in zip(got, expected):
            np.testing.assert_allclose(g.numpy(), e, rtol=1e-4, atol=1e-4)


def test_training_a_tape_and_sub_models_do_not_fold():
    model = _net()
    x = tf.constant(np.random.default_rng(2).uniform(-1, 1, (2, 6, 5, 3)).astype(np.float32))
    model(x, training=False)  # pairs the layers
    expected = _numpy_reference(model, x.numpy())
    # under a tape: the same values through the unfolded layers, and gradients for both layers
    with tf.GradientTape() as tape:
        out = model(x, training=False)
        loss = tf.reduce_sum(out[0]) + tf.reduce_sum(out[1] ** 2)
    np.testing.assert_allclose(out[1].numpy(), expected[1], rtol=1e-4, atol=1e-4)
    grads = tape.gradient(loss, [model.get_layer("a").kernel, model.get_layer("a_bn").gamma])
    assert all(g is not None and np.abs(g.numpy()).sum() > 0 for g in grads)
    # models built from the same layers and ending at a paired convolution return the raw
    # convolution; a backbone one also while another's plan folds (one backbone inside another)
    kernel, bias = (w.numpy() for w in model.get_layer("a").weights)
    raw = tf.nn.conv2d(x, kernel, 1, "SAME").numpy() + bias
    plain = keras.Model(model.inputs, model.get_layer("a").output)
    backbone = accel.apply(BackboneModel(model.inputs, [model.get_layer("a").output]))
    for sub, scope in (
        (plain, contextlib.nullcontext()),
        (backbone, contextlib.nullcontext()),
        (backbone, folding_scope(model._fold_plan)),
    ):
        with scope:
            got = sub(x, training=False)
        got = got[0] if isinstance(got, list) else got
        np.testing.assert_allclose(got.numpy(), raw, rtol=1e-5, atol=1e-5)
    # training mode normalises with the batch statistics and updates the moving ones
    before = model.get_layer("a_bn").moving_mean.numpy().copy()
    model(x, training=True)
    assert not np.allclose(model.get_layer("a_bn").moving_mean.numpy(), before)


def test_half_precision_layers_do_not_fold():
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        model = _net()
    finally:
        keras.mixed_precision.set_global_policy(previous)
    x = tf.constant(np.random.default_rng(3).uniform(-1, 1, (1, 6, 6, 3)).astype(np.float32))
    expected = _numpy_reference(model, x.numpy())
    np.testing.assert_allclose(
        model(x, training=False)[1].numpy(), expected[1], rtol=0.05, atol=0.05
    )
