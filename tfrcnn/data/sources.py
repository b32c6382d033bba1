"""Data sets on disk in any of the three formats, read into records by one function.

The formats:

- ``"voc"``: a Pascal VOC folder (``Annotations/``, ``ImageSets/Main/<split>.txt``,
  ``JPEGImages/``), read by :func:`tfrcnn.data.voc.read_voc`;
- ``"coco"``: a COCO instances JSON file plus the folder its ``file_name`` values are relative to,
  read by :func:`tfrcnn.data.coco.read_coco`;
- ``"tfrecord"``: TFRecord files of TF Object Detection API examples (what ``tfrcnn convert``
  writes), given as a glob pattern, read by :func:`tfrecord_lazy_records`.

Every reader returns lazy records (``"path"`` for VOC / COCO, ``"encoded"`` image bytes for
TFRecords): the pipeline decodes the pixels when it needs them, so a large data set does not fill
memory.

:func:`detect_format` (from :mod:`tfrcnn.formats`) names the format of a path without reading it
whole and without importing TensorFlow.

Example::

    kind = detect_format("data/bccd-train-*.tfrecord")        # "tfrecord"
    records, names, report = read_source(kind, "data/bccd-train-*.tfrecord")
"""

from __future__ import annotations

import io
import logging
import os

import numpy as np

from tfrcnn.formats import FORMATS, SourceError, detect_format, is_glob

__all__ = [
    "FORMATS",
    "SourceError",
    "default_coco_image_dir",
    "detect_format",
    "read_source",
    "tfrecord_lazy_records",
]

logger = logging.getLogger(__name__)


def tfrecord_lazy_records(pattern_or_paths):
    """Reads TF OD API TFRecord files into lazy records and the class names.

    Each record keeps the image's encoded bytes (``"encoded"``) instead of its pixels; the pipeline
    decodes them (as :func:`tfrcnn.data.tfrecord.parse_example` does, to the same pixels). Boxes are
    the normalised corners times ``image/height`` and ``image/width`` (read from the image header
    when the example does not store them).

    Returns ``(records, class_names, report)``: records ``{"encoded", "image_id", "boxes",
    "classes", "difficult", "iscrowd", "height", "width"}``, the class names recovered from
    ``image/object/class/text`` (index = label - 1; an id without text is named ``class_<id>``),
    and a :class:`~tfrcnn.data.validation.ValidationReport` counting images and boxes.

    Raises FileNotFoundError when nothing matches, ValueError for an empty set, a label below 1 or
    one label with two names.
    """
    import tensorflow as tf
    from PIL import Image

    from tfrcnn.data.tfrecord import LABEL_OFFSET, _resolve
    from tfrcnn.data.validation import ValidationReport

    paths = _resolve(pattern_or_paths)
    names, records = {}, []
    report = ValidationReport()
    for serialized in tf.data.TFRecordDataset(paths):
        feats = tf.train.Example.FromString(serialized.numpy()).features.feature

        def values(key, kind, feats=feats):
            if key not in feats:
                return []
            return list(getattr(feats[key], kind).value)

        encoded = values("image/encoded", "bytes_list")
        if not encoded:
            raise ValueError(f"an example of {', '.join(paths)} has no image/encoded")
        encoded = encoded[0]
        image_id = (values("image/source_id", "bytes_list") or [b""])[0].decode("utf-8")
        if not image_id:
            image_id = (values("image/filename", "bytes_list") or [b""])[0].decode("utf-8")
        height = (values("image/height", "int64_list") or [0])[0]
        width = (values("image/width", "int64_list") or [0])[0]
        if not (height and width):
            with Image.open(io.BytesIO(encoded)) as img:
                width, height = img.size
        corners = [
            np.asarray(values(f"image/object/bbox/{k}", "float_list"), np.float64)
            for k in ("ymin", "xmin", "ymax", "xmax")
        ]
        boxes = (
            np.stack(corners, axis=-1).reshape(-1, 4)
            * np.array([height, width, height, width], np.float64)
        ).astype(np.float32)
        labels = np.asarray(values("image/object/class/label", "int64_list"), np.int64)
        texts = [t.decode("utf-8") for t in values("image/object/class/text", "bytes_list")]
        if len(labels) != len(boxes):
            raise ValueError(f"{image_id}: {len(boxes)} boxes but {len(labels)} class labels")
        for i, label in enumerate(labels):
            if label < LABEL_OFFSET:
                raise ValueError(
                    f"{image_id}: class label {label} below {LABEL_OFFSET}; OD API "
                    "labels are 1-based (0 is background)"
                )
            if i < len(texts):
                known = names.setdefault(int(label) - LABEL_OFFSET, texts[i])
                if known != texts[i]:
                    raise ValueError(
                        f"{image_id}: label {label} is named both {known!r} and "
                        f"{texts[i]!r} in image/object/class/text"
                    )
        n = len(boxes)

        def flags(key, n=n, values=values):
            v = np.asarray(values(key, "int64_list"), np.int64)
            return v.astype(bool) if len(v) == n else np.zeros(n, bool)

        records.append(
            {
                "encoded": encoded,
                "image_id": image_id,
                "boxes": boxes,
                "classes": (labels - LABEL_OFFSET).astype(np.int32),
                "difficult": flags("image/object/difficult"),
                "iscrowd": flags("image/object/is_crowd"),
                "height": int(height),
                "width": int(width),
            }
        )
        report.images += 1
        report.boxes += n
    if not records:
        raise ValueError(f"no examples in {', '.join(paths)}: the data set is empty")
    top = max([int(c) for r in records for c in r["classes"]] + list(names) + [-1])
    class_names = [names.get(c, f"class_{c}") for c in range(top + 1)]
    return records, class_names, report


