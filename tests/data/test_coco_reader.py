"""The COCO instances reader and writer (tfrcnn.data.coco), on hand-made JSON files and BCCD images."""

import json
import os
import shutil

import numpy as np
import pytest
from PIL import Image

from tests.conftest import bccd_path
from tfrcnn.data.coco import (
    CocoClassNames,
    coco_categories,
    coco_to_yxyx,
    read_coco,
    write_coco,
    yxyx_to_coco,
)
from tfrcnn.data.images import ImageReadError
from tfrcnn.data.validation import AnnotationError
from tfrcnn.data.voc import DatasetNotFoundError, read_voc

BCCD_SAMPLE = (
    "BloodImage_00000",
    "BloodImage_00001",
    "BloodImage_00003",
    "BloodImage_00338",
    "BloodImage_00010",
    "BloodImage_00020",
)


def _image(folder, name, height=60, width=80, value=120):
    os.makedirs(folder, exist_ok=True)
    Image.new("RGB", (width, height), (value, value // 2, 30)).save(os.path.join(folder, name))


def _json(path, images, annotations, categories):
    with open(path, "w") as f:
        json.dump({"images": images, "annotations": annotations, "categories": categories}, f)
    return str(path)


def _ann(ann_id, image_id, category_id, bbox, iscrowd=0):
    return {
        "id": ann_id,
        "image_id": image_id,
        "category_id": category_id,
        "bbox": bbox,
        "iscrowd": iscrowd,
        "area": 0.0,
    }


CATS_3_7_9 = [{"id": 9, "name": "zebra"}, {"id": 3, "name": "cat"}, {"id": 7, "name": "dog"}]


@pytest.fixture()
def small(tmp_path):
    """Two 60x80 images; categories 3 (cat), 7 (dog), 9 (zebra) listed out of order."""
    img_dir = tmp_path / "images"
    _image(img_dir, "a.jpg")
    _image(img_dir, "sub_b.png")
    images = [
        {"id": 11, "file_name": "a.jpg", "height": 60, "width": 80},
        {"id": 12, "file_name": "sub_b.png", "height": 60, "width": 80},
    ]
    return tmp_path, str(img_dir), images


def test_bbox_conversion_hand_case_and_category_remapping(small):
    tmp, img_dir, images = small
    anns = [
        _ann(1, 11, 3, [10, 20, 30, 15]),  # x=10 y=20 w=30 h=15 -> [20, 10, 35, 40]
        _ann(2, 11, 9, [0.5, 1.25, 2.5, 3.5]),  # -> [1.25, 0.5, 4.75, 3.0]
        _ann(3, 12, 7, [70, 50, 10, 10]),
    ]  # touches the bottom-right corner exactly
    path = _json(tmp / "a.json", images, anns, CATS_3_7_9)
    records, names, report = read_coco(path, img_dir)
    assert names == ["cat", "dog", "zebra"] and isinstance(names, CocoClassNames)
    assert names.category_ids == [3, 7, 9]
    a, b = records
    np.testing.assert_array_equal(a["boxes"], [[20, 10, 35, 40], [1.25, 0.5, 4.75, 3.0]])
    assert a["boxes"].dtype == np.float32 and a["classes"].dtype == np.int32
    np.testing.assert_array_equal(a["classes"], [0, 2])  # 3 -> 0, 9 -> 2
    np.testing.assert_array_equal(b["boxes"], [[50, 70, 60, 80]])
    np.testing.assert_array_equal(b["classes"], [1])  # 7 -> 1
    assert (a["image_id"], a["coco_id"], b["image_id"], b["coco_id"]) == ("a", 11, "sub_b", 12)
    assert a["path"] == os.path.join(img_dir, "a.jpg") and (a["height"], a["width"]) == (60, 80)
    np.testing.assert_array_equal(a["ann_ids"], [1, 2])
    assert not a["difficult"].any() and not a["iscrowd"].any()
    assert report.summary() == "2 images, 3 boxes kept; no issues"
    assert coco_categories(path) == ["cat", "dog", "zebra"]
    np.testing.assert_array_equal(coco_to_yxyx([[10, 20, 30, 15]]), [[20, 10, 35, 40]])
    np.testing.assert_array_equal(yxyx_to_coco([[20, 10, 35, 40]]), [[10, 20, 30, 15]])

    # class_names fixes the order by name; a category not among them is a bad label.
    records, names, report = read_coco(path, img_dir, class_names=["dog", "cat"])
    assert names == ["dog", "cat"] and names.category_ids == [7, 3]
    np.testing.assert_array_equal(records[0]["classes"], [1])
    np.testing.assert_array_equal(records[1]["classes"], [0])
    assert report.bad_label == 1 and "annotation id 2" in report.issues[0]
    assert "'zebra', not among class_names" in report.issues[0]


def test_iscrowd_kept_and_marked_and_empty_images(small):
    tmp, img_dir, images = small
    anns = [_ann(1, 11, 3, [0, 0, 40, 30], iscrowd=1), _ann(2, 11, 7, [5, 5, 10, 10])]
    path = _json(tmp / "a.json", images, anns, CATS_3_7_9)
    records, _, report = read_coco(path, img_dir)
    np.testing.assert_array_equal(records[0]["iscrowd"], [True, False])
    np.testing.assert_array_equal(records[0]["boxes"], [[0, 0, 30, 40], [5, 5, 15, 15]])
    assert records[1]["boxes"].shape == (0, 4) and records[1]["classes"].shape == (0,)
    assert records[1]["iscrowd"].shape == (0,)
    assert (
        report.empty_image == 1 and report.images == 2 and "kept with no boxes" in report.issues[0]
    )
    records, _, report = read_coco(path, img_dir, skip_empty=True)
    assert [r["image_id"] for r in records] == ["a"] and report.skipped_images == 1


def test_bad_boxes_skip_and_strict_name_file_and_annotation(small):
    tmp, img_dir, images = small
    anns = [
        _ann(1, 11, 3, [10, 10, 20, 20]),
        _ann(21, 11, 3, [10, 10, 0, 5]),  # degenerate: zero width
        _ann(22, 11, 7, [100, 10, 5, 5]),  # outside the 60x80 image
        _ann(23, 11, 42, [10, 10, 5, 5]),  # unknown category id
        _ann(24, 11, 7, [-5, 50, 20, 20]),  # partly outside: clipped
        _ann(25, 11, 7, [10, 10, -3, 5]),  # inverted (negative width)
        _ann(26, 11, 7, "junk"),
    ]  # not a bbox: non-finite
    path = _json(tmp / "bad.json", images, anns, CATS_3_7_9)
    records, _, report = read_coco(path, img_dir)
    np.testing.assert_array_equal(records[0]["boxes"], [[10, 10, 30, 30], [50, 0, 60, 15]])
    np.testing.assert_array_equal(records[0]["ann_ids"], [1, 24])
    assert (
        report.degenerate,
        report.outside,
        report.bad_label,
        report.clipped,
        report.inverted,
        report.non_finite,
    ) == (1, 1, 1, 1, 1, 1)
    by_id = {
        i: m for m in report.issues for i in (21, 22, 23, 24, 25, 26) if f"annotation id {i} " in m
    }
    assert len(by_id) == 6
    assert all("bad.json" in m and "a.jpg" in m for m in by_id.values())
    assert "degenerate" in by_id[21] and "bbox [x, y, w, h]=[10, 10, 0, 5]" in by_id[21]
    assert "outside the 60x80 image" in by_id[22]
    assert "category_id=42: not a category of the file (ids: 3, 7, 9)" in by_id[23]
    for ann, kind in ((anns[1], "degenerate"), (anns[2], "outside"), (anns[3], "not a category")):
        strict_path = _json(tmp / f"strict_{ann['id']}.json", images, [anns[0], ann], CATS_3_7_9)
        with pytest.raises(
            AnnotationError, match=rf"strict_{ann['id']}\.json annotation id {ann['id']} .*{kind}"
        ):
            read_coco(strict_path, img_dir, mode="strict")


def test_missing_image_unknown_image_id_and_size_mismatch(small):
    tmp, img_dir, images = small
    images = images + [
        {"id": 13, "file_name": "gone.jpg", "height": 60, "width": 80},
        {"id": 14, "file_name": "half.jpg", "height": 30, "width": 40},
        {"id": 15, "file_name": "odd.jpg", "height": 30, "width": 70},
    ]
    _image(img_dir, "half.jpg")
    _image(img_dir, "odd.jpg")
    anns = [
        _ann(1, 11, 3, [1, 1, 5, 5]),
        _ann(2, 13, 3, [1, 1, 5, 5]),
        _ann(3, 99, 3, [1, 1, 5, 5]),
        _ann(4, 14, 3, [2, 3, 10, 5]),
        _ann(5, 15, 3, [1, 1, 5, 5]),
    ]
    path = _json(tmp / "a.json", images, anns, CATS_3_7_9)
    records, _, report = read_coco(path, img_dir)
    assert [r["image_id"] for r in records] == ["a", "sub_b", "half"]
    assert report.unreadable_image == 1 and "gone.jpg" in "".join(report.issues)
    assert report.bad_annotation == 1 and "annotation id 3: image_id 99" in "".join(report.issues)
    assert report.size_mismatch == 2 and report.skipped_images == 2
    # the JSON size is half the real image: boxes scaled by 2
    np.testing.assert_array_equal(records[2]["boxes"], [[6, 4, 16, 24]])
    with pytest.raises(ImageReadError, match="gone.jpg"):
        read_coco(_json(tmp / "b.json", images[2:3], [], CATS_3_7_9), img_dir, mode="strict")
    with pytest.raises(AnnotationError, match="image_id 99"):
        read_coco(_json(tmp / "c.json", images[:1], anns[2:3], CATS_3_7_9), img_dir, mode="strict")
    with pytest.raises(ValueError, match="no usable images"):
        read_coco(_json(tmp / "d.json", images[2:3], [], CATS_3_7_9), img_dir)


def test_missing_and_malformed_json(small):
    tmp, img_dir, images = small
    with pytest.raises(DatasetNotFoundError, match="COCO annotation file not found: .*nope.json"):
        read_coco(tmp / "nope.json", img_dir)
    assert issubclass(DatasetNotFoundError, FileNotFoundError)
    (tmp / "broken.json").write_text('{"images": [')
    with pytest.raises(ValueError, match="cannot parse COCO annotation file .*broken.json"):
        read_coco(tmp / "broken.json", img_dir)
    (tmp / "list.json").write_text("[]")
    with pytest.raises(ValueError, match="JSON object"):
        read_coco(tmp / "list.json", img_dir)
    with pytest.raises(ValueError, match="category id 3 appears twice"):
        read_coco(
            _json(tmp / "dup.json", images, [], CATS_3_7_9 + [{"id": 3, "name": "x"}]), img_dir
        )
    with pytest.raises(DatasetNotFoundError, match="image folder not found"):
        read_coco(_json(tmp / "ok.json", images, [], CATS_3_7_9), tmp / "no_images")
    with pytest.raises(ValueError, match="mode must be"):
        read_coco(tmp / "ok.json", img_dir, mode="lenient")


def _bccd_sample(tmp_path):
    src = bccd_path()
    if not os.path.isdir(os.path.join(src, "Annotations")):
        pytest.fail(f"BCCD dataset not found at {src} (set TFRCNN_BCCD to its folder)")
    root = tmp_path / "voc"
    for d in ("Annotations", "JPEGImages", os.path.join("ImageSets", "Main")):
        os.makedirs(root / d)
    for i in BCCD_SAMPLE:
        shutil.copy(os.path.join(src, "Annotations", f"{i}.xml"), root / "Annotations")
        shutil.copy(os.path.join(src, "JPEGImages", f"{i}.jpg"), root / "JPEGImages")
    (root / "ImageSets" / "Main" / "trainval.txt").write_text("\n".join(BCCD_SAMPLE) + "\n")
    return str(root)


def test_round_trip_records_write_coco_read_coco(tmp_path):
    root = _bccd_sample(tmp_path)
    records, names, _ = read_voc(root, "trainval", ["Platelets", "RBC", "WBC"])
    records[1]["iscrowd"] = np.arange(len(records[1]["boxes"])) == 0
    records[2]["difficult"] = np.arange(len(records[2]["boxes"])) == 1
    img_dir = os.path.join(root, "JPEGImages")
    out = write_coco(records, names, tmp_path / "out" / "bccd.json", image_dir=img_dir)
    assert os.listdir(tmp_path / "out") == ["bccd.json"]  # no temporary file left
    back, back_names, report = read_coco(out, img_dir, check_images="none")
    assert back_names == names and back_names.category_ids == [1, 2, 3]
    assert report.images == len(records) == len(back)
    assert (
        report.degenerate == 0
    )  # BloodImage_00338's zero-area box was already dropped by read_voc
    for r, b in zip(records, back):
        assert b["image_id"] == r["image_id"] and b["path"] == r["path"]
        assert (b["height"], b["width"]) == (r["height"], r["width"])
        np.testing.assert_array_equal(b["boxes"], r["boxes"])  # exact: float64 bbox sums
        np.testing.assert_array_equal(b["classes"], r["classes"])
        np.testing.assert_array_equal(b["difficult"], r["difficult"])
        np.testing.assert_array_equal(
            b["iscrowd"], r.get("iscrowd", np.zeros(len(r["boxes"]), bool))
        )
    # the original COCO ids survive a second round trip
    again = write_coco(back, back_names, tmp_path / "again.json", image_dir=img_dir)
    assert json.load(open(again))["images"] == json.load(open(out))["images"]

    from pycocotools.coco import COCO

    coco = COCO(out)
    assert len(coco.getImgIds()) == len(records) and sorted(coco.getCatIds()) == [1, 2, 3]
    ann = coco.loadAnns(coco.getAnnIds(imgIds=[1]))[0]
    y1, x1, y2, x2 = records[0]["boxes"][0]
    assert ann["bbox"] == [x1, y1, x2 - x1, y2 - y1] and ann["area"] == (x2 - x1) * (y2 - y1)


def test_write_coco_category_ids_and_bad_records(tmp_path):
    _image(tmp_path, "x.png", 20, 30)
    rec = {
        "path": str(tmp_path / "x.png"),
        "image_id": "x",
        "boxes": np.array([[1, 2, 3, 4]], np.float32),
        "classes": np.array([1], np.int32),
    }
    out = write_coco([rec], CocoClassNames(["cat", "dog"], [3, 7]), tmp_path / "a.json")
    data = json.load(open(out))
    assert data["categories"][1] == {"id": 7, "name": "dog", "supercategory": ""}
    assert data["images"] == [{"id": 1, "file_name": "x.png", "height": 20, "width": 30}]
    assert data["annotations"][0]["category_id"] == 7 and data["annotations"][0]["bbox"] == [
        2,
        1,
        2,
        2,
    ]
    with pytest.raises(ValueError, match="class id 5 not in 0..1"):
        write_coco([dict(rec, classes=np.array([5]))], ["cat", "dog"], tmp_path / "b.json")
    with pytest.raises(ValueError, match="no 'path'"):
        write_coco(
            [
                {
                    "image": np.zeros((4, 4, 3), np.uint8),
                    "boxes": np.zeros((0, 4)),
                    "classes": np.zeros(0),
                }
            ],
            ["cat"],
            tmp_path / "c.json",
        )
    assert not os.path.exists(tmp_path / "b.json") and not os.path.exists(tmp_path / "c.json")
