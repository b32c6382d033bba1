"""tfrcnn against torchvision's Faster R-CNN, side by side on this machine: seconds an image for
inference and for a training step, the fraction of the FLOP-bound limit, and peak memory.

    python benchmarks/speed_vs_torchvision.py                      # everything, ~30 min on 2 cores
    python benchmarks/speed_vs_torchvision.py --models resnet50_fpn --modes inference --batches 1

Pairs: ``resnet50_fpn`` against ``fasterrcnn_resnet50_fpn`` and ``mobilenet_v3_fpn`` against
``fasterrcnn_mobilenet_v3_large_fpn``, both randomly initialised with every layer trainable and
plain batch norm, 91 outputs (90 classes + background), 800x800 inputs (torchvision's default
resize 800/1333 on both sides, so no resize happens), 1000 proposals at test time (1000 a level
before NMS), 2000 at training time (2000 a level before NMS), 512 sampled ROIs an image, 5 random
ground-truth boxes an image, SGD with momentum. tfrcnn runs in each ``--precisions`` policy;
torchvision in float32 (and, with ``--peer-bf16``, under ``torch.autocast`` bfloat16 too).

Protocol: every contender is built and warmed up (``--warmup`` calls, the first one compiles), then
the contenders take turns, one call each a round, for ``--repeats`` rounds, with a ``--pause``
between calls (OpenMP threads of torch keep spinning for a while after a call and would slow the
next contender down). Quoted: the median seconds an image and the ratio tfrcnn / torchvision.

FLOPs are those of the convolutions and matrix products (``tfrcnn.profiling.count_flops`` on the
traced inference graph, and on the loss-and-gradient graph for training); the machine's peak is
measured in the same run as the fastest of a 4096^3 matrix product in TensorFlow and in torch, in
float32 and in bfloat16. The fraction of the FLOP-bound limit is ``flops / (seconds * peak)`` in
the policy's compute type.

Peak memory (``--memory``): each configuration runs alone in a child process (only its own
framework imported) for the warm-up and two calls; its peak resident set size is reported.
"""

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time

import numpy as np

PEERS = {
    "resnet50_fpn": "fasterrcnn_resnet50_fpn",
    "mobilenet_v3_fpn": "fasterrcnn_mobilenet_v3_large_fpn",
}
NUM_CLASSES = 90  # torchvision counts the background: num_classes=91
GT_BOXES = 5


def import_frameworks(torch=True, tensorflow=True):
    """Imports torch before TensorFlow: on this machine ``import tensorflow`` followed by
    ``import torch`` crashes the interpreter (a segmentation fault inside torch's import)."""
    modules = {}
    if torch:
        import torch as torch_module
        import torchvision

        modules["torch"], modules["torchvision"] = torch_module, torchvision
    if tensorflow:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        import keras
        import tensorflow as tf

        modules["tf"], modules["keras"] = tf, keras
    return modules


# ------------------------------------------------------------------------------------------------
# the same inputs for both libraries
def make_inputs(batch, size, seed=0):
    """Images (pixel values 0..255, float32) and ground truth, tfrcnn layout."""
    rng = np.random.default_rng(seed)
    images = rng.uniform(0, 255, (batch, size, size, 3)).astype(np.float32)
    corner = rng.uniform(0, size * 0.75, (batch, GT_BOXES, 2))
    sides = rng.uniform(size * 0.04, size * 0.25, (batch, GT_BOXES, 2))
    boxes = np.concatenate([corner, np.minimum(corner + sides, size)], -1).astype(np.float32)
    classes = rng.integers(0, NUM_CLASSES, (batch, GT_BOXES)).astype(np.int32)
    return images, boxes, classes


# ------------------------------------------------------------------------------------------------
# tfrcnn
def tfrcnn_settings(size):
    return dict(image_min_side=size, image_max_side=max(size, 1333), test_pre_nms_top_n=1000,
                test_post_nms_top_n=1000, train_pre_nms_top_n=2000, train_post_nms_top_n=2000,
                rcnn_batch_size_per_image=512, rcnn_positive_fraction=0.25,
                rpn_batch_size_per_image=256, detection_score_threshold=0.05, max_detections=100)


