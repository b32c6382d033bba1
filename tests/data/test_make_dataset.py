"""The tf.data pipeline: shapes, padding, scale, flips, mixed sizes, lazy files, bad input."""

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from tfrcnn.data import compute_scale, make_dataset, make_synthetic_records


def _record(h, w, boxes, classes, image_id, value=100):
    image = np.full((h, w, 3), value, np.uint8)
    return {
        "image": image,
        "boxes": np.array(boxes, np.float32).reshape(-1, 4),
        "classes": np.array(classes, np.int32),
        "image_id": image_id,
    }


def test_shapes_padding_and_scale():
    records = [_record(120, 160, [[10, 20, 50, 80]], [1], "a"), _record(100, 100, [], [], "empty")]
    ds = make_dataset(
        records, batch_size=2, min_side=240, max_side=400, pad_to=(256, 320), max_boxes=4
    )
    batch = next(iter(ds))
    assert batch["images"].shape == (2, 256, 320, 3) and batch["images"].dtype == tf.float32
    np.testing.assert_array_equal(batch["image_shape"].numpy(), [[240, 320], [240, 240]])
    np.testing.assert_allclose(batch["image_scale"].numpy(), [2.0, 2.4])
    np.testing.assert_array_equal(batch["original_shape"].numpy(), [[120, 160], [100, 100]])
    np.testing.assert_allclose(batch["gt_boxes"][0, 0].numpy(), [20, 40, 100, 160])
    assert np.all(batch["gt_boxes"][0, 1:].numpy() == -1) and np.all(
        batch["gt_boxes"][1].numpy() == -1
    )
    np.testing.assert_array_equal(batch["gt_classes"].numpy(), [[1, -1, -1, -1], [-1] * 4])
    # padding is zero, the valid region holds the (resized) pixels
    assert np.all(batch["images"][0, 240:].numpy() == 0) and np.all(
        batch["images"][1, :, 240:].numpy() == 0
    )
    np.testing.assert_allclose(batch["images"][0, :240, :320].numpy(), 100.0, atol=1e-3)
    assert [i.decode() for i in batch["image_id"].numpy()] == ["a", "empty"]


def test_dynamic_padding_rounds_to_the_divisor_and_mixes_sizes():
    records = [_record(50, 70, [[1, 1, 5, 5]], [0], "s"), _record(90, 60, [[1, 1, 5, 5]], [0], "t")]
    ds = make_dataset(records, batch_size=2, min_side=50, max_side=1000, size_divisor=32)
    batch = next(iter(ds))
    # 50x70 -> 50x70; 90x60 -> 75x50: padded to 75x70 rounded up to 96x96
    assert batch["images"].shape == (2, 96, 96, 3)
    np.testing.assert_array_equal(batch["image_shape"].numpy(), [[50, 70], [75, 50]])


def test_flip_moves_boxes_with_the_pixels():
    image = np.zeros((100, 200, 3), np.uint8)
    image[10:30, 20:60] = 255
    record = {
        "image": image,
        "boxes": np.array([[10, 20, 30, 60]], np.float32),
        "classes": np.array([0], np.int32),
        "image_id": "m",
    }
    seen_flipped = False
    ds = make_dataset(
        [record] * 8,
        batch_size=8,
        min_side=100,
        max_side=200,
        pad_to=(100, 256),
        training=True,
        seed=1,
    )
    batch = next(iter(ds))
    for i in range(8):
        box = batch["gt_boxes"][i, 0].numpy().astype(int)
        pixels = batch["images"][i].numpy()[..., 0]
        inside = pixels[box[0] : box[2], box[1] : box[3]]
        assert inside.min() > 200 and pixels.sum() == pytest.approx(inside.sum(), rel=1e-3)
        seen_flipped |= box[1] == 140
    assert seen_flipped


def test_max_boxes_truncates_with_a_warning(caplog):
    record = _record(64, 64, [[i, i, i + 5, i + 5] for i in range(6)], [0] * 6, "crowded")
    with caplog.at_level("WARNING", logger="tfrcnn.data"):
        batch = next(
            iter(make_dataset([record], batch_size=1, min_side=64, max_side=64, max_boxes=4))
        )
    assert batch["gt_boxes"].shape == (1, 4, 4)
    assert np.all(batch["gt_classes"].numpy() == 0)
    assert any("crowded" in r.getMessage() for r in caplog.records)


