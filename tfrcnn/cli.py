"""The ``tfrcnn`` command: train, evaluate, predict.

    tfrcnn train                                  # tiny preset on the built-in synthetic shapes
    tfrcnn train --preset tiny --epochs 3 --set model.head_units=[128,128]
    tfrcnn evaluate runs/demo/model.keras         # VOC mAP@0.5 on the held-out synthetic split
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
    for key in ("preset", "epochs", "steps_per_epoch", "batch_size", "learning_rate", "seed"):
        value = getattr(args, key)
        if value is not None:
            overrides[key] = value
    overrides = _merge(overrides, parse_overrides(args.set))
    try:
        settings = resolve_settings(overrides)
    except ValueError as e:
        raise UserError(str(e)) from None
    run_dir = args.run_dir or os.path.join("runs", f"{settings['preset']}-{time.strftime('%Y%m%d-%H%M%S')}")
    print(f"tfrcnn train: preset {settings['preset']}, data {settings['data']}, run folder {run_dir}")
    try:
        metrics = train(run_dir, overrides, verbose=args.verbose)
    except (TypeError, ValueError) as e:
        if "unexpected keyword" in str(e) or "unknown" in str(e).lower():
            raise UserError(str(e)) from None
        raise
    print(json.dumps(metrics, indent=2))
    print(f"final mAP@0.5 (VOC, all-point) on the held-out split: {metrics['mAP']:.4f}")
    return 0


def cmd_evaluate(args):
    model = _load_model(args.model)
    from tfrcnn.data import make_dataset, synthetic_splits
    from tfrcnn.evaluation import evaluate_model
    if args.data != "synthetic":
        raise UserError(f"unknown data {args.data!r}: the built-in choice is 'synthetic'")
    _, val = synthetic_splits(num_train=0, num_val=args.num_val, seed=args.seed)
    pad = (model.image_max_side, model.image_max_side)
    ds = make_dataset(val, batch_size=args.batch_size, min_side=model.image_min_side,
                      max_side=model.image_max_side, pad_to=pad, size_divisor=model.size_divisor)
    result = evaluate_model(model, ds, model.num_classes, class_names=model.class_names,
                            use_07_metric=args.use_07_metric)
    print(f"mAP@0.5 ({'VOC2007 11-point' if args.use_07_metric else 'all-point'}): {result['mAP']:.4f}")
    for name, ap in result["per_class"].items():
        print(f"  {name:>12s}: {ap:.4f}")
    return 0


def cmd_predict(args):
    import numpy as np
    from PIL import Image

    from tfrcnn.visualize import draw_boxes
    for path in args.images:
        if not os.path.exists(path):
            raise UserError(f"image not found: {path}")
    model = _load_model(args.model)
    os.makedirs(args.out, exist_ok=True)
    names = model.class_names
    for path in args.images:
        try:
            image = np.asarray(Image.open(path).convert("RGB"))
        except OSError as e:
            raise UserError(f"cannot read image {path}: {e}") from None
        out = model.predict(image[None], verbose=0)
        n = int(out["num_detections"][0])
        keep = [i for i in range(n) if out["detection_scores"][0][i] >= args.score_threshold]
        boxes = out["detection_boxes"][0][keep]
        classes = out["detection_classes"][0][keep]
        scores = out["detection_scores"][0][keep]
        stem = os.path.splitext(os.path.basename(path))[0]
        draw_boxes(image, boxes, classes, scores, names).save(os.path.join(args.out, stem + ".png"))
        detections = [{"box_yxyx": [round(float(v), 2) for v in b], "class_id": int(c),
                       "class_name": names[int(c)] if names else str(int(c)), "score": float(s)}
                      for b, c, s in zip(boxes, classes, scores)]
        with open(os.path.join(args.out, stem + ".json"), "w") as f:
            json.dump({"image": path, "detections": detections}, f, indent=2)
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
    p.add_argument("--epochs", type=int)
    p.add_argument("--steps-per-epoch", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--learning-rate", type=float)
    p.add_argument("--seed", type=int)
    p.add_argument("--run-dir", help="output folder (default runs/<preset>-<time>)")
    p.add_argument("--verbose", type=int, default=1, help="Keras progress: 0 silent, 1 bar, 2 line")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("evaluate", help="VOC mAP of a saved model",
                       description="Evaluate a .keras model: VOC AP@0.5 per class and mAP.")
    p.add_argument("model", help="a .keras file")
    p.add_argument("--data", default="synthetic", help="'synthetic' (its held-out split)")
    p.add_argument("--num-val", type=int, default=200)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--use-07-metric", action="store_true", help="VOC2007 11-point AP")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("predict", help="detect objects in images",
                       description="Draw detections on each image (PNG) and write them as JSON.")
    p.add_argument("images", nargs="+", help="image files")
    p.add_argument("--model", required=True, help="a .keras file")
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
