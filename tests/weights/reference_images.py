"""The images of the torchvision comparisons (numpy only): imported by
tests/weights/torchvision_reference.py and benchmarks/pretrained_vs_torchvision.py, each with this
folder on ``sys.path``."""

import numpy as np


def make_image(rng, height, width):
    """A uint8 RGB image with structure: smooth colour gradients, rectangles, ellipses and noise."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    image = np.stack(
        [
            127 + 100 * np.sin(xx / rng.uniform(20, 80) + rng.uniform(0, 6)),
            127 + 100 * np.cos(yy / rng.uniform(20, 80) + rng.uniform(0, 6)),
            127 + 100 * np.sin((xx + yy) / rng.uniform(30, 90)),
        ],
        -1,
    )
    for _ in range(12):
        y1, x1 = rng.integers(0, height - 20), rng.integers(0, width - 20)
        h, w = rng.integers(16, height // 2), rng.integers(16, width // 2)
        color = rng.integers(0, 256, 3)
        if rng.random() < 0.5:
            image[y1 : y1 + h, x1 : x1 + w] = color
        else:
            cy, cx = y1 + h / 2, x1 + w / 2
            mask = ((yy - cy) / (h / 2)) ** 2 + ((xx - cx) / (w / 2)) ** 2 <= 1
            image[mask] = color
    image += rng.normal(0, 8, image.shape)
    return np.clip(image, 0, 255).astype(np.uint8)
