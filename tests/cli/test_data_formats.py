"""Every data format on the command line: VOC -> COCO JSON and TFRecords with ``tfrcnn convert``,
read back by ``train`` / ``evaluate`` with the same images, boxes and classes; formats recognised
from the path alone."""

import json
import os

import numpy as np
import pytest
from cli_helpers import QUICK

from tfrcnn.cli import main
from tfrcnn.data.sources import SourceError, detect_format, read_source
from tfrcnn.training.run import load_data, resolve_settings


def _by_id(records):
    return {str(r["image_id"]): (np.asarray(r["boxes"]), np.asarray(r["classes"])) for r in records}


@pytest.fixture(scope="module")
def converted(shapes_voc, tmp_path_factory):
    """The VOC folder converted by the CLI to COCO JSON (both splits), TFRecords (both splits) and
    TFRecords -> COCO JSON (images written out)."""
    root, _ = shapes_voc
    out = tmp_path_factory.mktemp("converted")
    for split in ("trainval", "test"):
        assert (
            main(
                [
                    "convert",
                    "--source",
                    root,
                    "--split",
                    split,
                    "--to",
                    "coco",
                    "--output",
                    str(out / f"{split}.json"),
                ]
            )
            == 0
        )
        assert (
            main(
                [
                    "convert",
                    "--source",
                    root,
                    "--split",
                    split,
                    "--output",
                    str(out / split),
                    "--shards",
                    "2",
                ]
            )
            == 0
        )
    assert (
        main(
            [
                "convert",
                "--source",
                str(out / "trainval-*.tfrecord"),
                "--to",
                "coco",
                "--output",
                str(out / "from_tfrecord.json"),
            ]
        )
        == 0
    )
    return root, out


def test_convert_writes_each_format(converted):
    _, out = converted
    assert sorted(os.listdir(out)) == [
        "from_tfrecord.json",
        "from_tfrecord_images",
        "test-00000-of-00002.tfrecord",
        "test-00001-of-00002.tfrecord",
        "test.json",
        "trainval-00000-of-00002.tfrecord",
        "trainval-00001-of-00002.tfrecord",
        "trainval.json",
    ]
    data = json.load(open(out / "trainval.json"))
    assert [c["name"] for c in data["categories"]] == ["ellipse", "rectangle", "triangle"]
    assert len(data["images"]) == 10 and len(os.listdir(out / "from_tfrecord_images")) == 10


def test_every_format_gives_the_voc_boxes(shapes_voc, converted):
    root, expected = shapes_voc
    _, out = converted
    voc_train, voc_val, voc_names = load_data(resolve_settings({"data": "voc", "data_path": root}))
    # the reader gives back exactly the integer boxes written (1-based inclusive -> continuous)
    for image_id, (boxes, classes) in _by_id(voc_train + voc_val).items():
        np.testing.assert_array_equal(boxes, expected[image_id][0])
        assert [voc_names[c] for c in classes] == expected[image_id][1]
    jpeg_dir = os.path.join(root, "JPEGImages")
    runs = {
        "coco": {
            "data": "coco",
            "data_path": str(out / "trainval.json"),
            "image_dir": jpeg_dir,
            "val_data_path": str(out / "test.json"),
        },
        "tfrecord": {
            "data": "tfrecord",
            "data_path": str(out / "trainval-*.tfrecord"),
            "val_data_path": str(out / "test-*.tfrecord"),
        },
    }
    for kind, settings in runs.items():
        train, val, names = load_data(resolve_settings(settings))
        assert names == voc_names, kind
        assert len(train) == len(voc_train) and len(val) == len(voc_val), kind
        assert sum(len(r["boxes"]) for r in train) == sum(len(r["boxes"]) for r in voc_train)
        got, want = _by_id(train + val), _by_id(voc_train + voc_val)
        assert got.keys() == want.keys(), kind
        for image_id in want:
            np.testing.assert_allclose(got[image_id][0], want[image_id][0], atol=1e-3)
            np.testing.assert_array_equal(got[image_id][1], want[image_id][1])
    # TFRecords -> COCO: the images are written beside the JSON and found without --image-dir
    records, names, _ = read_source(None, str(out / "from_tfrecord.json"))
    assert names == voc_names
    got = _by_id(records)
    for image_id, (boxes, classes) in _by_id(voc_train).items():
        np.testing.assert_allclose(got[image_id][0], boxes, atol=1e-3)
        np.testing.assert_array_equal(got[image_id][1], classes)


def test_pixels_are_the_same_in_every_format(shapes_voc, converted):
    from tfrcnn.data import make_dataset

    root, _ = shapes_voc
    _, out = converted
    batches = []
    for kind, path in (
        ("voc", root),
        ("tfrecord", str(out / "trainval-*.tfrecord")),
        ("coco", str(out / "from_tfrecord.json")),
    ):
        records, _, _ = read_source(kind, path)
        records = sorted(records, key=lambda r: str(r["image_id"]))
        ds = make_dataset(records, batch_size=10, min_side=160, max_side=192)
        batches.append(next(iter(ds)))
    for other in batches[1:]:
        np.testing.assert_array_equal(other["images"].numpy(), batches[0]["images"].numpy())
        np.testing.assert_allclose(
            other["gt_boxes"].numpy(), batches[0]["gt_boxes"].numpy(), atol=1e-3
        )


