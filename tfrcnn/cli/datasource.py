"""Checking the data a command is given, before anything runs: a format for every path, every path
there, and one line naming the flag to fix otherwise."""

import os

from tfrcnn.cli.common import UserError, closest, import_tensorflow_quietly

DATA_CHOICES = ("synthetic", "bccd", "voc", "coco", "tfrecord")

_WHAT = {
    "voc": "a Pascal VOC folder (with Annotations/)",
    "coco": "a COCO instances JSON file",
    "tfrecord": "a TFRecord file pattern, e.g. 'data/train-*.tfrecord'",
}


def _detect(path, flag):
    from tfrcnn.formats import SourceError, detect_format

    try:
        return detect_format(path)
    except SourceError as e:
        raise UserError(f"{flag}: {e}") from None


def check_path(kind, path, flag):
    """The format of ``path`` (``kind`` if given, after checking that ``path`` is one)."""
    found = _detect(path, flag)
    if kind is not None and found != kind:
        raise UserError(
            f"{flag} {path} is {_WHAT[found]}, not {_WHAT[kind]}; "
            f"use --data {found} or give {_WHAT[kind]}"
        )
    return found


def check_folder(path, flag):
    if path is not None and not os.path.isdir(path):
        raise UserError(f"{flag} folder not found: {path}")


def resolve_data(settings, given):
    """Check the data settings of a run (``settings``: data, data_path, image_dir, val_data_path,
    val_image_dir) and fill in ``data`` from ``data_path`` when only the path was ``given``.

    ``given``: the keys the user set (command line, --config or --set). Returns ``settings``.
    """
    kind = settings.get("data")
    path = settings.get("data_path")
    if path is not None and "data" not in given:
        kind = settings["data"] = _detect(path, "--data-path")
    if kind not in DATA_CHOICES:
        raise UserError(f"unknown --data {kind!r}; {closest(kind, DATA_CHOICES)}")
    if kind == "synthetic":
        for key in ("data_path", "val_data_path", "image_dir", "val_image_dir"):
            if settings.get(key) is not None:
                flag = "--" + key.replace("_", "-")
                raise UserError(
                    f"{flag} is not used with --data synthetic: give --data "
                    f"voc/coco/tfrecord with it, or leave it out"
                )
        return settings
    if kind == "bccd":
        if path is not None:
            check_path("voc", path, "--data-path")
        else:
            import_tensorflow_quietly()
            from tfrcnn.training.run import default_bccd_path

            if not os.path.isdir(default_bccd_path()):
                raise UserError(
                    f"the BCCD data set is not at {default_bccd_path()}: set "
                    "TFRCNN_BCCD or give --data voc --data-path FOLDER"
                )
        return settings
    if path is None:
        raise UserError(f"--data {kind} needs --data-path: {_WHAT[kind]}")
    check_path(kind, path, "--data-path")
    if settings.get("val_data_path") is not None:
        if kind == "voc":
            raise UserError(
                "--val-data-path is for COCO and TFRecords; a VOC folder holds its "
                "validation split: use --set val_split=NAME"
            )
        check_path(kind, settings["val_data_path"], "--val-data-path")
    for key in ("image_dir", "val_image_dir"):
        if settings.get(key) is not None and kind != "coco":
            raise UserError(
                f"--{key.replace('_', '-')} is for --data coco (the folder of the "
                "JSON's images); leave it out"
            )
        check_folder(settings.get(key), "--" + key.replace("_", "-"))
    return settings
