"""The ``tfrcnn`` command: a short real training run, evaluate, predict, and user errors."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from tfrcnn.cli import UserError, main, parse_overrides


def test_train_writes_a_complete_run_folder(trained_run):
    for name in (
        "config.json",
        "history.json",
        "history.csv",
        "metrics.json",
        "model.keras",
        os.path.join("checkpoints", "last.keras"),
    ):
        assert os.path.exists(os.path.join(trained_run, name)), name
    config = json.load(open(os.path.join(trained_run, "config.json")))
    assert config["run"]["num_train"] == 16 and config["model"]["preset"] == "tiny"
    history = json.load(open(os.path.join(trained_run, "history.json")))
    for term in (
        "loss",
        "rpn_cls_loss",
        "rpn_box_loss",
        "rcnn_cls_loss",
        "rcnn_box_loss",
        "val_mAP",
    ):
        assert len(history[term]) == 1 and np.isfinite(history[term][0]), term
    metrics = json.load(open(os.path.join(trained_run, "metrics.json")))
    assert 0.0 <= metrics["mAP"] <= 1.0
    assert set(metrics["per_class_ap"]) == {"rectangle", "ellipse", "triangle"}


def test_evaluate_and_predict(trained_run, tmp_path, capsys):
    model = os.path.join(trained_run, "model.keras")
    assert main(["evaluate", model, "--num-val", "8"]) == 0
    assert "mAP@0.5" in capsys.readouterr().out
    image = tmp_path / "shape.png"
    pixels = np.full((120, 150, 3), 30, np.uint8)
    pixels[20:80, 30:110] = (240, 40, 40)
    Image.fromarray(pixels).save(image)
    out = tmp_path / "pred"
    assert (
        main(
            ["predict", str(image), "--model", model, "--out", str(out), "--score-threshold", "0.0"]
        )
        == 0
    )
    drawn = np.asarray(Image.open(out / "shape.png"))
    assert drawn.shape == (120, 150, 3)
    record = json.load(open(out / "shape.json"))
    assert record["image"] == str(image)
    for det in record["detections"]:
        assert det["class_name"] in ("rectangle", "ellipse", "triangle")
        x1, y1, x2, y2 = det["box"]  # the default --box-format xyxy
        assert 0 <= y1 <= y2 <= 120 and 0 <= x1 <= x2 <= 150
    assert record["box_format"] == "xyxy" and (record["height"], record["width"]) == (120, 150)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["predict", "missing.jpg", "--model", "nope.keras"], "image not found: missing.jpg"),
        (["evaluate", "nope.keras"], "model not found: nope.keras"),
        (["train", "--preset", "resnet9000"], "unknown preset 'resnet9000'"),
        (["train", "--set", "epochs"], "bad --set 'epochs'"),
        (["train", "--set", "colour=blue"], "unknown run setting 'colour'"),
        (["train", "--config", "missing.yaml"], "config file not found: missing.yaml"),
    ],
)
def test_user_errors_are_one_line_and_exit_2(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1 and "Traceback" not in err


def test_parse_overrides():
    assert parse_overrides(["epochs=3", "model.head_units=[64,64]", "data=synthetic"]) == {
        "epochs": 3,
        "model": {"head_units": [64, 64]},
        "data": "synthetic",
    }
    with pytest.raises(UserError):
        parse_overrides(["=3"])


def test_console_script_help():
    out = subprocess.run(
        [sys.executable, "-m", "tfrcnn.cli", "train", "--help"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0 and "--preset" in out.stdout and "--set" in out.stdout


def test_export_then_predict_from_saved_model_and_tflite(trained_run, tmp_path):
    model = os.path.join(trained_run, "model.keras")
    image = tmp_path / "img.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (150, 130, 3), dtype=np.uint8)).save(
        image
    )
    keras_out = tmp_path / "k"
    assert (
        main(
            [
                "predict",
                str(image),
                "--model",
                model,
                "--out",
                str(keras_out),
                "--score-threshold",
                "0.0",
            ]
        )
        == 0
    )
    saved = tmp_path / "saved"
    assert main(["export", model, "--format", "saved_model", "--output", str(saved)]) == 0
    assert os.listdir(saved) == ["1"] and (saved / "1" / "saved_model.pb").is_file()
    sm_out = tmp_path / "sm"
    assert (
        main(
            [
                "predict",
                str(image),
                "--model",
                str(saved),
                "--out",
                str(sm_out),
                "--score-threshold",
                "0.0",
            ]
        )
        == 0
    )
    a = json.load(open(keras_out / "img.json"))["detections"]
    b = json.load(open(sm_out / "img.json"))["detections"]
    assert [d["class_name"] for d in a] == [d["class_name"] for d in b]
    for x, y in zip(a, b):
        np.testing.assert_allclose(x["box"], y["box"], atol=0.02)
        assert abs(x["score"] - y["score"]) < 1e-4
    lite = tmp_path / "model.tflite"
    assert (
        main(
            [
                "export",
                model,
                "--format",
                "tflite",
                "--output",
                str(lite),
                "--input-size",
                "192x192",
            ]
        )
        == 0
    )
    lite_out = tmp_path / "lite"
    assert (
        main(
            [
                "predict",
                str(image),
                "--model",
                str(lite),
                "--out",
                str(lite_out),
                "--score-threshold",
                "0.0",
            ]
        )
        == 0
    )
    record = json.load(open(lite_out / "img.json"))
    for det in record["detections"]:
        assert det["class_name"] in ("rectangle", "ellipse", "triangle")
        assert 0 <= det["box"][2] <= 130 + 1e-3 and 0 <= det["box"][3] <= 150 + 1e-3


def test_evaluate_proposals_rpn_and_selective_search(trained_run, tmp_path, capsys):
    model = os.path.join(trained_run, "model.keras")
    png = tmp_path / "recall.png"
    pr = tmp_path / "pr.png"
    assert (
        main(
            [
                "evaluate",
                model,
                "--num-val",
                "4",
                "--proposals",
                "--selective-search",
                "--max-images",
                "2",
                "--plot-recall",
                str(png),
                "--pr-curves",
                str(pr),
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "RPN" in out and "selective search" in out and "COCO" in out
    assert png.stat().st_size > 1000 and pr.stat().st_size > 1000
