"""Reading a Pascal VOC folder into records.

Shapes: ``N`` boxes of one image.

Layout::

    root/ImageSets/Main/{split}.txt    one image id a line
    root/Annotations/{id}.xml          <size>, <object><name>, <difficult>, <bndbox>
    root/JPEGImages/{id}.jpg           or the <filename> the XML names, when that file exists

Each image becomes a lazy record (the pixels are decoded later, by the pipeline, with
:func:`tfrcnn.data.images.load_image`, so a folder of 4000 px photos does not fill memory)::

    {"path": str, "image_id": str,
     "boxes": float32 [N, 4] (y1, x1, y2, x2) absolute pixels, continuous coordinates,
     "classes": int32 [N] in 0 .. len(class_names) - 1,
     "difficult": bool [N],
     "height": int, "width": int}       # the upright image size (EXIF orientation applied)

**Coordinates.** VOC corners are 1-based inclusive pixel indices: ``xmin=1, xmax=10`` covers the
first ten pixel columns. In our continuous convention pixel column ``i`` spans ``[i, i+1)`` with
``i`` 0-based, so those ten columns span ``[0, 10]``: ``x1 = xmin - 1``, ``x2 = xmax`` (and the same
for y). Widths come out right (``x2 - x1 = xmax - xmin + 1`` pixels) and a box touching the right
border (``xmax = W``) ends exactly at ``W``. ``xmax == xmin`` (a click without a drag, as in BCCD's
two zero-area boxes) is degenerate and ``xmax < xmin`` inverted, judged on the file's numbers.

**Difficult** objects are kept and marked ``difficult=True`` (the VOC metric ignores them and
training may use them); ``keep_difficult=False`` drops them.

**Class names** default to the sorted set of ``<name>`` values in *every* XML of
``Annotations/`` (:func:`voc_class_names`), not only the split's, so ``trainval`` and ``test`` read
separately get the same ids. For BCCD: ``["Platelets", "RBC", "WBC"]``. Pass ``class_names``
explicitly to fix the order; a name not in it is a ``bad_label`` issue.

**Sizes and EXIF.** With ``check_image_size`` the XML's ``<size>`` is compared with the real image
(header only, after EXIF orientation). On disagreement (a ``size_mismatch`` issue) skip mode
repairs what it can prove and skips the rest:

- the XML size is the *stored* size (before EXIF orientation) of an image whose orientation swaps
  height and width (5..8), possibly uniformly scaled: the annotation tool ignored EXIF, so the
  boxes are scaled to the stored size and mapped with the orientation onto the upright image;
- the XML size is a uniform scale of the upright size (the image was resized after annotating):
  the boxes are scaled;
- anything else (including a swapped size without an EXIF orientation to say which way the
  image turned) skips the image.

An orientation that keeps the size (2, 3, 4), or any orientation of a square image, cannot be told
apart from an annotation made on the upright image; such boxes are used as written.

Bad input never stops a skip-mode read silently: every problem is logged, counted in the
:class:`~tfrcnn.data.validation.ValidationReport` and its message names the file (and box).

Example::

    records, class_names, report = read_voc("datasets/bccd", split=("trainval", "test"))
    print(report.summary())   # 364 images, 4886 boxes kept; issues: 2 degenerate
"""

from __future__ import annotations

import logging
import os
import xml.etree.ElementTree as ET

import numpy as np

from tfrcnn.data.images import (
    SWAPPING_ORIENTATIONS,
    ImageReadError,
    check_image,
    image_orientation,
    orient_boxes,
)
from tfrcnn.data.validation import (
    STRICT,
    AnnotationError,
    ValidationReport,
    check_mode,
    validate_record,
)

logger = logging.getLogger(__name__)

SPLIT_DIR = os.path.join("ImageSets", "Main")
ANNOTATION_DIR = "Annotations"
IMAGE_DIR = "JPEGImages"
IMAGE_EXTENSIONS = (
    ".jpg",
    ".jpeg",
    ".png",
    ".JPG",
    ".JPEG",
    ".PNG",
    ".bmp",
    ".tif",
    ".tiff",
    ".webp",
)
CHECK_IMAGES = ("quick", "full", "none")


class DatasetNotFoundError(FileNotFoundError, ValueError):
    """A dataset folder or split file is missing. Both a FileNotFoundError and a ValueError."""


def available_splits(root):
    """The split names ``ImageSets/Main/*.txt`` holds (per-class files like ``cat_train`` left out)."""
    folder = os.path.join(os.fspath(root), SPLIT_DIR)
    if not os.path.isdir(folder):
        return []
    stems = sorted(f[:-4] for f in os.listdir(folder) if f.endswith(".txt"))
    plain = [s for s in stems if "_" not in s]
    return plain or stems


