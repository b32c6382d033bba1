"""tfrcnn's ROI ops and NMS against torchvision's, side by side, on CPU at Faster R-CNN sizes.

Measures, in milliseconds a call (median over --repeats), for the same inputs in both frameworks:

- ``tfrcnn.ops.roi.roi_align`` (methods ``crop_and_resize`` and ``gather``) vs
  ``torchvision.ops.roi_align``; ``roi_pool`` vs ``torchvision.ops.roi_pool``; ``precise_roi_pool``
  alone (torchvision has no such op: reported as "no peer");
  each forward only, and forward + backward of ``loss = sum(out * upstream)`` (a fixed random
  ``upstream``) w.r.t. the features. The gradient w.r.t. the boxes as well is timed for tfrcnn only
  (torchvision's ops have no box gradient).
- NMS: ``tfrcnn.ops.nms.non_max_suppression_padded`` vs ``torchvision.ops.nms`` on random boxes,
  forward only (no backward). torchvision keeps every surviving box; tfrcnn stops at
  ``max_output_size`` and pads, so each (boxes, keep) pair is timed with the tfrcnn call padded to
  ``keep``; ``keep = all`` is the like-for-like amount of work.

Defaults: feature map [1, 50, 76, 256] float32 (a stride-16 map of an 800 x 1216 image; NHWC for
tfrcnn, the same numbers as a contiguous NCHW tensor for torch), 512 ROIs (random boxes inside the
image, sides 16..400 px, seed 0), output 7 x 7, spatial scale 1/16, sampling ratio 2, aligned=True;
NMS on 12000 and 2000 boxes, IoU 0.7, tfrcnn padded to 2000 and to all.

Protocol: before timing, the forward outputs and feature gradients of both frameworks are compared
(max abs difference printed, flagged above --atol) and the NMS selections compared index by index.
Each op then gets one untimed tracing call, --warmup untimed calls each, and --repeats rounds that
alternate tfrcnn and torch calls (the order swaps every round), with a --pause between calls so that
one framework's spinning worker threads do not steal CPU from the other's call. Both frameworks use
--threads threads. TensorFlow runs each op as a ``tf.function`` (traced once, no XLA); torch runs
eagerly, forward under ``torch.no_grad``. The ratio is tfrcnn / torchvision (lower is better).

    python benchmarks/ops_vs_torchvision.py --repeats 20 --json ops_vs_torchvision.json --markdown

Needs the ``bench`` extra (``pip install -e .[bench]``: torch and torchvision).
"""

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

# torch and torchvision MUST be imported before tensorflow: on some machines (this project's CI
# box among them) `import tensorflow` followed by `import torch` segfaults. tfrcnn imports
# tensorflow, so it is imported after torch as well.
import torch  # noqa: E402
import torchvision  # noqa: E402
from torchvision import ops as tv_ops  # noqa: E402

import tfrcnn.accel  # noqa: E402

tfrcnn.accel.configure_process()  # BFC host allocator and oneDNN, before TensorFlow starts
import tensorflow as tf  # noqa: E402

NO_PEER = "no peer"

# roi_align crop_and_resize: its backward pass is the exact gradient of the gather path (TF's CPU
# CropAndResizeGradImage races across threads), so fwd+bwd = crop_and_resize + gather backward.
CASE_NOTES = {"roi_align crop_and_resize": "backward via the gather path"}


