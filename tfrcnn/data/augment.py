"""Box-consistent augmentation of one detection example, as pure TensorFlow functions.

Shape shorthand: ``H``, ``W`` image height and width (dynamic), ``N`` boxes of the example
(dynamic; :func:`random_crop` may drop some, so the outputs have ``N' <= N`` boxes), ``T`` crop
trials.

One example is:

- ``image``: float32 ``[H, W, 3]``, pixel values 0..255;
- ``boxes``: float32 ``[N, 4]`` ``[y1, x1, y2, x2]`` absolute pixels, continuous coordinates (a box
  covering pixels 0..9 is ``[0, 0, 10, 10]``), inside the image;
- ``classes``: int32 ``[N]``;
- optionally ``difficult``: bool ``[N]`` (or any other per-box field), carried along.

Every function runs eagerly and inside ``tf.data.Dataset.map`` / ``tf.function`` (graph mode) with
unknown ``H``, ``W`` and ``N``; none of them uses Python-side randomness per element.

Randomness: every function takes ``seed``:

- ``None`` (default): a fresh random draw on every call (a stateful ``tf.random`` op picks a seed
  for the stateless ops below), so a mapped dataset gets different augmentations per element and
  per epoch; reproducible only under a global seed (``keras.utils.set_random_seed``).
- an int, or an integer tensor of shape ``[]`` or ``[2]``: the stateless ``tf.random.stateless_*``
  ops are used, and the result is a pure function of the inputs and the seed. A constant seed gives
  every element the *same* draw; for a reproducible pipeline pass a per-element seed, e.g.
  ``ds.enumerate().map(lambda i, ex: augment_example(..., seed=tf.stack([base_seed, i])))``.

Keras preprocessing layers (checked with Keras 3.15): they are not used here.

- ``keras.layers.RandomFlip(bounding_box_format="yxyx")`` flips yxyx boxes correctly, but it has no
  flip probability (always 0.5), it draws from a stateful ``SeedGenerator`` held by the layer (not a
  per-element seed tensor), and it round-trips boxes through relative coordinates, so even the
  unflipped coordinates come back with float noise (``30.0 -> 30.000002``). A flip is three lines
  of TensorFlow, so :func:`random_horizontal_flip` is our own and exact.
- ``keras.layers.RandomCrop`` crops a fixed ``height x width`` (no area / aspect sampling), and with
  ``bounding_boxes`` it neither clips boxes to the crop nor drops them: a box outside a 50x50 crop
  came back as ``[68, 81, 78, 91]`` with its label kept. Not usable; :func:`random_crop` is our own.
- The colour layers (``RandomBrightness``, ``RandomContrast``, ``RandomSaturation``,
  ``RandomHue``, ``RandomColorJitter``) are stateful layer objects; creating them inside a mapped
  function is not possible, and they take no seed tensor. :func:`photometric_jitter` draws its
  factors with stateless ops and applies saturation and hue as one 3x3 colour matrix (several
  times cheaper on CPU than the HSV round trips of ``tf.image.adjust_saturation`` / ``adjust_hue``).
"""

import numpy as np
import tensorflow as tf

#: The largest int32, the exclusive upper bound when a seed is drawn for ``seed=None``.
_INT32_MAX = 2**31 - 1

#: RGB -> YIQ (NTSC) for column vectors; ``Y`` is the Rec. 601 luma, and the ``I`` and ``Q`` rows
#: sum to 0, so grey has no chroma. Used by :func:`_colour_matrix`.
_RGB_TO_YIQ = np.array(
    [[0.299, 0.587, 0.114], [0.595716, -0.274453, -0.321263], [0.211456, -0.522591, 0.311135]],
    np.float32,
)
_YIQ_TO_RGB = np.linalg.inv(_RGB_TO_YIQ.astype(np.float64)).astype(np.float32)

#: Multi-scale training sizes (shorter image side, pixels) of :func:`random_scale_choice`.
DEFAULT_MIN_SIDES = (480, 512, 544, 576, 608, 640)


# --------------------------------------------------------------------------------------------
# Seeds
# --------------------------------------------------------------------------------------------


