"""A torchvision ``fasterrcnn_mobilenet_v3_large_fpn`` trained in the test on a Pascal VOC folder
the test makes, imported with ``tfrcnn import-weights`` (its class names and image sizes given):
``model.predict`` on the raw uint8 held-out images gives torchvision's detections, and both
detection sets score the same VOC mAP@0.5 with tfrcnn's metric code.

The training (tests/weights/torchvision_train.py, torch only) runs in a subprocess; this process
writes the data, imports the checkpoint and runs the converted model (TensorFlow only).
"""

import contextlib
import io
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
from PIL import Image

from tfrcnn.cli import main
from tfrcnn.data.synthetic import SYNTHETIC_CLASS_NAMES, TRIANGLE, synthetic_splits
from tfrcnn.data.voc import read_voc
from tfrcnn.evaluation.voc import evaluate_detections

from .test_parity_stages import assert_same_detections

pytestmark = pytest.mark.slow

HARNESS = os.path.join(os.path.dirname(__file__), "torchvision_train.py")

# Two classes of the synthetic shapes on flat backgrounds; images of 64..96 pixels a side, which
# torchvision (and the imported model) resize to a shorter side of 256 (longer side at most 320),
# so the objects (16 pixels to half the image) cover several cells of the stride-32 feature map.
CLASS_NAMES = ("rectangle", "ellipse")
NUM_TRAIN, NUM_HELD_OUT = 200, 32
IMAGE_SIDES = (64, 96)
MIN_SIDE, MAX_SIDE = 256, 320
TRAIN_STEPS, FROZEN_BN_STEPS, BATCH_SIZE, LEARNING_RATE, SEED = 300, 150, 2, 1e-3, 0
MIN_MAP = 0.5  # the trained torchvision model's held-out mAP@0.5 is at least this


def _records(records, count, what):
    """The first ``count`` records without a triangle, with their class ids renumbered into
    ``CLASS_NAMES``."""
    kept = [r for r in records if not np.any(r["classes"] == TRIANGLE)][:count]
    assert len(kept) == count, f"only {len(kept)} {what} images without a triangle"
    for r in kept:
        names = [SYNTHETIC_CLASS_NAMES[c] for c in r["classes"]]
        r["classes"] = np.array([CLASS_NAMES.index(n) for n in names], np.int32)
    return kept


def write_voc(root, splits):
    """Writes ``{split: records}`` as a VOC folder: PNG images (lossless, so both frameworks read
    the same pixels), boxes as 1-based inclusive corners (the records' boxes are whole pixels)."""
    for sub in ("Annotations", os.path.join("ImageSets", "Main"), "JPEGImages"):
        os.makedirs(os.path.join(root, sub), exist_ok=True)
    for split, records in splits.items():
        for r in records:
            image_id = r["image_id"]
            height, width = r["image"].shape[:2]
            Image.fromarray(r["image"]).save(os.path.join(root, "JPEGImages", image_id + ".png"))
            objects = "".join(
                f"<object><name>{CLASS_NAMES[c]}</name><difficult>0</difficult><bndbox>"
                f"<xmin>{x1 + 1}</xmin><ymin>{y1 + 1}</ymin><xmax>{x2}</xmax><ymax>{y2}</ymax>"
                "</bndbox></object>"
                for (y1, x1, y2, x2), c in zip(r["boxes"].astype(int).tolist(), r["classes"])
            )
            with open(os.path.join(root, "Annotations", image_id + ".xml"), "w") as f:
                f.write(
                    f"<annotation><filename>{image_id}.png</filename><size><width>{width}"
                    f"</width><height>{height}</height><depth>3</depth></size>{objects}"
                    "</annotation>"
                )
        with open(os.path.join(root, "ImageSets", "Main", split + ".txt"), "w") as f:
            f.write("".join(r["image_id"] + "\n" for r in records))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """The VOC folder, torchvision's checkpoint trained on its ``train`` split, and torchvision's
    detections on its ``val`` split (``detections.npz`` of the harness)."""
    train, held_out = synthetic_splits(
        num_train=3 * NUM_TRAIN,
        num_val=3 * NUM_HELD_OUT,
        seed=SEED,
        min_size=IMAGE_SIDES[0],
        max_size=IMAGE_SIDES[1],
        empty_fraction=0.0,
        max_objects=3,
        backgrounds=("plain",),
    )
    root = tmp_path_factory.mktemp("shapes_voc")
    write_voc(
        str(root),
        {
            "train": _records(train, NUM_TRAIN, "training"),
            "val": _records(held_out, NUM_HELD_OUT, "held-out"),
        },
    )
    out = tmp_path_factory.mktemp("torchvision_trained")
    command = [
        sys.executable,
        HARNESS,
        str(root),
        str(out),
        "--classes",
        ",".join(CLASS_NAMES),
        "--min-size",
        str(MIN_SIDE),
        "--max-size",
        str(MAX_SIDE),
        "--steps",
        str(TRAIN_STEPS),
        "--frozen-bn-steps",
        str(FROZEN_BN_STEPS),
        "--batch-size",
        str(BATCH_SIZE),
        "--learning-rate",
        str(LEARNING_RATE),
        "--seed",
        str(SEED),
    ]
    subprocess.run(command, check=True, timeout=1800)
    return str(root), str(out / "model.pth"), np.load(out / "detections.npz")


