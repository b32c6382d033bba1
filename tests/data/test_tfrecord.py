"""TFRecord (TF OD API layout) writing, reading and converting (tfrcnn.data.tfrecord)."""

import os
import shutil

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

import tfrcnn.data.tfrecord as tfrecord_module
from tests.conftest import bccd_path
from tfrcnn.data.coco import read_coco, write_coco
from tfrcnn.data.images import ImageReadError, load_image
from tfrcnn.data.tfrecord import (
    convert_to_tfrecord,
    read_tfrecords,
    shard_paths,
    tfrecord_records,
    write_tfrecords,
)
from tfrcnn.data.validation import AnnotationError
from tfrcnn.data.voc import read_voc

BCCD_SAMPLE = (
    "BloodImage_00000",
    "BloodImage_00001",
    "BloodImage_00003",
    "BloodImage_00338",
    "BloodImage_00010",
    "BloodImage_00020",
)
NAMES = ["Platelets", "RBC", "WBC"]
BOX_TOL = 1e-4  # pixels


def _bccd():
    root = bccd_path()
    if not os.path.isdir(os.path.join(root, "Annotations")):
        pytest.fail(f"BCCD dataset not found at {root} (set TFRCNN_BCCD to its folder)")
    return root


@pytest.fixture()
def voc_sample(tmp_path):
    """Six BCCD images and XMLs copied into a VOC folder (BloodImage_00338 has a zero-area box)."""
    src = _bccd()
    root = tmp_path / "voc"
    for d in ("Annotations", "JPEGImages", os.path.join("ImageSets", "Main")):
        os.makedirs(root / d)
    for i in BCCD_SAMPLE:
        shutil.copy(os.path.join(src, "Annotations", f"{i}.xml"), root / "Annotations")
        shutil.copy(os.path.join(src, "JPEGImages", f"{i}.jpg"), root / "JPEGImages")
    (root / "ImageSets" / "Main" / "trainval.txt").write_text("\n".join(BCCD_SAMPLE) + "\n")
    return str(root)


def _assert_same(records, back):
    """back (from TFRecords) holds the same images, boxes, classes and flags as records (lazy or not)."""
    assert [b["image_id"] for b in back] == [str(r["image_id"]) for r in records]
    for r, b in zip(records, back):
        image = r["image"] if "image" in r else load_image(r["path"])
        assert b["image"].dtype == np.uint8
        np.testing.assert_array_equal(b["image"], image)  # pixel-identical
        assert b["boxes"].dtype == np.float32 and b["boxes"].shape == r["boxes"].shape
        np.testing.assert_allclose(b["boxes"], r["boxes"], rtol=0, atol=BOX_TOL)
        np.testing.assert_array_equal(b["classes"], r["classes"])
        assert b["classes"].dtype == np.int32
        np.testing.assert_array_equal(
            b["difficult"], r.get("difficult", np.zeros(len(r["boxes"]), bool))
        )
        np.testing.assert_array_equal(
            b["iscrowd"], r.get("iscrowd", np.zeros(len(r["boxes"]), bool))
        )


def test_voc_to_tfrecord_matches_read_voc(voc_sample, tmp_path):
    records, names, report = read_voc(voc_sample, "trainval")
    assert report.degenerate == 1 and names == NAMES
    records[2]["difficult"] = np.arange(len(records[2]["boxes"])) % 2 == 0
    paths = write_tfrecords(records, names, tmp_path / "out" / "bccd")
    assert paths == [str(tmp_path / "out" / "bccd-00000-of-00001.tfrecord")]
    back, back_names = tfrecord_records(paths[0])
    assert back_names == names
    _assert_same(records, back)
    # the original JPEG bytes are stored
    raw = next(iter(tf.data.TFRecordDataset(paths)))
    feats = tf.train.Example.FromString(raw.numpy()).features.feature
    with open(records[0]["path"], "rb") as f:
        assert feats["image/encoded"].bytes_list.value[0] == f.read()


