"""Tests of tfrcnn.data.augment: values of flips and crops, the visibility rule, seeds, tf.data."""

import numpy as np
import pytest
import tensorflow as tf

from tfrcnn.data.augment import (
    _colour_matrix,
    augment_example,
    photometric_jitter,
    random_crop,
    random_horizontal_flip,
    random_scale_choice,
)

COLOUR = np.array([200.0, 30.0, 90.0], np.float32)


def _marked_image(height, width, box):
    """Zeros with a solid COLOUR block over the integer box [y1, x1, y2, x2]."""
    img = np.zeros([height, width, 3], np.float32)
    y1, x1, y2, x2 = [int(v) for v in box]
    img[y1:y2, x1:x2] = COLOUR
    return img


def _block_box(img):
    """The yxyx box (continuous coordinates) of the COLOUR pixels, or None."""
    mask = np.all(np.isclose(img, COLOUR), axis=-1)
    if not mask.any():
        return None
    ys, xs = np.nonzero(mask)
    return np.array([ys.min(), xs.min(), ys.max() + 1, xs.max() + 1], np.float32)


def _coordinate_image(height, width):
    """Channel 0 = row, channel 1 = column: a crop's top-left pixel gives its window offset."""
    yy, xx = np.meshgrid(np.arange(height), np.arange(width), indexing="ij")
    return np.stack([yy, xx, np.zeros_like(yy)], axis=-1).astype(np.float32)


def _window_of(cropped):
    y0, x0 = cropped[0, 0, 0], cropped[0, 0, 1]
    return np.array([y0, x0, y0 + cropped.shape[0], x0 + cropped.shape[1]], np.float32)


def _visibility_np(boxes, window):
    ih = np.clip(np.minimum(boxes[:, 2], window[2]) - np.maximum(boxes[:, 0], window[0]), 0, None)
    iw = np.clip(np.minimum(boxes[:, 3], window[3]) - np.maximum(boxes[:, 1], window[1]), 0, None)
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    return ih * iw / area


# ------------------------------------------------------------------------------------- flip


def test_flip_hand_case():
    image = tf.zeros([40, 100, 3])
    _, boxes = random_horizontal_flip(
        image, tf.constant([[10.0, 20.0, 30.0, 50.0]]), probability=1.0
    )
    np.testing.assert_array_equal(boxes.numpy(), [[10.0, 50.0, 30.0, 80.0]])
    _, same = random_horizontal_flip(
        image, tf.constant([[10.0, 20.0, 30.0, 50.0]]), probability=0.0
    )
    np.testing.assert_array_equal(same.numpy(), [[10.0, 20.0, 30.0, 50.0]])


def test_flip_moves_marked_block_with_box():
    box = [5.0, 12.0, 25.0, 40.0]
    image, boxes = random_horizontal_flip(_marked_image(30, 70, box), tf.constant([box]), 1.0)
    np.testing.assert_array_equal(boxes.numpy()[0], [5.0, 30.0, 25.0, 58.0])
    np.testing.assert_array_equal(_block_box(image.numpy()), boxes.numpy()[0])


def test_flip_probability_and_seed():
    image = tf.zeros([8, 10, 3])
    box = tf.constant([[0.0, 1.0, 2.0, 3.0]])
    flips = [random_horizontal_flip(image, box, seed=s)[1].numpy()[0, 1] != 1.0 for s in range(200)]
    assert 0.35 < np.mean(flips) < 0.65
    a = [random_horizontal_flip(image, box, seed=s)[1].numpy() for s in range(10)]
    b = [random_horizontal_flip(image, box, seed=s)[1].numpy() for s in range(10)]
    np.testing.assert_array_equal(a, b)


# ------------------------------------------------------------------------------------- crop


def test_crop_block_lies_at_returned_box():
    box = [20.0, 30.0, 60.0, 75.0]
    image = _marked_image(80, 100, box)
    checked = 0
    for s in range(40):
        out, boxes, classes, kept = random_crop(
            image, tf.constant([box]), tf.constant([3]), probability=1.0, seed=s
        )
        out, boxes = out.numpy(), boxes.numpy()
        assert kept.numpy().tolist() == [True]  # the only box is never lost
        assert classes.numpy().tolist() == [3]
        h, w = out.shape[:2]
        assert np.all(boxes[:, [0, 2]] >= 0) and np.all(boxes[:, [0, 2]] <= h)
        assert np.all(boxes[:, [1, 3]] >= 0) and np.all(boxes[:, [1, 3]] <= w)
        np.testing.assert_allclose(_block_box(out), boxes[0], atol=1.0)
        checked += (h, w) != (80, 100)
    assert checked > 20  # most of the trials really cropped


