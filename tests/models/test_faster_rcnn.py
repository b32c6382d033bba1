"""FasterRCNN: shapes of the paper's model, every preset, losses, save/load, schemes, learning."""

import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfrcnn import config as presets
from tfrcnn.layers import AnchorGenerator, RPNHead
from tfrcnn.models import FasterRCNN
from tfrcnn.training import train_alternating


def _batch(height=96, width=128, empty=(False, False), seed=0):
    rng = np.random.default_rng(seed)
    batch = len(empty)
    images = rng.uniform(0, 255, (batch, height, width, 3)).astype("float32")
    boxes = np.full((batch, 3, 4), -1.0, "float32")
    classes = np.full((batch, 3), -1, "int32")
    for i, is_empty in enumerate(empty):
        if is_empty:
            continue
        boxes[i, 0] = [10, 12, 50, 60]
        boxes[i, 1] = [30, 40, 90, 120]
        classes[i, :2] = [0, 1]
        images[i, 10:50, 12:60] = 250.0
        images[i, 30:90, 40:120, 1] = 10.0
    return {
        "images": images,
        "image_shape": np.array([[height, width]] * batch, "int32"),
        "gt_boxes": boxes,
        "gt_classes": classes,
    }


def _weights_snapshot(layers):
    """Every weight but BatchNorm statistics (frozen parts have no trainable_weights to list)."""
    return [w.numpy().copy() for layer in layers for w in layer.weights if "moving" not in w.path]


def test_vgg16_shapes_of_the_paper():
    # A 600x800 image: conv5_3 is 38x50, the RPN gives 38x50x18 scores and 38x50x36 deltas,
    # and there are 38 * 50 * 9 = 17,100 anchors.
    model = FasterRCNN.from_preset("vgg16", num_classes=20)
    features = model.backbone_model(np.zeros((1, 600, 800, 3), "float32"))[0]
    assert features.shape == (1, 38, 50, 512)
    scores, deltas = model.rpn_head(features, return_maps=True)
    assert scores.shape == (1, 38, 50, 18) and deltas.shape == (1, 38, 50, 36)
    anchors = model.anchor_generators[0](features)
    assert anchors.shape == (17100, 4)
    assert isinstance(model.roi_layer, keras.layers.Layer) and model.roi_layer.output_size == (7, 7)
    assert model.rcnn_head.units == (4096, 4096)


def test_constructor_arguments_override_the_preset():
    model = FasterRCNN.from_preset("tiny", num_classes=2, test_post_nms_top_n=50, max_detections=7)
    assert model.test_post_nms_top_n == 50 and model.max_detections == 7
    out = model.predict(np.zeros((1, 64, 64, 3), "uint8"), verbose=0)
    assert out["detection_boxes"].shape == (1, 7, 4)
    with pytest.raises(ValueError, match="unknown preset"):
        FasterRCNN.from_preset("nope", num_classes=2)
    with pytest.raises(ValueError, match="training_scheme"):
        FasterRCNN(num_classes=2, training_scheme="joint-ish")
    with pytest.raises(ValueError, match="differentiable"):
        FasterRCNN(num_classes=2, roi_op="roi_pool", training_scheme="non_approximate_joint")


@pytest.mark.slow
@pytest.mark.parametrize("preset", presets.preset_names())
def test_every_preset_fits_and_predicts(preset):
    # Small inputs for the heavy presets (the paper-sized ones resize to 600-800 px otherwise).
    small = dict(image_min_side=128, image_max_side=160)
    if preset == "resnet50_c4":
        small.update(rcnn_batch_size_per_image=64, test_post_nms_top_n=64)
    model = FasterRCNN.from_preset(preset, num_classes=3, **small)
    model.compile(optimizer=keras.optimizers.SGD(1e-4))
    data = _batch(96, 128)
    history = model.fit(tf.data.Dataset.from_tensors(data), epochs=1, verbose=0)
    for term in ("loss", "rpn_cls_loss", "rpn_box_loss", "rcnn_cls_loss", "rcnn_box_loss"):
        assert np.isfinite(history.history[term][0]), term
    out = model.predict(np.random.randint(0, 255, (1, 70, 90, 3), dtype=np.uint8), verbose=0)
    assert out["detection_boxes"].shape == (1, model.max_detections, 4)
    n = int(out["num_detections"][0])
    boxes = out["detection_boxes"][0][:n]
    # boxes are in the raw image's pixels
    assert np.all(boxes[:, [0, 2]] <= 70 + 1e-3) and np.all(boxes[:, [1, 3]] <= 90 + 1e-3)
    assert np.all(out["detection_classes"][0][n:] == -1)


