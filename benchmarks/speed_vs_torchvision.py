"""tfrcnn against torchvision's Faster R-CNN, side by side on this machine: seconds an image for
inference and for a training step, the fraction of the FLOP-bound limit, and peak memory.

    python benchmarks/speed_vs_torchvision.py --json speed.json     # everything, ~40 min on 2 cores
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

FLOPs are those of the convolutions and matrix products (``benchmarks/profiling.py``'s ``count_flops`` on the
traced inference graph, and on the loss-and-gradient graph for training); they are counted
with direct convolutions even where tfrcnn runs Winograd's F(4x4, 3x3), which does a quarter of
the products (``tfrcnn.accel.winograd``), so a "FLOP-bound" fraction above what direct convolution
could reach is possible there; the machine's peak is
measured in the same run as the fastest of a few large matrix products (``PEAK_SHAPES``) in
TensorFlow and in torch, in float32 (and bfloat16 when something runs in it), in every round of the timings (this machine's speed drifts over
minutes): the fraction of the FLOP-bound limit is ``flops / (median seconds * median peak of the
same rounds)`` in the policy's compute type. The peaks before and after all timings are printed too.

Every contender runs in its own process with only its own framework imported (TensorFlow loaded
in a process slows torch's matrix products there, up to 2x in bfloat16 on this machine); the
parent tells them in turn to run one call, so only one computes at a time. Peak memory is each
process's peak resident set size at the end (framework, model, warm-up and timed calls).
Each library runs with its own defaults: tfrcnn with the BFC host allocator that
``tfrcnn.accel.configure_process()`` chooses (``TF_CPU_ALLOCATOR_USE_BFC=false`` in the
environment times the system one),
torch with its own CPU allocator; ``--peer-malloc-tuned`` adds torchvision with the C library's
malloc told to keep freed memory (``MALLOC_TUNABLES``), the peer's nearest equivalent.
"""

import argparse
import json
import os
import platform
import resource
import time

import numpy as np
from _workers import Worker, serve

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
        # before TensorFlow starts: the BFC host allocator and oneDNN (tfrcnn/accel/process.py),
        # which only take effect then. The peak-measuring TensorFlow process gets the same
        # allocator as the model's.
        import tfrcnn.accel

        tfrcnn.accel.configure_process()
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
    return dict(
        image_min_side=size,
        image_max_side=max(size, 1333),
        test_pre_nms_top_n=1000,
        test_post_nms_top_n=1000,
        train_pre_nms_top_n=2000,
        train_post_nms_top_n=2000,
        rcnn_batch_size_per_image=512,
        rcnn_positive_fraction=0.25,
        rpn_batch_size_per_image=256,
        detection_score_threshold=0.05,
        max_detections=100,
    )


def add_tfrcnn_arguments(parser, mode="inference"):
    """The options of one tfrcnn configuration, shared by ``step_time.py`` and ``profile_step.py``."""
    parser.add_argument("--model", default="resnet50_fpn")
    parser.add_argument("--mode", default=mode, choices=["inference", "training"])
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--size", type=int, default=800)
    parser.add_argument("--precision", default="float32")
    parser.add_argument(
        "--accelerate",
        default="auto",
        choices=["auto", "off"],
        help="FasterRCNN(accelerate=...): the CPU acceleration (tfrcnn.accel)",
    )


