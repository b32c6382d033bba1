"""Selective search, the proposal file and the fixed-size padding of tfrcnn.data.proposals."""

import os
import sys
import zipfile

import numpy as np
import pytest

from tfrcnn.data.proposals import (
    load_proposals,
    pad_proposals,
    save_proposals,
    selective_search,
    unique_boxes,
)


def _iou(a, b):
    """Slow, obvious IoU of two yxyx boxes."""
    h = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    w = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = h * w
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union


RECTANGLES = ([20, 30, 60, 90], [70, 100, 110, 150])  # yxyx


def _two_rectangles():
    image = np.full((120, 160, 3), 200, np.uint8)
    image[20:60, 30:90] = (220, 30, 30)
    image[70:110, 100:150] = (30, 30, 220)
    return image


# ------------------------------------------------------------------------------- padding
def test_pad_proposals_pads_with_zeros_and_truncates():
    boxes = np.array([[0, 0, 5, 5], [1, 2, 3, 4]], np.float32)
    padded = pad_proposals(boxes, 4)
    assert padded.dtype == np.float32 and padded.shape == (4, 4)
    np.testing.assert_array_equal(padded[:2], boxes)
    np.testing.assert_array_equal(padded[2:], 0)
    np.testing.assert_array_equal(pad_proposals(boxes, 1), boxes[:1])
    np.testing.assert_array_equal(pad_proposals(np.zeros((0, 4)), 3), np.zeros((3, 4)))
    assert pad_proposals([], 2).shape == (2, 4)
    with pytest.raises(ValueError, match=r"\[P, 4\]"):
        pad_proposals(np.zeros((3, 5)), 2)
    with pytest.raises(ValueError, match="count"):
        pad_proposals(boxes, -1)


def test_unique_boxes_keeps_first_occurrences_in_order():
    boxes = np.array([[5, 5, 6, 6], [0, 0, 2, 2], [5, 5, 6, 6], [1, 1, 3, 3], [0, 0, 2, 2]])
    np.testing.assert_array_equal(unique_boxes(boxes), [[5, 5, 6, 6], [0, 0, 2, 2], [1, 1, 3, 3]])
    assert unique_boxes(np.zeros((0, 4))).shape == (0, 4)


# ------------------------------------------------------------------------------- files
def test_save_load_round_trip(tmp_path):
    data = {
        "BloodImage_00001": np.array([[1.5, 2, 30, 40], [0, 0, 10, 10]], np.float32),
        "file": np.array([[0, 0, 1, 1]], np.float64),  # would clash with np.savez(file=...)
        "allow_pickle": np.zeros((0, 4), np.float32),  # an image with no proposals
        "dir/with.dots and spaces": np.arange(12, dtype=np.float32).reshape(3, 4),
        7: np.ones((1, 4), np.float32),  # ids become str
    }
    path = tmp_path / "props.npz"
    save_proposals(path, data)
    loaded = load_proposals(path)
    assert list(loaded) == [str(k) for k in data]
    for key, boxes in data.items():
        got = loaded[str(key)]
        assert got.dtype == np.float32 and got.shape == (len(boxes), 4)
        np.testing.assert_array_equal(got, np.asarray(boxes, np.float32))
    # A standard .npz: numpy reads it too.
    with np.load(path) as archive:
        np.testing.assert_array_equal(archive["file"], [[0, 0, 1, 1]])
    assert [p.name for p in tmp_path.iterdir()] == ["props.npz"]  # no temporary left behind


def test_save_is_atomic_and_leaves_old_file_on_error(tmp_path, monkeypatch):
    path = tmp_path / "props.npz"
    save_proposals(path, {"a": np.ones((2, 4))})
    with pytest.raises(ValueError, match=r"image 'b'.*\[P, 4\]"):
        save_proposals(path, {"a": np.zeros((1, 4)), "b": np.zeros((2, 3))})
    np.testing.assert_array_equal(load_proposals(path)["a"], np.ones((2, 4)))

    def failing_write_array(*args, **kwargs):
        raise OSError("disk full")

    with monkeypatch.context() as patch:
        patch.setattr(np.lib.format, "write_array", failing_write_array)
        with pytest.raises(OSError, match="disk full"):
            save_proposals(path, {"c": np.zeros((1, 4))})
    assert list(load_proposals(path)) == ["a"]
    assert sorted(os.listdir(tmp_path)) == ["props.npz"]
    save_proposals(tmp_path / "empty.npz", {})
    assert load_proposals(tmp_path / "empty.npz") == {}