def _seed_tensor(seed):
    """A stateless seed, int64 ``[2]``, from ``None`` (drawn now), an int, or a [] / [2] tensor."""
    if seed is None:
        return tf.random.uniform([2], minval=0, maxval=_INT32_MAX, dtype=tf.int64)
    seed = tf.convert_to_tensor(seed)
    if not seed.dtype.is_integer:
        raise TypeError(
            f"seed must be None, an int or an integer tensor of shape [] or [2]; got "
            f"dtype {seed.dtype.name}."
        )
    seed = tf.cast(seed, tf.int64)
    if seed.shape.rank == 0:
        return tf.stack([seed, tf.constant(0, tf.int64)])
    if seed.shape.rank != 1 or (seed.shape[0] is not None and seed.shape[0] != 2):
        raise ValueError(
            f"seed must be None, an int or an integer tensor of shape [] or [2]; got "
            f"shape {seed.shape}."
        )
    return tf.reshape(seed, [2])


def _split_seed(seed, num):
    """``num`` independent stateless seeds ``[num, 2]`` derived from ``seed``."""
    return tf.random.experimental.stateless_split(_seed_tensor(seed), num=num)


def _coin(probability, seed):
    """A scalar bool that is True with ``probability`` (stateless in ``seed`` [2])."""
    return tf.random.stateless_uniform([], seed=seed) < probability


def _check_probability(name, value):
    if not 0.0 <= float(value) <= 1.0:
        raise ValueError(f"{name} must be in [0, 1]; got {value}.")


def _check_range(name, low, high, minimum=0.0):
    if not (minimum <= float(low) <= float(high)):
        raise ValueError(f"{name} must satisfy {minimum} <= low <= high; got ({low}, {high}).")


# --------------------------------------------------------------------------------------------
# Flip
# --------------------------------------------------------------------------------------------


def random_horizontal_flip(image, boxes, probability=0.5, seed=None):
    """Mirror the image left-right with ``probability``, moving the boxes with it.

    A flipped box is ``[y1, W - x2, y2, W - x1]`` (continuous coordinates, so pixel column ``c``
    goes to ``W - 1 - c`` and the box covers exactly the flipped pixels).

    Args:
        image: float32 (or any dtype) ``[H, W, C]``.
        boxes: float32 ``[N, 4]`` yxyx absolute pixels.
        probability: chance of flipping, in [0, 1]. Default 0.5.
        seed: ``None``, an int, or an integer tensor ``[]`` / ``[2]`` (see the module docstring).

    Returns:
        ``(image, boxes)`` with the input shapes and dtypes.

    Example:
        >>> image = tf.zeros([50, 100, 3])
        >>> _, b = random_horizontal_flip(image, tf.constant([[10., 20., 30., 50.]]), 1.0)
        >>> b.numpy().tolist()
        [[10.0, 50.0, 30.0, 80.0]]
    """
    _check_probability("probability", probability)
    image = tf.convert_to_tensor(image)
    boxes = tf.cast(tf.convert_to_tensor(boxes), tf.float32)
    do_flip = _coin(probability, _seed_tensor(seed))
    width = tf.cast(tf.shape(image)[1], tf.float32)

    def flipped():
        y1, x1, y2, x2 = tf.unstack(boxes, num=4, axis=-1)
        return tf.reverse(image, axis=[1]), tf.stack([y1, width - x2, y2, width - x1], axis=-1)

    return tf.cond(do_flip, flipped, lambda: (image, boxes))


# --------------------------------------------------------------------------------------------
# Crop
# --------------------------------------------------------------------------------------------


def _box_visibility(boxes, windows):
    """Fraction of each box's area inside each window: ``[T, N]`` for boxes [N, 4], windows [T, 4].

    A zero-area box counts as visible (1.0) when its centre lies inside the window, else 0.0.
    """
    b = boxes[tf.newaxis, :, :]  # [1, N, 4]
    w = windows[:, tf.newaxis, :]  # [T, 1, 4]
    inter_h = tf.maximum(tf.minimum(b[..., 2], w[..., 2]) - tf.maximum(b[..., 0], w[..., 0]), 0.0)
    inter_w = tf.maximum(tf.minimum(b[..., 3], w[..., 3]) - tf.maximum(b[..., 1], w[..., 1]), 0.0)
    area = (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])  # [1, N]
    cy = 0.5 * (b[..., 0] + b[..., 2])
    cx = 0.5 * (b[..., 1] + b[..., 3])
    centre_in = (cy >= w[..., 0]) & (cy <= w[..., 2]) & (cx >= w[..., 1]) & (cx <= w[..., 3])
    return tf.where(
        area > 0.0, inter_h * inter_w / tf.maximum(area, 1e-12), tf.cast(centre_in, tf.float32)
    )