# --------------------------------------------------------------------------------------------------
# command line and settings


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--features", default="1x50x76x256", help="feature map BxHxWxC")
    parser.add_argument("--image-size", default="800x1216", help="network input HxW, pixels")
    parser.add_argument("--rois", type=int, default=512, help="ROIs K")
    parser.add_argument("--min-side", type=float, default=16.0, help="smallest ROI side, pixels")
    parser.add_argument("--max-side", type=float, default=400.0, help="largest ROI side, pixels")
    parser.add_argument("--output-size", type=int, default=7)
    parser.add_argument("--spatial-scale", type=float, default=1.0 / 16)
    parser.add_argument("--sampling-ratio", type=int, default=2)
    parser.add_argument(
        "--not-aligned",
        dest="aligned",
        action="store_false",
        help="RoIAlign without the half-pixel offset (default: aligned=True)",
    )
    parser.add_argument(
        "--nms-boxes",
        type=int,
        nargs="+",
        default=[12000, 2000],
        help="candidate boxes of each NMS case",
    )
    parser.add_argument(
        "--nms-keep",
        nargs="+",
        default=["2000", "all"],
        help="tfrcnn max_output_size of each NMS case, an int or 'all' (= boxes)",
    )
    parser.add_argument("--nms-iou", type=float, default=0.7)
    parser.add_argument("--skip-precise", action="store_true", help="leave out precise_roi_pool")
    parser.add_argument(
        "--skip-box-gradient",
        action="store_true",
        help="leave out the tfrcnn features + boxes gradient rows",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=os.cpu_count(),
        help="intra-op threads of both frameworks (and TF inter-op threads)",
    )
    parser.add_argument("--warmup", type=int, default=3, help="untimed calls of each op")
    parser.add_argument("--repeats", type=int, default=20, help="timed rounds")
    parser.add_argument(
        "--pause", type=float, default=0.2, help="seconds of sleep before each call"
    )
    parser.add_argument("--atol", type=float, default=1e-4, help="agreement tolerance (max abs)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", help="write settings, checks and every timing to this file")
    parser.add_argument("--markdown", action="store_true", help="also print a markdown table")
    return parser.parse_args(argv)


def parse_dims(text, count, name):
    dims = tuple(int(v) for v in text.lower().split("x"))
    if len(dims) != count or min(dims) <= 0:
        raise SystemExit(f"--{name} must be {count} positive ints joined by 'x', got {text!r}")
    return dims


def set_threads(threads):
    torch.set_num_threads(threads)
    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(threads)


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def settings_of(args, feature_shape, image_size):
    b, h, w, c = feature_shape
    size = args.output_size
    return {
        "command": " ".join([os.path.basename(sys.executable)] + sys.argv),
        "features": f"[{b}, {h}, {w}, {c}] float32 (tfrcnn NHWC; torch NCHW contiguous)",
        "ROIs": f"{args.rois} boxes in a {image_size[0]}x{image_size[1]} image, sides "
        f"{args.min_side:g}..{args.max_side:g} px, seed {args.seed}",
        "ROI op": f"output {size}x{size}, spatial_scale {args.spatial_scale:g}, "
        f"sampling_ratio {args.sampling_ratio}, aligned={args.aligned}",
        "backward": "loss = sum(out * upstream), upstream fixed standard normal",
        "NMS": f"{', '.join(map(str, args.nms_boxes))} boxes (random as the ROIs, uniform "
        f"scores), IoU {args.nms_iou}, tfrcnn padded to {', '.join(args.nms_keep)}, "
        "torchvision keeps all",
        "protocol": f"1 tracing call + {args.warmup} warm-up calls each, {args.repeats} "
        f"alternating rounds, {args.pause:g} s pause before each call, median ms",
        "threads": f"torch intra-op {torch.get_num_threads()} (interop "
        f"{torch.get_num_interop_threads()}), TF intra-op "
        f"{tf.config.threading.get_intra_op_parallelism_threads()}, TF inter-op "
        f"{tf.config.threading.get_inter_op_parallelism_threads()}",
        "versions": f"python {platform.python_version()}, numpy {np.__version__}, torch "
        f"{torch.__version__}, torchvision {torchvision.__version__}, tensorflow "
        f"{tf.__version__}",
        "machine": f"{cpu_model()}, {os.cpu_count()} CPUs, load average at start "
        + " ".join(f"{v:.2f}" for v in os.getloadavg()),
    }


