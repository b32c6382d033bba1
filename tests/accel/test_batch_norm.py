"""The accelerated keras BatchNormalization against the plain one: values, gradients, moving
statistics, dtypes, the fallbacks and weight interchange."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfrcnn import accel


def BatchNormalization(*args, **kwargs):  # noqa: N802  (the accelerated keras layer)
    return accel.apply(keras.layers.BatchNormalization(*args, **kwargs))


def _pair(shape=(2, 5, 7, 4), seed=0, **kwargs):
    """A Keras layer and a fused layer with the same random weights and statistics."""
    rng = np.random.default_rng(seed)
    reference = keras.layers.BatchNormalization(**kwargs)
    fused = BatchNormalization(**kwargs)
    for layer in (reference, fused):
        layer.build(shape)
    channels = shape[kwargs.get("axis", -1)]
    weights = [
        rng.uniform(0.5, 2.0, channels),
        rng.normal(size=channels),
        rng.normal(size=channels),
        rng.uniform(0.5, 3.0, channels),
    ]
    weights = [w.astype("float32") for w in weights]
    n = len(reference.get_weights())
    if n == 4:
        reference.set_weights(weights)
    else:  # scale or center off: moving statistics only at the end
        reference.set_weights([w for w in weights[:2]][: n - 2] + weights[2:])
    fused.set_weights(reference.get_weights())
    x = tf.constant(rng.normal(3.0, 2.0, shape).astype("float32"))
    return reference, fused, x


def _grads(layer, x, training, upstream):
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = layer(x, training=training)
        loss = tf.reduce_sum(tf.cast(y, tf.float32) * upstream)
    return y, tape.gradient(loss, [x] + layer.trainable_weights)


@pytest.mark.parametrize("training", [True, False])
def test_values_gradients_and_statistics_equal_keras(training):
    reference, fused, x = _pair(momentum=0.9, epsilon=1e-3)
    upstream = tf.random.stateless_normal(x.shape, [1, 2])
    y_ref, g_ref = _grads(reference, x, training, upstream)
    y, g = _grads(fused, x, training, upstream)
    np.testing.assert_allclose(y.numpy(), y_ref.numpy(), rtol=1e-5, atol=2e-5)
    for a, b in zip(g, g_ref):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-4, atol=2e-4)
    # the moving statistics moved (training) or stayed (inference) exactly as Keras'
    for a, b in zip(fused.non_trainable_weights, reference.non_trainable_weights):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5, atol=1e-6)


def test_moving_variance_is_the_biased_batch_variance():
    # momentum 0: the moving statistics become the batch's own, which numpy gives directly
    _, fused, x = _pair(shape=(3, 4, 2, 5), momentum=0.0)
    fused(x, training=True)
    flat = x.numpy().reshape(-1, 5)
    np.testing.assert_allclose(fused.moving_mean.numpy(), flat.mean(0), rtol=1e-5)
    np.testing.assert_allclose(fused.moving_variance.numpy(), flat.var(0), rtol=1e-5)


def test_single_element_batch_has_zero_variance_not_nan():
    _, fused, x = _pair(shape=(1, 1, 1, 3), momentum=0.0)
    y = fused(x, training=True)
    assert np.all(np.isfinite(y.numpy()))
    np.testing.assert_array_equal(fused.moving_variance.numpy(), np.zeros(3, "float32"))


def test_frozen_layer_uses_moving_statistics_in_training_mode():
    reference, fused, x = _pair()
    reference.trainable = False
    fused.trainable = False
    before = [w.numpy() for w in fused.non_trainable_weights]
    np.testing.assert_allclose(
        fused(x, training=True).numpy(), reference(x, training=True).numpy(), rtol=1e-5, atol=2e-5
    )
    for a, b in zip(fused.non_trainable_weights, before):
        np.testing.assert_array_equal(a.numpy(), b)


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(center=False),
        dict(scale=False),
        dict(epsilon=1e-6),  # below the fused kernel's minimum
        dict(axis=1),
    ],
)  # not channels last
def test_options_and_fallbacks_equal_keras(kwargs):
    reference, fused, x = _pair(**kwargs)
    for training in (True, False):
        np.testing.assert_allclose(
            fused(x, training=training).numpy(),
            reference(x, training=training).numpy(),
            rtol=1e-5,
            atol=2e-5,
        )


def test_unknown_shapes_in_a_tf_function():
    reference, fused, x = _pair()

    @tf.function(input_signature=[tf.TensorSpec([None, None, None, 4], tf.float32)])
    def run(inputs):
        return fused(inputs, training=True)

    y = run(x)
    np.testing.assert_allclose(y.numpy(), reference(x, training=True).numpy(), rtol=1e-5, atol=2e-5)
    np.testing.assert_allclose(
        fused.moving_variance.numpy(), reference.moving_variance.numpy(), rtol=1e-5
    )


def test_bfloat16_policy():
    reference, fused, x = _pair()
    fused_bf16 = BatchNormalization(dtype="mixed_bfloat16")
    fused_bf16.build(x.shape)
    fused_bf16.set_weights(reference.get_weights())
    y = fused_bf16(tf.cast(x, tf.bfloat16), training=True)
    assert y.dtype == tf.bfloat16
    assert fused_bf16.moving_mean.dtype == "float32"
    np.testing.assert_allclose(
        tf.cast(y, tf.float32).numpy(), reference(x, training=True).numpy(), rtol=0.02, atol=0.05
    )


def test_config_and_weights_interchange_with_keras(tmp_path):
    reference, fused, x = _pair(momentum=0.97, epsilon=2e-3)
    config = fused.get_config()
    assert {**config, "name": None} == {**reference.get_config(), "name": None}
    serialized = keras.saving.serialize_keras_object(fused)
    assert serialized == keras.saving.serialize_keras_object(reference) | {
        "config": {**serialized["config"], "name": serialized["config"]["name"]}
    }
    clone = keras.saving.deserialize_keras_object(serialized)
    assert type(clone) is keras.layers.BatchNormalization
    # a Keras layer's weights load into the fused one and give the same inference output
    path = str(tmp_path / "bn.weights.h5")
    model = keras.Sequential([keras.Input((5, 7, 4)), reference])
    model.save_weights(path)
    other = keras.Sequential([keras.Input((5, 7, 4)), BatchNormalization(**config)])
    other.load_weights(path)
    np.testing.assert_allclose(
        other(x, training=False).numpy(), model(x, training=False).numpy(), rtol=1e-5, atol=2e-5
    )


def test_graph_training_step_equals_keras():
    """In a tf.function with unknown shapes, a training-mode call: Keras' outputs, input and
    weight gradients and moving statistics."""
    reference, fused, x = _pair()
    results = []
    for layer in (reference, fused):

        @tf.function(input_signature=[tf.TensorSpec([None, None, None, 4])])
        def step(t, layer=layer):
            with tf.GradientTape() as tape:
                tape.watch(t)
                y = layer(t, training=True)
                loss = tf.reduce_sum(y * tf.sin(y))
            return [y, *tape.gradient(loss, [t, *layer.trainable_weights])]

        results.append(step(x) + [layer.moving_mean, layer.moving_variance])
    for got, want in zip(results[1], results[0]):
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-4, atol=1e-4)


def test_inference_equals_the_formula_in_float32_and_bfloat16():
    _, fused, x = _pair()
    gamma, beta, mean, variance = (w.numpy() for w in fused.weights)
    expected = (x.numpy() - mean) / np.sqrt(variance + fused.epsilon) * gamma + beta
    np.testing.assert_allclose(fused(x, training=False).numpy(), expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(
        tf.function(lambda t: fused(t, training=False))(x).numpy(), expected, rtol=1e-5, atol=1e-5
    )
    half = BatchNormalization(dtype="mixed_bfloat16")
    half.build(x.shape)
    half.set_weights(fused.get_weights())
    got = half(tf.cast(x, tf.bfloat16), training=False)
    assert got.dtype == tf.bfloat16
    np.testing.assert_allclose(tf.cast(got, tf.float32).numpy(), expected, rtol=0.02, atol=0.05)


def test_frozen_layer_gradient_is_the_per_channel_scale():
    _, fused, x = _pair()
    fused.trainable = False
    gamma, _, _, variance = (w.numpy() for w in fused.weights)
    with tf.GradientTape() as tape:
        tape.watch(x)
        loss = tf.reduce_sum(fused(x, training=True) * 2.0)
    grad = tape.gradient(loss, x).numpy()
    scale = gamma / np.sqrt(variance + fused.epsilon)
    np.testing.assert_allclose(grad, np.broadcast_to(2.0 * scale, grad.shape), rtol=1e-6)
