"""Forward + backward of a 2-D convolution: TensorFlow's own gradient vs ``tfrcnn.accel.conv.conv2d``.

For each shape, one ``tf.function`` computes ``y = conv(x, kernel)`` and both gradients
``d(sum(y * upstream)) / d(x, kernel)`` (a fixed random ``upstream``), once with ``tf.nn.conv2d``
(TensorFlow's ``Conv2DBackpropInput`` / ``Conv2DBackpropFilter``) and once with
:func:`tfrcnn.accel.conv.conv2d` (forward convolutions and matmuls, see its module docstring).

Shapes: the stride-1 3x3 convolutions of a ResNet50-FPN at an 800x800 input (stages 2-5 at strides
4-32, the FPN output convolutions at stride 4), the bottleneck 1x1 convolutions, a 1x1 stride-2
projection (where ``conv2d`` keeps TF's kernels) and ROI-head-like batches of small maps (where the
filter gradient falls back to TF's kernel, see ``gradient_plan``).

Protocol: the outputs and gradients of both versions are compared first (max abs difference over
the max magnitude, printed); each function gets one tracing call and --warmup untimed calls, then
--repeats rounds alternate the two versions (the order swaps every round) and the median is
reported. The ratio is tfrcnn / TF (lower is better).

    python benchmarks/conv_gradients.py                 # float32, 5 rounds
    python benchmarks/conv_gradients.py --dtype bfloat16 --repeats 3
"""

import argparse
import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from tfrcnn.accel.conv import conv2d, gradient_plan  # noqa: E402

#: (input [N, H, W, C], kernel size, output channels K, stride, padding, note)
SHAPES = [
    ((1, 200, 200, 64), 3, 64, 1, "SAME", "res2 3x3"),
    ((1, 100, 100, 128), 3, 128, 1, "SAME", "res3 3x3"),
    ((1, 50, 50, 256), 3, 256, 1, "SAME", "res4 3x3"),
    ((1, 25, 25, 512), 3, 512, 1, "SAME", "res5 3x3"),
    ((1, 200, 200, 256), 3, 256, 1, "SAME", "FPN P2 3x3"),
    ((1, 200, 200, 256), 1, 64, 1, "SAME", "res2 1x1 reduce"),
    ((1, 200, 200, 64), 1, 256, 1, "SAME", "res2 1x1 expand"),
    ((1, 100, 100, 512), 1, 128, 1, "SAME", "res3 1x1 reduce"),
    ((1, 50, 50, 1024), 1, 256, 1, "SAME", "res4 1x1 reduce"),
    ((1, 200, 200, 256), 1, 512, 2, "SAME", "res3 projection s2"),
    ((1, 200, 200, 64), 3, 64, 1, "VALID", "VALID 3x3"),
    ((64, 14, 14, 256), 3, 256, 1, "SAME", "ROI head 14x14"),
]


def _function(conv, strides, padding):
    """A tf.function returning the output and both gradients of ``sum(conv(x, w) * upstream)``."""

    @tf.function
    def forward_backward(x, kernel, upstream):
        with tf.GradientTape() as tape:
            tape.watch([x, kernel])
            y = conv(x, kernel, strides, padding)
        dx, dw = tape.gradient(y, [x, kernel], output_gradients=upstream)
        return y, dx, dw

    return forward_backward


def _relative_difference(a, b):
    a, b = tf.cast(a, tf.float32).numpy(), tf.cast(b, tf.float32).numpy()
    return float(np.abs(a - b).max() / max(np.abs(a).max(), 1e-30))


def _timed_call(fn, args):
    start = time.perf_counter()
    outputs = fn(*args)
    for t in outputs:
        t.numpy()
    return (time.perf_counter() - start) * 1e3


