"""The Pascal VOC reader (tfrcnn.data.voc) on BCCD and on small broken VOC folders built in tmp_path."""

import collections
import os
import shutil

import numpy as np
import pytest
from PIL import Image, ImageFile

from tests.conftest import bccd_path
from tfrcnn.data.images import ImageReadError, load_image
from tfrcnn.data.validation import AnnotationError, ValidationReport
from tfrcnn.data.voc import DatasetNotFoundError, read_voc, voc_class_names, voc_to_yxyx

BCCD_IMAGES = 364
BCCD_BOXES = 4886
BCCD_PER_CLASS = {"RBC": 4153, "WBC": 372, "Platelets": 361}
BCCD_ZERO_AREA = ("BloodImage_00338", "BloodImage_00343")


def _bccd():
    root = bccd_path()
    if not os.path.isdir(os.path.join(root, "Annotations")):
        pytest.fail(f"BCCD dataset not found at {root} (set TFRCNN_BCCD to its folder)")
    return root


def _xml(filename, size, objects):
    """A VOC annotation; size = (height, width) or None; objects = (name, xmin, ymin, xmax, ymax[, difficult])."""
    parts = ["<annotation>", "<folder>JPEGImages</folder>"]
    if filename:
        parts.append(f"<filename>{filename}</filename>")
    if size:
        parts.append(
            f"<size><width>{size[1]}</width><height>{size[0]}</height><depth>3</depth></size>"
        )
    for obj in objects:
        name, xmin, ymin, xmax, ymax = obj[:5]
        difficult = obj[5] if len(obj) > 5 else 0
        parts.append(
            f"<object><name>{name}</name><difficult>{difficult}</difficult><bndbox>"
            f"<xmin>{xmin}</xmin><ymin>{ymin}</ymin><xmax>{xmax}</xmax><ymax>{ymax}</ymax>"
            "</bndbox></object>"
        )
    parts.append("</annotation>")
    return "\n".join(parts)


def _make_voc(root, split_ids, splits=("trainval",)):
    for d in ("Annotations", "JPEGImages", os.path.join("ImageSets", "Main")):
        os.makedirs(os.path.join(root, d), exist_ok=True)
    for s in splits:
        with open(os.path.join(root, "ImageSets", "Main", f"{s}.txt"), "w") as f:
            f.write("".join(f"{i}\n" for i in split_ids))
    return str(root)


def _write(root, image_id, xml, image=None, image_name=None, **save_kwargs):
    with open(os.path.join(root, "Annotations", f"{image_id}.xml"), "w") as f:
        f.write(xml)
    if image is not None:
        image.save(os.path.join(root, "JPEGImages", image_name or f"{image_id}.jpg"), **save_kwargs)


def _gray_image(height, width, value=90):
    return Image.new("RGB", (width, height), (value, value, value))


# ---------------------------------------------------------------- BCCD acceptance


def test_bccd_acceptance_counts_and_zero_area_boxes():
    root = _bccd()
    records, names, report = read_voc(root, ("trainval", "test"))
    assert names == ["Platelets", "RBC", "WBC"] == voc_class_names(root)
    assert len(records) == BCCD_IMAGES == report.images
    assert sum(len(r["boxes"]) for r in records) == BCCD_BOXES == report.boxes
    per_class = collections.Counter(names[c] for r in records for c in r["classes"])
    assert per_class == BCCD_PER_CLASS
    assert report.degenerate == 2 and report.num_issues == 2
    for image_id, issue in zip(BCCD_ZERO_AREA, report.issues):
        assert f"{image_id}.xml" in issue and "degenerate" in issue
    assert report.summary() == "364 images, 4886 boxes kept; issues: 2 degenerate"
    r = records[0]
    assert set(r) == {"path", "image_id", "boxes", "classes", "difficult", "height", "width"}
    assert "image" not in r and os.path.isfile(r["path"])  # lazy
    assert r["boxes"].dtype == np.float32 and r["classes"].dtype == np.int32
    assert r["difficult"].dtype == bool and not any(x["difficult"].any() for x in records)
    assert (r["height"], r["width"]) == (480, 640)
    all_boxes = np.concatenate([x["boxes"] for x in records])
    assert all_boxes.min() >= 0 and all_boxes[:, 2].max() <= 480 and all_boxes[:, 3].max() == 640
    with pytest.raises(AnnotationError, match=r"BloodImage_00338\.xml box 12 .*degenerate"):
        read_voc(root, ("trainval", "test"), mode="strict")


