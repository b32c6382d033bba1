"""Reading and writing COCO "instances" JSON annotations (object detection boxes).

Shapes: ``N`` boxes of one image; ``C`` classes.

A COCO instances file holds ``images`` (``id``, ``file_name``, ``height``, ``width``),
``categories`` (``id``, ``name``) and ``annotations`` (``id``, ``image_id``, ``category_id``,
``bbox``, ``iscrowd``, ...). :func:`read_coco` turns it into lazy records (pixels are decoded later
by the pipeline with :func:`tfrcnn.data.images.load_image`)::

    {"path": str (image_dir / file_name), "image_id": str (file_name without its extension),
     "coco_id": int (the COCO image id, for COCO evaluation against the original file),
     "boxes": float32 [N, 4] (y1, x1, y2, x2) absolute pixels, continuous coordinates,
     "classes": int32 [N] in 0 .. C - 1,
     "difficult": bool [N] (False unless an annotation carries a non-standard "difficult": 1),
     "iscrowd": bool [N],
     "ann_ids": int64 [N] (the COCO annotation id of each kept box),
     "height": int, "width": int}        # the upright image size (EXIF orientation applied)

**Coordinates.** A COCO ``bbox`` is ``[x, y, w, h]`` in continuous pixel coordinates (the top-left
corner and the size), so our box is ``[y, x, y + h, x + w]``; no half-pixel shift.

**Categories.** COCO category ids need not be contiguous (COCO 2017 uses 1..90 for 80 classes).
By default the classes are the file's categories in increasing category-id order: class ``i`` is
the ``i``-th smallest category id, ``class_names[i]`` its name. The mapping is kept: the returned
``class_names`` is a :class:`CocoClassNames`, a ``list`` of str whose ``category_ids`` attribute
holds the COCO id of every class (``None`` for a name the file does not have), so results can be
written back with the original ids. Passing ``class_names`` fixes the order by *name*; an
annotation whose category is not among them, or whose ``category_id`` is not a category of the
file, is a ``bad_label`` issue.

**Crowd annotations** (``iscrowd=1``: one box around a group of objects) are kept and marked
``iscrowd=True``. As in COCO, they are not objects to detect: the training pipeline leaves them out
of the targets, and COCO evaluation (pycocotools) matches detections on them without counting
either a hit or a miss.

**Images with no annotations** are kept with zero boxes (counted as ``empty_image``), or left out
with ``skip_empty=True``.

**Bad input.** Every box goes through :func:`tfrcnn.data.validation.validate_record` (non-finite,
inverted, degenerate, bad label, outside: dropped in skip mode, raised in strict mode; partly
outside: clipped); messages name the JSON file, the annotation id and the image. A missing,
corrupt or truncated image file is an ``unreadable_image`` (skipped or raised, as in
:func:`tfrcnn.data.voc.read_voc`); a JSON ``height``/``width`` that disagrees with the real image is
a ``size_mismatch`` (boxes rescaled when the JSON size is a uniform scale of the image, else the
image is skipped; strict mode raises); an annotation naming an unknown image is a
``bad_annotation``. A missing or unparsable JSON file raises.

Example::

    records, class_names, report = read_coco("annotations/instances_val2017.json", "val2017")
    class_names[:2], class_names.category_ids[:2]    # ['person', 'bicycle'], [1, 2]
    print(report.summary())
"""

from __future__ import annotations

import json
import logging
import os

import numpy as np

from tfrcnn.data.images import (
    SWAPPING_ORIENTATIONS,
    ImageReadError,
    check_image,
    image_orientation,
    image_size,
)
from tfrcnn.data.validation import (
    STRICT,
    AnnotationError,
    ValidationReport,
    check_mode,
    validate_record,
)
from tfrcnn.data.voc import CHECK_IMAGES, DatasetNotFoundError, _fit_to_image
from tfrcnn.export.atomic import atomic_file

logger = logging.getLogger(__name__)

UNKNOWN_CLASS = -1
"""The class id given to an annotation whose category is unknown (then dropped as bad_label)."""


class CocoClassNames(list):
    """Class names (a ``list`` of str, index = class id) that remember the COCO category ids.

    ``category_ids[i]`` is the COCO ``category_id`` of class ``i`` (``None`` when the annotation file
    has no category of that name). Compares equal to a plain list of the same names.

    Example::

        names = CocoClassNames(["cat", "dog"], category_ids=[3, 7])
        names == ["cat", "dog"], names.category_ids     # True, [3, 7]
    """

    def __init__(self, names, category_ids=None):
        super().__init__(str(n) for n in names)
        if category_ids is None:
            category_ids = [None] * len(self)
        category_ids = list(category_ids)
        if len(category_ids) != len(self):
            raise ValueError(f"{len(self)} class names but {len(category_ids)} category ids")
        self.category_ids = category_ids

    def __repr__(self):
        return f"CocoClassNames({list(self)!r}, category_ids={self.category_ids!r})"


