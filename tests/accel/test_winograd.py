"""Winograd F(4x4, 3x3): exact in float64 against tf.nn.conv2d (so the transform matrices are
right), float32 error bounds, XLA and plain graphs, unknown batch, the shape rule, and the
accelerated keras Conv2D equal to the plain one where it takes the Winograd path and where not."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import tfrcnn.accel.winograd as winograd
from tfrcnn import accel
from tfrcnn.accel.conv import winograd_conv2d
from tfrcnn.accel.winograd import (
    MIN_CHANNELS,
    MIN_TILES,
    winograd_conv3x3,
    winograd_conv3x3_bands,
    winograd_conv3x3_xla,
    winograd_filter_gradient,
    winograd_filter_gradient_bands,
    winograd_filter_gradient_xla,
    winograd_pays_off,
)


def _pair(shape, filters, seed=0, dtype=np.float64):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape).astype(dtype)
    kernel = rng.standard_normal((3, 3, shape[-1], filters)) / np.sqrt(9 * shape[-1])
    return x, kernel.astype(dtype)


@pytest.mark.parametrize(
    "shape", [(2, 13, 10, 5), (1, 4, 4, 3), (1, 1, 1, 2), (3, 5, 7, 4), (1, 8, 9, 6)]
)
def test_float64_equals_direct_convolution(shape):
    """Any size, multiple of the 4x4 tile or not (the last tiles are padded and cropped)."""
    x, kernel = _pair(shape, 7)
    expected = tf.nn.conv2d(x, kernel, 1, "SAME").numpy()
    got = winograd_conv3x3(x, kernel).numpy()
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-12)


def test_bias_and_relu_in_the_same_computation():
    """``winograd_conv3x3(x, k, bias, relu)`` = relu(conv + bias), float64 plain and float32 under
    XLA; a bias of the wrong length is refused."""
    x, kernel = _pair((1, 13, 10, 5), 6, seed=3)
    bias = np.linspace(-2.0, 2.0, 6)
    direct = tf.nn.conv2d(x, kernel, 1, "SAME").numpy() + bias
    np.testing.assert_allclose(winograd_conv3x3(x, kernel, bias).numpy(), direct, atol=1e-12)
    got = winograd_conv3x3(x, kernel, bias, True).numpy()
    np.testing.assert_allclose(got, np.maximum(direct, 0.0), atol=1e-12)
    assert (got == 0).any() and (got > 0).any()  # the bias range makes both signs
    compiled = winograd_conv3x3_xla(
        x.astype(np.float32), kernel.astype(np.float32), bias.astype(np.float32), True
    ).numpy()
    np.testing.assert_allclose(compiled, np.maximum(direct, 0.0), atol=1e-5)
    with pytest.raises(ValueError, match=r"bias of shape \[6\]"):
        winograd_conv3x3(x, kernel, np.zeros(5))


@pytest.mark.parametrize("band_bytes", [1, 3200, 10**9])
def test_bands_of_tile_rows_give_the_same_convolution(monkeypatch, band_bytes):
    """Large inputs are convolved in bands of tile rows (BAND_MIN_BYTES, lowered here to reach it
    on small maps): every band split (one tile row a band, a few, one band) equals the direct
    convolution in float64, also with a bias and relu, on sizes that are not whole tiles."""
    monkeypatch.setattr(winograd, "BAND_MIN_BYTES", 0)
    monkeypatch.setattr(winograd, "BAND_BYTES", band_bytes)
    x, kernel = _pair((2, 13, 10, 3), 4, seed=5)  # 2 * 13 * 10 * 3 * 8 = 6,240 bytes
    bands = winograd._bands(tf.constant(x))
    assert bands[0][0] == 0 and bands[-1][1] == 4  # 13 rows = 4 tile rows, all covered
    assert all(a[1] == b[0] for a, b in zip(bands, bands[1:]))
    assert len(bands) == {1: 4, 3200: 2, 10**9: 1}[band_bytes]
    bias = np.array([-1.0, 0.5, 0.0, 2.0])
    expected = np.maximum(tf.nn.conv2d(x, kernel, 1, "SAME").numpy() + bias, 0.0)
    np.testing.assert_allclose(
        winograd_conv3x3(x, kernel, bias, True).numpy(), expected, atol=1e-12
    )
    compiled = tf.function(winograd_conv3x3, jit_compile=True)
    np.testing.assert_allclose(compiled(x, kernel, bias, True).numpy(), expected, atol=1e-12)


@pytest.mark.parametrize("band_bytes", [1, 3200, 10**9])
@pytest.mark.parametrize("graph", [False, True])
def test_convolution_in_band_calls_equals_tensorflow(monkeypatch, band_bytes, graph):
    """winograd_conv3x3_bands (one XLA call a band, outputs concatenated) equals the direct
    convolution in float64 for every band split, on sizes that are not whole tiles, also traced
    with an unknown batch."""
    monkeypatch.setattr(winograd, "BAND_MIN_BYTES", 0)
    monkeypatch.setattr(winograd, "BAND_BYTES", band_bytes)
    x, kernel = _pair((2, 13, 10, 3), 4, seed=6)
    expected = tf.nn.conv2d(x, kernel, 1, "SAME").numpy()
    if graph:
        spec = [
            tf.TensorSpec([None, 13, 10, 3], tf.float64),
            tf.TensorSpec([3, 3, 3, 4], tf.float64),
        ]
        fn = tf.function(winograd_conv3x3_bands, input_signature=spec)
    else:
        fn = winograd_conv3x3_bands
    np.testing.assert_allclose(fn(x, kernel).numpy(), expected, atol=1e-12)


def test_band_rule():
    assert winograd._bands(tf.zeros([1, 100, 100, 256])) == [(0, 25)]  # 10 MB: one piece
    bands = winograd._bands(tf.zeros([1, 200, 200, 256]))  # 41 MB: 7 bands of about 6 MB
    assert len(bands) == 7 and bands[0] == (0, 8) and bands[-1] == (48, 50)


def test_hand_computed_single_channel():
    """A 4x4 image of 1..16 and the kernel with a single 1 at its centre-right (out[i, j] =
    x[i, j + 1], zero past the right edge), and an all-ones kernel (3x3 neighbourhood sums)."""
    x = np.arange(1, 17, dtype=np.float64).reshape(1, 4, 4, 1)
    shift = np.zeros((3, 3, 1, 1))
    shift[1, 2] = 1.0
    expected = np.array([[2, 3, 4, 0], [6, 7, 8, 0], [10, 11, 12, 0], [14, 15, 16, 0]])
    np.testing.assert_allclose(winograd_conv3x3(x, shift).numpy()[0, :, :, 0], expected, atol=1e-12)
    sums = winograd_conv3x3(x, np.ones((3, 3, 1, 1))).numpy()[0, :, :, 0]
    assert sums[0, 0] == pytest.approx(1 + 2 + 5 + 6)
    assert sums[1, 1] == pytest.approx(1 + 2 + 3 + 5 + 6 + 7 + 9 + 10 + 11)
    assert sums[3, 3] == pytest.approx(11 + 12 + 15 + 16)


@pytest.mark.parametrize("compiled", [False, True])
def test_transforms_of_every_tile_against_numpy(compiled):
    """``input_transform`` is ``B^T d B`` of every 6x6 tile (stride 4) of the input padded by one
    pixel and up to whole tiles, and ``output_transform_adjoint`` is ``A dY A^T`` of every 4x4
    block of ``dy`` padded up to whole tiles, entry ``(i, j)`` at row ``6 i + j``, tiles in
    (image, tile row, tile column) order: numpy, tile by tile, in float64."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 9, 7, 3))
    dy = rng.standard_normal((2, 9, 7, 2))
    run = (lambda f: tf.function(f, jit_compile=True)) if compiled else (lambda f: f)
    transformed = run(winograd.input_transform)(x).numpy()
    adjoint = run(winograd.output_transform_adjoint)(dy).numpy()
    th, tw = 3, 2
    assert transformed.shape == (36, 2 * th * tw, 3) and adjoint.shape == (36, 2 * th * tw, 2)
    padded = np.pad(x, [(0, 0), (1, 4 * th + 1 - 9), (1, 4 * tw + 1 - 7), (0, 0)])
    dy_padded = np.pad(dy, [(0, 0), (0, 4 * th - 9), (0, 4 * tw - 7), (0, 0)])
    bt, at = winograd._BT, winograd._AT
    for n in range(2):
        for i in range(th):
            for j in range(tw):
                tile = (n * th + i) * tw + j
                for c in range(3):
                    d = padded[n, 4 * i : 4 * i + 6, 4 * j : 4 * j + 6, c]
                    np.testing.assert_allclose(
                        transformed[:, tile, c], (bt @ d @ bt.T).ravel(), atol=1e-12
                    )
                for k in range(2):
                    block = dy_padded[n, 4 * i : 4 * i + 4, 4 * j : 4 * j + 4, k]
                    np.testing.assert_allclose(
                        adjoint[:, tile, k], (at.T @ block @ at).ravel(), atol=1e-12
                    )