def _sample_windows(height, width, max_trials, min_scale, max_scale, min_aspect, max_aspect, seed):
    """``max_trials`` integer crop windows and whether each fits the image.

    Returns (windows int32 [T, 4] yxyx, fits bool [T]).
    """
    u = tf.random.stateless_uniform([max_trials, 4], seed=seed)
    h = tf.cast(height, tf.float32)
    w = tf.cast(width, tf.float32)
    scale = min_scale + (max_scale - min_scale) * u[:, 0]
    log_lo, log_hi = tf.math.log(float(min_aspect)), tf.math.log(float(max_aspect))
    aspect = tf.exp(log_lo + (log_hi - log_lo) * u[:, 1])
    crop_h = h * tf.sqrt(scale / aspect)
    crop_w = w * tf.sqrt(scale * aspect)
    # Allow a hair of float error so that scale = aspect = 1 gives the whole image.
    fits = (crop_h <= h * (1.0 + 1e-6)) & (crop_w <= w * (1.0 + 1e-6))
    crop_h = tf.clip_by_value(tf.round(crop_h), 1.0, h)
    crop_w = tf.clip_by_value(tf.round(crop_w), 1.0, w)
    # Uniform integer offsets in [0, H - crop_h] and [0, W - crop_w].
    y0 = tf.minimum(tf.floor(u[:, 2] * (h - crop_h + 1.0)), h - crop_h)
    x0 = tf.minimum(tf.floor(u[:, 3] * (w - crop_w + 1.0)), w - crop_w)
    windows = tf.cast(tf.stack([y0, x0, y0 + crop_h, x0 + crop_w], axis=-1), tf.int32)
    return windows, fits


