"""Box validation (tfrcnn.data.validation) and robust image reading (tfrcnn.data.images)."""

import io
import os

import numpy as np
import pytest
from PIL import Image, ImageFile

from tests.conftest import bccd_path
from tfrcnn.data.images import (
    ImageReadError,
    check_image,
    image_orientation,
    image_size,
    load_image,
    orient_boxes,
)
from tfrcnn.data.validation import AnnotationError, ValidationReport, validate_record

# ---------------------------------------------------------------- validate_record

IMAGE_H, IMAGE_W = 20, 30
GOOD = [0, 0, 10, 10]
INVERTED = [5, 5, 2, 9]
DEGENERATE = [3, 3, 3, 8]
NON_FINITE = [np.nan, 0, 4, 4]
PARTLY_OUTSIDE = [-5, 25, 5, 35]
OUTSIDE = [25, 5, 30, 9]
BAD_LABEL_BOX = [1, 1, 4, 4]
REPORT_KINDS = ("inverted", "degenerate", "non_finite", "clipped", "outside", "bad_label")


def _hand_case():
    boxes = [GOOD, INVERTED, DEGENERATE, NON_FINITE, PARTLY_OUTSIDE, OUTSIDE, BAD_LABEL_BOX]
    classes = [0, 1, 1, 0, 1, 0, 7]
    return boxes, classes


def test_validate_record_skip_drops_clips_and_counts():
    boxes, classes = _hand_case()
    report = ValidationReport()
    (b, c, kept), issues = validate_record(
        boxes, classes, IMAGE_H, IMAGE_W, source="a.xml", num_classes=2, report=report
    )
    np.testing.assert_array_equal(kept, [True, False, False, False, True, False, False])
    np.testing.assert_array_equal(b, [[0, 0, 10, 10], [0, 25, 5, 30]])
    assert b.dtype == np.float32 and c.dtype == np.int32
    np.testing.assert_array_equal(c, [0, 1])
    counts = {k: getattr(report, k) for k in REPORT_KINDS}
    assert counts == {
        "inverted": 1,
        "degenerate": 1,
        "non_finite": 1,
        "clipped": 1,
        "outside": 1,
        "bad_label": 1,
    }
    assert len(issues) == 6 and report.issues == issues
    # every message names the source, the box index and the box values
    assert "a.xml box 1 [y1, x1, y2, x2]=[5, 5, 2, 9]: inverted" in issues[0]
    assert "a.xml box 2 [y1, x1, y2, x2]=[3, 3, 3, 8]: degenerate" in issues[1]
    assert "a.xml box 3" in issues[2] and "nan" in issues[2] and "non-finite" in issues[2]
    assert "a.xml box 4" in issues[3] and "clipped to [0, 25, 5, 30]" in issues[3]
    assert "a.xml box 5" in issues[4] and "entirely outside" in issues[4]
    assert "a.xml box 6" in issues[5] and "class id 7 not in 0..1" in issues[5]
    assert report.summary() == (
        "0 images, 0 boxes kept; issues: 1 non_finite, 1 degenerate, "
        "1 inverted, 1 clipped, 1 outside, 1 bad_label"
    )


@pytest.mark.parametrize("index", [1, 2, 3, 5, 6])
def test_validate_record_strict_raises_the_same_message(index):
    boxes, classes = _hand_case()
    (_, _, _), issues = validate_record(
        [boxes[index]], [classes[index]], IMAGE_H, IMAGE_W, source="a.xml", num_classes=2
    )
    with pytest.raises(AnnotationError) as e:
        validate_record(
            [boxes[index]],
            [classes[index]],
            IMAGE_H,
            IMAGE_W,
            source="a.xml",
            num_classes=2,
            mode="strict",
        )
    assert str(e.value) == issues[0]
    assert isinstance(e.value, ValueError)


def test_validate_record_strict_keeps_clipping():
    (b, _, kept), issues = validate_record(
        [PARTLY_OUTSIDE], [0], IMAGE_H, IMAGE_W, source="a", num_classes=1, mode="strict"
    )
    np.testing.assert_array_equal(b, [[0, 25, 5, 30]])
    assert kept.tolist() == [True] and "clipped" in issues[0]


def test_validate_record_inclusive_judges_the_source_numbers():
    # VOC xmin == xmax (one pixel after conversion) is degenerate; xmax < xmin inverted,
    # a box of two pixels is fine.
    boxes = [[0, 0, 1, 1], [0, 4, 5, 4.5], [0, 0, 2, 2]]
    report = ValidationReport()
    (b, _, kept), _ = validate_record(
        boxes, [0, 0, 0], 10, 10, source="v.xml", num_classes=1, inclusive=True, report=report
    )
    assert kept.tolist() == [False, False, True]
    assert (report.degenerate, report.inverted) == (1, 1)
    # the same boxes read as continuous coordinates are all valid
    (_, _, kept), issues = validate_record(boxes, [0, 0, 0], 10, 10, source="v", num_classes=1)
    assert kept.tolist() == [True, True, True] and not issues