def test_detect_format(shapes_voc, converted, tmp_path):
    root, _ = shapes_voc
    _, out = converted
    assert detect_format(root) == "voc"
    assert detect_format(str(out / "test.json")) == "coco"
    assert detect_format(str(out / "test-*.tfrecord")) == "tfrecord"
    assert detect_format(str(out / "test-00000-of-00002.tfrecord")) == "tfrecord"
    junk = tmp_path / "notes.txt"
    junk.write_text("not data")
    for path, message in (
        (str(junk), "neither a COCO JSON file nor a TFRecord"),
        (str(tmp_path), "folder without Annotations/"),
        (str(tmp_path / "none-*.tfrecord"), "no files match"),
        (str(tmp_path / "missing"), "data path not found"),
    ):
        with pytest.raises(SourceError, match=message):
            detect_format(path)


def test_train_and_evaluate_read_tfrecords_and_coco_from_the_path_alone(
    converted, tmp_path, capsys
):
    root, out = converted
    run = str(tmp_path / "run")
    # no --data: the pattern is recognised as TFRecords
    assert (
        main(
            [
                "train",
                "--run-dir",
                run,
                "--data-path",
                str(out / "trainval-*.tfrecord"),
                "--val-data-path",
                str(out / "test-*.tfrecord"),
            ]
            + QUICK
        )
        == 0
    )
    config = json.load(open(os.path.join(run, "config.json")))
    assert config["run"]["data"] == "tfrecord"
    assert config["model"]["class_names"] == ["ellipse", "rectangle", "triangle"]
    capsys.readouterr()
    model = os.path.join(run, "model.keras")
    assert (
        main(
            [
                "evaluate",
                model,
                "--data-path",
                str(out / "test.json"),
                "--image-dir",
                os.path.join(root, "JPEGImages"),
            ]
        )
        == 0
    )
    coco_out = capsys.readouterr().out
    assert (
        main(["evaluate", model, "--data", "tfrecord", "--data-path", str(out / "test-*.tfrecord")])
        == 0
    )
    tf_out = capsys.readouterr().out
    assert main(["evaluate", model, "--data", "voc", "--data-path", root]) == 0
    voc_out = capsys.readouterr().out
    lines = [o.splitlines() for o in (coco_out, tf_out, voc_out)]
    # the same 4 test images and the same scores in every format (the first line has the timing)
    assert lines[0][0].startswith("4 images")
    assert lines[0][1:] == lines[1][1:] == lines[2][1:]


def test_bccd_through_coco_and_tfrecord_has_the_voc_counts(tmp_path):
    """The acceptance check on the shared BCCD set: converted with the project's own command,
    COCO and TFRecords give the training images and boxes that ``--data voc`` gives."""
    from tests.conftest import bccd_path

    bccd = bccd_path()
    assert os.path.isdir(bccd), f"the BCCD data set is expected at {bccd} (TFRCNN_BCCD)"
    for split in ("trainval", "test"):
        assert (
            main(
                [
                    "convert",
                    "--source",
                    bccd,
                    "--split",
                    split,
                    "--to",
                    "coco",
                    "--output",
                    str(tmp_path / f"{split}.json"),
                ]
            )
            == 0
        )
        assert (
            main(["convert", "--source", bccd, "--split", split, "--output", str(tmp_path / split)])
            == 0
        )
    voc = load_data(resolve_settings({"data": "voc", "data_path": bccd}))
    coco = load_data(
        resolve_settings(
            {
                "data": "coco",
                "data_path": str(tmp_path / "trainval.json"),
                "image_dir": os.path.join(bccd, "JPEGImages"),
                "val_data_path": str(tmp_path / "test.json"),
            }
        )
    )
    tfrecord = load_data(
        resolve_settings(
            {
                "data": "tfrecord",
                "data_path": str(tmp_path / "trainval-*.tfrecord"),
                "val_data_path": str(tmp_path / "test-*.tfrecord"),
            }
        )
    )
    counts = [
        (
            len(train),
            sum(len(r["boxes"]) for r in train),
            len(val),
            sum(len(r["boxes"]) for r in val),
            names,
        )
        for train, val, names in (voc, coco, tfrecord)
    ]
    assert counts[0] == counts[1] == counts[2]
    assert counts[0][4] == ["Platelets", "RBC", "WBC"]


def test_without_validation_data_a_seeded_tenth_is_held_out(converted):
    _, out = converted
    settings = {"data": "tfrecord", "data_path": str(out / "trainval-*.tfrecord"), "seed": 5}
    train, val, _ = load_data(resolve_settings(settings))
    again_train, again_val, _ = load_data(resolve_settings(settings))
    assert (len(train), len(val)) == (9, 1)
    assert [r["image_id"] for r in val] == [r["image_id"] for r in again_val]
    ids = [r["image_id"] for r in train + val]
    assert len(set(ids)) == 10
    half = load_data(resolve_settings({**settings, "val_fraction": 0.5}))
    assert (len(half[0]), len(half[1])) == (5, 5)
    with pytest.raises(ValueError, match="val_fraction must be between 0 and 1"):
        load_data(resolve_settings({**settings, "val_fraction": 1.5}))
