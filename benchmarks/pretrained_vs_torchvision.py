"""The same torchvision Faster R-CNN weights run by torchvision and, converted, by tfrcnn: inference
seconds an image at torchvision's default input size, batch 1, float32, side by side.

    python benchmarks/pretrained_vs_torchvision.py --json pretrained.json
    python benchmarks/pretrained_vs_torchvision.py --models mobilenet_v3_large_fpn --repeats 3

For each of ``--models``, a torch process builds torchvision's model (COCO architecture: 91 outputs,
torchvision's defaults: ``min_size=800, max_size=1333``, 1000 test proposals, score threshold 0.05,
100 detections) from ``--seed`` with ``weights=None, weights_backbone=None``, and saves its state
dict as ``{"model": state_dict}``; a TensorFlow process converts that file with
``tfrcnn.weights.torchvision.from_torchvision(path, preset=..., coco_unused="keep")`` (all 90
ids, so the scores are torchvision's exactly). Both then run the same weights on the same uint8 images
(``--images`` of ``--image-size``, 480x640 by default, which both resize to 800x1066): tfrcnn on the
raw uint8 image through the model's call compiled with ``tf.function`` (``tfrcnn``, the headline)
and through ``model.predict`` (``tfrcnn model.predict``, Keras's loop around the same call),
torchvision on the float [0, 1] tensor in eval mode under ``torch.no_grad()``.

A freshly initialised model gives every class a score near 1/91, below the 0.05 threshold, so it
would detect nothing and the postprocessing would be idle. The torch process therefore makes the
seeded model behave like a trained one before saving it (with the parity tests' harness,
tests/weights/torchvision_reference.py):
batch-norm statistics measured on two calibration images and then perturbed, and each predictor
(RPN logits and deltas, class logits, box deltas) rescaled and centred so that its outputs spread,
and the background logit raised until about ``CANDIDATES`` (class, proposal) scores an image pass
the threshold (a trained model scores most proposals as background; without this, thousands pass
and torchvision's postprocessing, whose cost grows with them, would be slower than with real weights).
Both sides then keep up to 100 detections an image, as with real COCO weights, and before timing
the script checks that they are the same detections: each matched one to one with the same class,
IoU > 0.99 and score within 1e-3; when both stop at 100, detections whose score ties with the
100th within 1e-3 may fall on either side of the cut. It prints the counts on each side, the
matches and the largest box and score differences of matched pairs.

Protocol (as ``speed_vs_torchvision.py``): each library runs in its own process with only its own
framework imported and ``--threads`` threads; tfrcnn's process calls
``tfrcnn.accel.configure_process()`` before importing TensorFlow. Each contender is warmed up
(``--warmup`` calls; a call runs every image once, batch 1), then the contenders take turns, one
call each a round, for ``--repeats`` rounds, the order reversed every other round, with a
``--pause`` between calls. Quoted: the median over rounds of a call's mean seconds an image, the
ratio tfrcnn / torchvision of the medians and the range of the per-round ratios, and each
process's peak resident set size at the end (framework, model, conversion, warm-up and timed
calls). The load average is printed before and after: other work on the machine slows both sides.
"""

import argparse
import json
import os
import shlex
import sys
import tempfile
import time

import numpy as np
from _workers import Worker, serve

# the parity tests' torch harness and its images (tests/weights), shared with this benchmark
sys.path.insert(
    1, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests", "weights")
)
from reference_images import make_image  # noqa: E402

