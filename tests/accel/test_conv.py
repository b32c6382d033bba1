"""tfrcnn.accel.conv.conv2d and the accelerated keras Conv2D against TensorFlow's / Keras's convolution.

The forward pass must equal ``tf.nn.conv2d`` exactly; the input and filter gradients must equal
TensorFlow's autodiff gradients of ``tf.nn.conv2d`` up to float32 rounding, on every gradient
path (forward-conv input gradient, 1x1 matmul, shifted matmuls, TF's kernels, the run-time choice
under unknown shapes) and in bfloat16 / float16 with a looser tolerance. Second derivatives are
not supported by conv2d and not tested.

The accelerated layer must be interchangeable with the plain ``keras.layers.Conv2D``: same values,
gradients, config, weights files and training step.
"""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

import tfrcnn.accel.conv as conv_module
from tfrcnn import accel
from tfrcnn.accel.conv import GradientPlan, conv2d, gradient_plan, has_fast_gradient


def Conv2D(*args, **kwargs):  # noqa: N802  (a keras.layers.Conv2D with the accelerated calls)
    return accel.apply(keras.layers.Conv2D(*args, **kwargs))


KERNEL_SIZES = [(1, 1), (3, 3), (5, 5), (7, 7), (1, 3)]
SPATIAL_SIZES = [(7, 9), (8, 8)]
BATCH_CHANNELS = [(1, 3, 8), (2, 16, 4)]  # (N, C, K)


def _random(shape, seed, dtype=tf.float32):
    return tf.cast(np.random.default_rng(seed).standard_normal(shape).astype(np.float32), dtype)


def _tf_reference(x, kernel, upstream, strides, padding):
    """Output and (dx, dw) of tf.nn.conv2d by TensorFlow's autodiff."""
    with tf.GradientTape() as tape:
        tape.watch([x, kernel])
        y = tf.nn.conv2d(x, kernel, strides, padding.upper())
    return y, tape.gradient(y, [x, kernel], output_gradients=upstream)


def _conv2d_and_gradients(x, kernel, upstream, strides, padding):
    with tf.GradientTape() as tape:
        tape.watch([x, kernel])
        y = conv2d(x, kernel, strides, padding)
    return y, tape.gradient(y, [x, kernel], output_gradients=upstream)


def _assert_close(actual, expected, rtol=1e-5, scaled_atol=1e-5):
    """allclose with an absolute tolerance scaled to the magnitude of ``expected``."""
    expected = tf.cast(expected, tf.float32).numpy()
    actual = tf.cast(actual, tf.float32).numpy()
    assert actual.shape == expected.shape
    scale = float(np.abs(expected).max(initial=0.0)) or 1.0
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=scaled_atol * scale)


def _check_against_tf(x_shape, kernel_size, filters, strides, padding, seed=0):
    kh, kw = kernel_size
    x = _random(x_shape, seed)
    kernel = _random((kh, kw, x_shape[-1], filters), seed + 1)
    y_ref, (dx_ref, dw_ref) = _tf_reference(x, kernel, None, strides, padding)
    upstream = _random(y_ref.shape, seed + 2)
    y_ref, (dx_ref, dw_ref) = _tf_reference(x, kernel, upstream, strides, padding)
    y, (dx, dw) = _conv2d_and_gradients(x, kernel, upstream, strides, padding)
    np.testing.assert_array_equal(y.numpy(), y_ref.numpy())
    _assert_close(dx, dx_ref)
    _assert_close(dw, dw_ref)


# --------------------------------------------------------------------------- op: values, float32


@pytest.mark.parametrize("batch,channels,filters", BATCH_CHANNELS)
@pytest.mark.parametrize("height,width", SPATIAL_SIZES)
@pytest.mark.parametrize("padding", ["SAME", "VALID"])
@pytest.mark.parametrize("strides", [1, 2])
@pytest.mark.parametrize("kernel_size", KERNEL_SIZES, ids=lambda k: f"{k[0]}x{k[1]}")
def test_forward_and_gradients_equal_tf(
    kernel_size, strides, padding, height, width, batch, channels, filters
):
    _check_against_tf((batch, height, width, channels), kernel_size, filters, strides, padding)


