"""What the commands write for other tools: evaluate's metrics.json and COCO results (checked with
pycocotools), predict's box formats and COCO JSON, a run's best.keras and its TensorBoard images,
and the SavedModel's TF Serving version folder."""

import contextlib
import glob
import io
import json
import os
import re

import numpy as np
import pytest
from PIL import Image

from tfrcnn.cli import main


def _cocoeval_ap(gt_file, results_file):
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(gt_file))
        evaluator = COCOeval(gt, gt.loadRes(str(results_file)), iouType="bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return evaluator.stats


def test_evaluate_out_matches_the_printed_metrics_and_loads_in_pycocotools(
    trained_run, tmp_path, capsys
):
    out = tmp_path / "eval"
    assert (
        main(
            [
                "evaluate",
                os.path.join(trained_run, "model.keras"),
                "--num-val",
                "8",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    metrics = json.load(open(out / "metrics.json"))
    assert metrics["images"] == 8 and metrics["voc"]["metric"] == "all-point"
    voc_line = re.search(r"VOC mAP@0.5 \(all-point\): ([0-9.]+)", printed)[1]
    assert voc_line == f"{metrics['voc']['mAP']:.4f}"
    coco_line = re.search(r"COCO: (.*)", printed)[1]
    assert coco_line == ", ".join(
        f"{k} {metrics['coco'][k]:.4f}"
        for k in ("AP", "AP50", "AP75", "AP_small", "AP_medium", "AP_large", "AR100")
    )
    for name in ("rectangle", "ellipse", "triangle"):
        row = re.search(rf"{name} +([0-9.nan]+) +([0-9.nan]+) +([0-9.nan]+)", printed)
        assert row[1] == f"{metrics['voc']['per_class'][name]:.4f}"
        assert row[3] == f"{metrics['coco']['per_class'][name]['AP']:.4f}"
    results = json.load(open(out / "coco_results.json"))
    assert results, "the model returned no detection to check"
    for det in results:
        assert set(det) == {"image_id", "category_id", "bbox", "score"} and len(det["bbox"]) == 4
        assert det["bbox"][2] >= 0 and det["bbox"][3] >= 0
    stats = _cocoeval_ap(out / "coco_ground_truth.json", out / "coco_results.json")
    assert stats[0] == pytest.approx(metrics["coco"]["AP"], abs=1e-12)
    assert stats[1] == pytest.approx(metrics["coco"]["AP50"], abs=1e-12)


def test_evaluate_on_coco_data_keeps_its_image_and_category_ids(trained_run, shapes_voc, tmp_path):
    """The results use the annotation file's own ids, so pycocotools scores them against the
    user's file and gets evaluate's AP."""
    root, _ = shapes_voc
    gt_file = tmp_path / "test.json"
    assert (
        main(
            [
                "convert",
                "--source",
                root,
                "--split",
                "test",
                "--to",
                "coco",
                "--output",
                str(gt_file),
            ]
        )
        == 0
    )
    data = json.load(open(gt_file))
    for image in data["images"]:
        image["id"] += 100
    for ann in data["annotations"]:
        ann["image_id"] += 100
        ann["category_id"] *= 10
    for cat in data["categories"]:
        cat["id"] *= 10
    gt_file.write_text(json.dumps(data))
    out = tmp_path / "eval"
    assert (
        main(
            [
                "evaluate",
                os.path.join(trained_run, "model.keras"),
                "--data-path",
                str(gt_file),
                "--image-dir",
                os.path.join(root, "JPEGImages"),
                "--out",
                str(out),
            ]
        )
        == 0
    )
    results = json.load(open(out / "coco_results.json"))
    assert results and {d["image_id"] for d in results} <= {101, 102, 103, 104}
    assert {d["category_id"] for d in results} <= {10, 20, 30}
    metrics = json.load(open(out / "metrics.json"))
    stats = _cocoeval_ap(gt_file, out / "coco_results.json")
    assert stats[0] == pytest.approx(metrics["coco"]["AP"], abs=1e-12)


def test_predict_box_formats_and_coco_json(trained_run, tmp_path):
    from pycocotools.coco import COCO

    image = tmp_path / "shapes.png"
    pixels = np.full((140, 170, 3), 40, np.uint8)
    pixels[30:90, 20:120] = (230, 60, 60)
    Image.fromarray(pixels).save(image)
    model = os.path.join(trained_run, "model.keras")
    boxes = {}
    for fmt in ("xyxy", "xywh", "yxyx"):
        out = tmp_path / fmt
        argv = [
            "predict",
            str(image),
            "--model",
            model,
            "--out",
            str(out),
            "--score-threshold",
            "0.0",
            "--box-format",
            fmt,
        ]
        if fmt == "xyxy":
            argv += ["--coco-json", str(tmp_path / "pred.json")]
        assert main(argv) == 0
        record = json.load(open(out / "shapes.json"))
        assert record["box_format"] == fmt
        boxes[fmt] = np.array([d["box"] for d in record["detections"]]).reshape(-1, 4)
    assert len(boxes["xyxy"]) > 0
    x1, y1, x2, y2 = boxes["xyxy"].T
    np.testing.assert_allclose(boxes["yxyx"], np.stack([y1, x1, y2, x2], 1), atol=0.011)
    np.testing.assert_allclose(boxes["xywh"], np.stack([x1, y1, x2 - x1, y2 - y1], 1), atol=0.021)
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO(str(tmp_path / "pred.json"))
    anns = coco.loadAnns(coco.getAnnIds(imgIds=[1]))
    assert coco.imgs[1]["file_name"] == "shapes.png" and coco.imgs[1]["height"] == 140
    assert len(anns) == len(boxes["xywh"])
    np.testing.assert_allclose([a["bbox"] for a in anns], boxes["xywh"], atol=0.011)
    assert {c["name"] for c in coco.cats.values()} == {"rectangle", "ellipse", "triangle"}


def test_run_keeps_best_keras_and_tensorboard_detection_images(trained_run):
    import tensorflow as tf

    best = os.path.join(trained_run, "checkpoints", "best.keras")
    state = json.load(open(best + ".json"))
    history = json.load(open(os.path.join(trained_run, "history.json")))
    assert state == {"val_mAP": pytest.approx(history["val_mAP"][0]), "epoch": 1}
    assert os.path.isfile(best) and os.path.isfile(
        os.path.join(trained_run, "checkpoints", "last.keras")
    )
    events = glob.glob(os.path.join(trained_run, "logs", "images", "events.out.tfevents.*"))
    assert len(events) == 1
    pictures = []
    for event in tf.compat.v1.train.summary_iterator(events[0]):
        for value in event.summary.value:
            if value.tag == "validation_detections":
                assert event.step == 1
                pictures = tf.make_ndarray(value.tensor)
    assert len(pictures) == 2 + 3  # width, height, then 3 PNG images
    assert (int(pictures[0]), int(pictures[1])) == (192, 192)
    decoded = np.asarray(Image.open(io.BytesIO(pictures[2])))
    assert decoded.shape == (192, 192, 3)


def test_best_checkpoint_saves_only_improvements_and_remembers_them(tmp_path):
    import keras

    from tfrcnn.training.callbacks import BestCheckpoint

    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    path = str(tmp_path / "best.keras")
    callback = BestCheckpoint(path)
    callback.set_model(model)
    saved = []
    for epoch, value in enumerate([0.1, 0.3, 0.3, float("nan"), 0.2, 0.5]):
        model.layers[0].kernel.assign(np.full((2, 1), epoch, np.float32))
        callback.on_epoch_end(epoch, {"val_mAP": value})
        saved.append(json.load(open(path + ".json"))["epoch"])
    assert saved == [1, 2, 2, 2, 2, 6]
    assert float(keras.models.load_model(path).layers[0].kernel.numpy()[0, 0]) == 5.0
    again = BestCheckpoint(path)  # a resumed run: only a value above 0.5 replaces it
    again.set_model(model)
    again.on_epoch_end(6, {"val_mAP": 0.4})
    assert json.load(open(path + ".json")) == {"val_mAP": 0.5, "epoch": 6}
    assert os.listdir(tmp_path) == ["best.keras", "best.keras.json"] or sorted(
        os.listdir(tmp_path)
    ) == ["best.keras", "best.keras.json"]


def test_saved_model_version_folders(trained_run, tmp_path):
    from tfrcnn.export.saved_model import find_saved_model

    model = os.path.join(trained_run, "model.keras")
    base = tmp_path / "served"
    assert main(["export", model, "--output", str(base)]) == 0
    assert main(["export", model, "--output", str(base), "--version", "7"]) == 0
    assert sorted(os.listdir(base)) == ["1", "7"]
    assert find_saved_model(str(base)) == str(base / "7")
    assert find_saved_model(str(base / "1")) == str(base / "1")
    with pytest.raises(FileNotFoundError, match="holds no SavedModel"):
        find_saved_model(str(tmp_path))


def _serving_request_template():
    """The serve_encoded request body shown in docs/serving.md (the JSON block after its marker)."""
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    with open(os.path.join(root, "docs", "serving.md")) as f:
        text = f.read()
    block = text.split("<!-- serve_encoded request body -->", 1)[1]
    return block.split("```json", 1)[1].split("```", 1)[0].strip()


def _decode_instances(body):
    """TF Serving's row format for a one-input signature: each instance is the input's value;
    ``{"b64": text}`` is binary data."""
    import base64

    return [base64.b64decode(v["b64"]) if isinstance(v, dict) else v for v in body["instances"]]


def test_the_documented_rest_request_runs_through_serve_encoded(trained_run, tmp_path):
    import base64

    import tensorflow as tf

    model = os.path.join(trained_run, "model.keras")
    assert main(["export", model, "--output", str(tmp_path / "served")]) == 0
    image = tmp_path / "img.png"
    pixels = np.random.default_rng(1).integers(0, 255, (120, 160, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(image)
    body = json.loads(
        _serving_request_template().replace(
            "BASE64_IMAGE", base64.b64encode(image.read_bytes()).decode("ascii")
        )
    )
    assert body["signature_name"] == "serve_encoded"
    loaded = tf.saved_model.load(str(tmp_path / "served" / "1"))
    signature = loaded.signatures[body["signature_name"]]
    (name,) = signature.structured_input_signature[1]
    assert name == "encoded_images"
    served = signature(**{name: tf.constant(_decode_instances(body))})
    direct = loaded.signatures["serving_default"](images=tf.constant(pixels[None]))
    n = int(served["num_detections"][0])
    assert n == int(direct["num_detections"][0])
    np.testing.assert_allclose(
        served["detection_boxes"][0, :n], direct["detection_boxes"][0, :n], atol=1e-3
    )
    np.testing.assert_allclose(
        served["detection_scores"][0, :n], direct["detection_scores"][0, :n], atol=1e-5
    )