def test_od_api_keys_normalised_boxes_and_one_based_labels(tmp_path):
    image = np.random.RandomState(0).randint(0, 256, (40, 50, 3)).astype(np.uint8)
    record = {
        "image": image,
        "image_id": "im7",
        "boxes": np.array([[4, 5, 20, 25], [0, 0, 40, 50]], np.float32),
        "classes": np.array([2, 0], np.int32),
        "difficult": np.array([False, True]),
        "iscrowd": np.array([True, False]),
    }
    (path,) = write_tfrecords([record], ["a", "b", "c"], tmp_path / "x")
    raw = next(iter(tf.data.TFRecordDataset([path])))
    f = tf.train.Example.FromString(raw.numpy()).features.feature
    assert f["image/format"].bytes_list.value == [b"png"]
    assert f["image/source_id"].bytes_list.value == [b"im7"]
    assert f["image/filename"].bytes_list.value == [b"im7.png"]
    assert (f["image/height"].int64_list.value[0], f["image/width"].int64_list.value[0]) == (40, 50)
    np.testing.assert_allclose(f["image/object/bbox/ymin"].float_list.value, [0.1, 0.0], rtol=1e-7)
    np.testing.assert_allclose(f["image/object/bbox/xmin"].float_list.value, [0.1, 0.0], rtol=1e-7)
    np.testing.assert_allclose(f["image/object/bbox/ymax"].float_list.value, [0.5, 1.0], rtol=1e-7)
    np.testing.assert_allclose(f["image/object/bbox/xmax"].float_list.value, [0.5, 1.0], rtol=1e-7)
    assert list(f["image/object/class/label"].int64_list.value) == [3, 1]  # class id + 1
    assert list(f["image/object/class/text"].bytes_list.value) == [b"c", b"a"]
    assert list(f["image/object/difficult"].int64_list.value) == [0, 1]
    assert list(f["image/object/is_crowd"].int64_list.value) == [1, 0]
    ex = next(iter(read_tfrecords(str(tmp_path / "x-*.tfrecord"))))
    np.testing.assert_array_equal(ex["image"].numpy(), image)
    np.testing.assert_array_equal(ex["boxes"].numpy(), record["boxes"])
    np.testing.assert_array_equal(ex["classes"].numpy(), [2, 0])
    assert ex["image_id"].numpy() == b"im7"


def test_sharding_every_record_once_in_order_and_parallel_map(tmp_path):
    rng = np.random.RandomState(1)
    records = []
    for i in range(10):
        h, w = rng.randint(8, 30, size=2)
        n = i % 3
        records.append(
            {
                "image": rng.randint(0, 256, (h, w, 3)).astype(np.uint8),
                "image_id": f"r{i}",
                "boxes": np.tile(np.array([[1, 1, h - 1, w - 2]], np.float32), (n, 1)),
                "classes": np.full(n, i % 2, np.int32),
            }
        )
    paths = write_tfrecords(records, ["x", "y"], tmp_path / "s", num_shards=4)
    assert (
        paths
        == shard_paths(tmp_path / "s", 4)
        == [str(tmp_path / f"s-0000{i}-of-00004.tfrecord") for i in range(4)]
    )
    sizes = [sum(1 for _ in tf.data.TFRecordDataset([p])) for p in paths]
    assert sorted(sizes) == [2, 2, 3, 3] and sum(sizes) == 10
    back, names = tfrecord_records(str(tmp_path / "s-*-of-00004.tfrecord"))
    assert names == ["x", "y"]
    _assert_same(records, back)  # each exactly once, in the original order
    ds = read_tfrecords(paths, num_parallel_calls=2).map(
        lambda d: d["image_id"], num_parallel_calls=2
    )
    assert [v.numpy().decode() for v in ds] == [f"r{i}" for i in range(10)]
    # a rewrite with another shard count replaces the earlier shards of the prefix
    write_tfrecords(records, ["x", "y"], tmp_path / "s", num_shards=2)
    assert sorted(os.listdir(tmp_path)) == [
        "s-00000-of-00002.tfrecord",
        "s-00001-of-00002.tfrecord",
    ]


def test_interrupted_write_leaves_no_final_shard(tmp_path, monkeypatch):
    images = [np.full((10, 12, 3), i, np.uint8) for i in range(6)]
    records = [
        {
            "image": im,
            "image_id": str(i),
            "boxes": np.zeros((0, 4), np.float32),
            "classes": np.zeros(0, np.int32),
        }
        for i, im in enumerate(images)
    ]
    real = tfrecord_module.record_to_example
    calls = []

    def failing(record, class_names):
        calls.append(record["image_id"])
        if len(calls) == 5:  # in the third of four shards
            raise KeyboardInterrupt("killed")
        return real(record, class_names)

    monkeypatch.setattr(tfrecord_module, "record_to_example", failing)
    with pytest.raises(KeyboardInterrupt):
        write_tfrecords(records, ["a"], tmp_path / "out" / "t", num_shards=4)
    assert os.listdir(tmp_path / "out") == []  # no final shard, no temporary file

    # an earlier complete set with the same name survives an interrupted rewrite untouched
    monkeypatch.setattr(tfrecord_module, "record_to_example", real)
    first = write_tfrecords(records, ["a"], tmp_path / "out" / "t", num_shards=4)
    before = {p: open(p, "rb").read() for p in first}
    monkeypatch.setattr(tfrecord_module, "record_to_example", failing)
    calls.clear()
    with pytest.raises(KeyboardInterrupt):
        write_tfrecords(records[::-1], ["a"], tmp_path / "out" / "t", num_shards=4)
    assert sorted(os.listdir(tmp_path / "out")) == sorted(os.path.basename(p) for p in first)
    assert all(open(p, "rb").read() == data for p, data in before.items())