@pytest.fixture
def bccd_copy(tmp_path):
    """A VOC folder holding copies of two BCCD images and their XMLs."""
    src = _bccd()
    ids = ["BloodImage_00000", "BloodImage_00003"]
    root = _make_voc(tmp_path / "voc", ids)
    for i in ids:
        shutil.copy(os.path.join(src, "Annotations", f"{i}.xml"), os.path.join(root, "Annotations"))
        shutil.copy(os.path.join(src, "JPEGImages", f"{i}.jpg"), os.path.join(root, "JPEGImages"))
    return root


def test_truncated_bccd_jpeg_is_counted_or_raises(bccd_copy):
    path = os.path.join(bccd_copy, "JPEGImages", "BloodImage_00003.jpg")
    data = open(path, "rb").read()
    with open(path, "wb") as f:
        f.write(data[: len(data) // 2])
    records, _, report = read_voc(bccd_copy)
    assert [r["image_id"] for r in records] == ["BloodImage_00000"]
    assert report.unreadable_image == 1 and report.skipped_images == 1
    assert "BloodImage_00003.jpg" in report.issues[0]
    with pytest.raises(ImageReadError, match=r"BloodImage_00003\.jpg.*truncated"):
        read_voc(bccd_copy, mode="strict")
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


def test_bccd_label_not_in_class_names(bccd_copy):
    records, names, report = read_voc(bccd_copy, class_names=["WBC", "RBC"])
    assert names == ["WBC", "RBC"]
    n_platelets = report.bad_label
    assert n_platelets > 0
    assert "unknown class name 'Platelets' (known: WBC, RBC)" in report.issues[0]
    assert all(set(r["classes"].tolist()) <= {0, 1} for r in records)
    full, _, _ = read_voc(bccd_copy)
    assert report.boxes == sum(len(r["boxes"]) for r in full) - n_platelets
    with pytest.raises(AnnotationError, match=r"BloodImage_0000[03]\.xml box \d+ \('Platelets'"):
        read_voc(bccd_copy, class_names=["WBC", "RBC"], mode="strict")


# ---------------------------------------------------------------- synthetic VOC folders


def test_one_based_inclusive_corners_become_continuous(tmp_path):
    np.testing.assert_array_equal(voc_to_yxyx([[1, 1, 10, 10]]), [[0, 0, 10, 10]])
    root = _make_voc(tmp_path, ["a"])
    _write(
        root,
        "a",
        _xml("a.jpg", (20, 30), [("cat", 1, 1, 10, 10), ("dog", 21, 5, 30, 20)]),
        _gray_image(20, 30),
    )
    records, names, report = read_voc(root)
    assert names == ["cat", "dog"]
    # xmin=1, xmax=10 -> x1=0, x2=10; a box to the right and bottom borders ends at W and H
    np.testing.assert_array_equal(records[0]["boxes"], [[0, 0, 10, 10], [4, 20, 20, 30]])
    np.testing.assert_array_equal(records[0]["classes"], [0, 1])
    assert report.num_issues == 0


def test_inverted_outside_and_clipped_boxes(tmp_path):
    root = _make_voc(tmp_path, ["a"])
    objects = [
        ("cat", 1, 1, 10, 10),  # good
        ("cat", 8, 2, 4, 9),  # inverted: xmax < xmin
        ("cat", 40, 5, 50, 9),  # entirely right of the 30 px wide image
        ("cat", 25, -3, 35, 6),
    ]  # partly outside: clipped
    _write(root, "a", _xml("a.jpg", (20, 30), objects), _gray_image(20, 30))
    records, _, report = read_voc(root)
    np.testing.assert_array_equal(records[0]["boxes"], [[0, 0, 10, 10], [0, 24, 6, 30]])
    assert (report.inverted, report.outside, report.clipped) == (1, 1, 1)
    assert report.boxes == 2
    xml = os.path.join(root, "Annotations", "a.xml")
    assert f"{xml} box 1 ('cat', xmin=8 ymin=2 xmax=4 ymax=9" in report.issues[0]
    assert (
        f"{xml} box 2" in report.issues[1]
        and "entirely outside the 20x30 image" in report.issues[1]
    )
    assert "clipped to [0, 24, 6, 30]" in report.issues[2]
    with pytest.raises(AnnotationError, match=r"a\.xml box 1 .*inverted"):
        read_voc(root, mode="strict")


def test_exif_rotated_jpeg_boxes_follow_the_pixels(tmp_path):
    # An annotation tool that ignored EXIF: <size> and boxes are on the stored 40x60 grid, the
    # upright image is 60x40. The boxes must land on the white mark in the loaded pixels.
    ids = ["o6", "o8"]
    root = _make_voc(tmp_path, ids)
    stored = np.zeros((40, 60, 3), np.uint8)
    stored[6:16, 10:40] = 255  # rows 6..15, columns 10..39
    for image_id, orientation in zip(ids, (6, 8)):
        exif = Image.Exif()
        exif[0x0112] = orientation
        _write(
            root,
            image_id,
            _xml(None, (40, 60), [("mark", 11, 7, 40, 16)]),
            Image.fromarray(stored),
            quality=95,
            exif=exif.tobytes(),
        )
    records, _, report = read_voc(root)
    assert report.size_mismatch == 2 and report.images == 2
    assert "mapped with EXIF orientation 6" in report.issues[0]
    for r in records:
        image = load_image(r["path"])
        assert image.shape == (60, 40, 3) and (r["height"], r["width"]) == (60, 40)
        ys, xs = np.nonzero(image[..., 0] > 128)
        np.testing.assert_array_equal(
            r["boxes"][0], [ys.min(), xs.min(), ys.max() + 1, xs.max() + 1]
        )
    np.testing.assert_array_equal(records[0]["boxes"], [[10, 24, 40, 34]])  # rotated clockwise
    with pytest.raises(AnnotationError, match=r"o6\.xml: <size> .*disagrees"):
        read_voc(root, mode="strict")


def test_size_mismatch_scale_is_repaired_and_others_skipped(tmp_path):
    ids = ["scaled", "stretched", "swapped"]
    root = _make_voc(tmp_path, ids)
    # annotated at 2x, the image was halved afterwards: boxes are halved
    _write(root, "scaled", _xml(None, (40, 60), [("a", 11, 21, 30, 40)]), _gray_image(20, 30))
    _write(root, "stretched", _xml(None, (40, 40), [("a", 1, 1, 4, 4)]), _gray_image(20, 30))
    _write(root, "swapped", _xml(None, (30, 20), [("a", 1, 1, 4, 4)]), _gray_image(20, 30))
    records, _, report = read_voc(root)
    assert [r["image_id"] for r in records] == ["scaled"]
    np.testing.assert_array_equal(records[0]["boxes"], [[10, 5, 20, 15]])
    assert report.size_mismatch == 3 and report.skipped_images == 2
    assert "not a uniform scale; image skipped" in report.issues[1]
    assert "no EXIF orientation" in report.issues[2]
    # check_image_size=False trusts the XML
    records, _, report = read_voc(root, check_image_size=False)
    assert report.size_mismatch == 0 and len(records) == 3
    assert (records[0]["height"], records[0]["width"]) == (20, 30)  # the real size


def test_png_named_jpg_and_4000px_image_read_without_decoding(tmp_path, monkeypatch):
    root = _make_voc(tmp_path, ["png", "big"])
    _write(
        root,
        "png",
        _xml("png.jpg", (20, 30), [("a", 1, 1, 5, 5)]),
        _gray_image(20, 30),
        format="PNG",
    )
    _write(
        root,
        "big",
        _xml("big.jpg", (3000, 4000), [("a", 3001, 2001, 4000, 3000)]),
        _gray_image(3000, 4000),
        quality=80,
    )

    def no_decode(self, *a, **k):
        raise AssertionError("read_voc decoded pixels")

    with monkeypatch.context() as m:
        m.setattr(ImageFile.ImageFile, "load", no_decode)
        records, _, report = read_voc(root)
    assert report.num_issues == 0
    assert (records[1]["height"], records[1]["width"]) == (3000, 4000)
    np.testing.assert_array_equal(records[1]["boxes"], [[2000, 3000, 3000, 4000]])
    assert load_image(records[0]["path"]).shape == (20, 30, 3)
    assert load_image(records[1]["path"]).shape == (3000, 4000, 3)


def test_missing_image_bad_xml_and_filename_fallback(tmp_path):
    ids = ["named", "missing", "badxml", "noxml"]
    root = _make_voc(tmp_path, ids)
    # <filename> names a file that exists under another name than the id
    _write(
        root,
        "named",
        _xml("photo 1.png", (20, 30), [("a", 1, 1, 5, 5)]),
        _gray_image(20, 30),
        image_name="photo 1.png",
    )
    _write(root, "missing", _xml("missing.jpg", (20, 30), [("a", 1, 1, 5, 5)]))
    with open(os.path.join(root, "Annotations", "badxml.xml"), "w") as f:
        f.write("<annotation><object>")
    _gray_image(20, 30).save(os.path.join(root, "JPEGImages", "badxml.jpg"))
    records, _, report = read_voc(root)
    assert [r["image_id"] for r in records] == ["named"]
    assert records[0]["path"].endswith("photo 1.png")
    assert (report.unreadable_image, report.bad_annotation, report.skipped_images) == (1, 2, 3)
    assert "image file not found" in report.issues[0] and "missing.jpg" in report.issues[0]
    assert "badxml.xml" in report.issues[1] and "noxml.xml" in report.issues[2]
    with pytest.raises(ImageReadError, match="missing.jpg"):
        read_voc(root, mode="strict")


def test_difficult_and_empty_images(tmp_path):
    root = _make_voc(tmp_path, ["d", "empty"])
    _write(
        root,
        "d",
        _xml(None, (20, 30), [("a", 1, 1, 5, 5, 1), ("a", 2, 2, 8, 8, 0)]),
        _gray_image(20, 30),
    )
    _write(root, "empty", _xml(None, (20, 30), []), _gray_image(20, 30))
    records, _, report = read_voc(root)
    assert records[0]["difficult"].tolist() == [True, False]
    assert records[1]["boxes"].shape == (0, 4) and records[1]["classes"].shape == (0,)
    assert report.empty_image == 1 and report.images == 2
    records, _, report = read_voc(root, keep_difficult=False, skip_empty=True)
    assert [r["image_id"] for r in records] == ["d"]
    np.testing.assert_array_equal(records[0]["boxes"], [[1, 1, 8, 8]])
    assert records[0]["difficult"].tolist() == [False]
    assert report.empty_image == 1 and report.skipped_images == 1


def test_empty_split_missing_split_and_empty_folder(tmp_path):
    root = _make_voc(tmp_path / "voc", [], splits=("trainval", "test"))
    with open(os.path.join(root, "ImageSets", "Main", "trainval.txt"), "w") as f:
        f.write("\n  \n")
    split_file = os.path.join(root, "ImageSets", "Main", "trainval.txt")
    with pytest.raises(ValueError, match=f"split file {split_file} lists no image ids"):
        read_voc(root, class_names=["a"])
    with pytest.raises(
        DatasetNotFoundError,
        match=r"split file not found: .*val\.txt \(available splits: test, trainval\)",
    ):
        read_voc(root, "val", class_names=["a"])
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="no split files in"):
        read_voc(empty)
    with pytest.raises(ValueError, match="VOC dataset folder not found"):
        read_voc(tmp_path / "nowhere")
    with pytest.raises(DatasetNotFoundError, match="annotation folder not found"):
        voc_class_names(empty)


def test_all_images_unusable_is_an_error_and_report_accumulates(tmp_path):
    root = _make_voc(tmp_path, ["a"])
    _write(root, "a", _xml("a.jpg", (20, 30), [("a", 1, 1, 5, 5)]))  # no image
    with pytest.raises(
        ValueError, match=r"no usable images in .* trainval: 0 images, 0 boxes kept"
    ):
        read_voc(root)
    report = ValidationReport()
    _gray_image(20, 30).save(os.path.join(root, "JPEGImages", "a.jpg"))
    read_voc(root, report=report)
    read_voc(root, report=report)
    assert (report.images, report.boxes) == (2, 2)