def test_crop_visibility_rule_matches_reference():
    h, w = 60, 90
    image = _coordinate_image(h, w)
    boxes = np.array(
        [[0, 0, 20, 20], [40, 70, 60, 90], [10, 30, 50, 60], [25, 0, 35, 90]], np.float32
    )
    classes = np.arange(4, dtype=np.int32)
    dropped_any = kept_partial = False
    for s in range(60):
        out, nb, nc, kept = random_crop(
            image, boxes, classes, probability=1.0, min_scale=0.3, max_scale=0.6, seed=s
        )
        out, nb, nc, kept = out.numpy(), nb.numpy(), nc.numpy(), kept.numpy()
        window = _window_of(out)
        vis = _visibility_np(boxes, window)
        np.testing.assert_array_equal(kept, vis >= 0.5)
        np.testing.assert_array_equal(nc, classes[kept])
        lo, hi = window[[0, 1, 0, 1]], window[[2, 3, 2, 3]]
        ref = np.clip(boxes[kept], lo, hi) - lo
        np.testing.assert_allclose(nb, ref, atol=1e-4)
        assert kept.any()
        dropped_any |= not kept.all()
        kept_partial |= bool(np.any((vis >= 0.5) & (vis < 1.0)))
    assert dropped_any and kept_partial


def test_crop_drops_box_mostly_outside_hand_case():
    # Window 100 tall x 50 wide (scale 0.5, aspect 0.5 of a 100x100 image), x0 in [0, 50].
    # Box A spans the full image so it is always 50% visible (kept at the 0.5 threshold);
    # box B [0, 90, 100, 100] shows (x0 - 40) / 10 of itself, kept iff x0 >= 45; box C (columns
    # 45..55) always has at least 5 of its 10 columns inside [x0, x0 + 50], so it is always kept;
    # the zero-area box D at (50, 10) is kept iff its centre column 10 is in [x0, x0 + 50].
    image = _coordinate_image(100, 100)
    boxes = tf.constant(
        [
            [0.0, 0.0, 100.0, 100.0],
            [0.0, 90.0, 100.0, 100.0],
            [0.0, 45.0, 100.0, 55.0],
            [50.0, 10.0, 50.0, 10.0],
        ]
    )
    seen_b_dropped = False
    for s in range(15):
        out, nb, _, kept = random_crop(
            image,
            boxes,
            tf.constant([0, 1, 2, 3]),
            min_scale=0.5,
            max_scale=0.5,
            min_aspect=0.5,
            max_aspect=0.5,
            probability=1.0,
            seed=s,
        )
        x0 = out.numpy()[0, 0, 1]
        assert out.shape[:2] == (100, 50)
        vis_b = max(0.0, min(100.0, x0 + 50) - max(90.0, x0)) / 10.0
        vis_c = max(0.0, min(55.0, x0 + 50) - max(45.0, x0)) / 10.0
        assert vis_c >= 0.5
        assert kept.numpy().tolist() == [True, vis_b >= 0.5, True, x0 <= 10]
        seen_b_dropped |= vis_b < 0.5
        np.testing.assert_allclose(nb.numpy()[0], [0, 0, 100, 50])
    assert seen_b_dropped


def test_crop_never_loses_all_boxes():
    image = tf.zeros([200, 200, 3])
    boxes = tf.constant(
        [[0.0, 0.0, 8.0, 8.0], [192.0, 192.0, 200.0, 200.0]]
    )  # two tiny corner boxes
    for s in range(40):
        _, nb, nc, kept = random_crop(
            image, boxes, tf.constant([1, 2]), min_scale=0.2, max_scale=0.3, probability=1.0, seed=s
        )
        assert nb.shape[0] >= 1 and nc.shape[0] == nb.shape[0] and kept.numpy().any()


def test_crop_without_boxes_and_probability_zero():
    image = tf.zeros([50, 60, 3])
    empty = tf.zeros([0, 4])
    out, nb, nc, kept = random_crop(
        image, empty, tf.zeros([0], tf.int32), probability=1.0, min_scale=0.3, max_scale=0.5, seed=2
    )
    assert out.shape[0] * out.shape[1] < 50 * 60 * 0.55  # cropped although there are no boxes
    assert nb.shape == (0, 4) and kept.shape == (0,)
    boxes = tf.constant([[1.0, 2.0, 30.0, 40.0]])
    out, nb, _, kept = random_crop(image, boxes, tf.constant([0]), probability=0.0, seed=2)
    assert out.shape == (50, 60, 3)
    np.testing.assert_array_equal(nb.numpy(), boxes.numpy())