def test_float32_error_bound_and_xla_matches_plain():
    """float32: within 1e-4 of the output's scale of the float64 result (the transforms' constants
    cost about one decimal digit against the direct convolution); XLA computes the same."""
    x, kernel = _pair((1, 21, 18, 128), 128, seed=1)
    exact = tf.nn.conv2d(x, kernel, 1, "SAME").numpy()
    scale = np.abs(exact).max()
    x32, k32 = x.astype(np.float32), kernel.astype(np.float32)
    plain = tf.function(winograd_conv3x3)(x32, k32).numpy()
    compiled = winograd_conv3x3_xla(x32, k32).numpy()
    assert plain.dtype == compiled.dtype == np.float32
    assert np.abs(plain - exact).max() <= 1e-4 * scale
    assert np.abs(compiled - exact).max() <= 1e-4 * scale
    np.testing.assert_allclose(compiled, plain, rtol=0, atol=2e-5 * scale)


def _filter_gradient_reference(x, dy):
    return tf.raw_ops.Conv2DBackpropFilter(
        input=x,
        filter_sizes=[3, 3, x.shape[-1], dy.shape[-1]],
        out_backprop=dy,
        strides=[1, 1, 1, 1],
        padding="SAME",
    ).numpy()


@pytest.mark.parametrize(
    "shape", [(2, 13, 10, 5), (1, 4, 4, 3), (1, 1, 1, 2), (3, 5, 7, 4), (1, 8, 9, 6)]
)
def test_filter_gradient_float64_equals_tensorflow(shape):
    """The filter gradient through the transform, any size (the zero-padded last tiles add
    nothing), against TensorFlow's Conv2DBackpropFilter in float64."""
    rng = np.random.default_rng(sum(shape))
    x = rng.standard_normal(shape)
    dy = rng.standard_normal((*shape[:3], 3))
    got = winograd_filter_gradient(x, dy).numpy()
    assert got.shape == (3, 3, shape[3], 3)
    np.testing.assert_allclose(got, _filter_gradient_reference(x, dy), rtol=0, atol=1e-11)


