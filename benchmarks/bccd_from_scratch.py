"""Train a preset from random initialisation on BCCD trainval for a wall-clock budget, then
evaluate on BCCD test: COCO AP / AP50 (pycocotools), VOC mAP@0.5 (all-point), per-class AP50.

    python benchmarks/bccd_from_scratch.py                       # 25 minutes, small_fpn preset
    python benchmarks/bccd_from_scratch.py --minutes 5 --preset tiny --out runs/bccd-tiny

The peer this is compared with (torchvision fasterrcnn_mobilenet_v3_large_fpn, random init,
25 minutes on the same 2-core CPU, 640x480, AdamW, batch 2) reached AP50 0.820 and AP 0.510.
Every setting is printed, and written with the results to ``--out``/results.json.
"""

import argparse
import json
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def _time_cosine_class():
    import math
    import time

    import keras

    class TimeCosine(keras.callbacks.Callback):
        """Learning rate: linear warm-up over ``warmup_steps``, then a cosine from ``peak`` to
        ``peak * final_fraction`` over what is left of the wall-clock budget."""

        def __init__(self, peak, seconds, warmup_steps, final_fraction):
            super().__init__()
            self.peak, self.seconds = float(peak), float(seconds)
            self.warmup_steps, self.final = int(warmup_steps), float(final_fraction)
            self.step = 0
            self.train_start = self.cosine_start = None

        def on_train_begin(self, logs=None):
            self.train_start = time.perf_counter()

        def on_train_batch_begin(self, batch, logs=None):
            if self.step < self.warmup_steps:
                lr = self.peak * (self.step + 1) / self.warmup_steps
            else:
                now = time.perf_counter()
                if self.cosine_start is None:
                    self.cosine_start = now
                left = max(self.seconds - (self.cosine_start - self.train_start), 1.0)
                t = min((now - self.cosine_start) / left, 1.0)
                lr = self.peak * (self.final + (1 - self.final) * 0.5 * (1 + math.cos(math.pi * t)))
            self.model.optimizer.learning_rate.assign(lr)
            self.step += 1

    return TimeCosine


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--data", default=None, help="BCCD folder ($TFRCNN_BCCD or ../shared/datasets/bccd)"
    )
    parser.add_argument("--minutes", type=float, default=25.0, help="training wall-clock budget")
    parser.add_argument("--preset", default="small_fpn")
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--learning-rate", type=float, default=2e-3)
    parser.add_argument("--weight-decay", type=float, default=1e-4)
    parser.add_argument("--warmup-steps", type=int, default=100)
    parser.add_argument(
        "--final-lr-fraction",
        type=float,
        default=0.02,
        help="the cosine schedule runs over the time budget down to this fraction",
    )
    parser.add_argument("--min-side", type=int, default=None, help="default: the preset's")
    parser.add_argument("--max-side", type=int, default=None)
    parser.add_argument(
        "--multiscale", default="", help="e.g. 416,448,480,512: random shorter side"
    )
    parser.add_argument("--crop", action="store_true", help="random crop augmentation")
    parser.add_argument("--jitter", action="store_true", help="photometric jitter")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="FasterRCNN argument override, e.g. --set head_units=[256,256]",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="runs/bccd_from_scratch")
    args = parser.parse_args(argv)

    import keras

    from tfrcnn.cli import parse_overrides
    from tfrcnn.data import make_dataset, read_voc
    from tfrcnn.evaluation import collect_detections, evaluate_coco, evaluate_detections
    from tfrcnn.models import FasterRCNN
    from tfrcnn.training import NaNGuard, TimeLimit
    from tfrcnn.training.run import default_bccd_path

    TimeCosine = _time_cosine_class()

    data = args.data or default_bccd_path()
    if not os.path.isdir(data):
        print(f"BCCD not found at {data}: pass --data or set TFRCNN_BCCD", file=sys.stderr)
        return 2
    keras.utils.set_random_seed(args.seed)
    train_records, names, train_report = read_voc(data, "trainval")
    test_records, _, test_report = read_voc(data, "test", class_names=names)
    overrides = parse_overrides(args.set).get("model", {})
    overrides.update({k: v for k, v in parse_overrides(args.set).items() if k != "model"})
    if args.min_side:
        overrides["image_min_side"] = args.min_side
    if args.max_side:
        overrides["image_max_side"] = args.max_side
    model = FasterRCNN.from_preset(
        args.preset, num_classes=len(names), class_names=names, **overrides
    )
    d = model.size_divisor
    pad = tuple(-(-s // d) * d for s in (model.image_max_side, model.image_max_side))
    if model.image_min_side < model.image_max_side:
        # BCCD is landscape 480x640: pad to the resized landscape size, not a square
        pad = (-(-model.image_min_side // d) * d, -(-model.image_max_side // d) * d)
    augment = {}
    if args.multiscale:
        augment["min_sides"] = tuple(int(v) for v in args.multiscale.split(","))
    if args.crop:
        augment["crop"] = True
    if args.jitter:
        augment["jitter"] = True
    common = dict(
        min_side=model.image_min_side,
        max_side=model.image_max_side,
        pad_to=pad,
        size_divisor=d,
        max_boxes=64,
    )
    train_ds = make_dataset(
        train_records,
        batch_size=args.batch_size,
        training=True,
        seed=args.seed,
        augment=augment or None,
        **common,
    ).repeat()
    test_ds = make_dataset(test_records, batch_size=1, **common)
    # The learning rate follows a cosine over the wall-clock budget (after a linear warm-up in
    # steps), so the schedule ends with the budget whatever the step time of the machine.
    model.compile(
        optimizer=keras.optimizers.AdamW(
            args.learning_rate, weight_decay=args.weight_decay, clipnorm=10.0
        )
    )
    settings = {
        "preset": args.preset,
        "model": {k: v for k, v in model.get_config().items()},
        "minutes": args.minutes,
        "batch_size": args.batch_size,
        "optimizer": "AdamW",
        "learning_rate": args.learning_rate,
        "weight_decay": args.weight_decay,
        "warmup_steps": args.warmup_steps,
        "schedule": "linear warm-up, then cosine over the "
        f"time budget to {args.final_lr_fraction} of the peak",
        "augment": augment,
        "pad_to": pad,
        "seed": args.seed,
        "train_images": len(train_records),
        "test_images": len(test_records),
        "train_report": train_report.summary(),
        "test_report": test_report.summary(),
    }
    print(json.dumps({k: v for k, v in settings.items() if k != "model"}, indent=2, default=str))
    limit = TimeLimit(args.minutes)
    schedule = TimeCosine(
        args.learning_rate, args.minutes * 60.0, args.warmup_steps, args.final_lr_fraction
    )
    start = time.time()
    model.fit(
        train_ds,
        epochs=100000,
        steps_per_epoch=50,
        callbacks=[schedule, limit, NaNGuard()],
        verbose=2,
    )
    train_seconds = time.time() - start
    detections, ground_truths, seconds = collect_detections(model, test_ds)
    voc = evaluate_detections(detections, ground_truths, len(names), class_names=names)
    coco = evaluate_coco(detections, ground_truths, names, verbose=True)
    results = {
        "COCO_AP": coco["AP"],
        "COCO_AP50": coco["AP50"],
        "COCO_AP75": coco["AP75"],
        "VOC_mAP50": voc["mAP"],
        "per_class_AP50": {n: coco["per_class"][n]["AP50"] for n in names},
        "per_class_VOC_AP50": voc["per_class"],
        "steps": limit.steps,
        "train_seconds": train_seconds,
        "inference_seconds_per_image": seconds,
    }
    print(json.dumps(results, indent=2))
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump({"settings": settings, "results": results}, f, indent=2, default=str)
    model.save(os.path.join(args.out, "model.keras"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
