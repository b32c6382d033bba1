"""Where a tfrcnn step spends its time: the TensorFlow profiler's host trace of a few inference
calls or training steps, summed by op type and by op.

    python benchmarks/profile_step.py --model resnet50_fpn --mode inference --batch 1

The same model, inputs and settings as ``speed_vs_torchvision.py``. An op's time is its wall time
on the executor thread that ran it (its intra-op parallel work included); ops that ran at the same
time on different executor threads overlap, so the total can exceed the wall time printed beside
it.
"""

import argparse
import collections
import glob
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import speed_vs_torchvision as bench  # noqa: E402


def aggregate(logdir):
    """({op type: [seconds, count]}, {op name: [seconds, count]}) from the profiler's xplane
    file(s) under ``logdir``. Op events are the ones named "scope/name:Type" on the executor's
    threads; their durations include the intra-op parallel work they wait for."""
    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    by_type = collections.defaultdict(lambda: [0.0, 0])
    by_name = collections.defaultdict(lambda: [0.0, 0])
    for path in glob.glob(os.path.join(logdir, "**", "*.xplane.pb"), recursive=True):
        space = xplane_pb2.XSpace()
        with open(path, "rb") as handle:
            space.ParseFromString(handle.read())
        for plane in space.planes:
            if not plane.name.startswith("/host:CPU"):
                continue
            metadata = plane.event_metadata
            for line in plane.lines:
                if not line.name.startswith("tf_Compute"):
                    continue
                for event in line.events:
                    name = metadata[event.metadata_id].name
                    if ":" not in name or "::" in name:
                        continue
                    op_name, kind = name.rsplit(":", 1)
                    for table, key in ((by_type, kind), (by_name, op_name)):
                        table[key][0] += event.duration_ps * 1e-12
                        table[key][1] += 1
    return by_type, by_name


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    bench.add_tfrcnn_arguments(parser)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--top", type=int, default=30)
    args = parser.parse_args(argv)

    fw = bench.import_frameworks(torch=False)
    tf = fw["tf"]
    call, flops = bench.build_tfrcnn(
        fw, args.model, args.mode, args.batch, args.size, args.precision, args.accelerate
    )
    for _ in range(2):
        call()
    logdir = tempfile.mkdtemp(prefix="tfrcnn_profile_")
    tf.profiler.experimental.start(logdir)
    start = time.perf_counter()
    for _ in range(args.steps):
        call()
    wall = time.perf_counter() - start
    tf.profiler.experimental.stop()
    by_type, by_name = aggregate(logdir)
    total = sum(seconds for seconds, _ in by_type.values())
    print(
        f"{args.model} {args.mode} batch {args.batch} {args.precision} accelerate {args.accelerate}: "
        f"{args.steps} calls, "
        f"wall {wall / args.steps:.3f} s a call, {flops * args.batch / 1e9:.0f} GFLOP a call, "
        f"op time {total / args.steps:.3f} s a call (ops on different threads overlap)"
    )
    by_layer = collections.defaultdict(lambda: [0.0, 0])
    for name, (seconds, count) in by_name.items():
        parts = name.split("/")
        # "faster_rcnn/inference_graph/<layer>/..." (or training_graph): the model's own layers
        layer = (
            parts[2] if len(parts) > 3 and parts[1].endswith(("_graph", "_graph_1")) else parts[0]
        )
        by_layer[layer][0] += seconds
        by_layer[layer][1] += count
    for title, table in (("layer", by_layer), ("op type", by_type), ("op", by_name)):
        print(f"\n{title:70s} {'s a call':>9s} {'share':>6s} {'count':>6s}")
        for key, (seconds, count) in sorted(table.items(), key=lambda kv: -kv[1][0])[: args.top]:
            print(
                f"{key[-70:]:70s} {seconds / args.steps:9.3f} {seconds / total:6.1%} "
                f"{count // args.steps:6d}"
            )


if __name__ == "__main__":
    main()