def test_filter_gradient_hand_computed():
    """x = 1..16 on a 4x4 image, dy all ones: dW[i, j] is the sum of x over the 3x3 positions
    window shifted by (i - 1, j - 1), the rows or columns outside the image counting zero."""
    x = np.arange(1, 17, dtype=np.float64).reshape(1, 4, 4, 1)
    got = winograd_filter_gradient(x, np.ones((1, 4, 4, 1))).numpy()[:, :, 0, 0]
    image = x[0, :, :, 0]
    assert got[1, 1] == pytest.approx(136)  # every pixel once
    assert got[0, 0] == pytest.approx(
        image[:3, :3].sum()
    )  # 54: the bottom row, right column missing
    assert got[2, 2] == pytest.approx(image[1:, 1:].sum())  # 99
    assert got[1, 2] == pytest.approx(image[:, 1:].sum())  # 108
    np.testing.assert_allclose(got, [[54, 78, 63], [96, 136, 108], [90, 126, 99]], atol=1e-12)


def test_filter_gradient_float32_error_and_xla():
    """float32 through XLA: within 3e-5 of the largest entry of the float64 gradient (measured
    about 6e-6 on 256-channel layers), and refuses mismatched maps."""
    rng = np.random.default_rng(4)
    x = rng.standard_normal((2, 37, 41, 64))
    dy = rng.standard_normal((2, 37, 41, 32))
    exact = _filter_gradient_reference(x, dy)
    got = winograd_filter_gradient_xla(x.astype(np.float32), dy.astype(np.float32)).numpy()
    assert got.dtype == np.float32
    assert np.abs(got - exact).max() <= 3e-5 * np.abs(exact).max()
    with pytest.raises(ValueError, match="same static H, W"):
        winograd_filter_gradient(tf.zeros([1, 8, 8, 2]), tf.zeros([1, 8, 7, 2]))