# --models name -> (torchvision builder, tfrcnn preset)
MODELS = {
    "resnet50_fpn": ("fasterrcnn_resnet50_fpn", "torchvision_resnet50_fpn"),
    "mobilenet_v3_large_fpn": (
        "fasterrcnn_mobilenet_v3_large_fpn",
        "torchvision_mobilenet_v3_large_fpn",
    ),
    "resnet50_fpn_v2": ("fasterrcnn_resnet50_fpn_v2", "torchvision_resnet50_fpn_v2"),
    "mobilenet_v3_large_320_fpn": (
        "fasterrcnn_mobilenet_v3_large_320_fpn",
        "torchvision_mobilenet_v3_large_320_fpn",
    ),
}
COCO_OUTPUTS = 91  # torchvision's COCO head: background + 90 category ids
CALIBRATION_SIZES = ((512, 512), (448, 576))  # (height, width)
# (class, proposal) scores above torchvision's box_score_thresh an image, as a trained detector
# gives on a busy photograph; the rest of the proposals are background
CANDIDATES = 500
SCORE_THRESHOLD = 0.05
MATCH_IOU = 0.99
MATCH_SCORE = 1e-3
MAX_DETECTIONS = 100
TORCHVISION = "torchvision"
TFRCNN = "tfrcnn"
TFRCNN_PREDICT = "tfrcnn model.predict"


# ------------------------------------------------------------------------------------------------
# torchvision (torch process only)
def build_torchvision(torch, torchvision, arch, seed, calibration, checkpoint):
    """torchvision's ``arch`` from ``seed``, made to behave like a trained model (module
    docstring), in eval mode; its state dict saved to ``checkpoint`` as ``{"model": ...}``."""
    import torchvision_reference as reference  # the parity tests' harness (tests/weights)

    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    model = reference.build(arch, COCO_OUTPUTS)
    reference.calibrate(model, calibration, generator)
    raise_background(torch, model, [to_tensor(torch, image) for image in calibration])
    model.eval()
    torch.save({"model": model.state_dict()}, checkpoint)
    return model


def to_tensor(torch, image):
    """uint8 HWC -> float32 CHW in [0, 1], torchvision's input."""
    return torch.from_numpy(image).permute(2, 0, 1).float() / 255.0


def raise_background(torch, model, images):
    """Adds :func:`background_shift` of the calibration images' class logits to the background
    logit's bias."""
    predictor = model.roi_heads.box_predictor.cls_score
    inputs = []
    hook = predictor.register_forward_hook(lambda _, args, output: inputs.append(args[0].detach()))
    model.eval()
    with torch.no_grad():
        for image in images:
            model([image])
        hook.remove()
        logits = predictor(torch.cat(inputs))
        predictor.bias[0] += background_shift(torch, logits, len(images))


def background_shift(torch, logits, images):
    """The amount added to the background logit that leaves ``CANDIDATES`` (class, proposal)
    scores above the score threshold an image, on the calibration images' ``logits``."""

    def candidates(shift):
        shifted = logits.clone()
        shifted[:, 0] += shift
        return int((torch.softmax(shifted, -1)[:, 1:] > SCORE_THRESHOLD).sum()) / images

    low, high = 0.0, 50.0  # candidates(shift) falls as the shift grows
    for _ in range(40):
        middle = (low + high) / 2
        low, high = (middle, high) if candidates(middle) > CANDIDATES else (low, middle)
    return high


# ------------------------------------------------------------------------------------------------
# one process a library
def worker(connection, library, threads):
    """A library's own process: only its framework is imported. Serves the parent's commands
    until "exit" (:func:`_workers.serve`)."""
    from speed_vs_torchvision import import_frameworks, peak_rss_mb

    # tfrcnn: import_frameworks calls tfrcnn.accel.configure_process() before TensorFlow
    fw = import_frameworks(torch=library == TORCHVISION, tensorflow=library == TFRCNN)
    if library == TORCHVISION:
        fw["torch"].set_num_threads(threads)
    else:
        fw["tf"].config.threading.set_intra_op_parallelism_threads(threads)
        fw["tf"].config.threading.set_inter_op_parallelism_threads(threads)
    state = {"runners": {}, "count": 0}

    def handle(command, payload):
        runners = state["runners"]
        if command == "build":
            build = torchvision_runners if library == TORCHVISION else tfrcnn_runners
            state["runners"], state["count"] = build(fw, **payload), len(payload["images"])
            return sorted(state["runners"])
        if command == "detect":  # payload: runner name -> detections of every image
            return [runners[payload](i)[1] for i in range(state["count"])]
        if command == "call":  # payload: runner name -> seconds of each image
            seconds = []
            for i in range(state["count"]):
                start = time.perf_counter()
                runners[payload](i)
                seconds.append(time.perf_counter() - start)
            return seconds
        if command == "rss":
            return peak_rss_mb()
        raise ValueError(f"unknown command {command!r}")

    serve(connection, library, handle)