def _load_json(annotation_file):
    path = os.fspath(annotation_file)
    if not os.path.isfile(path):
        raise DatasetNotFoundError(f"COCO annotation file not found: {path}")
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"cannot parse COCO annotation file {path}: {e}") from None
    if not isinstance(data, dict):
        raise ValueError(
            f"{path}: a COCO annotation file holds a JSON object with 'images', "
            f"'annotations' and 'categories'; got a {type(data).__name__}"
        )
    for key in ("images", "categories"):
        if not isinstance(data.get(key), list):
            raise ValueError(
                f"{path}: no '{key}' list; a COCO instances file holds 'images', "
                "'annotations' and 'categories' lists"
            )
    if not isinstance(data.get("annotations", []), list):
        raise ValueError(f"{path}: 'annotations' must be a list")
    return path, data


def _categories(path, data):
    """[(category_id, name)] sorted by id; raises ValueError for duplicates or malformed entries."""
    cats, seen_ids, seen_names = [], set(), set()
    for i, cat in enumerate(data["categories"]):
        if not isinstance(cat, dict) or "id" not in cat or "name" not in cat:
            raise ValueError(f"{path}: category {i} must have an 'id' and a 'name', got {cat!r}")
        cid, name = cat["id"], str(cat["name"])
        if isinstance(cid, bool) or not isinstance(cid, int):
            raise ValueError(f"{path}: category {name!r} has a non-integer id {cid!r}")
        if cid in seen_ids:
            raise ValueError(f"{path}: category id {cid} appears twice")
        if name in seen_names:
            raise ValueError(f"{path}: category name {name!r} appears twice; names must be unique")
        seen_ids.add(cid)
        seen_names.add(name)
        cats.append((cid, name))
    return sorted(cats)


def coco_categories(annotation_file):
    """The class names of a COCO file, in increasing category-id order, with their ids.

    Returns a :class:`CocoClassNames` (``.category_ids`` holds the ids). Raises
    DatasetNotFoundError for a missing file and ValueError for an unparsable one or one without
    categories.
    """
    path, data = _load_json(annotation_file)
    cats = _categories(path, data)
    if not cats:
        raise ValueError(f"{path}: no categories")
    return CocoClassNames([n for _, n in cats], [c for c, _ in cats])


def _number(value):
    if isinstance(value, bool):
        return float("nan")
    try:
        return float(value)
    except (TypeError, ValueError):
        return float("nan")


def coco_to_yxyx(bboxes):
    """COCO ``[N, 4]`` ``(x, y, w, h)`` -> float32 ``(y1, x1, y2, x2)`` = ``(y, x, y + h, x + w)``.

    ``coco_to_yxyx([[10, 20, 30, 40]]) == [[20, 10, 60, 40]]``. The sums are done in float64.
    """
    b = np.asarray(bboxes, dtype=np.float64).reshape(-1, 4)
    x, y, w, h = b[:, 0], b[:, 1], b[:, 2], b[:, 3]
    return np.stack([y, x, y + h, x + w], axis=-1).astype(np.float32)


def yxyx_to_coco(boxes):
    """float ``[N, 4]`` ``(y1, x1, y2, x2)`` -> float64 COCO ``(x, y, w, h)`` (exact for float32 input)."""
    b = np.asarray(boxes, dtype=np.float32).reshape(-1, 4).astype(np.float64)
    return np.stack([b[:, 1], b[:, 0], b[:, 3] - b[:, 1], b[:, 2] - b[:, 0]], axis=-1)


def _image_id_from_file_name(file_name):
    return os.path.splitext(file_name.replace("\\", "/"))[0]


