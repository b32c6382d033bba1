"""The written-out torchvision tensor tables against torchvision's own state dicts."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from tfrcnn.weights import torchvision_spec as spec
from tfrcnn.weights.pth import load_state_dict

# name -> [[tensor, shape], ...] of torchvision's models (num_classes=91), written by torch:
# tests/weights/data/torchvision_state_dicts.json
TABLES = os.path.join(os.path.dirname(__file__), "data", "torchvision_state_dicts.json")


@pytest.mark.parametrize("arch", spec.ARCHITECTURES)
def test_expected_tensors_match_torchvision(arch):
    with open(TABLES) as f:
        table = json.load(f)[arch]
    shapes, kinds = spec.expected_tensors(arch, num_classes=91)
    torch_shapes = {k: tuple(s) for k, s in table if not k.endswith(".num_batches_tracked")}
    assert list(shapes) == list(torch_shapes)  # same names, same order
    assert shapes == torch_shapes
    assert set(kinds) == {k.rsplit(".", 1)[0] for k in shapes}


def test_tables_are_torchvisions_current_ones(tmp_path):
    """The stored tables are what the installed torchvision writes (regenerated in a subprocess)."""
    code = (
        "import json, sys\n"
        "from torchvision.models import detection, resnet50, mobilenet_v3_large\n"
        "out = {}\n"
        f"for p in {list(spec.DETECTORS)!r}:\n"
        "    m = getattr(detection, p)(weights=None, weights_backbone=None, num_classes=91)\n"
        "    out[p] = [[k, list(v.shape)] for k, v in m.state_dict().items()]\n"
        "out['resnet50'] = [[k, list(v.shape)] for k, v in resnet50().state_dict().items()]\n"
        "out['mobilenet_v3_large'] = [[k, list(v.shape)] for k, v in "
        "mobilenet_v3_large().state_dict().items()]\n"
        "json.dump(out, open(sys.argv[1], 'w'))\n"
    )
    subprocess.run([sys.executable, "-c", code, str(tmp_path / "t.json")], check=True)
    with open(tmp_path / "t.json") as f, open(TABLES) as g:
        assert json.load(f) == json.load(g)


def test_check_and_convert_a_user_checkpoint(tmp_path):
    """A torchvision model with 5 classes (background + 4): checked, class count read, converted."""
    code = (
        "import sys, torch\n"
        "from torchvision.models import detection\n"
        "torch.manual_seed(0)\n"
        "m = detection.fasterrcnn_mobilenet_v3_large_320_fpn(weights=None, weights_backbone=None,"
        " num_classes=5)\n"
        "torch.save({'model': m.state_dict(), 'epoch': 2}, sys.argv[1])\n"
    )
    path = tmp_path / "user.pth"
    subprocess.run([sys.executable, "-c", code, str(path)], check=True)
    state = load_state_dict(path)
    arch = "fasterrcnn_mobilenet_v3_large_320_fpn"
    assert spec.check_state_dict(state, arch) == 5
    modules = spec.convert_modules(state, arch)
    _, kinds = spec.expected_tensors(arch, 5)
    assert list(modules) == list(kinds)
    w = state["backbone.body.1.block.0.0.weight"]  # depthwise [16, 1, 3, 3]
    np.testing.assert_array_equal(modules["backbone.body.1.block.0.0"][0], w.transpose(2, 3, 0, 1))
    kernel, bias = modules["roi_heads.box_predictor.cls_score"]
    assert kernel.shape == (1024, 5)
    np.testing.assert_array_equal(kernel, state["roi_heads.box_predictor.cls_score.weight"].T)
    kernel, bias = modules["roi_heads.box_predictor.bbox_pred"]
    assert kernel.shape == (1024, 16)  # 4 user classes, no background box
    torch_rows = state["roi_heads.box_predictor.bbox_pred.weight"]
    np.testing.assert_array_equal(kernel[:, :4], torch_rows[[5, 4, 7, 6]].T)  # class 1: dy dx dh dw
    fc6 = modules["roi_heads.box_head.fc6"][0]
    torch_fc6 = state["roi_heads.box_head.fc6.weight"]
    # tfrcnn input (y=1, x=2, c=3) is torch input c * 49 + y * 7 + x
    np.testing.assert_array_equal(fc6[(1 * 7 + 2) * 256 + 3], torch_fc6[:, 3 * 49 + 1 * 7 + 2])

    # errors: one line naming the tensor
    broken = dict(state)
    del broken["backbone.fpn.layer_blocks.1.0.bias"]
    with pytest.raises(
        ValueError,
        match=r"tensor 'backbone.fpn.layer_blocks.1.0.bias' \[256\] is "
        r"missing; is it a torchvision",
    ):
        spec.check_state_dict(broken, arch, "user.pth")
    broken = dict(state)
    broken["rpn.head.cls_logits.bias"] = np.zeros(9, np.float32)
    with pytest.raises(
        ValueError,
        match=r"'rpn.head.cls_logits.bias' has shape \[9\], expected "
        r"\[15\]",
    ):
        spec.check_state_dict(broken, arch, "user.pth")
    with pytest.raises(
        ValueError,
        match=r"is missing \(and \d+ more\); is it a torchvision "
        "fasterrcnn_resnet50_fpn checkpoint",
    ):
        spec.check_state_dict(state, "fasterrcnn_resnet50_fpn", "user.pth")
    broken = dict(state)
    broken["extra.weight"] = np.zeros(3)
    with pytest.raises(ValueError, match="unexpected tensor 'extra.weight' \\[3\\]"):
        spec.check_state_dict(broken, arch, "user.pth")
