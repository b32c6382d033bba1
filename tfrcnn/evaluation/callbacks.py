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

    def __init__(
        self,
        dataset,
        num_classes,
        class_names=None,
        every=1,
        iou_threshold=0.5,
        name="val_mAP",
        verbose=1,
    ):
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
            result = evaluate_model(
                self.model,
                self.dataset,
                self.num_classes,
                class_names=self.class_names,
                iou_threshold=self.iou_threshold,
            )
            self._last = result
            self.history.append((epoch, result["mAP"]))
            if self.verbose:
                print(f"epoch {epoch + 1}: {self.name} = {result['mAP']:.4f}")
        logs[self.name] = float(self._last["mAP"])
        if self.class_names:
            for cname, ap in zip(self.class_names, self._last["ap"]):
                logs[f"{self.name}/{cname}"] = float(ap) if not np.isnan(ap) else float("nan")


class DetectionImagesCallback(keras.callbacks.Callback):
    """Writes a few validation images with the model's detections drawn on them to TensorBoard.

    Every ``every`` epochs (and after the last one) the model runs on the first ``num_images``
    images of ``dataset``; each is drawn with :func:`tfrcnn.visualize.draw_boxes` (detections with
    a score of at least ``score_threshold``, in the resized image's pixels) and written as one
    ``tf.summary.image`` named ``name`` at step ``epoch + 1`` in ``log_dir``.

    Args:
        dataset: a :func:`tfrcnn.data.make_dataset` dataset (batches with ``images``,
            ``image_shape``, ``image_scale``, ``original_shape``).
        log_dir: the TensorBoard folder to write to (e.g. ``run/logs/images``).
        class_names: names for the labels (default the class ids).
        num_images, every, score_threshold, name: see above.

    Example:
        >>> model.fit(train, epochs=10, callbacks=[DetectionImagesCallback(val, "logs/images")])
    """

    def __init__(
        self,
        dataset,
        log_dir,
        class_names=None,
        num_images=3,
        every=1,
        score_threshold=0.3,
        name="validation_detections",
    ):
        super().__init__()
        self.dataset = dataset
        self.log_dir = log_dir
        self.class_names = list(class_names) if class_names is not None else None
        self.num_images = int(num_images)
        self.every = max(int(every), 1)
        self.score_threshold = float(score_threshold)
        self.name = name
        self._inputs = None
        self._call = None
        self._writer = None

    def _first_inputs(self):
        import tensorflow as tf

        keys = ("images", "image_shape", "image_scale", "original_shape")
        parts, count = [], 0
        for batch in self.dataset:
            parts.append({k: batch[k] for k in keys})
            count += int(batch["images"].shape[0])
            if count >= self.num_images:
                break
        return {k: tf.concat([p[k] for p in parts], axis=0)[: self.num_images] for k in keys}

    def pictures(self):
        """The drawn images, uint8 ``[N, Hp, Wp, 3]`` (the padded network input size)."""
        import tensorflow as tf

        from tfrcnn.visualize import draw_boxes

        if self._inputs is None:
            self._inputs = self._first_inputs()
        if self._call is None:  # one graph for the fixed input shapes, traced once
            self._call = tf.function(lambda x: self.model(x, training=False), autograph=False)
        out = self._call(self._inputs)
        out = {k: np.asarray(v) for k, v in out.items()}
        images = np.clip(np.asarray(self._inputs["images"]), 0, 255).astype(np.uint8)
        scales = np.asarray(self._inputs["image_scale"])
        drawn = []
        for i, image in enumerate(images):
            n = int(out["num_detections"][i])
            keep = out["detection_scores"][i][:n] >= self.score_threshold
            boxes = out["detection_boxes"][i][:n][keep] * scales[i]
            drawn.append(
                np.asarray(
                    draw_boxes(
                        image,
                        boxes,
                        out["detection_classes"][i][:n][keep],
                        out["detection_scores"][i][:n][keep],
                        self.class_names,
                    )
                )
            )
        return np.stack(drawn)

    def on_epoch_end(self, epoch, logs=None):
        import tensorflow as tf

        total = self.params.get("epochs") if self.params else None
        if not ((epoch + 1) % self.every == 0 or (total is not None and epoch + 1 == total)):
            return
        if self._writer is None:
            self._writer = tf.summary.create_file_writer(self.log_dir)
        with self._writer.as_default():
            tf.summary.image(
                self.name, self.pictures(), step=epoch + 1, max_outputs=self.num_images
            )
        self._writer.flush()

    def on_train_end(self, logs=None):
        if self._writer is not None:
            self._writer.close()
            self._writer = None
