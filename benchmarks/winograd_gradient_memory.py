"""Memory and time of the two Winograd gradients of a large map: one XLA computation against one
XLA call a band of tile rows (what training uses).

For a ``[N, H, W, C] -> K`` 3x3 layer: the input gradient (the Winograd convolution of ``dy``
with the flipped kernel) as :func:`tfrcnn.accel.winograd.winograd_conv3x3_xla` against
:func:`~tfrcnn.accel.winograd.winograd_conv3x3_bands`, and the filter gradient as
:func:`~tfrcnn.accel.winograd.winograd_filter_gradient_xla` against
:func:`~tfrcnn.accel.winograd.winograd_filter_gradient_bands`. Printed: the host pool's peak
above what was in use before the call (TensorFlow's BFC allocator, so this script sets
``TF_CPU_ALLOCATOR_USE_BFC=true``), the median seconds of ``--repeats`` alternating calls, and
the largest difference of the results over the largest magnitude.

    python benchmarks/winograd_gradient_memory.py                     # [2, 200, 200, 256] -> 256
    python benchmarks/winograd_gradient_memory.py --shape 1 200 200 256 --filters 256
"""

import argparse
import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_CPU_ALLOCATOR_USE_BFC", "true")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from tfrcnn.accel import winograd  # noqa: E402


def measure(fn, *args):
    """(result, pool MB above the use before the call, seconds) of one call."""
    tf.config.experimental.reset_memory_stats("CPU:0")
    before = tf.config.experimental.get_memory_info("CPU:0")["current"]
    start = time.perf_counter()
    result = fn(*args).numpy()
    seconds = time.perf_counter() - start
    peak = tf.config.experimental.get_memory_info("CPU:0")["peak"]
    return result, (peak - before) / 2**20, seconds


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", type=int, nargs=4, default=[2, 200, 200, 256])
    parser.add_argument("--filters", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    rng = np.random.default_rng(0)
    n, h, w, c = args.shape
    x = tf.constant(rng.standard_normal((n, h, w, c)), tf.float32)
    dy = tf.constant(rng.standard_normal((n, h, w, args.filters)), tf.float32)
    kernel = tf.constant(rng.standard_normal((3, 3, args.filters, c)) / np.sqrt(9 * c), tf.float32)
    pairs = {
        "input gradient": (
            ("one computation", lambda: winograd.winograd_conv3x3_xla(dy, kernel)),
            ("a call a band", tf.function(lambda: winograd.winograd_conv3x3_bands(dy, kernel))),
        ),
        "filter gradient": (
            ("one computation", lambda: winograd.winograd_filter_gradient_xla(x, dy)),
            (
                "a call a band",
                tf.function(lambda: winograd.winograd_filter_gradient_bands(x, dy)),
            ),
        ),
    }
    print(f"x {args.shape}, {args.filters} filters; {len(winograd._bands(x))} bands forward")
    for title, versions in pairs.items():
        results, pool, seconds = {}, {}, {name: [] for name, _ in versions}
        for _, fn in versions:
            fn()  # trace and compile
        for round_ in range(args.repeats):
            order = versions if round_ % 2 == 0 else versions[::-1]
            for name, fn in order:
                results[name], pool[name], elapsed = measure(fn)
                seconds[name].append(elapsed)
        (a, _), (b, _) = versions
        scale = np.abs(results[a]).max()
        difference = np.abs(results[a] - results[b]).max() / scale
        for name, _ in versions:
            print(
                f"{title:16s} {name:16s} pool peak {pool[name]:7.1f} MB  "
                f"{statistics.median(seconds[name]):6.3f} s"
            )
        print(f"{title:16s} relative difference {difference:.2e}")


if __name__ == "__main__":
    main()
