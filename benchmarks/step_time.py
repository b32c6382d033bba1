"""Seconds a tfrcnn inference call or training step, in a plain process: for A/B comparisons of
two checkouts, run alternately with each on ``PYTHONPATH``.

    git worktree add /tmp/tfrcnn_old <commit>
    PYTHONPATH=/tmp/tfrcnn_old python benchmarks/step_time.py --model resnet50_fpn --batch 1
    python benchmarks/step_time.py --model resnet50_fpn --batch 1

Same model, inputs and settings as ``speed_vs_torchvision.py``; prints which ``tfrcnn`` it
imported, the median and every timed call. ``--accelerate off`` sets ``FasterRCNN(accelerate=False)``
(default: the model's ``"auto"``), for an A/B of the acceleration in one checkout. It also prints the host
allocator in effect and the minor page faults of a timed call; for an A/B of the allocator run it
alternately with and without ``TF_CPU_ALLOCATOR_USE_BFC=false`` in the environment.
"""

import argparse
import os
import resource
import sys
import time

import numpy as np

sys.path.insert(1, os.path.dirname(os.path.abspath(__file__)))

import speed_vs_torchvision as bench  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    bench.add_tfrcnn_arguments(parser, mode="training")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--steps", type=int, default=3)
    args = parser.parse_args(argv)

    fw = bench.import_frameworks(torch=False)
    import tfrcnn

    call, _ = bench.build_tfrcnn(
        fw, args.model, args.mode, args.batch, args.size, args.precision, args.accelerate
    )
    for _ in range(args.warmup):
        call()
    times, faults = [], []
    for _ in range(args.steps):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    print(
        f"{os.path.dirname(tfrcnn.__file__)} {args.model} {args.mode} batch {args.batch} "
        f"{args.precision} accelerate {args.accelerate} allocator {tfrcnn.accel.cpu_allocator()}: median "
        f"{np.median(times):.3f} s a call, all {[round(t, 3) for t in times]}, "
        f"{int(np.median(faults))} page faults a call, peak RSS {bench.peak_rss_mb():.0f} MB",
        flush=True,
    )


if __name__ == "__main__":
    main()