def random_crop(
    image,
    boxes,
    classes,
    *,
    min_scale=0.5,
    max_scale=1.0,
    min_aspect=0.5,
    max_aspect=2.0,
    min_box_visibility=0.5,
    probability=0.5,
    max_trials=20,
    seed=None,
    extras=(),
):
    """Crop a random window out of the image, keeping the boxes that stay mostly visible.

    With ``probability``, ``max_trials`` windows are sampled at once (vectorised, no loop): a
    window covers ``scale`` of the image area, ``scale ~ U(min_scale, max_scale)``, and its
    aspect ratio is the image's times ``aspect``, ``aspect`` log-uniform in
    ``[min_aspect, max_aspect]`` (window height ``H * sqrt(scale / aspect)``, width
    ``W * sqrt(scale * aspect)``, rounded to whole pixels); its position is uniform. A trial is
    acceptable when the window fits in the image and, if the image has boxes, at least one box
    keeps ``min_box_visibility`` of its area inside it. The first acceptable trial is used; when
    none is, or the coin says no, the example is returned unchanged (all boxes kept). An image
    without boxes is cropped freely.

    Kept boxes are clipped to the window and shifted by its top-left corner; the others are
    dropped. A zero-area box is kept when its centre lies inside the window.

    Args:
        image: ``[H, W, C]`` (float32 0..255 in the pipeline; any dtype works).
        boxes: float32 ``[N, 4]`` yxyx absolute pixels, inside the image.
        classes: ``[N]`` (int32 class ids).
        min_scale, max_scale: window area as a fraction of the image area, ``0 < min <= max <= 1``.
            Defaults 0.5, 1.0.
        min_aspect, max_aspect: window aspect ratio relative to the image's, ``0 < min <= max``.
            Defaults 0.5, 2.0.
        min_box_visibility: the fraction of a box's area that must lie inside the window for the
            box to be kept, in [0, 1]. Default 0.5.
        probability: chance of attempting a crop, in [0, 1]. Default 0.5.
        max_trials: windows sampled (a Python int >= 1). Default 20.
        seed: ``None``, an int, or an integer tensor ``[]`` / ``[2]`` (see the module docstring).
        extras: a tuple / list of further per-box tensors ``[N, ...]`` (e.g. ``difficult``) to
            filter with the same mask.

    Returns:
        ``(image [H', W', C], boxes [N', 4], classes [N'], kept_mask bool [N])``, where
        ``kept_mask`` marks, in input order, the boxes that were kept. When ``extras`` is not
        empty, a fifth element is the tuple of the filtered extras, ``[N', ...]`` each.

    Example:
        >>> image = tf.zeros([100, 200, 3])
        >>> boxes = tf.constant([[10., 20., 60., 90.], [50., 150., 90., 190.]])
        >>> img, b, c, kept = random_crop(image, boxes, tf.constant([0, 1]), probability=1.0,
        ...                               seed=7)
        >>> difficult = tf.boolean_mask(tf.constant([False, True]), kept)
    """
    _check_probability("probability", probability)
    _check_probability("min_box_visibility", min_box_visibility)
    _check_range("(min_scale, max_scale)", min_scale, max_scale)
    _check_range("(min_aspect, max_aspect)", min_aspect, max_aspect)
    if float(min_scale) <= 0.0 or float(max_scale) > 1.0:
        raise ValueError(
            f"min_scale and max_scale must be in (0, 1]; got ({min_scale}, {max_scale})."
        )
    if float(min_aspect) <= 0.0:
        raise ValueError(f"min_aspect must be > 0; got {min_aspect}.")
    if int(max_trials) < 1:
        raise ValueError(f"max_trials must be an int >= 1; got {max_trials}.")
    image = tf.convert_to_tensor(image)
    boxes = tf.reshape(tf.cast(tf.convert_to_tensor(boxes), tf.float32), [-1, 4])
    classes = tf.convert_to_tensor(classes)
    extras = tuple(tf.convert_to_tensor(e) for e in extras)

    seeds = _split_seed(seed, 2)
    shape = tf.shape(image)
    height, width = shape[0], shape[1]
    windows, fits = _sample_windows(
        height,
        width,
        int(max_trials),
        float(min_scale),
        float(max_scale),
        float(min_aspect),
        float(max_aspect),
        seeds[1],
    )
    visible = _box_visibility(boxes, tf.cast(windows, tf.float32)) >= min_box_visibility  # [T, N]
    has_boxes = tf.shape(boxes)[0] > 0
    acceptable = fits & (tf.reduce_any(visible, axis=1) | tf.logical_not(has_boxes))
    do_crop = _coin(probability, seeds[0]) & tf.reduce_any(acceptable)
    first = tf.argmax(tf.cast(acceptable, tf.int32), output_type=tf.int32)

    full = tf.stack([0, 0, height, width])
    window = tf.where(do_crop, windows[first], full)
    kept = tf.where(do_crop, visible[first], tf.ones_like(visible[0]))

    y0, x0, y1, x1 = tf.unstack(window)
    out_image = tf.slice(image, tf.stack([y0, x0, 0]), tf.stack([y1 - y0, x1 - x0, -1]))
    if image.shape.rank is not None:  # keep the static channel count through the slice
        out_image.set_shape([None, None] + image.shape.as_list()[2:])
    wf = tf.cast(window, tf.float32)
    clipped = tf.stack(
        [
            tf.clip_by_value(boxes[:, 0], wf[0], wf[2]),
            tf.clip_by_value(boxes[:, 1], wf[1], wf[3]),
            tf.clip_by_value(boxes[:, 2], wf[0], wf[2]),
            tf.clip_by_value(boxes[:, 3], wf[1], wf[3]),
        ],
        axis=-1,
    ) - tf.stack([wf[0], wf[1], wf[0], wf[1]])
    # Without a crop the boxes are returned exactly as given (no clipping).
    new_boxes = tf.where(do_crop, clipped, boxes)
    out = (out_image, tf.boolean_mask(new_boxes, kept), tf.boolean_mask(classes, kept), kept)
    if extras:
        out = out + (tuple(tf.boolean_mask(e, kept) for e in extras),)
    return out


# --------------------------------------------------------------------------------------------
# Multi-scale
# --------------------------------------------------------------------------------------------