@pytest.mark.parametrize("filter_path", ["shifted_matmul", "tf"])
@pytest.mark.parametrize("padding", ["SAME", "VALID"])
@pytest.mark.parametrize(
    "kernel_size", [(3, 3), (5, 5), (7, 7), (1, 3), (2, 2), (4, 3)], ids=lambda k: f"{k[0]}x{k[1]}"
)
def test_both_stride1_filter_paths(kernel_size, padding, filter_path, monkeypatch):
    """The area-ratio threshold forced both ways, so small maps exercise the shifted matmuls too
    (even kernels included: SAME pads them asymmetrically)."""
    threshold = math.inf if filter_path == "shifted_matmul" else 0.0
    monkeypatch.setattr(conv_module, "SHIFTED_MATMUL_MAX_AREA_RATIO", threshold)
    assert gradient_plan(kernel_size, 1, padding, spatial_shape=(8, 9)).filter_method == filter_path
    for x_shape, filters in [((1, 8, 9, 3), 8), ((2, 9, 8, 16), 4)]:
        _check_against_tf(x_shape, kernel_size, filters, 1, padding)


def test_larger_map_default_rule():
    """A 24x24 map (area ratio 1.17 for 3x3) takes the shifted matmuls by default."""
    assert gradient_plan(3, 1, "SAME", spatial_shape=(24, 24)).filter_method == "shifted_matmul"
    assert gradient_plan(3, 1, "SAME", spatial_shape=(7, 7)).filter_method == "tf"
    _check_against_tf((2, 24, 26, 16), (3, 3), 12, 1, "SAME")
    _check_against_tf((1, 24, 26, 16), (3, 3), 12, 1, "VALID")


def test_strides_forms_and_even_kernel_with_strides():
    _check_against_tf((2, 9, 11, 3), (4, 2), 5, (2, 1), "SAME")
    _check_against_tf((1, 9, 11, 3), (3, 3), 5, [1, 2, 3, 1], "VALID")
    _check_against_tf((1, 8, 8, 3), (2, 2), 5, 1, "same")  # conv2d accepts lower case


