"""Layout changes checked numerically: torch computes in a subprocess, TF with converted weights."""

import subprocess
import sys
import textwrap

import numpy as np
import tensorflow as tf

from tfrcnn.weights import layout

TORCH = textwrap.dedent(r"""
    import sys
    import numpy as np
    import torch
    import torch.nn.functional as F

    torch.manual_seed(0)
    r = {}
    x = torch.randn(2, 5, 9, 11)
    r["x"] = x.numpy()
    r["conv_w"] = torch.randn(7, 5, 3, 3).numpy(); r["conv_b"] = torch.randn(7).numpy()
    r["conv_y"] = F.conv2d(x, torch.from_numpy(r["conv_w"]), torch.from_numpy(r["conv_b"]),
                           stride=2, padding=1).numpy()
    r["dw_w"] = torch.randn(5, 1, 3, 3).numpy()
    r["dw_y"] = F.conv2d(x, torch.from_numpy(r["dw_w"]), padding=1, groups=5).numpy()
    pooled = torch.randn(4, 5, 3, 2)
    r["pooled"] = pooled.numpy()
    r["fc_w"] = torch.randn(6, 30).numpy(); r["fc_b"] = torch.randn(6).numpy()
    r["fc_y"] = F.linear(pooled.flatten(1), torch.from_numpy(r["fc_w"]), torch.from_numpy(r["fc_b"])).numpy()
    A = 3
    r["cls_w"] = torch.randn(A, 5, 1, 1).numpy(); r["cls_b"] = torch.randn(A).numpy()
    r["cls_y"] = torch.sigmoid(F.conv2d(x, torch.from_numpy(r["cls_w"]), torch.from_numpy(r["cls_b"]))).numpy()
    r["box_w"] = torch.randn(4 * A, 5, 1, 1).numpy(); r["box_b"] = torch.randn(4 * A).numpy()
    r["box_y"] = F.conv2d(x, torch.from_numpy(r["box_w"]), torch.from_numpy(r["box_b"])).numpy()
    h = torch.randn(8, 6)
    r["h"] = h.numpy()
    r["score_w"] = torch.randn(5, 6).numpy(); r["score_b"] = torch.randn(5).numpy()
    r["score_y"] = F.linear(h, torch.from_numpy(r["score_w"]), torch.from_numpy(r["score_b"])).numpy()
    r["reg_w"] = torch.randn(20, 6).numpy(); r["reg_b"] = torch.randn(20).numpy()
    r["reg_y"] = F.linear(h, torch.from_numpy(r["reg_w"]), torch.from_numpy(r["reg_b"])).numpy()
    np.savez(sys.argv[1], **r)
""")


def _nhwc(x):
    return np.transpose(x, (0, 2, 3, 1))


def test_layouts_compute_what_torch_computes(tmp_path):
    subprocess.run([sys.executable, "-c", TORCH, str(tmp_path / "r.npz")], check=True)
    r = np.load(tmp_path / "r.npz")
    x = _nhwc(r["x"])
    # strided conv: torch's symmetric padding 1 == TF explicit padding
    y = tf.nn.conv2d(x, layout.conv_kernel(r["conv_w"]), 2, [[0, 0], [1, 1], [1, 1], [0, 0]])
    np.testing.assert_allclose(y + r["conv_b"], _nhwc(r["conv_y"]), rtol=1e-5, atol=1e-5)
    y = tf.nn.depthwise_conv2d(x, layout.depthwise_kernel(r["dw_w"]), [1, 1, 1, 1], "SAME")
    np.testing.assert_allclose(y, _nhwc(r["dw_y"]), rtol=1e-5, atol=1e-5)
    # fc6 over a channel-last flatten
    flat = _nhwc(r["pooled"]).reshape(4, -1)
    kernel = layout.flatten_dense_kernel(r["fc_w"], channels=5, height=3, width=2)
    np.testing.assert_allclose(flat @ kernel + r["fc_b"], r["fc_y"], rtol=1e-5, atol=1e-5)
    # RPN: softmax over (0, logit) == sigmoid; deltas reordered per anchor
    k, b = layout.rpn_objectness(r["cls_w"], r["cls_b"])
    logits = tf.reshape(tf.nn.conv2d(x, k, 1, "VALID") + b, [2, 9, 11, 3, 2])
    np.testing.assert_allclose(
        tf.nn.softmax(logits)[..., 1], _nhwc(r["cls_y"]), rtol=1e-5, atol=1e-6
    )
    k, b = layout.rpn_deltas(r["box_w"], r["box_b"])
    deltas = (tf.nn.conv2d(x, k, 1, "VALID") + b).numpy().reshape(2, 9, 11, 3, 4)
    expected = _nhwc(r["box_y"]).reshape(2, 9, 11, 3, 4)  # (dx, dy, dw, dh)
    np.testing.assert_allclose(deltas, expected[..., [1, 0, 3, 2]], rtol=1e-5, atol=1e-5)
    # second stage: classes 0..4 in torchvision (0 = background); user classes = rows (3, 1)
    k, b = layout.class_logits(r["score_w"], r["score_b"], rows=(3, 1))
    np.testing.assert_allclose(r["h"] @ k + b, r["score_y"][:, [0, 3, 1]], rtol=1e-5, atol=1e-5)
    k, b = layout.box_deltas(r["reg_w"], r["reg_b"], rows=(3, 1))
    got = (r["h"] @ k + b).reshape(8, 2, 4)
    want = r["reg_y"].reshape(8, 5, 4)[:, [3, 1]][..., [1, 0, 3, 2]]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_layout_errors_name_the_tensor():
    import pytest

    with pytest.raises(ValueError, match="fc6: 30 inputs, but the pooled map is 5 x 3 x 3 = 45"):
        layout.flatten_dense_kernel(np.zeros((6, 30)), 5, 3, 3)
    with pytest.raises(ValueError, match="cls_score: class rows 0..7 asked of a tensor with 5"):
        layout.class_logits(np.zeros((5, 6)), np.zeros(5), rows=(7,))
    with pytest.raises(ValueError, match="depthwise"):
        layout.depthwise_kernel(np.zeros((5, 2, 3, 3)))
