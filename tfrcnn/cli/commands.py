"""The ``tfrcnn`` subcommands. Each checks its arguments first and imports TensorFlow only when it
has work to do; a mistake raises :class:`~tfrcnn.cli.common.UserError` before any output exists."""

import json
import math
import os
import re
import shutil
import sys
import time

from tfrcnn import config as presets
from tfrcnn.cli.common import (
    UserError,
    closest,
    import_tensorflow_quietly,
    load_config_file,
    merge,
    one_line,
    parse_overrides,
    to_yaml,
)
from tfrcnn.cli.datasource import check_folder, check_path, resolve_data

BOX_FORMATS = ("xyxy", "xywh", "yxyx")

# Errors a reader or builder raises for bad input (a missing file, a malformed annotation, an
# unknown or impossible setting): reported as one line when they happen before any output.
INPUT_ERRORS = (ValueError, FileNotFoundError, NotADirectoryError, IsADirectoryError)


def _download_error():
    """The error of a failed weights download (ImageNet backbones), imported when one is raised."""
    from tfrcnn.weights.download import DownloadError

    return DownloadError


TRAIN_FLAGS = (
    "preset",
    "init",
    "data",
    "data_path",
    "image_dir",
    "val_data_path",
    "val_image_dir",
    "strategy",
    "precision",
    "epochs",
    "steps_per_epoch",
    "batch_size",
    "learning_rate",
    "seed",
)


# ------------------------------------------------------------------------------------- helpers


def _check_model_file(path, flag="model"):
    if not os.path.exists(path):
        raise UserError(f"{flag} not found: {path}")
    if os.path.isdir(path) or not path.endswith(".keras"):
        raise UserError(
            f"{flag} {path} is not a .keras file; give the model.keras of a run "
            "(runs/<name>/model.keras)"
        )


def load_model(path):
    """A ``FasterRCNN`` from a ``.keras`` file written by tfrcnn (one-line error otherwise)."""
    _check_model_file(path)
    import zipfile

    if not zipfile.is_zipfile(path):
        raise UserError(
            f"cannot load {path} as a tfrcnn model: not a .keras archive (a zip "
            "file); give the model.keras of a run or a file saved by FasterRCNN.save"
        )
    import_tensorflow_quietly()

    from tfrcnn.models.loading import ModelFileError
    from tfrcnn.models.loading import load_model as load_tfrcnn_model

    try:
        model = load_tfrcnn_model(path)
    except ModelFileError as e:
        raise UserError(one_line(e)) from None
    except Exception as e:  # noqa: BLE001  (any failure to load: another model, a corrupt file)
        raise UserError(
            f"cannot load {path} as a tfrcnn model ({one_line(e)[:200]}); give a "
            ".keras file written by tfrcnn train or FasterRCNN.save"
        ) from None
    if not all(hasattr(model, a) for a in ("num_classes", "image_max_side", "size_divisor")):
        raise UserError(
            f"{path} is a Keras model but not a tfrcnn FasterRCNN; give a .keras "
            "file written by tfrcnn train"
        )
    return model


def _check_output_folder(path, flag):
    if path is not None and os.path.exists(path) and not os.path.isdir(path):
        raise UserError(f"{flag} {path} is a file; give a folder")


