"""The ``tfrcnn`` command: train, evaluate, predict, convert, export.

    tfrcnn train                                  # tiny preset on the built-in synthetic shapes
    tfrcnn train --preset tiny --epochs 3 --set model.head_units=[128,128]
    tfrcnn evaluate runs/demo/model.keras         # VOC and COCO AP on the held-out synthetic split
    tfrcnn convert --format voc --source ../shared/datasets/bccd --split trainval --output out/bccd
    tfrcnn export runs/demo/model.keras --format saved_model --output savedmodels/demo
    tfrcnn predict IMAGE [IMAGE ...] --model runs/demo/model.keras --out predictions/

A user error (missing file, unknown preset, bad override) prints one line and exits with status 2.
"""

import argparse
import json
import logging
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")


class UserError(Exception):
    """A mistake in the command line or its files: reported in one line, no traceback."""


def _parse_value(text):
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def parse_overrides(pairs):
    """``["epochs=3", "model.head_units=[128,128]"]`` -> ``{"epochs": 3, "model": {...}}``."""
    overrides = {}
    for pair in pairs or []:
        if "=" not in pair:
            raise UserError(f"bad --set {pair!r}: expected key=value, e.g. --set epochs=3")
        key, value = pair.split("=", 1)
        key = key.strip()
        if not key:
            raise UserError(f"bad --set {pair!r}: empty key")
        if key.startswith("model."):
            overrides.setdefault("model", {})[key[len("model."):]] = _parse_value(value)
        else:
            overrides[key] = _parse_value(value)
    return overrides


def _load_config_file(path):
    if not os.path.exists(path):
        raise UserError(f"config file not found: {path}")
    with open(path) as f:
        text = f.read()
    if path.endswith((".yaml", ".yml")):
        import yaml
        data = yaml.safe_load(text) or {}
    else:
        data = json.loads(text)
    if not isinstance(data, dict):
        raise UserError(f"config file {path} must hold a mapping of settings")
    return data


def _merge(base, extra):
    out = dict(base)
    for key, value in extra.items():
        if key == "model" and isinstance(value, dict):
            out["model"] = {**out.get("model", {}), **value}
        else:
            out[key] = value
    return out


def _load_model(path):
    if not os.path.exists(path):
        raise UserError(f"model not found: {path}")
    if not path.endswith(".keras"):
        raise UserError(f"unsupported model file {path}: expected a .keras file")
    import keras
    import tfrcnn  # noqa: F401  (registers the layers)
    return keras.models.load_model(path)


def cmd_train(args):
    from tfrcnn.training.run import resolve_settings, train
    overrides = {}
    if args.config:
        overrides = _merge(overrides, _load_config_file(args.config))
    for key in ("preset", "data", "data_path", "strategy", "precision", "epochs", "steps_per_epoch",
                "batch_size", "learning_rate", "seed"):
        value = getattr(args, key)
        if value is not None:
            overrides[key] = value
    overrides = _merge(overrides, parse_overrides(args.set))
    try:
        settings = resolve_settings(overrides)
    except ValueError as e:
        raise UserError(str(e)) from None
    if args.resume:
        run_dir = args.resume
        if not os.path.isdir(run_dir):
            raise UserError(f"run folder not found: {run_dir}")
        overrides = {k: v for k, v in overrides.items() if k == "epochs"}
    else:
        run_dir = args.run_dir or os.path.join(
            "runs", f"{settings['preset']}-{time.strftime('%Y%m%d-%H%M%S')}")
    print(f"tfrcnn train: preset {settings['preset']}, data {settings['data']}, run folder {run_dir}"
          + (" (resuming)" if args.resume else ""))
    try:
        metrics = train(run_dir, overrides, verbose=args.verbose, resume=bool(args.resume))
    except FloatingPointError as e:
        return _training_stopped(e, run_dir)
    except (TypeError, ValueError) as e:
        message = str(e)
        if ("unexpected keyword" in message or "unknown" in message.lower()
                or "nothing to resume" in message or "--resume" in message):
            raise UserError(message) from None
        raise
    print(json.dumps(metrics, indent=2))
    print(f"final mAP@0.5 (VOC, all-point) on the held-out split: {metrics['mAP']:.4f}")
    return 0


def _training_stopped(error, run_dir):
    """One line for a run that NaNGuard stopped, naming the last good checkpoint; exit status 1."""
    checkpoint = os.path.join(run_dir, "checkpoints", "last.keras")
    kept = (f"the last good checkpoint is {checkpoint}" if os.path.exists(checkpoint)
            else "no checkpoint was written yet")
    message = str(error).split(". Training stopped")[0]
    print(f"tfrcnn train: stopped: {message}; {kept}",
          file=sys.stderr)
    return 1