def torchvision_runners(fw, arch, seed, calibration, images, checkpoint, **_):
    """Builds and saves the model (:func:`build_torchvision`); ``{TORCHVISION: run}`` where
    ``run(i)`` infers image ``i`` and returns ``(outputs, detections)``."""
    torch, torchvision = fw["torch"], fw["torchvision"]
    model = build_torchvision(torch, torchvision, arch, seed, calibration, checkpoint)
    tensors = [to_tensor(torch, image) for image in images]

    def run(i):
        with torch.no_grad():
            (out,) = model([tensors[i]])
        return out, {
            "boxes": out["boxes"].numpy(),  # x1, y1, x2, y2, original pixels
            "scores": out["scores"].numpy(),
            "labels": out["labels"].numpy(),  # torchvision's rows: COCO ids 1..90
        }

    return {TORCHVISION: run}


def tfrcnn_runners(fw, preset, images, checkpoint, **_):
    """Converts the checkpoint; ``{TFRCNN: run, TFRCNN_PREDICT: run}``, ``run(i)`` returning
    ``(outputs, detections)`` in torchvision's conventions (x1, y1, x2, y2; labels class + 1)."""
    tf = fw["tf"]
    from tfrcnn.weights.torchvision import from_torchvision

    model = from_torchvision(checkpoint, preset=preset, coco_unused="keep")
    infer = tf.function(lambda x: model(x, training=False))
    batches = [image[None] for image in images]  # raw uint8 [1, H, W, 3]
    constants = [tf.constant(batch) for batch in batches]

    def detections(out):
        n = int(out["num_detections"][0])
        return {
            "boxes": np.asarray(out["detection_boxes"])[0, :n][:, [1, 0, 3, 2]],
            "scores": np.asarray(out["detection_scores"])[0, :n],
            "labels": np.asarray(out["detection_classes"])[0, :n] + 1,
        }

    def compiled(i):
        out = {k: v.numpy() for k, v in infer(constants[i]).items()}
        return out, detections(out)

    def predict(i):
        out = model.predict(batches[i], verbose=0)
        return out, detections(out)

    return {TFRCNN: compiled, TFRCNN_PREDICT: predict}


def box_iou(a, b):
    """IoU of every box of ``a`` [N, 4] with every box of ``b`` [M, 4] (x1, y1, x2, y2)."""
    area = lambda x: (x[:, 2] - x[:, 0]) * (x[:, 3] - x[:, 1])  # noqa: E731
    lo = np.maximum(a[:, None, :2], b[None, :, :2])
    hi = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(hi - lo, 0, None), axis=-1)
    return inter / np.maximum(area(a)[:, None] + area(b)[None, :] - inter, 1e-12)


