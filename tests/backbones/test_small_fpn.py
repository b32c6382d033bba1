"""The small pyramid backbone: strides, channels, odd sizes, freezing, weights file round trip."""

import numpy as np

from tfrcnn.backbones import BACKBONE_STRIDES, backbone_channels, build_backbone


def test_small_fpn_levels_for_odd_sizes():
    model, strides = build_backbone("small_fpn", fpn_channels=64)
    assert strides == (8, 16, 32, 64) == BACKBONE_STRIDES["small_fpn"]
    outs = model(np.zeros((1, 65, 97, 3), "float32"))
    assert [tuple(o.shape) for o in outs] == [
        (1, 9, 13, 64),
        (1, 5, 7, 64),
        (1, 3, 4, 64),
        (1, 2, 2, 64),
    ]
    assert backbone_channels("small_fpn", 64) == (64,) * 4


def test_small_fpn_frozen_and_weights_file(tmp_path):
    frozen, _ = build_backbone("small_fpn", trainable=False)
    assert frozen.trainable_weights == []
    model, _ = build_backbone("small_fpn")
    path = str(tmp_path / "small.weights.h5")
    model.save_weights(path)
    again, _ = build_backbone("small_fpn", weights=path)
    x = np.random.default_rng(0).uniform(0, 255, (1, 64, 64, 3)).astype("float32")
    for a, b in zip(model(x), again(x)):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
