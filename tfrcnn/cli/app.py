"""The ``tfrcnn`` argument parser and entry point. Parsing imports nothing of TensorFlow, so
``tfrcnn --help`` and every subcommand's ``--help`` answer at once."""

import argparse
import logging
import sys

from tfrcnn import config as presets
from tfrcnn.cli.common import (
    UserError,
    one_line,
    quiet_tensorflow_log,
)
from tfrcnn.cli.datasource import DATA_CHOICES

D = presets.RUN_DEFAULTS


class _Formatter(argparse.RawDescriptionHelpFormatter):
    """Help with each option's default (when it has one) after its text."""

    def _get_help_string(self, action):
        text = action.help or ""
        if "%(default)" in text or "(default" in text:
            return text
        if action.default not in (None, False, argparse.SUPPRESS) and action.option_strings:
            text += " (default: %(default)s)"
        return text


class _Parser(argparse.ArgumentParser):
    """Reports a command-line mistake in one line (no usage block) with exit status 2."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {one_line(message)}; see {self.prog} --help\n")


def _preset_help():
    return (
        f"preset (default {D['preset']}): {', '.join(presets.preset_names())}; "
        "`tfrcnn presets` describes them"
    )


def _data_arguments(p, default_data):
    p.add_argument(
        "--data",
        choices=DATA_CHOICES,
        metavar="{" + ",".join(DATA_CHOICES) + "}",
        help=f"data format (default {default_data}, or recognised from --data-path): "
        "synthetic shapes, the shared BCCD set, a VOC folder, a COCO JSON or "
        "TFRecord files",
    )
    p.add_argument(
        "--data-path",
        metavar="PATH",
        help="a Pascal VOC folder, a COCO instances JSON, or a TFRecord pattern such "
        "as 'data/train-*.tfrecord' (quote it)",
    )
    p.add_argument(
        "--image-dir",
        metavar="DIR",
        help="COCO: the folder of the JSON's images (default: <json>_images/ or "
        "images/ beside the JSON, else the JSON's folder)",
    )


def build_parser():
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--tf-log",
        action="store_true",
        help="show TensorFlow's C++ log lines (hidden unless TF_CPP_MIN_LOG_LEVEL is set)",
    )
    parser = _Parser(
        prog="tfrcnn",
        description="Faster R-CNN for TensorFlow 2 / Keras 3.",
        formatter_class=_Formatter,
        epilog="`tfrcnn COMMAND --help` describes each command. A mistake on the "
        "command line prints one line and exits with status 2.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name, **kwargs):
        return sub.add_parser(name, parents=[common], formatter_class=_Formatter, **kwargs)

    p = add(
        "train",
        help="train a model and write a run folder",
        description="Train a preset on the built-in shapes or your data (VOC, COCO, "
        "TFRecord); writes config.json, checkpoints/last.keras and best.keras "
        "(by validation mAP), history, TensorBoard logs, model.keras and the "
        "final mAP.\n\n"
        "  tfrcnn train --preset small_fpn --data voc --data-path datasets/bccd\n"
        "  tfrcnn train --data coco --data-path train.json --image-dir images "
        "--val-data-path val.json\n"
        "  tfrcnn train --data-path 'data/train-*.tfrecord' --epochs 20",
    )
    p.add_argument("--preset", metavar="NAME", help=_preset_help())
    p.add_argument(
        "--init",
        metavar="MODEL",
        help="fine-tune a trained model: a .keras file (tfrcnn train, import-weights) or "
        "torchvision:<published name>; every weight is kept but the class outputs, the "
        "architecture is the model's (no --preset), and the optimizer defaults to "
        "torchvision's recipe (SGD, learning rate 0.02 x batch size / 16)",
    )
    p.add_argument(
        "--config",
        metavar="FILE",
        help="a YAML or JSON file of run settings (model settings under 'model')",
    )
    p.add_argument(
        "--set",
        action="append",
        metavar="KEY=VALUE",
        help="override any setting, e.g. --set eval_every=2 --set "
        "model.head_units=[128,128] (--print-config lists them)",
    )
    _data_arguments(p, D["data"])
    p.add_argument(
        "--val-data-path",
        metavar="PATH",
        help="COCO / TFRecord validation data (default: hold out "
        f"{D['val_fraction'] * 100:.0f}%% of --data-path); VOC uses its "
        f"'{D['val_split']}' split",
    )
    p.add_argument(
        "--val-image-dir",
        metavar="DIR",
        help="COCO: the images of --val-data-path (default --image-dir)",
    )
    p.add_argument(
        "--strategy",
        choices=("default", "mirrored", "multi_worker"),
        help=f"tf.distribute strategy (default {D['strategy']}; multi_worker reads TF_CONFIG)",
    )
    p.add_argument(
        "--precision",
        choices=("float32", "mixed_bfloat16", "mixed_float16", "auto"),
        help=f"compute dtype (default {D['precision']}); auto: mixed_float16 on a "
        "GPU, mixed_bfloat16 on a CPU with bf16 (AVX512-BF16/AMX), else float32",
    )
    p.add_argument("--epochs", type=int, help=f"epochs (default {D['epochs']})")
    p.add_argument(
        "--steps-per-epoch", type=int, help=f"batches an epoch (default {D['steps_per_epoch']})"
    )
    p.add_argument("--batch-size", type=int, help=f"images a batch (default {D['batch_size']})")
    p.add_argument(
        "--learning-rate",
        type=float,
        help=f"peak learning rate of the cosine schedule (default {D['learning_rate']})",
    )
    p.add_argument("--seed", type=int, help=f"random seed (default {D['seed']})")
    p.add_argument("--run-dir", metavar="DIR", help="output folder (default runs/<preset>-<time>)")
    p.add_argument(
        "--resume",
        metavar="RUN_DIR",
        help="continue an interrupted run from its last checkpoint (same settings; "
        "--epochs may extend it)",
    )
    p.add_argument(
        "--print-config",
        action="store_true",
        help="print the resolved configuration (YAML: run settings and every model "
        "setting) and exit",
    )
    p.add_argument(
        "--verbose",
        type=int,
        default=1,
        choices=(0, 1, 2),
        help="Keras progress: 0 silent, 1 bar, 2 a line an epoch",
    )
    p.set_defaults(func="cmd_train")

    p = add(
        "evaluate",
        help="VOC and COCO metrics of a saved model",
        description="Evaluate a .keras model: VOC AP@0.5 and COCO AP (pycocotools) per "
        "class; --out writes metrics.json and coco_results.json. Optionally PR "
        "curves and RPN proposal recall.",
    )
    p.add_argument("model", help="a .keras file")
    _data_arguments(p, "synthetic")
    p.add_argument("--split", default="test", help="VOC split name")
    p.add_argument("--num-val", type=int, default=200, help="synthetic images")
    p.add_argument("--seed", type=int, default=0, help="synthetic images' seed")
    p.add_argument("--batch-size", type=int, default=4, help="images a batch")
    p.add_argument("--use-07-metric", action="store_true", help="VOC2007 11-point AP")
    p.add_argument(
        "--out",
        metavar="DIR",
        help="write metrics.json (VOC and COCO, per class), coco_results.json "
        "(COCO results format) and coco_ground_truth.json here",
    )
    p.add_argument("--pr-curves", metavar="PNG", help="write per-class PR curves to this PNG")
    p.add_argument(
        "--proposals",
        action="store_true",
        help="also print RPN proposal recall at 300/1000/2000 proposals",
    )
    p.add_argument(
        "--selective-search",
        action="store_true",
        help="with --proposals: also selective search (opencv-contrib-python-headless)",
    )
    p.add_argument("--plot-recall", metavar="PNG", help="with --proposals: recall-vs-IoU curves")
    p.add_argument(
        "--max-images", type=int, default=None, help="images for --proposals (default all)"
    )
    p.set_defaults(func="cmd_evaluate")

    p = add(
        "convert",
        help="turn VOC / COCO / TFRecord data into TFRecords or COCO JSON",
        description="Convert a data set between formats: a Pascal VOC folder, a COCO "
        "instances JSON or TFRecord files (TF Object Detection API keys) into "
        "TFRecord shards or a COCO JSON.\n\n"
        "  tfrcnn convert --source datasets/bccd --split trainval --output "
        "data/bccd-trainval\n"
        "  tfrcnn convert --source datasets/bccd --split test --to coco --output "
        "data/bccd-test.json\n"
        "  tfrcnn convert --source 'data/bccd-trainval-*.tfrecord' --to coco "
        "--output data/bccd-trainval.json",
    )
    p.add_argument(
        "--source",
        required=True,
        metavar="PATH",
        help="a VOC folder, a COCO JSON file or a TFRecord pattern",
    )
    p.add_argument(
        "--format",
        choices=("voc", "coco", "tfrecord"),
        help="the source's format (default: recognised from --source)",
    )
    p.add_argument(
        "--to", choices=("tfrecord", "coco"), default="tfrecord", help="the output format"
    )
    p.add_argument(
        "--image-dir",
        metavar="DIR",
        help="COCO source: the folder of its images (default: beside the JSON)",
    )
    p.add_argument("--split", help="VOC source: the split (default trainval)")
    p.add_argument(
        "--output",
        required=True,
        help="--to tfrecord: the shards' prefix, e.g. data/bccd-train; --to coco: "
        "the .json file (TFRecord images are written to <name>_images/)",
    )
    p.add_argument("--shards", type=int, help="--to tfrecord: number of files (default 1)")
    p.set_defaults(func="cmd_convert")

    p = add(
        "export",
        help="export a model to SavedModel (TF Serving) or TFLite",
        description="Export a .keras model (atomic write). A SavedModel goes to "
        "OUTPUT/<version>/, the layout tensorflow_model_server loads.",
    )
    p.add_argument("model", help="a .keras file")
    p.add_argument(
        "--format", choices=("saved_model", "tflite"), default="saved_model", help="export format"
    )
    p.add_argument(
        "--output",
        required=True,
        help="SavedModel base folder (written to OUTPUT/<version>/) or .tflite file",
    )
    p.add_argument("--version", type=int, default=1, help="SavedModel version folder")
    p.add_argument(
        "--quantization",
        default="float32",
        choices=("float32", "float16", "dynamic_int8", "int8"),
        help="TFLite weights",
    )
    p.add_argument(
        "--input-size",
        metavar="HxW",
        help="TFLite fixed input size, e.g. 192x192 (default the preset's)",
    )
    p.set_defaults(func="cmd_export")

    p = add(
        "predict",
        help="detect objects in images",
        description="Draw detections on each image (PNG) and write them as JSON (one file "
        "an image; --coco-json: all of them in one COCO file).",
    )
    p.add_argument("images", nargs="+", help="image files")
    p.add_argument(
        "--model",
        required=True,
        help="a .keras file, a SavedModel folder (or its version base folder) or a .tflite file",
    )
    p.add_argument("--out", default="predictions", help="output folder")
    p.add_argument("--score-threshold", type=float, default=0.5, help="lowest score kept")
    p.add_argument(
        "--box-format",
        choices=("xyxy", "xywh", "yxyx"),
        default="xyxy",
        help="box order in the JSON files: [x1, y1, x2, y2], [x, y, width, height] "
        "or [y1, x1, y2, x2], in pixels of the image",
    )
    p.add_argument(
        "--coco-json",
        metavar="FILE",
        help="also write every detection to one COCO JSON (images, categories, "
        "annotations with bbox [x, y, w, h] and score)",
    )
    p.set_defaults(func="cmd_predict")

    p = add(
        "presets",
        help="list the presets: backbone, input size, intended use",
        description="List the model presets (tfrcnn.config) with their backbone, input size "
        "and what each is for.",
    )
    p.set_defaults(func="cmd_presets")

    from tfrcnn.weights.cli import add_parser as add_import_weights

    add_import_weights(sub, parents=[common], formatter_class=_Formatter)
    return parser


def _configure_process():
    """The process settings TensorFlow reads once, made before the TensorFlow import
    (:func:`tfrcnn.accel.configure_process`: the BFC host allocator and oneDNN's operations)."""
    from tfrcnn.accel import configure_process

    configure_process()


def _setup_logging():
    """Progress (INFO) to standard output, warnings and errors to standard error, unless the
    program already configured logging."""
    root = logging.getLogger()
    if root.handlers:
        return
    form = logging.Formatter("%(levelname)s %(name)s: %(message)s")
    progress = logging.StreamHandler(sys.stdout)
    progress.addFilter(lambda record: record.levelno < logging.WARNING)
    problems = logging.StreamHandler(sys.stderr)
    problems.setLevel(logging.WARNING)
    for handler in (progress, problems):
        handler.setFormatter(form)
        root.addHandler(handler)
    root.setLevel(logging.INFO)


def main(argv=None):
    """Run the ``tfrcnn`` command; returns the exit status (2 for a user error)."""
    args = build_parser().parse_args(argv)
    quiet_tensorflow_log(tf_log=args.tf_log)
    _configure_process()
    _setup_logging()
    from tfrcnn.cli import commands

    try:
        return getattr(commands, args.func)(args)
    except UserError as e:
        print(f"tfrcnn {args.command}: error: {one_line(e)}", file=sys.stderr)
        return 2