def match_detections(mine, peer):
    """Matches ``mine`` to ``peer`` one to one: same label, IoU > ``MATCH_IOU``, score within
    ``MATCH_SCORE``. When both hold ``MAX_DETECTIONS``, a detection scored within ``MATCH_SCORE``
    of the lowest kept score may go unmatched (ties at the top-k cut). Returns the counts, the
    largest box (pixels) and score differences of matched pairs, and ``agree``."""
    n, m = len(mine["scores"]), len(peer["scores"])
    overlaps = box_iou(mine["boxes"], peer["boxes"]) if n and m else np.zeros((n, m))
    at_cut = -np.inf
    if n == m == MAX_DETECTIONS:
        at_cut = min(mine["scores"].min(), peer["scores"].min()) + MATCH_SCORE
    unmatched = set(range(m))
    matched, box_diff, score_diff, unmatched_mine = 0, 0.0, 0.0, []
    for k in range(n):
        candidates = [
            j
            for j in unmatched
            if overlaps[k, j] > MATCH_IOU
            and peer["labels"][j] == mine["labels"][k]
            and abs(peer["scores"][j] - mine["scores"][k]) <= MATCH_SCORE
        ]
        if not candidates:
            unmatched_mine.append(k)
            continue
        j = max(candidates, key=lambda j: overlaps[k, j])
        unmatched.discard(j)
        matched += 1
        box_diff = max(box_diff, float(np.abs(mine["boxes"][k] - peer["boxes"][j]).max()))
        score_diff = max(score_diff, float(abs(mine["scores"][k] - peer["scores"][j])))
    outside_cut = [k for k in unmatched_mine if mine["scores"][k] > at_cut]
    outside_cut += [j for j in unmatched if peer["scores"][j] > at_cut]
    return {
        "tfrcnn": n,
        "torchvision": m,
        "matched": matched,
        "unmatched_at_cut": len(unmatched_mine) + len(unmatched) - len(outside_cut),
        "max_box_difference_px": box_diff,
        "max_score_difference": score_diff,
        "agree": n == m and not outside_cut,
    }


# ------------------------------------------------------------------------------------------------
def load_average():
    return [round(x, 2) for x in os.getloadavg()]


def settings_text(args):
    from speed_vs_torchvision import machine_text

    return (
        f"{machine_text()}; {args.threads} threads a library, each in its own process; "
        f"float32, batch 1, "
        f"{args.images} images of {args.image_size} (uint8), torchvision's default resize "
        f"(800/1333), seed {args.seed}, weights converted from torchvision's state dict; "
        f"warm-up {args.warmup}, {args.repeats} alternating rounds, pause {args.pause} s; medians"
    )


def time_model(args, name, images, calibration, folder):
    """One model: build both sides, check their detections, time them. Returns the result row."""
    arch, preset = MODELS[name]
    checkpoint = os.path.join(folder, f"{arch}.pth")
    build = dict(
        arch=arch,
        preset=preset,
        seed=args.seed,
        calibration=calibration,
        images=images,
        checkpoint=checkpoint,
    )
    peer = Worker(worker, (TORCHVISION, args.threads))
    processes = [peer]
    try:
        peer.ask("build", build)  # writes the checkpoint the TensorFlow process converts
        mine = Worker(worker, (TFRCNN, args.threads))
        processes.append(mine)
        mine.ask("build", build)
        contenders = [(TFRCNN, mine), (TFRCNN_PREDICT, mine), (TORCHVISION, peer)]

        reference = peer.ask("detect", TORCHVISION)
        agreement = {}
        for runner in (TFRCNN, TFRCNN_PREDICT):
            found = mine.ask("detect", runner)
            agreement[runner] = [match_detections(a, b) for a, b in zip(found, reference)]
            for i, check in enumerate(agreement[runner]):
                print(
                    f"    {runner:22s} image {i}: {check['tfrcnn']} detections, torchvision "
                    f"{check['torchvision']}, matched {check['matched']} (+{check['unmatched_at_cut']}"
                    f" tied at the cut), max box difference {check['max_box_difference_px']:.2e} "
                    f"px, max score difference {check['max_score_difference']:.2e}: "
                    f"{'same detections' if check['agree'] else 'DIFFERENT'}",
                    flush=True,
                )

        for _ in range(args.warmup):
            for runner, process in contenders:
                process.ask("call", runner)
        times = {runner: [] for runner, _ in contenders}
        for r in range(args.repeats):
            for runner, process in contenders if r % 2 == 0 else contenders[::-1]:
                time.sleep(args.pause)
                times[runner].append(float(np.mean(process.ask("call", runner))))
        memory = {TFRCNN: mine.ask("rss"), TORCHVISION: peer.ask("rss")}
    finally:
        for process in processes:
            process.close()

    medians = {runner: float(np.median(t)) for runner, t in times.items()}
    per_round = {
        runner: [a / b for a, b in zip(t, times[TORCHVISION])]
        for runner, t in times.items()
        if runner != TORCHVISION
    }
    return {
        "model": name,
        "torchvision": arch,
        "preset": preset,
        "input_size": list(images[0].shape[:2]),
        "seconds_per_image": medians,
        "rounds_seconds_per_image": times,
        "ratio_to_torchvision": {
            runner: medians[runner] / medians[TORCHVISION] for runner in per_round
        },
        "ratio_per_round": {runner: [min(v), max(v)] for runner, v in per_round.items()},
        "peak_rss_mb": memory,
        "detections": agreement,
        "same_detections": all(c["agree"] for checks in agreement.values() for c in checks),
    }


