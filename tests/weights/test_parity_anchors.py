"""torchvision's anchors (rounded base anchors, centres at j * stride, stride = padded size // grid)
against the anchors torchvision generated for the reference images of the mobilenet preset."""

import numpy as np
import pytest

from tfrcnn.ops.anchors import generate_anchors_from_image_size, rounded_anchor_corners


def test_rounded_corners_hand_computed():
    # size 32, ratio 0.5: h = 32 * sqrt(0.5) = 22.63 -> 11.31 -> 11; w = 45.25 -> 22.63 -> 23
    np.testing.assert_array_equal(rounded_anchor_corners([32.0], [0.5]), [[-11, -23, 11, 23]])
    # size 64, ratio 2: h/2 = 45.25 -> 45, w/2 = 22.63 -> 23
    np.testing.assert_array_equal(rounded_anchor_corners([64.0], [2.0]), [[-45, -23, 45, 23]])


def test_stride_from_padded_size():
    a = generate_anchors_from_image_size((13, 17), (800, 1088), [512.0], [1.0]).numpy()
    # stride y = 800 // 13 = 61, stride x = 1088 // 17 = 64; centre of (1, 2) = (61, 128)
    np.testing.assert_array_equal(a[1 * 17 + 2], [61 - 256, 128 - 256, 61 + 256, 128 + 256])


@pytest.mark.slow
def test_anchors_equal_torchvisions(torchvision_reference):
    npz, _ = torchvision_reference("fasterrcnn_mobilenet_v3_large_320_fpn")
    scales = (32.0, 64.0, 128.0, 256.0, 512.0)
    for i in range(int(npz["num_images"])):
        image_size = npz[f"img{i}_transformed"].shape[1:3]
        levels = []
        for level in npz["levels"]:
            grid = npz[f"img{i}_objectness_{level}"].shape[1:3]
            levels.append(
                generate_anchors_from_image_size(grid, image_size, scales, (0.5, 1.0, 2.0))
            )
        yxyx = np.concatenate(levels)
        np.testing.assert_array_equal(yxyx[:, [1, 0, 3, 2]], npz[f"img{i}_anchors"])
