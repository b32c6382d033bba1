"""accel.apply on backbones and on FasterRCNN: the accelerated model computes what the plain one
computes (inference, a compiled backbone, training gradients, the SavedModel), and the
``accelerate`` setting is saved and checked.

Tolerances: feature maps within 1e-4 of their scale; detection scores within 1e-4, boxes within
1e-2 pixel (float32 rounding of different summation orders).
"""

import numpy as np
import pytest
import tensorflow as tf

from tfrcnn import accel
from tfrcnn.backbones import build_backbone
from tfrcnn.export import saved_model
from tfrcnn.models import FasterRCNN


def _close(got, want, scale=1e-4):
    want = np.asarray(want)
    np.testing.assert_allclose(
        np.asarray(got), want, rtol=scale, atol=scale * max(np.abs(want).max(), 1.0)
    )


def _backbones(name="tiny"):
    plain, _ = build_backbone(name)
    fast, _ = build_backbone(name)
    fast.set_weights(plain.get_weights())
    return plain, accel.apply(fast)


@pytest.mark.parametrize("name", ["tiny", "small_fpn"])
def test_backbone_inference_and_gradients_equal_the_plain_backbone(name):
    """Inference eager, in a tf.function and in another input size; a tape's gradients."""
    plain, fast = _backbones(name)
    images = tf.constant(np.random.default_rng(0).uniform(0, 255, (2, 72, 104, 3)), tf.float32)
    for call in (lambda m, x: m(x, training=False), tf.function(lambda m, x: m(x, training=False))):
        for got, want in zip(call(fast, images), call(plain, images)):
            _close(got, want)
    other = tf.zeros([1, 40, 40, 3])
    for got, want in zip(fast(other, training=False), plain(other, training=False)):
        _close(got, want)

    def gradients(model):
        with tf.GradientTape() as tape:
            loss = sum(tf.reduce_sum(tf.sin(f)) for f in model(images, training=False))
        return tape.gradient(loss, model.trainable_variables)

    for got, want in zip(gradients(fast), gradients(plain)):
        _close(got, want, 1e-3)


def test_disabled_block_computes_the_plain_backbone():
    plain, fast = _backbones()
    images = tf.random.uniform([1, 64, 64, 3], 0, 255, seed=1)
    with accel.disabled():
        got = tf.function(lambda x: fast(x, training=False))(images)
    _close(got[0], plain(images, training=False)[0], 1e-6)


def _tiny_pair(**settings):
    plain = FasterRCNN.from_preset("tiny", num_classes=3, accelerate=False, **settings)
    fast = FasterRCNN.from_preset("tiny", num_classes=3, **settings)
    fast.set_weights(plain.get_weights())
    return plain, fast


def _assert_same_detections(got, want):
    np.testing.assert_array_equal(got["num_detections"], want["num_detections"])
    for i, n in enumerate(want["num_detections"]):
        _close(got["detection_scores"][i, :n], want["detection_scores"][i, :n])
        np.testing.assert_allclose(
            got["detection_boxes"][i, :n], want["detection_boxes"][i, :n], atol=1e-2
        )
        np.testing.assert_array_equal(
            got["detection_classes"][i, :n], want["detection_classes"][i, :n]
        )


def test_faster_rcnn_predictions_and_training_gradients_equal_the_plain_model():
    plain, fast = _tiny_pair(detection_score_threshold=0.0)
    images = np.random.default_rng(1).integers(0, 255, (2, 120, 160, 3)).astype("uint8")
    _assert_same_detections(fast.predict(images, verbose=0), plain.predict(images, verbose=0))
    batch = {
        "images": tf.constant(images, tf.float32),
        "gt_boxes": tf.constant([[[10, 20, 60, 90]], [[30, 30, 100, 150]]], tf.float32),
        "gt_classes": tf.constant([[1], [2]], tf.int32),
    }

    def gradients(model):
        keras_seed = 7
        tf.random.set_seed(keras_seed)
        with tf.GradientTape() as tape:
            outputs = model(batch, training=True)
            loss = model.compute_loss(batch, None, outputs)
        return loss, tape.gradient(loss, model.trainable_variables)

    (loss_fast, got), (loss_plain, want) = gradients(fast), gradients(plain)
    _close(loss_fast, loss_plain, 1e-4)
    for g, w in zip(got, want):
        _close(g, w, 1e-3)


