"""The SavedModel of the paper's VGG16 preset and of the MobileNetV3-FPN preset gives the Keras
model's detections (random initialisation, small input sides to keep the test short)."""

import numpy as np
import pytest
import tensorflow as tf

import tfrcnn.export
from tfrcnn.models import FasterRCNN

SIZES = ((97, 130), (128, 128), (150, 90))


@pytest.mark.slow
@pytest.mark.parametrize("preset", ["vgg16", "mobilenet_v3_fpn"])
def test_preset_saved_model_equals_keras(preset, tmp_path):
    model = FasterRCNN.from_preset(
        preset, num_classes=3, image_min_side=128, image_max_side=160, class_names=["a", "b", "c"]
    )
    path = tfrcnn.export.saved_model(model, str(tmp_path / preset))
    serve = tf.saved_model.load(path).signatures["serving_default"]
    rng = np.random.default_rng(0)
    for height, width in SIZES:
        images = rng.integers(0, 255, (1, height, width, 3), dtype=np.uint8)
        expected = model.predict(images, verbose=0)
        got = {k: v.numpy() for k, v in serve(images=tf.constant(images)).items()}
        np.testing.assert_array_equal(got["num_detections"], expected["num_detections"])
        np.testing.assert_array_equal(got["detection_classes"], expected["detection_classes"])
        np.testing.assert_allclose(got["detection_boxes"], expected["detection_boxes"], atol=1e-3)
        np.testing.assert_allclose(got["detection_scores"], expected["detection_scores"], atol=1e-5)