def test_load_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.npz"):
        load_proposals(tmp_path / "missing.npz")
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not a zip file")
    with pytest.raises(ValueError, match="bad.npz"):
        load_proposals(bad)
    wrong = tmp_path / "wrong.npz"
    with zipfile.ZipFile(wrong, "w") as archive:
        with archive.open("img1.npy", "w") as member:
            np.lib.format.write_array(member, np.zeros((2, 5), np.float32))
    with pytest.raises(ValueError, match=r"wrong.npz, image 'img1'"):
        load_proposals(wrong)
    single = tmp_path / "single.npy"
    np.save(single, np.zeros((2, 4)))
    with pytest.raises(ValueError, match="single array"):
        load_proposals(single)


# ------------------------------------------------------------------------------- selective search
def test_selective_search_finds_two_rectangles():
    image = _two_rectangles()
    boxes = selective_search(image, mode="fast", max_proposals=2000, min_size=0, num_threads=1)
    assert boxes.dtype == np.float32 and boxes.ndim == 2 and boxes.shape[1] == 4 and len(boxes) > 2
    assert np.all(boxes[:, 2] > boxes[:, 0]) and np.all(boxes[:, 3] > boxes[:, 1])
    assert (
        np.all(boxes >= 0) and np.all(boxes[:, [0, 2]] <= 120) and np.all(boxes[:, [1, 3]] <= 160)
    )
    assert len(np.unique(boxes, axis=0)) == len(boxes)  # deduplicated
    for rect in RECTANGLES:
        assert max(_iou(rect, b) for b in boxes) >= 0.7, rect
    # The whole image is one of the regions (the last merge).
    assert any(np.array_equal(b, [0, 0, 120, 160]) for b in boxes)


def test_selective_search_options():
    import cv2

    image = _two_rectangles()
    before = cv2.getNumThreads()
    first = selective_search(image, min_size=0, num_threads=1, seed=3)
    assert cv2.getNumThreads() == before  # the thread setting is restored
    # Seeded: the same order every call.
    np.testing.assert_array_equal(selective_search(image, min_size=0, seed=3), first)
    assert len(selective_search(image, min_size=0, max_proposals=3)) == 3
    big = selective_search(image, min_size=30)
    assert (
        len(big) > 0 and np.all(big[:, 2] - big[:, 0] >= 30) and np.all(big[:, 3] - big[:, 1] >= 30)
    )
    # A 2x upscaled image searched at max_side=160 gives boxes in the big image's pixels.
    large = np.repeat(np.repeat(image, 2, axis=0), 2, axis=1)
    scaled = selective_search(large, min_size=0, max_side=160)
    assert np.all(scaled[:, [0, 2]] <= 240) and np.all(scaled[:, [1, 3]] <= 320)
    for rect in RECTANGLES:
        assert max(_iou(np.multiply(rect, 2), b) for b in scaled) >= 0.7
    # Grayscale and float input are accepted.
    assert len(selective_search(image.mean(axis=2), min_size=0)) > 0
    with pytest.raises(ValueError, match="mode"):
        selective_search(image, mode="slow")
    with pytest.raises(ValueError, match=r"\[H, W, 3\]"):
        selective_search(np.zeros((4, 4, 3, 1), np.uint8))


def test_selective_search_reads_a_path(tmp_path):
    from PIL import Image

    path = tmp_path / "rects.png"
    Image.fromarray(_two_rectangles()).save(path)
    boxes = selective_search(str(path), min_size=0, seed=1)
    np.testing.assert_array_equal(boxes, selective_search(_two_rectangles(), min_size=0, seed=1))


def test_missing_opencv_raises_import_error_with_pip_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "cv2", None)
    with pytest.raises(ImportError, match="pip install opencv-contrib-python-headless"):
        selective_search(_two_rectangles())