def test_no_ground_truth_gives_finite_loss_and_zero_box_terms():
    model = FasterRCNN(num_classes=3)
    out = model(_batch(empty=(True, True)), training=True)
    model.compute_loss(y_pred=out)
    terms = {k: float(t.result()) for k, t in model.loss_trackers.items()}
    assert terms["rpn_box_loss"] == 0.0 and terms["rcnn_box_loss"] == 0.0
    assert np.isfinite(terms["rpn_cls_loss"]) and terms["rpn_cls_loss"] > 0
    assert np.isfinite(terms["rcnn_cls_loss"]) and terms["rcnn_cls_loss"] > 0
    # every sampled ROI is background
    assert np.all(out["rcnn_labels"].numpy() == 0)


def test_mixed_empty_and_non_empty_batch_trains_and_weights_stay_finite():
    model = FasterRCNN(num_classes=3)
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    ds = tf.data.Dataset.from_tensors(_batch(empty=(True, False))).repeat(3)
    history = model.fit(ds, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    assert all(np.all(np.isfinite(w.numpy())) for w in model.weights)


def test_keras_round_trip_reproduces_outputs_exactly(tmp_path):
    model = FasterRCNN(num_classes=3, class_names=["a", "b", "c"])
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    model.fit(tf.data.Dataset.from_tensors(_batch()).repeat(2), epochs=1, verbose=0)
    images = np.random.default_rng(1).integers(0, 255, (2, 80, 100, 3)).astype("uint8")
    before = model.predict(images, verbose=0)
    path = os.path.join(tmp_path, "model.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    after = loaded.predict(images, verbose=0)
    for key in before:
        np.testing.assert_array_equal(before[key], after[key], err_msg=key)
    assert loaded.class_names == ("a", "b", "c")
    assert loaded.get_config() == model.get_config()


def test_predict_accepts_any_size_and_maps_boxes_back():
    model = FasterRCNN(num_classes=3, detection_score_threshold=0.0)
    for shape in ((50, 70), (300, 200)):
        out = model.predict(np.full((1,) + shape + (3,), 128, "uint8"), verbose=0)
        n = int(out["num_detections"][0])
        assert n > 0
        boxes = out["detection_boxes"][0][:n]
        assert boxes[:, 2].max() <= shape[0] + 1e-3 and boxes[:, 3].max() <= shape[1] + 1e-3
        assert boxes.min() >= 0


def _second_stage_grad(model, data, variable):
    with tf.GradientTape() as tape:
        out = model(data, training=True)
        model.loss_term_weights["rpn_cls_loss"] = 0.0
        model.loss_term_weights["rpn_box_loss"] = 0.0
        loss = model.compute_loss(y_pred=out)
    grad = tape.gradient(loss, variable)
    return np.zeros(variable.shape) if grad is None else grad.numpy()


@pytest.mark.parametrize("roi_op", ["roi_align", "precise_roi_pool"])
def test_non_approximate_joint_training_flows_into_rpn_box_regression(roi_op):
    keras.utils.set_random_seed(3)
    model = FasterRCNN(
        num_classes=3,
        roi_op=roi_op,
        training_scheme="non_approximate_joint",
        add_gt_to_proposals=False,
        rcnn_positive_fraction=0.5,
    )
    grad = _second_stage_grad(model, _batch(), model.rpn_head.box_deltas.kernel)
    assert np.abs(grad).sum() > 0


def test_approximate_joint_training_stops_second_stage_gradient_at_proposals():
    model = FasterRCNN(
        num_classes=3, training_scheme="approximate_joint", add_gt_to_proposals=False
    )
    grad = _second_stage_grad(model, _batch(), model.rpn_head.box_deltas.kernel)
    assert np.all(grad == 0)


def test_alternating_training_freezes_the_right_parts():
    model = FasterRCNN(num_classes=3, training_scheme="alternating")
    ds = tf.data.Dataset.from_tensors(_batch()).repeat()
    parts = {"backbone": [model.backbone_model], "rpn": [model.rpn_head], "head": [model.rcnn_head]}
    expected = [
        (True, True, False),
        (True, False, True),
        (False, True, False),
        (False, False, True),
    ]
    changed = []

    class Recorder(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            self.before = {k: _weights_snapshot(v) for k, v in parts.items()}

        def on_train_end(self, logs=None):
            after = {k: _weights_snapshot(v) for k, v in parts.items()}
            changed.append(
                tuple(
                    any(not np.array_equal(a, b) for a, b in zip(self.before[k], after[k]))
                    for k in ("backbone", "rpn", "head")
                )
            )

    histories = train_alternating(
        model,
        ds,
        epochs_per_stage=(1, 1, 1, 1),
        steps_per_epoch=2,
        callbacks=[Recorder()],
        verbose=0,
        optimizer_factory=lambda: keras.optimizers.Adam(1e-3),
    )
    assert [name for name, _ in histories] == [
        "1_rpn",
        "2_fast_rcnn",
        "3_rpn_finetune",
        "4_fast_rcnn_finetune",
    ]
    assert changed == expected
    # the RPN stages optimise RPN terms only, the detector stages the detector terms only
    assert histories[0][1].history["loss"][0] == pytest.approx(
        histories[0][1].history["rpn_cls_loss"][0] + histories[0][1].history["rpn_box_loss"][0],
        rel=1e-4,
    )
    assert all(layer.trainable for layer in (model.backbone_model, model.rpn_head, model.rcnn_head))


def test_one_epoch_changes_every_part_and_frozen_backbone_stays():
    for trainable in (True, False):
        model = FasterRCNN(num_classes=3, trainable_backbone=trainable)
        backbone = [w.numpy().copy() for w in model.backbone_model.weights]
        rpn = [w.numpy().copy() for w in model.rpn_head.weights]
        head = [w.numpy().copy() for w in model.rcnn_head.weights]
        model.compile(optimizer=keras.optimizers.Adam(1e-3))
        model.fit(tf.data.Dataset.from_tensors(_batch()).repeat(2), epochs=1, verbose=0)
        after_b = [w.numpy() for w in model.backbone_model.weights]
        assert any(not np.array_equal(a, b) for a, b in zip(backbone, after_b)) == trainable
        assert all(np.array_equal(a, b) for a, b in zip(backbone, after_b)) != trainable
        assert any(not np.array_equal(a, b.numpy()) for a, b in zip(rpn, model.rpn_head.weights))
        assert any(not np.array_equal(a, b.numpy()) for a, b in zip(head, model.rcnn_head.weights))


def test_anchor_generator_and_rpn_head_agree_on_order():
    gen = AnchorGenerator(16, (128, 256, 512))
    shapes = gen.anchor_shapes().numpy()
    # aspect ratio outer, scale inner: the first three anchors share ratio 0.5 (h < w)
    assert np.all(shapes[:3, 0] < shapes[:3, 1]) and np.allclose(shapes[3:6, 0], shapes[3:6, 1])
    head = RPNHead(9, 64)
    s, d = head(tf.zeros([1, 5, 7, 32]))
    assert s.shape == (1, 5 * 7 * 9, 2) and d.shape == (1, 5 * 7 * 9, 4)


def test_fast_rcnn_on_external_proposals_trains_and_predicts():
    model = FasterRCNN(
        num_classes=3,
        proposal_source="external",
        num_external_proposals=16,
        detection_score_threshold=0.0,
    )
    data = _batch()
    proposals = np.zeros((2, 16, 4), "float32")
    proposals[:, :3] = [[8, 10, 52, 62], [28, 38, 92, 118], [0, 0, 40, 40]]
    data["proposals"] = proposals
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    history = model.fit(tf.data.Dataset.from_tensors(data).repeat(2), epochs=1, verbose=0)
    assert history.history["rpn_cls_loss"][0] == 0.0 and np.isfinite(history.history["loss"][0])
    out = model.predict({k: data[k] for k in ("images", "image_shape", "proposals")}, verbose=0)
    n = out["num_detections"]
    assert np.all(n > 0)
    # every detection comes from one of the 3 real proposals (zero deltas at init are ~0)
    assert n.max() <= 3 * 3
    with pytest.raises(ValueError, match="external proposals"):
        model.predict(np.zeros((1, 64, 64, 3), "uint8"), verbose=0)


def test_propose_returns_sorted_proposals_in_original_pixels():
    model = FasterRCNN(num_classes=3)
    out = model.propose(np.full((1, 100, 150, 3), 90, "uint8"), max_proposals=50)
    n = int(out["num_proposals"][0])
    assert 0 < n <= 50
    scores = out["proposal_scores"][0].numpy()[:n]
    assert np.all(np.diff(scores) <= 1e-6)
    boxes = out["proposal_boxes"][0].numpy()[:n]
    assert boxes[:, 2].max() <= 100 + 1e-3 and boxes[:, 3].max() <= 150 + 1e-3
