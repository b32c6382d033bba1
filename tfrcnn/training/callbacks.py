"""Training callbacks: stop on a non-finite loss, naming where it happened."""

import math

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
