"""Keras callbacks that evaluate detection quality during ``fit``."""

import keras
import numpy as np

from tfrcnn.evaluation.voc import evaluate_model


class MeanAveragePrecisionCallback(keras.callbacks.Callback):
    """Puts the validation VOC mAP@0.5 into the epoch logs every ``every`` epochs.

    ``logs[name]`` (default ``"val_mAP"``) then shows in the progress bar, ``History``,
    ``CSVLogger`` and can drive ``ModelCheckpoint(monitor="val_mAP", mode="max")``; with class
    names, ``logs[f"{name}/{class}"]`` holds each class's AP. Epochs in between log the last value,
    so every row of a CSV log has the column.

    Args:
        dataset: a :func:`tfrcnn.data.make_dataset` dataset (finite, with ground truth).
        num_classes: ``C``.
        class_names: optional names (per-class logs).
        every: evaluate every this many epochs (and always after the last one).
        iou_threshold: 0.5.
        name: the log key.
        verbose: print one line per evaluation.

    Example:
        >>> model.fit(train, epochs=10, callbacks=[MeanAveragePrecisionCallback(val, 3)])
    """

    def __init__(self, dataset, num_classes, class_names=None, every=1, iou_threshold=0.5,
                 name="val_mAP", verbose=1):
        super().__init__()
        self.dataset = dataset
        self.num_classes = int(num_classes)
        self.class_names = list(class_names) if class_names is not None else None
        self.every = max(int(every), 1)
        self.iou_threshold = float(iou_threshold)
        self.name = name
        self.verbose = verbose
        self.history = []
        self._last = None

    def on_epoch_end(self, epoch, logs=None):
        logs = logs if logs is not None else {}
        total = self.params.get("epochs") if self.params else None
        due = (epoch + 1) % self.every == 0 or (total is not None and epoch + 1 == total)
        if due or self._last is None:
            result = evaluate_model(self.model, self.dataset, self.num_classes,
                                    class_names=self.class_names, iou_threshold=self.iou_threshold)
            self._last = result
            self.history.append((epoch, result["mAP"]))
            if self.verbose:
                print(f"epoch {epoch + 1}: {self.name} = {result['mAP']:.4f}")
        logs[self.name] = float(self._last["mAP"])
        if self.class_names:
            for cname, ap in zip(self.class_names, self._last["ap"]):
                logs[f"{self.name}/{cname}"] = float(ap) if not np.isnan(ap) else float("nan")
