"""Detection data sets as TFRecord files of ``tf.train.Example``, in the TF Object Detection API layout.

Shapes: ``N`` boxes of one image; ``H``, ``W`` the image size; ``C`` classes.

Every example uses the keys of the TensorFlow Object Detection API, so files written here are read
by OD API tools and OD API files are read here:

=================================  ==========  ====================================================
key                                type        value
=================================  ==========  ====================================================
image/encoded                      bytes       the image file (JPEG or PNG), see "Pixels" below
image/format                       bytes       ``b"jpeg"`` or ``b"png"``
image/filename                     bytes       the image file's name
image/source_id                    bytes       the record's ``image_id``
image/height, image/width          int64       the upright image size in pixels
image/object/bbox/ymin ... xmax    float [N]   box corners **normalised to [0, 1]** by H and W
image/object/class/label           int64 [N]   **1-based**: class id + 1 (0 is the OD API's background)
image/object/class/text            bytes [N]   the class name
image/object/difficult             int64 [N]   0/1
image/object/is_crowd              int64 [N]   0/1
=================================  ==========  ====================================================

Reading turns them back into our convention: ``boxes = [ymin * H, xmin * W, ymax * H, xmax * W]``
(float32 absolute pixels, continuous coordinates, ``H``, ``W`` of the decoded image) and
``classes = label - 1``.

**Pixels.** The original file bytes are stored when TensorFlow decodes them to exactly the pixels
:func:`tfrcnn.data.images.load_image` gives: a JPEG or an 8-bit PNG, RGB or grayscale, without an
EXIF rotation. Anything else (EXIF-rotated photos, RGBA, palette, CMYK, 16-bit, BMP, TIFF...) and
in-memory ``"image"`` arrays are stored as a lossless PNG of the upright RGB pixels, so
decoding always gives the image the boxes were drawn on. JPEGs are decoded with
``dct_method="INTEGER_ACCURATE"`` (:func:`decode_image`), which matches PIL pixel for pixel
(TensorFlow's default fast IDCT differs by up to 4 levels).

**Shards** are named ``{prefix}-00000-of-00004.tfrecord``; records are split into contiguous,
balanced blocks, so reading the shards in order gives the records in their original order. Writing
is atomic: every shard goes to a hidden temporary file in the same folder and all are renamed at the
end; an interrupted write leaves no file with a final name (and earlier shards of the same prefix
with a different shard count are removed only after a successful write).

Example::

    records, names, report = read_voc("datasets/bccd", "trainval")
    paths = write_tfrecords(records, names, "data/bccd-trainval", num_shards=4)
    ds = read_tfrecords("data/bccd-trainval-*.tfrecord")     # dicts: image, boxes, classes, ...
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import re

import numpy as np
import tensorflow as tf
from PIL import Image

from tfrcnn.data.images import check_image, image_orientation, load_image
from tfrcnn.data.validation import STRICT, validate_record
from tfrcnn.export.atomic import atomic_file

logger = logging.getLogger(__name__)

SHARD_SUFFIX = ".tfrecord"
LABEL_OFFSET = 1
"""OD API labels are 1-based: ``label = class_id + LABEL_OFFSET``."""

SOURCE_FORMATS = ("voc", "coco")

_JPEG_MAGIC = b"\xff\xd8\xff"
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_PNG_RGB_OR_GRAY_8BIT = {(8, 0), (8, 2)}  # (bit depth, colour type) in the PNG header

_FEATURES = {
    "image/encoded": tf.io.FixedLenFeature([], tf.string),
    "image/format": tf.io.FixedLenFeature([], tf.string, default_value=""),
    "image/filename": tf.io.FixedLenFeature([], tf.string, default_value=""),
    "image/source_id": tf.io.FixedLenFeature([], tf.string, default_value=""),
    "image/height": tf.io.FixedLenFeature([], tf.int64, default_value=0),
    "image/width": tf.io.FixedLenFeature([], tf.int64, default_value=0),
    "image/object/bbox/xmin": tf.io.VarLenFeature(tf.float32),
    "image/object/bbox/xmax": tf.io.VarLenFeature(tf.float32),
    "image/object/bbox/ymin": tf.io.VarLenFeature(tf.float32),
    "image/object/bbox/ymax": tf.io.VarLenFeature(tf.float32),
    "image/object/class/label": tf.io.VarLenFeature(tf.int64),
    "image/object/class/text": tf.io.VarLenFeature(tf.string),
    "image/object/difficult": tf.io.VarLenFeature(tf.int64),
    "image/object/is_crowd": tf.io.VarLenFeature(tf.int64),
}


# ------------------------------------------------------------------------------------------ writing


def _bytes(values):
    return tf.train.Feature(bytes_list=tf.train.BytesList(value=list(values)))


def _ints(values):
    return tf.train.Feature(int64_list=tf.train.Int64List(value=[int(v) for v in values]))


def _floats(values):
    return tf.train.Feature(float_list=tf.train.FloatList(value=[float(v) for v in values]))


def _png_bytes(image):
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image, np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def _tf_decodes_like_load_image(path, data):
    """True when tf.io.decode_image(data, channels=3) gives exactly load_image(path)."""
    if data.startswith(_PNG_MAGIC):
        header_ok = len(data) > 26 and (data[24], data[25]) in _PNG_RGB_OR_GRAY_8BIT
        fmt = "png"
    elif data.startswith(_JPEG_MAGIC):
        header_ok = True
        fmt = "jpeg"
    else:
        return None
    if not header_ok:
        return None
    with Image.open(io.BytesIO(data)) as img:
        if img.mode not in ("RGB", "L"):
            return None
        if fmt == "png" and "transparency" in img.info:
            return None
    _, _, orientation = image_orientation(path)
    return fmt if orientation == 1 else None


def encode_record_image(record):
    """Returns ``(encoded bytes, format, height, width)`` for a record, as stored in image/encoded.

    The file's own bytes when TF decodes them as :func:`~tfrcnn.data.images.load_image` does (see the
    module docstring), else a PNG of the upright RGB pixels; a record read from a TFRecord
    (``"encoded"``) keeps its JPEG / PNG bytes. Raises ImageReadError for a bad file.
    """
    if "image" in record:
        image = np.asarray(record["image"])
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] != 3:
            raise ValueError(
                f"record {record.get('image_id')!r}: 'image' must be uint8 [H, W, 3], "
                f"got {image.dtype} {image.shape}"
            )
        return _png_bytes(image), "png", image.shape[0], image.shape[1]
    if "encoded" in record:  # a record read from a TFRecord: its upright JPEG / PNG bytes
        data = bytes(record["encoded"])
        fmt = (
            "png"
            if data.startswith(_PNG_MAGIC)
            else "jpeg"
            if data.startswith(_JPEG_MAGIC)
            else None
        )
        with Image.open(io.BytesIO(data)) as img:
            width, height = img.size
        if fmt is None:
            from tfrcnn.data.pipeline import decode_encoded

            image = decode_encoded(data, record.get("image_id"))
            return _png_bytes(image), "png", image.shape[0], image.shape[1]
        return data, fmt, height, width
    path = os.fspath(record["path"])
    height, width = check_image(path)  # header + end-of-file marker: a truncated file fails here
    with open(path, "rb") as f:
        data = f.read()
    fmt = _tf_decodes_like_load_image(path, data)
    if fmt is None:
        image = load_image(path)
        return _png_bytes(image), "png", image.shape[0], image.shape[1]
    return data, fmt, height, width


def record_to_example(record, class_names):
    """One record -> a ``tf.train.Example`` with the OD API keys (module docstring).

    The boxes are checked with :func:`~tfrcnn.data.validation.validate_record` in strict mode (a
    non-finite, inverted, degenerate, outside box or a class id outside ``0 .. C-1`` raises
    AnnotationError naming the image; a box partly outside the image is clipped to it).
    """
    image_id = str(record.get("image_id", ""))
    encoded, fmt, height, width = encode_record_image(record)
    if (
        record.get("height")
        and record.get("width")
        and (int(record["height"]), int(record["width"])) != (height, width)
    ):
        raise ValueError(
            f"record {image_id!r}: height x width {record['height']}x{record['width']} "
            f"disagrees with its image ({height}x{width})"
        )
    boxes = np.asarray(record.get("boxes", np.zeros((0, 4))), np.float32).reshape(-1, 4)
    n = len(boxes)
    classes = np.asarray(record.get("classes", np.zeros((0,))), np.int64).reshape(-1)
    difficult = np.asarray(record.get("difficult", np.zeros(n, bool)), bool).reshape(-1)
    iscrowd = np.asarray(record.get("iscrowd", np.zeros(n, bool)), bool).reshape(-1)
    if not (len(classes) == len(difficult) == len(iscrowd) == n):
        raise ValueError(
            f"record {image_id!r}: {n} boxes but {len(classes)} classes, "
            f"{len(difficult)} difficult, {len(iscrowd)} iscrowd"
        )
    source = f"record {image_id!r}" + (f" ({record['path']})" if "path" in record else "")
    (boxes, classes, _), _ = validate_record(
        boxes,
        classes,
        height,
        width,
        source=source,
        num_classes=len(class_names),
        mode=STRICT,
        class_names=list(class_names),
    )
    b = boxes.astype(np.float64)
    if "path" in record:
        filename = os.path.basename(os.fspath(record["path"]))
    else:
        filename = f"{image_id}.{'jpg' if fmt == 'jpeg' else fmt}"
    feature = {
        "image/encoded": _bytes([encoded]),
        "image/format": _bytes([fmt.encode()]),
        "image/filename": _bytes([filename.encode()]),
        "image/source_id": _bytes([image_id.encode()]),
        "image/height": _ints([height]),
        "image/width": _ints([width]),
        "image/object/bbox/ymin": _floats(b[:, 0] / height),
        "image/object/bbox/xmin": _floats(b[:, 1] / width),
        "image/object/bbox/ymax": _floats(b[:, 2] / height),
        "image/object/bbox/xmax": _floats(b[:, 3] / width),
        "image/object/class/label": _ints(classes + LABEL_OFFSET),
        "image/object/class/text": _bytes([str(class_names[c]).encode() for c in classes]),
        "image/object/difficult": _ints(difficult),
        "image/object/is_crowd": _ints(iscrowd),
    }
    return tf.train.Example(features=tf.train.Features(feature=feature))


def shard_paths(output_prefix, num_shards):
    """``[f"{prefix}-{i:05d}-of-{num_shards:05d}.tfrecord"]`` for ``i`` in ``0 .. num_shards-1``."""
    prefix = os.fspath(output_prefix)
    return [f"{prefix}-{i:05d}-of-{num_shards:05d}{SHARD_SUFFIX}" for i in range(num_shards)]


def _stale_shards(output_prefix, keep):
    prefix = os.path.abspath(os.fspath(output_prefix))
    pattern = re.compile(
        re.escape(os.path.basename(prefix)) + r"-\d{5}-of-\d{5}" + re.escape(SHARD_SUFFIX) + "$"
    )
    folder = os.path.dirname(prefix)
    keep = {os.path.abspath(p) for p in keep}
    return [
        os.path.join(folder, f)
        for f in sorted(os.listdir(folder))
        if pattern.match(f) and os.path.join(folder, f) not in keep
    ]


def write_tfrecords(records, class_names, output_prefix, num_shards=1):
    """Writes records as sharded TFRecord files of OD API ``tf.train.Example`` (module docstring).

    Args:
      records: records with ``"path"`` (an image file) or ``"image"`` (uint8 ``[H, W, 3]``),
        ``"boxes"`` float32 ``[N, 4]`` yxyx absolute pixels, ``"classes"`` int ``[N]`` in
        ``0 .. C-1``, ``"image_id"``, optional ``"difficult"``, ``"iscrowd"`` bool ``[N]``.
      class_names: the class names, index = class id (stored as image/object/class/text).
      output_prefix: path prefix of the shards; its folder is created.
      num_shards: the number of files; records are split into contiguous balanced blocks.

    Returns:
      the list of shard paths, in order.

    Raises:
      ValueError: no records, a bad ``num_shards``, a bad record (classes out of range, ...).
      AnnotationError: a degenerate, inverted, non-finite or outside box.
      ImageReadError: a missing, corrupt or truncated image file.
    On any error nothing with a final shard name is left (temporary files are removed).

    Example::

        write_tfrecords(records, ["Platelets", "RBC", "WBC"], "out/bccd-test", num_shards=2)
        # ['out/bccd-test-00000-of-00002.tfrecord', 'out/bccd-test-00001-of-00002.tfrecord']
    """
    records = list(records)
    if not records:
        raise ValueError("no records to write: the data set is empty")
    if (
        isinstance(num_shards, bool)
        or not isinstance(num_shards, (int, np.integer))
        or num_shards < 1
    ):
        raise ValueError(f"num_shards must be a positive integer, got {num_shards!r}")
    names = [str(n) for n in class_names]
    if not names or len(set(names)) != len(names):
        raise ValueError(f"class_names must be non-empty and unique, got {names}")
    num_shards = int(num_shards)
    finals = [os.path.abspath(p) for p in shard_paths(output_prefix, num_shards)]
    folder = os.path.dirname(finals[0])
    os.makedirs(folder, exist_ok=True)
    bounds = np.linspace(0, len(records), num_shards + 1).round().astype(int)
    # every shard goes to a temporary sibling; all are moved into place once all are written
    with contextlib.ExitStack() as stack:
        for shard, final in enumerate(finals):
            tmp = stack.enter_context(atomic_file(final))
            with tf.io.TFRecordWriter(tmp) as writer:
                for record in records[bounds[shard] : bounds[shard + 1]]:
                    writer.write(record_to_example(record, names).SerializeToString())
    for stale in _stale_shards(output_prefix, finals):
        logger.info(
            "removing %s: an earlier shard of %s with another shard count", stale, output_prefix
        )
        os.remove(stale)
    logger.info(
        "wrote %d records to %d shard(s) %s-*-of-%05d%s",
        len(records),
        num_shards,
        os.fspath(output_prefix),
        num_shards,
        SHARD_SUFFIX,
    )
    return shard_paths(output_prefix, num_shards)


# ------------------------------------------------------------------------------------------ reading


def _dense(parsed, key, default):
    return tf.sparse.to_dense(parsed[key], default_value=default)


def decode_image(encoded):
    """Decodes image bytes to uint8 ``[H, W, 3]`` with the same pixels as PIL / ``load_image``.

    JPEG goes through ``tf.io.decode_jpeg(dct_method="INTEGER_ACCURATE")``: TensorFlow's default
    (``tf.io.decode_image``) uses the fast integer IDCT, whose pixels differ from PIL's by up to 4
    levels. Other formats use ``tf.io.decode_image(channels=3, expand_animations=False)``.
    """
    image = tf.cond(
        tf.io.is_jpeg(encoded),
        lambda: tf.io.decode_jpeg(encoded, channels=3, dct_method="INTEGER_ACCURATE"),
        lambda: tf.io.decode_image(encoded, channels=3, dtype=tf.uint8, expand_animations=False),
    )
    image.set_shape([None, None, 3])
    return image


def parse_example(serialized):
    """Parses one serialized OD API ``tf.train.Example`` into our tensors; usable in ``Dataset.map``.

    Returns a dict: ``"image"`` uint8 ``[H, W, 3]`` (:func:`decode_image`: 3 channels, first
    frame of an animation, JPEG decoded with the accurate IDCT as PIL does), ``"boxes"`` float32
    ``[N, 4]`` yxyx absolute pixels (the normalised corners times the decoded image's size),
    ``"classes"`` int32 ``[N]`` (label - 1),
    ``"difficult"`` and ``"iscrowd"`` bool ``[N]`` (False when absent), ``"image_id"`` string
    (image/source_id, else image/filename).
    """
    parsed = tf.io.parse_single_example(serialized, _FEATURES)
    image = decode_image(parsed["image/encoded"])
    shape = tf.cast(tf.shape(image)[:2], tf.float64)
    h, w = shape[0], shape[1]
    ymin = tf.cast(_dense(parsed, "image/object/bbox/ymin", 0.0), tf.float64) * h
    xmin = tf.cast(_dense(parsed, "image/object/bbox/xmin", 0.0), tf.float64) * w
    ymax = tf.cast(_dense(parsed, "image/object/bbox/ymax", 0.0), tf.float64) * h
    xmax = tf.cast(_dense(parsed, "image/object/bbox/xmax", 0.0), tf.float64) * w
    boxes = tf.cast(tf.stack([ymin, xmin, ymax, xmax], axis=-1), tf.float32)
    boxes = tf.reshape(boxes, [-1, 4])
    n = tf.shape(boxes)[0]
    classes = tf.cast(_dense(parsed, "image/object/class/label", 0), tf.int32) - LABEL_OFFSET

    def flags(key):
        v = _dense(parsed, key, 0)
        # Absent (older OD API files have no is_crowd / difficult): all False.
        v = tf.cond(tf.equal(tf.size(v), n), lambda: v, lambda: tf.zeros([n], tf.int64))
        return tf.not_equal(v, 0)

    image_id = parsed["image/source_id"]
    image_id = tf.where(
        tf.equal(tf.strings.length(image_id), 0), parsed["image/filename"], image_id
    )
    return {
        "image": image,
        "boxes": boxes,
        "classes": classes,
        "difficult": flags("image/object/difficult"),
        "iscrowd": flags("image/object/is_crowd"),
        "image_id": image_id,
    }


def _resolve(pattern_or_paths):
    if isinstance(pattern_or_paths, (str, os.PathLike)):
        pattern = os.fspath(pattern_or_paths)
        paths = sorted(tf.io.gfile.glob(pattern))
        if not paths:
            raise FileNotFoundError(f"no TFRecord files match {pattern}")
        return paths
    paths = [os.fspath(p) for p in pattern_or_paths]
    if not paths:
        raise ValueError("no TFRecord files given")
    missing = [p for p in paths if not tf.io.gfile.exists(p)]
    if missing:
        raise FileNotFoundError(f"TFRecord file(s) not found: {', '.join(missing)}")
    return paths


def read_tfrecords(pattern_or_paths, *, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True):
    """A ``tf.data.Dataset`` of the examples of OD API TFRecord files, parsed by :func:`parse_example`.

    Args:
      pattern_or_paths: a glob pattern (``"data/bccd-*.tfrecord"``, files read in sorted order) or a
        list of paths (read in that order).
      num_parallel_calls: passed to ``Dataset.map`` for the parse and decode.
      deterministic: keep the file order (default); False lets parallel decoding reorder.

    Returns:
      a Dataset of dicts ``{"image": uint8 [H, W, 3], "boxes": float32 [N, 4] yxyx absolute
      pixels, "classes": int32 [N], "difficult": bool [N], "iscrowd": bool [N], "image_id":
      string}``, one per image, unbatched.

    Raises FileNotFoundError when nothing matches or a listed file is missing.

    Example::

        for ex in read_tfrecords("data/bccd-test-*.tfrecord").take(1):
            ex["image"].shape, ex["boxes"]
    """
    paths = _resolve(pattern_or_paths)
    ds = tf.data.TFRecordDataset(paths)
    return ds.map(parse_example, num_parallel_calls=num_parallel_calls, deterministic=deterministic)


def tfrecord_records(pattern_or_paths):
    """Reads TFRecord files into in-memory records (numpy) and the class names, for small data.

    Returns ``(records, class_names)``: records ``{"image", "boxes", "classes", "difficult",
    "iscrowd", "image_id" (str), "height", "width"}`` as :func:`read_tfrecords` gives them, and the
    class names recovered from image/object/class/text (index = label - 1; a class id that never
    appears is named ``"class_{id}"``, with a warning).

    Raises ValueError when one label carries two different texts, or a label is below 1.
    """
    paths = _resolve(pattern_or_paths)
    names = {}
    records = []
    for serialized in tf.data.TFRecordDataset(paths):
        example = tf.train.Example.FromString(serialized.numpy())
        feats = example.features.feature
        labels = list(feats["image/object/class/label"].int64_list.value)
        texts = [t.decode("utf-8") for t in feats["image/object/class/text"].bytes_list.value]
        parsed = {k: v.numpy() for k, v in parse_example(serialized).items()}
        image_id = parsed["image_id"].decode("utf-8")
        for i, label in enumerate(labels):
            if label < LABEL_OFFSET:
                raise ValueError(
                    f"{image_id}: class label {label} below {LABEL_OFFSET}; OD API labels "
                    "are 1-based (0 is background)"
                )
            if i < len(texts):
                known = names.setdefault(label - LABEL_OFFSET, texts[i])
                if known != texts[i]:
                    raise ValueError(
                        f"{image_id}: label {label} is named both {known!r} and "
                        f"{texts[i]!r} in image/object/class/text"
                    )
        parsed["image_id"] = image_id
        parsed["height"], parsed["width"] = (int(d) for d in parsed["image"].shape[:2])
        records.append(parsed)
    if not records:
        raise ValueError(f"no examples in {', '.join(paths)}: the data set is empty")
    top = max([c for r in records for c in r["classes"]] + list(names) + [-1])
    class_names = []
    for c in range(top + 1):
        if c not in names:
            logger.warning("class id %d has no image/object/class/text; named 'class_%d'", c, c)
        class_names.append(names.get(c, f"class_{c}"))
    return records, class_names


# ------------------------------------------------------------------------------------------ converting


def convert_to_tfrecord(
    source_format,
    source,
    output_prefix,
    num_shards=1,
    split=None,
    *,
    image_dir=None,
    class_names=None,
    mode="skip",
    skip_empty=False,
    check_images="quick",
):
    """Reads a VOC folder or a COCO JSON and writes it as sharded OD API TFRecord files.

    Args:
      source_format: ``"voc"`` or ``"coco"``.
      source: the VOC root folder, or the COCO instances JSON file.
      output_prefix: the shards' path prefix (``{prefix}-00000-of-00004.tfrecord``).
      num_shards: the number of shard files.
      split: VOC only: a split name or a list of them (default ``"trainval"``). Must be None for COCO.
      image_dir: COCO only (required): the folder the JSON's ``file_name`` values are relative to.
      class_names: fix the class names and order (default: the reader's).
      mode, skip_empty, check_images: passed to :func:`~tfrcnn.data.voc.read_voc` /
        :func:`~tfrcnn.data.coco.read_coco`.

    Returns:
      ``(paths, class_names, report)``: the shard paths, the class names (index = class id; the
      TFRecord label is id + 1) and the reader's ValidationReport.

    Example::

        paths, names, report = convert_to_tfrecord("voc", "datasets/bccd", "data/bccd-train",
                                                   num_shards=2, split="trainval")
    """
    if source_format == "voc":
        if image_dir is not None:
            raise ValueError("image_dir is for COCO; a VOC folder holds its images in JPEGImages")
        from tfrcnn.data.voc import read_voc

        records, names, report = read_voc(
            source,
            "trainval" if split is None else split,
            class_names,
            mode=mode,
            skip_empty=skip_empty,
            check_images=check_images,
        )
    elif source_format == "coco":
        if split is not None:
            raise ValueError(
                "split is for VOC; for COCO pass the split's JSON file as source and its "
                "image folder as image_dir"
            )
        if image_dir is None:
            raise ValueError(
                "image_dir is required for COCO: the folder the JSON's file_name values "
                "are relative to (e.g. coco/val2017)"
            )
        from tfrcnn.data.coco import read_coco

        records, names, report = read_coco(
            source,
            image_dir,
            class_names=class_names,
            mode=mode,
            skip_empty=skip_empty,
            check_images=check_images,
        )
    else:
        raise ValueError(f"source_format must be one of {SOURCE_FORMATS}, got {source_format!r}")
    paths = write_tfrecords(records, names, output_prefix, num_shards=num_shards)
    return paths, list(names), report
