"""Where the host memory of a tfrcnn training step goes: the peak resident set size by phase, and
the tensors alive at the step's peak of TensorFlow's host allocator, summed by the op and by the
model layer that allocated them.

    python benchmarks/training_memory.py --model resnet50_fpn --batch 2 --size 800

The same model, inputs and settings as ``speed_vs_torchvision.py`` (``SGD`` with momentum,
``model.train_on_batch``). Phases: after the imports, after the model is built (with its traced
FLOP count), after each step (the first one traces and compiles). The allocation profile comes from
the TensorFlow profiler's memory events of one step after ``--warmup`` steps: each allocation of
TensorFlow's host BFC pool names the op it was made for; the tensors alive at the moment the pool's
use peaked are listed with their op, shape and size. RSS beyond the pool's peak use is the runtime
(TensorFlow, XLA's compiled code, the model's variables are in the pool) and the pool's
fragmentation and rounding.
"""

import argparse
import collections
import glob
import os
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import speed_vs_torchvision as bench  # noqa: E402


def resident_mb():
    """(current, peak) resident set size of this process in MB (Linux ``/proc``)."""
    values = {}
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(("VmRSS:", "VmHWM:")):
                key, value = line.split()[:2]
                values[key[:-1]] = int(value) / 1024
    return values.get("VmRSS", 0.0), values.get("VmHWM", 0.0)


def large_mapping_rss_mb(min_mb=64):
    """Resident MB in anonymous mappings of at least ``min_mb`` (TensorFlow's BFC pool takes its
    regions as such mappings; the C library's heap, code and small blocks are elsewhere)."""
    total, size, anonymous = 0.0, 0, False
    with open("/proc/self/smaps") as smaps:
        for line in smaps:
            fields = line.split()
            if "-" in fields[0] and len(fields) >= 5:  # a mapping's header line
                start, end = (int(v, 16) for v in fields[0].split("-"))
                size, anonymous = end - start, len(fields) == 5
            elif fields[0] == "Rss:" and anonymous and size >= min_mb * 2**20:
                total += int(fields[1]) / 1024
    return total


def pool_mb(tf):
    """(in use, peak in use) of TensorFlow's host allocator in MB, or None without statistics."""
    try:
        info = tf.config.experimental.get_memory_info("CPU:0")
    except ValueError:  # the system allocator keeps no statistics
        return None
    return info["current"] / 2**20, info["peak"] / 2**20


def memory_events(logdir):
    """The host allocator's allocation / deallocation events of a profile, in time order:
    (time ps, kind, address, bytes, bytes in use after, op name, shape)."""
    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    events = []
    for path in glob.glob(os.path.join(logdir, "**", "*.xplane.pb"), recursive=True):
        space = xplane_pb2.XSpace()
        with open(path, "rb") as handle:
            space.ParseFromString(handle.read())
        for plane in space.planes:
            names = {key: value.name for key, value in plane.stat_metadata.items()}
            for line in plane.lines:
                for event in line.events:
                    kind = plane.event_metadata[event.metadata_id].name
                    if kind not in ("MemoryAllocation", "MemoryDeallocation"):
                        continue
                    stats = {}
                    for stat in event.stats:
                        which = stat.WhichOneof("value")
                        value = getattr(stat, which)
                        if which == "ref_value":
                            value = plane.stat_metadata[value].name
                        stats[names.get(stat.metadata_id, str(stat.metadata_id))] = value
                    time_ps = line.timestamp_ns * 1000 + event.offset_ps
                    events.append(
                        (
                            time_ps,
                            kind,
                            int(stats.get("addr", 0)),
                            int(stats.get("allocation_bytes", 0)),
                            int(stats.get("bytes_allocated", 0)),
                            str(stats.get("tf_op", "")) or "(no op)",
                            str(stats.get("tensor_shape", "")),
                            stats.get("allocator_name", ""),
                        )
                    )
    events.sort(key=lambda e: e[0])
    return events


def live_at_peak(events):
    """The allocations alive when the allocator's bytes in use peaked, and that peak: (peak bytes,
    [(address, bytes, op, shape)]). Allocations made before the profile started are not seen."""
    live, best, best_live = {}, -1, {}
    for _, kind, address, size, in_use, op, shape, _ in events:
        if kind == "MemoryAllocation":
            live[address] = (size, op, shape)
            if in_use > best:
                best, best_live = in_use, dict(live)
        else:
            live.pop(address, None)
    return best, [(a, s, op, shape) for a, (s, op, shape) in best_live.items()]


