"""Training callbacks: stop on a non-finite loss, naming where it happened; keep the best model."""

import json
import math
import os

import keras


class NaNGuard(keras.callbacks.Callback):
    """Stops training with a clear error as soon as a logged loss is NaN or infinite.

    ``keras.callbacks.TerminateOnNaN`` stops silently; this raises ``FloatingPointError`` naming the
    epoch, the step and every non-finite term (``loss``, ``rpn_cls_loss``, ...), so a notebook or
    the command line shows what went wrong instead of saving a broken model.

    Example:
        >>> model.fit(dataset, epochs=5, callbacks=[NaNGuard()])
    """

    def __init__(self):
        super().__init__()
        self.epoch = 0

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        bad = {k: v for k, v in (logs or {}).items()
               if k.endswith("loss") and not math.isfinite(float(v))}
        if bad:
            self.model.stop_training = True
            terms = ", ".join(f"{k}={v}" for k, v in sorted(bad.items()))
            raise FloatingPointError(
                f"non-finite loss at epoch {self.epoch + 1}, step {batch + 1}: {terms}. "
                "Training stopped; lower the learning rate or check the data for broken boxes.")


class TimeLimit(keras.callbacks.Callback):
    """Stops ``fit`` after a wall-clock budget (checked after every batch), e.g. to compare
    detectors under the same training time. ``self.steps`` counts the batches run.

    Example:
        >>> model.fit(ds.repeat(), epochs=1000, steps_per_epoch=100, callbacks=[TimeLimit(25)])
    """

    def __init__(self, minutes):
        super().__init__()
        self.seconds = float(minutes) * 60.0
        self.steps = 0
        self.start = None

    def on_train_begin(self, logs=None):
        import time

        self.start = time.perf_counter()
        self.steps = 0

    def on_train_batch_end(self, batch, logs=None):
        import time

        self.steps += 1
        if time.perf_counter() - self.start >= self.seconds:
            self.model.stop_training = True


class BestCheckpoint(keras.callbacks.Callback):
    """Keeps the model with the highest ``logs[monitor]`` (default the validation mAP) at ``path``.

    After an epoch whose value beats every earlier one, the model is saved to ``path`` (a ``.keras``
    file, written atomically) and the value and epoch to ``path`` + ``.json``; a resumed run reads
    that file, so it only replaces the model with a better one. Epochs without the value (or with a
    non-finite one) change nothing. Put it after the callback that logs the value.

    Example:
        >>> model.fit(train, epochs=10, callbacks=[MeanAveragePrecisionCallback(val, 3),
        ...                                        BestCheckpoint("run/checkpoints/best.keras")])
    """

    def __init__(self, path, monitor="val_mAP"):
        super().__init__()
        self.path = os.fspath(path)
        self.monitor = monitor
        self.best = -math.inf
        self.best_epoch = None
        state = self.path + ".json"
        if os.path.exists(state):
            with open(state) as f:
                saved = json.load(f)
            self.best, self.best_epoch = float(saved[monitor]), int(saved["epoch"])

    def on_epoch_end(self, epoch, logs=None):
        value = (logs or {}).get(self.monitor)
        if value is None or not math.isfinite(float(value)) or float(value) <= self.best:
            return
        from tfrcnn.export.atomic import atomic_file

        with atomic_file(self.path) as tmp:
            self.model.save(tmp + ".keras")
            os.replace(tmp + ".keras", tmp)
        self.best, self.best_epoch = float(value), epoch + 1
        with atomic_file(self.path + ".json") as tmp, open(tmp, "w") as f:
            json.dump({self.monitor: self.best, "epoch": self.best_epoch}, f)