def build_tfrcnn(fw, model_name, mode, batch, size, precision):
    """Returns (call, flops_an_image): ``call()`` runs one inference or training step."""
    keras, tf = fw["keras"], fw["tf"]
    from tfrcnn.models import FasterRCNN
    from tfrcnn.profiling import count_flops
    from tfrcnn.training.precision import precision_scope

    images, boxes, classes = make_inputs(batch, size)
    with precision_scope(precision):
        model = FasterRCNN.from_preset(model_name, num_classes=NUM_CLASSES, **tfrcnn_settings(size))
    if mode == "inference":
        fn = tf.function(lambda x: model(x, training=False))
        x = tf.constant(images)

        def call():
            out = fn(x)
            return out["num_detections"].numpy()

        flops = count_flops(fn, tf.TensorSpec(x.shape, tf.float32))
        return call, flops["total"] / batch
    model.compile(optimizer=keras.optimizers.SGD(0.001, momentum=0.9))
    x = {"images": images, "image_shape": np.full((batch, 2), size, np.int32),
         "image_scale": np.ones(batch, np.float32),
         "original_shape": np.full((batch, 2), size, np.int32),
         "gt_boxes": boxes, "gt_classes": classes}

    def call():
        return model.train_on_batch(x)

    def loss_and_gradients(inputs):
        with tf.GradientTape() as tape:
            y = model(inputs, training=True)
            loss = model.compute_loss(inputs, None, y)
        return tape.gradient(loss, model.trainable_variables)

    spec = {k: tf.TensorSpec(v.shape, tf.as_dtype(v.dtype)) for k, v in x.items()}
    flops = count_flops(loss_and_gradients, spec)
    return call, flops["total"] / batch


# ------------------------------------------------------------------------------------------------
# torchvision
def build_torchvision(fw, model_name, mode, batch, size, bf16=False):
    torch, torchvision = fw["torch"], fw["torchvision"]
    torch.manual_seed(0)
    constructor = getattr(torchvision.models.detection, PEERS[model_name])
    model = constructor(weights=None, weights_backbone=None, num_classes=NUM_CLASSES + 1,
                        min_size=size, max_size=max(size, 1333), rpn_pre_nms_top_n_test=1000,
                        rpn_post_nms_top_n_test=1000, rpn_pre_nms_top_n_train=2000,
                        rpn_post_nms_top_n_train=2000, box_batch_size_per_image=512,
                        box_score_thresh=0.05, box_detections_per_img=100)
    images, boxes, classes = make_inputs(batch, size)
    x = [torch.from_numpy(i).permute(2, 0, 1).contiguous() / 255.0 for i in images]
    autocast = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if bf16 else None
    if mode == "inference":
        model.eval()

        def call():
            with torch.inference_mode():
                if autocast:
                    with autocast():
                        return model(x)
                return model(x)

        return call
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.001, momentum=0.9)
    targets = [{"boxes": torch.from_numpy(b[:, [1, 0, 3, 2]]).contiguous(),
                "labels": torch.from_numpy(c.astype(np.int64) + 1)} for b, c in zip(boxes, classes)]

    def step():
        optimizer.zero_grad(set_to_none=True)
        losses = model(x, targets)
        loss = sum(losses.values())
        loss.backward()
        optimizer.step()
        return loss.item()

    def call():
        if autocast:
            with autocast():
                return step()
        return step()

    return call


# ------------------------------------------------------------------------------------------------
# measuring
def machine_peak(fw, n=4096, repeats=5):
    """GFLOP/s of an n^3 matrix product, the fastest of TensorFlow and torch, a dtype."""
    tf, torch = fw["tf"], fw["torch"]
    peaks = {}
    for name in ("float32", "bfloat16"):
        best = {}
        a = tf.cast(tf.random.normal([n, n]), name)
        matmul = tf.function(lambda a: tf.matmul(a, a))
        matmul(a).numpy()
        best["tensorflow"] = _median_seconds(lambda: matmul(a).numpy(), repeats)
        t = torch.randn(n, n).to(getattr(torch, name))
        torch.matmul(t, t)
        best["torch"] = _median_seconds(lambda: torch.matmul(t, t), repeats)
        peaks[name] = {k: 2 * n ** 3 / v / 1e9 for k, v in best.items()}
    return peaks