def layer_of(op):
    """The model layer an op belongs to (``training_graph/<layer>/...``), else its first scope."""
    parts = [p for p in op.split("/") if p]
    for i, part in enumerate(parts):
        if part.startswith("training_graph") and i + 1 < len(parts):
            layer = parts[i + 1]
            gradient = any(p.startswith("gradient") for p in parts[:i])
            return ("gradient of " if gradient else "") + layer
    if any(p.startswith("gradient") for p in parts):
        return "gradients (other)"
    return parts[0] if parts else op


def print_table(title, rows, total, top):
    print(f"\n{title:78s} {'MB':>8s} {'share':>6s} {'count':>6s}")
    for key, (size, count) in sorted(rows.items(), key=lambda kv: -kv[1][0])[:top]:
        print(f"{key[-78:]:78s} {size / 2**20:8.1f} {size / max(total, 1):6.1%} {count:6d}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    bench.add_tfrcnn_arguments(parser, mode="training")
    parser.set_defaults(batch=2)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument(
        "--no-profile",
        action="store_true",
        help="phases only (no profiler: its event buffers add memory)",
    )
    args = parser.parse_args(argv)

    samples, done = [], threading.Event()

    def sample():
        while not done.is_set():
            samples.append(resident_mb()[0])
            done.wait(0.02)

    threading.Thread(target=sample, daemon=True).start()
    fw = bench.import_frameworks(torch=False)
    tf = fw["tf"]
    from tfrcnn.accel import process

    def phase(name):
        current, peak = resident_mb()
        pool = pool_mb(tf)
        pool_text = (
            "" if pool is None else f"   pool in use {pool[0]:7.0f}  pool peak {pool[1]:7.0f}"
        )
        print(
            f"{name:34s} RSS {current:7.0f}  peak RSS {peak:7.0f}{pool_text}  in large "
            f"mappings {large_mapping_rss_mb():7.0f}  (MB)",
            flush=True,
        )

    print(
        f"{args.model} training batch {args.batch} {args.size}x{args.size} {args.precision} "
        f"accelerate {args.accelerate}; host allocator {process.cpu_allocator()}, oneDNN "
        f"operations {process.onednn_enabled()}",
        flush=True,
    )
    phase("imported")
    call, _ = bench.build_tfrcnn(
        fw, args.model, "training", args.batch, args.size, args.precision, args.accelerate
    )
    phase("built")
    for step in range(args.warmup):
        start = time.perf_counter()
        tf.config.experimental.reset_memory_stats("CPU:0") if pool_mb(tf) else None
        call()
        phase(f"step {step} ({time.perf_counter() - start:.1f} s)")
    if args.no_profile:
        done.set()
        return
    logdir = tempfile.mkdtemp(prefix="tfrcnn_memory_")
    tf.config.experimental.reset_memory_stats("CPU:0") if pool_mb(tf) else None
    tf.profiler.experimental.start(logdir)
    call()
    tf.profiler.experimental.stop()
    phase("profiled step")
    done.set()
    events = memory_events(logdir)
    if not events:
        print("no allocator events in the profile (the system allocator records none)")
        return
    allocators = collections.Counter(e[7] for e in events)
    print(f"\n{len(events)} allocator events ({dict(allocators)})")
    peak, live = live_at_peak(events)
    total = sum(size for _, size, _, _ in live)
    print(
        f"pool in use at its peak: {peak / 2**20:.0f} MB, of which {total / 2**20:.0f} MB "
        f"allocated during the step ({len(live)} tensors); the rest was allocated before "
        f"(variables, optimizer slots)"
    )
    by_layer, by_op, by_tensor = (collections.defaultdict(lambda: [0, 0]) for _ in range(3))
    for _, size, op, shape in live:
        for table, key in (
            (by_layer, layer_of(op)),
            (by_op, op),
            (by_tensor, f"{op.split('/')[-1]} {shape}"),
        ):
            table[key][0] += size
            table[key][1] += 1
    print_table("alive at the peak, by layer", by_layer, total, args.top)
    print_table("alive at the peak, by op", by_op, total, args.top)
    print_table("alive at the peak, by op type and shape", by_tensor, total, args.top)


if __name__ == "__main__":
    main()
