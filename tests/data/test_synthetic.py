"""Synthetic shapes: determinism, tight boxes, class and size coverage, empty images, splits."""

import numpy as np
import pytest

from tfrcnn.data.synthetic import (
    MIN_OBJECT_SIZE,
    SYNTHETIC_CLASS_NAMES,
    make_synthetic_records,
    synthetic_splits,
)


def _pairwise_iou(boxes):
    y1 = np.maximum(boxes[:, None, 0], boxes[None, :, 0])
    x1 = np.maximum(boxes[:, None, 1], boxes[None, :, 1])
    y2 = np.minimum(boxes[:, None, 2], boxes[None, :, 2])
    x2 = np.minimum(boxes[:, None, 3], boxes[None, :, 3])
    inter = np.clip(y2 - y1, 0, None) * np.clip(x2 - x1, 0, None)
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    return inter / (area[:, None] + area[None, :] - inter)


@pytest.fixture(scope="module")
def records():
    return make_synthetic_records(60, seed=5)


def test_record_format_and_ranges(records):
    assert len(records) == 60
    for r in records:
        h, w, c = r["image"].shape
        assert r["image"].dtype == np.uint8 and c == 3 and 128 <= h <= 192 and 128 <= w <= 192
        n = len(r["classes"])
        assert r["boxes"].dtype == np.float32 and r["boxes"].shape == (n, 4)
        assert r["classes"].dtype == np.int32 and r["difficult"].dtype == np.bool_
        assert r["difficult"].shape == (n,) and not r["difficult"].any()
        assert isinstance(r["image_id"], str)
        if n:
            b = r["boxes"]
            assert np.all(b[:, :2] >= 0) and np.all(b[:, 2] <= h) and np.all(b[:, 3] <= w)
            sides = np.stack([b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]], 1)
            # tight extents of >= 16 px shapes: a triangle's tip may lose a pixel row to rasterising
            assert sides.min() >= MIN_OBJECT_SIZE - 2
            assert sides.max() <= max(MIN_OBJECT_SIZE, min(h, w) // 2)
            iou = _pairwise_iou(b.astype(np.float64))
            np.fill_diagonal(iou, 0)
            assert iou.max() < 0.3
            assert set(r["classes"].tolist()) <= {0, 1, 2}
    assert len({r["image_id"] for r in records}) == 60


def test_classes_sizes_and_empty_images(records):
    assert len(SYNTHETIC_CLASS_NAMES) == 3
    counts = np.bincount(np.concatenate([r["classes"] for r in records]), minlength=3)
    assert np.all(counts >= 15), counts
    assert sum(len(r["classes"]) == 0 for r in records) == 6  # round(0.1 * 60)
    assert sum(len(r["classes"]) > 1 for r in records) > 20
    assert len({r["image"].shape[:2] for r in records}) > 30
    # some objects overlap
    overlapping = 0
    for r in records:
        if len(r["boxes"]) > 1:
            iou = _pairwise_iou(r["boxes"].astype(np.float64))
            np.fill_diagonal(iou, 0)
            overlapping += int(iou.max() > 0)
    assert overlapping > 0
    assert all(len(r["classes"]) > 0 for r in make_synthetic_records(10, seed=1, empty_fraction=0))


def test_deterministic_for_a_seed_and_different_across_seeds():
    a = make_synthetic_records(5, seed=3)
    b = make_synthetic_records(5, seed=3)
    c = make_synthetic_records(5, seed=4)
    for x, y in zip(a, b):
        assert x["image_id"] == y["image_id"]
        np.testing.assert_array_equal(x["image"], y["image"])
        np.testing.assert_array_equal(x["boxes"], y["boxes"])
        np.testing.assert_array_equal(x["classes"], y["classes"])
    assert not any(
        x["image"].shape == y["image"].shape and np.array_equal(x["image"], y["image"])
        for x, y in zip(a, c)
    )


def test_boxes_are_tight_around_the_drawn_pixels():
    records = make_synthetic_records(30, seed=7, backgrounds=("plain",), empty_fraction=0.0)
    for r in records:
        # a flat background: its colour is the most common one (a corner may lie under a shape)
        packed = r["image"].astype(np.int64) @ np.array([65536, 256, 1])
        shape = packed != np.bincount(packed.ravel()).argmax()
        inside = np.zeros_like(shape)
        for y1, x1, y2, x2 in r["boxes"].astype(int):
            np.testing.assert_array_equal(r["boxes"], np.round(r["boxes"]))  # whole pixels
            inside[y1:y2, x1:x2] = True
            # every border row / column of the box holds shape pixels
            assert shape[y1, x1:x2].any() and shape[y2 - 1, x1:x2].any()
            assert shape[y1:y2, x1].any() and shape[y1:y2, x2 - 1].any()
        assert not np.any(shape & ~inside), r["image_id"]


def test_backgrounds_are_textured_and_shapes_contrast():
    for r in make_synthetic_records(12, seed=2, empty_fraction=0.0):
        image = r["image"].astype(np.float64)
        mask = np.zeros(image.shape[:2], bool)
        for y1, x1, y2, x2 in r["boxes"].astype(int):
            mask[y1:y2, x1:x2] = True
        background = image[~mask]
        assert background.std(axis=0).max() > 1.0  # not a flat colour
        # each object's box holds pixels far (in RGB) from the mean background colour
        for y1, x1, y2, x2 in r["boxes"].astype(int):
            patch = image[y1:y2, x1:x2].reshape(-1, 3)
            assert np.linalg.norm(patch - background.mean(0), axis=1).max() > 60


def test_splits_are_disjoint_and_sized():
    train, val = synthetic_splits(num_train=8, num_val=4, seed=1, min_size=64, max_size=96)
    assert len(train) == 8 and len(val) == 4
    assert not {r["image_id"] for r in train} & {r["image_id"] for r in val}
    assert all(64 <= r["image"].shape[0] <= 96 for r in train + val)
    for t in train:
        for v in val:
            assert t["image"].shape != v["image"].shape or not np.array_equal(
                t["image"], v["image"]
            )
    same, _ = synthetic_splits(num_train=8, num_val=4, seed=1, min_size=64, max_size=96)
    np.testing.assert_array_equal(same[3]["image"], train[3]["image"])


def test_bad_arguments():
    with pytest.raises(ValueError, match="min_size"):
        make_synthetic_records(2, min_size=200, max_size=100)
    with pytest.raises(ValueError, match="background"):
        make_synthetic_records(2, backgrounds=("checkerboard",))
    with pytest.raises(TypeError, match="unexpected"):
        synthetic_splits(2, 2, colour="red")