def test_accelerate_setting_config_and_errors():
    plain, fast = _tiny_pair()
    assert fast.get_config()["accelerate"] == "auto"
    assert plain.get_config()["accelerate"] is False
    assert FasterRCNN.from_config(plain.get_config()).accelerate is False
    # a configuration written with the setting's earlier name loads
    old = {k: v for k, v in plain.get_config().items() if k != "accelerate"}
    assert FasterRCNN.from_config({**old, "xla": False}).accelerate is False
    assert FasterRCNN.from_config({**old, "xla": "auto"}).accelerate == "auto"
    for bad in ("yes", True, 1.5):
        with pytest.raises(ValueError, match="accelerate must be 'auto' or False"):
            FasterRCNN.from_preset("tiny", num_classes=2, accelerate=bad)


def test_keras_file_round_trip_keeps_the_setting_and_outputs(tmp_path):
    plain, fast = _tiny_pair(detection_score_threshold=0.0)
    path = str(tmp_path / "fast.keras")
    fast.save(path)
    import tfrcnn

    loaded = tfrcnn.load_model(path)
    assert loaded.accelerate == "auto"
    images = np.random.default_rng(4).integers(0, 255, (1, 96, 128, 3)).astype("uint8")
    _assert_same_detections(loaded.predict(images, verbose=0), plain.predict(images, verbose=0))


def test_saved_model_runs_the_accelerated_model_with_its_detections(tmp_path):
    """The SavedModel is traced with the acceleration on and serves the same detections."""
    plain, fast = _tiny_pair(detection_score_threshold=0.0)
    path = saved_model(fast, tmp_path / "sm")
    loaded = tf.saved_model.load(path)
    image = np.random.default_rng(2).integers(0, 255, (1, 96, 128, 3)).astype("uint8")
    served = {
        k: v.numpy()
        for k, v in loaded.signatures["serving_default"](images=tf.constant(image)).items()
    }
    _assert_same_detections(served, plain.predict(image, verbose=0))


def test_fpn_training_loss_and_gradients_equal_the_plain_model():
    """A pyramid model (multilevel ROI Align, whose accelerated feature gradient adds its terms in
    place, and Winograd convolutions in the pyramid and RPN head, whose two gradients run one
    after the other): the training loss and every gradient equal the plain model's."""
    settings = dict(train_pre_nms_top_n=300, train_post_nms_top_n=64, rcnn_batch_size_per_image=32)
    plain = FasterRCNN.from_preset("small_fpn", num_classes=3, accelerate=False, **settings)
    fast = FasterRCNN.from_preset("small_fpn", num_classes=3, **settings)
    fast.set_weights(plain.get_weights())
    images = np.random.default_rng(2).uniform(0, 255, (2, 160, 224, 3)).astype("float32")
    batch = {
        "images": tf.constant(images),
        "gt_boxes": tf.constant(
            [[[10, 20, 90, 120], [40, 100, 150, 200]], [[30, 30, 100, 150], [-1, -1, -1, -1]]],
            tf.float32,
        ),
        "gt_classes": tf.constant([[1, 0], [2, -1]], tf.int32),
    }

    @tf.function
    def gradients(model):
        tf.random.set_seed(7)
        with tf.GradientTape() as tape:
            outputs = model(batch, training=True)
            loss = model.compute_loss(batch, None, outputs)
        return loss, tape.gradient(loss, model.trainable_variables)

    (loss_fast, got), (loss_plain, want) = gradients(fast), gradients(plain)
    _close(loss_fast, loss_plain, 1e-4)
    assert max(float(tf.reduce_max(tf.abs(w))) for w in want) > 1e-3
    for g, w in zip(got, want):
        _close(g, w, 1e-3)
