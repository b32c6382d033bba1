"""End to end: a seeded random torchvision Faster R-CNN converted by from_torchvision
gives torchvision's detections through model.predict on raw uint8 images, for each preset."""

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