def cmd_evaluate(args):
    model = _load_model(args.model)
    from tfrcnn.data import make_dataset, read_voc, synthetic_splits
    from tfrcnn.evaluation import collect_detections, evaluate_coco, evaluate_detections
    if args.data == "synthetic":
        _, records = synthetic_splits(num_train=0, num_val=args.num_val, seed=args.seed)
    elif args.data in ("voc", "bccd"):
        from tfrcnn.training.run import default_bccd_path
        path = args.data_path or (default_bccd_path() if args.data == "bccd" else None)
        if not path or not os.path.isdir(path):
            raise UserError(f"dataset folder not found: {path}")
        names = list(model.class_names) if model.class_names else None
        try:
            records, _, _ = read_voc(path, args.split, class_names=names)
        except (ValueError, FileNotFoundError) as e:
            raise UserError(str(e)) from None
    else:
        raise UserError(f"unknown data {args.data!r}: use synthetic, bccd or voc")
    pad = (model.image_max_side, model.image_max_side)
    ds = make_dataset(records, batch_size=args.batch_size, min_side=model.image_min_side,
                      max_side=model.image_max_side, pad_to=pad, size_divisor=model.size_divisor)
    names = list(model.class_names) if model.class_names else [str(i) for i in range(model.num_classes)]
    detections, ground_truths, seconds = collect_detections(model, ds,
                                                            progress=sys.stdout.isatty())
    voc = evaluate_detections(detections, ground_truths, model.num_classes, class_names=names,
                              use_07_metric=args.use_07_metric)
    coco = evaluate_coco(detections, ground_truths, names)
    metric = "VOC2007 11-point" if args.use_07_metric else "all-point"
    print(f"{len(records)} images, {seconds:.3f} s per image")
    print(f"VOC mAP@0.5 ({metric}): {voc['mAP']:.4f}")
    print("COCO: " + ", ".join(f"{k} {coco[k]:.4f}" for k in ("AP", "AP50", "AP75", "AP_small",
                                                             "AP_medium", "AP_large", "AR100")))
    print(f"{'class':>12s} {'VOC AP50':>9s} {'COCO AP50':>10s} {'COCO AP':>8s}")
    for name in names:
        print(f"{name:>12s} {voc['per_class'][name]:9.4f} {coco['per_class'][name]['AP50']:10.4f} "
              f"{coco['per_class'][name]['AP']:8.4f}")
    if args.pr_curves:
        from tfrcnn.visualize import plot_pr_curves
        plot_pr_curves(voc, names, args.pr_curves)
        print(f"PR curves -> {args.pr_curves}")
    if args.proposals:
        from tfrcnn.evaluation.proposals import (format_recall_table, plot_recall_curves,
                                                 proposal_recall, rpn_proposals,
                                                 selective_search_proposals)
        subset = records[: args.max_images]
        gts = [r["boxes"] for r in subset]
        results = {}
        if model.proposal_source == "rpn":
            boxes, secs = rpn_proposals(model, subset)
            results["RPN"] = dict(proposal_recall(boxes, gts), seconds=secs)
        if args.selective_search:
            try:
                boxes, secs = selective_search_proposals(subset)
            except ImportError as e:
                raise UserError(str(e)) from None
            results["selective search"] = dict(proposal_recall(boxes, gts), seconds=secs)
        print(format_recall_table(results))
        if args.plot_recall:
            plot_recall_curves(results, args.plot_recall)
            print(f"recall curves -> {args.plot_recall}")
    return 0


def cmd_convert(args):
    from tfrcnn.data.tfrecord import convert_to_tfrecord
    if not os.path.exists(args.source):
        raise UserError(f"source not found: {args.source}")
    try:
        paths, names, report = convert_to_tfrecord(args.format, args.source, args.output,
                                                   num_shards=args.shards, split=args.split,
                                                   image_dir=args.image_dir)
    except (ValueError, FileNotFoundError) as e:
        raise UserError(str(e)) from None
    print(report.summary())
    print(f"classes: {', '.join(names)}")
    for path in paths:
        print(path)
    return 0


