"""The tf.data pipeline: records -> decoded, augmented, resized, padded batches for ``FasterRCNN``.

Shapes: ``B`` images a batch, ``Hp x Wp`` padded size, ``M = max_boxes`` ground-truth slots.

A record is a dict ``{"image": uint8 [H, W, 3]`` (or ``"path"``: a file decoded lazily with
:func:`tfrcnn.data.images.load_image`, which applies EXIF orientation and converts any mode to
RGB; or ``"encoded"``: the bytes of an upright JPEG / PNG, as a TFRecord stores them, decoded
lazily to RGB), ``"boxes": float32 [N, 4]`` ``[y1, x1, y2, x2]`` pixels, ``"classes": int32 [N]``,
``"image_id": str``, optional ``"difficult"`` and ``"iscrowd"`` bool ``[N]``}.

Each batch is a dict:

- ``images`` float32 ``[B, Hp, Wp, 3]``, RGB pixel values 0..255, zero padded bottom/right;
- ``image_shape`` int32 ``[B, 2]``, the valid (resized) region;
- ``image_scale`` float32 ``[B]``, resized = original * scale;
- ``original_shape`` int32 ``[B, 2]``;
- ``gt_boxes`` float32 ``[B, M, 4]`` in resized pixels, ``-1`` padded;
- ``gt_classes`` int32 ``[B, M]``, ``-1`` padded (crowd boxes are left out of the targets);
- ``gt_difficult`` bool ``[B, M]``;
- ``image_id`` string ``[B]``.
"""

import io
import logging

import numpy as np
import tensorflow as tf
from PIL import Image

from tfrcnn.data import augment as aug
from tfrcnn.data.images import ImageReadError, load_image

log = logging.getLogger("tfrcnn.data")

PAD_VALUE = -1


def compute_scale(height, width, min_side, max_side):
    """The resize factor: shorter side to ``min_side`` unless the longer would pass ``max_side``.

    Works on Python numbers and on tensors. Example: ``compute_scale(480, 640, 600, 1000) == 1.25``.
    """
    if isinstance(height, (int, float)) and isinstance(width, (int, float)):
        return min(min_side / min(height, width), max_side / max(height, width))
    height = tf.cast(height, tf.float32)
    width = tf.cast(width, tf.float32)
    min_side = tf.cast(min_side, tf.float32)
    return tf.minimum(min_side / tf.minimum(height, width), max_side / tf.maximum(height, width))


def resize_image_and_boxes(image, boxes, min_side, max_side):
    """Resize an image ``[H, W, 3]`` (bilinear, antialiased when shrinking) and scale its boxes.

    Returns:
        ``(image float32 [h, w, 3], boxes [N, 4], scale, (h, w) int32)``.
    """
    shape = tf.shape(image)
    scale = compute_scale(shape[0], shape[1], min_side, max_side)
    new_h = tf.cast(tf.round(tf.cast(shape[0], tf.float32) * scale), tf.int32)
    new_w = tf.cast(tf.round(tf.cast(shape[1], tf.float32) * scale), tf.int32)
    resized = tf.image.resize(
        tf.cast(image, tf.float32), tf.stack([new_h, new_w]), method="bilinear", antialias=True
    )
    return resized, tf.cast(boxes, tf.float32) * scale, scale, tf.stack([new_h, new_w])


def decode_encoded(data, image_id=""):
    """JPEG / PNG bytes -> uint8 ``[H, W, 3]`` RGB, the pixels TensorFlow's accurate decoder gives
    (no EXIF orientation: TFRecords store upright pixels). Raises ImageReadError naming the image."""
    try:
        with Image.open(io.BytesIO(bytes(data))) as img:
            img.load()
            return np.asarray(img.convert("RGB"), np.uint8)
    except (OSError, ValueError) as e:
        raise ImageReadError(f"cannot decode the encoded image of {image_id}: {e}") from None