# --------------------------------------------------------------------------------------------------
# inputs (the same numbers for both frameworks)


def random_boxes(rng, count, image_size, min_side, max_side):
    """[count, 4] float32 yxyx boxes with sides in [min_side, max_side] inside the image."""
    image = np.array(image_size, np.float32)
    sides = rng.uniform(min_side, np.minimum(max_side, image), size=(count, 2)).astype(np.float32)
    corner = (rng.uniform(size=(count, 2)) * (image - sides)).astype(np.float32)
    return np.concatenate([corner, corner + sides], axis=1)


def yxyx_to_xyxy(boxes):
    return boxes[:, [1, 0, 3, 2]]


def make_roi_inputs(args, feature_shape, image_size):
    rng = np.random.default_rng(args.seed)
    b, h, w, c = feature_shape
    size = args.output_size
    features = rng.standard_normal(feature_shape).astype(np.float32)
    boxes = random_boxes(rng, args.rois, image_size, args.min_side, args.max_side)
    box_indices = rng.integers(0, b, size=args.rois).astype(np.int32)
    upstream = rng.standard_normal((args.rois, size, size, c)).astype(np.float32)
    rois = np.concatenate([box_indices[:, None].astype(np.float32), yxyx_to_xyxy(boxes)], axis=1)
    tf_in = {
        "features": tf.constant(features),
        "boxes": tf.constant(boxes),
        "box_indices": tf.constant(box_indices),
        "upstream": tf.constant(upstream),
    }
    torch_in = {
        "features": torch.from_numpy(features.transpose(0, 3, 1, 2).copy()).contiguous(),
        "rois": torch.from_numpy(rois),
        "upstream": torch.from_numpy(upstream.transpose(0, 3, 1, 2).copy()).contiguous(),
    }
    return tf_in, torch_in


def make_nms_inputs(args, count, image_size):
    rng = np.random.default_rng(args.seed + count)
    boxes = random_boxes(rng, count, image_size, args.min_side, args.max_side)
    scores = rng.uniform(size=count).astype(np.float32)
    tf_in = {"boxes": tf.constant(boxes), "scores": tf.constant(scores)}
    torch_in = {
        "boxes": torch.from_numpy(yxyx_to_xyxy(boxes).copy()),
        "scores": torch.from_numpy(scores),
    }
    return tf_in, torch_in


# --------------------------------------------------------------------------------------------------
# the timed callables


@dataclass
class Case:
    """One table row: a tfrcnn call, its torchvision peer (None: no peer), how to compare them."""

    op: str
    kind: str
    tfrcnn: Callable
    torch: Callable | None = None
    compare: Callable | None = None  # (tfrcnn result, torch result) -> check dict
    eager: Callable | None = None  # the same tfrcnn call outside tf.function, checked only
    note: str = ""
    times: dict = field(default_factory=dict)


def nchw_to_nhwc(t):
    return t.numpy().transpose(0, 2, 3, 1)


def max_abs_check(quantity, ours, theirs, atol):
    diff = float(np.max(np.abs(ours - theirs))) if ours.size else 0.0
    return {
        "quantity": quantity,
        "max_abs_diff": diff,
        "max_abs_value": float(np.max(np.abs(theirs))) if theirs.size else 0.0,
        "tolerance": atol,
        "ok": diff <= atol,
    }


def tf_forward(op):
    return tf.function(lambda f, b, i: op(f, b, i))


def tf_backward(op, with_boxes):
    @tf.function
    def step(f, b, i, upstream):
        with tf.GradientTape() as tape:
            tape.watch([f, b] if with_boxes else f)
            loss = tf.reduce_sum(op(f, b, i) * upstream)
        # the loss is returned so that the graph keeps the forward pass (the crop_and_resize
        # backward does not need its output, and the function would otherwise prune it)
        return loss, tape.gradient(loss, [f, b] if with_boxes else f)

    return step