def _read_split(root, split):
    path = os.path.join(root, SPLIT_DIR, f"{split}.txt")
    if not os.path.isfile(path):
        if not os.path.isdir(root):
            raise DatasetNotFoundError(f"VOC dataset folder not found: {root}")
        splits = available_splits(root)
        have = (
            f"available splits: {', '.join(splits)}"
            if splits
            else f"no split files in {os.path.join(root, SPLIT_DIR)}; a VOC folder holds "
            f"{SPLIT_DIR}/<split>.txt, {ANNOTATION_DIR}/<id>.xml and {IMAGE_DIR}/<id>.jpg"
        )
        raise DatasetNotFoundError(f"split file not found: {path} ({have})")
    ids, seen = [], set()
    with open(path, encoding="utf-8") as f:
        for line in f:
            parts = line.split()
            if not parts:
                continue
            if parts[0] in seen:
                logger.warning("%s: image id %s listed twice; read once", path, parts[0])
                continue
            seen.add(parts[0])
            ids.append(parts[0])
    if not ids:
        raise ValueError(f"split file {path} lists no image ids: the split {split!r} is empty")
    return ids


def voc_class_names(root):
    """The sorted set of object ``<name>`` values in every ``Annotations/*.xml`` under ``root``.

    Unparsable files are skipped with a warning (:func:`read_voc` reports them). For BCCD:
    ``["Platelets", "RBC", "WBC"]``. Raises DatasetNotFoundError when there is no Annotations
    folder and ValueError when no object is found.
    """
    folder = os.path.join(os.fspath(root), ANNOTATION_DIR)
    if not os.path.isdir(folder):
        raise DatasetNotFoundError(f"VOC annotation folder not found: {folder}")
    names = set()
    for fname in sorted(os.listdir(folder)):
        if not fname.endswith(".xml"):
            continue
        try:
            tree = ET.parse(os.path.join(folder, fname))
        except (ET.ParseError, OSError) as e:
            logger.warning("cannot parse %s: %s", os.path.join(folder, fname), e)
            continue
        for obj in tree.getroot().iter("object"):
            name = (obj.findtext("name") or "").strip()
            if name:
                names.add(name)
    if not names:
        raise ValueError(f"no object names found in {folder}/*.xml: pass class_names explicitly")
    return sorted(names)


def _number(text):
    try:
        return float(text)
    except (TypeError, ValueError):
        return float("nan")


def _parse_annotation(path):
    """Returns (filename or None, (height, width) or None, objects); raises AnnotationError."""
    if not os.path.isfile(path):
        raise AnnotationError(f"annotation file not found: {path}")
    try:
        root = ET.parse(path).getroot()
    except (ET.ParseError, OSError) as e:
        raise AnnotationError(f"cannot parse annotation {path}: {e}") from None
    filename = (root.findtext("filename") or "").strip() or None
    size = None
    size_el = root.find("size")
    if size_el is not None:
        h, w = _number(size_el.findtext("height")), _number(size_el.findtext("width"))
        if np.isfinite(h) and np.isfinite(w) and h > 0 and w > 0:
            size = (int(round(h)), int(round(w)))
    objects = []
    for obj in root.findall("object"):
        name = (obj.findtext("name") or "").strip()
        bnd = obj.find("bndbox")
        corners = [
            _number(None if bnd is None else bnd.findtext(k))
            for k in ("xmin", "ymin", "xmax", "ymax")
        ]
        difficult = _number((obj.findtext("difficult") or "0").strip())
        objects.append((name, corners, bool(np.isfinite(difficult) and difficult != 0)))
    return filename, size, objects


def _find_image(root, image_id, filename):
    folder = os.path.join(root, IMAGE_DIR)
    if filename:
        candidate = os.path.join(folder, os.path.basename(filename))
        if os.path.isfile(candidate):
            return candidate
    for ext in IMAGE_EXTENSIONS:
        candidate = os.path.join(folder, image_id + ext)
        if os.path.isfile(candidate):
            return candidate
    return os.path.join(folder, image_id + ".jpg")


def voc_to_yxyx(corners):
    """VOC ``[N, 4]`` ``(xmin, ymin, xmax, ymax)`` 1-based inclusive -> float32 ``(y1, x1, y2, x2)``.

    ``x1 = xmin - 1, y1 = ymin - 1, x2 = xmax, y2 = ymax`` (see the module docstring):
    ``voc_to_yxyx([[1, 1, 10, 10]]) == [[0, 0, 10, 10]]``.
    """
    c = np.asarray(corners, dtype=np.float32).reshape(-1, 4)
    return np.stack([c[:, 1] - 1, c[:, 0] - 1, c[:, 3], c[:, 2]], axis=-1).astype(np.float32)