def read_coco(
    annotation_file,
    image_dir,
    *,
    class_names=None,
    mode="skip",
    skip_empty=False,
    check_images="quick",
    report=None,
):
    """Reads a COCO instances JSON into lazy records (see the module docstring for the rules).

    Args:
      annotation_file: the COCO instances JSON file.
      image_dir: the folder the images' ``file_name`` values are relative to.
      class_names: the class names, index = class id, matched to the file's categories by name;
        default: every category of the file in increasing id order.
      mode: ``"skip"``: bad boxes and images are dropped, logged and counted; ``"strict"``: the first
        problem raises (AnnotationError for annotations, ImageReadError for images), naming the file
        and the annotation id.
      skip_empty: leave out images with no boxes (counted as ``empty_image`` either way).
      check_images: ``"quick"`` (header and end-of-file marker: finds truncated files), ``"full"``
        (decodes every image) or ``"none"`` (header only).
      report: a ValidationReport to add to; a new one by default.

    Returns:
      ``(records, class_names, report)``: records in the file's image order, a
      :class:`CocoClassNames` (a list of str with ``.category_ids``, the COCO id of each class) and
      the report.

    Raises:
      DatasetNotFoundError (a FileNotFoundError and ValueError): the JSON file is missing.
      ValueError: an unparsable or malformed JSON, duplicate ids, no usable image, a bad argument.
      AnnotationError, ImageReadError: strict mode only.

    Example::

        records, names, report = read_coco("instances_val2017.json", "val2017")
        records[0]["boxes"], names.category_ids, report.summary()
    """
    check_mode(mode)
    if check_images not in CHECK_IMAGES:
        raise ValueError(f"check_images must be one of {CHECK_IMAGES}, got {check_images!r}")
    path, data = _load_json(annotation_file)
    image_dir = os.fspath(image_dir)
    if not os.path.isdir(image_dir):
        raise DatasetNotFoundError(f"COCO image folder not found: {image_dir} (for {path})")
    strict = mode == STRICT
    report = ValidationReport() if report is None else report

    cats = _categories(path, data)
    if class_names is None:
        if not cats:
            raise ValueError(f"{path}: no categories; pass class_names or add 'categories'")
        names = CocoClassNames([n for _, n in cats], [c for c, _ in cats])
    else:
        names = [str(n) for n in class_names]
        if not names or len(set(names)) != len(names):
            raise ValueError(f"class_names must be non-empty and unique, got {names}")
        by_name = {n: c for c, n in cats}
        names = CocoClassNames(names, [by_name.get(n) for n in names])
    index_of_name = {n: i for i, n in enumerate(names)}
    class_of_category = {c: index_of_name.get(n, UNKNOWN_CLASS) for c, n in cats}
    category_name = dict(cats)
    known_ids = ", ".join(str(c) for c, _ in cats)

    images, image_ids = [], set()
    for i, img in enumerate(data["images"]):
        if not isinstance(img, dict) or "id" not in img or not img.get("file_name"):
            raise ValueError(
                f"{path}: image entry {i} must have an 'id' and a 'file_name', got {img!r}"
            )
        if img["id"] in image_ids:
            raise ValueError(f"{path}: image id {img['id']!r} appears twice")
        image_ids.add(img["id"])
        images.append(img)

    by_image = {img["id"]: [] for img in images}
    for j, ann in enumerate(data.get("annotations", [])):
        if not isinstance(ann, dict):
            raise ValueError(f"{path}: annotation {j} is not a JSON object: {ann!r}")
        ann_id = ann.get("id", f"#{j}")
        if ann.get("image_id") not in by_image:
            msg = (
                f"{path} annotation id {ann_id}: image_id {ann.get('image_id')!r} is not an image "
                "of the file; annotation skipped"
            )
            if strict:
                raise AnnotationError(msg)
            report.add("bad_annotation", msg)
            logger.warning(msg)
            continue
        by_image[ann["image_id"]].append(ann)

    records = []
    for img in images:
        record = _read_one(
            path,
            image_dir,
            img,
            by_image[img["id"]],
            names,
            class_of_category,
            category_name,
            known_ids,
            mode,
            strict,
            check_images,
            report,
        )
        if record is None:
            report.skipped_images += 1
            continue
        if len(record["boxes"]) == 0:
            report.add(
                "empty_image",
                f"{path}: no objects left in image {img['id']} "
                f"({img['file_name']})"
                + ("; image skipped" if skip_empty else "; image kept with no boxes"),
            )
            if skip_empty:
                report.skipped_images += 1
                continue
        records.append(record)
        report.images += 1
        report.boxes += len(record["boxes"])
    logger.info("read_coco %s: %s", path, report.summary())
    if not records:
        raise ValueError(f"no usable images in {path} (images in {image_dir}): {report.summary()}")
    return records, names, report