def test_validate_record_empty_and_bad_arguments():
    (b, c, kept), issues = validate_record(np.zeros((0, 4)), [], 5, 5, source="e", num_classes=1)
    assert b.shape == (0, 4) and c.shape == (0,) and kept.shape == (0,) and issues == []
    with pytest.raises(ValueError, match="mode must be one of"):
        validate_record([GOOD], [0], 5, 5, source="e", num_classes=1, mode="lenient")
    with pytest.raises(ValueError, match=r"e: boxes must have shape \[N, 4\]"):
        validate_record([[0, 0, 1]], [0], 5, 5, source="e", num_classes=1)
    with pytest.raises(ValueError, match="2 boxes but 1 classes"):
        validate_record([GOOD, GOOD], [0], 5, 5, source="e", num_classes=1)
    with pytest.raises(ValueError, match="image size must be positive"):
        validate_record([GOOD], [0], 0, 5, source="e", num_classes=1)


def test_validate_record_names_unknown_class_names():
    (_, _, kept), issues = validate_record(
        [GOOD],
        [-1],
        20,
        20,
        source="x.xml",
        num_classes=2,
        class_names=["cat", "dog"],
        labels=["cow"],
    )
    assert kept.tolist() == [False]
    assert "unknown class name 'cow' (known: cat, dog)" in issues[0]


# ---------------------------------------------------------------- load_image


def _save(path, img, fmt=None, **kwargs):
    img.save(path, format=fmt, **kwargs)
    return str(path)


def test_grayscale_png_loads_as_rgb(tmp_path):
    gray = np.arange(12, dtype=np.uint8).reshape(3, 4) * 20
    path = _save(tmp_path / "g.png", Image.fromarray(gray, "L"))
    image = load_image(path)
    assert image.dtype == np.uint8 and image.shape == (3, 4, 3)
    for ch in range(3):
        np.testing.assert_array_equal(image[..., ch], gray)


def test_rgba_png_is_composited_on_white(tmp_path):
    rgba = np.zeros((2, 2, 4), np.uint8)
    rgba[0, 0] = (10, 20, 30, 255)  # opaque: kept
    rgba[0, 1] = (0, 0, 0, 0)  # transparent black: white
    rgba[1, 0] = (200, 0, 100, 128)  # half: blended with white
    rgba[1, 1] = (0, 0, 0, 51)  # 20 % black
    path = _save(tmp_path / "a.png", Image.fromarray(rgba, "RGBA"))
    image = load_image(path)
    a = 128 / 255
    expected = np.array(
        [
            [[10, 20, 30], [255, 255, 255]],
            [
                np.rint([200 * a + 255 * (1 - a), 255 * (1 - a), 100 * a + 255 * (1 - a)]),
                np.rint([255 * 0.8] * 3),
            ],
        ],
        np.uint8,
    )
    np.testing.assert_array_equal(image, expected)


def test_la_palette_cmyk_and_16bit_convert_to_rgb(tmp_path):
    la = Image.fromarray(np.array([[[100, 255], [100, 0]]], np.uint8), "LA")
    np.testing.assert_array_equal(
        load_image(_save(tmp_path / "la.png", la))[0], [[100] * 3, [255] * 3]
    )
    pal = Image.fromarray(np.array([[0, 1]], np.uint8), "P")
    pal.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    np.testing.assert_array_equal(
        load_image(_save(tmp_path / "p.png", pal))[0], [[255, 0, 0], [0, 0, 255]]
    )
    pal_t = pal.copy()
    pal_t.info["transparency"] = 1
    np.testing.assert_array_equal(
        load_image(_save(tmp_path / "pt.png", pal_t, transparency=1))[0],
        [[255, 0, 0], [255, 255, 255]],
    )
    cmyk = Image.new("CMYK", (2, 1), (0, 255, 255, 0))  # full magenta + yellow = red
    np.testing.assert_array_equal(
        load_image(_save(tmp_path / "c.tif", cmyk))[0], [[255, 0, 0], [255, 0, 0]]
    )
    deep = np.array([[0, 257, 65535, 32896]], np.uint16)
    path16 = _save(tmp_path / "d.png", Image.fromarray(deep))
    assert Image.open(path16).mode.startswith("I")
    np.testing.assert_array_equal(load_image(path16)[0, :, 0], [0, 1, 255, 128])
    np.testing.assert_array_equal(
        load_image(_save(tmp_path / "i.tif", Image.new("I", (1, 1), 77)))[0, 0], [77, 77, 77]
    )