@pytest.mark.parametrize("band_bytes", [1, 3000, 10**9])
@pytest.mark.parametrize("graph", [False, True])
def test_filter_gradient_in_bands_equals_tensorflow(monkeypatch, band_bytes, graph):
    """Large inputs' filter gradients are sums of bands of tile rows, one XLA call each
    (BAND_MIN_BYTES lowered here to reach it on small maps): every split (one tile row a band,
    bands whose last is shorter, one band) equals TensorFlow's in float64, on sizes that are not
    whole tiles, also traced with an unknown batch."""
    monkeypatch.setattr(winograd, "BAND_MIN_BYTES", 0)
    monkeypatch.setattr(winograd, "GRADIENT_BAND_BYTES", band_bytes)
    rng = np.random.default_rng(7)
    x = rng.standard_normal((2, 18, 10, 3))  # 18 rows = 5 tile rows; 8,640 bytes
    dy = rng.standard_normal((2, 18, 10, 4))
    bands = winograd._bands(tf.constant(x), band_bytes)
    assert len(bands) == {1: 5, 3000: 3, 10**9: 1}[band_bytes]
    if graph:
        spec = [tf.TensorSpec([None, 18, 10, c], tf.float64) for c in (3, 4)]
        fn = tf.function(winograd_filter_gradient_bands, input_signature=spec)
    else:
        fn = winograd_filter_gradient_bands
    got = fn(x, dy).numpy()
    np.testing.assert_allclose(got, _filter_gradient_reference(x, dy), rtol=0, atol=1e-11)


def test_unknown_batch_in_tf_function():
    x, kernel = _pair((3, 9, 11, 4), 5, seed=2, dtype=np.float32)

    @tf.function(input_signature=[tf.TensorSpec([None, 9, 11, 4])])
    def conv(images):
        return winograd_conv3x3(images, kernel)

    for batch in (3, 1):
        got = conv(x[:batch]).numpy()
        np.testing.assert_allclose(
            got, tf.nn.conv2d(x[:batch], kernel, 1, "SAME").numpy(), rtol=1e-4, atol=1e-4
        )


@pytest.mark.parametrize("compiled", [False, True])
def test_unknown_height_and_width_in_tf_function(compiled):
    """Traced with unknown N, H, W (a serving signature): the direct convolution's values for
    several sizes, odd ones and one smaller than a tile included."""
    x, kernel = _pair((2, 23, 30, 4), 5, seed=4, dtype=np.float32)
    function = winograd_conv3x3_xla if compiled else winograd_conv3x3

    @tf.function(input_signature=[tf.TensorSpec([None, None, None, 4])])
    def conv(images):
        return function(images, kernel)

    for batch, height, width in ((2, 23, 30), (1, 9, 11), (1, 3, 2)):
        part = x[:batch, :height, :width]
        np.testing.assert_allclose(
            conv(part).numpy(), tf.nn.conv2d(part, kernel, 1, "SAME").numpy(), rtol=1e-4, atol=1e-4
        )


def test_bad_shapes_are_refused():
    with pytest.raises(ValueError, match="static C"):
        tf.function(
            winograd_conv3x3,
            input_signature=[tf.TensorSpec([1, 8, 8, None]), tf.TensorSpec([3, 3, 4, 2])],
        ).get_concrete_function()
    with pytest.raises(ValueError, match=r"\[3, 3, 4, K\] kernel"):
        winograd_conv3x3(tf.zeros([1, 8, 8, 4]), tf.zeros([5, 5, 4, 2]))