def test_exif_rotated_rgba_and_gray_images_are_stored_upright(tmp_path):
    rng = np.random.RandomState(2)
    stored = rng.randint(0, 256, (30, 40, 3)).astype(np.uint8)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    Image.fromarray(stored).save(tmp_path / "rot.jpg", exif=exif.tobytes(), quality=95)
    rgba = rng.randint(0, 256, (20, 24, 4)).astype(np.uint8)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "alpha.png")
    Image.fromarray(stored[..., 0], "L").save(tmp_path / "gray.jpg")
    records = [
        {
            "path": str(tmp_path / n),
            "image_id": n,
            "boxes": np.array([[1, 2, 11, 12]], np.float32),
            "classes": np.array([0], np.int32),
        }
        for n in ("rot.jpg", "alpha.png", "gray.jpg")
    ]
    paths = write_tfrecords(records, ["a"], tmp_path / "e")
    back, _ = tfrecord_records(paths)
    assert back[0]["image"].shape == (40, 30, 3)  # upright
    _assert_same(records, back)
    fmts = [
        tf.train.Example.FromString(r.numpy()).features.feature["image/format"].bytes_list.value[0]
        for r in tf.data.TFRecordDataset(paths)
    ]
    assert fmts == [b"png", b"png", b"jpeg"]  # re-encoded losslessly / original bytes


def test_bad_records_and_files_raise_clear_errors(tmp_path):
    good = {
        "image": np.zeros((10, 10, 3), np.uint8),
        "image_id": "g",
        "boxes": np.array([[1, 1, 5, 5]], np.float32),
        "classes": np.array([0], np.int32),
    }
    with pytest.raises(AnnotationError, match=r"record 'g'.*class id 3 not in 0..1"):
        write_tfrecords([dict(good, classes=np.array([3]))], ["a", "b"], tmp_path / "a")
    with pytest.raises(AnnotationError, match="record 'g'.*degenerate"):
        write_tfrecords(
            [dict(good, boxes=np.array([[1, 1, 1, 5]], np.float32))], ["a"], tmp_path / "a"
        )
    with pytest.raises(ImageReadError, match="gone.jpg"):
        write_tfrecords(
            [
                {
                    "path": str(tmp_path / "gone.jpg"),
                    "image_id": "x",
                    "boxes": np.zeros((0, 4)),
                    "classes": np.zeros(0),
                }
            ],
            ["a"],
            tmp_path / "a",
        )
    with pytest.raises(ValueError, match="empty"):
        write_tfrecords([], ["a"], tmp_path / "a")
    with pytest.raises(ValueError, match="num_shards"):
        write_tfrecords([good], ["a"], tmp_path / "a", num_shards=0)
    assert os.listdir(tmp_path) == []
    with pytest.raises(FileNotFoundError, match="no TFRecord files match"):
        read_tfrecords(str(tmp_path / "none-*.tfrecord"))
    with pytest.raises(FileNotFoundError, match="missing.tfrecord"):
        tfrecord_records([str(tmp_path / "missing.tfrecord")])


def test_convert_voc_and_coco(voc_sample, tmp_path):
    paths, names, report = convert_to_tfrecord(
        "voc", voc_sample, str(tmp_path / "v"), 2, split="trainval"
    )
    assert len(paths) == 2 and names == NAMES and report.images == 6 and report.degenerate == 1
    records, _, _ = read_voc(voc_sample, "trainval")
    _assert_same(records, tfrecord_records(paths)[0])

    img_dir = os.path.join(voc_sample, "JPEGImages")
    records[0]["iscrowd"] = np.arange(len(records[0]["boxes"])) == 0
    json_path = write_coco(records, names, tmp_path / "c.json", image_dir=img_dir)
    paths, names, report = convert_to_tfrecord(
        "coco", json_path, str(tmp_path / "c"), 3, image_dir=img_dir
    )
    assert len(paths) == 3 and names == NAMES and report.images == 6
    coco_records, _, _ = read_coco(json_path, img_dir)
    back, _ = tfrecord_records(paths)
    _assert_same(coco_records, back)
    assert back[0]["iscrowd"][0] and not back[0]["iscrowd"][1:].any()
    with pytest.raises(ValueError, match="image_dir is required"):
        convert_to_tfrecord("coco", json_path, str(tmp_path / "c"), 1)
    with pytest.raises(ValueError, match="split is for VOC"):
        convert_to_tfrecord(
            "coco", json_path, str(tmp_path / "c"), 1, split="val", image_dir=img_dir
        )
    with pytest.raises(ValueError, match="source_format must be one of"):
        convert_to_tfrecord("yolo", voc_sample, str(tmp_path / "y"), 1)


def test_bccd_test_split_round_trip(tmp_path):
    root = _bccd()
    records, names, _ = read_voc(root, "test")
    assert len(records) == 72
    paths = write_tfrecords(records, names, tmp_path / "bccd-test", num_shards=4)
    back, back_names = tfrecord_records(str(tmp_path / "bccd-test-*.tfrecord"))
    assert back_names == names == NAMES
    _assert_same(records, back)
