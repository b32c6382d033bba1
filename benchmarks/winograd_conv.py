"""Winograd F(4x4, 3x3) (``tfrcnn.accel.winograd``) against the direct convolution, float32.

    python benchmarks/winograd_conv.py

For the 3x3 stride-1 shapes of ResNet-50-FPN at 800x800 (FPN outputs and the RPN convolution at
strides 4 and 8, backbone stages): median milliseconds of ``tf.nn.conv2d`` (oneDNN), of the
Winograd convolution compiled by XLA and of the same ops without XLA, each in a ``tf.function``,
and the largest difference from the direct convolution relative to the output's largest entry.
"""

import argparse

import numpy as np

import tfrcnn.accel

tfrcnn.accel.configure_process()  # BFC host allocator and oneDNN, before TensorFlow starts

import tensorflow as tf  # noqa: E402
from _timing import median_ms  # noqa: E402

from tfrcnn.accel.winograd import winograd_conv3x3, winograd_conv3x3_xla, winograd_pays_off  # noqa: E402

SHAPES = [  # N, H, W, C, K
    (1, 200, 200, 256, 256),
    (1, 100, 100, 256, 256),
    (1, 50, 50, 256, 256),
    (1, 100, 100, 128, 128),
    (1, 200, 200, 64, 64),
    (1, 25, 25, 512, 512),
    (2, 200, 200, 256, 256),
]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--no-plain", action="store_true", help="skip the variant without XLA")
    args = parser.parse_args()
    direct = tf.function(lambda x, k: tf.nn.conv2d(x, k, 1, "SAME"))
    plain = tf.function(winograd_conv3x3)
    for n, h, w, c, k in SHAPES:
        rng = np.random.default_rng(0)
        x = tf.constant(rng.standard_normal([n, h, w, c]), tf.float32)
        kernel = tf.constant(rng.standard_normal([3, 3, c, k]) / np.sqrt(9 * c), tf.float32)
        reference = direct(x, kernel).numpy()
        diff = np.abs(winograd_conv3x3_xla(x, kernel).numpy() - reference).max()
        row = [
            f"[{n},{h},{w},{c}]->{k}",
            f"{2 * n * h * w * c * k * 9 / 1e9:.1f} GFLOP",
            f"direct {median_ms(direct, x, kernel, repeats=args.repeats):.1f} ms",
            f"winograd+xla {median_ms(winograd_conv3x3_xla, x, kernel, repeats=args.repeats):.1f}"
            " ms",
        ]
        if not args.no_plain:
            row.append(f"winograd plain {median_ms(plain, x, kernel, repeats=args.repeats):.1f} ms")
        row += [
            f"rel. difference {diff / np.abs(reference).max():.1e}",
            f"used by Conv2D: {winograd_pays_off((n, h, w, c), k)}",
        ]
        print(", ".join(row), flush=True)


if __name__ == "__main__":
    main()