def _median_seconds(fn, repeats):
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def alternate(contenders, warmup, repeats, pause):
    """Warm each contender up, then take turns; returns {name: [seconds a call]}."""
    for name, call in contenders.items():
        for _ in range(warmup):
            call()
        print(f"    warmed up {name}", flush=True)
    times = {name: [] for name in contenders}
    for _ in range(repeats):
        for name, call in contenders.items():
            time.sleep(pause)
            start = time.perf_counter()
            call()
            times[name].append(time.perf_counter() - start)
    return times


def peak_rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def run_child(args):
    """One configuration alone in this process; prints its peak RSS as JSON."""
    library, model_name, mode, batch, precision = args.child
    batch = int(batch)
    fw = import_frameworks(torch=library == "torchvision", tensorflow=library == "tfrcnn")
    _threads(fw, args.threads)
    before = peak_rss_mb()
    if library == "tfrcnn":
        call, _ = build_tfrcnn(fw, model_name, mode, batch, args.size, precision)
    else:
        call = build_torchvision(fw, model_name, mode, batch, args.size, bf16=precision == "bf16")
    built = peak_rss_mb()
    for _ in range(args.warmup + 2):
        call()
    print(json.dumps({"peak_rss_mb": peak_rss_mb(), "after_import_mb": before,
                      "after_build_mb": built}))


def _threads(fw, threads):
    if "torch" in fw:
        fw["torch"].set_num_threads(threads)
    if "tf" in fw:
        fw["tf"].config.threading.set_intra_op_parallelism_threads(threads)
        fw["tf"].config.threading.set_inter_op_parallelism_threads(threads)


def measure_memory(args, configs):
    rows = []
    for config in configs:
        command = [sys.executable, os.path.abspath(__file__), "--child", *map(str, config),
                   "--size", str(args.size), "--threads", str(args.threads),
                   "--warmup", str(args.warmup)]
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"memory child {config} failed:\n{done.stderr[-3000:]}")
        result = json.loads(done.stdout.strip().splitlines()[-1])
        rows.append(dict(zip(("library", "model", "mode", "batch", "precision"), config), **result))
        print(f"  memory {config}: peak RSS {result['peak_rss_mb']:.0f} MB", flush=True)
    return rows


