"""A synthetic detection data set: filled shapes on textured backgrounds.

Every image is a record (see :mod:`tfrcnn.data.pipeline`)::

    {"image": uint8 [H, W, 3] RGB,
     "boxes": float32 [N, 4] (y1, x1, y2, x2) absolute pixels, continuous coordinates,
     "classes": int32 [N] in 0 .. len(SYNTHETIC_CLASS_NAMES) - 1,
     "difficult": bool [N] (all False),
     "image_id": str}

The shapes are axis-aligned rectangles, ellipses and triangles of varied size, aspect ratio and
colour; the backgrounds are smooth noise, gradients or stripes of limited contrast, so every shape
stands out. A box is the tight extent of the pixels its shape covers (a shape covering pixels
0..9 is ``[0, 0, 10, 10]``): larger shapes are drawn first, and two objects overlap with an
IoU below 0.3 and cover at most half of each other, so each stays visible.

Everything is numpy and PIL and deterministic for a seed; 1000 images take a few seconds on one
core.

Example::

    train, val = synthetic_splits(num_train=800, num_val=200)
    train[0]["image"].shape, train[0]["boxes"], train[0]["classes"]
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

SYNTHETIC_CLASS_NAMES = ("rectangle", "ellipse", "triangle")

RECTANGLE = 0
ELLIPSE = 1
TRIANGLE = 2

BACKGROUND_KINDS = ("noise", "gradient", "stripes")
"""The textured backgrounds drawn by default; ``"plain"`` (one flat colour) is also accepted."""

_ALL_BACKGROUNDS = BACKGROUND_KINDS + ("plain",)

MIN_OBJECT_SIZE = 16
"""Smallest object side in pixels."""

_MAX_IOU = 0.3
_MAX_COVER = 0.5  # at most this fraction of an object's box may lie under another's box
_TEXTURE_AMPLITUDE = 36.0  # max deviation of a texture from its base colour, per channel
_MIN_COLOUR_CONTRAST = 110.0  # RGB distance of a shape colour from the background base colour
_MIN_SHAPE_CONTRAST = 70.0  # RGB distance between the colours of two overlapping shapes
_PLACEMENT_TRIES = 40


def make_synthetic_records(
    num_images,
    seed=0,
    min_size=128,
    max_size=192,
    empty_fraction=0.1,
    max_objects=6,
    backgrounds=BACKGROUND_KINDS,
):
    """Make ``num_images`` synthetic records, deterministic for ``seed``.

    Args:
      num_images: how many images.
      seed: integer seed; the same seed gives the same records.
      min_size, max_size: image height and width are each drawn from ``[min_size, max_size]``.
      empty_fraction: the fraction of the images with no object (rounded to a count).
      max_objects: a non-empty image has 1 .. ``max_objects`` objects (fewer when they do not fit
        without overlapping too much).
      backgrounds: the background kinds to draw from: any of ``"noise"``, ``"gradient"``,
        ``"stripes"`` (the default three) and ``"plain"`` (a flat colour, for tests).

    Returns:
      A list of record dicts; ``image_id`` is ``f"synthetic-{seed}-{index:05d}"``.
    """
    return _make_records(
        num_images,
        seed,
        stream=0,
        prefix=f"synthetic-{seed}",
        min_size=min_size,
        max_size=max_size,
        empty_fraction=empty_fraction,
        max_objects=max_objects,
        backgrounds=backgrounds,
    )


def synthetic_splits(num_train=800, num_val=200, seed=0, **kwargs):
    """A training and a held-out validation set of synthetic records.

    The training set is ``make_synthetic_records(num_train, seed, **kwargs)``; the validation set
    is drawn from a different random stream (image ids ``"synthetic-val-{seed}-{index:05d}"``),
    so the two never share an image.

    Returns:
      ``(train_records, val_records)``.
    """
    train = make_synthetic_records(num_train, seed=seed, **kwargs)
    val = _make_records(
        num_val, seed, stream=1, prefix=f"synthetic-val-{seed}", **_defaults(kwargs)
    )
    return train, val


def _defaults(kwargs):
    out = dict(
        min_size=128, max_size=192, empty_fraction=0.1, max_objects=6, backgrounds=BACKGROUND_KINDS
    )
    unknown = set(kwargs) - set(out)
    if unknown:
        raise TypeError(
            f"synthetic_splits got unexpected arguments {sorted(unknown)}; accepted: {sorted(out)}"
        )
    out.update(kwargs)
    return out


def _make_records(
    num_images, seed, stream, prefix, min_size, max_size, empty_fraction, max_objects, backgrounds
):
    num_images = int(num_images)
    if num_images < 0:
        raise ValueError(f"num_images must be >= 0, got {num_images}")
    if not MIN_OBJECT_SIZE * 2 <= min_size <= max_size:
        raise ValueError(
            f"need {2 * MIN_OBJECT_SIZE} <= min_size <= max_size, got "
            f"min_size={min_size}, max_size={max_size}"
        )
    if not 0.0 <= empty_fraction <= 1.0:
        raise ValueError(f"empty_fraction must be in [0, 1], got {empty_fraction}")
    if max_objects < 1:
        raise ValueError(f"max_objects must be >= 1, got {max_objects}")
    backgrounds = (backgrounds,) if isinstance(backgrounds, str) else tuple(backgrounds)
    bad = [b for b in backgrounds if b not in _ALL_BACKGROUNDS]
    if not backgrounds or bad:
        raise ValueError(f"unknown background kinds {bad}; accepted: {_ALL_BACKGROUNDS}")

    root = np.random.SeedSequence([int(seed), int(stream)])
    split_rng = np.random.default_rng(root.spawn(1)[0])
    num_empty = int(round(empty_fraction * num_images))
    empty = np.zeros(num_images, bool)
    empty[split_rng.permutation(num_images)[:num_empty]] = True

    records = []
    for index, child in enumerate(root.spawn(num_images)):
        rng = np.random.default_rng(child)
        height = int(rng.integers(min_size, max_size + 1))
        width = int(rng.integers(min_size, max_size + 1))
        kind = backgrounds[int(rng.integers(len(backgrounds)))]
        num_objects = 0 if empty[index] else int(rng.integers(1, max_objects + 1))
        image, boxes, classes = _render(rng, height, width, kind, num_objects)
        records.append(
            {
                "image": image,
                "boxes": boxes,
                "classes": classes,
                "difficult": np.zeros(len(classes), np.bool_),
                "image_id": f"{prefix}-{index:05d}",
            }
        )
    return records


def _render(rng, height, width, kind, num_objects):
    """One image: (uint8 [H, W, 3], float32 [N, 4] boxes, int32 [N] classes)."""
    base = rng.uniform(20, 235, size=3)
    image = _background(rng, height, width, kind, base)

    placed = []  # (box [4] ints y1 x1 y2 x2, class, colour)
    for _ in range(num_objects):
        box = _place(rng, height, width, [p[0] for p in placed])
        if box is None:
            break
        neighbours = [p[2] for p in placed if _intersection(box, p[0]) > 0]
        placed.append(
            (box, int(rng.integers(len(SYNTHETIC_CLASS_NAMES))), _colour(rng, base, neighbours))
        )

    # Larger shapes first, so a smaller one lying partly on a larger one stays whole.
    placed.sort(key=lambda p: -(p[0][2] - p[0][0]) * (p[0][3] - p[0][1]))
    boxes, classes = [], []
    for box, cls, colour in placed:
        y1, x1, y2, x2 = box
        mask = _shape_mask(rng, cls, y2 - y1, x2 - x1)
        image[y1:y2, x1:x2][mask] = colour
        rows = np.flatnonzero(mask.any(axis=1))
        cols = np.flatnonzero(mask.any(axis=0))
        boxes.append([y1 + rows[0], x1 + cols[0], y1 + rows[-1] + 1, x1 + cols[-1] + 1])
        classes.append(cls)
    return (
        image,
        np.asarray(boxes, np.float32).reshape(-1, 4),
        np.asarray(classes, np.int32).reshape(-1),
    )


def _background(rng, height, width, kind, base):
    """float -> uint8 [H, W, 3]: ``base`` plus a texture of amplitude <= _TEXTURE_AMPLITUDE."""
    if kind == "plain":
        return np.broadcast_to(np.round(base).astype(np.uint8), (height, width, 3)).copy()
    amp = rng.uniform(0.4, 1.0) * _TEXTURE_AMPLITUDE
    if kind == "noise":
        cells = int(rng.integers(3, 12))
        coarse = rng.uniform(-1, 1, size=(cells, cells, 3))
        texture = np.stack(
            [
                np.asarray(
                    Image.fromarray(coarse[..., c].astype(np.float32)).resize(
                        (width, height), Image.BICUBIC
                    )
                )
                for c in range(3)
            ],
            axis=-1,
        )
        texture = texture / max(np.abs(texture).max(), 1e-6)
    else:
        yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
        angle = rng.uniform(0, np.pi)
        t = yy * np.sin(angle) + xx * np.cos(angle)
        if kind == "gradient":
            t = (t - t.min()) / max(t.max() - t.min(), 1e-6) * 2 - 1
            texture = t[..., None] * rng.uniform(-1, 1, size=3)
        else:  # stripes
            period = rng.uniform(6, 40)
            wave = np.sin(2 * np.pi * t / period + rng.uniform(0, 2 * np.pi))
            if rng.random() < 0.5:
                wave = np.sign(wave)
            texture = wave[..., None] * rng.uniform(-1, 1, size=3)
    fine = rng.normal(0, 0.08, size=(height, width, 1))  # a little sensor-like grain
    image = base + amp * np.clip(texture + fine, -1, 1)
    return np.clip(np.round(image), 0, 255).astype(np.uint8)


def _place(rng, height, width, boxes):
    """A box [y1, x1, y2, x2] (ints) that overlaps none of ``boxes`` too much, or None."""
    max_side = max(MIN_OBJECT_SIZE, min(height, width) // 2)
    for _ in range(_PLACEMENT_TRIES):
        size = np.exp(rng.uniform(np.log(MIN_OBJECT_SIZE), np.log(max_side)))
        aspect = np.exp(rng.uniform(np.log(1 / 2.5), np.log(2.5)))  # height / width
        h = int(np.clip(round(size * np.sqrt(aspect)), MIN_OBJECT_SIZE, max_side))
        w = int(np.clip(round(size / np.sqrt(aspect)), MIN_OBJECT_SIZE, max_side))
        y1 = int(rng.integers(0, height - h + 1))
        x1 = int(rng.integers(0, width - w + 1))
        box = (y1, x1, y1 + h, x1 + w)
        if all(_acceptable_overlap(box, other) for other in boxes):
            return box
    return None


def _area(box):
    return (box[2] - box[0]) * (box[3] - box[1])


def _intersection(a, b):
    h = min(a[2], b[2]) - max(a[0], b[0])
    w = min(a[3], b[3]) - max(a[1], b[1])
    return max(h, 0) * max(w, 0)


def _acceptable_overlap(a, b):
    inter = _intersection(a, b)
    if inter == 0:
        return True
    union = _area(a) + _area(b) - inter
    return inter / union < _MAX_IOU and inter <= _MAX_COVER * min(_area(a), _area(b))


def _colour(rng, base, neighbours):
    """A uint8 RGB colour far from the background base and from overlapping shapes' colours."""
    for _ in range(100):
        colour = rng.uniform(0, 255, size=3)
        if np.linalg.norm(colour - base) < _MIN_COLOUR_CONTRAST:
            continue
        if all(np.linalg.norm(colour - n) >= _MIN_SHAPE_CONTRAST for n in neighbours):
            return np.round(colour).astype(np.uint8)
    # Fallback: the opposite corner of the RGB cube from the background.
    return np.where(base < 128, 255, 0).astype(np.uint8)


def _shape_mask(rng, cls, h, w):
    """bool [h, w]: the pixels of a shape of class ``cls`` filling an h x w box."""
    canvas = Image.new("1", (w, h), 0)
    draw = ImageDraw.Draw(canvas)
    if cls == RECTANGLE:
        draw.rectangle([0, 0, w - 1, h - 1], fill=1)
    elif cls == ELLIPSE:
        draw.ellipse([0, 0, w - 1, h - 1], fill=1)
    else:
        # An isosceles-ish triangle: a base along one side of the box, the apex on the opposite
        # side at a random position, pointing up, down, left or right.
        t = rng.uniform(0.2, 0.8)
        side = int(rng.integers(4))
        if side == 0:  # apex up
            pts = [(t * (w - 1), 0), (0, h - 1), (w - 1, h - 1)]
        elif side == 1:  # apex down
            pts = [(t * (w - 1), h - 1), (0, 0), (w - 1, 0)]
        elif side == 2:  # apex left
            pts = [(0, t * (h - 1)), (w - 1, 0), (w - 1, h - 1)]
        else:  # apex right
            pts = [(w - 1, t * (h - 1)), (0, 0), (0, h - 1)]
        draw.polygon(pts, fill=1)
    return np.asarray(canvas, dtype=bool)