def build_tfrcnn(fw, model_name, mode, batch, size, precision, accelerate="auto"):
    """Returns (call, flops_an_image): ``call()`` runs one inference or training step.

    ``accelerate``: ``"auto"`` (the model's default) or ``"off"``
    (``FasterRCNN(accelerate=False)``)."""
    keras, tf = fw["keras"], fw["tf"]
    from profiling import count_flops

    from tfrcnn import accel
    from tfrcnn.models import FasterRCNN
    from tfrcnn.training.precision import precision_scope

    images, boxes, classes = make_inputs(batch, size)
    with precision_scope(precision):
        settings = tfrcnn_settings(size)
        if accelerate != "auto":
            settings["accelerate"] = False
        model = FasterRCNN.from_preset(model_name, num_classes=NUM_CLASSES, **settings)
    if mode == "inference":

        @tf.function
        def fn(x):
            return model(x, training=False)

        x = tf.constant(images)

        def call():
            out = fn(x)
            return out["num_detections"].numpy()

        # Counted on a separate trace of the plain layers: the model's arithmetic with direct
        # convolutions, also where inference runs Winograd's F(4x4, 3x3) (fewer products).
        with accel.disabled():
            flops = count_flops(
                lambda images: model(images, training=False), tf.TensorSpec(x.shape, tf.float32)
            )
        return call, flops["total"] / batch
    model.compile(optimizer=keras.optimizers.SGD(0.001, momentum=0.9))
    x = {
        "images": images,
        "image_shape": np.full((batch, 2), size, np.int32),
        "image_scale": np.ones(batch, np.float32),
        "original_shape": np.full((batch, 2), size, np.int32),
        "gt_boxes": boxes,
        "gt_classes": classes,
    }

    def call():
        return model.train_on_batch(x)

    def loss_and_gradients(inputs):
        with tf.GradientTape() as tape:
            y = model(inputs, training=True)
            loss = model.compute_loss(inputs, None, y)
        return tape.gradient(loss, model.trainable_variables)

    spec = {k: tf.TensorSpec(v.shape, tf.as_dtype(v.dtype)) for k, v in x.items()}
    with accel.disabled():  # direct convolutions, as for inference above
        flops = count_flops(loss_and_gradients, spec)
    return call, flops["total"] / batch


# ------------------------------------------------------------------------------------------------
# torchvision
def build_torchvision(fw, model_name, mode, batch, size, bf16=False):
    torch, torchvision = fw["torch"], fw["torchvision"]
    torch.manual_seed(0)
    constructor = getattr(torchvision.models.detection, PEERS[model_name])
    model = constructor(
        weights=None,
        weights_backbone=None,
        num_classes=NUM_CLASSES + 1,
        min_size=size,
        max_size=max(size, 1333),
        rpn_pre_nms_top_n_test=1000,
        rpn_post_nms_top_n_test=1000,
        rpn_pre_nms_top_n_train=2000,
        rpn_post_nms_top_n_train=2000,
        box_batch_size_per_image=512,
        box_score_thresh=0.05,
        box_detections_per_img=100,
    )
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
    targets = [
        {
            "boxes": torch.from_numpy(b[:, [1, 0, 3, 2]]).contiguous(),
            "labels": torch.from_numpy(c.astype(np.int64) + 1),
        }
        for b, c in zip(boxes, classes)
    ]

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
# one process a contender
def worker(connection, library, threads):
    """A contender's own process: only its framework is imported (TensorFlow loaded in the same
    process slows torch's matrix products down, up to 2x in bfloat16 on this machine). Serves
    the parent's commands until "exit" (:func:`_workers.serve`)."""
    fw = import_frameworks(torch=library == "torchvision", tensorflow=library == "tfrcnn")
    _threads(fw, threads)
    state = {}

    def handle(command, payload):
        if command == "build":
            model_name, mode, batch, size, precision = payload
            if library == "tfrcnn":
                state["call"], flops = build_tfrcnn(fw, model_name, mode, batch, size, precision)
            else:
                state["call"] = build_torchvision(
                    fw, model_name, mode, batch, size, bf16=precision == "bf16"
                )
                flops = None
            return flops
        if command == "call":
            start = time.perf_counter()
            state["call"]()
            return time.perf_counter() - start
        if command == "peak":
            repeats, dtypes = payload
            return matmul_peak(fw, library, dtypes, repeats=repeats)
        if command == "rss":
            return peak_rss_mb()
        raise ValueError(f"unknown command {command!r}")

    serve(connection, library, handle)


