"""Parity with torchvision's fasterrcnn_resnet50_fpn (and _v2) backbone + FPN on a seeded random
model: every pyramid level on three images within 1e-4 relative.

The reference (state dict and every stage on three images) comes from
tests/weights/torchvision_reference.py, run once in a subprocess (torch is never imported here).
"""

import numpy as np
import pytest

from tfrcnn.backbones.torchvision_resnet import build_torchvision_resnet50_fpn
from tfrcnn.layers.preprocessing import TORCH_RGB_MEAN, TORCH_RGB_STD
from tfrcnn.weights import torchvision_spec
from tfrcnn.weights.assign import assign_modules
from tfrcnn.weights.pth import load_state_dict

ARCH = "fasterrcnn_resnet50_fpn"
FEATURE_RTOL = 1e-4

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module", params=[ARCH, ARCH + "_v2"])
def reference(request, torchvision_reference):
    npz, pth = torchvision_reference(request.param)
    return request.param, npz, load_state_dict(pth)


def _pixels(transformed):
    """The [0, 255] pixels whose torch normalisation is ``transformed``."""
    return (
        transformed * np.array(TORCH_RGB_STD, np.float32) + np.array(TORCH_RGB_MEAN, np.float32)
    ) * 255.0


def assert_close_relative(actual, expected, rtol, what):
    actual, expected = np.asarray(actual), np.asarray(expected)
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    scale = np.abs(expected).max()
    error = np.abs(actual - expected).max()
    assert error <= rtol * scale, f"{what}: max difference {error:.3g} > {rtol} x {scale:.3g}"


def test_backbone_and_fpn_features(reference):
    arch, npz, state = reference
    modules = torchvision_spec.convert_modules(state, arch)
    model, strides = build_torchvision_resnet50_fpn(v2=arch.endswith("_v2"))
    assigned = assign_modules(model, modules, strip="backbone.body.")
    assigned += assign_modules(model, modules, strip="backbone.fpn.", add="fpn_")
    assert {m for m in modules if m.startswith("backbone.")} == set(assigned)
    levels = [str(level) for level in npz["levels"]]
    assert levels == ["0", "1", "2", "3", "pool"]
    for i in range(int(npz["num_images"])):
        features = model(_pixels(npz[f"img{i}_transformed"]), training=False)
        for level, feature, stride in zip(levels, features, strides):
            expected = npz[f"img{i}_features_{level}"]
            assert_close_relative(
                feature, expected, FEATURE_RTOL, f"{arch} image {i} level {level}"
            )