def torch_forward(op):
    def run(f, rois):
        with torch.no_grad():
            return op(f, rois)

    return run


def torch_backward(op):
    def run(f, rois, upstream):
        loss = torch.sum(op(f, rois) * upstream)
        return loss, torch.autograd.grad(loss, f)[0]

    return run


def roi_op_cases(name, tf_op, torch_op, tf_in, torch_in, args, box_gradient):
    """Forward, forward + backward (features) and optionally (features + boxes) rows of one op."""
    f, b, i, up = (tf_in[k] for k in ("features", "boxes", "box_indices", "upstream"))
    tf_fwd = tf_forward(tf_op)
    tf_bwd = tf_backward(tf_op, with_boxes=False)
    tf_bwd_boxes = tf_backward(tf_op, with_boxes=True)
    cases = []
    forward = Case(name, "forward", lambda: tf_fwd(f, b, i), eager=lambda: tf_op(f, b, i))
    backward = Case(name, "fwd+bwd (features)", lambda: tf_bwd(f, b, i, up))
    if torch_op is None:
        forward.note = backward.note = NO_PEER
    else:
        t_f = torch_in["features"]
        t_f_grad = t_f.detach().clone().requires_grad_(True)
        rois, t_up = torch_in["rois"], torch_in["upstream"]
        t_fwd, t_bwd = torch_forward(torch_op), torch_backward(torch_op)
        forward.torch = lambda: t_fwd(t_f, rois)
        forward.compare = lambda ours, theirs: max_abs_check(
            "output", ours.numpy(), nchw_to_nhwc(theirs), args.atol
        )
        backward.torch = lambda: t_bwd(t_f_grad, rois, t_up)
        backward.compare = lambda ours, theirs: max_abs_check(
            "feature gradient", ours[1].numpy(), nchw_to_nhwc(theirs[1]), args.atol
        )
    if method_note := CASE_NOTES.get(name):
        backward.note = method_note
    cases += [forward, backward]
    if box_gradient and not args.skip_box_gradient:
        note = NO_PEER if torch_op is None else "torchvision has no box gradient"
        cases.append(
            Case(name, "fwd+bwd (features+boxes)", lambda: tf_bwd_boxes(f, b, i, up), note=note)
        )
    return cases


def roi_cases(args, tf_in, torch_in):
    from tfrcnn.ops import roi

    size = (args.output_size, args.output_size)
    scale, ratio, aligned = args.spatial_scale, args.sampling_ratio, args.aligned

    def tf_align(method):
        return lambda f, b, i: roi.roi_align(f, b, i, size, scale, ratio, aligned, method=method)

    def torch_align(f, rois):
        return tv_ops.roi_align(
            f, rois, size, spatial_scale=scale, sampling_ratio=ratio, aligned=aligned
        )

    def tf_pool(f, b, i):
        return roi.roi_pool(f, b, i, size, scale)

    def torch_pool(f, rois):
        return tv_ops.roi_pool(f, rois, size, spatial_scale=scale)

    def tf_precise(f, b, i):
        return roi.precise_roi_pool(f, b, i, size, scale)

    cases = []
    for method in roi.ROI_ALIGN_METHODS:
        cases += roi_op_cases(
            f"roi_align {method}",
            tf_align(method),
            torch_align,
            tf_in,
            torch_in,
            args,
            box_gradient=True,
        )
    cases += roi_op_cases(
        "roi_pool", tf_pool, torch_pool, tf_in, torch_in, args, box_gradient=False
    )
    if not args.skip_precise:
        cases += roi_op_cases(
            "precise_roi_pool", tf_precise, None, tf_in, torch_in, args, box_gradient=True
        )
    return cases


def nms_keep_values(args, count):
    keeps = []
    for keep in args.nms_keep:
        if keep != "all" and not (keep.isdigit() and int(keep) > 0):
            raise SystemExit(f"--nms-keep takes positive ints or 'all', got {keep!r}")
        value = count if keep == "all" else int(keep)
        if min(value, count) not in keeps:
            keeps.append(min(value, count))
    return keeps


