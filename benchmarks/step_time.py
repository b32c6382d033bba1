"""Seconds a tfrcnn inference call or training step, in a plain process: for A/B comparisons of
two checkouts, run alternately with each on ``PYTHONPATH``.

    git worktree add /tmp/tfrcnn_old <commit>
    PYTHONPATH=/tmp/tfrcnn_old python benchmarks/step_time.py --model resnet50_fpn --batch 1
    python benchmarks/step_time.py --model resnet50_fpn --batch 1

Same model, inputs and settings as ``speed_vs_torchvision.py``; prints which ``tfrcnn`` it
imported, the median and every timed call. ``--xla on|off`` sets ``FasterRCNN(xla=...)`` (default:
the model's ``"auto"``), for an A/B of XLA at inference in one checkout.
"""
import argparse
import os
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

    call, _ = bench.build_tfrcnn(fw, args.model, args.mode, args.batch, args.size,
                                 args.precision, args.xla)
    for _ in range(args.warmup):
        call()
    times = []
    for _ in range(args.steps):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    print(f"{os.path.dirname(tfrcnn.__file__)} {args.model} {args.mode} batch {args.batch} "
          f"{args.precision} xla {args.xla}: median {np.median(times):.3f} s a call, all "
          f"{[round(t, 3) for t in times]}", flush=True)


if __name__ == "__main__":
    main()