def settings_text(fw, args):
    cpu = "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return (f"CPU {cpu}, {os.cpu_count()} logical CPUs; {args.threads} threads a library; "
            f"Python {platform.python_version()}, TensorFlow {fw['tf'].__version__}, "
            f"Keras {fw['keras'].__version__}, torch {fw['torch'].__version__}, torchvision "
            f"{fw['torchvision'].__version__}; input {args.size}x{args.size}, random weights, "
            f"{NUM_CLASSES} classes + background, 1000 test proposals, 2000 training proposals, "
            f"512 ROIs an image, {GT_BOXES} gt boxes an image; warm-up {args.warmup}, "
            f"{args.repeats} alternating rounds, pause {args.pause} s; medians")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="resnet50_fpn,mobilenet_v3_fpn")
    parser.add_argument("--modes", default="inference,training")
    parser.add_argument("--batches", default="1,2")
    parser.add_argument("--precisions", default="float32,mixed_bfloat16",
                        help="tfrcnn policies to time (comma separated)")
    parser.add_argument("--peer-bf16", action="store_true",
                        help="also time torchvision under torch.autocast(bfloat16)")
    parser.add_argument("--size", type=int, default=800)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--pause", type=float, default=0.5)
    parser.add_argument("--memory", default="resnet50_fpn:training:2,resnet50_fpn:inference:1",
                        help="model:mode:batch configurations whose peak RSS to measure in "
                             "child processes ('' for none)")
    parser.add_argument("--json", help="write every number to this file")
    parser.add_argument("--child", nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return run_child(args)

    fw = import_frameworks()
    _threads(fw, args.threads)
    settings = settings_text(fw, args)
    print(settings, flush=True)
    peaks = machine_peak(fw)
    peak = {"float32": max(peaks["float32"].values()), "bfloat16": max(peaks["bfloat16"].values())}
    print(f"machine peak (4096^3 matmul) GFLOP/s: {json.dumps(peaks)}", flush=True)
    precisions = [p for p in args.precisions.split(",") if p]
    rows = []
    for model_name in args.models.split(","):
        for mode in args.modes.split(","):
            for batch in [int(b) for b in args.batches.split(",")]:
                print(f"{model_name} {mode} batch {batch}", flush=True)
                contenders, flops = {}, None
                for precision in precisions:
                    call, flops = build_tfrcnn(fw, model_name, mode, batch, args.size, precision)
                    contenders[f"tfrcnn {precision}"] = call
                contenders["torchvision float32"] = build_torchvision(fw, model_name, mode, batch,
                                                                      args.size)
                if args.peer_bf16:
                    contenders["torchvision autocast bf16"] = build_torchvision(
                        fw, model_name, mode, batch, args.size, bf16=True)
                times = alternate(contenders, args.warmup, args.repeats, args.pause)
                medians = {k: float(np.median(v)) / batch for k, v in times.items()}
                peer = medians["torchvision float32"]
                row = {"model": model_name, "peer": PEERS[model_name], "mode": mode,
                       "batch": batch, "gflop_per_image": flops / 1e9,
                       "seconds_per_image": medians, "all_seconds": times,
                       "ratio_to_torchvision_float32": {k: v / peer for k, v in medians.items()},
                       "fraction_of_flop_bound": {}}
                for name, seconds in medians.items():
                    dtype = "bfloat16" if "bf16" in name or "bfloat16" in name else "float32"
                    row["fraction_of_flop_bound"][name] = flops / (seconds * peak[dtype] * 1e9)
                rows.append(row)
                for name, seconds in medians.items():
                    print(f"    {name:28s} {seconds:7.3f} s/image   ratio "
                          f"{seconds / peer:5.2f}   {row['fraction_of_flop_bound'][name]:6.1%} of "
                          f"FLOP bound", flush=True)
                del contenders
    memory = []
    for item in [m for m in args.memory.split(",") if m]:
        model_name, mode, batch = item.split(":")
        configs = [("tfrcnn", model_name, mode, batch, p) for p in precisions]
        configs.append(("torchvision", model_name, mode, batch, "float32"))
        memory.extend(measure_memory(args, configs))
    print_markdown(rows, memory, peak, settings)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"settings": settings, "machine_peak_gflops": peaks, "rows": rows,
                       "memory": memory}, f, indent=2)


def print_markdown(rows, memory, peak, settings):
    print("\n" + settings + f"; peak GFLOP/s float32 {peak['float32']:.0f}, bfloat16 "
          f"{peak['bfloat16']:.0f}\n")
    names = list(rows[0]["seconds_per_image"]) if rows else []
    header = ["model", "mode", "batch", "GFLOP/img"] + [f"{n} s/img" for n in names] + \
        [f"ratio {n}" for n in names if n.startswith("tfrcnn")] + \
        [f"FLOP-bound % {n}" for n in names]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for r in rows:
        cells = [r["model"], r["mode"], str(r["batch"]), f"{r['gflop_per_image']:.0f}"]
        cells += [f"{r['seconds_per_image'][n]:.3f}" for n in names]
        cells += [f"{r['ratio_to_torchvision_float32'][n]:.2f}" for n in names if n.startswith("tfrcnn")]
        cells += [f"{r['fraction_of_flop_bound'][n]:.0%}" for n in names]
        print("| " + " | ".join(cells) + " |")
    if memory:
        print("\n| library | model | mode | batch | precision | peak RSS (MB) | RSS after import (MB) |")
        print("|---|---|---|---|---|---|---|")
        for m in memory:
            print(f"| {m['library']} | {m['model']} | {m['mode']} | {m['batch']} | {m['precision']} "
                  f"| {m['peak_rss_mb']:.0f} | {m['after_import_mb']:.0f} |")


if __name__ == "__main__":
    main()
