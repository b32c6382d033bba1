"""make_dataset / resize_image_and_boxes: values of the resize, seeded flips that move the boxes with
the pixels, mixed sizes, record sources (list, callable, generator, files), batching defaults.

(tests/data/test_make_dataset.py covers pad_to shapes, -1 padding, truncation and bad input.)
"""

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from tfrcnn.data.pipeline import compute_scale, make_dataset, resize_image_and_boxes
from tfrcnn.data.synthetic import make_synthetic_records


def _record(h, w, boxes, classes, image_id, value=50):
    return {
        "image": np.full((h, w, 3), value, np.uint8),
        "boxes": np.array(boxes, np.float32).reshape(-1, 4),
        "classes": np.array(classes, np.int32),
        "image_id": image_id,
    }


def test_compute_scale_numbers_and_tensors():
    # shorter side 480 -> 600 (x1.25); longer 640 -> 800 <= 1000
    assert compute_scale(480, 640, 600, 1000) == pytest.approx(1.25)
    # 500 x 2000: shorter side wants x1.2, but the longer would be 2400 > 1000: x0.5
    assert compute_scale(500, 2000, 600, 1000) == pytest.approx(0.5)
    t = compute_scale(tf.constant(500), tf.constant(2000), 600, 1000)
    assert t.dtype == tf.float32 and float(t) == pytest.approx(0.5)


def test_resize_image_and_boxes_values():
    # a horizontal ramp 0, 10, 20, ... upscaled x2 with half-pixel bilinear sampling
    image = tf.tile(
        tf.reshape(tf.constant(np.arange(0, 80, 10, dtype=np.uint8)), [1, 8, 1]), [4, 1, 3]
    )
    boxes = tf.constant([[1.0, 2.0, 3.0, 6.0]])
    resized, out_boxes, scale, size = resize_image_and_boxes(image, boxes, 8, 100)
    assert float(scale) == pytest.approx(2.0)
    np.testing.assert_array_equal(size.numpy(), [8, 16])
    assert resized.shape == (8, 16, 3) and resized.dtype == tf.float32
    np.testing.assert_allclose(out_boxes.numpy(), [[2, 4, 6, 12]])
    # output column j samples input x = (j + 0.5) / 2 - 0.5: columns 1..14 interpolate linearly
    row = resized[3, :, 0].numpy()
    np.testing.assert_allclose(row[1:15], 10 * ((np.arange(1, 15) + 0.5) / 2 - 0.5), atol=1e-3)
    # downscaling (antialiased) keeps a flat image flat and scales the boxes by the same factor
    flat = tf.fill([300, 200, 3], tf.constant(77, tf.uint8))
    small, small_boxes, scale, size = resize_image_and_boxes(
        flat, [[30.0, 20.0, 90.0, 100.0]], 50, 60
    )
    assert float(scale) == pytest.approx(0.2)
    np.testing.assert_array_equal(size.numpy(), [60, 40])
    np.testing.assert_allclose(small.numpy(), 77.0, atol=1e-3)
    np.testing.assert_allclose(small_boxes.numpy(), [[6, 4, 18, 20]], rtol=1e-6)


def _marked_record(image_id="marked"):
    """A 60x100 image whose box [10, 20, 30, 40] has a red top-left and a green bottom-right pixel."""
    image = np.full((60, 100, 3), 50, np.uint8)
    image[10, 20] = (255, 50, 50)
    image[29, 39] = (50, 255, 50)
    return {
        "image": image,
        "boxes": np.array([[10, 20, 30, 40]], np.float32),
        "classes": np.array([2], np.int32),
        "image_id": image_id,
    }


def _flip_pattern(batch):
    """Check that the marked pixels sit at the box corners; return which images were flipped."""
    flipped = []
    for i in range(batch["images"].shape[0]):
        image = batch["images"][i].numpy()
        box = batch["gt_boxes"][i, 0].numpy()
        red = np.unravel_index(np.argmax(image[..., 0] - image[..., 1]), image.shape[:2])
        green = np.unravel_index(np.argmax(image[..., 1] - image[..., 0]), image.shape[:2])
        if box[1] == 20:  # not flipped
            np.testing.assert_array_equal(box, [10, 20, 30, 40])
            assert red == (10, 20) and green == (29, 39)
            flipped.append(False)
        else:  # flipped inside the valid width 100 (not the padded 128): x -> 100 - x
            np.testing.assert_array_equal(box, [10, 60, 30, 80])
            assert red == (10, 79) and green == (29, 60)
            flipped.append(True)
        assert np.all(image[:, 100:] == 0) and np.all(image[60:] == 0)
    return flipped


def test_flip_moves_box_corners_with_the_pixels_and_is_seeded():
    records = [_marked_record(f"m{i}") for i in range(8)]

    def make():
        return make_dataset(
            records,
            batch_size=8,
            min_side=60,
            max_side=100,
            pad_to=(64, 128),
            training=True,
            seed=3,
        )

    ds = make()
    epoch1 = next(iter(ds))
    epoch2 = next(iter(ds))
    first = _flip_pattern(epoch1)
    assert 0 < sum(first) < 8
    assert _flip_pattern(epoch2) != first  # redrawn each pass over the data
    again = next(iter(make()))
    assert _flip_pattern(again) == first  # the same seed gives the same batches
    assert [i.decode() for i in again["image_id"].numpy()] == [
        i.decode() for i in epoch1["image_id"].numpy()
    ]
    # evaluation does not flip (or shuffle)
    plain = next(
        iter(make_dataset(records, batch_size=8, min_side=60, max_side=100, pad_to=(64, 128)))
    )
    assert not any(_flip_pattern(plain))
    assert [i.decode() for i in plain["image_id"].numpy()] == [f"m{i}" for i in range(8)]