def compare_nms(ours, theirs):
    indices, num_valid = ours[0].numpy(), int(ours[1])
    keep = theirs.numpy()
    expected = min(len(indices), len(keep))
    same = int(np.sum(indices[: min(num_valid, expected)] == keep[: min(num_valid, expected)]))
    ok = num_valid == expected and same == expected and np.all(indices[num_valid:] == -1)
    return {
        "quantity": "kept indices",
        "tfrcnn_valid": num_valid,
        "torchvision_kept": len(keep),
        "same_leading_indices": same,
        "compared": expected,
        "ok": bool(ok),
    }


def nms_cases(args, image_size):
    from tfrcnn.ops.nms import non_max_suppression_padded

    iou = args.nms_iou
    t_nms = torch_forward(lambda b, s: tv_ops.nms(b, s, iou))
    cases = []
    for count in args.nms_boxes:
        tf_in, torch_in = make_nms_inputs(args, count, image_size)
        for keep in nms_keep_values(args, count):
            tf_nms = tf.function(lambda b, s, k=keep: non_max_suppression_padded(b, s, k, iou))
            cases.append(
                Case(
                    f"nms {count} boxes",
                    f"forward, tfrcnn keeps <= {keep}",
                    lambda fn=tf_nms, d=tf_in: fn(d["boxes"], d["scores"]),
                    lambda d=torch_in: t_nms(d["boxes"], d["scores"]),
                    compare_nms,
                    note="torchvision keeps all",
                )
            )
    return cases


# --------------------------------------------------------------------------------------------------
# agreement and timing


def check_agreement(cases):
    checks = []
    for case in cases:
        if case.torch is None or case.compare is None:
            continue
        theirs = case.torch()
        checks.append({"op": case.op, "kind": case.kind, **case.compare(case.tfrcnn(), theirs)})
        if case.eager is not None:  # tells a graph-only discrepancy from one of the op itself
            check = case.compare(case.eager(), theirs)
            check["quantity"] += " (eager, not timed)"
            checks.append({"op": case.op, "kind": case.kind, **check})
    return checks


def timed_call(fn, pause):
    time.sleep(pause)
    start = time.perf_counter()
    result = fn()
    elapsed = time.perf_counter() - start
    del result  # freed outside the timed span, for both frameworks
    return elapsed * 1e3


def time_case(case, args):
    """Tracing + warm-up, then alternating rounds; fills ``case.times`` (ms lists by framework)."""
    players = {"tfrcnn": case.tfrcnn}
    if case.torch is not None:
        players["torchvision"] = case.torch
    case.tfrcnn()  # tf.function tracing, never timed
    for _ in range(args.warmup):
        for fn in players.values():
            timed_call(fn, 0.0)
    case.times = {name: [] for name in players}
    names = list(players)
    for round_ in range(args.repeats):
        order = names if round_ % 2 == 0 else names[::-1]
        for name in order:
            case.times[name].append(timed_call(players[name], args.pause))


def summary(times):
    if not times:
        return None
    quartiles = statistics.quantiles(times, n=4) if len(times) > 1 else [times[0]] * 3
    return {
        "median_ms": statistics.median(times),
        "min_ms": min(times),
        "q1_ms": quartiles[0],
        "q3_ms": quartiles[2],
        "times_ms": times,
    }


def result_rows(cases):
    rows = []
    for case in cases:
        ours = summary(case.times.get("tfrcnn"))
        theirs = summary(case.times.get("torchvision"))
        ratio = ours["median_ms"] / theirs["median_ms"] if theirs else None
        rows.append(
            {
                "op": case.op,
                "kind": case.kind,
                "tfrcnn": ours,
                "torchvision": theirs,
                "ratio": ratio,
                "note": case.note,
            }
        )
    return rows


# --------------------------------------------------------------------------------------------------
# output


