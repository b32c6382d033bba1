"""Helpers of the command-line tests: the quickest training run's flags and a VOC writer."""

import os

import numpy as np
from PIL import Image

# The quickest real training run: tiny preset, 16 synthetic images, 1 epoch of 3 steps.
QUICK = [
    "--set",
    "num_train=16",
    "--set",
    "num_val=8",
    "--set",
    "eval_every=1",
    "--epochs",
    "1",
    "--steps-per-epoch",
    "3",
    "--batch-size",
    "2",
    "--verbose",
    "0",
]


def write_voc(root, splits):
    """Write records (``{"split": records}``) as a VOC folder: PNG images (lossless, so every
    format holds the same pixels), integer boxes as 1-based inclusive corners. Returns the boxes
    the VOC reader gives back: ``{image_id: (boxes yxyx, class names)}``."""
    from tfrcnn.data import SYNTHETIC_CLASS_NAMES

    for sub in ("Annotations", "ImageSets/Main", "JPEGImages"):
        os.makedirs(os.path.join(root, sub), exist_ok=True)
    expected = {}
    for split, records in splits.items():
        ids = []
        for r in records:
            image_id = str(r["image_id"])
            ids.append(image_id)
            h, w = r["image"].shape[:2]
            Image.fromarray(r["image"]).save(os.path.join(root, "JPEGImages", image_id + ".png"))
            boxes = np.round(np.asarray(r["boxes"], np.float64)).reshape(-1, 4)
            boxes = np.clip(boxes, 0, [h, w, h, w])
            keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
            objects = ""
            names = []
            for (y1, x1, y2, x2), c in zip(boxes[keep], np.asarray(r["classes"])[keep]):
                name = SYNTHETIC_CLASS_NAMES[int(c)]
                names.append(name)
                objects += (
                    f"<object><name>{name}</name><difficult>0</difficult><bndbox>"
                    f"<xmin>{int(x1) + 1}</xmin><ymin>{int(y1) + 1}</ymin>"
                    f"<xmax>{int(x2)}</xmax><ymax>{int(y2)}</ymax></bndbox></object>"
                )
            xml = (
                f"<annotation><filename>{image_id}.png</filename><size><width>{w}</width>"
                f"<height>{h}</height><depth>3</depth></size>{objects}</annotation>"
            )
            with open(os.path.join(root, "Annotations", image_id + ".xml"), "w") as f:
                f.write(xml)
            expected[image_id] = (boxes[keep].astype(np.float32), names)
        with open(os.path.join(root, "ImageSets", "Main", split + ".txt"), "w") as f:
            f.write("\n".join(ids) + "\n")
    return expected
