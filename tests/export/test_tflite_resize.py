"""The image resize of the TFLite export (ImageResizer traced as the export traces, builtin ops only,
run with LiteRT) against hand-computed bilinear resizes: half-pixel centres, no antialias, source
coordinates clamped to the image (torchvision's ``F.interpolate(align_corners=False)`` and
``tf.image.resize``), border rows and columns included."""

import warnings

import numpy as np
import pytest
import tensorflow as tf
from ai_edge_litert.interpreter import Interpreter

from tfrcnn.export import operator_names
from tfrcnn.export.tflite import tflite_tracing
from tfrcnn.layers.image_resizer import ImageResizer

# Upsampling 2x2 -> 4x4: the source rows of output rows 0..3 are (y + 0.5) / 2 - 0.5 = -0.25,
# 0.25, 0.75, 1.25, clamped to [0, 1]: row 0 is input row 0 exactly (not 1.25 * row 0 - 0.25 *
# row 1 = -25, 22.5, ...), rows 1 and 2 are 3:1 and 1:3 mixes, row 3 is input row 1; columns alike.
UP_IN = [[0, 10], [100, 110]]
UP_OUT = [
    [0.0, 2.5, 7.5, 10.0],
    [25.0, 27.5, 32.5, 35.0],
    [75.0, 77.5, 82.5, 85.0],
    [100.0, 102.5, 107.5, 110.0],
]
# Upsampling 2x3 -> 4x6, then padded to 4x8 (size_divisor 4) with the pad value 7: source columns
# -0.25 (clamped to 0), 0.25, 0.75, 1.25, 1.75, 2.25 (clamped to 2).
WIDE_IN = [[0, 40, 80], [120, 160, 200]]
WIDE_OUT = [
    [0.0, 10.0, 30.0, 50.0, 70.0, 80.0, 7.0, 7.0],
    [30.0, 40.0, 60.0, 80.0, 100.0, 110.0, 7.0, 7.0],
    [90.0, 100.0, 120.0, 140.0, 160.0, 170.0, 7.0, 7.0],
    [120.0, 130.0, 150.0, 170.0, 190.0, 200.0, 7.0, 7.0],
]
# Downsampling 4x4 -> 2x2: source rows (y + 0.5) * 2 - 0.5 = 0.5 and 2.5, the means of rows 0-1
# and 2-3 (no antialias: two taps); of v = 40 i + 8 j that is 40 (2y + 0.5) + 8 (2x + 0.5).
DOWN_IN = [[40 * i + 8 * j for j in range(4)] for i in range(4)]
DOWN_OUT = [[24.0, 40.0], [104.0, 120.0]]
# Downsampling 5x5 -> 3x3 (scale 0.6): source rows (y + 0.5) / 0.6 - 0.5 = 1/3, 2, 11/3, inside
# the image; the resize of the linear v = 40 i + 8 j is 40 s_y + 8 s_x.
THIRDS = [1 / 3, 2.0, 11 / 3]
ODD_IN = [[40 * i + 8 * j for j in range(5)] for i in range(5)]
ODD_OUT = [[40 * sy + 8 * sx for sx in THIRDS] for sy in THIRDS]

CASES = {
    "up": (UP_IN, UP_OUT, dict(min_side=4, max_side=4, size_divisor=1), (4, 4)),
    "up_padded": (WIDE_IN, WIDE_OUT, dict(min_side=4, max_side=8, size_divisor=4), (4, 6)),
    "down": (DOWN_IN, DOWN_OUT, dict(min_side=2, max_side=2, size_divisor=1), (2, 2)),
    "down_thirds": (ODD_IN, ODD_OUT, dict(min_side=3, max_side=3, size_divisor=1), (3, 3)),
}


def _tflite_resizer(layer, height, width):
    """The resizer as the export converts it: traced in tflite_tracing, builtin ops only."""
    spec = tf.TensorSpec([1, height, width, 3], tf.uint8, name="images")
    serve = tf.function(
        lambda images: dict(zip(("images", "shape"), layer(images)[:2])), input_signature=[spec]
    )
    with tflite_tracing():
        concrete = serve.get_concrete_function()
    converter = tf.lite.TFLiteConverter.from_concrete_functions([concrete], tf.Module())
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        flatbuffer = converter.convert()
    assert "RESIZE_BILINEAR" in operator_names(flatbuffer)
    return Interpreter(model_content=flatbuffer).get_signature_runner()


@pytest.mark.parametrize("case", sorted(CASES))
def test_tflite_resize_equals_the_hand_computed_resize(case):
    image, expected, sizes, valid = CASES[case]
    image = np.asarray(image, np.uint8)
    # three channels: the values, their mirror 255 - v, and a constant 9; the padding is 7
    channels = np.stack([image, 255 - image, np.full_like(image, 9)], -1)[None]
    expected = np.asarray(expected, np.float32)
    pad = np.zeros_like(expected, bool)
    pad[valid[0] :, :] = pad[:, valid[1] :] = True
    expected = np.where(
        pad[..., None], 7.0, np.stack([expected, 255.0 - expected, np.full_like(expected, 9.0)], -1)
    )
    layer = ImageResizer(**sizes, pad_value=7.0)
    run = _tflite_resizer(layer, *image.shape)
    got = run(images=channels)
    np.testing.assert_array_equal(got["shape"], [valid])
    np.testing.assert_allclose(got["images"][0], expected, rtol=1e-6, atol=1e-5)
    # the same as TensorFlow's resize in the Keras model
    keras_images = layer(tf.constant(channels))[0].numpy()
    np.testing.assert_allclose(got["images"], keras_images, rtol=1e-6, atol=1e-5)


def test_tflite_resize_of_a_camera_frame_clamps_the_border():
    """240x320 -> 320x426 (torchvision's MobileNetV3 320 sizes): the first and last output rows
    and columns are the input's first and last rows and columns resized along the other axis only
    (source coordinates -0.125 and 239.125 clamped), and the whole image is TensorFlow's resize
    (up to XNNPACK's float rounding of the weights, 0.01 of 255)."""
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (1, 240, 320, 3), dtype=np.uint8)
    layer = ImageResizer(320, 640, 32, rounding="floor")
    got = _tflite_resizer(layer, 240, 320)(images=image)
    np.testing.assert_array_equal(got["shape"], [[320, 426]])
    keras_images = layer(tf.constant(image))[0].numpy()
    np.testing.assert_allclose(got["images"], keras_images, atol=1e-2)
    rows = tf.image.resize(tf.cast(image[:, [0, -1]], tf.float32), (2, 426)).numpy()
    cols = tf.image.resize(tf.cast(image[:, :, [0, -1]], tf.float32), (320, 2)).numpy()
    np.testing.assert_allclose(got["images"][:, [0, 319], :426], rows, atol=1e-2)
    np.testing.assert_allclose(got["images"][:, :320, [0, 425]], cols, atol=1e-2)
