"""End to end: a seeded random torchvision Faster R-CNN converted by from_torchvision
gives torchvision's detections through model.predict on raw uint8 images, for each preset."""

import numpy as np
import pytest

from tfrcnn.weights.torchvision import from_torchvision

from .test_parity_stages import assert_same_detections

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("accelerate", ["auto", False], ids=["accelerated", "plain"])
@pytest.mark.parametrize(
    "arch,preset",
    [
        ("fasterrcnn_resnet50_fpn", "torchvision_resnet50_fpn"),
        ("fasterrcnn_mobilenet_v3_large_fpn", "torchvision_mobilenet_v3_large_fpn"),
        ("fasterrcnn_mobilenet_v3_large_320_fpn", "torchvision_mobilenet_v3_large_320_fpn"),
        ("fasterrcnn_resnet50_fpn_v2", "torchvision_resnet50_fpn_v2"),
    ],
)
def test_predict_equals_torchvision(torchvision_reference, arch, preset, accelerate):
    """Final detections equal with the accelerated CPU paths on and off."""
    npz, pth = torchvision_reference(arch)
    model = from_torchvision(
        pth,
        preset=preset,
        coco_unused="keep",
        accelerate=accelerate,
        image_min_side=int(npz["min_size"]),  # torchvision's min_size / max_size of the reference
        image_max_side=int(npz["max_size"]),
    )
    assert model.num_classes == 90 and model.class_names[11] == "N/A"
    for i in range(int(npz["num_images"])):
        out = model.predict(npz[f"img{i}_image"][None], verbose=0)
        n = int(out["num_detections"][0])
        assert_same_detections(
            out["detection_boxes"][0, :n][:, [1, 0, 3, 2]],
            out["detection_scores"][0, :n],
            out["detection_classes"][0, :n] + 1,
            npz[f"img{i}_boxes"],
            npz[f"img{i}_scores"],
            npz[f"img{i}_labels"],
            f"{preset} image {i}",
            limit=100,
        )


def test_converted_mobilenet_exports_give_the_keras_detections(torchvision_reference, tmp_path):
    """The converted torchvision MobileNetV3 320 model as a SavedModel and as a builtin-only float32
    .tflite, on 240x320 images that both resize to 320x426 inside the graph: the Keras model's
    detections (IoU > 0.99, score within 1e-3, same class). These images give detections in the
    top-left corner whose scores tie exactly (small proposals there pool identical ROI features),
    which the .tflite breaks in index order as TensorFlow does."""
    import tensorflow as tf

    import tfrcnn.export
    from tfrcnn.export import operator_names, run_tflite

    npz, pth = torchvision_reference("fasterrcnn_mobilenet_v3_large_320_fpn")
    model = from_torchvision(pth, preset="torchvision_mobilenet_v3_large_320_fpn")
    assert model.num_classes == 80  # COCO's 80 categories, the 10 unused ids dropped
    serve = tf.saved_model.load(tfrcnn.export.saved_model(model, str(tmp_path / "sm")))
    serve = serve.signatures["serving_default"]
    size = (240, 320)  # resized to 320 x 426 inside the model, padded to 320 x 448
    report = tfrcnn.export.tflite(model, tmp_path / "m.tflite", input_size=size, latency_runs=0)
    ops = operator_names(open(report["path"], "rb").read())
    assert not [op for op in ops if op.startswith("Flex") or op == "CUSTOM"], ops
    runs = []
    for i in range(2):
        image = npz[f"img{i}_image"][None, : size[0], : size[1]]
        runs.append(("SavedModel", i, image, serve(images=tf.constant(image))))
        runs.append(("TFLite", i, image, run_tflite(report["path"], image)))
    for what, i, image, got in runs:
        got = {k: np.asarray(v) for k, v in got.items()}
        expected = model.predict(image, verbose=0)
        n, m = int(expected["num_detections"][0]), int(got["num_detections"][0])
        assert n > 10, "the reference model detects things on its images"
        assert_same_detections(
            got["detection_boxes"][0, :m],
            got["detection_scores"][0, :m],
            got["detection_classes"][0, :m],
            expected["detection_boxes"][0, :n],
            expected["detection_scores"][0, :n],
            expected["detection_classes"][0, :n],
            f"{what} image {i}",
            limit=100,
        )