def cmd_export(args):
    model = _load_model(args.model)
    from tfrcnn import export
    if args.format == "saved_model":
        path = export.saved_model(model, args.output)
        print(f"SavedModel -> {path}")
    else:
        size = tuple(int(v) for v in args.input_size.split("x")) if args.input_size else None
        report = export.tflite(model, args.output, quantization=args.quantization, input_size=size)
        if model.class_names:
            sidecar = os.path.splitext(args.output)[0] + ".class_names.txt"
            with open(sidecar, "w") as f:
                f.write("\n".join(model.class_names))
        print(json.dumps({k: v for k, v in report.items()}, indent=2, default=str))
    return 0


def load_predictor(path):
    """A function ``uint8 image [H, W, 3] -> outputs dict (numpy, batch of 1)`` and the class
    names, for a ``.keras`` file, a SavedModel folder or a ``.tflite`` file."""
    import numpy as np

    if not os.path.exists(path):
        raise UserError(f"model not found: {path}")
    if os.path.isdir(path):
        if not os.path.exists(os.path.join(path, "saved_model.pb")):
            raise UserError(f"{path} is a folder but not a SavedModel (no saved_model.pb)")
        import tensorflow as tf
        loaded = tf.saved_model.load(path)
        serve = loaded.signatures["serving_default"]
        names = [n.decode() for n in loaded.class_names.numpy()]

        def run(image):
            return {k: v.numpy() for k, v in serve(images=tf.constant(image[None])).items()}
        return run, names
    if path.endswith(".tflite"):
        from PIL import Image

        from tfrcnn.export.tflite import run_tflite
        import tensorflow as tf
        interpreter = tf.lite.Interpreter(model_path=path)
        runner = interpreter.get_signature_runner("serving_default")
        height, width = [int(v) for v in runner.get_input_details()["images"]["shape"][1:3]]
        sidecar = os.path.splitext(path)[0] + ".class_names.txt"
        names = open(sidecar).read().split("\n") if os.path.exists(sidecar) else None

        def run(image):
            h, w = image.shape[:2]
            resized = np.asarray(Image.fromarray(image).resize((width, height), Image.BILINEAR))
            out = run_tflite(path, resized[None])
            scale = np.array([h / height, w / width, h / height, w / width], np.float32)
            out["detection_boxes"] = out["detection_boxes"] * scale
            return out
        return run, names
    model = _load_model(path)
    names = list(model.class_names) if model.class_names else None
    return (lambda image: model.predict(image[None], verbose=0)), names


def cmd_predict(args):
    import numpy as np

    from tfrcnn.data.images import ImageReadError, load_image
    from tfrcnn.visualize import draw_boxes
    for path in args.images:
        if not os.path.exists(path):
            raise UserError(f"image not found: {path}")
    run, names = load_predictor(args.model)
    os.makedirs(args.out, exist_ok=True)
    iterator = args.images
    if len(args.images) > 1 and sys.stderr.isatty():
        import keras
        bar = keras.utils.Progbar(len(args.images), unit_name="image")
    else:
        bar = None
    for i, path in enumerate(iterator):
        try:
            image = load_image(path)
        except ImageReadError as e:
            raise UserError(str(e)) from None
        out = run(image)
        n = int(out["num_detections"][0])
        keep = [j for j in range(n) if out["detection_scores"][0][j] >= args.score_threshold]
        boxes = np.asarray(out["detection_boxes"][0])[keep]
        classes = np.asarray(out["detection_classes"][0]).astype(int)[keep]
        scores = np.asarray(out["detection_scores"][0])[keep]
        stem = os.path.splitext(os.path.basename(path))[0]
        draw_boxes(image, boxes, classes, scores, names).save(os.path.join(args.out, stem + ".png"))
        detections = [{"box_yxyx": [round(float(v), 2) for v in b], "class_id": int(c),
                       "class_name": names[int(c)] if names else str(int(c)), "score": float(s)}
                      for b, c, s in zip(boxes, classes, scores)]
        with open(os.path.join(args.out, stem + ".json"), "w") as f:
            json.dump({"image": path, "detections": detections}, f, indent=2)
        if bar is not None:
            bar.update(i + 1)
        else:
            print(f"{path}: {len(detections)} detections -> {os.path.join(args.out, stem + '.png')}")
    return 0


