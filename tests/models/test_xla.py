"""XLA for the backbone at inference: `BackboneModel.jit_inference`, `FasterRCNN(xla=...)`, and
exports that never carry an XLA cluster."""

import numpy as np
import pytest
import tensorflow as tf

from tfrcnn.backbones import build_backbone
from tfrcnn.backbones.common import xla_disabled
from tfrcnn.export import saved_model
from tfrcnn.models import FasterRCNN
from tfrcnn.models.faster_rcnn import XLA_BACKBONES


def _xla_functions(concrete):
    """Names of the functions in `concrete`'s library that XLA must compile."""
    names = []
    for function in concrete.graph.as_graph_def().library.function:
        attr = function.attr.get("_XlaMustCompile")
        if attr is not None and attr.b:
            names.append(function.signature.name)
    return names


def _tiny_backbone(jit):
    model, _ = build_backbone("tiny")
    model.jit_inference = jit
    return model


def test_backbone_xla_inference_matches_plain_graph_and_is_compiled():
    model = _tiny_backbone(True)
    images = tf.constant(np.random.default_rng(0).uniform(0, 255, (2, 72, 104, 3)), tf.float32)
    compiled_fn = tf.function(lambda x: model(x, training=False))
    compiled = compiled_fn(images)[0].numpy()
    model.jit_inference = False
    plain_fn = tf.function(lambda x: model(x, training=False))
    plain = plain_fn(images)[0].numpy()
    assert compiled.shape == plain.shape == (2, 9, 13, plain.shape[-1])  # stride 8
    np.testing.assert_allclose(compiled, plain, rtol=1e-4, atol=1e-4 * np.abs(plain).max())
    model.jit_inference = True
    assert _xla_functions(compiled_fn.get_concrete_function(images)), "no XLA cluster traced"
    assert not _xla_functions(plain_fn.get_concrete_function(images))
    # eager calls take the compiled path too, and another input size compiles again
    other = model(tf.zeros([1, 40, 40, 3]), training=False)[0]
    assert other.shape[1:3] == (5, 5)


def test_backbone_never_compiles_training_taped_or_disabled_calls():
    model = _tiny_backbone(True)
    images = tf.random.uniform([1, 64, 64, 3], 0, 255)

    def taped(x):
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(model(x, training=False)[0])
        return tape.gradient(loss, model.trainable_variables[0])

    for fn in (lambda x: model(x, training=True), taped):
        assert not _xla_functions(tf.function(fn).get_concrete_function(images))
    with xla_disabled():
        assert not _xla_functions(
            tf.function(lambda x: model(x, training=False)).get_concrete_function(images))
    # the gradient through the un-compiled call is the plain one
    gradient = tf.function(taped)(images)
    model.jit_inference = False
    np.testing.assert_allclose(gradient.numpy(), tf.function(taped)(images).numpy(), rtol=1e-5,
                               atol=1e-6)


def test_xla_setting_auto_resolution_config_and_errors():
    assert set(XLA_BACKBONES) == {"resnet50_fpn", "resnet50_c4"}
    assert FasterRCNN.from_preset("tiny", num_classes=2).uses_xla is False
    assert FasterRCNN.from_preset("tiny", num_classes=2, xla=True).uses_xla is True
    resnet = FasterRCNN.from_preset("resnet50_fpn", num_classes=2)
    assert resnet.xla == "auto" and resnet.uses_xla and resnet.backbone_model.jit_inference
    assert not FasterRCNN.from_preset("resnet50_fpn", num_classes=2, xla=False).uses_xla
    # bf16 compute: XLA's CPU convolutions lose to oneDNN's bf16 kernels, so "auto" is off
    assert not FasterRCNN.from_preset("resnet50_fpn", num_classes=2,
                                      dtype="mixed_bfloat16").uses_xla
    config = FasterRCNN.from_preset("tiny", num_classes=2, xla=True).get_config()
    assert config["xla"] is True
    assert FasterRCNN.from_config(config).backbone_model.jit_inference is True
    for bad in ("yes", 1.5, "false"):
        with pytest.raises(ValueError, match="xla must be 'auto', True or False"):
            FasterRCNN.from_preset("tiny", num_classes=2, xla=bad)


def test_faster_rcnn_predictions_with_and_without_xla_agree():
    plain = FasterRCNN.from_preset("tiny", num_classes=3, xla=False)
    compiled = FasterRCNN.from_preset("tiny", num_classes=3, xla=True)
    compiled.set_weights(plain.get_weights())
    images = np.random.default_rng(1).integers(0, 255, (2, 120, 160, 3)).astype("uint8")
    a = plain.predict(images, verbose=0)
    b = compiled.predict(images, verbose=0)
    np.testing.assert_array_equal(a["num_detections"], b["num_detections"])
    for i, n in enumerate(a["num_detections"]):
        np.testing.assert_allclose(b["detection_scores"][i, :n], a["detection_scores"][i, :n],
                                   atol=1e-4)
        np.testing.assert_allclose(b["detection_boxes"][i, :n], a["detection_boxes"][i, :n],
                                   atol=1e-2)


def test_saved_model_of_an_xla_model_has_no_xla_cluster(tmp_path):
    model = FasterRCNN.from_preset("tiny", num_classes=2, xla=True)
    path = saved_model(model, tmp_path / "sm")
    with open(path + "/saved_model.pb", "rb") as f:
        assert b"_XlaMustCompile" not in f.read()
    loaded = tf.saved_model.load(path)
    image = np.random.default_rng(2).integers(0, 255, (1, 96, 128, 3)).astype("uint8")
    served = loaded.signatures["serving_default"](images=tf.constant(image))
    direct = model.predict(image, verbose=0)
    np.testing.assert_allclose(served["detection_scores"].numpy(), direct["detection_scores"],
                               atol=1e-4)
    # the export left the model's own setting alone: its inference calls still compile
    assert model.backbone_model.jit_inference
    concrete = tf.function(lambda x: model(x, training=False)).get_concrete_function(
        tf.TensorSpec([1, 96, 128, 3], tf.float32))
    assert _xla_functions(concrete)