def test_pays_off_rule():
    assert MIN_CHANNELS == 64 and MIN_TILES == 49
    assert winograd_pays_off((1, 200, 200, 256), 256)  # 2,500 tiles
    assert winograd_pays_off((1, 45, 45, 128), 128)  # 12 x 12 = 144 tiles
    assert winograd_pays_off((None, 50, 50, 256), 256)  # unknown batch counts as 1
    assert winograd_pays_off((2, 32, 32, 256), 256)  # 2 x 64 tiles
    assert winograd_pays_off((1, 25, 25, 512), 512)  # 7 x 7 = 49 tiles
    assert not winograd_pays_off((1, 24, 24, 512), 512)  # 6 x 6 = 36 tiles
    assert not winograd_pays_off((1, 13, 13, 256), 256)  # 16 tiles
    assert winograd_pays_off((1, 200, 200, 64), 64)
    assert not winograd_pays_off((1, 200, 200, 32), 64)  # narrow
    assert not winograd_pays_off((1, 200, 200, 256), 32)
    assert not winograd_pays_off((1, None, 200, 256), 256)
    assert not winograd_pays_off((0, 200, 200, 256), 256)  # a static empty batch


# ------------------------------------------------------------------------------------ the layer
# An accelerated 3x3 "same" Conv2D of 128 channels on a 48 x 44 map (132 tiles) takes the Winograd
# path; its values and gradients equal the plain Keras layer's within 1e-4 of the output's scale.


def _layers(dtype="float32", **kwargs):
    kwargs = {"filters": 128, "kernel_size": 3, "padding": "same", "activation": "relu", **kwargs}
    reference = keras.layers.Conv2D(dtype=dtype, **kwargs)
    ours = accel.apply(keras.layers.Conv2D(dtype=dtype, **kwargs))
    for layer in (reference, ours):
        layer.build((None, 48, 44, 128))
    weights = [
        np.random.default_rng(i).standard_normal(w.shape).astype("float32") * 0.05
        for i, w in enumerate(reference.weights)
    ]
    reference.set_weights(weights)
    ours.set_weights(weights)
    return reference, ours


def _assert_close_to(got, expected):
    expected = np.asarray(expected)
    np.testing.assert_allclose(
        np.asarray(got), expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max()
    )


def test_layer_inference_equals_keras():
    reference, ours = _layers()
    x = tf.random.stateless_normal([1, 48, 44, 128], seed=[3, 4])
    expected = reference(x).numpy()
    _assert_close_to(ours(x), expected)
    _assert_close_to(tf.function(ours)(x), expected)
    assert {**ours.get_config(), "name": ""} == {**reference.get_config(), "name": ""}


@pytest.mark.parametrize("activation", [None, "relu", "sigmoid"])
def test_layer_activation_values(activation):
    """Inference with a linear, relu or other activation: Keras' values either way."""
    reference, ours = _layers(activation=activation)
    x = tf.random.stateless_normal([1, 48, 44, 128], seed=[7, 8])
    _assert_close_to(ours(x), reference(x))


def test_folded_batch_norm_with_winograd_equals_numpy():
    """A BackboneModel conv -> batch norm pair at inference (folded, Winograd-sized): equal to
    the numpy computation of the unfolded layers (batch norm from its moving statistics)."""
    from tfrcnn.backbones.common import BackboneModel

    inputs = keras.Input((48, 44, 64))
    conv = keras.layers.Conv2D(64, 3, padding="same", name="conv")
    norm = keras.layers.BatchNormalization(name="bn")
    model = accel.apply(BackboneModel(inputs, keras.layers.ReLU()(norm(conv(inputs)))))
    rng = np.random.default_rng(9)
    for variable, value in [
        (norm.moving_mean, rng.normal(0, 0.5, 64)),
        (norm.moving_variance, rng.uniform(0.3, 2.0, 64)),
        (norm.gamma, rng.uniform(0.5, 1.5, 64)),
        (norm.beta, rng.normal(0, 0.5, 64)),
    ]:
        variable.assign(value)
    x = tf.random.stateless_normal([1, 48, 44, 64], seed=[1, 2])
    y = tf.nn.conv2d(tf.cast(x, tf.float64), tf.cast(conv.kernel, tf.float64), 1, "SAME").numpy()
    y = y + np.asarray(conv.bias, np.float64)
    mean, var, gamma, beta = (
        np.asarray(v, np.float64)
        for v in (norm.moving_mean, norm.moving_variance, norm.gamma, norm.beta)
    )
    expected = np.maximum((y - mean) / np.sqrt(var + norm.epsilon) * gamma + beta, 0.0)
    got = model(x, training=False)[0].numpy()
    np.testing.assert_allclose(got, expected, atol=1e-4 * np.abs(expected).max())