def _read_one(
    path,
    image_dir,
    img,
    anns,
    names,
    class_of_category,
    category_name,
    known_ids,
    mode,
    strict,
    check_images,
    report,
):
    file_name = str(img["file_name"])
    image_path = os.path.join(image_dir, file_name)
    where = f"{path} image {img['id']} ({file_name})"
    try:
        stored_h, stored_w, orientation = image_orientation(image_path)
        if check_images != "none":
            check_image(image_path, full=check_images == "full")
    except ImageReadError as e:
        if strict:
            raise ImageReadError(f"{e} (image {img['id']} of {path})") from None
        msg = f"{e} (image {img['id']} of {path}); image skipped"
        report.add("unreadable_image", msg)
        logger.warning(msg)
        return None
    stored = (stored_h, stored_w)
    upright = stored[::-1] if orientation in SWAPPING_ORIENTATIONS else stored

    bboxes = []
    for ann in anns:
        bbox = ann.get("bbox")
        if isinstance(bbox, (list, tuple)) and len(bbox) == 4:
            bboxes.append([_number(v) for v in bbox])
        else:
            bboxes.append([float("nan")] * 4)
    bboxes = np.array(bboxes, np.float64).reshape(-1, 4)
    boxes = coco_to_yxyx(bboxes)
    cat_ids = [ann.get("category_id") for ann in anns]
    cat_ids = [c if c is None or isinstance(c, (int, float, str)) else repr(c) for c in cat_ids]
    classes = np.array(
        [class_of_category.get(c, UNKNOWN_CLASS) for c in cat_ids], np.int32
    ).reshape(-1)
    iscrowd = np.array([bool(ann.get("iscrowd", 0)) for ann in anns], bool)
    difficult = np.array([bool(ann.get("difficult", 0)) for ann in anns], bool)
    ann_ids = np.array(
        [ann.get("id", -1) if isinstance(ann.get("id", -1), int) else -1 for ann in anns], np.int64
    )

    json_size = (_number(img.get("height")), _number(img.get("width")))
    height, width = upright
    if all(np.isfinite(v) and v > 0 for v in json_size):
        json_size = (int(round(json_size[0])), int(round(json_size[1])))
        if json_size != tuple(upright):
            msg = (
                f"{where}: height x width {json_size[0]}x{json_size[1]} in the JSON disagrees with "
                f"the image file ({height}x{width} upright, EXIF orientation {orientation})"
            )
            if strict:
                raise AnnotationError(msg)
            fitted, done = _fit_to_image(boxes, json_size, stored, orientation)
            if fitted is None:
                msg += f": {done}; image skipped"
                report.add("size_mismatch", msg)
                logger.warning(msg)
                return None
            msg += f": {done}"
            report.add("size_mismatch", msg)
            logger.warning(msg)
            boxes = fitted

    def describe(i):
        cid = cat_ids[i]
        if cid in category_name:
            cat = f"category_id={cid!r} ({category_name[cid]!r}"
            cat += ")" if classes[i] != UNKNOWN_CLASS else ", not among class_names)"
        else:
            cat = f"category_id={cid!r}: not a category of the file (ids: {known_ids})"
        xywh = ", ".join(f"{v:g}" for v in bboxes[i])
        yxyx = ", ".join(f"{v:g}" for v in boxes[i])
        return (
            f"annotation id {anns[i].get('id', '?')} of image {img['id']} ({file_name}), "
            f"{cat}, bbox [x, y, w, h]=[{xywh}] -> [y1, x1, y2, x2]=[{yxyx}]"
        )

    (boxes, classes, kept), _ = validate_record(
        boxes,
        classes,
        height,
        width,
        source=path,
        num_classes=len(names),
        mode=mode,
        class_names=list(names),
        describe=describe,
        report=report,
    )
    return {
        "path": image_path,
        "image_id": _image_id_from_file_name(file_name),
        "coco_id": img["id"],
        "boxes": boxes.astype(np.float32).reshape(-1, 4),
        "classes": classes.astype(np.int32),
        "difficult": difficult[kept],
        "iscrowd": iscrowd[kept],
        "ann_ids": ann_ids[kept],
        "height": int(upright[0]),
        "width": int(upright[1]),
    }


def _record_size(record, i):
    if record.get("height") and record.get("width"):
        return int(record["height"]), int(record["width"])
    if "image" in record:
        shape = np.shape(record["image"])
        return int(shape[0]), int(shape[1])
    if "path" in record:
        return image_size(record["path"])
    raise ValueError(
        f"record {i} ({record.get('image_id')!r}) has no 'height'/'width', 'image' "
        "or 'path' to size it"
    )


def _file_name(record, i, image_dir):
    if "file_name" in record:
        return str(record["file_name"])
    if "path" not in record:
        raise ValueError(
            f"record {i} ({record.get('image_id')!r}) has no 'path': write_coco writes "
            "annotations only, so every record must name its image file"
        )
    p = os.path.abspath(os.fspath(record["path"]))
    if image_dir is not None:
        rel = os.path.relpath(p, os.path.abspath(os.fspath(image_dir)))
        if not rel.startswith(os.pardir):
            return rel.replace(os.sep, "/")
    return os.path.basename(p)