class Contender(Worker):
    """The parent's handle on a worker process running one library at one precision."""

    def __init__(self, name, library, precision, threads, env=None):
        self.name, self.library, self.precision = name, library, precision
        super().__init__(worker, (library, threads), env=env)


# (m, k, n) of the matrix products whose best speed is taken as the machine's peak: one large
# square product, one that stays in cache, and the box head's own product (1000 ROIs x 12544 x
# 1024). On an AVX2 AMD EPYC virtual machine the 4096^3 product ran at 83 GFLOP/s in TensorFlow
# while the box head's ran at 140: one shape alone would understate the peak.
PEAK_SHAPES = ((4096, 4096, 4096), (2048, 2048, 2048), (1000, 12544, 1024))


def matmul_peak(fw, library, dtypes, repeats=5):
    """GFLOP/s of the fastest of the ``PEAK_SHAPES`` products in each of ``dtypes``, best of
    ``repeats``. bfloat16 is only asked for when something runs in it: on a CPU without bf16
    instructions torch's bf16 product runs single-threaded and emulated, minutes for one 4096^3
    product."""
    peaks = {}
    for dtype in dtypes:
        best = 0.0
        for m, k, n in PEAK_SHAPES:
            if library == "tfrcnn":
                tf = fw["tf"]
                a = tf.cast(tf.random.normal([m, k]), dtype)
                b = tf.cast(tf.random.normal([k, n]), dtype)
                matmul = tf.function(tf.matmul)

                def run():
                    matmul(a, b).numpy()
            else:
                torch = fw["torch"]
                a = torch.randn(m, k).to(getattr(torch, dtype))
                b = torch.randn(k, n).to(getattr(torch, dtype))

                def run():
                    torch.matmul(a, b)

            run()
            times = []
            for _ in range(repeats):
                start = time.perf_counter()
                run()
                times.append(time.perf_counter() - start)
            best = max(best, 2 * m * k * n / min(times) / 1e9)
        peaks[dtype] = best
    return peaks


def peak_rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _threads(fw, threads):
    if "torch" in fw:
        fw["torch"].set_num_threads(threads)
    if "tf" in fw:
        fw["tf"].config.threading.set_intra_op_parallelism_threads(threads)
        fw["tf"].config.threading.set_inter_op_parallelism_threads(threads)


def machine_peak(threads, dtypes):
    """The fastest matrix product of TensorFlow and of torch, each in its own process."""
    peaks = {}
    for library in ("tfrcnn", "torchvision"):
        contender = Contender(library, library, None, threads)
        try:
            peaks["tensorflow" if library == "tfrcnn" else "torch"] = contender.ask(
                "peak", (5, dtypes)
            )
        finally:
            contender.close()
    return peaks


# The peer with the C library's malloc told to keep freed memory (``--peer-malloc-tuned``): large
# blocks from the heap rather than fresh mappings up to 32 MiB (glibc's ceiling), no trimming, and
# 256 MiB of headroom a heap growth. torch's CPU allocator has no pool of its own, so by default its
# steps fault their memory in again, as TensorFlow's default allocator does; tfrcnn avoids that
# with TensorFlow's BFC allocator (tfrcnn/accel/process.py), and this is the nearest the peer gets to it
# without another allocator library.
MALLOC_TUNABLES = (
    "glibc.malloc.mmap_threshold=33554432:glibc.malloc.trim_threshold=68719476736:"
    "glibc.malloc.top_pad=268435456"
)
TUNED_PEER = "torchvision float32 malloc-tuned"