def test_layer_gradients_under_a_tape_equal_keras():
    reference, ours = _layers()
    x = tf.random.stateless_normal([1, 48, 44, 128], seed=[5, 6])
    grads = []
    for layer in (reference, ours):
        with tf.GradientTape() as tape:
            tape.watch(x)
            loss = tf.reduce_sum(tf.sin(layer(x)))
        grads.append(tape.gradient(loss, [x, *layer.trainable_weights]))
    for expected, got in zip(*grads):
        _assert_close_to(got, expected)


@pytest.mark.parametrize("graph", [False, True])
def test_winograd_conv2d_gradients_match_tensorflow(graph):
    """Forward, input and filter gradients against tf.nn.conv2d's, float32, on a map of many tiles
    and on one smaller than a tile, eager and in a tf.function (where the two gradients are two
    computations, one after the other)."""
    for shape in [(2, 30, 27, 8), (1, 6, 5, 8)]:
        x, kernel = _pair(shape, 6, seed=7, dtype=np.float32)
        x, kernel = tf.constant(x), tf.constant(kernel)
        upstream = tf.sin(
            tf.reshape(tf.range(np.prod(shape[:3]) * 6, dtype=tf.float32), [*shape[:3], 6])
        )
        results = []
        for conv in (lambda a, b: tf.nn.conv2d(a, b, 1, "SAME"), winograd_conv2d):

            def run(conv=conv):
                with tf.GradientTape() as tape:
                    tape.watch([x, kernel])
                    y = conv(x, kernel)
                return [y, *tape.gradient(y, [x, kernel], output_gradients=upstream)]

            results.append(tf.function(run)() if graph else run())
        for expected, got in zip(*results):
            np.testing.assert_allclose(
                got.numpy(), expected.numpy(), rtol=1e-4, atol=1e-4 * np.abs(expected.numpy()).max()
            )
    with pytest.raises(ValueError, match="float32"):
        winograd_conv2d(tf.zeros([1, 8, 8, 2], tf.bfloat16), tf.zeros([3, 3, 2, 2], tf.bfloat16))


@pytest.mark.parametrize("activation", ["relu", "sigmoid"])
def test_layer_with_unknown_map_size_equals_keras(activation):
    """Traced with unknown N, H, W (as a serving signature traces it): Keras' values on a map with
    enough tiles for Winograd and on one with too few, decided when the function runs."""
    reference, ours = _layers(activation=activation)
    spec = tf.TensorSpec([None, None, None, 128])
    fast, plain = (
        tf.function(ours, input_signature=[spec]),
        tf.function(reference, input_signature=[spec]),
    )
    for shape in ([1, 48, 44, 128], [1, 20, 20, 128], [2, 30, 9, 128]):
        x = tf.random.stateless_normal(shape, seed=[2, len(shape)])
        _assert_close_to(fast(x), plain(x))


def test_layer_equals_keras_where_winograd_does_not_apply():
    """Inside accel.disabled(), on a map of too few tiles, in mixed precision and strided: Keras'
    values (the direct convolution)."""
    reference, ours = _layers()
    x = tf.random.stateless_normal([1, 48, 44, 128], seed=[5, 6])
    with accel.disabled():
        _assert_close_to(ours(x), reference(x))
    small = tf.random.stateless_normal([1, 20, 20, 128], seed=[1, 6])  # 25 tiles: too few
    _assert_close_to(ours(small), reference(small))
    bf16_reference, bf16 = _layers(dtype="mixed_bfloat16")
    np.testing.assert_allclose(
        tf.cast(bf16(x), tf.float32).numpy(),
        tf.cast(bf16_reference(x), tf.float32).numpy(),
        rtol=2e-2,
        atol=2e-2,
    )
    strided_reference, strided = _layers(strides=2)
    _assert_close_to(strided(x), strided_reference(x))