def random_scale_choice(min_sides=DEFAULT_MIN_SIDES, seed=None):
    """Pick one training scale (the shorter image side, pixels) uniformly from ``min_sides``.

    Multi-scale training draws a scale per image and passes it to the pipeline's resize.

    Args:
        min_sides: a non-empty sequence of positive ints. Default ``(480, 512, ..., 640)``.
        seed: ``None``, an int, or an integer tensor ``[]`` / ``[2]`` (see the module docstring).

    Returns:
        An int32 scalar tensor, one of ``min_sides``.

    Example:
        >>> int(random_scale_choice((600,)))
        600
    """
    sides = [int(s) for s in min_sides]
    if not sides or min(sides) <= 0:
        raise ValueError(
            f"min_sides must be a non-empty sequence of positive ints; got {tuple(min_sides)}."
        )
    index = tf.random.stateless_uniform(
        [], seed=_seed_tensor(seed), minval=0, maxval=len(sides), dtype=tf.int32
    )
    return tf.gather(tf.constant(sides, tf.int32), index)


# --------------------------------------------------------------------------------------------
# Photometric
# --------------------------------------------------------------------------------------------


def _colour_matrix(saturation_factor, hue_turns):
    """The 3x3 RGB matrix (for row vectors) that scales saturation and rotates hue.

    In YIQ space (``Y`` luma, ``I``/``Q`` chroma), saturation scales ``(I, Q)`` by
    ``saturation_factor`` and hue rotates ``(I, Q)`` by ``2 pi hue_turns``; ``Y`` is untouched, so a
    grey pixel (``I = Q = 0``) is a fixed point. Scaling ``(I, Q)`` equals blending each pixel with
    its luma, the usual definition of a saturation change.
    """
    angle = 2.0 * 3.141592653589793 * hue_turns
    c, s = tf.cos(angle) * saturation_factor, tf.sin(angle) * saturation_factor
    one, zero = tf.ones_like(c), tf.zeros_like(c)
    chroma = tf.stack(
        [tf.stack([one, zero, zero]), tf.stack([zero, c, -s]), tf.stack([zero, s, c])]
    )
    m = tf.matmul(tf.constant(_YIQ_TO_RGB), tf.matmul(chroma, tf.constant(_RGB_TO_YIQ)))
    return tf.transpose(m)


def photometric_jitter(
    image,
    brightness=32.0,
    contrast=(0.75, 1.25),
    saturation=(0.75, 1.25),
    hue=0.05,
    probability=0.8,
    seed=None,
):
    """Random brightness, contrast, saturation and hue, in that order, with ``probability``.

    Geometry is unchanged, so boxes need no update. Each change can be switched off with ``0`` /
    ``None`` (brightness, hue) or ``None`` / ``(1, 1)`` (contrast, saturation).

    Brightness adds a delta; contrast is ``tf.image.adjust_contrast`` (about each channel's mean);
    the result is clipped to [0, 255]. Saturation and hue are one 3x3 colour matrix in YIQ space
    (chroma scaled, then rotated about the grey axis): a linear map, so it works on 0..255 values
    directly and keeps grey pixels (R = G = B) grey. It is used instead of
    ``tf.image.adjust_saturation`` / ``adjust_hue`` (HSV round trips on [0, 1] floats), which cost
    several times more (measured: the whole jitter 26 ms with them vs 4 ms, 480x640, one CPU
    thread); the YIQ hue rotation is the usual linear approximation of an HSV hue shift.

    Args:
        image: float32 ``[H, W, 3]``, 0..255.
        brightness: a delta ``U(-brightness, brightness)`` added to every pixel (0..255 units).
            Default 32.
        contrast: ``(lower, upper)`` range of the contrast factor. Default (0.75, 1.25).
        saturation: ``(lower, upper)`` range of the saturation (chroma) factor. Default
            (0.75, 1.25).
        hue: hue rotation ``U(-hue, hue)`` in turns of the colour wheel (0.5 = 180 degrees), in
            [0, 0.5]. Default 0.05.
        probability: chance of jittering at all, in [0, 1]. Default 0.8.
        seed: ``None``, an int, or an integer tensor ``[]`` / ``[2]`` (see the module docstring).

    Returns:
        float32 ``[H, W, 3]`` clipped to [0, 255].

    Example:
        >>> out = photometric_jitter(tf.fill([8, 8, 3], 128.0), seed=3)
        >>> bool(tf.reduce_all((out >= 0) & (out <= 255)))
        True
    """
    _check_probability("probability", probability)
    if brightness is not None and float(brightness) < 0:
        raise ValueError(f"brightness must be >= 0 (a 0..255 delta); got {brightness}.")
    if contrast is not None:
        _check_range("contrast", *contrast)
    if saturation is not None:
        _check_range("saturation", *saturation)
    if hue is not None and not 0.0 <= float(hue) <= 0.5:
        raise ValueError(f"hue must be in [0, 0.5]; got {hue}.")
    image = tf.cast(tf.convert_to_tensor(image), tf.float32)
    seeds = _split_seed(seed, 5)
    use_saturation = saturation is not None and tuple(saturation) != (1, 1)

    def uniform(index, low, high):
        return tf.random.stateless_uniform(
            [], seed=seeds[index], minval=float(low), maxval=float(high)
        )

    def jitter():
        x = image
        if brightness:
            x = x + uniform(1, -float(brightness), float(brightness))
        if contrast is not None and tuple(contrast) != (1, 1):
            x = tf.image.adjust_contrast(x, uniform(2, contrast[0], contrast[1]))
        x = tf.clip_by_value(x, 0.0, 255.0)
        if use_saturation or hue:
            factor = (
                uniform(3, saturation[0], saturation[1]) if use_saturation else tf.constant(1.0)
            )
            turns = uniform(4, -float(hue), float(hue)) if hue else tf.constant(0.0)
            matrix = _colour_matrix(factor, turns)
            x = tf.reshape(tf.matmul(tf.reshape(x, [-1, 3]), matrix), tf.shape(x))
            x = tf.clip_by_value(x, 0.0, 255.0)
        return x

    return tf.cond(_coin(probability, seeds[0]), jitter, lambda: image)