@pytest.mark.parametrize("padding", ["SAME", "VALID"])
@pytest.mark.parametrize("strides", [1, 2])
@pytest.mark.parametrize("kernel_size", [1, 3, 5])
def test_tf_function_with_unknown_batch_and_size(kernel_size, strides, padding):
    """Inside tf.function with [None, None, None, C] inputs: two input sizes, one on each side of
    the area-ratio threshold (the run-time tf.cond of the "auto" filter path), and an empty
    batch."""
    channels, filters = 6, 5
    kernel = _random((kernel_size, kernel_size, channels, filters), 1)

    @tf.function(
        input_signature=[
            tf.TensorSpec([None, None, None, channels]),
            tf.TensorSpec([kernel_size, kernel_size, channels, filters]),
        ]
    )
    def both(x, kernel):
        with tf.GradientTape(persistent=True) as tape:
            tape.watch([x, kernel])
            y_ref = tf.nn.conv2d(x, kernel, strides, padding)
            y = conv2d(x, kernel, strides, padding)
            # each from its own shape: TensorFlow's is wrong for an empty batch (see below)
            upstream_ref, upstream = [
                tf.reshape(tf.sin(tf.range(tf.size(t), dtype=tf.float32) * 0.37), tf.shape(t))
                for t in (y_ref, y)
            ]
        reference = tape.gradient(y_ref, [x, kernel], output_gradients=upstream_ref)
        ours = tape.gradient(y, [x, kernel], output_gradients=upstream)
        return y_ref, y, reference, ours

    expected_plan = gradient_plan(kernel_size, strides, padding, spatial_shape=(None, None))
    if strides == 1 and kernel_size > 1:
        assert expected_plan.filter_method == "auto"
    for shape in [(2, 30, 28, channels), (1, 7, 9, channels)]:
        y_ref, y, (dx_ref, dw_ref), (dx, dw) = both(_random(shape, 0), kernel)
        np.testing.assert_array_equal(y.numpy(), y_ref.numpy())
        _assert_close(dx, dx_ref)
        _assert_close(dw, dw_ref)
    # An empty batch: TensorFlow's own result is not the reference there (its oneDNN convolution
    # returns the input unchanged on some CPUs); the shapes are computed by hand.
    _, y, _, (dx, dw) = both(_random((0, 8, 8, channels), 0), kernel)
    out = -(-8 // strides) if padding == "SAME" else (8 - kernel_size) // strides + 1
    assert tuple(y.shape) == (0, out, out, filters)
    assert tuple(dx.shape) == (0, 8, 8, channels)
    np.testing.assert_array_equal(dw.numpy(), np.zeros(kernel.shape))


def test_variable_kernel_and_plan_helpers():
    kernel = tf.Variable(_random((3, 3, 4, 2), 3))
    x = _random((1, 10, 10, 4), 4)
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(conv2d(x, kernel) ** 2)
    with tf.GradientTape() as reference_tape:
        reference_loss = tf.reduce_sum(tf.nn.conv2d(x, kernel, 1, "SAME") ** 2)
    _assert_close(tape.gradient(loss, kernel), reference_tape.gradient(reference_loss, kernel))
    assert gradient_plan(1, 1, "VALID") == GradientPlan("forward_conv", "matmul")
    assert gradient_plan(3, 2, "SAME") == GradientPlan("tf", "tf")
    assert has_fast_gradient(3, 1, "same") and has_fast_gradient((1, 1), (1, 1), "VALID")
    assert not has_fast_gradient(3, 2, "SAME")
    assert has_fast_gradient(3, 2, "SAME", tf.bfloat16)
    with pytest.raises(ValueError):
        conv2d(x, kernel, padding="CAUSAL")
    with pytest.raises(ValueError):
        conv2d(x, _random((3, 3, 5, 2), 0))


# ------------------------------------------------------------------------------- op: half types


@pytest.mark.parametrize("dtype", [tf.bfloat16, tf.float16], ids=lambda d: d.name)
@pytest.mark.parametrize(
    "kernel_size,strides,padding",
    [
        (3, 1, "SAME"),  # forward-conv input grad, shifted-matmul filter grad (24x24 map)
        (1, 1, "VALID"),  # 1x1 matmul
        (3, 2, "SAME"),  # TF's kernels, run in float32
        (5, 1, "VALID"),  # small output: TF's filter kernel in float32
    ],
)
def test_half_precision(kernel_size, strides, padding, dtype):
    """Half inputs: gradients come back in the half dtype and match a float32 computation on the
    same (rounded) numbers to half-precision accuracy."""
    shape, filters = (2, 24, 24, 16), 8
    x = _random(shape, 0, dtype)
    kernel = _random((kernel_size, kernel_size, shape[-1], filters), 1, dtype) * 0.2
    y_ref, _ = _tf_reference(
        tf.cast(x, tf.float32), tf.cast(kernel, tf.float32), None, strides, padding
    )
    upstream = _random(y_ref.shape, 2, dtype)
    y_ref, (dx_ref, dw_ref) = _tf_reference(
        tf.cast(x, tf.float32),
        tf.cast(kernel, tf.float32),
        tf.cast(upstream, tf.float32),
        strides,
        padding,
    )
    y, (dx, dw) = _conv2d_and_gradients(x, kernel, upstream, strides, padding)
    assert (y.dtype, dx.dtype, dw.dtype) == (dtype, dtype, dtype)
    tolerance = 2e-2 if dtype == tf.bfloat16 else 2e-3
    _assert_close(y, y_ref, rtol=tolerance, scaled_atol=tolerance)
    _assert_close(dx, dx_ref, rtol=tolerance, scaled_atol=tolerance)
    _assert_close(dw, dw_ref, rtol=tolerance, scaled_atol=tolerance)


# ------------------------------------------------------------------------------------ the layer


def _layer_pair(seed=0, input_shape=(2, 12, 10, 5), **kwargs):
    """A keras Conv2D and an accelerated one with the same config and weights (random bias)."""
    reference = keras.layers.Conv2D(**kwargs)
    ours = Conv2D(**kwargs)
    reference.build(input_shape)
    ours.build(input_shape)
    weights = [_random(w.shape, seed + i).numpy() for i, w in enumerate(reference.weights)]
    reference.set_weights(weights)
    ours.set_weights(weights)
    return reference, ours


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(filters=6, kernel_size=3, padding="same", activation="relu"),
        dict(filters=4, kernel_size=1, padding="valid"),
        dict(filters=3, kernel_size=(3, 1), padding="valid", use_bias=False),
        dict(filters=6, kernel_size=3, strides=2, padding="same"),  # plain Keras path
    ],
    ids=["3x3-same-relu", "1x1-valid", "3x1-valid-nobias", "3x3-s2"],
)
def test_layer_values_and_gradients_equal_keras(kwargs):
    reference, ours = _layer_pair(**kwargs)
    x = _random((2, 12, 10, 5), 7)
    results = []
    for layer in (reference, ours):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = layer(x)
            loss = tf.reduce_sum(y * tf.sin(y))
        results.append((y, tape.gradient(loss, [x] + layer.trainable_weights)))
    (y_ref, grads_ref), (y, grads) = results
    np.testing.assert_allclose(y.numpy(), y_ref.numpy(), rtol=1e-6, atol=1e-6)
    assert len(grads) == len(grads_ref) == (3 if kwargs.get("use_bias", True) else 2)
    for grad, grad_ref in zip(grads, grads_ref):
        _assert_close(grad, grad_ref)


