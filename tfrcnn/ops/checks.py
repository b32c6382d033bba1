"""Checks of the tensors a user hands the model, as graph ops that name the bad value.

Shapes: ``B`` images, ``H x W`` image size, ``M`` ground-truth slots an image.

Every function takes a tensor, checks it, and returns it (the same values) so that whatever
consumes the result runs only after the check passed. Two kinds of checks:

- **static** (dtype, rank, channel count, known sizes): plain Python at trace time, raising
  ``TypeError`` / ``ValueError``;
- **values** (class ids, box coordinates, finite pixels, valid regions): a ``tf.cond`` on one
  reduction; only when the reduction fails is the message built (the first offending element's
  index and value) and raised by ``tf.debugging.Assert`` as ``tf.errors.InvalidArgumentError``.
  They work eagerly, inside ``tf.function`` (``fit``, ``predict``, ``train_on_batch``) and in a
  SavedModel. The cost when the input is good is one reduction a tensor.

Messages name the input, the element and the valid range, e.g.
``gt_classes[1, 3] = 3 is not a class id: expected 0..2, or -1 for padding``.
XLA drops assertions, so inside a ``jit_compile=True`` function the value checks do nothing.
"""

import tensorflow as tf

PADDING_CLASS = -1


def _fail_unless(ok, tensors, message, stand_in=None):
    """``tensors`` unchanged if the scalar bool ``ok`` holds; else an InvalidArgumentError whose
    text is ``message()`` (a scalar string tensor, built only on failure).

    On failure the cond yields harmless stand-ins (zeros, or ``stand_in()``) rather than the bad
    values: ops downstream may start before the assertion stops the graph, and must not fail
    first with an error of their own (an index out of range, an incompatible shape).
    """

    def passed():
        return [tf.identity(t) for t in tensors]

    def failed():
        assertion = tf.raw_ops.Assert(condition=ok, data=[message()], summarize=1)
        with tf.control_dependencies([assertion]):
            values = stand_in() if stand_in is not None else [tf.zeros_like(t) for t in tensors]
            return [tf.identity(v) for v in values]

    result = tf.cond(ok, passed, failed)
    return result if isinstance(result, (list, tuple)) else [result]


def _str(x, precision=None):
    if x.dtype.is_floating:
        return tf.strings.as_string(
            tf.cast(x, tf.float32),
            precision=-1 if precision is None else precision,
            shortest=precision is None,
        )
    return tf.strings.as_string(x)


def _index(where):
    """``"1, 3"`` from an int64 index vector."""
    return tf.strings.reduce_join(tf.strings.as_string(where), separator=", ")


def _values(x):
    """``"10, 5, 4, 20"`` from a vector."""
    return tf.strings.reduce_join(_str(x), separator=", ")


def _shape_text(shape):
    return tf.strings.join(["(", _values(shape), ")"])


def static_shape(name, x, rank, last=None, hint=""):
    """Raise ValueError unless ``x`` has ``rank`` axes (and ``last`` entries on the last one), as
    far as its static shape tells; returns whether the static shape told everything."""
    shape = x.shape
    if shape.rank is not None and shape.rank != rank:
        raise ValueError(f"{name} must have {rank} axes{hint}, got shape {tuple(shape)}")
    if last is not None and shape.rank is not None and shape[-1] is not None and shape[-1] != last:
        raise ValueError(
            f"{name} must have {last} entries on its last axis{hint}, got shape {tuple(shape)}"
        )
    return shape.rank is not None and (last is None or shape[-1] is not None)


def _gate(ok, after):
    """``ok``, or true when an earlier check (``after`` false) already failed: one bad input then
    raises one error, not several racing ones."""
    if after is None or after is True:
        return ok
    return tf.logical_or(tf.logical_not(after), ok)


def _and(a, b):
    if a is True or a is None:
        return b
    if b is True or b is None:
        return a
    return tf.logical_and(a, b)