def time_configuration(args, model_name, mode, batch, precisions):
    """Builds every contender of one configuration in its own process, warms each up, then lets
    them take turns. Returns ({name: [seconds a call]}, flops an image, {name: peak RSS MB})."""
    specs = [(f"tfrcnn {p}", "tfrcnn", p, None) for p in precisions]
    specs.append(("torchvision float32", "torchvision", "float32", None))
    if args.peer_bf16:
        specs.append(("torchvision autocast bf16", "torchvision", "bf16", None))
    if args.peer_malloc_tuned:
        specs.append((TUNED_PEER, "torchvision", "float32", {"GLIBC_TUNABLES": MALLOC_TUNABLES}))
    contenders = [
        Contender(name, library, precision, args.threads, env)
        for name, library, precision, env in specs
    ]
    # the machine's peak, measured in every round too (this machine's speed drifts over minutes)
    peakers = [
        Contender(f"peak {library}", library, None, args.threads)
        for library in ("tfrcnn", "torchvision")
    ]
    try:
        flops = None
        for c in contenders:
            result = c.ask("build", (model_name, mode, batch, args.size, c.precision))
            flops = result if result is not None else flops
            for _ in range(args.warmup):
                c.ask("call")
            print(f"    built and warmed up {c.name}", flush=True)
        times = {c.name: [] for c in contenders}
        peaks = []
        for _ in range(args.repeats):
            for c in contenders:
                time.sleep(args.pause)
                times[c.name].append(c.ask("call"))
            round_peak = {}
            for p in peakers:
                time.sleep(args.pause)
                for dtype, value in p.ask("peak", (3, args.dtypes)).items():
                    round_peak[dtype] = max(round_peak.get(dtype, 0.0), value)
            peaks.append(round_peak)
        memory = {c.name: c.ask("rss") for c in contenders}
    finally:
        for c in contenders + peakers:
            c.close()
    return times, flops, memory, peaks


def machine_text():
    """The CPU, its logical CPU count, Python's and the four libraries' versions, for a header."""
    import importlib.metadata as metadata

    cpu = "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    versions = ", ".join(
        f"{name} {metadata.version(name)}"
        for name in ("tensorflow", "keras", "torch", "torchvision")
    )
    return (
        f"CPU {cpu}, {os.cpu_count()} logical CPUs; Python {platform.python_version()}, {versions}"
    )