def fmt(value, spec=".2f", empty="-"):
    return empty if value is None else format(value, spec)


def table_cells(row):
    theirs = row["torchvision"]
    return [
        row["op"],
        row["kind"],
        fmt(row["tfrcnn"]["median_ms"]),
        fmt(theirs and theirs["median_ms"]),
        fmt(row["ratio"]),
        row["note"],
    ]


HEADER = ["op", "pass", "tfrcnn ms", "torchvision ms", "tfrcnn/torch", "note"]


def text_table(rows):
    lines = [HEADER] + [table_cells(r) for r in rows]
    widths = [max(len(line[c]) for line in lines) for c in range(len(HEADER))]
    numeric = {2, 3, 4}
    out = []
    for n, line in enumerate(lines):
        cells = [
            cell.rjust(w) if c in numeric else cell.ljust(w)
            for c, (cell, w) in enumerate(zip(line, widths))
        ]
        out.append("  ".join(cells).rstrip())
        if n == 0:
            out.append("  ".join("-" * w for w in widths))
    return "\n".join(out)


def markdown_table(rows, settings):
    out = [
        "| " + " | ".join(HEADER) + " |",
        "|" + "|".join(":---" if c < 2 or c == 5 else "---:" for c in range(len(HEADER))) + "|",
    ]
    out += ["| " + " | ".join(table_cells(r)) + " |" for r in rows]
    out.append("")
    out.append(
        f"Median of {settings['protocol'].split(', ')[1]}; {settings['features']}; "
        f"{settings['ROIs']}; {settings['ROI op']}; NMS: {settings['NMS']}; "
        f"{settings['threads']}; {settings['versions']}; {settings['machine']}, at end "
        f"{settings['load average at end']}."
    )
    return "\n".join(out)


def check_lines(checks):
    lines = []
    for c in checks:
        status = "ok" if c["ok"] else "MISMATCH"
        if "max_abs_diff" in c:
            detail = (
                f"max |diff| {c['max_abs_diff']:.3g} (max |value| {c['max_abs_value']:.3g}, "
                f"tolerance {c['tolerance']:g})"
            )
        else:
            detail = (
                f"tfrcnn {c['tfrcnn_valid']} valid, torchvision kept "
                f"{c['torchvision_kept']}, first {c['compared']} equal: "
                f"{c['same_leading_indices']}"
            )
        lines.append(f"  {status:8} {c['op']} {c['kind']} {c['quantity']}: {detail}")
    return "\n".join(lines)


def main(argv=None):
    args = parse_args(argv)
    feature_shape = parse_dims(args.features, 4, "features")
    image_size = parse_dims(args.image_size, 2, "image-size")
    set_threads(args.threads)  # before TensorFlow runs anything
    settings = settings_of(args, feature_shape, image_size)
    for key, value in settings.items():
        print(f"{key:>10}: {value}")

    tf_in, torch_in = make_roi_inputs(args, feature_shape, image_size)
    cases = roi_cases(args, tf_in, torch_in) + nms_cases(args, image_size)
    checks = check_agreement(cases)
    print("\nagreement, tfrcnn (tf.function, as timed) vs torchvision, same inputs:")
    print(check_lines(checks))

    print(f"\ntiming {len(cases)} rows ...", flush=True)
    for case in cases:
        time_case(case, args)
    rows = result_rows(cases)
    settings["load average at end"] = " ".join(f"{v:.2f}" for v in os.getloadavg())
    print(f"\nload average at end: {settings['load average at end']}")
    print()
    print(text_table(rows))
    if args.markdown:
        print()
        print(markdown_table(rows, settings))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"settings": settings, "checks": checks, "results": rows}, f, indent=1)
        print(f"\nwritten to {args.json}")
    if not all(c["ok"] for c in checks):
        print("\nWARNING: some outputs disagree with torchvision beyond the tolerance (see above).")


if __name__ == "__main__":
    main()