def test_layer_mixed_bfloat16_values_and_gradients():
    reference, ours = _layer_pair(filters=6, kernel_size=3, padding="same", dtype="mixed_bfloat16")
    x = _random((2, 12, 10, 5), 7)
    results = []
    for layer in (reference, ours):
        with tf.GradientTape() as tape:
            y = layer(x)
            loss = tf.reduce_sum(tf.cast(y, tf.float32) ** 2)
        results.append((y, tape.gradient(loss, layer.trainable_weights)))
    (y_ref, grads_ref), (y, grads) = results
    assert y.dtype == tf.bfloat16 and all(g.dtype == tf.float32 for g in grads)
    np.testing.assert_array_equal(
        tf.cast(y, tf.float32).numpy(), tf.cast(y_ref, tf.float32).numpy()
    )
    for grad, grad_ref in zip(grads, grads_ref):
        _assert_close(grad, grad_ref, rtol=3e-2, scaled_atol=3e-2)


def test_layer_config_and_serialization_are_keras():
    """accel.apply changes neither the class, the config nor the serialized form."""
    keras_layer = keras.layers.Conv2D(
        7, (3, 5), strides=(1, 2), padding="same", activation="relu", use_bias=False, name="c"
    )
    ours = Conv2D(
        7, (3, 5), strides=(1, 2), padding="same", activation="relu", use_bias=False, name="c"
    )
    assert type(ours) is keras.layers.Conv2D
    assert ours.get_config() == keras_layer.get_config()
    serialized = keras.saving.serialize_keras_object(ours)
    assert serialized == keras.saving.serialize_keras_object(keras_layer)
    restored = keras.saving.deserialize_keras_object(serialized)
    assert type(restored) is keras.layers.Conv2D and restored.get_config() == ours.get_config()


def _tiny_model(conv_class, seed=0):
    inputs = keras.Input((16, 16, 3))
    x = conv_class(8, 3, padding="same", activation="relu", name="conv_a")(inputs)
    x = conv_class(6, 1, name="conv_b")(x)
    x = conv_class(4, 3, padding="valid", name="conv_c")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(2, name="logits")(x)
    return keras.Model(inputs, outputs)