def _uniform_scale(src, dst):
    """(sy, sx) when dst is a uniform scale of src (up to rounding to whole pixels), else None."""
    (sh, sw), (dh, dw) = src, dst
    sy, sx = dh / sh, dw / sw
    if abs(sy - sx) <= 1.0 / sh + 1.0 / sw:
        return sy, sx
    return None


def _fit_to_image(boxes, xml_size, stored_size, orientation):
    """Maps boxes annotated on an image of ``xml_size`` onto the real upright image.

    Returns (boxes, what was done) or (None, why not).
    """
    upright = stored_size[::-1] if orientation in SWAPPING_ORIENTATIONS else stored_size
    if orientation in SWAPPING_ORIENTATIONS:
        scale = _uniform_scale(xml_size, stored_size)
        if scale is not None and _uniform_scale(xml_size, upright) is None:
            scaled = boxes * np.array([scale[0], scale[1], scale[0], scale[1]], np.float32)
            done = "the XML size is the stored size before EXIF orientation: boxes "
            if scale != (1.0, 1.0):
                done += f"scaled by {scale[0]:.4g} x {scale[1]:.4g} and "
            done += f"mapped with EXIF orientation {orientation}"
            return orient_boxes(scaled, orientation, *stored_size), done
    scale = _uniform_scale(xml_size, upright)
    if scale is not None:
        return (
            boxes * np.array([scale[0], scale[1], scale[0], scale[1]], np.float32),
            f"boxes scaled by {scale[0]:.4g} x {scale[1]:.4g}",
        )
    if tuple(xml_size) == tuple(upright[::-1]):
        return (
            None,
            "height and width swapped but the image has no EXIF orientation to say which way",
        )
    return None, "not a uniform scale"


def read_voc(
    root,
    split="trainval",
    class_names=None,
    *,
    mode="skip",
    keep_difficult=True,
    skip_empty=False,
    check_image_size=True,
    check_images="quick",
    report=None,
):
    """Reads a Pascal VOC folder into lazy records (see the module docstring for the rules).

    Args:
      root: the folder holding ``ImageSets/Main``, ``Annotations`` and ``JPEGImages``.
      split: a split name (``ImageSets/Main/{split}.txt``) or a sequence of them, read in order
        (an id listed twice is read once).
      class_names: the class names, index = class id; default :func:`voc_class_names`.
      mode: ``"skip"``: bad boxes and images are dropped, logged and counted; ``"strict"``: the first
        problem raises (AnnotationError for annotations, ImageReadError for images), naming the file.
      keep_difficult: keep objects marked difficult (with ``difficult=True``); False drops them.
      skip_empty: leave out images with no boxes left (they are counted as ``empty_image`` either way).
      check_image_size: compare the XML ``<size>`` with the real image and repair or skip on
        disagreement (module docstring). False trusts the XML size (boxes are clipped to it).
      check_images: ``"quick"`` (header and end-of-file marker, a full decode only when that is
        missing: finds truncated files), ``"full"`` (decodes every image) or ``"none"`` (header only).
      report: a ValidationReport to add to; a new one by default.

    Returns:
      ``(records, class_names, report)``: records in split order, the class names (list of str),
      and the report (also logged as one info line).

    Raises:
      DatasetNotFoundError (a FileNotFoundError and ValueError): missing folder or split file;
        the message lists the available splits.
      ValueError: an empty split, or no usable image left; a bad argument.
      AnnotationError, ImageReadError: strict mode only.

    Example::

        records, names, report = read_voc("datasets/bccd", "trainval")
        records[0]["boxes"][:2], names, report.summary()
    """
    check_mode(mode)
    if check_images not in CHECK_IMAGES:
        raise ValueError(f"check_images must be one of {CHECK_IMAGES}, got {check_images!r}")
    root = os.fspath(root)
    splits = [split] if isinstance(split, (str, os.PathLike)) else list(split)
    if not splits:
        raise ValueError("split must name at least one split, e.g. 'trainval'")
    ids, seen = [], set()
    for s in splits:
        for image_id in _read_split(root, os.fspath(s)):
            if image_id not in seen:
                seen.add(image_id)
                ids.append(image_id)
    if class_names is None:
        class_names = voc_class_names(root)
    class_names = [str(n) for n in class_names]
    if not class_names or len(set(class_names)) != len(class_names):
        raise ValueError(f"class_names must be non-empty and unique, got {class_names}")
    class_ids = {n: i for i, n in enumerate(class_names)}
    report = ValidationReport() if report is None else report
    strict = mode == STRICT

    records = []
    for image_id in ids:
        record = _read_one(
            root,
            image_id,
            class_names,
            class_ids,
            strict,
            mode,
            keep_difficult,
            check_image_size,
            check_images,
            report,
        )
        if record is None:
            report.skipped_images += 1
            continue
        if len(record["boxes"]) == 0:
            report.add(
                "empty_image",
                f"{record['source']}: no objects left in image {image_id}"
                + ("; image skipped" if skip_empty else "; image kept with no boxes"),
            )
            if skip_empty:
                report.skipped_images += 1
                continue
        del record["source"]
        records.append(record)
        report.images += 1
        report.boxes += len(record["boxes"])
    logger.info("read_voc %s %s: %s", root, "+".join(map(str, splits)), report.summary())
    if not records:
        raise ValueError(
            f"no usable images in {root} split {'+'.join(map(str, splits))}: {report.summary()}"
        )
    return records, class_names, report