def check_shape(name, x, rank, last=None, hint="", with_ok=False):
    """``x`` unchanged if it has ``rank`` axes (and ``last`` entries on the last one): checked at
    trace time when the static shape tells, else when the graph runs (a ``tf.function`` traced
    with relaxed shapes can see an unknown rank). Same messages either way. ``with_ok=True`` also
    returns whether the shape is right (``True`` when known statically, else a bool tensor)."""
    x = tf.convert_to_tensor(x)
    if static_shape(name, x, rank, last, hint):
        return (x, True) if with_ok else x
    shape = tf.shape(x)
    rank_ok = tf.equal(tf.rank(x), rank)
    if last is None:
        ok = rank_ok
    else:
        last_ok = tf.equal(tf.gather(shape, tf.maximum(tf.size(shape) - 1, 0)), last)
        ok = tf.logical_and(rank_ok, tf.logical_and(tf.size(shape) > 0, last_ok))

    def message():
        what = tf.where(rank_ok, f"{last} entries on its last axis", f"{rank} axes")
        return tf.strings.join(
            [name, " must have ", what, hint, ", got shape ", _shape_text(shape)]
        )

    zeros = [0] * (rank - 1) + [last if last is not None else 0]
    out = _fail_unless(ok, [x], message, stand_in=lambda: [tf.zeros(zeros, x.dtype)])[0]
    out.set_shape([None] * (rank - 1) + [last])
    return (out, ok) if with_ok else out


def static_dtype(name, x, kinds, hint=""):
    """Raise TypeError unless ``x.dtype`` is one of ``kinds`` (``"integer"``, ``"floating"``)."""
    dtype = tf.as_dtype(x.dtype)
    ok = ("integer" in kinds and dtype.is_integer) or ("floating" in kinds and dtype.is_floating)
    if not ok:
        raise TypeError(
            f"{name} must hold {' or '.join(kinds)} values{hint}, got dtype {dtype.name}"
        )


def check_images(images, name="images", with_ok=False):
    """``images [B, H, W, 3]`` of an integer or float dtype; float pixels must be finite.

    Example:
        >>> check_images(tf.fill([1, 4, 4, 3], float("nan")))   # InvalidArgumentError:
        ... # images[0] holds a non-finite pixel (nan at y=0, x=0, channel 0; 48 in this batch) ...
    """
    images = tf.convert_to_tensor(images)
    static_dtype(name, images, ("integer", "floating"), " (RGB pixels 0..255)")
    images, layout_ok = check_shape(
        name, images, 4, 3, " ([B, H, W, 3] RGB; add a batch axis for one image)", True
    )
    if not images.dtype.is_floating:
        return (images, layout_ok) if with_ok else images
    finite = tf.math.is_finite(images)

    def message():
        bad = tf.where(tf.logical_not(finite))
        first = bad[0]
        value = tf.gather_nd(images, first[None])[0]
        return tf.strings.join(
            [
                name,
                "[",
                tf.strings.as_string(first[0]),
                "] holds a non-finite pixel (",
                _str(value),
                " at y=",
                tf.strings.as_string(first[1]),
                ", x=",
                tf.strings.as_string(first[2]),
                ", channel ",
                tf.strings.as_string(first[3]),
                "; ",
                tf.strings.as_string(tf.shape(bad, out_type=tf.int64)[0]),
                " in this batch): pixel values must be finite numbers 0..255",
            ]
        )

    images = _fail_unless(tf.reduce_all(finite), [images], message)[0]
    return (images, layout_ok) if with_ok else images


def check_image_shape(image_shape, images, name="image_shape", after=None):
    """``image_shape`` int ``[B, 2]``: each valid region ``(h, w)`` within ``1..H``, ``1..W``.
    ``after``: whether the checks before passed (a bool tensor; skips this one if not)."""
    image_shape = tf.convert_to_tensor(image_shape)
    static_dtype(name, image_shape, ("integer",), " (valid region (h, w) in pixels)")
    image_shape, shape_ok = check_shape(
        name, image_shape, 2, 2, " ([B, 2]: valid (height, width) an image)", True
    )
    after = _and(after, shape_ok)
    image_shape = tf.cast(image_shape, tf.int32)
    size = tf.shape(images)[1:3]
    ok = tf.logical_and(image_shape >= 1, image_shape <= size[None, :])

    def message():
        row = tf.where(tf.logical_not(tf.reduce_all(ok, axis=1)))[0, 0]
        return tf.strings.join(
            [
                name,
                "[",
                tf.strings.as_string(row),
                "] = [",
                _values(image_shape[row]),
                "] is not a valid region of the ",
                _values(size),
                " images: expected 1..",
                tf.strings.as_string(size[0]),
                ", 1..",
                tf.strings.as_string(size[1]),
            ]
        )

    stand_in = tf.tile(size[None, :], [tf.shape(image_shape)[0], 1])
    return _fail_unless(
        _gate(tf.reduce_all(ok), after), [image_shape], message, stand_in=lambda: [stand_in]
    )[0]