@pytest.fixture(scope="module")
def both(trained, tmp_path_factory):
    """``(held-out records, their image sizes [N, 2], tfrcnn detections, torchvision detections,
    the minimum detection score)``, detections as the VOC metric takes them (yxyx pixels, class
    ids 0..K-1), one entry an image."""
    root, pth, npz = trained
    keras_path = tmp_path_factory.mktemp("imported") / "shapes.keras"
    argv = [
        "import-weights",
        "torchvision",
        pth,
        "--preset",
        "torchvision_mobilenet_v3_large_fpn",
        "--class-names",
        ",".join(CLASS_NAMES),
        "--set",
        f"image_min_side={MIN_SIDE}",
        "--set",
        f"image_max_side={MAX_SIDE}",
        "--output",
        str(keras_path),
    ]
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        status = main(argv)
    assert status == 0, err.getvalue()
    model = keras.saving.load_model(keras_path)
    assert model.class_names == CLASS_NAMES
    records, _, _ = read_voc(root, split="val", class_names=list(CLASS_NAMES))
    assert [r["image_id"] for r in records] == [
        str(npz[f"img{i}_id"]) for i in range(int(npz["num_images"]))
    ]
    sizes, ours, theirs = [], [], []
    for i, r in enumerate(records):
        image = np.asarray(Image.open(r["path"]).convert("RGB"))
        sizes.append(image.shape[:2])
        out = model.predict(image[None], verbose=0)
        n = int(out["num_detections"][0])
        ours.append(
            {
                "boxes": out["detection_boxes"][0, :n],
                "scores": out["detection_scores"][0, :n],
                "classes": out["detection_classes"][0, :n].astype(np.int32),
            }
        )
        theirs.append(
            {
                "boxes": npz[f"img{i}_boxes"][:, [1, 0, 3, 2]],  # x1 y1 x2 y2 -> y1 x1 y2 x2
                "scores": npz[f"img{i}_scores"],
                "classes": npz[f"img{i}_labels"].astype(np.int32) - 1,  # 1..K -> 0..K-1
            }
        )
    return records, np.array(sizes), ours, theirs, model.detection_score_threshold


def test_user_trained_checkpoint_gives_torchvisions_detections(both):
    """Every held-out image (each its own size: portrait and landscape, odd sides, resized by the
    shorter side or by the longer one): each detection matched one to one with IoU > 0.99, score
    within 1e-3, the same class (a detection scored within 1e-3 of the 0.05 minimum score may be
    on one side only)."""
    records, sizes, ours, theirs, min_score = both
    assert min_score == pytest.approx(0.05)  # torchvision's box_score_thresh
    assert (sizes[:, 0] > sizes[:, 1]).any() and (sizes[:, 0] < sizes[:, 1]).any()
    assert (sizes % 2 == 1).any()
    by_longer_side = sizes.max(1) * MIN_SIDE / sizes.min(1) > MAX_SIDE
    assert by_longer_side.any() and not by_longer_side.all()
    detected = sum(len(t["scores"]) > 0 for t in theirs)
    assert detected >= 0.75 * len(theirs), f"torchvision detects something on {detected} images"
    for r, (height, width), o, t in zip(records, sizes, ours, theirs):
        assert_same_detections(
            o["boxes"],
            o["scores"],
            o["classes"],
            t["boxes"],
            t["scores"],
            t["classes"],
            f"held-out image {r['image_id']} ({height}x{width})",
            limit=100,
            score_threshold=min_score,
        )


def test_trained_model_map_equals_torchvisions(both):
    """VOC mAP@0.5 (tfrcnn.evaluation.voc) of both detection sets against the held-out ground
    truth: the torchvision model's is meaningful and the converted model's is the same."""
    records, _, ours, theirs, _ = both
    truth = [{"boxes": r["boxes"], "classes": r["classes"]} for r in records]
    ours_map = evaluate_detections(ours, truth, len(CLASS_NAMES))["mAP"]
    theirs_map = evaluate_detections(theirs, truth, len(CLASS_NAMES))["mAP"]
    print(f"held-out mAP@0.5: torchvision {theirs_map:.4f}, tfrcnn {ours_map:.4f}")
    assert theirs_map >= MIN_MAP, f"the trained torchvision model's mAP@0.5 is {theirs_map:.3f}"
    assert abs(ours_map - theirs_map) <= 0.005, (ours_map, theirs_map)