def _record_arrays(record):
    boxes = np.asarray(record.get("boxes", np.zeros((0, 4))), np.float32).reshape(-1, 4)
    n = len(boxes)
    classes = np.asarray(record.get("classes", np.zeros((0,))), np.int32).reshape(-1)
    difficult = np.asarray(record.get("difficult", np.zeros(n, bool)), bool).reshape(-1)
    crowd = np.asarray(record.get("iscrowd", np.zeros(n, bool)), bool).reshape(-1)
    if not (len(classes) == len(difficult) == len(crowd) == n):
        raise ValueError(f"record {record.get('image_id')!r}: {n} boxes but {len(classes)} classes")
    return boxes, classes, difficult, crowd


def _source_dataset(records):
    """A dataset of single examples (image uint8 [H, W, 3] + annotations) from records."""
    records = list(records() if callable(records) else records)
    if not records:
        raise ValueError("the dataset is empty: no records were given to make_dataset")
    lazy = ["image" not in r for r in records]

    def load(i):
        record = records[int(i)]
        if "image" in record:
            image = np.asarray(record["image"], np.uint8)
        elif "encoded" in record:
            image = decode_encoded(record["encoded"], record.get("image_id", i))
        else:
            image = load_image(record["path"])
        if image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(
                f"record {record.get('image_id')!r}: image of shape {image.shape}, "
                "expected [H, W, 3]"
            )
        boxes, classes, difficult, crowd = _record_arrays(record)
        proposals = np.asarray(record.get("proposals", np.zeros((0, 4))), np.float32).reshape(-1, 4)
        return (
            image,
            boxes,
            classes,
            difficult,
            crowd,
            np.bytes_(str(record.get("image_id", i))),
            proposals,
        )

    # Check the annotations up front (cheap), so a bad record fails before training starts.
    for record in records:
        _record_arrays(record)

    def tf_load(i):
        out = tf.numpy_function(
            load,
            [i],
            (tf.uint8, tf.float32, tf.int32, tf.bool, tf.bool, tf.string, tf.float32),
            stateful=False,
        )
        image, boxes, classes, difficult, crowd, image_id, proposals = out
        proposals.set_shape([None, 4])
        image.set_shape([None, None, 3])
        boxes.set_shape([None, 4])
        classes.set_shape([None])
        difficult.set_shape([None])
        crowd.set_shape([None])
        image_id.set_shape([])
        return {
            "image": image,
            "boxes": boxes,
            "classes": classes,
            "difficult": difficult,
            "iscrowd": crowd,
            "image_id": image_id,
            "proposals": proposals,
        }

    ds = tf.data.Dataset.range(len(records))
    return ds, tf_load, len(records), any(lazy)


