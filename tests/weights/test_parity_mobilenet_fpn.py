"""Parity with torchvision's MobileNetV3-Large FPN backbone (both presets) on a seeded random model:
every pyramid level on three images within 1e-4 relative."""

import pytest

from tfrcnn.backbones.torchvision_mobilenet import build_torchvision_mobilenet_v3_large_fpn
from tfrcnn.weights import torchvision_spec
from tfrcnn.weights.assign import assign_modules
from tfrcnn.weights.pth import load_state_dict

from .test_parity_resnet50_fpn import _pixels
from .test_parity_stages import assert_close_relative

pytestmark = pytest.mark.slow


@pytest.mark.parametrize(
    "arch", ["fasterrcnn_mobilenet_v3_large_fpn", "fasterrcnn_mobilenet_v3_large_320_fpn"]
)
def test_backbone_and_fpn_features(torchvision_reference, arch):
    npz, pth = torchvision_reference(arch)
    modules = torchvision_spec.convert_modules(load_state_dict(pth), arch)
    model, _ = build_torchvision_mobilenet_v3_large_fpn()
    assigned = assign_modules(model, modules, strip="backbone.body.")
    assigned += assign_modules(model, modules, strip="backbone.fpn.", add="fpn_")
    assert {m for m in modules if m.startswith("backbone.")} == set(assigned)
    levels = [str(level) for level in npz["levels"]]
    assert levels == ["0", "1", "pool"]
    for i in range(int(npz["num_images"])):
        features = model(_pixels(npz[f"img{i}_transformed"]), training=False)
        for level, feature in zip(levels, features):
            assert_close_relative(
                feature, npz[f"img{i}_features_{level}"], 1e-4, f"{arch} image {i} level {level}"
            )