def settings_text(args):
    return (
        f"{machine_text()}; {args.threads} threads a library, each contender in its own "
        f"process; input "
        f"{args.size}x{args.size}, random weights, {NUM_CLASSES} classes + background, 1000 "
        f"test proposals, 2000 training proposals, 512 ROIs an image, {GT_BOXES} gt boxes an "
        f"image, SGD momentum 0.9; warm-up {args.warmup}, {args.repeats} alternating rounds, "
        f"pause {args.pause} s; medians"
    )


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="resnet50_fpn,mobilenet_v3_fpn")
    parser.add_argument("--modes", default="inference,training")
    parser.add_argument("--batches", default="1,2")
    parser.add_argument(
        "--precisions",
        default="float32,mixed_bfloat16",
        help="tfrcnn policies to time (comma separated)",
    )
    parser.add_argument(
        "--peer-bf16",
        action="store_true",
        help="also time torchvision under torch.autocast(bfloat16)",
    )
    parser.add_argument(
        "--peer-malloc-tuned",
        action="store_true",
        help="also time torchvision with glibc's malloc keeping freed memory "
        "(GLIBC_TUNABLES, see MALLOC_TUNABLES)",
    )
    parser.add_argument("--size", type=int, default=800)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--pause", type=float, default=0.5)
    parser.add_argument("--json", help="write every number to this file")
    args = parser.parse_args(argv)

    settings = settings_text(args)
    print(settings, flush=True)
    # The machine's speed drifts (a shared virtual machine): the peak is measured before and
    # after the timings, and the higher figure is taken.
    args.dtypes = ["float32"]
    if args.peer_bf16 or any("bfloat16" in p or "float16" in p for p in args.precisions.split(",")):
        args.dtypes.append("bfloat16")
    peaks = {"before": machine_peak(args.threads, args.dtypes)}
    print(f"machine peak (best matrix product, best of 5) GFLOP/s: {json.dumps(peaks)}", flush=True)
    precisions = [p for p in args.precisions.split(",") if p]
    rows = []
    for model_name in args.models.split(","):
        for mode in args.modes.split(","):
            for batch in [int(b) for b in args.batches.split(",")]:
                print(f"{model_name} {mode} batch {batch}", flush=True)
                times, flops, memory, round_peaks = time_configuration(
                    args, model_name, mode, batch, precisions
                )
                medians = {k: float(np.median(v)) / batch for k, v in times.items()}
                peer = medians["torchvision float32"]
                row = {
                    "model": model_name,
                    "peer": PEERS[model_name],
                    "mode": mode,
                    "batch": batch,
                    "gflop_per_image": flops / 1e9,
                    "seconds_per_image": medians,
                    "all_seconds": times,
                    "ratio_to_torchvision_float32": {k: v / peer for k, v in medians.items()},
                    "ratio_to_torchvision_float32_malloc_tuned": (
                        {k: v / medians[TUNED_PEER] for k, v in medians.items()}
                        if TUNED_PEER in medians
                        else None
                    ),
                    "fraction_of_flop_bound": {},
                    "peak_rss_mb": memory,
                    "round_peaks_gflops": round_peaks,
                    "peak_gflops": {
                        d: float(np.median([p[d] for p in round_peaks])) for d in args.dtypes
                    },
                }
                rows.append(row)
                for name, seconds in medians.items():
                    print(
                        f"    {name:28s} {seconds:7.3f} s/image   ratio {seconds / peer:5.2f}   "
                        f"peak RSS {memory[name]:6.0f} MB",
                        flush=True,
                    )
    peaks["after"] = machine_peak(args.threads, args.dtypes)
    print(f"machine peak after the timings: {json.dumps(peaks['after'])}", flush=True)
    peak = {d: max(p[d] for when in peaks.values() for p in when.values()) for d in args.dtypes}
    for row in rows:
        for name, seconds in row["seconds_per_image"].items():
            dtype = "bfloat16" if "bf16" in name or "bfloat16" in name else "float32"
            row["fraction_of_flop_bound"][name] = row["gflop_per_image"] / (
                seconds * row["peak_gflops"][dtype]
            )
    print_markdown(rows, peak, settings)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {"settings": settings, "machine_peak_gflops": peaks, "rows": rows}, f, indent=2
            )


def print_markdown(rows, peak, settings):
    print(
        "\n"
        + settings
        + "; peak GFLOP/s "
        + ", ".join(f"{dtype} {value:.0f}" for dtype, value in peak.items())
        + "\n"
    )
    names = list(rows[0]["seconds_per_image"]) if rows else []
    mine = [n for n in names if n.startswith("tfrcnn")]
    header = (
        ["model", "mode", "batch", "GFLOP/img"]
        + [f"{n} s/img" for n in names]
        + [f"ratio {n}" for n in mine]
        + ([f"ratio {n} to malloc-tuned peer" for n in mine] if TUNED_PEER in names else [])
        + [f"FLOP-bound {n}" for n in names]
        + [f"peak RSS MB {n}" for n in names]
        + ["peak GFLOP/s (in the rounds)"]
    )
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for r in rows:
        cells = [r["model"], r["mode"], str(r["batch"]), f"{r['gflop_per_image']:.0f}"]
        cells += [f"{r['seconds_per_image'][n]:.3f}" for n in names]
        cells += [f"{r['ratio_to_torchvision_float32'][n]:.2f}" for n in mine]
        if TUNED_PEER in names:
            cells += [f"{r['ratio_to_torchvision_float32_malloc_tuned'][n]:.2f}" for n in mine]
        cells += [f"{r['fraction_of_flop_bound'][n]:.0%}" for n in names]
        cells += [f"{r['peak_rss_mb'][n]:.0f}" for n in names]
        cells += [" / ".join(f"{value:.0f}" for value in r["peak_gflops"].values())]
        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