def test_crop_deterministic_with_seed():
    image = tf.random.stateless_uniform([70, 90, 3], seed=[1, 2], maxval=255.0)
    boxes = tf.constant([[5.0, 5.0, 50.0, 60.0], [30.0, 40.0, 70.0, 90.0]])
    run = lambda s: random_crop(image, boxes, tf.constant([0, 1]), probability=1.0, seed=s)
    a, b = run(11), run(11)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x.numpy(), y.numpy())
    shapes = {tuple(run(s)[0].shape) for s in range(8)}
    assert len(shapes) > 1


def test_crop_extras_are_filtered():
    image = _coordinate_image(60, 90)
    boxes = tf.constant(
        [[0.0, 0.0, 20.0, 20.0], [40.0, 70.0, 60.0, 90.0], [10.0, 30.0, 50.0, 60.0]]
    )
    difficult = tf.constant([True, False, True])
    for s in range(10):
        _, nb, nc, kept, (nd,) = random_crop(
            image,
            boxes,
            tf.constant([0, 1, 2]),
            probability=1.0,
            min_scale=0.3,
            max_scale=0.5,
            seed=s,
            extras=(difficult,),
        )
        np.testing.assert_array_equal(nd.numpy(), difficult.numpy()[kept.numpy()])


# ------------------------------------------------------------------------- scale, photometric


def test_random_scale_choice_covers_choices():
    sides = (480, 512, 544, 576, 608, 640)
    picks = [int(random_scale_choice(sides, seed=s)) for s in range(120)]
    assert set(picks) == set(sides)
    assert int(random_scale_choice(sides, seed=5)) == int(random_scale_choice(sides, seed=5))
    assert random_scale_choice(sides).dtype == tf.int32


def test_photometric_stays_in_range():
    image = tf.random.stateless_uniform([16, 16, 3], seed=[3, 4], maxval=255.0)
    image = tf.concat([image[:8], tf.zeros([4, 16, 3]), tf.fill([4, 16, 3], 255.0)], axis=0)
    changed = 0
    for s in range(10):
        out = photometric_jitter(
            image,
            brightness=64.0,
            contrast=(0.5, 1.5),
            saturation=(0.5, 1.5),
            hue=0.2,
            probability=1.0,
            seed=s,
        ).numpy()
        assert out.shape == (16, 16, 3) and out.min() >= 0.0 and out.max() <= 255.0
        changed += not np.allclose(out, image.numpy())
    assert changed == 10
    same = photometric_jitter(image, probability=0.0, seed=1)
    np.testing.assert_array_equal(same.numpy(), image.numpy())


def test_photometric_grey_stays_grey():
    grey = tf.fill([6, 7, 3], 117.0)
    for s in range(10):
        out = photometric_jitter(
            grey,
            brightness=0,
            contrast=None,
            saturation=(0.2, 1.8),
            hue=0.5,
            probability=1.0,
            seed=s,
        ).numpy()
        np.testing.assert_allclose(out, 117.0, atol=1e-3)
        full = photometric_jitter(grey, probability=1.0, seed=s).numpy()
        np.testing.assert_allclose(full, full[0, 0, 0], atol=1e-3)  # constant grey, maybe shifted


def test_colour_matrix_values():
    rgb = np.array([[200.0, 30.0, 90.0], [10.0, 250.0, 60.0], [77.0, 77.0, 77.0]], np.float32)
    identity = _colour_matrix(tf.constant(1.0), tf.constant(0.0)).numpy()
    np.testing.assert_allclose(identity, np.eye(3), atol=1e-5)
    grey = rgb @ _colour_matrix(tf.constant(0.0), tf.constant(0.3)).numpy()  # saturation 0
    luma = rgb @ np.array([0.299, 0.587, 0.114], np.float32)
    np.testing.assert_allclose(grey, np.repeat(luma[:, None], 3, axis=1), atol=1e-3)
    # A hue rotation keeps luma and chroma magnitude; +d then -d is the identity.
    plus = _colour_matrix(tf.constant(1.0), tf.constant(0.1)).numpy()
    minus = _colour_matrix(tf.constant(1.0), tf.constant(-0.1)).numpy()
    np.testing.assert_allclose((rgb @ plus) @ np.array([0.299, 0.587, 0.114]), luma, atol=1e-3)
    np.testing.assert_allclose(rgb @ plus @ minus, rgb, atol=1e-3)
    assert not np.allclose(rgb[:2] @ plus, rgb[:2], atol=1.0)