def _read_one(
    root,
    image_id,
    class_names,
    class_ids,
    strict,
    mode,
    keep_difficult,
    check_image_size,
    check_images,
    report,
):
    xml_path = os.path.join(root, ANNOTATION_DIR, f"{image_id}.xml")
    try:
        filename, xml_size, objects = _parse_annotation(xml_path)
    except AnnotationError as e:
        if strict:
            raise
        report.add("bad_annotation", f"{e}; image {image_id} skipped")
        logger.warning("%s; image %s skipped", e, image_id)
        return None

    image_path = _find_image(root, image_id, filename)
    try:
        stored_h, stored_w, orientation = image_orientation(image_path)
        if check_images != "none":
            check_image(image_path, full=check_images == "full")
    except ImageReadError as e:
        if strict:
            raise
        report.add("unreadable_image", f"{e} (annotation {xml_path}); image skipped")
        logger.warning("%s (annotation %s); image skipped", e, xml_path)
        return None
    stored = (stored_h, stored_w)
    upright = stored[::-1] if orientation in SWAPPING_ORIENTATIONS else stored

    names = [o[0] for o in objects]
    corners = np.array([o[1] for o in objects], np.float32).reshape(-1, 4)
    difficult = np.array([o[2] for o in objects], bool)
    classes = np.array([class_ids.get(n, -1) for n in names], np.int32)
    boxes = voc_to_yxyx(corners)

    height, width = upright  # the size boxes are validated (clipped) against
    if xml_size is not None and tuple(xml_size) != tuple(upright):
        if check_image_size:
            fitted, done = _fit_to_image(boxes, xml_size, stored, orientation)
            msg = (
                f"{xml_path}: <size> height x width {xml_size[0]}x{xml_size[1]} disagrees with "
                f"image {image_path} ({height}x{width} upright, EXIF orientation {orientation})"
            )
            if strict:
                raise AnnotationError(msg)
            if fitted is None:
                msg += f": {done}; image skipped"
                report.add("size_mismatch", msg)
                logger.warning(msg)
                return None
            msg += f": {done}"
            report.add("size_mismatch", msg)
            logger.warning(msg)
            boxes = fitted
        else:
            height, width = xml_size

    def describe(i):
        xmin, ymin, xmax, ymax = (f"{v:g}" for v in corners[i])
        yxyx = ", ".join(f"{v:g}" for v in boxes[i])
        return (
            f"box {i} ({names[i]!r}, xmin={xmin} ymin={ymin} xmax={xmax} ymax={ymax}; "
            f"[y1, x1, y2, x2]=[{yxyx}])"
        )

    (boxes, classes, kept), _ = validate_record(
        boxes,
        classes,
        height,
        width,
        source=xml_path,
        num_classes=len(class_names),
        mode=mode,
        inclusive=True,
        class_names=class_names,
        labels=names,
        describe=describe,
        report=report,
    )
    difficult = difficult[kept]
    if not keep_difficult:
        boxes, classes, difficult = boxes[~difficult], classes[~difficult], difficult[~difficult]
    return {
        "path": image_path,
        "image_id": image_id,
        "boxes": boxes.astype(np.float32).reshape(-1, 4),
        "classes": classes.astype(np.int32),
        "difficult": difficult.astype(bool),
        "height": int(upright[0]),
        "width": int(upright[1]),
        "source": xml_path,
    }