# --------------------------------------------------------------------------------------------
# Everything
# --------------------------------------------------------------------------------------------


def augment_example(
    image,
    boxes,
    classes,
    difficult=None,
    *,
    flip=True,
    crop=True,
    jitter=True,
    seed=None,
    **crop_kwargs,
):
    """Crop, flip and colour-jitter one example, in that order, keeping per-box fields aligned.

    Args:
        image: float32 ``[H, W, 3]``, 0..255.
        boxes: float32 ``[N, 4]`` yxyx absolute pixels.
        classes: int32 ``[N]``.
        difficult: bool ``[N]`` or ``None`` (then all False).
        flip, crop, jitter: switch each step on / off. Defaults True.
        seed: ``None``, an int, or an integer tensor ``[]`` / ``[2]`` (see the module docstring);
            each step gets its own seed derived from it.
        **crop_kwargs: keyword arguments of :func:`random_crop` (``min_scale``, ``probability``,
            ...).

    Returns:
        dict ``{"image": float32 [H', W', 3], "boxes": float32 [N', 4], "classes": int32 [N'],
        "difficult": bool [N']}``.

    Example:
        >>> ex = augment_example(tf.zeros([60, 80, 3]), tf.constant([[5., 5., 40., 50.]]),
        ...                      tf.constant([2]), seed=1)
        >>> sorted(ex)
        ['boxes', 'classes', 'difficult', 'image']
    """
    unknown = set(crop_kwargs) - {
        "min_scale",
        "max_scale",
        "min_aspect",
        "max_aspect",
        "min_box_visibility",
        "probability",
        "max_trials",
    }
    if unknown:
        raise TypeError(
            f"augment_example got unknown crop arguments {sorted(unknown)}; accepted "
            f"are those of random_crop except seed and extras."
        )
    image = tf.cast(tf.convert_to_tensor(image), tf.float32)
    boxes = tf.reshape(tf.cast(tf.convert_to_tensor(boxes), tf.float32), [-1, 4])
    classes = tf.convert_to_tensor(classes)
    if difficult is None:
        difficult = tf.zeros(tf.shape(classes)[:1], tf.bool)
    difficult = tf.convert_to_tensor(difficult)
    seeds = _split_seed(seed, 3)
    if crop:
        image, boxes, classes, _, (difficult,) = random_crop(
            image, boxes, classes, seed=seeds[0], extras=(difficult,), **crop_kwargs
        )
    if flip:
        image, boxes = random_horizontal_flip(image, boxes, seed=seeds[1])
    if jitter:
        image = photometric_jitter(image, seed=seeds[2])
    return {"image": image, "boxes": boxes, "classes": classes, "difficult": difficult}
