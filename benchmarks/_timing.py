"""Timing helper shared by the single-op benchmarks (``python benchmarks/<script>.py`` puts this
folder on ``sys.path``)."""

import time

import numpy as np


def median_ms(fn, *args, repeats=5, warmup=2):
    """Median milliseconds of ``fn(*args)`` (a TensorFlow function returning one tensor, waited
    for with ``.numpy()``) over ``repeats`` calls after ``warmup`` untimed ones."""
    for _ in range(warmup):
        fn(*args).numpy()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn(*args).numpy()
        times.append(time.perf_counter() - start)
    return 1e3 * float(np.median(times))