def write_coco(records, class_names, annotation_file, *, image_dir=None, category_ids=None):
    """Writes records as a COCO instances JSON file (annotations only; the images stay where they are).

    Args:
      records: records with ``"path"`` (or ``"file_name"``), ``"boxes"`` (yxyx absolute pixels),
        ``"classes"`` (0 .. C-1), optional ``"iscrowd"``, ``"difficult"``, ``"height"``/``"width"``
        (else read from the image header or the ``"image"`` array), ``"coco_id"`` (else images are
        numbered 1, 2, ...).
      class_names: the class names, index = class id.
      annotation_file: the JSON file to write (atomically: a temporary sibling renamed into place).
      image_dir: ``file_name`` is the image path relative to this folder (default: its basename).
      category_ids: the COCO id of each class; default ``class_names.category_ids`` when it is a
        :class:`CocoClassNames` with all ids known, else ``1 .. C``.

    Each box becomes an annotation with ``bbox = [x1, y1, x2 - x1, y2 - y1]``, ``area = w * h``,
    ``iscrowd`` (0/1), ``segmentation = []`` and, when true, the non-standard ``"difficult": 1``
    (kept by :func:`read_coco`; pycocotools ignores it). Annotation ids are 1, 2, ...

    Returns the path written. Raises ValueError for a record with bad classes or shapes.

    Example::

        write_coco(records, ["Platelets", "RBC", "WBC"], "bccd.json", image_dir="bccd/JPEGImages")
    """
    names = [str(n) for n in class_names]
    if category_ids is None:
        ids = getattr(class_names, "category_ids", None)
        category_ids = ids if ids is not None and None not in ids else range(1, len(names) + 1)
    category_ids = [int(c) for c in category_ids]
    if len(category_ids) != len(names) or len(set(category_ids)) != len(category_ids):
        raise ValueError(f"category_ids must be {len(names)} unique ids, got {category_ids}")
    images, annotations = [], []
    used_ids = set()
    for i, record in enumerate(records):
        coco_id = record.get("coco_id")
        coco_id = int(coco_id) if coco_id is not None else i + 1
        if coco_id in used_ids:
            raise ValueError(
                f"record {i} ({record.get('image_id')!r}): image id {coco_id} used twice"
            )
        used_ids.add(coco_id)
        height, width = _record_size(record, i)
        images.append(
            {
                "id": coco_id,
                "file_name": _file_name(record, i, image_dir),
                "height": height,
                "width": width,
            }
        )
        boxes = np.asarray(record.get("boxes", np.zeros((0, 4))), np.float32).reshape(-1, 4)
        classes = np.asarray(record.get("classes", np.zeros((0,))), np.int64).reshape(-1)
        n = len(boxes)
        iscrowd = np.asarray(record.get("iscrowd", np.zeros(n, bool)), bool).reshape(-1)
        difficult = np.asarray(record.get("difficult", np.zeros(n, bool)), bool).reshape(-1)
        if not (len(classes) == len(iscrowd) == len(difficult) == n):
            raise ValueError(
                f"record {i} ({record.get('image_id')!r}): {n} boxes but "
                f"{len(classes)} classes, {len(iscrowd)} iscrowd, {len(difficult)} difficult"
            )
        bad = (classes < 0) | (classes >= len(names))
        if bad.any():
            raise ValueError(
                f"record {i} ({record.get('image_id')!r}): class id "
                f"{int(classes[bad][0])} not in 0..{len(names) - 1}"
            )
        for box, c, crowd, diff in zip(yxyx_to_coco(boxes), classes, iscrowd, difficult):
            ann = {
                "id": len(annotations) + 1,
                "image_id": coco_id,
                "category_id": category_ids[int(c)],
                "bbox": [float(v) for v in box],
                "area": float(box[2] * box[3]),
                "iscrowd": int(crowd),
                "segmentation": [],
            }
            if diff:
                ann["difficult"] = 1
            annotations.append(ann)
    data = {
        "info": {"description": "written by tfrcnn.data.coco.write_coco"},
        "licenses": [],
        "images": images,
        "annotations": annotations,
        "categories": [
            {"id": c, "name": n, "supercategory": ""} for c, n in sorted(zip(category_ids, names))
        ],
    }
    path = os.path.abspath(os.fspath(annotation_file))
    with atomic_file(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        json.dump(data, f)
    return path
