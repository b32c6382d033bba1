"""One compiled graph: training on mixed image sizes traces the train step once (the pipeline pads
every batch to one shape), and predicting raw images of several sizes does not retrace per size.

Python code in ``call`` / ``compute_loss`` runs only while TensorFlow traces a graph, so counting
those calls counts traces.
"""

import keras
import numpy as np

from tfrcnn.data import make_dataset
from tfrcnn.models import FasterRCNN


def _records(tmp_path, sizes):
    from PIL import Image

    rng = np.random.default_rng(0)
    records = []
    for i, (h, w) in enumerate(sizes):
        path = str(tmp_path / f"im{i}.png")
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(path)
        records.append(
            {
                "image_id": f"im{i}",
                "path": path,
                "height": h,
                "width": w,
                "boxes": np.array([[h * 0.2, w * 0.2, h * 0.7, w * 0.6]], np.float32),
                "classes": np.array([i % 3], np.int32),
            }
        )
    return records


class _CountingModel(FasterRCNN):
    traces = {"loss": 0, "call": 0}

    def compute_loss(self, *args, **kwargs):
        _CountingModel.traces["loss"] += 1
        return super().compute_loss(*args, **kwargs)

    def call(self, inputs, training=None):
        _CountingModel.traces["call"] += 1
        return super().call(inputs, training=training)


def test_mixed_sizes_train_with_one_trace_and_predict_without_retracing_per_size(tmp_path):
    sizes = [(120, 160), (160, 120), (100, 100), (150, 190), (90, 170), (160, 160)]
    records = _records(tmp_path, sizes)
    model = _CountingModel(num_classes=3, preset="tiny")
    ds = make_dataset(
        records,
        batch_size=2,
        min_side=160,
        max_side=192,
        pad_to=(192, 192),
        size_divisor=8,
        training=True,
        seed=0,
    )
    shapes = {tuple(batch["images"].shape) for batch in ds}
    assert shapes == {(2, 192, 192, 3)}
    model.compile(optimizer=keras.optimizers.SGD(0.01))
    _CountingModel.traces.update(loss=0, call=0)
    history = model.fit(ds.repeat(), steps_per_epoch=6, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    assert _CountingModel.traces["loss"] == 1

    _CountingModel.traces.update(call=0)
    rng = np.random.default_rng(1)
    for h, w in [(50, 70), (300, 200), (64, 64), (90, 400), (200, 300)]:
        out = model.predict(rng.integers(0, 255, (1, h, w, 3)).astype(np.uint8), verbose=0)
        assert out["detection_boxes"].shape == (1, model.max_detections, 4)
    # Keras traces predict with the first shape, then once more with relaxed (None) dimensions
    assert _CountingModel.traces["call"] <= 2
