"""MeanAveragePrecisionCallback: logs[val_mAP] (and per-class APs) reach History and CSVLogger."""

import csv

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfrcnn.data.pipeline import make_dataset
from tfrcnn.evaluation.callbacks import MeanAveragePrecisionCallback

GT = np.array([[10, 10, 40, 50], [50, 10, 95, 115]], np.float32)  # original pixels
CLASSES = np.array([0, 2], np.int32)


def _dataset():
    image = np.full((100, 120, 3), 80, np.uint8)
    record = {"image": image, "boxes": GT, "classes": CLASSES, "image_id": "one"}
    return make_dataset(
        [record, dict(record, image_id="two")],
        batch_size=2,
        min_side=50,
        max_side=60,
        pad_to=(64, 64),
        max_boxes=4,
    )


class ConstantDetector(keras.Model):
    """Detects ``GT`` in every image, shifted by ``shift`` pixels (a weight fit leaves alone)."""

    def __init__(self, shift=0.0):
        super().__init__()
        self.shift = self.add_weight(
            shape=(), initializer=keras.initializers.Constant(shift), trainable=False, name="shift"
        )

    def call(self, inputs, training=False):
        b = tf.shape(inputs["images"])[0]
        boxes = tf.tile(tf.constant(GT)[None], [b, 1, 1]) + self.shift
        return {
            "detection_boxes": boxes,
            "detection_scores": tf.fill([b, 2], 0.9),
            "detection_classes": tf.tile(tf.constant(CLASSES)[None], [b, 1]),
            "num_detections": tf.fill([b], 2),
        }

    def train_step(self, data):
        return {"loss": tf.constant(0.0)}


def test_callback_writes_logs_directly():
    callback = MeanAveragePrecisionCallback(_dataset(), num_classes=3, verbose=0)
    callback.set_model(ConstantDetector())
    logs = {"loss": 1.0}
    callback.on_epoch_end(0, logs)
    assert logs["val_mAP"] == pytest.approx(1.0)
    assert not any("/" in key for key in logs)  # no per-class logs without names
    assert callback.history == [(0, pytest.approx(1.0))]
    # an 8 px shift: box 0 IoU 704 / 1696 = 0.42 (class 0 -> AP 0), the larger box 1 keeps
    # IoU 3589 / 5861 = 0.61 (class 2 -> AP 1); class 1 has no ground truth: mAP 0.5
    callback.set_model(ConstantDetector(shift=8.0))
    callback.on_epoch_end(1, logs)
    assert logs["val_mAP"] == pytest.approx(0.5)
    assert [epoch for epoch, _ in callback.history] == [0, 1]


def test_callback_in_fit_reaches_history_and_csv_logger(tmp_path, capsys):
    data = _dataset()
    model = ConstantDetector()
    model.compile()
    callback = MeanAveragePrecisionCallback(
        data,
        num_classes=3,
        class_names=["rect", "ellipse", "tri"],
        every=2,
        name="val_mAP",
        verbose=1,
    )
    log_path = tmp_path / "log.csv"
    history = model.fit(
        data,
        epochs=4,
        verbose=0,
        shuffle=False,
        callbacks=[callback, keras.callbacks.CSVLogger(str(log_path))],
    )
    assert history.history["val_mAP"] == pytest.approx([1.0] * 4)
    assert history.history["val_mAP/rect"] == pytest.approx([1.0] * 4)
    assert np.all(np.isnan(history.history["val_mAP/ellipse"]))  # no ground truth of that class
    # evaluated at epoch 0 (so every row has a value), then every second epoch (index 1, 3)
    assert [epoch for epoch, _ in callback.history] == [0, 1, 3]
    rows = list(csv.DictReader(open(log_path)))
    assert len(rows) == 4 and float(rows[-1]["val_mAP"]) == pytest.approx(1.0)
    assert "val_mAP" in capsys.readouterr().out