def test_png_named_jpg_decodes_by_content(tmp_path):
    rgb = np.random.RandomState(0).randint(0, 256, (5, 7, 3)).astype(np.uint8)
    path = _save(tmp_path / "really_a_png.jpg", Image.fromarray(rgb), fmt="PNG")
    np.testing.assert_array_equal(load_image(path), rgb)  # lossless: the exact pixels


def test_missing_corrupt_and_truncated_files_raise_naming_the_file(tmp_path):
    with pytest.raises(ImageReadError, match="image file not found: .*nope.jpg"):
        load_image(tmp_path / "nope.jpg")
    junk = tmp_path / "junk.jpg"
    junk.write_bytes(b"this is not an image" * 10)
    with pytest.raises(ImageReadError, match="junk.jpg"):
        load_image(junk)
    with pytest.raises(ImageReadError, match="junk.jpg"):
        image_size(junk)
    noisy = np.random.RandomState(1).randint(0, 256, (64, 64, 3)).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(noisy).save(buf, "JPEG", quality=95)
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False
    with pytest.raises(ImageReadError, match="cut.jpg: corrupt or truncated"):
        load_image(cut)
    assert image_size(cut) == (64, 64)  # the header is intact
    with pytest.raises(ImageReadError, match="cut.jpg"):
        check_image(cut)  # the quick check finds the missing end marker
    assert isinstance(ImageReadError("x"), ValueError)


def test_truncated_bccd_jpeg(tmp_path):
    src = os.path.join(bccd_path(), "JPEGImages", "BloodImage_00000.jpg")
    if not os.path.isfile(src):
        pytest.fail(f"BCCD dataset not found at {bccd_path()} (set TFRCNN_BCCD)")
    assert load_image(src).shape == (480, 640, 3)
    data = open(src, "rb").read()
    cut = tmp_path / "BloodImage_00000.jpg"
    cut.write_bytes(data[: int(len(data) * 0.6)])
    with pytest.raises(ImageReadError, match="BloodImage_00000.jpg"):
        load_image(cut)


def _marked_image(height=30, width=50, box=(5, 10, 12, 30)):
    """A black image with a white rectangle covering rows y1..y2-1 and columns x1..x2-1."""
    a = np.zeros((height, width, 3), np.uint8)
    y1, x1, y2, x2 = box
    a[y1:y2, x1:x2] = 255
    return a


def _bright_box(image, threshold=128):
    ys, xs = np.nonzero(image[..., 0] > threshold)
    return [ys.min(), xs.min(), ys.max() + 1, xs.max() + 1]


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_pixels_size_and_boxes_agree(tmp_path, orientation):
    box = (5, 10, 12, 30)
    img = Image.fromarray(_marked_image(box=box))
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = _save(tmp_path / f"o{orientation}.png", img, exif=exif.tobytes())
    assert image_orientation(path) == (30, 50, orientation)
    image = load_image(path)
    swapped = orientation in (5, 6, 7, 8)
    assert image.shape[:2] == ((50, 30) if swapped else (30, 50))
    assert image_size(path) == image.shape[:2]
    np.testing.assert_array_equal(orient_boxes([box], orientation, 30, 50)[0], _bright_box(image))


def test_orient_boxes_hand_case():
    np.testing.assert_array_equal(orient_boxes([[0, 0, 10, 20]], 6, 100, 200), [[0, 90, 20, 100]])
    np.testing.assert_array_equal(orient_boxes([[0, 0, 10, 20]], 8, 100, 200), [[180, 0, 200, 10]])
    with pytest.raises(ValueError, match="orientation"):
        orient_boxes([[0, 0, 1, 1]], 9, 10, 10)


def test_4000px_image_size_without_decoding(tmp_path, monkeypatch):
    path = _save(tmp_path / "big.jpg", Image.new("RGB", (4000, 3000), (10, 200, 30)), quality=80)

    def no_decode(self, *a, **k):
        raise AssertionError("pixels decoded")

    with monkeypatch.context() as m:
        m.setattr(ImageFile.ImageFile, "load", no_decode)
        assert image_size(path) == (3000, 4000)
        assert check_image(path) == (3000, 4000)  # end marker present: no decode either
    image = load_image(path)
    assert image.shape == (3000, 4000, 3) and image.dtype == np.uint8
    assert np.abs(image[1500, 2000].astype(int) - [10, 200, 30]).max() <= 3


def test_small_image_loads(tmp_path):
    path = _save(tmp_path / "tiny.bmp", Image.new("RGB", (32, 32), (1, 2, 3)))
    image = load_image(path)
    assert image.shape == (32, 32, 3) and image[0, 0].tolist() == [1, 2, 3]