def run_shape(shape, kernel_size, filters, strides, padding, dtype, warmup, repeats, seed):
    """Times one configuration; returns a dict of the settings, differences and medians (ms)."""
    rng = np.random.default_rng(seed)
    channels = shape[-1]
    x = tf.cast(rng.standard_normal(shape, np.float32), dtype)
    scale = 1.0 / np.sqrt(kernel_size * kernel_size * channels)
    kernel = tf.cast(
        rng.standard_normal((kernel_size, kernel_size, channels, filters), np.float32) * scale,
        dtype,
    )
    out_shape = tf.nn.conv2d(x, kernel, strides, padding).shape
    upstream = tf.cast(rng.standard_normal(out_shape, np.float32), dtype)
    args = (x, kernel, upstream)
    versions = {
        "tf": _function(tf.nn.conv2d, strides, padding),
        "tfrcnn": _function(conv2d, strides, padding),
    }
    reference, candidate = versions["tf"](*args), versions["tfrcnn"](*args)
    differences = [_relative_difference(a, b) for a, b in zip(reference, candidate)]
    for fn in versions.values():
        for _ in range(warmup):
            _timed_call(fn, args)
    times = {name: [] for name in versions}
    order = list(versions)
    for round_index in range(repeats):
        for name in order if round_index % 2 == 0 else order[::-1]:
            times[name].append(_timed_call(versions[name], args))
    plan = gradient_plan(kernel_size, strides, padding, shape[1:3])
    return {
        "shape": shape,
        "kernel": kernel_size,
        "filters": filters,
        "strides": strides,
        "padding": padding,
        "plan": f"{plan.input_method} / {plan.filter_method}",
        "differences": differences,
        "tf_ms": statistics.median(times["tf"]),
        "tfrcnn_ms": statistics.median(times["tfrcnn"]),
    }


def markdown_table(rows, dtype):
    lines = [
        f"| shape ({dtype}) | conv | note | input / filter grad path | TF fwd+bwd ms | "
        "tfrcnn fwd+bwd ms | ratio | max rel diff (y, dx, dw) |",
        "|---|---|---|---|---:|---:|---:|---|",
    ]
    for row in rows:
        shape = "x".join(str(d) for d in row["shape"])
        conv = (
            f"{row['kernel']}x{row['kernel']} s{row['strides']} {row['padding']} ->{row['filters']}"
        )
        diffs = ", ".join(f"{d:.1e}" for d in row["differences"])
        lines.append(
            f"| {shape} | {conv} | {row['note']} | {row['plan']} | {row['tf_ms']:.1f} | "
            f"{row['tfrcnn_ms']:.1f} | {row['tfrcnn_ms'] / row['tf_ms']:.2f} | {diffs} |"
        )
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument(
        "--threads", type=int, default=os.cpu_count(), help="TensorFlow intra-op threads"
    )
    parser.add_argument("--warmup", type=int, default=2, help="untimed calls of each version")
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds")
    parser.add_argument(
        "--only", type=int, nargs="+", help="indices into SHAPES to run (default: all)"
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    dtype = tf.as_dtype(args.dtype)
    rows = []
    indices = args.only if args.only else range(len(SHAPES))
    for index in indices:
        shape, kernel_size, filters, strides, padding, note = SHAPES[index]
        row = run_shape(
            shape,
            kernel_size,
            filters,
            strides,
            padding,
            dtype,
            args.warmup,
            args.repeats,
            args.seed,
        )
        row["note"] = note
        rows.append(row)
        print(
            f"{note:20s} {str(shape):22s} {kernel_size}x{kernel_size} s{strides} ->{filters}: "
            f"TF {row['tf_ms']:.1f} ms, tfrcnn {row['tfrcnn_ms']:.1f} ms "
            f"({row['tfrcnn_ms'] / row['tf_ms']:.2f}), plan {row['plan']}, "
            f"rel diff {', '.join(f'{d:.1e}' for d in row['differences'])}",
            flush=True,
        )
    print()
    print(markdown_table(rows, args.dtype))


if __name__ == "__main__":
    main()