def make_dataset(
    records,
    *,
    batch_size=2,
    min_side=600,
    max_side=1000,
    pad_to=None,
    size_divisor=32,
    max_boxes=100,
    training=False,
    shuffle=None,
    flip=None,
    augment=None,
    seed=None,
    drop_remainder=None,
    num_proposals=None,
    num_parallel_calls=tf.data.AUTOTUNE,
):
    """Batches for ``FasterRCNN`` from records (a list, or a callable returning an iterable).

    Args:
        records: in-memory records (``"image"``) or lazy ones (``"path"``).
        batch_size: images a batch.
        min_side, max_side: resize so the shorter side is ``min_side`` unless the longer would pass
            ``max_side``.
        pad_to: ``(H, W)``: every batch has exactly this static size (no retracing); a resized
            image larger than it is an error naming the image. ``None``: pad each batch to its
            largest image rounded up to ``size_divisor``.
        size_divisor: see ``pad_to``.
        max_boxes: ground-truth slots; extra boxes are dropped with a warning naming the image.
        training: turns on shuffling and random horizontal flip (unless ``shuffle`` / ``flip``
            say otherwise) and drops the last incomplete batch (unless ``drop_remainder``).
        augment: optional dict of training augmentation (:mod:`tfrcnn.data.augment`):
            ``{"crop": True or crop kwargs, "jitter": True or jitter kwargs,
            "min_sides": (480, 512, ...)}`` (multi-scale: a random shorter side an image).
        seed: shuffling / augmentation seed. With a seed, the batches are a pure function of it
            (order, flips, crops; each epoch different); ``None``: fresh randomness, and the
            parallel maps may deliver shuffled elements in any order.
        drop_remainder: default ``training``.
        num_proposals: for Fast R-CNN on external proposals: records carry ``"proposals"``
            ``[P, 4]`` (original-image pixels, e.g. from selective search) and each batch gets
            ``"proposals" [B, num_proposals, 4]`` (truncated or zero padded; flipped with the
            image; still in original-image pixels, as ``FasterRCNN`` takes them).
        num_parallel_calls: decode / resize parallelism.

    Returns:
        a ``tf.data.Dataset`` of batch dicts (see the module docstring). No ``repeat``: the caller
        decides (``model.fit(ds.repeat(), steps_per_epoch=...)``).

    Example:
        >>> ds = make_dataset(records, batch_size=4, min_side=160, max_side=192,
        ...                   pad_to=(192, 192), training=True)
    """
    shuffle = training if shuffle is None else shuffle
    flip = training if flip is None else flip
    drop_remainder = training if drop_remainder is None else drop_remainder
    augment = dict(augment or {})
    if num_proposals is not None and augment.get("crop"):
        raise ValueError("random crop cannot be combined with external proposals (num_proposals)")
    unknown = set(augment) - {"crop", "jitter", "min_sides"}
    if unknown:
        raise ValueError(f"unknown augment options {sorted(unknown)}; use crop, jitter, min_sides")
    ds, load, count, _ = _source_dataset(records)
    if shuffle:
        ds = ds.shuffle(count, seed=seed, reshuffle_each_iteration=True)
    # With a seed, the order and every random draw are reproducible: each element gets a stateless
    # seed from a seeded random stream that is redrawn on each pass over the data (a new flip /
    # crop each epoch, the same sequence of epochs for the same seed).
    deterministic = not shuffle or seed is not None
    if seed is not None:
        base = tf.constant(int(seed), tf.int64)
        draws = tf.data.Dataset.random(seed=int(seed), rerandomize_each_iteration=True)

        def load_seeded(i, draw):
            example = load(i)
            example["seed"] = tf.stack([draw, base])
            return example

        ds = tf.data.Dataset.zip((ds, draws)).map(
            load_seeded, num_parallel_calls=num_parallel_calls, deterministic=deterministic
        )
    else:
        ds = ds.map(load, num_parallel_calls=num_parallel_calls, deterministic=deterministic)
    max_boxes = int(max_boxes)

    def prepare(example):
        image = tf.cast(example["image"], tf.float32)
        boxes, classes = example["boxes"], example["classes"]
        difficult, crowd = example["difficult"], example["iscrowd"]
        original = tf.shape(image)[:2]
        if "seed" in example:
            crop_seed, scale_seed, flip_seed, jitter_seed = tf.unstack(
                tf.random.experimental.stateless_split(example["seed"], num=4)
            )
        else:
            crop_seed = scale_seed = flip_seed = jitter_seed = None
        if training and augment.get("crop"):
            crop_kwargs = augment["crop"] if isinstance(augment["crop"], dict) else {}
            crop_kwargs = {"seed": crop_seed, **crop_kwargs}
            image, boxes, classes, _, (difficult, crowd) = aug.random_crop(
                image, boxes, classes, extras=(difficult, crowd), **crop_kwargs
            )
            original = tf.shape(image)[:2]
        side = min_side
        if training and augment.get("min_sides"):
            side = aug.random_scale_choice(tuple(augment["min_sides"]), seed=scale_seed)
        image, boxes, scale, size = resize_image_and_boxes(image, boxes, side, max_side)
        proposals = tf.cast(example["proposals"], tf.float32) * scale
        if flip:
            # proposals flip with the image: flip them together with the boxes
            count = tf.shape(boxes)[0]
            image, both = aug.random_horizontal_flip(
                image, tf.concat([boxes, proposals], axis=0), seed=flip_seed
            )
            boxes, proposals = both[:count], both[count:]
        if training and augment.get("jitter"):
            jitter_kwargs = augment["jitter"] if isinstance(augment["jitter"], dict) else {}
            jitter_kwargs = {"seed": jitter_seed, **jitter_kwargs}
            image = aug.photometric_jitter(image, **jitter_kwargs)
        # crowd regions are not training targets
        keep = tf.logical_not(crowd) if training else tf.ones_like(crowd)
        boxes = tf.boolean_mask(boxes, keep)
        classes = tf.boolean_mask(classes, keep)
        difficult = tf.boolean_mask(difficult, keep)
        n = tf.shape(boxes)[0]

        def warn(image_id, n_boxes):
            log.warning(
                "image %s has %d boxes; keeping the first %d (max_boxes)",
                image_id.decode(),
                n_boxes,
                max_boxes,
            )
            return np.int32(0)

        too_many = tf.cond(
            n > max_boxes,
            lambda: tf.numpy_function(warn, [example["image_id"], n], tf.int32),
            lambda: tf.constant(0, tf.int32),
        )
        with tf.control_dependencies([too_many]):
            n = tf.minimum(n, max_boxes)
        pad = max_boxes - n
        gt_boxes = tf.pad(boxes[:n], [[0, pad], [0, 0]], constant_values=PAD_VALUE)
        gt_classes = tf.pad(classes[:n], [[0, pad]], constant_values=PAD_VALUE)
        gt_difficult = tf.pad(difficult[:n], [[0, pad]], constant_values=False)
        out = {
            "images": image,
            "image_shape": tf.cast(size, tf.int32),
            "image_scale": tf.cast(scale, tf.float32),
            "original_shape": tf.cast(original, tf.int32),
            "gt_boxes": tf.reshape(gt_boxes, [max_boxes, 4]),
            "gt_classes": tf.reshape(gt_classes, [max_boxes]),
            "gt_difficult": tf.reshape(gt_difficult, [max_boxes]),
            "image_id": example["image_id"],
        }
        if num_proposals is not None:
            p = tf.minimum(tf.shape(proposals)[0], int(num_proposals))
            padded = tf.pad(proposals[:p] / scale, [[0, int(num_proposals) - p], [0, 0]])
            out["proposals"] = tf.reshape(padded, [int(num_proposals), 4])
        if pad_to is not None:
            ph, pw = int(pad_to[0]), int(pad_to[1])
            check = tf.debugging.assert_less_equal(
                size,
                tf.constant([ph, pw]),
                message=tf.strings.join(
                    ["image ", example["image_id"], " is larger than pad_to after resizing"]
                ),
            )
            with tf.control_dependencies([check]):
                out["images"] = tf.image.pad_to_bounding_box(image, 0, 0, ph, pw)
        return out

    ds = ds.map(prepare, num_parallel_calls=num_parallel_calls, deterministic=deterministic)
    if pad_to is not None:
        ds = ds.batch(batch_size, drop_remainder=drop_remainder)
    else:
        padding_values = {
            "images": 0.0,
            "image_shape": 0,
            "image_scale": 0.0,
            "original_shape": 0,
            "gt_boxes": float(PAD_VALUE),
            "gt_classes": PAD_VALUE,
            "gt_difficult": False,
            "image_id": b"",
        }
        if num_proposals is not None:
            padding_values["proposals"] = 0.0
        ds = ds.padded_batch(
            batch_size, drop_remainder=drop_remainder, padding_values=padding_values
        )
        d = int(size_divisor)

        def round_up(batch):
            shape = tf.shape(batch["images"])
            h = (shape[1] + d - 1) // d * d
            w = (shape[2] + d - 1) // d * d
            batch["images"] = tf.pad(
                batch["images"], [[0, 0], [0, h - shape[1]], [0, w - shape[2]], [0, 0]]
            )
            return batch

        ds = ds.map(round_up, num_parallel_calls=num_parallel_calls)
    return ds.prefetch(tf.data.AUTOTUNE)
