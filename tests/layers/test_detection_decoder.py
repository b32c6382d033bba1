"""DetectionDecoder on hand-built cases: scores, classes, order, thresholds, NMS, padding, clipping."""

import keras
import numpy as np
from conftest import global_policy

from tfrcnn.layers.detection_decoder import PADDING_CLASS, DetectionDecoder
from tfrcnn.ops.boxes import decode_boxes


def _logits(probabilities):
    """Logits whose softmax is exactly ``probabilities`` ([..., C + 1], rows summing to 1)."""
    return np.log(np.asarray(probabilities, np.float64)).astype("float32")


def _run(
    layer, logits, rois, valid=None, image_shape=((240, 320),), image_scale=(2.0,), deltas=None
):
    logits = np.asarray(logits, np.float32)
    b, r, c1 = logits.shape
    if deltas is None:
        deltas = np.zeros((b, r, c1 - 1, 4), np.float32)
    if valid is None:
        valid = np.ones((b, r), bool)
    out = layer(
        logits,
        deltas,
        np.asarray(rois, np.float32),
        np.asarray(valid, bool),
        np.asarray(image_shape, np.int32),
        np.asarray(image_scale, np.float32),
    )
    return {k: v.numpy() for k, v in out.items()}


def test_hand_built_case_scores_classes_order_and_padding():
    rois = [[[10, 10, 50, 60], [100, 120, 180, 200]]]
    logits = _logits([[[0.1, 0.6, 0.3], [0.2, 0.02, 0.78]]])
    out = _run(
        DetectionDecoder(num_classes=2, score_threshold=0.05, max_detections=5), logits, rois
    )
    assert out["detection_boxes"].shape == (1, 5, 4)
    # Sorted by score: ROI 1 class 1 (0.78), ROI 0 class 0 (0.6), ROI 0 class 1 (0.3);
    # ROI 1 class 0 (0.02 < 0.05) is dropped. Boxes are ROIs / image_scale.
    np.testing.assert_allclose(out["detection_scores"][0], [0.78, 0.6, 0.3, 0, 0], rtol=1e-5)
    np.testing.assert_array_equal(
        out["detection_classes"][0], [1, 0, 1, PADDING_CLASS, PADDING_CLASS]
    )
    np.testing.assert_allclose(
        out["detection_boxes"][0, :3],
        [[50, 60, 90, 100], [5, 5, 25, 30], [5, 5, 25, 30]],
        rtol=1e-5,
    )
    np.testing.assert_array_equal(out["detection_boxes"][0, 3:], 0.0)
    np.testing.assert_array_equal(out["num_detections"], [3])
    assert out["detection_classes"].dtype == np.int32 and out["num_detections"].dtype == np.int32


def test_score_threshold_drops_a_class():
    rois = [[[10, 10, 50, 60]]]
    logits = _logits([[[0.3, 0.6, 0.1]]])
    out = _run(DetectionDecoder(num_classes=2, score_threshold=0.2, max_detections=3), logits, rois)
    np.testing.assert_array_equal(out["detection_classes"][0], [0, -1, -1])
    np.testing.assert_array_equal(out["num_detections"], [1])
    out = _run(
        DetectionDecoder(num_classes=2, score_threshold=0.05, max_detections=3), logits, rois
    )
    np.testing.assert_array_equal(out["detection_classes"][0], [0, 1, -1])


