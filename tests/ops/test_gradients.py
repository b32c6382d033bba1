"""Gradient helpers: `backward_after` and `recompute` change no value, gradient or variable
update, whether called eagerly or traced."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfrcnn.ops.gradients import backward_after, recompute


@pytest.mark.parametrize("graph", [False, True])
def test_backward_after_is_the_identity_with_the_same_gradient(graph):
    x = tf.constant([0.5, -1.0, 2.0])

    def loss_and_gradient(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            first = tf.reduce_sum(x**2)
            loss = backward_after(first + 3.0 * tf.reduce_sum(tf.sin(x)))
        return loss, tape.gradient(loss, x)

    fn = tf.function(loss_and_gradient) if graph else loss_and_gradient
    loss, gradient = fn(x)
    expected = np.sum(x.numpy() ** 2) + 3.0 * np.sum(np.sin(x.numpy()))
    np.testing.assert_allclose(loss.numpy(), expected, rtol=1e-6)
    np.testing.assert_allclose(gradient.numpy(), 2 * x.numpy() + 3 * np.cos(x.numpy()), rtol=1e-6)


def _network():
    keras.utils.set_random_seed(3)
    inputs = keras.Input((None, None, 3))
    y = keras.layers.Conv2D(4, 3, padding="same")(inputs)
    y = keras.layers.BatchNormalization(momentum=0.5)(y)
    y = keras.layers.Activation("relu")(y)
    y = keras.layers.Conv2D(5, 3, strides=2)(y)
    return keras.Model(inputs, y)


@pytest.mark.parametrize("graph", [False, True])
def test_recompute_gives_the_same_gradients_and_one_moving_statistics_update(graph):
    """Input and weight gradients equal the plain ones exactly (the same ops run again on the
    same inputs), and the batch norm's moving statistics are updated once, as without it."""
    network = _network()
    x = tf.constant(np.random.default_rng(0).standard_normal((2, 9, 8, 3)), tf.float32)
    start = [v.numpy() for v in network.variables]
    state = network.non_trainable_variables  # the moving mean and variance
    state_start = [v.numpy() for v in state]

    def step(use_recompute):
        def run(x):
            with tf.GradientTape() as tape:
                tape.watch(x)
                if use_recompute:
                    y = recompute(lambda v: network(v, training=True), x, state)
                else:
                    y = network(x, training=True)
                loss = tf.reduce_sum(tf.cos(y))
            return loss, tape.gradient(loss, [x, *network.trainable_variables])

        for variable, value in zip(network.variables, start):
            variable.assign(value)
        loss, gradients = (tf.function(run) if graph else run)(x)
        return loss.numpy(), [g.numpy() for g in gradients], [v.numpy() for v in state]

    plain, recomputed = step(False), step(True)
    assert recomputed[0] == plain[0]
    for got, expected in zip(recomputed[1], plain[1]):
        np.testing.assert_array_equal(got, expected)
    for got, expected, before in zip(recomputed[2], plain[2], state_start):
        assert not np.array_equal(expected, before)  # updated (momentum 0.5)
        np.testing.assert_array_equal(got, expected)  # once in both
