"""ImageResizer: sizes, scales, the max_side cap, uint8 input, zero padding, config and round trips."""

import keras
import numpy as np
import tensorflow as tf
from conftest import global_policy

from tfrcnn.layers.image_resizer import ImageResizer


def _image(h, w, b=1, seed=0):
    return np.random.default_rng(seed).integers(0, 256, size=(b, h, w, 3), dtype=np.uint8)


def test_480x640_to_600x800_padded_to_608x800():
    raw = _image(480, 640)
    images, image_shape, image_scale, original_shape = ImageResizer(600, 1000, 32)(raw)
    np.testing.assert_array_equal(original_shape.numpy(), [[480, 640]])
    assert original_shape.dtype == tf.int32
    assert images.shape == (1, 608, 800, 3) and images.dtype == tf.float32
    np.testing.assert_array_equal(image_shape.numpy(), [[600, 800]])
    assert image_shape.dtype == tf.int32 and image_scale.dtype == tf.float32
    np.testing.assert_allclose(image_scale.numpy(), [1.25])
    expected = tf.image.resize(tf.cast(raw, tf.float32), (600, 800), method="bilinear").numpy()
    np.testing.assert_allclose(images.numpy()[:, :600, :800], expected, rtol=1e-6, atol=1e-4)
    np.testing.assert_array_equal(images.numpy()[:, 600:], 0.0)
    assert 0 <= images.numpy().min() and images.numpy().max() <= 255


def test_padding_bottom_and_right_is_zero():
    raw = np.full((2, 500, 700, 3), 255, np.uint8)  # scale 1.2 -> 600 x 840 -> 608 x 864
    images, image_shape, image_scale, original_shape = ImageResizer(600, 1000, 32)(raw)
    np.testing.assert_array_equal(original_shape.numpy(), [[500, 700], [500, 700]])
    assert images.shape == (2, 608, 864, 3)
    np.testing.assert_array_equal(image_shape.numpy(), [[600, 840], [600, 840]])
    np.testing.assert_allclose(image_scale.numpy(), [1.2, 1.2], rtol=1e-6)
    x = images.numpy()
    np.testing.assert_allclose(x[:, :600, :840], 255.0, rtol=1e-6)
    np.testing.assert_array_equal(x[:, 600:], 0.0)
    np.testing.assert_array_equal(x[:, :, 840:], 0.0)


def test_large_image_capped_by_max_side():
    raw = np.full((1, 4000, 3000, 3), 7, np.uint8)
    # 600 / 3000 = 0.2 gives a longer side of 800 <= 1000: the shorter side rule decides.
    _, image_shape, image_scale, _ = ImageResizer(600, 1000, 32)(raw)
    np.testing.assert_array_equal(image_shape.numpy(), [[800, 600]])
    np.testing.assert_allclose(image_scale.numpy(), [0.2], rtol=1e-6)
    # 800 / 3000 would give 1067 > 1000: capped, scale 1000 / 4000.
    images, image_shape, image_scale, original_shape = ImageResizer(800, 1000, 32)(raw)
    np.testing.assert_array_equal(image_shape.numpy(), [[1000, 750]])
    np.testing.assert_allclose(image_scale.numpy(), [0.25], rtol=1e-6)
    assert images.shape == (1, 1024, 768, 3)
    np.testing.assert_array_equal(original_shape.numpy(), [[4000, 3000]])
    np.testing.assert_allclose(images.numpy()[0, :1000, :750], 7.0, rtol=1e-6)
    # An elongated image: 4000 x 1000 with (600, 1000): the longer side is capped at 1000.
    _, image_shape, image_scale, _ = ImageResizer(600, 1000, 32)(
        np.zeros((1, 4000, 1000, 3), np.uint8)
    )
    np.testing.assert_array_equal(image_shape.numpy(), [[1000, 250]])
    np.testing.assert_allclose(image_scale.numpy(), [0.25], rtol=1e-6)


def test_small_image_upscaled_and_divisor_one():
    images, image_shape, image_scale, _ = ImageResizer(64, 100, 1)(_image(30, 40))
    np.testing.assert_array_equal(image_shape.numpy(), [[64, 85]])  # round(40 * 64 / 30) = 85
    np.testing.assert_allclose(image_scale.numpy(), [64 / 30], rtol=1e-6)
    assert images.shape == (1, 64, 85, 3)


def test_uint8_and_float_inputs_agree():
    raw = _image(48, 64, b=2)
    resizer = ImageResizer(60, 100, 16)
    from_uint8 = resizer(raw)
    from_float = resizer(raw.astype(np.float32))
    for a, b in zip(from_uint8, from_float):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    np.testing.assert_array_equal(from_uint8[1].numpy(), [[60, 80], [60, 80]])
    np.testing.assert_allclose(from_uint8[2].numpy(), [1.25, 1.25])


def test_get_config_round_trip():
    layer = ImageResizer(min_side=320, max_side=512, size_divisor=64, name="resize")
    config = layer.get_config()
    assert (config["min_side"], config["max_side"], config["size_divisor"]) == (320, 512, 64)
    assert ImageResizer.from_config(config).get_config() == config


def test_keras_round_trip_with_uint8_input(tmp_path):
    inputs = keras.Input((None, None, 3), dtype="uint8")
    images, image_shape, image_scale, original_shape = ImageResizer(40, 64, 16, name="resize")(
        inputs
    )
    assert tuple(images.shape) == (None, None, None, 3) and tuple(image_shape.shape) == (None, 2)
    assert image_shape.dtype == "int32" and tuple(image_scale.shape) == (None,)
    assert original_shape.dtype == "int32" and tuple(original_shape.shape) == (None, 2)
    model = keras.Model(inputs, [images, image_shape, image_scale, original_shape])
    path = str(tmp_path / "resize.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    x = _image(30, 50, b=2)
    want, got = model(x), loaded(x)
    for a, b in zip(got, want):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    np.testing.assert_array_equal(want[1].numpy(), [[38, 64], [38, 64]])  # scale min(40/30, 64/50)
    assert want[0].shape == (2, 48, 64, 3)
    np.testing.assert_array_equal(want[3].numpy(), [[30, 50], [30, 50]])


def test_float_pixels_not_rounded_under_mixed_bfloat16():
    raw = np.random.default_rng(0).uniform(0, 255, size=(1, 24, 32, 3)).astype("float32")
    want = ImageResizer(30, 64, 8)(raw)
    with global_policy("mixed_bfloat16"):
        got = ImageResizer(30, 64, 8)(raw)
    for a, b in zip(got, want):
        assert a.dtype == b.dtype
        np.testing.assert_array_equal(a.numpy(), b.numpy())