def test_nms_same_class_keeps_one_different_classes_keep_both():
    rois = [[[10, 10, 50, 50], [12, 10, 52, 50]]]  # IoU 38/42 > 0.5
    same = _logits([[[0.1, 0.9, 1e-6], [0.2, 0.8, 1e-6]]])
    out = _run(DetectionDecoder(num_classes=2, nms_iou=0.5, max_detections=4), same, rois)
    np.testing.assert_array_equal(out["num_detections"], [1])
    np.testing.assert_array_equal(out["detection_classes"][0], [0, -1, -1, -1])
    np.testing.assert_allclose(out["detection_boxes"][0, 0], [5, 5, 25, 25], rtol=1e-5)
    np.testing.assert_allclose(out["detection_scores"][0, 0], 0.9, rtol=1e-5)
    different = _logits([[[0.1, 0.9, 1e-6], [0.2, 1e-6, 0.8]]])
    out = _run(DetectionDecoder(num_classes=2, nms_iou=0.5, max_detections=4), different, rois)
    np.testing.assert_array_equal(out["num_detections"], [2])
    np.testing.assert_array_equal(out["detection_classes"][0], [0, 1, -1, -1])
    np.testing.assert_allclose(
        out["detection_boxes"][0, :2], [[5, 5, 25, 25], [6, 5, 26, 25]], rtol=1e-5
    )


def test_invalid_rois_never_appear():
    rois = [[[10, 10, 50, 50], [100, 100, 150, 150], [0, 0, 0, 0]]]
    logits = _logits([[[0.01, 0.98, 0.01], [0.1, 0.5, 0.4], [0.01, 0.98, 0.01]]])
    valid = [[False, True, False]]
    out = _run(
        DetectionDecoder(num_classes=2, score_threshold=0.0, max_detections=6),
        logits,
        rois,
        valid=valid,
    )
    np.testing.assert_array_equal(out["num_detections"], [2])
    np.testing.assert_allclose(out["detection_scores"][0, :2], [0.5, 0.4], rtol=1e-5)
    np.testing.assert_allclose(out["detection_boxes"][0, :2], [[50, 50, 75, 75]] * 2, rtol=1e-5)
    np.testing.assert_array_equal(out["detection_classes"][0], [0, 1, -1, -1, -1, -1])


def test_boxes_clipped_to_the_original_image():
    # Network input 100 x 80 valid region, scale 0.5: the original image is 200 x 160.
    rois = [[[-20, 40, 130, 95]]]
    out = _run(
        DetectionDecoder(num_classes=1, max_detections=2),
        _logits([[[0.2, 0.8]]]),
        rois,
        image_shape=[[100, 80]],
        image_scale=[0.5],
    )
    np.testing.assert_allclose(out["detection_boxes"][0, 0], [0, 80, 200, 160], rtol=1e-5)


def test_boxes_clipped_to_an_explicit_original_shape():
    # The raw image was 199 x 150 (resizing rounded its size): clip to that, not image_shape / scale.
    layer = DetectionDecoder(num_classes=1, max_detections=2)
    out = layer(
        _logits([[[0.2, 0.8]]]),
        np.zeros((1, 1, 1, 4), np.float32),
        np.array([[[-20, 40, 130, 95]]], np.float32),
        np.ones((1, 1), bool),
        np.array([[100, 80]], np.int32),
        np.array([0.5], np.float32),
        original_shape=np.array([[199, 150]], np.int32),
    )
    np.testing.assert_allclose(out["detection_boxes"].numpy()[0, 0], [0, 80, 199, 150], rtol=1e-5)


