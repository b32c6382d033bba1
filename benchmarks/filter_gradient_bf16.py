"""The bfloat16 filter gradient of :func:`tfrcnn.accel.conv.conv2d`: shifted matmuls (1x1: one
matmul) run on bfloat16 operands against the same matmuls on operands cast to float32.

    python benchmarks/filter_gradient_bf16.py

Prints, for ResNet-50-FPN convolution shapes, the median milliseconds of both and the largest
difference of the two results relative to the largest entry (the bf16 rounding of ``dW``).
"""

import argparse

import numpy as np

import tfrcnn.accel

tfrcnn.accel.configure_process()  # BFC host allocator and oneDNN, before TensorFlow starts

import tensorflow as tf  # noqa: E402
from _timing import median_ms  # noqa: E402

from tfrcnn.accel.conv import _filter_grad_matmul, _filter_grad_shifted_matmul  # noqa: E402

SHAPES = [  # N, H, W, C, K, kernel size
    (1, 200, 200, 64, 64, 3),
    (1, 100, 100, 128, 128, 3),
    (1, 50, 50, 256, 256, 3),
    (1, 200, 200, 256, 256, 3),
    (2, 100, 100, 256, 256, 3),
    (1, 200, 200, 256, 64, 1),
    (1, 100, 100, 512, 128, 1),
]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    for n, h, w, c, k, size in SHAPES:
        x = tf.cast(tf.random.normal([n, h, w, c]), tf.bfloat16)
        dy = tf.cast(tf.random.normal([n, h, w, k]), tf.bfloat16)
        if size == 1:
            grad = tf.function(_filter_grad_matmul)
        else:
            grad = tf.function(lambda a, b: _filter_grad_shifted_matmul(a, b, 3, 3, "SAME"))
        in_float32 = tf.function(lambda a, b: grad(tf.cast(a, tf.float32), tf.cast(b, tf.float32)))
        exact = in_float32(x, dy).numpy()
        rounded = tf.cast(grad(x, dy), tf.float32).numpy()
        rel = np.abs(rounded - exact).max() / np.abs(exact).max()
        print(
            f"[{n},{h},{w},{c}]->{k} {size}x{size}: float32 matmuls "
            f"{median_ms(in_float32, x, dy, repeats=args.repeats):.1f} ms, bfloat16 matmuls "
            f"{median_ms(grad, x, dy, repeats=args.repeats):.1f} ms, relative difference "
            f"{rel:.1e}",
            flush=True,
        )


if __name__ == "__main__":
    main()