def build_parser():
    parser = argparse.ArgumentParser(prog="tfrcnn", description="Faster R-CNN for TensorFlow 2 / Keras 3.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train a model and write a run folder",
                       description="Train a preset on the built-in data; writes checkpoints, the "
                                   "history, the resolved configuration and the final mAP.")
    p.add_argument("--preset", help="preset name (default tiny): vgg16, zf, resnet50_c4, "
                                    "resnet50_fpn, mobilenet_v3_fpn, tiny")
    p.add_argument("--config", help="a YAML or JSON file of run settings (model settings under 'model')")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a setting, e.g. --set epochs=3 --set model.head_units=[128,128]")
    p.add_argument("--data", help="synthetic (default), bccd (the shared BCCD set) or voc")
    p.add_argument("--data-path", help="a Pascal VOC folder for --data voc (or bccd)")
    p.add_argument("--strategy", choices=("default", "mirrored", "multi_worker"),
                   help="tf.distribute strategy (multi_worker reads TF_CONFIG)")
    p.add_argument("--precision", choices=("float32", "mixed_bfloat16", "mixed_float16", "auto"),
                   help="compute dtype (default float32); auto: mixed_float16 on a GPU, "
                        "mixed_bfloat16 on a CPU with bf16 (AVX512-BF16/AMX), else float32")
    p.add_argument("--epochs", type=int)
    p.add_argument("--steps-per-epoch", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--learning-rate", type=float)
    p.add_argument("--seed", type=int)
    p.add_argument("--run-dir", help="output folder (default runs/<preset>-<time>)")
    p.add_argument("--resume", metavar="RUN_DIR",
                   help="continue an interrupted run from its last checkpoint (same settings; "
                        "--epochs may extend it)")
    p.add_argument("--verbose", type=int, default=1, help="Keras progress: 0 silent, 1 bar, 2 line")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("evaluate", help="VOC and COCO metrics of a saved model",
                       description="Evaluate a .keras model: VOC AP@0.5 and COCO AP (pycocotools) "
                                   "per class; optionally PR curves and RPN proposal recall.")
    p.add_argument("model", help="a .keras file")
    p.add_argument("--data", default="synthetic", help="synthetic (held-out split), bccd or voc")
    p.add_argument("--data-path", help="a Pascal VOC folder (for --data voc or bccd)")
    p.add_argument("--split", default="test", help="VOC split name (default test)")
    p.add_argument("--num-val", type=int, default=200, help="synthetic images")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--use-07-metric", action="store_true", help="VOC2007 11-point AP")
    p.add_argument("--pr-curves", metavar="PNG", help="write per-class PR curves to this PNG")
    p.add_argument("--proposals", action="store_true",
                   help="also print RPN proposal recall at 300/1000/2000 proposals")
    p.add_argument("--selective-search", action="store_true",
                   help="with --proposals: also selective search (opencv-contrib-python-headless)")
    p.add_argument("--plot-recall", metavar="PNG", help="with --proposals: recall-vs-IoU curves")
    p.add_argument("--max-images", type=int, default=None, help="images for --proposals")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("convert", help="VOC / COCO to sharded TFRecords (TF OD API keys)",
                       description="Convert a Pascal VOC folder or a COCO instances JSON to "
                                   "TFRecord shards with the TensorFlow Object Detection API keys.")
    p.add_argument("--format", required=True, choices=("voc", "coco"))
    p.add_argument("--source", required=True, help="VOC folder, or COCO JSON file")
    p.add_argument("--image-dir", help="COCO image folder")
    p.add_argument("--split", help="VOC split (default trainval)")
    p.add_argument("--output", required=True, help="output prefix, e.g. data/bccd-train")
    p.add_argument("--shards", type=int, default=1)
    p.set_defaults(func=cmd_convert)

    p = sub.add_parser("export", help="export a model to SavedModel or TFLite",
                       description="Export a .keras model (atomic write).")
    p.add_argument("model", help="a .keras file")
    p.add_argument("--format", choices=("saved_model", "tflite"), default="saved_model")
    p.add_argument("--output", required=True, help="SavedModel folder or .tflite file")
    p.add_argument("--quantization", default="float32",
                   choices=("float32", "float16", "dynamic_int8", "int8"))
    p.add_argument("--input-size", help="TFLite fixed input HxW, e.g. 192x192")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("predict", help="detect objects in images",
                       description="Draw detections on each image (PNG) and write them as JSON.")
    p.add_argument("images", nargs="+", help="image files")
    p.add_argument("--model", required=True, help="a .keras file, a SavedModel folder or a .tflite file")
    p.add_argument("--out", default="predictions", help="output folder")
    p.add_argument("--score-threshold", type=float, default=0.5)
    p.set_defaults(func=cmd_predict)
    return parser


def main(argv=None):
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except UserError as e:
        print(f"tfrcnn {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