def test_weights_files_interchange(tmp_path):
    keras_model = _tiny_model(keras.layers.Conv2D)
    ours = _tiny_model(Conv2D)
    assert [w.path for w in ours.weights] == [w.path for w in keras_model.weights]
    keras_model.save_weights(tmp_path / "keras.weights.h5")
    ours.load_weights(tmp_path / "keras.weights.h5")
    for a, b in zip(ours.get_weights(), keras_model.get_weights()):
        np.testing.assert_array_equal(a, b)
    ours.set_weights([w * 2 for w in ours.get_weights()])
    ours.save_weights(tmp_path / "ours.weights.h5")
    keras_model.load_weights(tmp_path / "ours.weights.h5")
    for a, b in zip(ours.get_weights(), keras_model.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_fit_step_matches_keras_conv2d():
    keras_model = _tiny_model(keras.layers.Conv2D)
    ours = _tiny_model(Conv2D)
    ours.set_weights(keras_model.get_weights())
    x = _random((4, 16, 16, 3), 11).numpy()
    y = np.array([0, 1, 1, 0])
    for model in (keras_model, ours):
        model.compile(
            optimizer=keras.optimizers.SGD(0.5),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        )
        model.fit(x, y, batch_size=4, epochs=1, verbose=0, shuffle=False)
    initial = _tiny_model(keras.layers.Conv2D).get_weights()  # same seeds: the initial weights
    for layer_name in ("conv_a", "conv_b", "conv_c"):
        updated = ours.get_layer(layer_name).kernel.numpy()
        expected = keras_model.get_layer(layer_name).kernel.numpy()
        np.testing.assert_allclose(updated, expected, rtol=1e-5, atol=1e-5)
    moved = [not np.allclose(a, b) for a, b in zip(ours.get_weights(), initial)]
    assert any(moved)


def test_graph_inference_and_training_equal_keras():
    """In a tf.function with unknown shapes: inference values, and a training step's gradients
    with respect to the input and the weights, equal the plain Keras layer's."""
    reference, ours = _layer_pair(filters=6, kernel_size=3, padding="same", activation="relu")
    spec = tf.TensorSpec([None, None, None, 5])
    x = _random((2, 12, 10, 5), 4)
    results = []
    for layer in (reference, ours):

        @tf.function(input_signature=[spec])
        def step(x, layer=layer):
            with tf.GradientTape() as tape:
                tape.watch(x)
                y = layer(x)
                loss = tf.reduce_sum(y * tf.cos(y))
            return [layer(x), *tape.gradient(loss, [x] + layer.trainable_weights)]

        results.append(step(x))
    for got, want in zip(results[1], results[0]):
        _assert_close(got, want)


@pytest.mark.parametrize(
    "dtype,matmul_dtype",
    [(tf.bfloat16, tf.bfloat16), (tf.float16, tf.float32)],
    ids=["bfloat16", "float16"],
)
@pytest.mark.parametrize("kernel_size", [1, 3])
def test_half_filter_gradient_matmul_dtype(dtype, matmul_dtype, kernel_size):
    """bfloat16 filter gradients run their matmuls on bfloat16 operands (float32 accumulation
    inside oneDNN, one rounding); float16 ones cast to float32 (a float16 sum could overflow)."""
    x = _random((1, 20, 20, 8), 0, dtype)
    kernel = _random((kernel_size, kernel_size, 8, 4), 1, dtype) * 0.2

    @tf.function
    def gradients(x, kernel):
        with tf.GradientTape() as tape:
            tape.watch(kernel)
            y = conv2d(x, kernel, 1, "SAME")
        return tape.gradient(y, kernel)

    graph = gradients.get_concrete_function(x, kernel).graph
    matmul_types = {
        op.get_attr("T") for op in graph.get_operations() if op.type in ("MatMul", "BatchMatMulV2")
    }
    for function in graph._functions.values():  # the custom gradient's body
        matmul_types |= {
            tf.as_dtype(node.attr["T"].type)
            for node in function.definition.node_def
            if node.op in ("MatMul", "BatchMatMulV2")
        }
    assert matmul_types == {matmul_dtype}
    dw = gradients(x, kernel)
    _, (_, dw_ref) = _tf_reference(
        tf.cast(x, tf.float32), tf.cast(kernel, tf.float32), tf.ones([1, 20, 20, 4]), 1, "SAME"
    )
    assert dw.dtype == dtype
    _assert_close(dw, dw_ref, rtol=2e-2, scaled_atol=2e-2)


# ---------------------------------------------------------------------------- empty batch shapes


@pytest.mark.parametrize(
    "kernel_size,strides,padding",
    [(3, 1, "same"), (3, 2, "same"), (1, 1, "valid"), (3, 1, "valid"), (5, 2, "valid")],
)
def test_empty_batch_has_the_convolution_shape(kernel_size, strides, padding):
    """An empty batch comes out as [0, Ho, Wo, filters] (TensorFlow's oneDNN convolution returns
    its input there on some CPUs), eagerly, in tf.function with unknown shapes, with a tape
    recording (tfrcnn's gradient path) and without; the kernel's gradient is zero."""
    layer = Conv2D(6, kernel_size, strides=strides, padding=padding, activation="relu")
    layer.build((None, None, None, 5))
    expected_hw = {
        ("same", 1): (9, 11),
        ("same", 2): (5, 6),
        ("valid", 1): (9 - kernel_size + 1, 11 - kernel_size + 1),
        ("valid", 2): ((9 - kernel_size) // 2 + 1, (11 - kernel_size) // 2 + 1),
    }
    expected = (0, *expected_hw[(padding, strides)], 6)
    empty = tf.zeros([0, 9, 11, 5])
    assert tuple(layer(empty).shape) == expected

    @tf.function(input_signature=[tf.TensorSpec([None, None, None, 5])])
    def both(x):
        with tf.GradientTape() as tape:
            y_taped = layer(x)
            loss = tf.reduce_sum(y_taped)
        return layer(x), y_taped, tape.gradient(loss, layer.kernel)

    y, y_taped, dkernel = both(empty)
    assert tuple(y.shape) == expected and tuple(y_taped.shape) == expected
    np.testing.assert_array_equal(dkernel.numpy(), np.zeros(layer.kernel.shape))
    # the same function on a non-empty batch still matches the plain convolution
    x = _random((2, 9, 11, 5), 3)
    reference = tf.nn.relu(tf.nn.conv2d(x, layer.kernel, strides, padding.upper()) + layer.bias)
    _assert_close(both(x)[0], reference)