def check_image_scale(image_scale, name="image_scale", after=None):
    """``image_scale [B]``: finite and positive (resized = original * scale)."""
    image_scale = tf.convert_to_tensor(image_scale)
    static_dtype(name, image_scale, ("integer", "floating"))
    image_scale = tf.reshape(tf.cast(image_scale, tf.float32), [-1])
    ok = tf.logical_and(tf.math.is_finite(image_scale), image_scale > 0)

    def message():
        i = tf.where(tf.logical_not(ok))[0, 0]
        return tf.strings.join(
            [
                name,
                "[",
                tf.strings.as_string(i),
                "] = ",
                _str(image_scale[i]),
                " is not a scale: expected a finite number > 0",
            ]
        )

    return _fail_unless(
        _gate(tf.reduce_all(ok), after),
        [image_scale],
        message,
        stand_in=lambda: [tf.ones_like(image_scale)],
    )[0]


def check_ground_truth(gt_boxes, gt_classes, num_classes, batch_size=None, after=None):
    """``gt_boxes [B, M, 4]`` and ``gt_classes [B, M]`` as the model trains on them.

    ``gt_classes`` must be an integer tensor (a float tensor is an error, never truncated) with
    every entry in ``0 .. num_classes - 1`` or exactly ``-1`` (padding). Each box of a non-padding
    slot must be finite ``[y1, x1, y2, x2]`` pixels with ``y1 <= y2`` and ``x1 <= x2``; padding
    slots are not looked at.

    Returns:
        ``(gt_boxes float32, gt_classes int32)``, checked.
    """
    gt_boxes = tf.convert_to_tensor(gt_boxes)
    gt_classes = tf.convert_to_tensor(gt_classes)
    static_dtype(
        "gt_classes",
        gt_classes,
        ("integer",),
        f" (class ids 0..{num_classes - 1}, -1 for padding; cast labels to int32 yourself "
        "if they are whole numbers)",
    )
    static_dtype("gt_boxes", gt_boxes, ("floating", "integer"), " ([y1, x1, y2, x2] pixels)")
    gt_classes, classes_ok = check_shape(
        "gt_classes", gt_classes, 2, hint=" ([B, M] class ids, -1 padded)", with_ok=True
    )
    after = _and(after, classes_ok)
    gt_boxes, boxes_ok = check_shape(
        "gt_boxes", gt_boxes, 3, 4, " ([B, M, 4] boxes [y1, x1, y2, x2], -1 padded)", True
    )
    boxes_ok = _gate(boxes_ok, after) if boxes_ok is not True else True
    after = _and(after, boxes_ok)
    b_shape, c_shape = gt_boxes.shape, gt_classes.shape
    if b_shape.rank == 3 and c_shape.rank == 2:
        for axis in (0, 1):
            if (
                b_shape[axis] is not None
                and c_shape[axis] is not None
                and b_shape[axis] != c_shape[axis]
            ):
                raise ValueError(
                    f"gt_boxes {tuple(b_shape)} and gt_classes {tuple(c_shape)} must "
                    "have the same [B, M]"
                )
    if batch_size is not None and b_shape[0] is not None and batch_size != b_shape[0]:
        raise ValueError(f"gt_boxes holds {b_shape[0]} images but images holds {batch_size}")
    gt_classes = tf.cast(gt_classes, tf.int32)
    gt_boxes = tf.cast(gt_boxes, tf.float32)
    same = tf.reduce_all(tf.equal(tf.shape(gt_boxes)[:2], tf.shape(gt_classes)))

    def shape_message():
        return tf.strings.join(
            [
                "gt_boxes ",
                _shape_text(tf.shape(gt_boxes)),
                " and gt_classes ",
                _shape_text(tf.shape(gt_classes)),
                " must have the same [B, M]",
            ]
        )

    after_layout = after
    after = _and(after, same)
    gt_boxes, gt_classes = _fail_unless(
        _gate(same, after_layout),
        [gt_boxes, gt_classes],
        shape_message,
        stand_in=lambda: [tf.zeros_like(gt_boxes), tf.fill(tf.shape(gt_boxes)[:2], PADDING_CLASS)],
    )
    valid_id = tf.logical_and(gt_classes >= 0, gt_classes < num_classes)
    class_ok = tf.logical_or(valid_id, tf.equal(gt_classes, PADDING_CLASS))

    def class_message():
        first = tf.where(tf.logical_not(class_ok))[0]
        return tf.strings.join(
            [
                "gt_classes[",
                _index(first),
                "] = ",
                tf.strings.as_string(tf.gather_nd(gt_classes, first)),
                f" is not a class id: expected 0..{num_classes - 1}, or {PADDING_CLASS} for padding",
            ]
        )

    after_classes = after
    after = _and(after, tf.reduce_all(class_ok))
    gt_boxes, gt_classes = _fail_unless(
        _gate(tf.reduce_all(class_ok), after_classes),
        [gt_boxes, gt_classes],
        class_message,
        stand_in=lambda: [gt_boxes, tf.fill(tf.shape(gt_classes), PADDING_CLASS)],
    )
    y1, x1, y2, x2 = tf.unstack(gt_boxes, axis=-1)
    box_ok = tf.logical_and(
        tf.reduce_all(tf.math.is_finite(gt_boxes), axis=-1), tf.logical_and(y1 <= y2, x1 <= x2)
    )
    box_ok = tf.logical_or(box_ok, tf.equal(gt_classes, PADDING_CLASS))

    def box_message():
        first = tf.where(tf.logical_not(box_ok))[0]
        return tf.strings.join(
            [
                "gt_boxes[",
                _index(first),
                "] = [",
                _values(tf.gather_nd(gt_boxes, first)),
                (
                    "] is not a box: expected finite [y1, x1, y2, x2] pixels with y1 <= y2 and "
                    "x1 <= x2 (or class -1 in gt_classes for a padding slot)"
                ),
            ]
        )

    gt_boxes, gt_classes = _fail_unless(
        _gate(tf.reduce_all(box_ok), after),
        [gt_boxes, gt_classes],
        box_message,
        stand_in=lambda: [tf.zeros_like(gt_boxes), tf.fill(tf.shape(gt_classes), PADDING_CLASS)],
    )
    return gt_boxes, gt_classes