def read_source(kind, path, *, image_dir=None, split=None, class_names=None):
    """Records, class names and a validation report from a data set in any format.

    Args:
      kind: ``"voc"``, ``"coco"``, ``"tfrecord"``, or ``None`` to :func:`detect_format` it.
      path: the VOC folder, the COCO JSON file, or the TFRecord pattern.
      image_dir: COCO: the image folder (default: the JSON's folder, or its sibling ``images/``
        when that exists).
      split: VOC: the split name (default ``"trainval"``).
      class_names: fix the class names and their order (VOC, COCO); for TFRecords they must equal
        the stored ones.

    Raises:
      SourceError: a missing path or an unknown format; the readers' errors otherwise.
    """
    path = os.fspath(path)
    kind = detect_format(path) if kind is None else kind
    if kind == "voc":
        from tfrcnn.data.voc import read_voc

        if not os.path.isdir(path):
            raise SourceError(f"VOC folder not found: {path}")
        return read_voc(path, split or "trainval", class_names=class_names)
    if kind == "coco":
        from tfrcnn.data.coco import read_coco

        if not os.path.isfile(path):
            raise SourceError(f"COCO annotation file not found: {path}")
        return read_coco(path, image_dir or default_coco_image_dir(path), class_names=class_names)
    if kind == "tfrecord":
        if not is_glob(path) and not os.path.exists(path):
            raise SourceError(f"TFRecord file not found: {path}")
        records, names, report = tfrecord_lazy_records(path)
        if class_names is not None:
            wanted = [str(n) for n in class_names]
            if names != wanted[: len(names)]:
                raise ValueError(f"{path} holds the classes {names}, expected {wanted}")
            names = wanted
        return records, names, report
    raise SourceError(f"unknown data format {kind!r}; use one of {', '.join(FORMATS)}")


def default_coco_image_dir(annotation_file):
    """The folder a COCO JSON's images are assumed in when none is given: ``<name>_images/``
    beside ``<name>.json`` (where ``tfrcnn convert --to coco`` puts the images of TFRecords),
    else ``images/`` beside it, else the JSON's own folder."""
    path = os.path.abspath(annotation_file)
    folder = os.path.dirname(path)
    for candidate in (os.path.splitext(path)[0] + "_images", os.path.join(folder, "images")):
        if os.path.isdir(candidate):
            return candidate
    return folder
