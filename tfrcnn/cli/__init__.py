"""The ``tfrcnn`` command: train, evaluate, predict, convert, export, presets.

    tfrcnn train                                  # tiny preset on the built-in synthetic shapes
    tfrcnn train --preset small_fpn --data voc --data-path datasets/bccd
    tfrcnn train --data coco --data-path train.json --image-dir images --val-data-path val.json
    tfrcnn train --data-path 'data/train-*.tfrecord' --print-config
    tfrcnn evaluate runs/demo/model.keras --out eval/   # metrics.json, coco_results.json
    tfrcnn convert --source datasets/bccd --split trainval --to coco --output data/train.json
    tfrcnn export runs/demo/model.keras --output savedmodels/demo   # savedmodels/demo/1/
    tfrcnn predict IMAGE [IMAGE ...] --model runs/demo/model.keras --box-format xywh
    tfrcnn presets

A user error (a missing or malformed file, an unknown setting or value, unavailable weights, an
incompatible model file) prints one line naming it and the fix, exits with status 2, and leaves
no run folder or partial output. TensorFlow is imported only once a command has work to do, after
its C++ logging is quieted (``--tf-log`` or ``TF_CPP_MIN_LOG_LEVEL`` show it).
"""

from tfrcnn.cli.app import build_parser, main
from tfrcnn.cli.common import UserError, parse_overrides

__all__ = ["UserError", "build_parser", "main", "parse_overrides"]