def check_proposals(proposals, name="proposals", after=None):
    """External proposals ``[B, K, 4]``: finite (zero-area rows are padding)."""
    proposals = tf.convert_to_tensor(proposals)
    static_dtype(name, proposals, ("floating", "integer"))
    proposals, shape_ok = check_shape(
        name, proposals, 3, 4, " ([B, K, 4] boxes [y1, x1, y2, x2])", True
    )
    after = _and(after, shape_ok)
    proposals = tf.cast(proposals, tf.float32)
    ok = tf.reduce_all(tf.math.is_finite(proposals), axis=-1)

    def message():
        first = tf.where(tf.logical_not(ok))[0]
        return tf.strings.join(
            [
                name,
                "[",
                _index(first),
                "] = [",
                _values(tf.gather_nd(proposals, first)),
                "] is not a box: expected finite [y1, x1, y2, x2] pixels",
            ]
        )

    return _fail_unless(_gate(tf.reduce_all(ok), after), [proposals], message)[0]


def check_image_layout(images, name="images"):
    """``images`` unchanged if it is ``[B, H, W, 3]`` when the graph runs (for signatures whose
    input spec does not enforce the shape, such as a SavedModel's concrete functions)."""
    images = tf.convert_to_tensor(images)
    shape = tf.shape(images)
    ok = tf.logical_and(tf.equal(tf.rank(images), 4), tf.equal(shape[-1], 3))

    def message():
        return tf.strings.join(
            [name, " must be [B, H, W, 3] RGB pixels, got shape [", _values(shape), "]"]
        )

    return _fail_unless(
        ok, [images], message, stand_in=lambda: [tf.zeros([1, 1, 1, 3], images.dtype)]
    )[0]