def test_deltas_decoded_with_box_weights_batch_of_two_sizes():
    rng = np.random.default_rng(0)
    rois = np.array([[[20, 30, 60, 90]], [[10, 10, 40, 30]]], np.float32)
    deltas = rng.normal(size=(2, 1, 1, 4)).astype("float32")
    logits = _logits([[[0.1, 0.9]], [[0.3, 0.7]]])
    layer = DetectionDecoder(num_classes=1, box_weights=(10, 10, 5, 5), max_detections=2)
    out = _run(
        layer,
        logits,
        rois,
        deltas=deltas,
        image_shape=[[100, 120], [50, 40]],
        image_scale=[2.0, 0.5],
    )
    expected = decode_boxes(deltas[:, 0, 0], rois[:, 0], weights=(10, 10, 5, 5)).numpy()
    expected[0] = np.clip(expected[0], 0, [100, 120, 100, 120]) / 2.0
    expected[1] = np.clip(expected[1], 0, [50, 40, 50, 40]) / 0.5
    np.testing.assert_allclose(out["detection_boxes"][:, 0], expected, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(out["detection_scores"][:, 0], [0.9, 0.7], rtol=1e-5)
    np.testing.assert_array_equal(out["num_detections"], [1, 1])


def test_nothing_valid_gives_all_padding():
    out = _run(
        DetectionDecoder(num_classes=2, max_detections=3),
        _logits([[[0.1, 0.5, 0.4]]]),
        [[[0, 0, 10, 10]]],
        valid=[[False]],
    )
    np.testing.assert_array_equal(out["num_detections"], [0])
    np.testing.assert_array_equal(out["detection_classes"], [[-1, -1, -1]])
    np.testing.assert_array_equal(out["detection_boxes"], 0.0)
    np.testing.assert_array_equal(out["detection_scores"], 0.0)


def test_get_config_round_trip():
    layer = DetectionDecoder(
        num_classes=4,
        box_weights=(1, 2, 3, 4),
        score_threshold=0.3,
        nms_iou=0.4,
        max_detections=17,
        name="dec",
    )
    config = layer.get_config()
    assert config["num_classes"] == 4 and config["box_weights"] == (1.0, 2.0, 3.0, 4.0)
    assert config["score_threshold"] == 0.3 and config["nms_iou"] == 0.4
    assert config["max_detections"] == 17
    assert DetectionDecoder.from_config(config).get_config() == config


def test_keras_round_trip_reproduces_outputs(tmp_path):
    r, c = 4, 2
    inputs = [
        keras.Input((r, c + 1)),
        keras.Input((r, c, 4)),
        keras.Input((r, 4)),
        keras.Input((r,), dtype="bool"),
        keras.Input((2,), dtype="int32"),
        keras.Input(()),
    ]
    out = DetectionDecoder(num_classes=c, max_detections=5, name="dec")(*inputs)
    assert tuple(out["detection_boxes"].shape) == (None, 5, 4)
    assert tuple(out["num_detections"].shape) == (None,)
    model = keras.Model(inputs, out)
    path = str(tmp_path / "dec.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    rng = np.random.default_rng(0)
    corners = rng.uniform(0, 50, size=(2, r, 2)).astype("float32")
    rois = np.concatenate([corners, corners + rng.uniform(5, 30, size=(2, r, 2))], axis=-1).astype(
        "float32"
    )
    x = [
        rng.normal(size=(2, r, c + 1)).astype("float32"),
        0.1 * rng.normal(size=(2, r, c, 4)).astype("float32"),
        rois,
        np.array([[True, True, False, True], [True] * 4]),
        np.array([[80, 70], [60, 90]], np.int32),
        np.array([1.0, 2.0], np.float32),
    ]
    want, got = model(x), loaded(x)
    for key in want:
        np.testing.assert_array_equal(got[key].numpy(), want[key].numpy())
    assert want["num_detections"].numpy().min() > 0


def test_same_detections_under_mixed_bfloat16():
    rois = np.array([[[600.3, 610.7, 650.1, 690.9], [700.3, 720.1, 780.7, 800.3]]], np.float32)
    logits = _logits([[[0.1, 0.6, 0.3], [0.2, 0.02, 0.78]]])
    deltas = 0.1 * np.random.default_rng(0).normal(size=(1, 2, 2, 4)).astype("float32")
    kwargs = dict(deltas=deltas, image_shape=[[900, 1000]], image_scale=[0.3])
    want = _run(DetectionDecoder(num_classes=2, max_detections=4), logits, rois, **kwargs)
    with global_policy("mixed_bfloat16"):
        got = _run(DetectionDecoder(num_classes=2, max_detections=4), logits, rois, **kwargs)
    for key in want:
        assert got[key].dtype == want[key].dtype
        np.testing.assert_array_equal(got[key], want[key])