def print_table(rows):
    print(
        "| model | tfrcnn s/img | tfrcnn `model.predict` s/img | torchvision s/img | **ratio** "
        "| ratio per round | ratio `model.predict` | peak RSS MB (tfrcnn / tv) | same detections |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        s, ratio = r["seconds_per_image"], r["ratio_to_torchvision"]
        low, high = r["ratio_per_round"][TFRCNN]
        counts = [c["tfrcnn"] for c in r["detections"][TFRCNN]]
        same = "yes" if r["same_detections"] else "NO"
        print(
            f"| `{r['torchvision']}` | {s[TFRCNN]:.3f} | {s[TFRCNN_PREDICT]:.3f} | "
            f"{s[TORCHVISION]:.3f} | **{ratio[TFRCNN]:.2f}** | {low:.2f}-{high:.2f} | "
            f"{ratio[TFRCNN_PREDICT]:.2f} | {r['peak_rss_mb'][TFRCNN]:,.0f} / "
            f"{r['peak_rss_mb'][TORCHVISION]:,.0f} | {same} ({'/'.join(map(str, counts))}) |"
        )


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--models",
        default="resnet50_fpn,mobilenet_v3_large_fpn",
        help=f"comma separated, of {', '.join(MODELS)}",
    )
    parser.add_argument("--images", type=int, default=3, help="images a call, one at a time")
    parser.add_argument("--image-size", default="480x640", help="HEIGHTxWIDTH of every image")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--pause", type=float, default=0.5)
    parser.add_argument("--json", help="write every number to this file")
    args = parser.parse_args(argv)
    names = [n for n in args.models.split(",") if n]
    unknown = [n for n in names if n not in MODELS]
    if unknown:
        parser.error(f"unknown model {unknown[0]!r}; choose from {', '.join(MODELS)}")
    height, width = (int(v) for v in args.image_size.lower().split("x"))

    command = "python " + " ".join(shlex.quote(a) for a in [sys.argv[0], *(argv or sys.argv[1:])])
    print(command)
    settings = settings_text(args)
    print(settings, flush=True)
    load = {"start": load_average()}
    print(f"load average at the start (1, 5, 15 min): {load['start']}", flush=True)

    rng = np.random.default_rng(args.seed)
    calibration = [make_image(rng, h, w) for h, w in CALIBRATION_SIZES]
    images = [make_image(rng, height, width) for _ in range(args.images)]
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for name in names:
            print(f"{name}", flush=True)
            row = time_model(args, name, images, calibration, folder)
            rows.append(row)
            for runner, seconds in row["seconds_per_image"].items():
                ratio = seconds / row["seconds_per_image"][TORCHVISION]
                print(f"    {runner:22s} {seconds:7.3f} s/image   ratio {ratio:5.2f}", flush=True)
            print(f"    peak RSS MB: {json.dumps(row['peak_rss_mb'])}", flush=True)
    load["end"] = load_average()
    print(f"load average at the end (1, 5, 15 min): {load['end']}\n")
    print(command + "\n")
    print(settings + "\n")
    print_table(rows)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {"command": command, "settings": settings, "load_average": load, "rows": rows},
                f,
                indent=2,
            )


if __name__ == "__main__":
    main()