# ------------------------------------------------------------------------- augment_example


def test_augment_example_keeps_fields_aligned():
    h, w = 64, 96
    boxes = np.array(
        [[0, 0, 16, 16], [40, 70, 64, 96], [10, 30, 50, 60], [20, 10, 30, 20]], np.float32
    )
    classes = np.array([0, 1, 2, 3], np.int32)
    difficult = np.array([False, True, False, True])
    # Colour each box's block by its class: 50 * (class + 1) in channel 0, so after crop and flip
    # each returned box must cover pixels of its own class value (no jitter).
    image = np.zeros([h, w, 3], np.float32)
    for b, c in zip(boxes.astype(int), classes):
        image[b[0] : b[2], b[1] : b[3], 0] = 50.0 * (c + 1)
    for s in range(15):
        ex = augment_example(
            image, boxes, classes, difficult, jitter=False, seed=s, probability=1.0, min_scale=0.3
        )
        img, nb, nc, nd = (ex[k].numpy() for k in ("image", "boxes", "classes", "difficult"))
        assert nb.shape[0] == nc.shape[0] == nd.shape[0] >= 1
        np.testing.assert_array_equal(nd, difficult[nc])
        for b, c in zip(nb, nc):
            cy, cx = int((b[0] + b[2]) / 2), int((b[1] + b[3]) / 2)
            assert img[cy, cx, 0] == 50.0 * (c + 1)
    ex = augment_example(image, boxes, classes, seed=3)
    assert ex["difficult"].dtype == tf.bool and not ex["difficult"].numpy().any()
    with pytest.raises(TypeError, match="unknown crop arguments"):
        augment_example(image, boxes, classes, min_scal=0.3)


def test_works_in_tf_data_graph_mode_with_dynamic_sizes():
    def make(i):
        h = 40 + tf.cast(i % 3, tf.int32) * 17
        w = 50 + tf.cast(i % 4, tf.int32) * 13
        image = tf.random.stateless_uniform(
            tf.stack([h, w, 3]), seed=tf.stack([i, i]), maxval=255.0
        )
        n = tf.cast(i % 3, tf.int32)  # 0, 1 or 2 boxes
        boxes = tf.tile(tf.constant([[5.0, 5.0, 30.0, 40.0]]), tf.stack([n, 1]))
        return image, boxes, tf.zeros([n], tf.int32), tf.ones([n], tf.bool)

    def aug(i, image, boxes, classes, difficult):
        seed = tf.stack([tf.constant(7, tf.int64), i])
        ex = augment_example(image, boxes, classes, difficult, seed=seed, probability=1.0)
        ex["scale"] = random_scale_choice(seed=i)
        return ex

    ds = (
        tf.data.Dataset.range(12)
        .map(make)
        .enumerate()
        .map(lambda i, ex: aug(i, *ex), num_parallel_calls=2)
    )
    spec = ds.element_spec
    assert spec["image"].shape.as_list() == [None, None, 3]
    assert spec["boxes"].shape.as_list() == [None, 4]
    first = [{k: v.numpy() for k, v in ex.items()} for ex in ds]
    second = [{k: v.numpy() for k, v in ex.items()} for ex in ds]
    for a, b in zip(first, second):  # per-element seeds: reproducible across epochs
        for k in a:
            np.testing.assert_array_equal(a[k], b[k])
    for ex in first:
        h, w = ex["image"].shape[:2]
        n = ex["boxes"].shape[0]
        assert ex["classes"].shape == (n,) and ex["difficult"].shape == (n,)
        assert ex["image"].min() >= 0 and ex["image"].max() <= 255
        assert np.all(ex["boxes"][:, [0, 2]] <= h) and np.all(ex["boxes"][:, [1, 3]] <= w)
        assert np.all(ex["boxes"] >= 0)
    assert sum(ex["boxes"].shape[0] for ex in first) >= 8  # boxes survive (>= 1 per boxed image)
    # seed=None also runs inside the graph
    unseeded = (
        tf.data.Dataset.range(4).map(make).map(lambda im, b, c, d: augment_example(im, b, c, d))
    )
    assert len(list(unseeded)) == 4