def _json_safe(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def _write_json(path, value):
    from tfrcnn.export.atomic import atomic_file

    with atomic_file(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        json.dump(_json_safe(value), f, indent=1)


def convert_box(box_yxyx, box_format):
    """A ``[y1, x1, y2, x2]`` box in ``box_format``: ``xyxy`` ``[x1, y1, x2, y2]``, ``xywh``
    ``[x1, y1, width, height]`` (COCO's) or ``yxyx`` (as given)."""
    y1, x1, y2, x2 = (float(v) for v in box_yxyx)
    if box_format == "xyxy":
        return [x1, y1, x2, y2]
    if box_format == "xywh":
        return [x1, y1, x2 - x1, y2 - y1]
    if box_format == "yxyx":
        return [y1, x1, y2, x2]
    raise ValueError(f"box_format must be one of {BOX_FORMATS}, got {box_format!r}")


# ------------------------------------------------------------------------------------- presets


def cmd_presets(args):
    rows = []
    for name in presets.preset_names():
        p = presets.get_preset(name)
        rows.append(
            (
                name,
                p["backbone"],
                f"{p['image_min_side']}-{p['image_max_side']}",
                presets.PRESET_USES.get(name, ""),
            )
        )
    header = ("preset", "backbone", "input (short-long side)", "for")
    widths = [max(len(r[i]) for r in rows + [header]) for i in range(3)]
    for row in [header] + rows:
        print("  ".join(c.ljust(w) for c, w in zip(row[:3], widths)) + "  " + row[3])
    print(
        "\ntfrcnn train --preset NAME; any setting: --set model.<key>=VALUE "
        "(tfrcnn train --preset NAME --print-config lists them)"
    )
    return 0


# --------------------------------------------------------------------------------------- train


def _train_overrides(args):
    overrides = {}
    if args.config:
        overrides = merge(overrides, load_config_file(args.config))
    for key in TRAIN_FLAGS:
        value = getattr(args, key)
        if value is not None:
            overrides[key] = value
    return merge(overrides, parse_overrides(args.set))


def _check_numbers(settings):
    for key in ("epochs", "steps_per_epoch", "batch_size", "num_train", "num_val", "eval_every"):
        value = settings[key]
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise UserError(f"{key} must be a positive integer, got {value!r}")
    lr = settings["learning_rate"]
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not (0 < lr < math.inf):
        raise UserError(f"learning_rate must be a positive number, got {lr!r}")


def _check_init(init):
    """``--init``: a ``.keras`` model file or a published torchvision name (one line otherwise)."""
    from tfrcnn.weights import registry

    if init.startswith("torchvision:") or registry.is_published_name(init):
        entry = registry.TORCHVISION.get(init.removeprefix("torchvision:"))
        if entry is None or entry.kind != "detector":
            detectors = [k for k, v in registry.TORCHVISION.items() if v.kind == "detector"]
            raise UserError(
                f"--init {init}: not a published torchvision detector; known: "
                + ", ".join(f"torchvision:{k}" for k in detectors)
            )
        return
    if init.endswith(".pth"):
        raise UserError(
            f"--init {init} is a torchvision checkpoint; convert it first with "
            f"tfrcnn import-weights torchvision {init} --preset PRESET --output model.keras"
        )
    _check_model_file(init, "--init")


def _init_settings(init):
    """The model settings of an ``--init`` model (its file's, or the preset of a published name),
    read without TensorFlow."""
    from tfrcnn.weights import registry

    if registry.is_published_name(init):
        return presets.get_preset(registry.published(init).preset)
    import zipfile

    with zipfile.ZipFile(init) as archive:
        config = json.loads(archive.read("config.json"))["config"]
    return {k: v for k, v in config.items() if k not in ("name", "trainable", "dtype")}


def _precheck_train(overrides):
    """The checks that need no TensorFlow: run setting names, the preset, the data paths and the
    numbers (model setting names are checked by ``resolve_settings``)."""
    known = presets.RUN_DEFAULTS
    for key in overrides:
        if key not in known:
            raise UserError(
                f"unknown run setting {key!r}; {closest(key, list(known))} "
                "(model settings go under 'model.<name>')"
            )
    init = overrides.get("init")
    if init:
        _check_init(init)
        try:
            presets.apply_init_defaults({**known, **overrides}, set(overrides))
        except ValueError as e:
            raise UserError(one_line(e)) from None
    else:
        preset = overrides.get("preset", known["preset"])
        if preset not in presets.PRESETS:
            raise UserError(f"unknown preset {preset!r}; {closest(preset, list(presets.PRESETS))}")
    merged = {**known, **overrides}
    resolve_data(merged, set(overrides))
    overrides["data"] = merged["data"]
    _check_numbers(merged)


def cmd_train(args):
    overrides = _train_overrides(args)
    if args.resume:
        run_dir = args.resume
        if not os.path.isdir(run_dir):
            raise UserError(f"--resume: run folder not found: {run_dir}")
        if not os.path.isfile(os.path.join(run_dir, "config.json")):
            raise UserError(
                f"nothing to resume in {run_dir}: no config.json, so not a run "
                "folder; give the folder of an earlier tfrcnn train"
            )
        with open(os.path.join(run_dir, "config.json")) as f:
            saved = json.load(f).get("run") or {}
        changed = sorted(presets.changed_settings(saved, overrides) - {"epochs"})
        if changed:
            raise UserError(
                f"--resume continues the saved configuration; only --epochs may change "
                f"(got a different {', '.join(changed)}); drop those flags or start a new run"
            )
        if args.print_config:
            with open(os.path.join(run_dir, "config.json")) as f:
                print(to_yaml(json.load(f)), end="")
            return 0
    if not args.resume:
        _precheck_train(overrides)
    import_tensorflow_quietly()
    from tfrcnn.training import run

    if not args.resume:
        try:
            settings = run.resolve_settings(overrides)
        except ValueError as e:
            raise UserError(one_line(e)) from None
        if args.print_config:
            model = _init_settings(settings["init"]) if settings["init"] else {}
            model = model or presets.get_preset(
                settings["preset"] or presets.RUN_DEFAULTS["preset"]
            )
            model.update(settings["model"])
            run_settings = {k: v for k, v in settings.items() if k != "model"}
            print(to_yaml({"run": run_settings, "model": model}), end="")
            return 0
        start = settings["preset"]
        if settings["init"]:
            start = os.path.splitext(os.path.basename(settings["init"].split(":")[-1]))[0]
        run_dir = args.run_dir or os.path.join("runs", f"{start}-{time.strftime('%Y%m%d-%H%M%S')}")
        if os.path.exists(run_dir) and not os.path.isdir(run_dir):
            raise UserError(f"--run-dir {run_dir} is a file; give a folder")
        if os.path.exists(os.path.join(run_dir, "config.json")):
            raise UserError(
                f"--run-dir {run_dir} already holds a run; continue it with "
                f"--resume {run_dir} or give another --run-dir"
            )
        print(
            "tfrcnn train: "
            + (f"from {settings['init']}" if settings["init"] else f"preset {settings['preset']}")
            + f", data {settings['data']}"
            + (f" ({settings['data_path']})" if settings.get("data_path") else "")
            + f", run folder {run_dir}"
        )
    else:
        print(f"tfrcnn train: resuming {run_dir}")
    existed = os.path.exists(run_dir)
    try:
        metrics = run.train(run_dir, overrides, verbose=args.verbose, resume=bool(args.resume))
    except FloatingPointError as e:  # NaNGuard: a non-finite loss, gradient or weight
        return _training_stopped(e, run_dir)
    except (*INPUT_ERRORS, TypeError, _download_error()) as e:  # TypeError: a wrong type
        # Raised while the settings, the data or the model were set up (config.json not yet
        # written): a mistake in the input, and nothing of the run may stay behind.
        if not args.resume and not os.path.exists(os.path.join(run_dir, "config.json")):
            if not existed:
                shutil.rmtree(run_dir, ignore_errors=True)
            if isinstance(e, TypeError):
                given = sorted(f"model.{k}" for k in overrides.get("model", {}))
                raise UserError(
                    f"a setting has a value of the wrong type ({one_line(e)}); check "
                    + (", ".join(given) if given else "the --set / --config values")
                    + " against tfrcnn train --print-config"
                ) from None
            raise UserError(one_line(e)) from None
        raise
    print(json.dumps(metrics, indent=2))
    print(f"final mAP@0.5 (VOC, all-point) on the held-out split: {metrics['mAP']:.4f}")
    print(f"run folder: {run_dir} (model.keras, checkpoints/best.keras, logs/ for TensorBoard)")
    return 0


def _training_stopped(error, run_dir):
    """One line for a run that NaNGuard stopped, naming the last good checkpoint; exit status 1."""
    checkpoint = os.path.join(run_dir, "checkpoints", "last.keras")
    kept = (
        f"the last good checkpoint is {checkpoint}"
        if os.path.exists(checkpoint)
        else "no checkpoint was written yet"
    )
    message = str(error).split(". Training stopped")[0]
    print(f"tfrcnn train: stopped: {message}; {kept}", file=sys.stderr)
    return 1


# ------------------------------------------------------------------------------------ evaluate


def _eval_data_settings(args):
    settings = {
        "data": args.data or "synthetic",
        "data_path": args.data_path,
        "image_dir": args.image_dir,
    }
    return resolve_data(settings, {"data"} if args.data is not None else set())


def _eval_records(args, model, settings):
    """(records, class names, COCO category ids or None) of the evaluation data."""
    kind = settings["data"]
    names = list(model.class_names) if model.class_names else None
    if kind == "synthetic":
        from tfrcnn.data import SYNTHETIC_CLASS_NAMES, synthetic_splits

        if names is not None and names != list(SYNTHETIC_CLASS_NAMES):
            raise UserError(
                f"the model's classes {names} are not the synthetic shapes; give its "
                "data with --data and --data-path"
            )
        _, records = synthetic_splits(num_train=0, num_val=args.num_val, seed=args.seed)
        return records, names or list(SYNTHETIC_CLASS_NAMES), None
    from tfrcnn.data.sources import read_source

    path = settings["data_path"]
    if kind == "bccd":
        from tfrcnn.training.run import default_bccd_path

        kind, path = "voc", path or default_bccd_path()
    try:
        records, read_names, _ = read_source(
            kind,
            path,
            image_dir=settings.get("image_dir"),
            split=args.split if kind == "voc" else None,
            class_names=names,
        )
    except INPUT_ERRORS as e:
        raise UserError(one_line(e)) from None
    if names is None and len(read_names) != model.num_classes:
        raise UserError(
            f"{path} has {len(read_names)} classes but the model {model.num_classes}; "
            "evaluate on data with the model's classes"
        )
    ids = getattr(read_names, "category_ids", None)
    return records, list(read_names), ids if ids and None not in ids else None


def cmd_evaluate(args):
    _check_model_file(args.model)
    _check_output_folder(args.out, "--out")
    for flag, path in (("--pr-curves", args.pr_curves), ("--plot-recall", args.plot_recall)):
        if path is not None and not path.lower().endswith(".png"):
            raise UserError(f"{flag} {path}: give a .png file name")
    if args.selective_search and not args.proposals:
        raise UserError("--selective-search needs --proposals")
    data_settings = _eval_data_settings(args)
    model = load_model(args.model)
    records, names, category_ids = _eval_records(args, model, data_settings)
    import numpy as np

    from tfrcnn.data import make_dataset
    from tfrcnn.evaluation import collect_detections, evaluate_coco, evaluate_detections
    from tfrcnn.evaluation.coco import coco_dicts

    pad = (model.image_max_side, model.image_max_side)
    ds = make_dataset(
        records,
        batch_size=args.batch_size,
        min_side=model.image_min_side,
        max_side=model.image_max_side,
        pad_to=pad,
        size_divisor=model.size_divisor,
    )
    detections, ground_truths, seconds = collect_detections(model, ds, progress=sys.stdout.isatty())
    voc = evaluate_detections(
        detections,
        ground_truths,
        model.num_classes,
        class_names=names,
        use_07_metric=args.use_07_metric,
    )
    coco = evaluate_coco(detections, ground_truths, names)
    metric = "VOC2007 11-point" if args.use_07_metric else "all-point"
    print(f"{len(records)} images, {seconds:.3f} s per image")
    print(f"VOC mAP@0.5 ({metric}): {voc['mAP']:.4f}")
    print(
        "COCO: "
        + ", ".join(
            f"{k} {coco[k]:.4f}"
            for k in ("AP", "AP50", "AP75", "AP_small", "AP_medium", "AP_large", "AR100")
        )
    )
    print(f"{'class':>12s} {'VOC AP50':>9s} {'COCO AP50':>10s} {'COCO AP':>8s}")
    for name in names:
        print(
            f"{name:>12s} {voc['per_class'][name]:9.4f} {coco['per_class'][name]['AP50']:10.4f} "
            f"{coco['per_class'][name]['AP']:8.4f}"
        )
    if args.out:
        image_ids = None
        if all("coco_id" in r for r in records):
            image_ids = [int(r["coco_id"]) for r in records]
        file_names = [
            os.path.basename(str(r.get("path", r.get("image_id", i))))
            for i, r in enumerate(records)
        ]
        ground_truth, results = coco_dicts(
            detections,
            ground_truths,
            names,
            image_ids=image_ids,
            category_ids=category_ids,
            file_names=file_names,
        )
        metrics = {
            "model": os.path.abspath(args.model),
            "data": args.data or "synthetic",
            "data_path": args.data_path,
            "images": len(records),
            "seconds_per_image": float(seconds),
            "voc": {
                "metric": metric,
                "iou_threshold": 0.5,
                "mAP": float(voc["mAP"]),
                "per_class": {n: float(voc["per_class"][n]) for n in names},
            },
            "coco": {k: v for k, v in coco.items()},
        }
        os.makedirs(args.out, exist_ok=True)
        _write_json(os.path.join(args.out, "coco_ground_truth.json"), ground_truth)
        _write_json(os.path.join(args.out, "coco_results.json"), results)
        _write_json(os.path.join(args.out, "metrics.json"), metrics)
        print(f"metrics.json, coco_results.json, coco_ground_truth.json -> {args.out}")
    if args.pr_curves:
        from tfrcnn.visualize import plot_pr_curves

        plot_pr_curves(voc, names, args.pr_curves)
        print(f"PR curves -> {args.pr_curves}")
    if args.proposals:
        from tfrcnn.evaluation.proposals import (
            format_recall_table,
            plot_recall_curves,
            proposal_recall,
            rpn_proposals,
            selective_search_proposals,
        )

        subset = records[: args.max_images]
        gts = [np.asarray(r["boxes"]) for r in subset]
        results = {}
        if model.proposal_source == "rpn":
            boxes, secs = rpn_proposals(model, subset)
            results["RPN"] = dict(proposal_recall(boxes, gts), seconds=secs)
        if args.selective_search:
            try:
                boxes, secs = selective_search_proposals(subset)
            except ImportError as e:
                raise UserError(one_line(e)) from None
            results["selective search"] = dict(proposal_recall(boxes, gts), seconds=secs)
        print(format_recall_table(results))
        if args.plot_recall:
            plot_recall_curves(results, args.plot_recall)
            print(f"recall curves -> {args.plot_recall}")
    return 0


# ------------------------------------------------------------------------------------- convert


def _write_images(records, folder):
    """Write the ``"encoded"`` image bytes of TFRecord records into ``folder`` (atomically) and
    point the records at the files."""
    from tfrcnn.export.atomic import atomic_directory

    used = set()
    out = []
    with atomic_directory(folder) as tmp:
        for i, record in enumerate(records):
            data = bytes(record["encoded"])
            ext = ".png" if data.startswith(b"\x89PNG") else ".jpg"
            stem = re.sub(r"[^A-Za-z0-9._-]+", "_", str(record.get("image_id") or i)) or str(i)
            name = stem + ext
            while name in used:
                stem += "_"
                name = stem + ext
            used.add(name)
            with open(os.path.join(tmp, name), "wb") as f:
                f.write(data)
            out.append(
                {
                    **{k: v for k, v in record.items() if k != "encoded"},
                    "path": os.path.join(folder, name),
                }
            )
    return out


def cmd_convert(args):
    kind = check_path(args.format, args.source, "--source")
    if args.split is not None and kind != "voc":
        raise UserError("--split is for a VOC source; a COCO JSON or TFRecord pattern is one split")
    if args.image_dir is not None and kind != "coco":
        raise UserError("--image-dir is for a COCO source (the folder of the JSON's images)")
    check_folder(args.image_dir, "--image-dir")
    if args.to == "coco":
        if not args.output.lower().endswith(".json"):
            raise UserError(
                f"--to coco writes a JSON file: give --output a .json name, e.g. {args.output}.json"
            )
        if args.shards is not None:
            raise UserError("--shards is for --to tfrecord; a COCO file is one JSON")
    else:
        if args.output.lower().endswith(".json"):
            raise UserError(
                "--to tfrecord writes shards named <output>-00000-of-00001.tfrecord: "
                "give --output a prefix without .json, or use --to coco"
            )
        if args.shards is not None and args.shards < 1:
            raise UserError(f"--shards must be at least 1, got {args.shards}")
    if os.path.isdir(args.output):
        raise UserError(
            f"--output {args.output} is a folder; give a file "
            + ("name" if args.to == "coco" else "prefix, e.g. out/train")
        )
    import_tensorflow_quietly()
    from tfrcnn.data.sources import default_coco_image_dir, read_source

    try:
        records, names, report = read_source(
            kind, args.source, image_dir=args.image_dir, split=args.split
        )
    except INPUT_ERRORS as e:
        raise UserError(one_line(e)) from None
    print(f"read {args.source} ({kind}): {report.summary()}")
    print(f"classes: {', '.join(names)}")
    if args.to == "tfrecord":
        from tfrcnn.data.tfrecord import write_tfrecords

        try:
            paths = write_tfrecords(records, names, args.output, num_shards=args.shards or 1)
        except INPUT_ERRORS as e:
            raise UserError(one_line(e)) from None
        for path in paths:
            print(path)
        print(f"read it with: --data tfrecord --data-path '{args.output}-*.tfrecord'")
        return 0
    from tfrcnn.data.coco import write_coco

    output = os.path.abspath(args.output)
    if kind == "tfrecord":
        image_dir = os.path.splitext(output)[0] + "_images"
        records = _write_images(records, image_dir)
    elif kind == "coco":
        image_dir = os.path.abspath(args.image_dir or default_coco_image_dir(args.source))
    else:
        image_dir = os.path.commonpath(
            [os.path.dirname(os.path.abspath(r["path"])) for r in records]
        )
    try:
        write_coco(records, names, output, image_dir=image_dir)
    except INPUT_ERRORS as e:
        if kind == "tfrecord":
            shutil.rmtree(image_dir, ignore_errors=True)
        raise UserError(one_line(e)) from None
    print(f"{len(records)} images -> {args.output}")
    hint = "" if image_dir == default_coco_image_dir(output) else f" --image-dir {image_dir}"
    print(f"images: {image_dir}; read it with: --data coco --data-path {args.output}{hint}")
    return 0


# -------------------------------------------------------------------------------------- export


def cmd_export(args):
    _check_model_file(args.model)
    size = None
    if args.format == "tflite":
        if not args.output.endswith(".tflite"):
            raise UserError(
                f"--format tflite writes a file: give --output a .tflite name, e.g. "
                f"{args.output}.tflite"
            )
        if args.input_size:
            match = re.fullmatch(r"(\d+)x(\d+)", args.input_size)
            if not match or min(int(match[1]), int(match[2])) < 32:
                raise UserError(
                    f"--input-size {args.input_size!r}: give HEIGHTxWIDTH, each at "
                    "least 32, e.g. 192x192"
                )
            size = (int(match[1]), int(match[2]))
    else:
        if args.input_size or args.quantization != "float32":
            raise UserError(
                "--input-size and --quantization are for --format tflite; a "
                "SavedModel takes any image size in float32"
            )
        if args.version < 1:
            raise UserError(f"--version must be at least 1, got {args.version}")
        if os.path.exists(args.output) and not os.path.isdir(args.output):
            raise UserError(f"--output {args.output} is a file; give a folder")
    model = load_model(args.model)
    from tfrcnn import export

    if args.format == "saved_model":
        path = export.saved_model(model, args.output, version=args.version)
        print(f"SavedModel -> {path}")
        print(
            f"serve it with: tensorflow_model_server --rest_api_port=8501 --model_name=tfrcnn "
            f"--model_base_path={os.path.abspath(args.output)}"
        )
        return 0
    try:
        report = export.tflite(model, args.output, quantization=args.quantization, input_size=size)
    except ValueError as e:
        raise UserError(one_line(e)) from None
    if model.class_names:
        sidecar = os.path.splitext(args.output)[0] + ".class_names.txt"
        with open(sidecar, "w") as f:
            f.write("\n".join(model.class_names))
    print(json.dumps(dict(report), indent=2, default=str))
    return 0


# ------------------------------------------------------------------------------------- predict


def _tflite_interpreter(path):
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:  # LiteRT not installed: TensorFlow's own interpreter
        import tensorflow as tf

        Interpreter = tf.lite.Interpreter
    return Interpreter(model_path=path)


def load_predictor(path):
    """A function ``uint8 image [H, W, 3] -> outputs dict (numpy, batch of 1)`` and the class
    names, for a ``.keras`` file, a SavedModel folder (or its TF Serving base folder holding
    version folders) or a ``.tflite`` file."""
    import numpy as np

    if not os.path.exists(path):
        raise UserError(f"--model not found: {path}")
    import_tensorflow_quietly()
    if os.path.isdir(path):
        from tfrcnn.export.saved_model import find_saved_model

        try:
            folder = find_saved_model(path)
        except FileNotFoundError as e:
            raise UserError(one_line(e)) from None
        import tensorflow as tf

        loaded = tf.saved_model.load(folder)
        if "serving_default" not in loaded.signatures or not hasattr(loaded, "class_names"):
            raise UserError(
                f"{folder} is a SavedModel but not a tfrcnn export; give a folder "
                "written by tfrcnn export"
            )
        serve = loaded.signatures["serving_default"]
        names = [n.decode() for n in loaded.class_names.numpy()]

        def run(image):
            return {k: v.numpy() for k, v in serve(images=tf.constant(image[None])).items()}

        return run, names
    if path.endswith(".tflite"):
        from PIL import Image

        from tfrcnn.export.tflite import run_tflite

        try:
            runner = _tflite_interpreter(path).get_signature_runner("serving_default")
            height, width = [int(v) for v in runner.get_input_details()["images"]["shape"][1:3]]
        except (ValueError, KeyError, RuntimeError) as e:
            raise UserError(
                f"{path} is not a tfrcnn TFLite model ({one_line(e)[:120]}); give a "
                "file written by tfrcnn export --format tflite"
            ) from None
        sidecar = os.path.splitext(path)[0] + ".class_names.txt"
        names = None
        if os.path.exists(sidecar):
            with open(sidecar) as f:
                names = f.read().split("\n")

        def run(image):
            h, w = image.shape[:2]
            resized = np.asarray(Image.fromarray(image).resize((width, height), Image.BILINEAR))
            out = run_tflite(path, resized[None])
            scale = np.array([h / height, w / width, h / height, w / width], np.float32)
            out["detection_boxes"] = out["detection_boxes"] * scale
            return out

        return run, names
    model = load_model(path)
    names = list(model.class_names) if model.class_names else None
    return (lambda image: model.predict(image[None], verbose=0)), names


def cmd_predict(args):
    for path in args.images:
        if not os.path.exists(path):
            raise UserError(f"image not found: {path}")
    import_tensorflow_quietly()
    from tfrcnn.data.images import ImageReadError, check_image

    for path in args.images:
        try:
            check_image(path)
        except ImageReadError as e:
            raise UserError(f"{one_line(e)}; give a JPEG, PNG, BMP, GIF or TIFF file") from None
    _check_output_folder(args.out, "--out")
    if args.coco_json is not None and not args.coco_json.lower().endswith(".json"):
        raise UserError(f"--coco-json {args.coco_json}: give a .json file name")
    if not 0.0 <= args.score_threshold <= 1.0:
        raise UserError(f"--score-threshold must be in [0, 1], got {args.score_threshold}")
    import numpy as np

    from tfrcnn.data.images import load_image
    from tfrcnn.visualize import draw_boxes

    run, names = load_predictor(args.model)
    bar = None
    if len(args.images) > 1 and sys.stderr.isatty():
        import keras

        bar = keras.utils.Progbar(len(args.images), unit_name="image")
    os.makedirs(args.out, exist_ok=True)
    coco_images, coco_annotations = [], []
    for i, path in enumerate(args.images):
        image = load_image(path)
        out = run(image)
        n = int(out["num_detections"][0])
        keep = [j for j in range(n) if out["detection_scores"][0][j] >= args.score_threshold]
        boxes = np.asarray(out["detection_boxes"][0])[keep]
        classes = np.asarray(out["detection_classes"][0]).astype(int)[keep]
        scores = np.asarray(out["detection_scores"][0])[keep]
        stem = os.path.splitext(os.path.basename(path))[0]
        draw_boxes(image, boxes, classes, scores, names).save(os.path.join(args.out, stem + ".png"))
        detections = [
            {
                "box": [round(v, 2) for v in convert_box(b, args.box_format)],
                "class_id": int(c),
                "class_name": names[int(c)] if names else str(int(c)),
                "score": float(s),
            }
            for b, c, s in zip(boxes, classes, scores)
        ]
        _write_json(
            os.path.join(args.out, stem + ".json"),
            {
                "image": path,
                "height": int(image.shape[0]),
                "width": int(image.shape[1]),
                "box_format": args.box_format,
                "detections": detections,
            },
        )
        coco_images.append(
            {
                "id": i + 1,
                "file_name": os.path.basename(path),
                "height": int(image.shape[0]),
                "width": int(image.shape[1]),
            }
        )
        for b, c, s in zip(boxes, classes, scores):
            xywh = convert_box(b, "xywh")
            coco_annotations.append(
                {
                    "id": len(coco_annotations) + 1,
                    "image_id": i + 1,
                    "category_id": int(c) + 1,
                    "bbox": xywh,
                    "area": xywh[2] * xywh[3],
                    "iscrowd": 0,
                    "score": float(s),
                }
            )
        if bar is not None:
            bar.update(i + 1)
        else:
            print(
                f"{path}: {len(detections)} detections -> {os.path.join(args.out, stem + '.png')}"
            )
    if args.coco_json:
        count = (
            len(names) if names else 1 + max([a["category_id"] - 1 for a in coco_annotations] + [0])
        )
        categories = [{"id": c + 1, "name": names[c] if names else str(c)} for c in range(count)]
        _write_json(
            args.coco_json,
            {"images": coco_images, "annotations": coco_annotations, "categories": categories},
        )
        print(f"COCO JSON ({len(coco_annotations)} detections with scores) -> {args.coco_json}")
    return 0


__all__ = [
    "closest",
    "cmd_convert",
    "cmd_evaluate",
    "cmd_export",
    "cmd_predict",
    "cmd_presets",
    "cmd_train",
    "convert_box",
    "load_model",
    "load_predictor",
]


def cmd_import_weights(args):
    """``tfrcnn import-weights``: :func:`tfrcnn.weights.cli.run`."""
    import_tensorflow_quietly()
    from tfrcnn.weights.cli import run

    return run(args)