def test_lazy_records_from_files(tmp_path):
    records = make_synthetic_records(3, seed=2)
    lazy = []
    for r in records:
        path = tmp_path / f"{r['image_id']}.png"
        Image.fromarray(r["image"]).save(path)
        lazy.append({k: v for k, v in r.items() if k != "image"} | {"path": str(path)})
    eager = list(make_dataset(records, batch_size=3, min_side=160, max_side=192, pad_to=(192, 192)))
    from_files = list(
        make_dataset(lazy, batch_size=3, min_side=160, max_side=192, pad_to=(192, 192))
    )
    for key in ("images", "gt_boxes", "gt_classes", "image_shape"):
        np.testing.assert_array_equal(eager[0][key].numpy(), from_files[0][key].numpy())


def test_bad_input_is_reported():
    with pytest.raises(ValueError, match="empty"):
        make_dataset([], batch_size=1)
    bad = {
        "image": np.zeros((10, 10, 3), np.uint8),
        "boxes": np.zeros((2, 4), np.float32),
        "classes": np.zeros((1,), np.int32),
        "image_id": "mismatch",
    }
    with pytest.raises(ValueError, match="mismatch"):
        make_dataset([bad])
    big = _record(300, 300, [[1, 1, 5, 5]], [0], "too-big")
    ds = make_dataset([big], batch_size=1, min_side=300, max_side=300, pad_to=(128, 128))
    with pytest.raises(tf.errors.InvalidArgumentError, match="too-big"):
        next(iter(ds))


def test_compute_scale():
    assert compute_scale(480, 640, 600, 1000) == pytest.approx(1.25)
    assert compute_scale(4000, 1000, 600, 1000) == pytest.approx(0.25)


def test_external_proposals_are_padded_and_flip_with_the_image():
    image = np.zeros((100, 200, 3), np.uint8)
    image[10:30, 20:60] = 255
    record = {
        "image": image,
        "boxes": np.array([[10, 20, 30, 60]], np.float32),
        "classes": np.array([0], np.int32),
        "image_id": "p",
        "proposals": np.array([[10, 20, 30, 60], [0, 0, 50, 50]], np.float32),
    }
    ds = make_dataset(
        [record] * 8,
        batch_size=8,
        min_side=200,
        max_side=400,
        pad_to=(200, 400),
        training=True,
        seed=3,
        num_proposals=4,
    )
    batch = next(iter(ds))
    assert batch["proposals"].shape == (8, 4, 4)
    flipped = 0
    for i in range(8):
        props = batch["proposals"][i].numpy()
        gt = batch["gt_boxes"][i, 0].numpy() / batch["image_scale"][i].numpy()
        # the first proposal is the object: it stays on the (possibly flipped) object, in
        # original-image pixels
        np.testing.assert_allclose(props[0], gt, atol=1e-3)
        assert np.all(props[2:] == 0)
        flipped += gt[1] == pytest.approx(140.0)
    assert 0 < flipped < 8
    with pytest.raises(ValueError, match="crop"):
        make_dataset([record], num_proposals=4, training=True, augment={"crop": True})


def test_voc_to_tfrecord_to_pipeline_matches_reading_voc(tmp_path):
    import shutil

    from conftest import bccd_path

    from tfrcnn.data import convert_to_tfrecord, read_voc, tfrecord_records

    root = bccd_path()
    if not __import__("os").path.isdir(root):
        pytest.fail(f"BCCD dataset not found at {root}")
    small = tmp_path / "voc"
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (small / sub).mkdir(parents=True)
    ids = ["BloodImage_00000", "BloodImage_00001", "BloodImage_00002"]
    for i in ids:
        shutil.copy(f"{root}/Annotations/{i}.xml", small / "Annotations")
        shutil.copy(f"{root}/JPEGImages/{i}.jpg", small / "JPEGImages")
    (small / "ImageSets/Main/trainval.txt").write_text("\n".join(ids) + "\n")
    direct, names, _ = read_voc(str(small), "trainval")
    paths, tf_names, _ = convert_to_tfrecord(
        "voc", str(small), str(tmp_path / "rec"), num_shards=2, split="trainval"
    )
    via, via_names = tfrecord_records(paths)
    assert list(via_names) == list(names)
    common = dict(batch_size=3, min_side=240, max_side=320, pad_to=(240, 320), max_boxes=40)
    a = next(iter(make_dataset(direct, **common)))
    b = next(iter(make_dataset(via, **common)))
    np.testing.assert_array_equal(a["images"].numpy(), b["images"].numpy())
    np.testing.assert_allclose(a["gt_boxes"].numpy(), b["gt_boxes"].numpy(), atol=1e-3)
    np.testing.assert_array_equal(a["gt_classes"].numpy(), b["gt_classes"].numpy())