def test_mixed_sizes_dynamic_padding_and_box_scaling():
    records = make_synthetic_records(5, seed=4, empty_fraction=0.0)
    ds = make_dataset(
        records, batch_size=3, min_side=100, max_side=133, size_divisor=32, max_boxes=10
    )
    batches = list(ds)
    assert [b["images"].shape[0] for b in batches] == [3, 2]  # no drop_remainder outside training
    k = 0
    for batch in batches:
        hp, wp = batch["images"].shape[1:3]
        shapes = batch["image_shape"].numpy()
        assert hp % 32 == 0 and wp % 32 == 0
        assert hp == -(-shapes[:, 0].max() // 32) * 32 and wp == -(-shapes[:, 1].max() // 32) * 32
        for i in range(batch["images"].shape[0]):
            r = records[k]
            k += 1
            h, w = r["image"].shape[:2]
            scale = batch["image_scale"][i].numpy()
            assert scale == pytest.approx(min(100 / min(h, w), 133 / max(h, w)), rel=1e-6)
            np.testing.assert_array_equal(batch["original_shape"][i].numpy(), [h, w])
            np.testing.assert_array_equal(shapes[i], [round(h * scale), round(w * scale)])
            n = len(r["boxes"])
            np.testing.assert_allclose(
                batch["gt_boxes"][i, :n].numpy(), r["boxes"] * scale, rtol=1e-5
            )
            np.testing.assert_array_equal(batch["gt_classes"][i, :n].numpy(), r["classes"])
            assert np.all(batch["gt_boxes"][i, n:].numpy() == -1)
            assert np.all(batch["gt_classes"][i, n:].numpy() == -1)
            assert not batch["gt_difficult"][i].numpy().any()
            image = batch["images"][i].numpy()
            assert np.all(image[shapes[i][0] :] == 0) and np.all(image[:, shapes[i][1] :] == 0)
            # the valid region is the resized picture: compare means with the original
            valid = image[: shapes[i][0], : shapes[i][1]]
            np.testing.assert_allclose(valid.mean((0, 1)), r["image"].mean((0, 1)), atol=2.0)
            assert batch["image_id"][i].numpy().decode() == r["image_id"]


def test_training_defaults_drop_remainder_static_shapes_and_no_repeat():
    records = [_record(40, 40, [[1, 1, 9, 9]], [0], f"r{i}") for i in range(5)]
    ds = make_dataset(
        records,
        batch_size=2,
        min_side=40,
        max_side=40,
        pad_to=(64, 64),
        max_boxes=3,
        training=True,
        seed=0,
    )
    spec = ds.element_spec
    assert spec["images"].shape == (2, 64, 64, 3) and spec["images"].dtype == tf.float32
    assert spec["gt_boxes"].shape == (2, 3, 4) and spec["gt_classes"].dtype == tf.int32
    assert spec["gt_difficult"].dtype == tf.bool and spec["image_id"].dtype == tf.string
    assert spec["image_shape"].dtype == tf.int32 and spec["image_scale"].dtype == tf.float32
    ids = [i.decode() for b in ds for i in b["image_id"].numpy()]
    assert len(ids) == 4 and len(set(ids)) == 4  # 2 full batches, then the dataset ends
    assert (
        len(
            list(
                make_dataset(
                    records,
                    batch_size=2,
                    min_side=40,
                    max_side=40,
                    training=True,
                    drop_remainder=False,
                )
            )
        )
        == 3
    )


def test_record_sources_list_callable_generator_and_files(tmp_path):
    records = make_synthetic_records(4, seed=9)
    expected = next(iter(make_dataset(records, batch_size=4, min_side=128, max_side=192)))

    def from_callable():
        yield from records

    gen = (r for r in records)
    lazy = []
    for i, r in enumerate(records):
        if i % 2:  # a mix of in-memory and file records
            lazy.append(r)
            continue
        path = tmp_path / f"{r['image_id']}.png"
        Image.fromarray(r["image"]).save(path)
        lazy.append(
            {
                "path": str(path),
                "boxes": r["boxes"],
                "classes": r["classes"],
                "image_id": r["image_id"],
            }
        )
    for source in (from_callable, gen, lazy):
        batch = next(iter(make_dataset(source, batch_size=4, min_side=128, max_side=192)))
        for key in ("images", "gt_boxes", "gt_classes", "image_shape", "image_scale", "image_id"):
            np.testing.assert_array_equal(batch[key].numpy(), expected[key].numpy())


def test_grayscale_file_becomes_rgb(tmp_path):
    path = tmp_path / "gray.png"
    Image.fromarray(np.full((30, 40), 90, np.uint8)).save(path)
    record = {
        "path": str(path),
        "boxes": np.array([[0, 0, 10, 10]], np.float32),
        "classes": np.array([0], np.int32),
        "image_id": "gray",
    }
    batch = next(iter(make_dataset([record], batch_size=1, min_side=30, max_side=40)))
    assert batch["images"].shape == (1, 32, 64, 3)
    np.testing.assert_allclose(batch["images"][0, :30, :40].numpy(), 90.0, atol=1e-3)


def test_missing_file_names_the_path(tmp_path):
    record = {
        "path": str(tmp_path / "nowhere.jpg"),
        "boxes": np.zeros((0, 4), np.float32),
        "classes": np.zeros((0,), np.int32),
        "image_id": "missing",
    }
    with pytest.raises(Exception, match="nowhere.jpg"):
        next(iter(make_dataset([record], batch_size=1, min_side=32, max_side=32)))
