"""tfrcnn.export.tflite: builtin ops only, fixed input size, equality with Keras, quantizations."""

import os

import keras
import numpy as np
import pytest

from tfrcnn.export import QUANTIZATIONS, operator_names, run_tflite, tflite
from tfrcnn.export.tflite import tflite_ready_model
from tfrcnn.models import FasterRCNN

SIZE = (96, 128)  # the fixed (H, W) of the .tflite input
D = 100


def _image(seed, size=SIZE):
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
    image[20:60, 30:90] = (240, 30, 30)
    return image[None]


@pytest.fixture(scope="module")
def model():
    keras.utils.set_random_seed(0)
    # Random weights and score threshold 0: D = 100 detections; built with roi_method="auto", so
    # the export has to rebuild it with roi_method="gather".
    return FasterRCNN(num_classes=3, detection_score_threshold=0.0)


@pytest.fixture(scope="module")
def float32_report(model, tmp_path_factory):
    path = tmp_path_factory.mktemp("tflite") / "tiny.tflite"
    return tflite(model, path, input_size=SIZE, latency_runs=3)


def _assert_well_formed(out):
    assert out["detection_boxes"].shape == (1, D, 4)
    assert out["detection_boxes_normalized"].shape == (1, D, 4)
    assert out["detection_scores"].shape == (1, D)
    assert out["detection_classes"].shape == (1, D) and out["detection_classes"].dtype == np.int32
    assert out["num_detections"].shape == (1,) and out["num_detections"].dtype == np.int32
    n = int(out["num_detections"][0])
    assert 0 <= n <= D
    assert np.isfinite(out["detection_boxes"]).all() and np.isfinite(out["detection_scores"]).all()
    assert ((out["detection_classes"][0, :n] >= 0) & (out["detection_classes"][0, :n] < 3)).all()
    assert (out["detection_classes"][0, n:] == -1).all()
    np.testing.assert_allclose(
        out["detection_boxes_normalized"] * np.array(SIZE * 2, np.float32),
        out["detection_boxes"],
        rtol=2e-3,
        atol=1e-3,
    )  # fp16 constants


def _match(expected, got, box_tol, score_tol):
    """Every expected detection has an unused detection in ``got`` of the same class with a box
    within ``box_tol`` px and a score within ``score_tol`` (order-insensitive, so near-equal scores
    that swap places still match). Returns the max box and score deviations of the matches."""
    n = int(expected["num_detections"][0])
    assert int(got["num_detections"][0]) == n
    used = np.zeros(n, bool)
    box_dev = score_dev = 0.0
    for i in range(n):
        box_err = np.abs(got["detection_boxes"][0, :n] - expected["detection_boxes"][0, i]).max(-1)
        score_err = np.abs(got["detection_scores"][0, :n] - expected["detection_scores"][0, i])
        ok = (
            (got["detection_classes"][0, :n] == expected["detection_classes"][0, i])
            & (box_err <= box_tol)
            & (score_err <= score_tol)
            & ~used
        )
        assert ok.any(), f"detection {i} of the reference has no match"
        j = int(np.flatnonzero(ok)[np.argmin(box_err[ok])])
        used[j] = True
        box_dev, score_dev = max(box_dev, box_err[j]), max(score_dev, score_err[j])
    return box_dev, score_dev


def test_report_and_builtin_ops_only(float32_report):
    report = float32_report
    assert set(report) >= {"path", "bytes", "operators", "latency_ms"}
    assert os.path.getsize(report["path"]) == report["bytes"] > 1_000_000  # weights are frozen in
    assert sorted(os.listdir(os.path.dirname(report["path"]))) == ["tiny.tflite"]  # no temp file
    ops = report["operators"]
    assert ops == sorted(set(ops)) and ops == operator_names(open(report["path"], "rb").read())
    assert not [op for op in ops if op.startswith("Flex") or op == "CUSTOM"], ops
    # NMS and the gather-based ROI Align are builtins; no resource variables, no CropAndResize.
    for op in ("NON_MAX_SUPPRESSION_V4", "GATHER", "RESIZE_BILINEAR", "CONV_2D"):
        assert op in ops
    assert not {"VAR_HANDLE", "READ_VARIABLE"} & set(ops)
    assert report["latency_ms"] > 0


def test_float32_matches_keras_at_the_fixed_size(model, float32_report):
    assert model.roi_method == "auto"
    assert tflite_ready_model(model).roi_method == "gather"
    for seed in (0, 1):
        image = _image(seed)
        expected = model.predict(image, verbose=0)
        got = run_tflite(float32_report["path"], image)
        _assert_well_formed(got)
        assert int(got["num_detections"][0]) == D
        # Boxes within 1e-3 of the image size, same classes, scores within 1e-3.
        box_dev, score_dev = _match(expected, got, box_tol=1e-3 * max(SIZE), score_tol=1e-3)
        assert box_dev <= 1e-3 * max(SIZE) and score_dev <= 1e-3


def test_float16_dynamic_int8_and_int8_convert_and_run(model, float32_report, tmp_path):
    image = _image(3)
    reference = run_tflite(float32_report["path"], image)
    representative = [_image(seed, (120, 160))[0] for seed in range(4)]
    deviations = {}
    for quantization in ("float16", "dynamic_int8", "int8"):
        report = tflite(
            model,
            tmp_path / f"{quantization}.tflite",
            quantization=quantization,
            input_size=SIZE,
            representative_images=representative,
            latency_runs=2,
        )
        assert report["bytes"] < float32_report["bytes"]
        assert not [op for op in report["operators"] if op.startswith("Flex") or op == "CUSTOM"]
        got = run_tflite(report["path"], image)
        _assert_well_formed(got)
        assert int(got["num_detections"][0]) == D
        # Order-free deviation: the sorted score lists.
        deviations[quantization] = float(
            np.abs(
                np.sort(got["detection_scores"][0]) - np.sort(reference["detection_scores"][0])
            ).max()
        )
    print("sorted-score deviation from float32:", deviations)
    assert deviations["float16"] < 2e-3
    assert deviations["dynamic_int8"] < 0.1
    # int8 keeps the box arithmetic float (INT8_OPS): the detections survive (quantizing RELU /
    # MAXIMUM there too gave 0 detections).
    assert deviations["int8"] < 0.1


def test_bad_arguments(model, tmp_path):
    with pytest.raises(ValueError, match="quantization must be one of"):
        tflite(model, tmp_path / "x.tflite", quantization="int4")
    with pytest.raises(ValueError, match="representative_images"):
        tflite(model, tmp_path / "x.tflite", quantization="int8")
    with pytest.raises(ValueError, match="input_size"):
        tflite(model, tmp_path / "x.tflite", input_size=(0, 10))
    assert QUANTIZATIONS == ("float32", "float16", "dynamic_int8", "int8")
    assert os.listdir(tmp_path) == []
